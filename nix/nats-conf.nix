# The nats-server config hyperhive runs: the `services.nats.settings` of the
# host plus an `include` of the auth file that lifecycle keeps under the data
# dir (docs/architecture.md; hyperhive.common.nats_auth renders it from
# users.d/ and lifecycle makes nats re-read it with `systemctl reload nats`).
#
# nixpkgs renders `services.nats.settings` as one JSON object, which cannot
# hold an `include`; so this file writes each top-level setting as
# `key: <json>` (valid nats syntax) and appends the include. nats-server
# resolves every include relative to the config file's directory, even a
# path that starts with `/`, so the include climbs from `confDir` (the Nix
# store, where the file lives) to the root first.
#
# Plain builtins only, so tests/nix can evaluate it without nixpkgs.
{
  settings,
  authFile,
  confDir ? builtins.storeDir,
}:
let
  parts = builtins.filter (p: builtins.isString p && p != "") (builtins.split "/" confDir);
  climb = builtins.concatStringsSep "" (map (_: "../") parts);
  relative = climb + builtins.substring 1 (builtins.stringLength authFile) authFile;
  line = name: "${name}: ${builtins.toJSON settings.${name}}";
in
assert builtins.substring 0 1 authFile == "/";
builtins.concatStringsSep "\n" (map line (builtins.attrNames settings)) + "\ninclude \"${relative}\"\n"
