# services.hyperhive: hyperhive on a NixOS host (docs/architecture.md).
#
# What it sets up:
#   - nats-server (services.nats) with JetStream on 127.0.0.1, its users taken
#     from the auth file lifecycle keeps under <dataDir>/nats (nkeys only, no
#     anonymous user); `hive-setup` creates the seeds and base users first;
#   - PostgreSQL (services.postgresql) with a `hyperhive` database owned by a
#     `hyperhive` role, reached over the unix socket with peer auth;
#   - one systemd unit per service, built from ./services.nix (which mirrors
#     hyperhive.common.subjects.SERVICES; tests/nix checks they agree):
#     hive-broker, hive-lifecycle, hive-approvals, hive-crash-watch,
#     hive-dashboard, each `hive serve <part>`;
#   - the operator token the dashboard requires: `operatorTokenFile`, or one
#     `hive-setup` generates (root-only, <dataDir>/operator-token), passed to
#     hive-dashboard as the systemd credential `operator-token` (the dashboard
#     reads $CREDENTIALS_DIRECTORY/operator-token);
#   - a `hive` command for the operator, wired to the local NATS as operator
#     (`sudo hive dashboard-url` prints the login URL).
#
# With role = "node" (docs/multihost.md) it sets up only hive-node, the node
# agent for the hub at node.hubAddress, started once `hive node --join` has
# written its seed (node.credentialsFile): no NATS, no PostgreSQL.
#
# The agent containers are not defined here: lifecycle creates them at run
# time with nixos-container from per-agent flakes that import
# ./harness-base.nix (the container side).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkOption
    mkEnableOption
    mkIf
    types
    ;

  cfg = config.services.hyperhive;

  # one entry per unit: each service of ./services.nix, the broker once per
  # instance (see instancesOf)
  services = builtins.concatMap instancesOf (import ./services.nix);

  natsDir = "${cfg.dataDir}/nats";
  authFile = "${natsDir}/auth.conf";
  serviceSeed = "${natsDir}/service.seed";
  operatorSeed = "${natsDir}/operator.seed";
  # the dashboard's operator token: the given file, else one hive-setup makes
  generatedToken = "${cfg.dataDir}/operator-token";
  operatorToken = if cfg.operatorTokenFile != null then cfg.operatorTokenFile else generatedToken;
  natsUrl = "nats://127.0.0.1:${toString config.services.nats.port}";
  hive = "${cfg.package}/bin/hive";
  systemctl = "${config.systemd.package}/bin/systemctl";

  # nixos-container keeps its per-container config and roots here (the name
  # depends on the host's stateVersion, as in nixpkgs' nixos-containers.nix).
  containerDirName =
    if lib.versionAtLeast config.system.stateVersion "22.05" then "nixos-containers" else "containers";

  natsConf = pkgs.writeText "hyperhive-nats.conf" (
    import ./nats-conf.nix {
      inherit (config.services.nats) settings;
      inherit authFile;
    }
  );

  # PostgreSQL is for the services only (docs/operations.md, threat model): peer auth over
  # /run/postgresql for the hyperhive role, and before anything else in
  # pg_hba.conf (first match wins) TCP to its database or as its role is
  # rejected, whatever listen_addresses is and whatever rules come later.
  pgAuthentication = ''
    local hyperhive hyperhive              peer map=hyperhive
    host  hyperhive all       0.0.0.0/0    reject
    host  hyperhive all       ::/0         reject
    host  all       hyperhive 0.0.0.0/0    reject
    host  all       hyperhive ::/0         reject
  '';
  # every pg_hba.conf line of the host that trusts a TCP client (none may)
  pgTrustOnTcp = builtins.filter (
    line:
    builtins.isString line
    && builtins.match "[[:space:]]*host[a-z]*[[:space:]]+.*[[:space:]]trust([[:space:]].*)?" line != null
  ) (builtins.split "\n" (config.services.postgresql.authentication or ""));

  # privateUsers needs id-mapped bind mounts of the agents' dirs: the
  # filesystem holding dataDir (its longest mount point) must support them.
  idmapFilesystems = [
    "btrfs"
    "ext4"
    "f2fs"
    "overlay"
    "tmpfs"
    "xfs"
  ];
  fileSystems = config.fileSystems or { };
  dataMounts = builtins.filter (m: m == "/" || lib.hasPrefix "${m}/" "${cfg.dataDir}/") (
    builtins.attrNames fileSystems
  );
  dataMount = builtins.foldl' (
    a: b: if a == null || builtins.stringLength b > builtins.stringLength a then b else a
  ) null dataMounts;
  dataFsType = if dataMount == null then null else fileSystems.${dataMount}.fsType or null;
  zfsIdmap = lib.versionAtLeast (config.boot.zfs.package.version or "0") "2.2";
  idmapOk =
    dataFsType == null
    || builtins.elem dataFsType idmapFilesystems
    || (dataFsType == "zfs" && zfsIdmap);

  # Environment every service gets (hyperhive.common.config reads HIVE_*).
  commonEnv = {
    HIVE_HOME = cfg.dataDir;
    # explicit role: lifecycle and approvals run as root (see identMap below)
    HIVE_DATABASE_URL = "postgresql://hyperhive@/hyperhive?host=/run/postgresql";
    HIVE_NATS_URL = natsUrl;
    HIVE_NATS_SEED_FILE = serviceSeed;
    HIVE_NATS_INBOX_PREFIX = "";
    HIVE_NATS_AUTH_FILE = authFile;
    HIVE_NATS_RELOAD_COMMAND = "${systemctl} reload nats.service";
    HIVE_LIFECYCLE_BACKEND = "nixos";
    HIVE_LIFECYCLE_MANAGER = cfg.manager;
    HIVE_LIFECYCLE_FLAKE_REF = cfg.flakeRef;
    HIVE_LIFECYCLE_REV = cfg.rev;
    HIVE_LIFECYCLE_NIXOS_SYSTEM = pkgs.stdenv.hostPlatform.system;
    HIVE_LIFECYCLE_NIXOS_CONF_DIR = "/etc/${containerDirName}";
    HIVE_LIFECYCLE_NIXOS_PRIVATE_USERS = lib.boolToString cfg.privateUsers;
    HIVE_DASHBOARD_HOST = cfg.dashboard.host;
    HIVE_DASHBOARD_PORT = toString cfg.dashboard.port;
    HIVE_CRASHWATCH_POLL_INTERVAL_S = toString cfg.pollInterval;
    HIVE_LOG_LEVEL = cfg.logLevel;
    PYTHONUNBUFFERED = "1";
  };

  # Repos under the data dir may be owned by another uid (the manager's
  # container writes the proposed repos); git must still work on them.
  gitTrustEnv = {
    GIT_CONFIG_COUNT = "1";
    GIT_CONFIG_KEY_0 = "safe.directory";
    GIT_CONFIG_VALUE_0 = "*";
  };

  # Shared by every unit.
  baseHardening = {
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ReadWritePaths = [ cfg.dataDir ];
    ProtectHome = true;
    PrivateTmp = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    RestrictSUIDSGID = true;
    RestrictRealtime = true;
    LockPersonality = true;
    SystemCallArchitectures = "native";
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
      "AF_NETLINK"
    ];
  };

  # Units that need no root: their own user, no capabilities at all.
  unprivileged = baseHardening // {
    User = "hyperhive";
    Group = "hyperhive";
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    PrivateDevices = true;
    RestrictNamespaces = true;
    UMask = "0027";
  };

  # What each part needs beyond the defaults.
  perPart = {
    # Drives nixos-container (root): it writes the container configs, roots
    # and profiles, builds through the nix daemon and starts container@ units.
    lifecycle = {
      environment = gitTrustEnv // {
        NIX_REMOTE = "daemon";
        HOME = "/var/cache/hive-lifecycle";
        XDG_CACHE_HOME = "/var/cache/hive-lifecycle";
      };
      path = [
        pkgs.nixos-container
        config.nix.package
        config.systemd.package
        pkgs.git
        pkgs.util-linux
        pkgs.e2fsprogs
        pkgs.coreutils
      ];
      serviceConfig = baseHardening // {
        User = "root";
        CacheDirectory = "hive-lifecycle";
        ReadWritePaths = [
          cfg.dataDir
          "/etc/${containerDirName}"
          "/var/lib/${containerDirName}"
          "/nix/var/nix/profiles"
          "/nix/var/nix/gcroots"
          "/run/lock"
        ];
        # the auth file it renders must stay readable by nats-server
        UMask = "0022";
      };
    };
    # Root-owned per-agent repos, but no capability whatsoever.
    approvals = {
      # HOME: git must not trip over root's home, hidden by ProtectHome
      environment = gitTrustEnv // {
        HOME = "/var/empty";
      };
      path = [ pkgs.git ];
      serviceConfig = baseHardening // {
        User = "root";
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        PrivateDevices = true;
        RestrictNamespaces = true;
        UMask = "0022";
      };
    };
    # Asks `nixos-container status` (systemctl show) about each container.
    crash-watch = {
      path = [
        pkgs.nixos-container
        config.systemd.package
      ];
    };
    # A NATS client only, with the operator's credentials (docs/architecture.md).
    # Always behind the operator token: a systemd credential, so the root-only
    # file is read by systemd and the unprivileged unit sees it only in its
    # own $CREDENTIALS_DIRECTORY (no agent can read either).
    dashboard = {
      environment = {
        HIVE_NATS_SEED_FILE = operatorSeed;
        HIVE_NATS_INBOX_PREFIX = "_INBOX.operator";
      };
      serviceConfig = {
        LoadCredential = "operator-token:${operatorToken}";
      };
    };
  };

  # services.hyperhive.broker.instances: hive-broker, hive-broker-2, ... serve
  # the broker's subjects together (one NATS queue group, one database)
  instancesOf =
    svc:
    if svc.part == "broker" then
      [ svc ]
      ++ builtins.genList (
        i: svc // { name = "${svc.name}-${toString (i + 2)}"; }
      ) (cfg.broker.instances - 1)
    else
      [ svc ];

  unitFor =
    svc:
    let
      extra = perPart.${svc.part} or { };
    in
    lib.nameValuePair svc.name {
      description = svc.description;
      wantedBy = [ "multi-user.target" ];
      after = [
        "network.target"
        "hive-setup.service"
        "nats.service"
        "postgresql.service"
        # newer nixpkgs create the role and database here
        "postgresql-setup.service"
      ];
      requires = [
        "hive-setup.service"
        "nats.service"
        "postgresql.service"
      ];
      environment = commonEnv // (extra.environment or { }) // cfg.extraEnvironment;
      path = extra.path or [ ];
      serviceConfig =
        (if svc.privileged then { } else unprivileged)
        // {
          Type = "simple";
          ExecStart = "${hive} serve ${svc.part}";
          Restart = "on-failure";
          RestartSec = "5s";
          SyslogIdentifier = svc.name;
        }
        // (extra.serviceConfig or { });
    };

  # `hive` for the operator: the local hive, as the operator.
  cliConfig = pkgs.writeText "hyperhive-cli.toml" ''
    # Written by services.hyperhive: how `hive` reaches this host's hive.
    [nats]
    url = "${natsUrl}"
    seed_file = "${operatorSeed}"
    inbox_prefix = "_INBOX.operator"

    [dashboard]
    host = "${cfg.dashboard.host}"
    port = ${toString cfg.dashboard.port}
    # root's: `sudo hive dashboard-url` prints the login URL
    token_file = "${operatorToken}"
  '';
  cli = pkgs.writeShellScriptBin "hive" ''
    export HIVE_CONFIG="''${HIVE_CONFIG:-/etc/hyperhive/cli.toml}"
    exec ${hive} "$@"
  '';

  # The original project's option name, for configs written for it.
  aliasPaths = [
    [ "enable" ]
    [ "package" ]
    [ "dataDir" ]
    [
      "dashboard"
      "host"
    ]
    [
      "dashboard"
      "port"
    ]
    [ "operatorTokenFile" ]
    [ "manager" ]
  ];

  # role = node: the node agent alone (docs/multihost.md), for the hub at
  # node.hubAddress; the agents' containers run here, the rest on the hub
  nodeEnv = {
    HIVE_HOME = cfg.dataDir;
    HIVE_NATS_URL = toString cfg.node.hubAddress;
    # the seed is a systemd credential (LoadCredential below)
    HIVE_NATS_SEED_FILE = "%d/node-seed";
    HIVE_NATS_INBOX_PREFIX = "_INBOX.node-${cfg.node.name}";
    HIVE_NODE_NAME = cfg.node.name;
    HIVE_LIFECYCLE_BACKEND = "nixos";
    HIVE_LIFECYCLE_FLAKE_REF = cfg.flakeRef;
    HIVE_LIFECYCLE_REV = cfg.rev;
    HIVE_LIFECYCLE_NIXOS_SYSTEM = pkgs.stdenv.hostPlatform.system;
    HIVE_LIFECYCLE_NIXOS_CONF_DIR = "/etc/${containerDirName}";
    HIVE_LIFECYCLE_NIXOS_PRIVATE_USERS = lib.boolToString cfg.privateUsers;
    HIVE_LOG_LEVEL = cfg.logLevel;
    PYTHONUNBUFFERED = "1";
  };

  nodeConfig = {
    assertions = [
      {
        assertion = cfg.node.hubAddress != null;
        message = "services.hyperhive.role = \"node\" needs node.hubAddress (the hub's NATS URL).";
      }
      {
        assertion = cfg.node.credentialsFile != null && lib.hasPrefix "/" cfg.node.credentialsFile;
        message = ''
          services.hyperhive.role = "node" needs node.credentialsFile, an
          absolute path to the node's seed (`hive node --join ... --join-only`
          writes <dataDir>/node.seed).
        '';
      }
      {
        assertion = cfg.flakeRef != "";
        message = "services.hyperhive.flakeRef is empty (see the hub's assertion).";
      }
    ];

    systemd.tmpfiles.rules = [
      "d ${cfg.dataDir} 0700 root root -"
      "d ${cfg.dataDir}/agents 0700 root root -"
      "d /etc/${containerDirName} 0755 root root -"
      "d /var/lib/${containerDirName} 0700 root root -"
      "d /nix/var/nix/profiles/per-container 0700 root root -"
      "d /nix/var/nix/gcroots/per-container 0755 root root -"
    ];

    boot.enableContainers = lib.mkDefault true;
    nix.settings.experimental-features = [
      "nix-command"
      "flakes"
    ];

    systemd.services.hive-node = {
      description = "hyperhive node agent: the agents on this host, for the hub";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # no seed yet (the machine has not joined): hive-node.path starts it
      # once `hive node --join` has written it
      unitConfig.ConditionPathExists = toString cfg.node.credentialsFile;
      environment = nodeEnv // perPart.lifecycle.environment // cfg.extraEnvironment;
      inherit (perPart.lifecycle) path;
      serviceConfig = perPart.lifecycle.serviceConfig // {
        Type = "simple";
        ExecStart = "${hive} serve node";
        Restart = "on-failure";
        RestartSec = "5s";
        SyslogIdentifier = "hive-node";
        LoadCredential = "node-seed:${toString cfg.node.credentialsFile}";
      };
    };
    systemd.paths.hive-node = {
      wantedBy = [ "multi-user.target" ];
      pathConfig.PathExists = toString cfg.node.credentialsFile;
    };
  };

  # role = hub (the default): NATS, PostgreSQL, every service
  hubConfig = {
    assertions = [
      {
        assertion = lib.versionAtLeast cfg.natsPackage.version "2.14.3";
        message = ''
          services.hyperhive needs nats-server >= 2.14.3 (per-agent permissions
          rely on fixes in it); this nixpkgs has ${cfg.natsPackage.version}. Set
          services.hyperhive.natsPackage to a newer build.
        '';
      }
      {
        assertion = cfg.flakeRef != "";
        message = ''
          services.hyperhive.flakeRef is empty: import hyperhive's flake module
          (hyperhive.nixosModules.hyperhive), which sets it, or set it to the
          hyperhive flake the agent containers should be built from.
        '';
      }
      {
        assertion = pgTrustOnTcp == [ ];
        message = ''
          services.postgresql.authentication trusts TCP clients, which every
          agent container can be (they share the host's network): the
          hyperhive database is for the services only. Use peer or
          scram-sha-256 instead of trust on these lines:
            ${builtins.concatStringsSep "\n    " pgTrustOnTcp}
        '';
      }
      {
        assertion = !cfg.privateUsers || idmapOk;
        message = ''
          services.hyperhive.privateUsers needs id-mapped bind mounts of the
          agents' dirs under ${cfg.dataDir}, but it is on a ${toString dataFsType}
          filesystem (mounted at ${toString dataMount}), which cannot do them
          (id-mapped mounts: ${builtins.concatStringsSep ", " idmapFilesystems}, zfs >= 2.2).
          Move dataDir to such a filesystem, or set
          services.hyperhive.privateUsers = false: the agents' root is then
          the host's root inside their containers.
        '';
      }
      {
        assertion = cfg.operatorTokenFile == null || lib.hasPrefix "/" cfg.operatorTokenFile;
        message = "services.hyperhive.operatorTokenFile must be an absolute path.";
      }
    ];

    users.users.hyperhive = {
      isSystemUser = true;
      group = "hyperhive";
      home = cfg.dataDir;
      description = "hyperhive services";
    };
    users.groups.hyperhive = { };

    systemd.tmpfiles.rules = [
      "d ${cfg.dataDir} 0755 root root -"
      # seeds in here are 0640 root:hyperhive; auth.conf and users.d are
      # public keys only, readable by nats
      "d ${natsDir} 0755 root root -"
      # agents' credentials and repos: root's (lifecycle, approvals); the
      # hyperhive group may only pass through, to reach each agent's page
      # socket (run/page.sock) for the dashboard (seeds and claude
      # credentials below are 0600 root)
      "d ${cfg.dataDir}/agents 0710 root hyperhive -"
      "d /etc/${containerDirName} 0755 root root -"
      "d /var/lib/${containerDirName} 0700 root root -"
      "d /nix/var/nix/profiles/per-container 0700 root root -"
      "d /nix/var/nix/gcroots/per-container 0755 root root -"
    ];

    # JetStream, localhost only; users come from the auth file (no anonymous
    # user, no no_auth_user).
    services.nats = {
      enable = true;
      jetstream = true;
      settings = {
        host = lib.mkDefault "127.0.0.1";
        max_payload = lib.mkDefault 4194304;
      };
    };

    services.postgresql = {
      enable = true;
      ensureDatabases = [ "hyperhive" ];
      ensureUsers = [
        {
          name = "hyperhive";
          ensureDBOwnership = true;
        }
      ];
      # lifecycle and approvals run as root, the others as hyperhive: both
      # may log in as the hyperhive role, nobody else
      identMap = ''
        hyperhive root      hyperhive
        hyperhive hyperhive hyperhive
      '';
      authentication = lib.mkBefore pgAuthentication;
    };

    # nixos-container needs these; flakes build the per-agent containers
    boot.enableContainers = lib.mkDefault true;
    nix.settings.experimental-features = [
      "nix-command"
      "flakes"
    ];

    systemd.services = lib.mkMerge [
      (lib.listToAttrs (map unitFor services))
      {
        hive-setup = {
          description = "hyperhive: NATS seeds, base users and auth file";
          wantedBy = [ "multi-user.target" ];
          before = [ "nats.service" ];
          serviceConfig = baseHardening // {
            Type = "oneshot";
            RemainAfterExit = true;
            ExecStart = "${hive} setup-nats --dir ${natsDir} --group hyperhive";
            # the dashboard's operator token, root's alone (0600), made once
            ExecStartPost = lib.optional (
              cfg.operatorTokenFile == null
            ) "${hive} setup-token --file ${generatedToken}";
            UMask = "0022";
            CapabilityBoundingSet = [
              "CAP_CHOWN"
              "CAP_FOWNER"
            ];
          };
        };

        nats = {
          after = [ "hive-setup.service" ];
          requires = [ "hive-setup.service" ];
          # settings plus the include of the auth file (see nats-conf.nix);
          # `systemctl reload nats` (SIGHUP) re-reads both
          serviceConfig.ExecStart = lib.mkForce "${cfg.natsPackage}/bin/nats-server -c ${natsConf}";
        };
      }
    ];

    environment.etc."hyperhive/cli.toml".source = cliConfig;
    environment.systemPackages = [ cli ];

    networking.firewall.allowedTCPPorts =
      lib.optional cfg.dashboard.openFirewall cfg.dashboard.port
      ++ lib.optional cfg.openNatsFirewall config.services.nats.port;
    };
