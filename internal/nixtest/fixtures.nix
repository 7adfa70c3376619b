# The store paths peerix's tests run against: one closure of odd shapes that
# a NAR writer, a narinfo renderer and Nix itself must all agree on, plus a
# few paths for particular tests. Built by internal/nixtest (Build, Shared).
#
# No nixpkgs: every fixture is a plain derivation run by /bin/sh with the
# sandbox off (nixtest's nix.conf says so), so builders name every program
# by its absolute path. `salt` goes into every derivation, so each test run
# gets fresh store paths and no stale narinfo cache or earlier copy can hide
# a bug. Every name starts with "peerix-fixture-"; nixtest finds a fixture by
# the rest of its name ("leaf", "single-file", "outputs-o3", ...).
{ salt ? "" }:

let
  mk = name: script: derivation {
    name = "peerix-fixture-${name}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "set -eu\n${script}" ];
    inherit salt;
  };

  # A leaf with no references that the others point at.
  leaf = mk "leaf" ''
    /bin/mkdir $out
    echo "hello from the leaf, salt $salt" > $out/hello
  '';

  # One directory with every kind of entry a NAR can hold, plus names whose
  # byte order differs from any locale's order (NAR sorts entries by bytes),
  # and a file large enough that NAR offsets and HTTP ranges land inside
  # file bodies, framing and padding.
  shapes = mk "shapes" ''
    /bin/mkdir $out
    cd $out
    echo regular > regular
    /usr/bin/seq 1 60000 > numbers
    echo "$salt" >> numbers
    printf '#!/bin/sh\necho run\n' > executable
    /bin/chmod +x executable
    : > empty
    /bin/ln -s regular symlink
    /bin/ln -s does/not/exist dangling
    /bin/ln -s /etc/passwd absolute-link
    /bin/ln -s sub link-to-dir
    /bin/mkdir emptydir sub
    echo in-sub > sub/file
    echo spaces > "name with  spaces.txt"
    /bin/mkdir "dir with space"
    echo x > "dir with space/ file starting with space"
    # café, 日本, a Latin-1-looking byte pair and an emoji: raw UTF-8 bytes
    echo utf8 > "$(printf 'caf\303\251')"
    echo utf8 > "$(printf '\346\227\245\346\234\254.txt')"
    /bin/mkdir "$(printf '\360\237\215\225-dir')"
    echo pizza > "$(printf '\360\237\215\225-dir/\303\274ber')"
    /bin/ln -s "$(printf 'caf\303\251')" "$(printf 'link-to-caf\303\251')"
    for n in B a _ Z '~' '-' 0 '.hidden' 'a.b' 'a-b' 'aa' 'A'; do echo "$n" > "order-$n"; done
    # every padding length a NAR string can need
    /bin/mkdir pad
    s=""
    i=0
    while [ $i -le 17 ]; do printf '%s' "$s" > pad/p$i; s="''${s}x"; i=$((i+1)); done
    # a long symlink target
    t=""
    i=0
    while [ $i -lt 30 ]; do t="''${t}long-target-segment-$i/"; i=$((i+1)); done
    /bin/ln -s "$t" long-link
  '';

  # ~40 levels of directories.
  deep = mk "deep" ''
    d=$out
    i=0
    while [ $i -lt 40 ]; do d=$d/level-$i; i=$((i+1)); done
    /bin/mkdir -p "$d"
    echo bottom > "$d/leaf"
    echo top > $out/top
  '';

  # Several MiB of incompressible bytes (not reproducible, and need not be).
  big = mk "big" ''
    /bin/mkdir $out
    /bin/dd if=/dev/urandom of=$out/blob bs=1048576 count=6 status=none
    /bin/dd if=/dev/urandom of=$out/odd-size bs=1 count=1000003 status=none
  '';

  # Many small files in one directory and spread over subdirectories.
  many = mk "many" ''
    /bin/mkdir $out $out/flat
    i=0
    while [ $i -lt 1000 ]; do
      echo "file $i" > $out/flat/f$i
      i=$((i+1))
    done
    i=0
    while [ $i -lt 40 ]; do
      /bin/mkdir $out/d$i
      j=0
      while [ $j -lt 5 ]; do echo $i.$j > $out/d$i/g$j; j=$((j+1)); done
      i=$((i+1))
    done
  '';

  # References to other paths and to itself: leaf, shapes and refs.
  refs = mk "refs" ''
    /bin/mkdir $out
    echo ${leaf} > $out/ref
    echo ${shapes}/regular > $out/ref-into-shapes
    echo $out > $out/self
    /bin/ln -s ${leaf}/hello $out/link-into-leaf
    /bin/ln -s $out/self $out/link-to-self
  '';

  # $out is a single regular file that references another path.
  single = mk "single-file" ''
    echo "single file output pointing at ${leaf}" > $out
  '';

  # $out is a single executable file.
  singleExec = mk "single-exec" ''
    printf '#!/bin/sh\necho hi\n' > $out
    /bin/chmod +x $out
  '';

  # $out is an empty regular file.
  emptyFile = mk "empty-file" ''
    : > $out
  '';

  # $out is a symlink into another path.
  symlinkOut = mk "symlink-out" ''
    /bin/ln -s ${leaf}/hello $out
  '';

  # $out is a dangling symlink.
  danglingOut = mk "dangling-out" ''
    /bin/ln -s /nonexistent/peerix-fixture $out
  '';

  # $out is an empty directory.
  emptyDir = mk "empty-dir" ''
    /bin/mkdir $out
  '';

  fixtures = {
    inherit leaf shapes deep big many refs single singleExec emptyFile
      symlinkOut danglingOut emptyDir;
  };

  # Many small outputs of one build ("outputs-o0" ... "outputs-o23"), for
  # tests that copy paths in one at a time while others read the store.
  multi = derivation {
    name = "peerix-fixture-outputs";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    outputs = builtins.genList (i: "o${toString i}") 24;
    args = [ "-c" ''
      for o in $outputs; do eval "echo $o $salt > \$$o"; done
    '' ];
    inherit salt;
  };

  # The parts of "wide": 201 small outputs of one build (so that building
  # them is one step, not 201).
  wideParts = derivation {
    name = "peerix-fixture-wide";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    outputs = builtins.genList (i: "p${toString i}") 201;
    args = [ "-c" ''
      for o in $outputs; do eval "/bin/mkdir \$$o && echo $o $salt > \$$o/part"; done
    '' ];
    inherit salt;
  };

  # Small directories whose names a trust filter matches on ("trust-secret"
  # is deny-listed by default, "trust-denyme" by a pattern).
  mkTrust = name: mk "trust-${name}" ''
    /bin/mkdir $out
    echo "trust-${name} content, salt $salt" > $out/data
    echo more-trust-${name} > $out/other
  '';
in
fixtures // {
  # The root whose closure is every fixture above: `nix-store -qR` of it
  # lists them all, and substituting it alone must bring the whole closure.
  all = mk "all" ''
    /bin/mkdir $out
    ${builtins.concatStringsSep "\n" (map (n: "echo ${fixtures.${n}} >> $out/closure")
      (builtins.attrNames fixtures))}
  '';

  # Outside the closure of `all`:

  # A lone file that nothing refers to, for garbage collection.
  gc = mk "gc" ''
    echo "collect me $salt" > $out
  '';

  outputs = map (o: multi.${o}) multi.outputs;

  # A closure of 202 small paths, as Nix substitutes a real one: a root
  # that refers to the 201 parts.
  wide = mk "wide-root" ''
    /bin/mkdir $out
    ${builtins.concatStringsSep "\n" (map (o: "echo ${wideParts.${o}} >> $out/parts") wideParts.outputs)}
  '';

  trust = map mkTrust [ "public" "private" "denyme" "secret" "tampered" ];
}
