# agent.nix: this agent's container config, the entry point of its config
# repo. It is an ordinary NixOS module, added on top of hyperhive's
# harness-base.nix (which already runs the harness with claude-code and git,
# and mounts /state, /root/.claude and /run/hive).
#
# To change it: edit, commit, and ask for approval (request_apply_commit).
# The operator sees the diff; once approved the container is rebuilt.
# Sibling files in the repo are kept; `agent.toml` beside this file holds the
# settings every backend honours (model, allowed tools, extra MCP servers,
# prompt additions).
{ pkgs, ... }:
{
  # Tools this agent may use in its turns, e.g. [ pkgs.ripgrep pkgs.jq ].
  environment.systemPackages = [ ];
}
