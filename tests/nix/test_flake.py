"""The flake's outputs, listed with stand-in inputs (nixpkgs is not fetched)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.nix.nixeval import eval_expr, needs_nix

pytestmark = needs_nix

SYSTEMS = ["aarch64-linux", "x86_64-linux"]

# The flake's outputs called on stand-ins: a nixpkgs without packages, and a
# `self` that is the outputs themselves (as Nix gives it).
REV = "0123456789abcdef0123456789abcdef01234567"
OUTPUTS = """
let
  flake = import ./flake.nix;
  nixpkgs = { legacyPackages = { }; outPath = "/nix/store/standin-nixpkgs"; };
  self = outputs // { outPath = "/nix/store/standin-hyperhive"; rev = "@REV@"; };
  outputs = flake.outputs { inherit self nixpkgs; };
  names = builtins.mapAttrs (_: builtins.attrNames);
  # a host module, called as the module system would
  call = m: m {
    lib.mkDefault = v: v;
    pkgs.stdenv.hostPlatform.system = "x86_64-linux";
  };
  hostModule = call outputs.nixosModules.hyperhive;
in
""".replace("@REV@", REV)


@pytest.fixture(scope="module")
def flake() -> dict[str, Any]:
    return eval_expr(
        OUTPUTS
        + """{
  inputs = builtins.attrNames flake.inputs;
  top = builtins.attrNames outputs;
  packages = names outputs.packages;
  devShells = names outputs.devShells;
  checks = names outputs.checks;
  modules = builtins.attrNames outputs.nixosModules;
  aliasImports = map toString (call outputs.nixosModules.hive-c0re).imports;
  hostImports = map toString hostModule.imports;
  hostSettings = builtins.removeAttrs hostModule.services.hyperhive [ "package" ];
}"""
    )


def test_outputs(flake: dict[str, Any]) -> None:
    assert flake["inputs"] == ["nixpkgs"]
    assert flake["top"] == ["checks", "devShells", "nixosModules", "packages"]
    assert sorted(flake["packages"]) == SYSTEMS
    for system in SYSTEMS:
        assert flake["packages"][system] == ["default", "hyperhive"]
        assert flake["devShells"][system] == ["default"]
        assert flake["checks"][system] == ["multihost", "nixos", "package", "tests"]


def test_modules(flake: dict[str, Any]) -> None:
    assert flake["modules"] == ["default", "hive-c0re", "hyperhive"]
    # the original project's name gives the same module
    assert flake["aliasImports"] == flake["hostImports"]


def test_host_module_wires_this_flake(flake: dict[str, Any]) -> None:
    assert [p.rsplit("/", 2)[-2:] for p in flake["hostImports"]] == [["nix", "module.nix"]]
    # per-agent container flakes import harness-base.nix from this source, at this rev
    assert flake["hostSettings"] == {
        "flakeRef": "path:/nix/store/standin-hyperhive",
        "rev": REV,
    }
