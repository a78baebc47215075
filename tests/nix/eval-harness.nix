# The container config nix/harness-base.nix produces for one agent (with the
# option values lifecycle's rendered flake gives), evaluated with stand-ins:
# see standin.nix.
{
  name,
  port,
  manager,
}:
let
  s = import ./standin.nix;
  m = import ../../nix/harness-base.nix {
    inherit config;
    inherit (s) lib pkgs;
  };
  config.hyperhive.agent = s.defaultsOf m.options.hyperhive.agent // {
    inherit name port manager;
    natsUrl = "nats://127.0.0.1:4222";
    rev = "0123456";
  };
in
{
  config = builtins.removeAttrs m.config [ "nixpkgs" ];
  options = builtins.attrNames m.options.hyperhive.agent;
  # what the unfree predicate lets through
  unfreeAllowed = builtins.filter (n: m.config.nixpkgs.config.allowUnfreePredicate { pname = n; }) [
    "claude-code"
    "vscode"
    "slack"
  ];
}
