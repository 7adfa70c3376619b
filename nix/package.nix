# The peerix package. The flake's packages.default, its overlay and the
# NixOS module's default package are all this file:
#
#   pkgs.callPackage ./nix/package.nix { }
#
# vendorHash is the hash of the vendored Go modules, that is of the output
# of `go mod vendor` run on the source below. It changes whenever go.mod or
# go.sum change. To update it:
#   - offline: nix/update-vendor-hash.sh (needs go, with the modules in its
#     cache, and nix); CI checks the value the same way (nix/nix_test.go);
#   - or with network: set vendorHash = lib.fakeHash, run `nix build`, and
#     copy the hash Nix prints after "got:".
{
  lib,
  buildGoModule,
  # go.mod asks for Go 1.26; take that toolchain when nixpkgs names it
  # separately, else the default one must be new enough.
  buildGo126Module ? null,
  version ? "0.1.0-dev",
}:

let
  build = if buildGo126Module != null then buildGo126Module else buildGoModule;
in
build {
  pname = "peerix";
  inherit version;

  # Only what the build reads, so that docs, tests and scripts do not
  # change the store path (and the vendor hash stays the hash of exactly
  # this tree's go mod vendor).
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../go.mod
      ../go.sum
      ../cmd
      ../internal
    ];
  };

  vendorHash = "sha256-H1lAGd2G+C06kaPLcagH4HCTwln6VhZf3sEjR9Q6Goo=";

  subPackages = [ "cmd/peerix" ];

  env.CGO_ENABLED = 0;

  ldflags = [
    "-s"
    "-w"
    "-X github.com/peerix/peerix/internal/daemon.Version=${version}"
  ];

  meta = {
    description = "Peer-to-peer binary cache for Nix: LAN discovery, libp2p, tracker";
    homepage = "https://github.com/peerix/peerix";
    # The LICENSE file at the root of the repository.
    license = lib.licenses.mit;
    maintainers = [ ];
    mainProgram = "peerix";
    platforms = lib.platforms.linux ++ lib.platforms.darwin;
  };
}
