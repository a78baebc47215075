# The host config nix/module.nix produces with its own defaults (plus
# `overrides`), evaluated with stand-ins: see standin.nix.
{
  overrides ? { },
  # the rest of the host's config (e.g. fileSystems, services.postgresql)
  hostConfig ? { },
  # the directory of module.nix (a test may evaluate an edited copy)
  nixDir ? ../../nix,
}:
let
  s = import ./standin.nix;
  m = import (nixDir + "/module.nix") {
    inherit config;
    inherit (s) lib pkgs;
  };
  config = s.recursiveUpdate {
    services.hyperhive = s.recursiveUpdate (s.defaultsOf m.options.services.hyperhive) (
      { enable = true; } // overrides
    );
    services.nats = {
      port = 4222;
      settings.port = 4222;
    };
    system.stateVersion = "26.05";
    systemd.package = s.pkgs.systemd;
    nix.package = s.pkgs.nix;
  } hostConfig;
in
{
  inherit (m) config;
  options = builtins.attrNames m.options.services.hyperhive;
  aliases = map (i: i.alias.from) m.imports;
}
