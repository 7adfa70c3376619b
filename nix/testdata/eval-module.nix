# Evaluates nix/module.nix with nixpkgs' module system (lib.evalModules),
# standing in for the few NixOS options the module sets and the pkgs
# attributes it uses, and returns what the module made of `configuration`,
# for nix/eval_test.go:
#
#   nix-instantiate --eval --strict --json --read-write-mode nix/testdata/eval-module.nix \
#     --argstr libDir /path/to/nixpkgs/lib --arg configuration '{ services.peerix.enable = true; }'
#
# Only nixpkgs' lib is needed (github:nix-community/nixpkgs.lib); nothing is
# built. --read-write-mode writes the generated config files to the store,
# where the test runs `peerix serve --check-config` on them.
{
  libDir,
  configuration,
  # false: pkgs has no peerix, so the module's default package is
  # nix/package.nix called with stand-ins for buildGoModule.
  withPeerix ? true,
}:

let
  lib = import (/. + libDir);
  inherit (lib) types mkOption;

  system = builtins.currentSystem;

  # A derivation that is never built: only its path matters.
  stub =
    name: extra:
    derivation {
      inherit name system;
      builder = "/bin/sh";
      args = [
        "-c"
        "exit 1"
      ];
    }
    // extra;

  # TOML as pkgs.formats.toml writes it (the module's settings are flat;
  # tables are written inline).
  tomlValue =
    v:
    if builtins.isString v || builtins.isPath v then
      builtins.toJSON "${v}"
    else if builtins.isBool v then
      lib.boolToString v
    else if builtins.isInt v || builtins.isFloat v then
      toString v
    else if builtins.isList v then
      "[" + lib.concatMapStringsSep ", " tomlValue v + "]"
    else if builtins.isAttrs v then
      "{ " + lib.concatStringsSep ", " (lib.mapAttrsToList (k: x: "${builtins.toJSON k} = ${tomlValue x}") v) + " }"
    else
      throw "TOML has no value like ${builtins.typeOf v}";

  tomlValueType = types.nullOr (
    types.oneOf [
      types.bool
      types.int
      types.float
      types.str
      types.path
      (types.attrsOf tomlValueType)
      (types.listOf tomlValueType)
    ]
  );

  peerix = stub "peerix-0.1.0-test" { meta.mainProgram = "peerix"; };

  pkgs = {
    formats.toml =
      { }:
      {
        type = types.attrsOf tomlValueType;
        generate =
          name: value:
          builtins.toFile name (lib.concatStrings (lib.mapAttrsToList (k: v: "${k} = ${tomlValue v}\n") value));
      };
    writeShellScript = name: text: stub name { };
    coreutils = stub "coreutils" { };
    # For the module's fallback package: nix/package.nix with a
    # buildGoModule that keeps the arguments.
    callPackage =
      file: args:
      import file (
        {
          inherit lib;
          buildGoModule = attrs: stub "${attrs.pname}-${attrs.version}" { inherit (attrs) meta; };
        }
        // args
      );
  }
  // lib.optionalAttrs withPeerix { inherit peerix; };

  # nixpkgs' nixos/lib/utils.nix does the same: every argument a JSON
  # string, systemd specifiers and variables escaped.
  utils.escapeSystemdExecArgs = lib.concatMapStringsSep " " (
    a: lib.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON "${toString a}")
  );

  # A systemd directive: lists concatenate, other values must agree.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        values = map (d: d.value) defs;
      in
      if lib.all builtins.isList values then lib.concatLists values else lib.mergeEqualOption loc defs;
  };

  # The NixOS options the module sets, declared as NixOS declares them
  # (only what the module uses).
  nixos = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      meta.maintainers = mkOption {
        type = types.listOf types.raw;
        default = [ ];
      };
      nix.settings = mkOption {
        type = types.submodule {
          freeformType = types.attrsOf types.anything;
          options.extra-substituters = mkOption {
            type = types.listOf types.str;
            default = [ ];
          };
        };
        default = { };
      };
      networking.firewall = {
        allowedTCPPorts = mkOption {
          type = types.listOf types.port;
          default = [ ];
        };
        allowedUDPPorts = mkOption {
          type = types.listOf types.port;
          default = [ ];
        };
      };
      systemd.services = mkOption {
        default = { };
        type = types.attrsOf (
          types.submodule {
            options = {
              description = mkOption { type = types.str; };
              wantedBy = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
              wants = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
              after = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
              environment = mkOption {
                type = types.attrsOf types.str;
                default = { };
              };
              serviceConfig = mkOption {
                type = types.attrsOf unitOption;
                default = { };
              };
            };
          }
        );
      };
    };
  };

  eval = lib.evalModules {
    modules = [
      nixos
      ../module.nix
      configuration
      { _module.args = { inherit pkgs utils; }; }
    ];
  };
  inherit (eval) config options;

  keys = opt: lib.filter (k: !lib.hasPrefix "_" k) (lib.attrNames (opt.type.getSubOptions [ ]));
in
{
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
  units = lib.mapAttrs (_: u: {
    inherit (u)
      description
      wantedBy
      after
      environment
      serviceConfig
      ;
  }) config.systemd.services;
  firewall = {
    tcp = config.networking.firewall.allowedTCPPorts;
    udp = config.networking.firewall.allowedUDPPorts;
  };
  substituters = config.nix.settings.extra-substituters;
  packages = {
    peerix = "${config.services.peerix.package}";
    tracker = "${config.services.peerix-tracker.package}";
    license = config.services.peerix.package.meta.license.spdxId or null;
    maintainers = config.services.peerix.package.meta.maintainers or null;
    mainProgram = config.services.peerix.package.meta.mainProgram or null;
  };
  moduleMaintainers = config.meta.maintainers;
  knownKeys = {
    serve = keys options.services.peerix.settings;
    tracker = keys options.services.peerix-tracker.settings;
  };
}
