# Stand-ins for nixpkgs' `lib` and `pkgs`, just enough to evaluate
# hyperhive's NixOS modules with a bare nix-instantiate (nixpkgs cannot be
# fetched here). Option declarations stay plain records, mkIf/mkDefault/...
# return their value, mkMerge merges attrsets, packages are store-like paths.
# This checks what the modules compute, not the NixOS module system itself
# (the nixosTest in nix/tests/ does that on a machine with nixpkgs).
let
  recursiveUpdate =
    a: b:
    a
    // builtins.mapAttrs (
      n: v: if builtins.isAttrs v && builtins.isAttrs (a.${n} or null) then recursiveUpdate a.${n} v else v
    ) b;

  pkg = name: {
    outPath = "/nix/store/standin-${name}";
    inherit name;
    pname = name;
    version = "0";
  };

  types = {
    str = "str";
    bool = "bool";
    port = "port";
    package = "package";
    path = "path";
    nullOr = _: "nullOr";
    attrsOf = _: "attrsOf";
    listOf = _: "listOf";
    enum = _: "enum";
    strMatching = _: "strMatching";
    submodule = _: "submodule";
    numbers.positive = "positive";
    ints.between = _: _: "intsBetween";
  };
in
rec {
  inherit recursiveUpdate;

  # The defaults of an option tree, as the module system would give them.
  defaultsOf =
    opts:
    builtins.mapAttrs (
      _: v: if v._isOption or false then v.default or null else defaultsOf v
    ) opts;

  lib = {
    inherit types;
    mkOption = o: o // { _isOption = true; };
    mkEnableOption = d: {
      _isOption = true;
      default = false;
      description = d;
    };
    mkIf = cond: v: if cond then v else { };
    mkDefault = v: v;
    mkForce = v: v;
    mkBefore = v: v;
    mkMerge = builtins.foldl' recursiveUpdate { };
    mkAliasOptionModule = from: to: { alias = { inherit from to; }; };
    literalExpression = s: s;
    nameValuePair = name: value: { inherit name value; };
    listToAttrs = builtins.listToAttrs;
    attrNames = builtins.attrNames;
    optionalAttrs = c: a: if c then a else { };
    optionals = c: l: if c then l else [ ];
    optional = c: v: if c then [ v ] else [ ];
    boolToString = b: if b then "true" else "false";
    hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
    versionAtLeast = a: b: builtins.compareVersions a b >= 0;
    concatStringsSep = builtins.concatStringsSep;
    concatMapStrings = f: l: builtins.concatStringsSep "" (map f l);
    mapAttrsToList = f: a: map (n: f n a.${n}) (builtins.attrNames a);
    getExe' = p: n: "${p}/bin/${n}";
    getName = p: p.pname or p.name;
  };

  pkgs =
    builtins.listToAttrs (
      map
        (n: {
          name = n;
          value = pkg n;
        })
        [
          "bash"
          "claude-code"
          "coreutils"
          "e2fsprogs"
          "git"
          "natscli"
          "nix"
          "nixos-container"
          "systemd"
          "util-linux"
        ]
    )
    // {
      nats-server = pkg "nats-server" // {
        version = "2.15.1";
      };
      stdenv.hostPlatform.system = "x86_64-linux";
      writeText = name: _text: "/nix/store/standin-${name}";
      writeShellScriptBin = name: _text: "/nix/store/standin-${name}";
      callPackage = _fn: _args: pkg "hyperhive";
    };
}
