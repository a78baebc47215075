# What nix/package.nix builds, evaluated with stand-ins (see standin.nix):
# `buildPythonPackage` returns its arguments, every Python package is a
# named stub. `nixDir` lets a test evaluate a copy beside another pyproject.
{
  nixDir ? ../../nix,
}:
let
  s = import ./standin.nix;
  stub = name: {
    pname = name;
    version = "0";
  };
  names = import (nixDir + "/python-deps.nix") ++ [
    "setuptools"
    "wheel"
  ];
  ps =
    builtins.listToAttrs (
      map (n: {
        name = n;
        value = stub n;
      }) names
    )
    // {
      uvicorn = stub "uvicorn" // {
        optional-dependencies.standard = [
          (stub "websockets")
          (stub "httptools")
        ];
      };
      buildPythonPackage = args: args;
    };
  python = {
    pkgs = ps;
  };
  lib = s.lib // {
    fileset = {
      unions = l: l;
      toSource = { root, fileset }: "/nix/store/standin-hyperhive-source";
    };
    licenses.mit = "mit";
    platforms.linux = [ "x86_64-linux" ];
  };
  drv = import (nixDir + "/package.nix") {
    inherit lib;
    python3.override = _: python;
  };
in
{
  inherit (drv) pname version pythonImportsCheck;
  description = drv.meta.description;
  mainProgram = drv.meta.mainProgram;
  dependencies = map (d: d.pname) drv.dependencies;
  buildSystem = map (d: d.pname) drv.build-system;
}
