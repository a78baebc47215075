# checks.<system>.multihost: a hub VM and a node VM (docs/multihost.md).
#
# The hub runs services.hyperhive (role = "hub") with its NATS open to the
# test network; the node runs role = "node". The operator makes a join token
# on the hub, the node joins with it (`hive node --join ... --join-only`),
# hive-node starts from the seed the join wrote, and the hub lists the node.
# Then the node's credential is checked from the node itself: it may not
# publish as an agent or reach the operator's subjects.
{
  pkgs,
  module,
  package,
}:
let
  nats = "${pkgs.natscli}/bin/nats";
  seed = "/var/lib/hyperhive/node.seed";
in
pkgs.testers.runNixOSTest {
  name = "hyperhive-multihost";

  nodes.hub = {
    imports = [ module ];
    services.hyperhive = {
      enable = true;
      inherit package;
      manager = "";
      openNatsFirewall = true;
    };
    services.nats.settings.host = "0.0.0.0";
    virtualisation.memorySize = 2048;
  };

  nodes.node1 = {
    imports = [ module ];
    services.hyperhive = {
      enable = true;
      inherit package;
      role = "node";
      node = {
        name = "node1";
        hubAddress = "nats://hub:4222";
        credentialsFile = seed;
      };
    };
    environment.systemPackages = [ package ];
    virtualisation.memorySize = 2048;
  };

  testScript = ''
    import json

    start_all()
    hub.wait_for_unit("nats.service")
    hub.wait_for_unit("hive-lifecycle.service")
    hub.wait_until_succeeds("hive status", timeout=180)
    node1.wait_for_unit("multi-user.target")

    # nothing but hive-node on the node, and it waits for its seed
    node1.fail("systemctl is-active nats.service")
    node1.fail("systemctl is-active postgresql.service")
    node1.fail("systemctl is-active hive-node.service")

    token = json.loads(hub.succeed("hive join-token --ttl 300 --json"))["token"]
    node1.succeed(
        f"hive node --join nats://hub:4222 --token {token} --name node1"
        " --join-only --home /var/lib/hyperhive"
    )
    node1.succeed("test \"$(stat -c %a ${seed})\" = 600")
    # hive-node.path starts the node agent once the seed exists
    node1.wait_for_unit("hive-node.service")
    hub.wait_until_succeeds("hive nodes --json | grep -q node1", timeout=120)

    # the token was spent: a second join with it is refused
    node1.fail(
        f"hive node --join nats://hub:4222 --token {token} --name node2"
        " --join-only --home /tmp/again"
    )

    # the node's credential: its own subjects only
    creds = "--server nats://hub:4222 --nkey ${seed}"
    for subject in ("hive.admin.lifecycle.list", "hive.agent.hm1nd.send", "hive.node.node2.state"):
        out = node1.succeed(f"${nats} {creds} req {subject} '{{}}' --timeout 2s 2>&1 || true")
        assert "violation" in out.lower(), (subject, out)
  '';
}
