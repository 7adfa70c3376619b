# NixOS module: services.peerix (the daemon every machine runs) and
# services.peerix-tracker (the tracker, on one reachable host).
#
#   imports = [ peerix.nixosModules.default ];   # or ./nix/module.nix
#   services.peerix = {
#     enable = true;
#     settings.tracker = "https://tracker.example.org";
#     openFirewall = true;
#   };
#
# Configuration follows RFC 42: `settings` is peerix's TOML config file, keys
# named like the flags of `peerix serve` (`peerix tracker`). The options
# declared inside it are only its defaults, typed and documented; whatever
# you set there is what the daemon runs with, because the unit runs
# `peerix serve --config <the file>` and passes no other flag. A key that
# peerix does not know fails the evaluation (an assertion), not the start.
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
#
# PrivateUsers: the daemon runs in a user namespace that maps only root and
# its own user. It needs nothing else: the store and the database are
# root-owned and world-readable, root stays root inside the namespace, and
# reading needs no capability. The "+" ExecStartPre runs outside the
# namespace, with full privileges, as it must to create the files.
{
  config,
  options,
  lib,
  pkgs,
  utils,
  ...
}:

let
  inherit (lib)
    attrNames
    concatStringsSep
    elem
    filter
    filterAttrs
    hasPrefix
    literalExpression
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    mkPackageOption
    optional
    optionals
    types
    ;

  cfg = config.services.peerix;
  tcfg = config.services.peerix-tracker;

  settingsFormat = pkgs.formats.toml { };

  # pkgs.peerix from nixpkgs or this flake's overlay, else built from this
  # source: mkPackageOption looks the package up in this set.
  peerixPkgs = {
    peerix = pkgs.peerix or (pkgs.callPackage ./package.nix { });
  };

  stateDir = "/var/lib/peerix";
  trackerStateDir = "/var/lib/peerix-tracker";

  # --- values of the settings, as peerix reads them ------------------------

  # HOST:PORT, the host bracketed if IPv6, as Go's net.SplitHostPort takes it;
  # null if it is not of that shape.
  parseListen =
    listen:
    let
      v6 = builtins.match "\\[([^]]*)]:([0-9]{1,5})" listen;
      other = builtins.match "([^]:[]*):([0-9]{1,5})" listen;
      m = if v6 != null then v6 else other;
    in
    if m == null then
      null
    else
      {
        host = builtins.elemAt m 0;
        port = lib.toIntBase10 (builtins.elemAt m 1);
      };

  isLoopback = host: host == "::1" || host == "localhost" || hasPrefix "127." host;
  isWildcard = host: elem host [
    ""
    "0.0.0.0"
    "::"
  ];

  hostPort = host: port: if lib.hasInfix ":" host then "[${host}]:${toString port}" else "${host}:${toString port}";

  # A Go duration (time.ParseDuration), as lan-timeout and peer-ttl take.
  isDuration = s: builtins.match "([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)(([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))*" s != null;
  # An http(s) URL without query or fragment, as upstream and tracker take.
  isHTTPURL = s: builtins.match "https?://[^/?#]+[^?#]*" s != null;

  # The keys of settings that peerix does not know: every key is declared
  # as an option of the settings submodule, so the others are freeform.
  knownKeys = opt: filter (k: !hasPrefix "_" k) (attrNames (opt.type.getSubOptions [ ]));
  unknownKeyAssertions =
    prefix: opt: settings:
    let
      known = knownKeys opt;
      # The nearest known key within two edits, as peerix itself suggests.
      suggest =
        k:
        let
          near = lib.sort (a: b: lib.strings.levenshtein k a < lib.strings.levenshtein k b) (
            filter (lib.strings.levenshteinAtMost 2 k) known
          );
        in
        lib.optionalString (near != [ ]) " (did you mean \"${builtins.head near}\"?)";
    in
    map (k: {
      assertion = false;
      message = "${prefix}.settings: unknown key \"${k}\"${suggest k}; peerix knows: ${concatStringsSep ", " known}.";
    }) (filter (k: !elem k known) (attrNames settings));

  # Null means "leave it to peerix": such keys are not written.
  toTOML = name: settings: settingsFormat.generate name (filterAttrs (_: v: v != null) settings);

  # --- the daemon -----------------------------------------------------------

  s = cfg.settings;
  listen = parseListen s.listen;
  # The address this machine's Nix reaches the daemon at: the routes that
  # find paths on peers answer only loopback callers.
  loopbackHost =
    if listen == null || isWildcard listen.host || listen.host == "localhost" then
      "127.0.0.1"
    else
      listen.host;
  substituterURL = "http://${hostPort loopbackHost (if listen == null then 0 else listen.port)}";
  httpReachable = listen != null && !isLoopback listen.host;

  configFile = toTOML "peerix.toml" s;

  # What the daemon listens on, by protocol, with the setting that chooses
  # the port: what must not clash, and (where open) what openFirewall
  # opens. host is null for every interface; open is false for loopback.
  daemonPorts =
    optional (listen != null) {
      proto = "TCP";
      port = listen.port;
      host = if isWildcard listen.host then null else listen.host;
      open = httpReachable;
      key = "services.peerix.settings.listen";
      what = "the binary cache (HTTP)";
    }
    ++ map (p: p // { host = null; open = true; }) (optionals (s.mode == "p2p") [
      {
        proto = "TCP";
        port = s.p2p-port;
        key = "services.peerix.settings.p2p-port";
        what = "libp2p (TCP)";
      }
      {
        proto = "UDP";
        port = s.p2p-port;
        key = "services.peerix.settings.p2p-port";
        what = "libp2p (QUIC)";
      }
    ]
    ++ optional s.lan {
      proto = "UDP";
      port = s.lan-port;
      key = "services.peerix.settings.lan-port";
      what = "LAN discovery";
    });

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

  # --- the tracker ----------------------------------------------------------

  ts = tcfg.settings;
  trackerListen = parseListen ts.listen;
  trackerConfigFile = toTOML "peerix-tracker.toml" ts;
  trackerPorts =
    optional (trackerListen != null) {
      proto = "TCP";
      port = trackerListen.port;
      host = if isWildcard trackerListen.host then null else trackerListen.host;
      open = !isLoopback trackerListen.host;
      key = "services.peerix-tracker.settings.listen";
      what = "the tracker API (HTTP)";
    }
    ++ map (p: p // { host = null; open = true; }) [
      {
        proto = "TCP";
        port = ts.relay-port;
        key = "services.peerix-tracker.settings.relay-port";
        what = "the relay (TCP)";
      }
      {
        proto = "UDP";
        port = ts.relay-port;
        key = "services.peerix-tracker.settings.relay-port";
        what = "the relay (QUIC)";
      }
    ];

  # --- both -----------------------------------------------------------------

  # Two listeners on one protocol, port and address (or every address):
  # one of them fails to start, or (SO_REUSEPORT) both start and share the
  # traffic. Port 0 is any free port.
  ports = optionals cfg.enable daemonPorts ++ optionals tcfg.enable trackerPorts;
  clash = a: b: a.proto == b.proto && a.port == b.port && a.port != 0 && (a.host == null || b.host == null || a.host == b.host);
  portClashes = lib.concatLists (
    lib.imap0 (
      i: a:
      map (b: {
        assertion = false;
        message = "${a.key} (${a.what}) and ${b.key} (${b.what}) are both ${a.proto} port ${toString a.port} on this machine: give one of them another port.";
      }) (filter (clash a) (lib.drop (i + 1) ports))
    ) ports
  );

  # Port 0 (any free port) cannot be opened; an assertion says so.
  firewallOf =
    list:
    let
      open = proto: map (p: p.port) (filter (p: p.open && p.proto == proto && p.port != 0) list);
    in
    {
      allowedTCPPorts = open "TCP";
      allowedUDPPorts = open "UDP";
    };

  # The sandbox both units share.
  hardening = {
    DynamicUser = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    DevicePolicy = "closed";
    # See the top: root (the store's owner) stays root in the namespace.
    PrivateUsers = true;
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
    ProcSubset = "pid";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    RemoveIPC = true;
    SystemCallArchitectures = "native";
    # ~@resources: Go's attempt to raise its open-file limit then fails
    # quietly, which is harmless: LimitNOFILE sets it.
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
      "~@resources"
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
in
{
  options.services.peerix = {
    enable = mkEnableOption "peerix, the peer-to-peer binary cache for Nix, as a substituter of this machine";

    package = mkPackageOption peerixPkgs "peerix" {
      extraDescription = "Where pkgs has no peerix (neither nixpkgs nor this flake's overlay), it is built from this module's source.";
    };

    settings = mkOption {
      default = { };
      example = literalExpression ''
        {
          mode = "lan";
          priority = 10;
          filter-pattern = [ "*-secret*" ];
        }
      '';
      description = ''
        peerix's configuration file (TOML; see `peerix serve --help`): keys
        named like the flags of `peerix serve`. The options below are its
        defaults; every value set here is what the daemon runs with. A key
        that peerix does not know is an evaluation error. Check the result
        with `peerix serve --check-config --config FILE`.
      '';
      type = types.submodule (
        { config, ... }:
        {
          freeformType = settingsFormat.type;
          options = {
            listen = mkOption {
              type = types.str;
              default = if config.lan then "0.0.0.0:12304" else "127.0.0.1:12304";
              defaultText = literalExpression ''if lan then "0.0.0.0:12304" else "127.0.0.1:12304"'';
              example = "[::]:12304";
              description = ''
                HOST:PORT of the HTTP binary cache (IPv6 hosts in brackets). It must
                include loopback: this machine's Nix uses it at http://127.0.0.1:PORT
                (or the loopback address given), and the routes that find paths on
                peers answer only loopback callers. LAN peers fetch from it, so by
                default it listens on every interface with LAN discovery and on
                loopback only without.
              '';
            };
            mode = mkOption {
              type = types.enum [
                "p2p"
                "lan"
                "local"
              ];
              default = "p2p";
              description = ''
                How peers are found: `p2p` through libp2p and the tracker (and on the
                LAN), `lan` by LAN discovery only, `local` not at all (peerix then
                serves only this machine's store, like nix-serve).
              '';
            };
            store-root = mkOption {
              type = types.str;
              default = "/";
              description = "Root of the Nix store to serve (`/`, or a chroot store as `nix --store DIR` makes).";
            };
            state-dir = mkOption {
              type = types.str;
              default = stateDir;
              description = "Peer identity, stats and caches. The unit can write only here (its StateDirectory).";
            };
            tracker = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "https://tracker.example.org";
              description = "Tracker base URL (p2p mode); null: none, peers are then found on the LAN only.";
            };
            p2p-port = mkOption {
              type = types.port;
              default = 12306;
              description = "libp2p port, TCP and QUIC (UDP); 0 is any free port.";
            };
            lan = mkOption {
              type = types.bool;
              default = config.mode != "local";
              defaultText = literalExpression ''mode != "local"'';
              description = "LAN discovery: UDP broadcast and summaries of what LAN peers hold. Always on in lan mode, impossible in local mode.";
            };
            lan-port = mkOption {
              type = types.port;
              default = 12304;
              description = "UDP port of LAN discovery (the original peerix uses 12304).";
            };
            lan-timeout = mkOption {
              type = types.str;
              default = "500ms";
              description = "How long to wait for answers from LAN peers (a Go duration).";
            };
            upstream = mkOption {
              type = types.str;
              default = "https://cache.nixos.org";
              description = "Upstream binary cache, for the filter and the verifier.";
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
                null: peerix's default for the mode.
              '';
            };
            filter-pattern = mkOption {
              type = types.listOf types.str;
              default = [ ];
              example = [ "*-secrets*" ];
              description = "Store path name globs never to share, besides the built-in deny-list.";
            };
            no-verify = mkOption {
              type = types.bool;
              default = false;
              description = "Hand peers' narinfos to Nix without checking them against the upstream or trusted keys.";
            };
            trusted-public-key = mkOption {
              type = types.listOf types.str;
              default = [ ];
              example = [ "my-cache-1:AbCd...=" ];
              description = ''
                Keys (name:base64) whose signatures make a peer's path acceptable to
                peerix's verifier. This does not change Nix's own trusted-public-keys.
              '';
            };
            priority = mkOption {
              type = types.ints.unsigned;
              default = 30;
              description = "nix-cache-info Priority: lower is asked first; cache.nixos.org is 40.";
            };
            signing-key-file = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = ''
                A Nix secret key file the daemon's user can read. Prefer
                `services.peerix.signingKeyFile`, which hands any root-only file to the
                sandboxed daemon.
              '';
            };
            verbose = mkOption {
              type = types.bool;
              default = false;
              description = "Log debug messages.";
            };
          };
        }
      );
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

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open what the daemon listens on beyond loopback: the HTTP port when
        `listen` is not a loopback address, UDP `lan-port` with LAN discovery,
        TCP and UDP (QUIC) `p2p-port` in p2p mode.
      '';
    };
  };

  options.services.peerix-tracker = {
    enable = mkEnableOption "the peerix tracker, which lets peerix daemons find each other across the internet";

    package = mkPackageOption peerixPkgs "peerix" {
      extraDescription = "Where pkgs has no peerix, it is built from this module's source.";
    };

    settings = mkOption {
      default = { };
      example = literalExpression ''{ peer-ttl = "90s"; db = "postgres:///peerix?host=/run/postgresql"; }'';
      description = ''
        The tracker's configuration file (TOML; see `peerix tracker --help`),
        keys named like its flags. The options below are its defaults; a key
        that peerix does not know is an evaluation error.
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          listen = mkOption {
            type = types.str;
            default = "0.0.0.0:12305";
            description = "HOST:PORT of the tracker's HTTP API.";
          };
          db = mkOption {
            type = types.str;
            default = "${trackerStateDir}/tracker.db";
            example = "postgres:///peerix?host=/run/postgresql";
            description = "SQLite file (under ${trackerStateDir}, the unit's only writable place) or postgres:// URL.";
          };
          relay-port = mkOption {
            type = types.port;
            default = 12307;
            description = "libp2p relay port, TCP and QUIC (UDP); not a daemon's 12306, so both fit on one machine.";
          };
          peer-ttl = mkOption {
            type = types.str;
            default = "2m";
            description = "A peer that sends no heartbeat for this long is forgotten (a Go duration).";
          };
          verbose = mkOption {
            type = types.bool;
            default = false;
            description = "Log debug messages.";
          };
        };
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the API's TCP port (unless it listens on loopback) and the relay's TCP and UDP port.";
    };
  };

  config = mkMerge [
    { assertions = portClashes; }

    (mkIf cfg.enable {
      assertions =
        unknownKeyAssertions "services.peerix" options.services.peerix.settings s
        ++ [
          {
            assertion = listen != null && listen.port > 0 && listen.port < 65536;
            message = "services.peerix.settings.listen must be HOST:PORT with a port from 1 to 65535 (IPv6 hosts in brackets), not \"${s.listen}\".";
          }
          {
            assertion = listen == null || isWildcard listen.host || isLoopback listen.host;
            message = "services.peerix.settings.listen must include loopback (0.0.0.0, [::], 127.0.0.1 or [::1]), where this machine's Nix reaches peerix, not \"${s.listen}\".";
          }
          {
            assertion = !(s.lan && s.mode == "local");
            message = "services.peerix.settings.lan cannot be true in mode \"local\", which looks for no peers.";
          }
          {
            assertion = s.lan || s.mode != "lan";
            message = "services.peerix.settings.lan cannot be false in mode \"lan\", which finds peers only on the LAN.";
          }
          {
            assertion = !(cfg.openFirewall && s.mode == "p2p" && s.p2p-port == 0);
            message = "services.peerix.openFirewall needs a fixed settings.p2p-port, not 0.";
          }
          {
            assertion = s.state-dir == stateDir;
            message = "services.peerix.settings.state-dir must be ${stateDir}, the unit's StateDirectory (the only place it may write).";
          }
          {
            assertion = isDuration s.lan-timeout;
            message = "services.peerix.settings.lan-timeout must be a Go duration such as \"500ms\", not \"${s.lan-timeout}\".";
          }
          {
            assertion = isHTTPURL s.upstream;
            message = "services.peerix.settings.upstream must be an http:// or https:// URL without query, not \"${s.upstream}\".";
          }
          {
            assertion = s.tracker == null || isHTTPURL s.tracker;
            message = "services.peerix.settings.tracker must be an http:// or https:// URL without query, not \"${toString s.tracker}\".";
          }
          {
            assertion = lib.all (k: builtins.match "[^:]+:[A-Za-z0-9+/]+=*" k != null) s.trusted-public-key;
            message = "services.peerix.settings.trusted-public-key takes keys as name:base64, as in nix.conf.";
          }
          {
            assertion = !(elem "" s.filter-pattern);
            message = "services.peerix.settings.filter-pattern must not contain an empty pattern.";
          }
          {
            assertion = cfg.signingKeyFile == null || s.signing-key-file == null;
            message = "Set services.peerix.signingKeyFile or services.peerix.settings.signing-key-file, not both.";
          }
          {
            assertion = lib.all (f: f == null || !hasPrefix builtins.storeDir f) [
              cfg.signingKeyFile
              s.signing-key-file
            ];
            message = "The peerix signing key must not be in the Nix store, where everyone can read it.";
          }
        ];

      warnings =
        optional (s.mode == "p2p" && s.tracker == null) (
          "services.peerix: mode \"p2p\" without settings.tracker finds "
          + (if s.lan then "peers on the LAN only" else "no peers at all (and settings.lan is false)")
          + "; set settings.tracker, or mode \"lan\"."
        )
        ++ optional (s.lan && listen != null && isLoopback listen.host) (
          "services.peerix: settings.listen ${s.listen} is loopback only, so LAN peers that find a path here cannot fetch it; listen on 0.0.0.0."
        );

      # The one global Nix setting peerix changes.
      nix.settings.extra-substituters = [ substituterURL ];

      networking.firewall = mkIf cfg.openFirewall (firewallOf daemonPorts);

      systemd.services.peerix = {
        description = "peerix peer-to-peer Nix binary cache";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [
          "network-online.target"
          "nix-daemon.service"
        ];
        # The signing key as a systemd credential (%d: its directory), read
        # only when the settings name no key file.
        environment.NIX_SECRET_KEY_FILE = if cfg.signingKeyFile != null then "%d/signing-key" else "";
        serviceConfig = hardening // {
          StateDirectory = "peerix";
          StateDirectoryMode = "0700";
          WorkingDirectory = stateDir;
          ReadOnlyPaths = [ "/nix" ];
          ExecStartPre = [ "+${prepareNixDb}" ];
          # Everything is in the file: no flag overrides it.
          ExecStart = utils.escapeSystemdExecArgs [
            (lib.getExe' cfg.package "peerix")
            "serve"
            "--config"
            configFile
          ];
          LoadCredential = optional (cfg.signingKeyFile != null) "signing-key:${cfg.signingKeyFile}";
          # SIGHUP: rescan the store.
          ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
          # SIGTERM saves the stats and stops within 5 s.
          TimeoutStopSec = "10s";
        };
      };
    })

    (mkIf tcfg.enable {
      assertions = unknownKeyAssertions "services.peerix-tracker" options.services.peerix-tracker.settings ts ++ [
        {
          assertion = trackerListen != null && trackerListen.port < 65536;
          message = "services.peerix-tracker.settings.listen must be HOST:PORT (IPv6 hosts in brackets), not \"${ts.listen}\".";
        }
        {
          assertion = isDuration ts.peer-ttl;
          message = "services.peerix-tracker.settings.peer-ttl must be a Go duration such as \"2m\", not \"${ts.peer-ttl}\".";
        }
        {
          assertion = ts.db != "";
          message = "services.peerix-tracker.settings.db must be a SQLite file path or a postgres:// URL.";
        }
        {
          assertion = !(tcfg.openFirewall && ts.relay-port == 0);
          message = "services.peerix-tracker.openFirewall needs a fixed settings.relay-port, not 0.";
        }
      ];

      networking.firewall = mkIf tcfg.openFirewall (firewallOf trackerPorts);

      systemd.services.peerix-tracker = {
        description = "peerix tracker";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ] ++ optional (hasPrefix "postgres" ts.db) "postgresql.service";
        serviceConfig = hardening // {
          StateDirectory = "peerix-tracker";
          StateDirectoryMode = "0700";
          WorkingDirectory = trackerStateDir;
          ReadOnlyPaths = [ "/nix" ];
          ExecStart = utils.escapeSystemdExecArgs [
            (lib.getExe' tcfg.package "peerix")
            "tracker"
            "--config"
            trackerConfigFile
          ];
          TimeoutStopSec = "10s";
        };
      };
    })
  ];

  meta.maintainers = [ ];
}
