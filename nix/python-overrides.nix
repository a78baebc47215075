# Python packages hyperhive needs that a nixpkgs release may lack or ship too
# old: each is taken from nixpkgs when it is there and recent enough, else
# built from the pinned PyPI release below (wheels where the project ships
# one, so no extra build backend is needed).
#
# Use as a `packageOverrides` for python3:
#   python3.override { packageOverrides = import ./python-overrides.nix { inherit lib; }; }
{ lib }:
final: prev:
let
  # A pure-Python wheel from PyPI.
  wheel =
    {
      pname,
      version,
      hash,
      dependencies,
    }:
    final.buildPythonPackage {
      inherit pname version dependencies;
      format = "wheel";
      src = final.fetchPypi {
        inherit pname version hash;
        format = "wheel";
        dist = "py3";
        python = "py3";
      };
    };

  # Keeps nixpkgs' package unless it is missing or older than `min`.
  atLeast =
    name: min: fallback:
    if prev ? ${name} && lib.versionAtLeast prev.${name}.version min then prev.${name} else fallback;
in
{
  # nats-py's nkey support (the services and agents authenticate with nkeys).
  nkeys = atLeast "nkeys" "0.2.1" (
    final.buildPythonPackage rec {
      pname = "nkeys";
      version = "0.2.1";
      pyproject = true;
      src = final.fetchPypi {
        inherit pname version;
        hash = "sha256-OiAdzSA9i7BboohNRBsskpGLKlN6ENMk5zc4iH3enaM=";
      };
      build-system = [ final.setuptools ];
      dependencies = [ final.pynacl ];
      pythonImportsCheck = [ "nkeys" ];
    }
  );

  # The MCP SDK 2.x (`mcp.server.mcpserver.MCPServer`) and what it brings.
  httpcore2 = atLeast "httpcore2" "2.16.2" (wheel {
    pname = "httpcore2";
    version = "2.16.2";
    hash = "sha256-FgUa4qQvd2AHVD8y3pNJoxeyPSy7ThRWtLrA6IuHQZo=";
    dependencies = with final; [
      h11
      truststore
    ];
  });

  httpx2 = atLeast "httpx2" "2.16.2" (wheel {
    pname = "httpx2";
    version = "2.16.2";
    hash = "sha256-8FwTqt5MRdvxyQYGR6EFjwrK1iOY+tludBJp7bM9RvU=";
    dependencies = with final; [
      anyio
      httpcore2
      idna
      truststore
      typing-extensions
    ];
  });

  mcp-types = atLeast "mcp-types" "2.3.0" (wheel {
    pname = "mcp_types";
    version = "2.3.0";
    hash = "sha256-lo79va7fqwatrkDTeKNDlfEJDFkh1L48nN4oOq922R0=";
    dependencies = with final; [
      pydantic
      typing-extensions
    ];
  });

  mcp = atLeast "mcp" "2.0" (wheel {
    pname = "mcp";
    version = "2.3.0";
    hash = "sha256-3QxEwInRZFPorjGjh3oAVNeiMUyqqB9eBUG5sXNLI3c=";
    dependencies = with final; [
      anyio
      cryptography # pyjwt[crypto]
      httpx2
      jsonschema
      mcp-types
      opentelemetry-api
      pydantic
      pyjwt
      python-multipart
      sse-starlette
      starlette
      typing-extensions
      typing-inspection
      uvicorn
    ];
  });
}
