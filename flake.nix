{
  description = "peerix: a peer-to-peer binary cache for Nix";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      linux = lib.filter (lib.hasSuffix "-linux") systems;
      forSystems = names: f: lib.genAttrs names (system: f nixpkgs.legacyPackages.${system});

      # Shown by `peerix version`; the package sets it with -ldflags -X.
      version = "0.1.0-" + (self.shortRev or self.dirtyShortRev or "dirty");

      peerixFor = pkgs: pkgs.callPackage ./nix/package.nix { inherit version; };

      # A NixOS system using both services, evaluated (not built) by
      # checks.<system>.nixos-module: it proves the module evaluates against
      # real nixpkgs, which the Go tests cannot (no nixpkgs offline).
      evalModule =
        system:
        (lib.nixosSystem {
          modules = [
            self.nixosModules.default
            {
              nixpkgs.hostPlatform = system;
              boot.isContainer = true;
              system.stateVersion = "25.05";
              services.peerix = {
                enable = true;
                package = self.packages.${system}.peerix;
                openFirewall = true;
                signingKeyFile = "/run/keys/peerix.sec";
                settings = {
                  tracker = "https://tracker.example.org";
                  filter-pattern = [ "*-secret*" ];
                  lan-timeout = "300ms";
                };
              };
              # Beside the daemon with the default ports: the relay's
              # 12307 does not clash with the daemon's 12306.
              services.peerix-tracker = {
                enable = true;
                openFirewall = true;
              };
            }
          ];
        }).config;
    in
    {
      packages = forSystems systems (pkgs: rec {
        peerix = peerixFor pkgs;
        default = peerix;
      });

      apps = forSystems systems (pkgs: {
        default = {
          type = "app";
          program = lib.getExe self.packages.${pkgs.stdenv.hostPlatform.system}.peerix;
          meta.description = "peerix";
        };
      });

      devShells = forSystems systems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (if pkgs ? go_1_26 then pkgs.go_1_26 else pkgs.go)
            pkgs.gopls
            pkgs.gotools
            pkgs.sqlite
          ]
          # The dashboard test loads the page in headless Chromium.
          ++ lib.optional pkgs.stdenv.hostPlatform.isLinux pkgs.chromium;
        };
      });

      overlays.default = final: prev: { peerix = peerixFor final; };

      # services.peerix and services.peerix-tracker. Its default package is
      # built from this source with the system's nixpkgs; set
      # services.peerix.package = peerix.packages.${system}.default to use
      # the flake's instead.
      nixosModules.default = ./nix/module.nix;
      nixosModules.peerix = ./nix/module.nix;

      checks = forSystems linux (
        pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
          c = evalModule system;
        in
        {
          package = self.packages.${system}.peerix;
          nixos-module = pkgs.writeText "peerix-nixos-module.json" (
            builtins.toJSON {
              # Forces the whole system's evaluation, assertions included.
              toplevel = c.system.build.toplevel.drvPath;
              peerix = c.systemd.services.peerix.serviceConfig;
              tracker = c.systemd.services.peerix-tracker.serviceConfig;
              substituters = c.nix.settings.extra-substituters;
              tcp = c.networking.firewall.allowedTCPPorts;
              udp = c.networking.firewall.allowedUDPPorts;
            }
          );
          # The units' own command lines (JSON-quoted store paths, which
          # the shell reads alike) with --check-config: peerix accepts the
          # config files the module generates. nix/eval_test.go does the
          # same offline, with nixpkgs' lib alone.
          nixos-module-config = pkgs.runCommand "peerix-module-check-config" { } ''
            ${c.systemd.services.peerix.serviceConfig.ExecStart} --check-config > $out
            ${c.systemd.services.peerix-tracker.serviceConfig.ExecStart} --check-config >> $out
          '';
        }
      );

      # A NixOS VM test (needs KVM, so not among the checks):
      #   nix build .#legacyPackages.x86_64-linux.nixosTests.peerix
      legacyPackages = forSystems linux (pkgs: {
        nixosTests.peerix = import ./nix/test.nix {
          inherit pkgs;
          module = self.nixosModules.default;
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.peerix;
        };
      });
    };
}
