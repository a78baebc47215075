# checks.<system>.tests: the pytest suite against the built package, with a
# real nats-server and PostgreSQL from nixpkgs. Browser and claude-CLI tests
# are deselected (no Chromium or npm claude in the build sandbox); playwright
# is still in the environment because those modules import it at collection.
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
    ps.playwright
  ]);
in
stdenv.mkDerivation {
  name = "hyperhive-tests";

  # the whole source: tests read the Nix files, templates, docs and the
  # compose file they check; `hyperhive` itself is imported from the built
  # package (no `hyperhive` directory sits at the top of the tree)
  src = lib.fileset.toSource {
    root = ../..;
    fileset = lib.fileset.difference ../.. (
      lib.fileset.unions [
        (lib.fileset.maybeMissing ../../tools)
        (lib.fileset.maybeMissing ../../bench)
      ]
    );
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
