# Store paths for the cache tests, served by a real nixstore.Local. No
# nixpkgs: plain derivations run by /bin/sh with the sandbox off, so builders
# name programs by absolute path. `salt` makes every run build fresh paths.
{ salt ? "" }:

let
  mk = name: script: derivation {
    name = "peerix-cache-${name}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "set -eu\n${script}" ];
    inherit salt;
  };

  leaf = mk "leaf" ''
    /bin/mkdir $out
    echo "leaf $salt" > $out/hello
  '';

  # Refers to leaf and to itself.
  refs = mk "refs" ''
    /bin/mkdir $out
    echo ${leaf} > $out/leaf-ref
    echo $out > $out/self-ref
  '';

  # Every node type, and a file large enough for Range requests to land
  # inside file bodies, framing and padding.
  shapes = mk "shapes" ''
    /bin/mkdir $out $out/sub $out/emptydir
    /usr/bin/seq 1 60000 > $out/big
    echo "$salt" >> $out/big
    printf '#!/bin/sh\necho hi\n' > $out/exec
    /bin/chmod +x $out/exec
    : > $out/empty
    printf 'abc' > $out/sub/three
    /bin/ln -s sub/three $out/link
  '';
in
{ inherit leaf refs shapes; }
