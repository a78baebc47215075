# The hyperhive services, one systemd unit each, in start order.
#
# This list mirrors `hyperhive.common.subjects.SERVICES` (the Python side's
# source of truth); tests/nix/test_units.py fails when the two disagree, so a
# new service cannot ship without its unit. module.nix builds every unit from
# this list and nothing else.
#
#   part:       the argument of `hive serve <part>`
#   name:       the systemd unit (hive-<part>)
#   privileged: runs as root (lifecycle drives nixos-container; approvals
#               writes the per-agent git repos that root-owned lifecycle
#               creates, and gets no capabilities at all). Everything else
#               runs as the unprivileged `hyperhive` user.
[
  {
    part = "broker";
    name = "hive-broker";
    description = "hyperhive broker: messages between agents";
    privileged = false;
  }
  {
    part = "lifecycle";
    name = "hive-lifecycle";
    description = "hyperhive lifecycle: agent registry and containers";
    privileged = true;
  }
  {
    part = "approvals";
    name = "hive-approvals";
    description = "hyperhive approvals: config changes, spawns, operator questions";
    privileged = true;
  }
  {
    part = "crash-watch";
    name = "hive-crash-watch";
    description = "hyperhive crash-watch: containers that stopped unasked, stuck agents";
    privileged = false;
  }
  {
    part = "dashboard";
    name = "hive-dashboard";
    description = "hyperhive dashboard: the operator's web UI";
    privileged = false;
  }
]
