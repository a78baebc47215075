# The container side of an agent (docs/architecture.md): what every
# agent container runs, whatever its agent.nix adds. A NixOS module.
#
# Lifecycle's nixos backend renders one flake per agent
# (services/lifecycle/templates/flake.nix.in), pinned to the running
# hyperhive revision, that imports this file by this path:
#
#   nixosConfigurations."h-<name>" = nixpkgs.lib.nixosSystem {
#     modules = [
#       "${hyperhive}/nix/harness-base.nix"
#       "${agent}/agent.nix"                 # the agent's applied config
#       { hyperhive.agent = { name = "..."; port = 8123; manager = false;
#                             natsUrl = "nats://127.0.0.1:4222"; rev = "..."; }; }
#     ];
#   };
#
# Bind mounts are host-side: lifecycle puts them in the container's
# EXTRA_NSPAWN_FLAGS (NixosBackend.nspawn_flags): credentials → /root/.claude,
# state → /state, the run dir (NATS seed, page socket) → /run/hive, and for
# the manager the agents dir → /agents. This module runs the harness against
# those paths. The container shares the host's network, so the harness
# reaches NATS on 127.0.0.1; its page listens on no port: the harness serves
# the page's API on /run/hive/page.sock and the operator reaches it through
# the dashboard (/agents/<name>/).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;

  cfg = config.hyperhive.agent;
in
{
  options.hyperhive.agent = {
    name = mkOption {
      # nixos-container names are at most 11 characters: "h-" + 9
      type = types.strMatching "^[a-z][a-z0-9-]{0,8}$";
      description = "The agent's name.";
    };

    port = mkOption {
      type = types.port;
      description = "The port lifecycle assigned in its registry (nothing listens on it: the agent page is a unix socket, /run/hive/page.sock).";
    };

    manager = mkOption {
      type = types.bool;
      default = cfg.name == "hm1nd";
      defaultText = lib.literalExpression ''config.hyperhive.agent.name == "hm1nd"'';
      description = "Whether this is the manager (gets the manager tools and /agents).";
    };

    rev = mkOption {
      type = types.str;
      default = "";
      description = "The hyperhive revision this container was built from (set by lifecycle).";
    };

    natsUrl = mkOption {
      type = types.str;
      default = "nats://127.0.0.1:4222";
      description = "The host's NATS (the container shares the host's network).";
    };

    configDir = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = lib.literalExpression "agent  # the rendered flake's input";
      description = ''
        The agent's deployed config tree: agent.toml beside agent.nix
        (HIVE_HARNESS_CONFIG_DIR). Null: the harness uses agent.toml's
        defaults.
      '';
    };

    logLevel = mkOption {
      type = types.str;
      default = "INFO";
      description = "The harness's log level (HIVE_LOG_LEVEL).";
    };

    extraEnvironment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      description = "More environment for the harness (any HIVE_* setting).";
    };

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "hyperhive (its `hive harness serve` runs the turn loop).";
    };

    claudePackage = mkOption {
      type = types.package;
      default = pkgs.claude-code;
      defaultText = lib.literalExpression "pkgs.claude-code";
      description = "The claude CLI the harness runs each turn.";
    };
  };

  config = {
    boot.isContainer = true;
    networking.hostName = lib.mkDefault (if cfg.manager then cfg.name else "h-${cfg.name}");
    networking.useDHCP = false;
    # The container shares the host's network namespace: its own firewall
    # would replace the host's rules.
    networking.firewall.enable = lib.mkDefault false;
    documentation.enable = lib.mkDefault false;

    # claude-code is unfree; allowed here by name and nothing else. The
    # container evaluates its own nixpkgs, so the host's allowUnfree does not
    # reach in and this predicate has to live here.
    nixpkgs.config.allowUnfreePredicate = pkg: builtins.elem (lib.getName pkg) [ "claude-code" ];

    environment.systemPackages = [
      cfg.package
      cfg.claudePackage
      pkgs.git
    ];

    systemd.tmpfiles.rules = [
      "d /root/work 0700 root root -"
      "d /var/lib/hyperhive 0700 root root -"
    ];

    systemd.services.hive-harness = {
      description = "hyperhive harness of agent ${cfg.name}";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      # the bind mounts lifecycle sets up (see the top of this file)
      unitConfig.RequiresMountsFor = [
        "/root/.claude"
        "/state"
        "/run/hive"
      ]
      ++ lib.optionals cfg.manager [
        "/agents"
        "/applied"
      ];
      path = [
        cfg.claudePackage
        pkgs.git
        pkgs.coreutils
        pkgs.bash
      ];
      environment = {
        HOME = "/root";
        HIVE_HOME = "/var/lib/hyperhive";
        HIVE_HARNESS_AGENT = cfg.name;
        # the page's API: a unix socket in the run dir, no TCP port; the
        # dashboard reaches it at the host path agents/<name>/run/page.sock
        HIVE_HARNESS_SOCKET = "/run/hive/page.sock";
        HIVE_HARNESS_WORKDIR = "/root/work";
        HIVE_HARNESS_STATE_DIR = "/state";
        HIVE_HARNESS_CREDS_DIR = "/root/.claude";
        HIVE_HARNESS_CLAUDE_BIN = lib.getExe' cfg.claudePackage "claude";
        HIVE_NATS_URL = cfg.natsUrl;
        HIVE_NATS_SEED_FILE = "/run/hive/nats.seed";
        HIVE_NATS_INBOX_PREFIX = "_INBOX.${cfg.name}";
        HIVE_LOG_LEVEL = cfg.logLevel;
        DISABLE_AUTOUPDATER = "1";
      }
      // lib.optionalAttrs (cfg.configDir != null) {
        HIVE_HARNESS_CONFIG_DIR = "${cfg.configDir}";
      }
      # no HIVE_HARNESS_AGENTS_DIR: in a container the manager sees the
      # container layout (/agents/<n>/config, /agents/<n>/state, /applied/<n>),
      # which is what its prompt names when the variable is unset
      // cfg.extraEnvironment;
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/hive harness serve";
        WorkingDirectory = "/root/work";
        # optional: ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL /
        # CLAUDE_CODE_OAUTH_TOKEN for an agent without its own login
        EnvironmentFile = "-/run/hive/harness.env";
        Restart = "always";
        RestartSec = "2s";
      };
    };

    system.stateVersion = lib.mkDefault "25.11";
  };
}