in
{
  imports = map (
    p: lib.mkAliasOptionModule ([ "services" "hive-c0re" ] ++ p) ([ "services" "hyperhive" ] ++ p)
  ) aliasPaths;

  options.services.hyperhive = {
    enable = mkEnableOption "hyperhive, a swarm of Claude Code agents in nixos-containers";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "hyperhive.packages.\${system}.default";
      description = "The hyperhive package (provides `hive`).";
    };

    dataDir = mkOption {
      type = types.str;
      default = "/var/lib/hyperhive";
      description = ''
        Where hyperhive keeps its files: `nats/` (seeds, users.d, auth.conf)
        and `agents/<name>/{proposed,applied,state,creds,run}`. Not under
        /home (the units run with ProtectHome).
      '';
    };

    dashboard = {
      host = mkOption {
        type = types.str;
        default = "127.0.0.1";
        description = "Address the dashboard binds to. Keep it on localhost unless it is protected.";
      };
      port = mkOption {
        type = types.port;
        default = 7000;
        description = "Dashboard port.";
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open the dashboard port in the firewall (only useful with a non-local host).";
      };
    };

    operatorTokenFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/hyperhive-operator-token";
      description = ''
        File holding the operator token the dashboard requires on every page.
        Give a path outside the Nix store (a string, not a Nix path literal),
        readable by root; the dashboard gets it through systemd credentials.
        Null: `hive-setup` generates one at `<dataDir>/operator-token`
        (root-only, kept across restarts); `sudo hive dashboard-url` prints
        the login URL.
      '';
    };

    manager = mkOption {
      type = types.enum [
        "hm1nd"
        ""
      ];
      default = "hm1nd";
      description = ''
        Whether lifecycle creates the manager agent (its name is always
        hm1nd). Empty: no manager is created (for tests and hosts that only
        run the services).
      '';
    };

    broker.instances = mkOption {
      type = types.ints.between 1 64;
      default = 1;
      description = ''
        Broker processes to run, one unit each (the broker's unit, then the
        same name with -2, -3, ... appended). They serve the broker's
        subjects together (a NATS queue group) on the same database; more
        instances use more cores.
      '';
    };

    pollInterval = mkOption {
      type = types.numbers.positive;
      default = 10;
      description = "Seconds between crash-watch's polls of every container's state.";
    };

    logLevel = mkOption {
      type = types.enum [
        "DEBUG"
        "INFO"
        "WARNING"
        "ERROR"
      ];
      default = "INFO";
      description = "Log level of every service (logs go to the journal).";
    };

    extraEnvironment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        HIVE_TELEMETRY_EXPORTER = "otlp";
        HIVE_TELEMETRY_OTLP_ENDPOINT = "http://127.0.0.1:4318";
      };
      description = "Extra environment for every hyperhive unit (any `HIVE_<GROUP>_<FIELD>` setting).";
    };

    flakeRef = mkOption {
      type = types.str;
      default = "";
      example = "github:owner/hyperhive";
      description = ''
        The hyperhive flake the per-agent container flakes import
        harness-base.nix from (lifecycle pins it to `rev`). The flake's
        nixosModules.hyperhive sets it to its own source.
      '';
    };

    rev = mkOption {
      type = types.str;
      default = "";
      description = "The running hyperhive revision (auto-update rebuilds containers built from another one).";
    };

    privateUsers = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Run each agent container in its own user namespace (its root is an
        unprivileged uid on the host) with id-mapped bind mounts. Needs a
        filesystem under dataDir that supports id-mapped mounts (ext4, xfs,
        btrfs, tmpfs; ZFS from 2.2); turn off where it does not.
      '';
    };

    role = mkOption {
      type = types.enum [
        "hub"
        "node"
      ];
      default = "hub";
      description = ''
        What this host is in a hive that spans hosts (docs/multihost.md).
        `hub`: NATS with JetStream, PostgreSQL and every service (the
        default; a single-host hive is a hub). `node`: only the node agent
        (`hive serve node`, unit hive-node) for the agents placed here; it
        connects to the hub's NATS at `node.hubAddress` with the seed in
        `node.credentialsFile`, and runs no NATS, no database, no other
        service.
      '';
    };

    node = {
      name = mkOption {
        type = types.strMatching "^[a-z][a-z0-9-]{0,8}$";
        default = "node";
        example = "gpu1";
        description = "This node's name, as it joined the hub (`hive node --join --name`).";
      };
      hubAddress = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "tls://hub.example:4222";
        description = "The hub's NATS URL (role = node).";
      };
      credentialsFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/hyperhive/node.seed";
        description = ''
          The node agent's NATS seed (role = node): the file
          `hive node --join <hub> --token <t> --name <name> --join-only
          --home <dataDir>` writes (`<dataDir>/node.seed`). A path outside
          the Nix store, readable by root; passed to hive-node as a systemd
          credential. hive-node starts once it exists.
        '';
      };
    };

    openNatsFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open the hub's NATS port for nodes on other machines (role = hub).
        Also make NATS listen beyond localhost
        (`services.nats.settings.host`), and use TLS
        (`services.nats.settings.tls`) across untrusted networks.
      '';
    };

    natsPackage = mkOption {
      type = types.package;
      default = pkgs.nats-server;
      defaultText = lib.literalExpression "pkgs.nats-server";
      description = "nats-server to run; at least 2.14.3 (earlier ones have permission-bypass advisories).";
    };
  };

  config = mkIf cfg.enable (
    lib.mkMerge [
      (mkIf (cfg.role == "hub") hubConfig)
      (mkIf (cfg.role == "node") nodeConfig)
    ]
  );
}
