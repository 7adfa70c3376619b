# Store paths for peerix's benchmarks: scripts/bench-local.sh and the Go
# benchmarks of test/e2e (BenchmarkLAN, BenchmarkP2P) build them from here.
# Their default salt is fixed, so reruns and the different benchmarks share
# the paths: the 256 MiB one is built once.
#
# No nixpkgs, as in fixtures.nix: plain derivations run by /bin/sh with the
# sandbox off; random bytes, so nothing along the way can compress them.
{ salt }:
let
  mk = name: script: derivation {
    name = "peerix-bench-${name}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    inherit salt;
  };
in {
  small = mk "small" ''
    /bin/mkdir -p $out/bin $out/share
    echo hello > $out/share/hello
    printf '#!/bin/sh\necho hello\n' > $out/bin/hello
    /bin/chmod +x $out/bin/hello
  '';
  big = mk "256m" "/bin/dd if=/dev/urandom of=$out bs=1048576 count=256 status=none";
  # Another 256 MiB of random bytes (a path only one holder has).
  big2 = mk "256m-2" "/bin/dd if=/dev/urandom of=$out bs=1048576 count=256 status=none";
  # Real binaries, which compress: the machine's shared objects, up to
  # 256 MiB (what a closure of Nix packages mostly is).
  binaries = mk "binaries" ''
    /bin/mkdir $out
    total=0
    for f in $(/usr/bin/find /usr/lib -type f -name '*.so*' | /usr/bin/sort); do
      s=$(/usr/bin/stat -c %s "$f")
      [ $((total + s)) -gt 268435456 ] && continue
      /bin/cp "$f" "$out/$(echo "$f" | /usr/bin/tr / _)"
      total=$((total + s))
    done
  '';
  huge = mk "1g" "/bin/dd if=/dev/urandom of=$out bs=1048576 count=1024 status=none";
}
