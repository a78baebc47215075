{
  description = "hyperhive: a swarm of Claude Code agents in nixos-containers, coordinated by a manager agent, approved by a human operator";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      # builtins only, so tests/nix can list the outputs with stand-in inputs
      forAllSystems =
        f:
        builtins.listToAttrs (
          map (system: {
            name = system;
            value = f system;
          }) systems
        );
      pkgsFor = system: nixpkgs.legacyPackages.${system};
      # the full commit, so lifecycle can pin a non-store flakeRef to it
      rev = self.rev or self.dirtyRev or "dirty";
    in
    {
      packages = forAllSystems (system: {
        hyperhive = (pkgsFor system).callPackage ./nix/package.nix { };
        default = self.packages.${system}.hyperhive;
      });

      # The host module, wired to this flake's package; the per-agent
      # container flakes that lifecycle renders import harness-base.nix from
      # this very source.
      nixosModules.hyperhive =
        { lib, pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.hyperhive = {
            package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
            flakeRef = lib.mkDefault "path:${self}";
            rev = lib.mkDefault rev;
          };
        };
      # the original project's name for it
      nixosModules.hive-c0re = self.nixosModules.hyperhive;
      nixosModules.default = self.nixosModules.hyperhive;

      devShells = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
          python = self.packages.${system}.default.passthru.python.withPackages (
            ps:
            map (name: ps.${name}) (import ./nix/python-deps.nix)
            ++ [
              ps.setuptools
              ps.pip
              ps.pytest
              ps.pytest-asyncio
              ps.pytest-timeout
              ps.httpx
              ps.psutil
            ]
          );
        in
        {
          default = pkgs.mkShell {
            packages = [
              python
              pkgs.nats-server
              pkgs.postgresql
              pkgs.nodejs
              pkgs.ruff
              pkgs.git
            ];
            # hyperhive itself, editable, in a venv that sees the shell's
            # Python packages
            shellHook = ''
              if [ ! -x .venv-nix/bin/python ]; then
                python -m venv --system-site-packages .venv-nix
                .venv-nix/bin/pip install --quiet --no-deps --no-build-isolation -e .
              fi
              source .venv-nix/bin/activate
            '';
          };
        }
      );

      checks = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
        in
        {
          package = self.packages.${system}.default;
          tests = pkgs.callPackage ./nix/tests/suite.nix { package = self.packages.${system}.default; };
          nixos = import ./nix/tests/nixos-test.nix {
            inherit pkgs;
            module = self.nixosModules.hyperhive;
            package = self.packages.${system}.default;
          };
          multihost = import ./nix/tests/multihost.nix {
            inherit pkgs;
            module = self.nixosModules.hyperhive;
            package = self.packages.${system}.default;
          };
        }
      );
    };
}
