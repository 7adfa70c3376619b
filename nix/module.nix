# NixOS module: services.peerix (the daemon every machine runs) and
# services.peerix-tracker (the tracker, on one reachable host).
#
#   imports = [ peerix.nixosModules.default ];   # or ./nix/module.nix
#   services.peerix = { enable = true; tracker = "https://tracker.example.org"; openFirewall = true; };
#
# The daemon runs as a dynamic user under a strict sandbox. It adds itself to
# Nix with nix.settings.extra-substituters and changes no other global Nix
# setting (in particular not trusted-public-keys: what Nix trusts stays the
# operator's decision; paths from peers carry their original signatures).
#
# Reading the Nix database as a non-root user: /nix/var/nix/db/db.sqlite is
# root-owned 0644 and in WAL mode. SQLite can read a WAL database read-only
# (no write access to the file or its directory) only if the -wal and -shm
# files already exist; Nix deletes them whenever its last connection closes,
# and the sandbox (ProtectSystem=strict, ReadOnlyPaths=/nix) forbids the
# daemon to create them. So a privileged ExecStartPre ("+") creates them,
# empty and 0644, if they are missing. It never truncates existing ones
# (touch only), and an empty -wal and -shm are what SQLite itself starts
# from. While the daemon holds the database open, Nix no longer deletes
# them (the daemon's read lock keeps them), and the daemon sees Nix's
# writes as they commit.
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:

let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    optional
    optionals
    types
    ;

  cfg = config.services.peerix;
  tcfg = config.services.peerix-tracker;

  toml = pkgs.formats.toml { };

  defaultPackage = pkgs.callPackage ./package.nix { };

  lanOn = cfg.mode == "lan" || cfg.lan;

  # host:port with IPv6 addresses bracketed.
  hostPort = host: port: if lib.hasInfix ":" host then "[${host}]:${toString port}" else "${host}:${toString port}";

  # The address this machine's Nix reaches the daemon at: remote routes
  # answer only loopback callers.
  loopbackHost = if cfg.listenAddress == "::1" then "::1" else "127.0.0.1";
  substituterURL = "http://${hostPort loopbackHost cfg.port}";

  configFile = toml.generate "peerix.toml" cfg.settings;

  stateDir = "/var/lib/peerix";

  serveArgs =
    [
      "serve"
      "--config"
      "${configFile}"
      "--listen"
      (hostPort cfg.listenAddress cfg.port)
      "--mode"
      cfg.mode
      "--state-dir"
      stateDir
      "--p2p-port"
      (toString cfg.p2pPort)
      "--lan-port"
      (toString cfg.lanPort)
      "--upstream"
      cfg.upstream
      "--priority"
      (toString cfg.priority)
    ]
    ++ optionals (cfg.tracker != null) [
      "--tracker"
      cfg.tracker
    ]
    ++ optional (cfg.lan && cfg.mode == "p2p") "--lan"
    ++ optionals (cfg.filter != null) [
      "--filter"
      cfg.filter
    ]
    ++ lib.concatMap (p: [
      "--filter-pattern"
      p
    ]) cfg.filterPatterns
    ++ lib.concatMap (k: [
      "--trusted-public-key"
      k
    ]) cfg.trustedPublicKeys
    ++ optional (!cfg.verify) "--no-verify"
    ++ optional cfg.verbose "--verbose"
    ++ cfg.extraArgs;

  # Creates the database's -wal and -shm files if missing (see the top).
  prepareNixDb = pkgs.writeShellScript "peerix-prepare-nix-db" ''
    set -eu
    db=/nix/var/nix/db/db.sqlite
    [ -e "$db" ] || exit 0
    # Only for a database in WAL mode (bytes 18 and 19 of the header are 2).
    mode=$(${pkgs.coreutils}/bin/od -An -tu1 -j18 -N2 "$db" | ${pkgs.coreutils}/bin/tr -s ' ')
    [ "$mode" = " 2 2" ] || exit 0
    # touch creates a missing file empty and never truncates an existing
    # one (it only updates its times), so racing with Nix is harmless.
    umask 022
    ${pkgs.coreutils}/bin/touch "$db-wal" "$db-shm"
  '';

  # The sandbox both units share.
  hardening = {
    DynamicUser = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    NoNewPrivileges = true;
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    RemoveIPC = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
    ];
    SystemCallErrorNumber = "EPERM";
    # AF_NETLINK: the daemon lists interfaces and routes (LAN broadcast, libp2p).
    RestrictAddressFamilies = [
      "AF_INET"
      "AF_INET6"
      "AF_UNIX"
      "AF_NETLINK"
    ];
    UMask = "0077";
    Restart = "on-failure";
    RestartSec = "5s";
    LimitNOFILE = 65536;
  };

  trackerPort = lib.toInt (lib.last (lib.splitString ":" tcfg.listen));

  trackerArgs = [
    "tracker"
    "--listen"
    tcfg.listen
    "--db"
    tcfg.db
    "--relay-port"
    (toString tcfg.relayPort)
    "--peer-ttl"
    tcfg.peerTtl
  ] ++ optional tcfg.verbose "--verbose" ++ tcfg.extraArgs;
