# An agent's NixOS configuration: the entry point of its config repo.
# hyperhive's harness-base.nix (the harness unit, claude-code, git, the bind
# mounts) is imported beside this file; add packages and services here.
{ pkgs, ... }:
{
  environment.systemPackages = with pkgs; [
    git
    ripgrep
  ];
}
