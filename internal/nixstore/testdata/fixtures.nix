# Store paths for the nixstore tests. No nixpkgs: plain derivations run by
# /bin/sh with the sandbox off, so builders name programs by absolute path.
# `salt` makes every test run build fresh paths.
{ salt ? "" }:

let
  mk = name: script: derivation {
    name = "peerix-nixstore-${name}";
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

  # Every node type, and files large enough that NAR offsets fall inside
  # file bodies, framing and padding.
  shapes = mk "shapes" ''
    /bin/mkdir $out $out/sub $out/emptydir
    /usr/bin/seq 1 40000 > $out/big
    echo "$salt" >> $out/big
    printf '#!/bin/sh\necho hi\n' > $out/exec
    /bin/chmod +x $out/exec
    : > $out/empty
    printf 'abc' > $out/sub/three
    /bin/ln -s sub/three $out/link
    /bin/ln -s /does/not/exist $out/dangling
  '';

  # A lone file that nothing refers to, for garbage collection.
  gc = mk "gc" ''
    echo "collect me $salt" > $out
  '';

  # Many small outputs of one build, copied in while readers run.
  many = derivation {
    name = "peerix-nixstore-many";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    outputs = builtins.genList (i: "o${toString i}") 24;
    args = [ "-c" ''
      for o in $outputs; do eval "echo $o $salt > \$$o"; done
    '' ];
    inherit salt;
  };
in
{
  inherit leaf refs shapes gc;
  many = map (o: many.${o}) many.outputs;
}
