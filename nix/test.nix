# NixOS VM test of the module: the hardened daemon (a dynamic user in its
# own user namespace) reads the Nix database, runs with the settings as
# given, serves, reports health and status, reloads and stops cleanly,
# keeping its stats. Run (needs KVM):
#   nix build .#legacyPackages.x86_64-linux.nixosTests.peerix
{
  pkgs,
  module,
  package,
}:

pkgs.testers.runNixOSTest {
  name = "peerix";

  nodes.machine = {
    imports = [ module ];
    services.peerix = {
      enable = true;
      inherit package;
      settings = {
        mode = "local";
        priority = 20;
      };
    };
    environment.systemPackages = [
      pkgs.curl
      package
    ];
  };

  testScript = ''
    import json

    machine.wait_for_unit("peerix.service")
    machine.wait_for_open_port(12304)

    machine.succeed("grep -q 'extra-substituters = http://127.0.0.1:12304' /etc/nix/nix.conf")

    # The unit runs peerix with the generated config file and no flag; the
    # settings are what it runs with.
    execstart = machine.succeed("systemctl show -p ExecStart --value peerix")
    config = execstart.split(" serve --config ")[1].split()[0]
    effective = machine.succeed(f"peerix serve --check-config --config {config}")
    for line in ['mode = "local"', "priority = 20", 'listen = "127.0.0.1:12304"', "lan = false"]:
        assert line in effective.splitlines(), effective
    assert "Priority: 20" in machine.succeed("curl -sf http://127.0.0.1:12304/nix-cache-info")

    health = json.loads(machine.succeed("curl -sf http://127.0.0.1:12304/health"))
    assert health["status"] == "healthy", health

    status = json.loads(machine.succeed("curl -sf http://127.0.0.1:12304/api/status"))
    assert status["mode"] == "local", status

    # A path of the VM's own store, answered from the Nix database that the
    # dynamic user reads read-only.
    bash = machine.succeed("readlink -f /run/current-system/sw/bin/bash").strip()
    h = bash.split("/")[3][:32]
    machine.succeed(f"curl -sf http://127.0.0.1:12304/local/{h}.narinfo | grep -q '^StorePath: /nix/store/{h}'")

    # The dashboard and the API are for this machine only; peerix status
    # and doctor talk to it.
    machine.succeed("curl -sf http://127.0.0.1:12304/dashboard | grep -q '<title>peerix</title>'")
    machine.succeed("peerix status | grep -q 'Mode *local'")
    # The VM has no internet, so checks of the upstream may fail; the local
    # ones must pass.
    _, out = machine.execute("peerix doctor")
    for line in ["OK    daemon:", "OK    nix: substituters include http://127.0.0.1:12304", "OK    store:", "OK    state dir:"]:
        assert line in out, out

    # SIGHUP rescans and keeps serving; SIGTERM stops within 5 s with exit 0
    # and saves the stats.
    machine.succeed("systemctl reload peerix")
    machine.sleep(1)
    machine.succeed("systemctl is-active peerix")
    machine.succeed("curl -sf http://127.0.0.1:12304/health")
    machine.succeed("timeout 10 systemctl stop peerix")
    machine.succeed("systemctl show -p ExecMainStatus --value peerix | grep -qx 0")
    machine.succeed("test -s /var/lib/private/peerix/stats.json")
  '';
}
