# checks.<system>.nixos: boots a VM with services.hyperhive enabled, waits
# for NATS, PostgreSQL and one unit per service (from ../services.nix), then
# asks `hive status` (as the operator, through the module's CLI wrapper)
# until every service answers.
{
  pkgs,
  module,
  package,
}:
let
  services = import ../services.nix;
  psql = "${pkgs.postgresql}/bin/psql";
  waitForUnits = pkgs.lib.concatMapStrings (svc: ''
    machine.wait_for_unit("${svc.name}.service")
  '') services;
in
pkgs.testers.runNixOSTest {
  name = "hyperhive";

  nodes.machine = {
    imports = [ module ];
    services.hyperhive = {
      enable = true;
      inherit package;
      # no manager container: the VM has no network to build its flake
      manager = "";
    };
    virtualisation.memorySize = 2048;
  };

  testScript = ''
    machine.wait_for_unit("hive-setup.service")
    machine.wait_for_unit("nats.service")
    machine.wait_for_unit("postgresql.service")
    ${waitForUnits}
    machine.wait_until_succeeds("hive status", timeout=180)
    print(machine.succeed("hive status --json"))
    machine.wait_for_open_port(7000)
    # the seeds stay closed to everyone but root and the services' group
    machine.succeed("test \"$(stat -c %a /var/lib/hyperhive/nats/service.seed)\" = 640")
    machine.fail("su -s /bin/sh nobody -c 'cat /var/lib/hyperhive/nats/service.seed'")
    # NATS refuses a client without credentials
    machine.fail("${pkgs.natscli}/bin/nats --server nats://127.0.0.1:4222 pub hive.events.x y")
    # the generated operator token: root's alone; the dashboard requires it
    machine.succeed("test \"$(stat -c %a:%U /var/lib/hyperhive/operator-token)\" = 600:root")
    machine.fail("su -s /bin/sh nobody -c 'cat /var/lib/hyperhive/operator-token'")
    machine.succeed("test \"$(${pkgs.curl}/bin/curl -s -o /dev/null -w %{http_code} http://127.0.0.1:7000/)\" = 401")
    url = machine.succeed("hive dashboard-url").strip()
    machine.succeed(f"${pkgs.curl}/bin/curl -sf -c /tmp/jar '{url}' -o /dev/null")
    machine.succeed("${pkgs.curl}/bin/curl -sf -b /tmp/jar http://127.0.0.1:7000/ | grep -q csrf-token")
    # PostgreSQL: TCP gets no session for the hyperhive database or role (as
    # an agent container on the host's network would try), not even for root;
    # the socket lets in only the users of the ident map
    for target in ("-U hyperhive -d hyperhive", "-U postgres -d hyperhive", "-U hyperhive -d postgres"):
        for host in ("127.0.0.1", "::1"):
            machine.fail(f"${psql} -h {host} {target} -w -c 'select 1'")
    machine.fail("su -s /bin/sh nobody -c '${psql} -h /run/postgresql -U hyperhive -d hyperhive -w -c \"select 1\"'")
    machine.succeed("${psql} -h /run/postgresql -U hyperhive -d hyperhive -w -c 'select 1'")
  '';
}