in
{
  options.services.peerix = {
    enable = mkEnableOption "peerix, the peer-to-peer binary cache for Nix, as a substituter of this machine";

    package = mkOption {
      type = types.package;
      default = defaultPackage;
      defaultText = literalExpression "pkgs.callPackage ./nix/package.nix { }";
      description = "The peerix package.";
    };

    mode = mkOption {
      type = types.enum [
        "p2p"
        "lan"
        "local"
      ];
      default = "p2p";
      description = ''
        How peers are found: `p2p` through libp2p and the tracker, `lan` by UDP
        broadcast only, `local` not at all (peerix then only serves this
        machine's store, like nix-serve).
      '';
    };

    listenAddress = mkOption {
      type = types.str;
      default = "0.0.0.0";
      example = "127.0.0.1";
      description = ''
        Address of the HTTP binary cache. It must include loopback: this
        machine's Nix uses http://127.0.0.1:port (http://[::1]:port if this
        is ::1), and the routes that find paths on peers answer only loopback
        callers.
      '';
    };

    port = mkOption {
      type = types.port;
      default = 12304;
      description = "TCP port of the HTTP binary cache.";
    };

    tracker = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "https://tracker.example.org";
      description = "Tracker base URL (p2p mode).";
    };

    lan = mkOption {
      type = types.bool;
      default = false;
      description = "In p2p mode, also discover peers on the LAN by UDP broadcast (always on in lan mode).";
    };

    lanPort = mkOption {
      type = types.port;
      default = 12304;
      description = "UDP port of LAN discovery (the original peerix uses 12304).";
    };

    p2pPort = mkOption {
      type = types.port;
      default = 12306;
      description = "libp2p port, TCP and QUIC (UDP).";
    };

    filter = mkOption {
      type = types.nullOr (
        types.enum [
          "upstream"
          "patterns"
          "none"
        ]
      );
      default = null;
      description = ''
        Which local paths peers may fetch: `upstream` (only paths the upstream
        cache has), `patterns` (all but the deny-list), `none` (everything).
        null: peerix's default, `upstream` in p2p and lan mode, `none` in local mode.
      '';
    };

    filterPatterns = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "*-secrets*" ];
      description = "Store path name globs never to share, besides the built-in deny-list.";
    };

    upstream = mkOption {
      type = types.str;
      default = "https://cache.nixos.org";
      description = "Upstream binary cache, for the filter and the verifier.";
    };

    verify = mkOption {
      type = types.bool;
      default = true;
      description = "Verify peers' narinfos against the upstream or trusted keys before Nix gets them (false passes --no-verify).";
    };

    trustedPublicKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "my-cache-1:AbCd...=" ];
      description = ''
        Keys (name:base64) whose signatures make a peer's path acceptable to
        peerix's verifier. This does not change Nix's own trusted-public-keys.
      '';
    };

    signingKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/keys/peerix.sec";
      description = ''
        Nix secret key file (name:base64, as `peerix keygen` or
        `nix-store --generate-binary-cache-key` make) to sign local narinfos
        with. Give a path outside the Nix store; systemd hands it to the
        dynamic user as a credential.
      '';
    };

    priority = mkOption {
      type = types.ints.unsigned;
      default = 30;
      description = "nix-cache-info Priority: lower is asked first; cache.nixos.org is 40.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open the ports the mode needs: TCP `port` (not in local mode, where
        you decide who may connect), UDP `lanPort` with LAN discovery, TCP and
        UDP `p2pPort` in p2p mode.
      '';
    };

    verbose = mkOption {
      type = types.bool;
      default = false;
      description = "Log debug messages.";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "--lan-timeout"
        "300ms"
      ];
      description = "More arguments for `peerix serve`.";
    };

    settings = mkOption {
      type = toml.type;
      default = { };
      example = {
        lan-timeout = "300ms";
      };
      description = ''
        peerix's TOML configuration (keys named like the flags of `peerix serve`),
        written to a file passed with --config. The options above are passed
        as flags and win over the same keys here.
      '';
    };
  };

  options.services.peerix-tracker = {
    enable = mkEnableOption "the peerix tracker, which lets peerix daemons find each other across the internet";

    package = mkOption {
      type = types.package;
      default = cfg.package;
      defaultText = literalExpression "config.services.peerix.package";
      description = "The peerix package.";
    };

    listen = mkOption {
      type = types.str;
      default = "0.0.0.0:12305";
      description = "HOST:PORT of the tracker's HTTP API.";
    };

    db = mkOption {
      type = types.str;
      default = "/var/lib/peerix-tracker/tracker.db";
      example = "postgres:///peerix?host=/run/postgresql";
      description = "SQLite file (under /var/lib/peerix-tracker, the unit's only writable place) or postgres:// URL.";
    };

    relayPort = mkOption {
      type = types.port;
      default = 12306;
      description = "libp2p relay port, TCP and QUIC (UDP).";
    };

    peerTtl = mkOption {
      type = types.str;
      default = "2m";
      description = "A peer that sends no heartbeat for this long is forgotten (a Go duration).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the API's TCP port and the relay's TCP and UDP port.";
    };

    verbose = mkOption {
      type = types.bool;
      default = false;
      description = "Log debug messages.";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "More arguments for `peerix tracker`.";
    };
  };

  config = mkMerge [
    (mkIf cfg.enable {
      assertions = [
        {
          assertion = !(cfg.lan && cfg.mode == "local");
          message = "services.peerix.lan cannot be used with mode \"local\", which looks for no peers.";
        }
        {
          assertion = lib.elem cfg.listenAddress [
            "0.0.0.0"
            "::"
            "127.0.0.1"
            "::1"
          ];
          message = "services.peerix.listenAddress must include loopback (0.0.0.0, ::, 127.0.0.1 or ::1): this machine's Nix reaches peerix at ${substituterURL}.";
        }
        {
          assertion = !(cfg.openFirewall && cfg.mode == "p2p" && cfg.p2pPort == 0);
          message = "services.peerix.openFirewall needs a fixed p2pPort, not 0.";
        }
        {
          assertion = cfg.signingKeyFile == null || !lib.hasPrefix builtins.storeDir cfg.signingKeyFile;
          message = "services.peerix.signingKeyFile must not be in the Nix store, where everyone can read it.";
        }
      ];

      # The one global Nix setting peerix changes.
      nix.settings.extra-substituters = [ substituterURL ];

      networking.firewall = mkIf cfg.openFirewall {
        allowedTCPPorts = optional (cfg.mode != "local") cfg.port ++ optional (cfg.mode == "p2p") cfg.p2pPort;
        allowedUDPPorts = optional lanOn cfg.lanPort ++ optional (cfg.mode == "p2p") cfg.p2pPort;
      };

      systemd.services.peerix = {
        description = "peerix peer-to-peer Nix binary cache";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [
          "network-online.target"
          "nix-daemon.service"
        ];
        # Not read from the environment of whoever starts it.
        environment.NIX_SECRET_KEY_FILE = "";
        serviceConfig = hardening // {
          StateDirectory = "peerix";
          StateDirectoryMode = "0700";
          WorkingDirectory = stateDir;
          ReadOnlyPaths = [ "/nix" ];
          ExecStartPre = [ "+${prepareNixDb}" ];
          ExecStart =
            utils.escapeSystemdExecArgs ([ (lib.getExe' cfg.package "peerix") ] ++ serveArgs)
            # %d: the credentials directory; not escaped, systemd expands it.
            + lib.optionalString (cfg.signingKeyFile != null) " --signing-key-file %d/signing-key";
          LoadCredential = optional (cfg.signingKeyFile != null) "signing-key:${cfg.signingKeyFile}";
          # SIGHUP: rescan the store.
          ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
          # SIGTERM saves the stats and stops within 5 s.
          TimeoutStopSec = "10s";
        };
      };
    })

    (mkIf tcfg.enable {
      networking.firewall = mkIf tcfg.openFirewall {
        allowedTCPPorts = [
          trackerPort
          tcfg.relayPort
        ];
        allowedUDPPorts = [ tcfg.relayPort ];
      };

      systemd.services.peerix-tracker = {
        description = "peerix tracker";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ] ++ optional (lib.hasPrefix "postgres" tcfg.db) "postgresql.service";
        serviceConfig = hardening // {
          StateDirectory = "peerix-tracker";
          StateDirectoryMode = "0700";
          WorkingDirectory = "/var/lib/peerix-tracker";
          ReadOnlyPaths = [ "/nix" ];
          ExecStart = utils.escapeSystemdExecArgs ([ (lib.getExe' tcfg.package "peerix") ] ++ trackerArgs);
          TimeoutStopSec = "10s";
        };
      };
    })
  ];
}
