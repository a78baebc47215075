# checks.<system>.tests: the pytest suite against the built package, with a
# real nats-server and PostgreSQL from nixpkgs. Browser and claude-CLI tests
# are left out (no Chromium or npm claude in the build sandbox).
{
  lib,
  stdenv,
  nats-server,
  postgresql,
  git,
  package,
}:
let
  python = package.passthru.python.withPackages (ps: [
    package
    ps.pytest
    ps.pytest-asyncio
    ps.pytest-timeout
    ps.httpx
    ps.psutil
  ]);
in
stdenv.mkDerivation {
  name = "hyperhive-tests";

  # tests and their config only: `hyperhive` itself is imported from the
  # built package
  src = lib.fileset.toSource {
    root = ../..;
    fileset = lib.fileset.unions [
      ../../pyproject.toml
      ../../README.md
      ../../tests
      ../../nix
    ];
  };

  nativeBuildInputs = [
    python
    nats-server
    postgresql
    git
  ];

  dontConfigure = true;

  buildPhase = ''
    runHook preBuild
    export HOME=$TMPDIR
    export GIT_AUTHOR_NAME=hyperhive GIT_AUTHOR_EMAIL=hyperhive@localhost
    export GIT_COMMITTER_NAME=hyperhive GIT_COMMITTER_EMAIL=hyperhive@localhost
    python -m pytest -p no:cacheprovider -m "not browser and not claude" tests
    runHook postBuild
  '';

  installPhase = ''
    touch $out
  '';
}
