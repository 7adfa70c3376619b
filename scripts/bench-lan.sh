#!/usr/bin/env bash
# bench-lan.sh: peerix in LAN mode between two simulated hosts (network
# namespaces A and B joined by a bridge, veth links, one private /24, no
# route anywhere else). A holds the paths; everything is measured from B's
# loopback, through B's peerix, as B's Nix would see it. Prints a markdown
# table.
#
#   sudo scripts/bench-lan.sh
#   PEERIX=/path/to/peerix sudo -E scripts/bench-lan.sh
#
# Environment:
#   PEERIX      peerix binary (default: go build ./cmd/peerix into a temp dir)
#   BENCH_SALT  salt for the fixture paths (default fixed, so reruns and
#               bench-local.sh share the 256 MiB path)
#   BENCH_RUNS  downloads per NAR measurement, best taken (default 3)
#
# Needs: root, ip (iproute2), nix-build, nix, nix-store (NIX_REMOTE=local is
# used), curl.
set -euo pipefail

cmdline="$(printf '%q ' "$0" "$@")"
for v in BENCH_SALT BENCH_RUNS PEERIX; do
	if [[ -n "${!v:-}" ]]; then cmdline="$v=$(printf '%q' "${!v}") $cmdline"; fi
done

BENCH_SALT="${BENCH_SALT:-peerix-bench-1}"
RUNS="${BENCH_RUNS:-3}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT=12304

log() { echo "bench: $*" >&2; }
die() { echo "bench-lan.sh: $*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "network namespaces need root"
for tool in ip nix-build nix nix-store curl awk; do
	command -v "$tool" >/dev/null || die "$tool not found on PATH"
done

TMP="$(mktemp -d /tmp/peerix-bench-lan.XXXXXX)"
ID="pxbench-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
NETNS=()
PEERIX_PIDS=()
cleanup() {
	local ns pid p
	for p in "${PEERIX_PIDS[@]}"; do
		kill "${p#*:}" 2>/dev/null || true
	done
	for p in "${PEERIX_PIDS[@]}"; do
		wait "${p#*:}" 2>/dev/null || true
	done
	# Whatever is still in our namespaces goes with them.
	for ns in "${NETNS[@]}"; do
		for _ in $(seq 1 50); do
			pids="$(ip netns pids "$ns" 2>/dev/null || true)"
			[[ -z "$pids" ]] && break
			for pid in $pids; do kill -9 "$pid" 2>/dev/null || true; done
			sleep 0.1
		done
		ip netns del "$ns" 2>/dev/null || true
	done
	chmod -R u+w "$TMP" 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export NIX_REMOTE=local
export XDG_CACHE_HOME="$TMP/xdg-cache"
NIX=(nix --extra-experimental-features nix-command)

# --- peerix binary -----------------------------------------------------------
if [[ -n "${PEERIX:-}" ]]; then
	PEERIX_BIN="$(realpath "$PEERIX")"
else
	log "building ./cmd/peerix"
	(cd "$REPO" && go build -o "$TMP/peerix" ./cmd/peerix)
	PEERIX_BIN="$TMP/peerix"
fi
PEERIX_VERSION="$("$PEERIX_BIN" version 2>&1 | head -n1)"

# --- fixtures (the same derivations as bench-local.sh) -----------------------
cat >"$TMP/bench.nix" <<'EOF'
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
}
EOF
build() { nix-build "$TMP/bench.nix" -A "$1" --argstr salt "$BENCH_SALT" -o "$TMP/result-$1" 2>"$TMP/build-$1.log" || { cat "$TMP/build-$1.log" >&2; die "nix-build -A $1 failed"; }; }
log "building fixtures (salt $BENCH_SALT)"
SMALL="$(build small)"
BIG="$(build big)"

A_STORE="$TMP/a-store"
B_STORE="$TMP/b-store"
log "copying into A's store; B's starts empty"
"${NIX[@]}" copy --no-check-sigs --to "$A_STORE" "$SMALL" "$BIG" 2>"$TMP/copy.log" ||
	{ cat "$TMP/copy.log" >&2; die "nix copy --to $A_STORE failed"; }
nix-store --store "$B_STORE" --init
BIG_SIZE="$(nix-store --store "$A_STORE" -q --size "$BIG")"
hash_of() { basename "$1" | cut -c1-32; }

mkdir -p "$TMP/keys"
"$PEERIX_BIN" keygen bench-lan --out "$TMP/keys" >/dev/null 2>&1 || die "peerix keygen failed"

# --- the LAN -----------------------------------------------------------------
NET="10.$((RANDOM % 254 + 1)).$((RANDOM % 256))"
A_ADDR="$NET.10"
B_ADDR="$NET.11"
BR="$ID-br"
NS_A="$ID-a"
NS_B="$ID-b"
log "LAN $NET.0/24: A=$A_ADDR B=$B_ADDR (namespaces $ID-*)"
ip netns add "$BR"
NETNS+=("$BR")
ip -n "$BR" link set lo up
ip -n "$BR" link add br0 type bridge
ip -n "$BR" link set br0 up
i=0
for pair in "$NS_A:$A_ADDR" "$NS_B:$B_ADDR"; do
	ns="${pair%%:*}"
	addr="${pair#*:}"
	ip netns add "$ns"
	NETNS=("$ns" "${NETNS[@]}")
	ip -n "$ns" link set lo up
	ip -n "$BR" link add "v$i" type veth peer name eth0 netns "$ns"
	ip -n "$BR" link set "v$i" master br0 up
	ip -n "$ns" addr add "$addr/24" brd + dev eth0
	ip -n "$ns" link set eth0 up
	i=$((i + 1))
done

# start_peerix NS STORE NAME [flags...]
start_peerix() {
	local ns=$1 store=$2 name=$3
	shift 3
	ip netns exec "$ns" "$PEERIX_BIN" serve --mode lan --filter none --listen "0.0.0.0:$PORT" \
		--store-root "$store" --state-dir "$TMP/state-$name" "$@" 2>"$TMP/peerix-$name.log" &
	local pid=$!
	PEERIX_PIDS+=("$name:$pid")
	for _ in $(seq 1 300); do
		if ip netns exec "$ns" curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/health"; then return; fi
		kill -0 "$pid" 2>/dev/null || { cat "$TMP/peerix-$name.log" >&2; die "peerix on $name exited"; }
		sleep 0.1
	done
	cat "$TMP/peerix-$name.log" >&2
	die "peerix on $name not ready within 30s"
}
log "starting peerix on A and B"
start_peerix "$NS_A" "$A_STORE" A --signing-key-file "$TMP/keys/bench-lan.sec"
# B's verifier takes peers' narinfos signed by A's key (no upstream here).
PUB="$(cat "$TMP/keys/bench-lan.pub")"
start_peerix "$NS_B" "$B_STORE" B --trusted-public-key "$PUB"

# --- measurements ------------------------------------------------------------
COMMANDS_FILE="$TMP/commands"
: >"$COMMANDS_FILE"
record() { echo "    $*" >>"$COMMANDS_FILE"; }
CURL_FMT='%{http_code} %{size_download} %{time_total} %{time_starttransfer}'
# on NS curl-args...: one curl in namespace NS; prints "code size total ttfb"
on() {
	local ns=$1
	shift
	ip netns exec "$ns" curl -s -o /dev/null -w "$CURL_FMT" "$@"
}
ms() { awk -v t="$1" 'BEGIN { printf "%.1f ms", t * 1000 }'; }
mibps() { awk -v n="$1" -v t="$2" 'BEGIN { printf "%.0f MiB/s", n / t / 1048576 }'; }

# best_nar NS URL: best of $RUNS downloads of the big NAR; prints "total ttfb"
best_nar() {
	local ns=$1 url=$2 best="" code size total ttfb
	record "ip netns exec $ns curl -s -o /dev/null -w '$CURL_FMT' $url  (best of $RUNS)"
	for _ in $(seq 1 "$RUNS"); do
		read -r code size total ttfb <<<"$(on "$ns" "$url")"
		[[ "$code" == 200 && "$size" == "$BIG_SIZE" ]] || die "GET $url in $ns: HTTP $code, $size bytes; want 200 and $BIG_SIZE"
		if [[ -z "$best" ]] || awk -v a="$total" -v b="${best%% *}" 'BEGIN { exit !(a < b) }'; then
			best="$total $ttfb"
		fi
	done
	echo "$best"
}

B_URL="http://127.0.0.1:$PORT"
log "narinfo: hit (cold and warm) and miss, from B's loopback"
record "ip netns exec $NS_B curl -s -o /dev/null -w '$CURL_FMT' $B_URL/<hash>.narinfo"
read -r code _ _ NI_COLD <<<"$(on "$NS_B" "$B_URL/$(hash_of "$SMALL").narinfo")"
[[ "$code" == 200 ]] || die "hit narinfo from B: HTTP $code"
NI_WARM=""
for _ in $(seq 1 5); do
	read -r code _ _ t <<<"$(on "$NS_B" "$B_URL/$(hash_of "$SMALL").narinfo")"
	if [[ -z "$NI_WARM" ]] || awk -v a="$t" -v b="$NI_WARM" 'BEGIN { exit !(a < b) }'; then NI_WARM="$t"; fi
done
MISS_MIN=""
MISS_MAX=""
for _ in 1 2 3; do
	absent="$(od -An -N32 -tu1 /dev/urandom |
		awk '{ for (i = 1; i <= NF; i++) printf "%s", substr("0123456789abcdfghijklmnpqrsvwxyz", $i % 32 + 1, 1) }')"
	read -r code _ t _ <<<"$(on "$NS_B" "$B_URL/$absent.narinfo")"
	[[ "$code" == 404 ]] || die "miss narinfo from B: HTTP $code, want 404"
	if [[ -z "$MISS_MIN" ]] || awk -v a="$t" -v b="$MISS_MIN" 'BEGIN { exit !(a < b) }'; then MISS_MIN="$t"; fi
	if [[ -z "$MISS_MAX" ]] || awk -v a="$t" -v b="$MISS_MAX" 'BEGIN { exit !(a > b) }'; then MISS_MAX="$t"; fi
done

log "256 MiB NAR ($BIG_SIZE bytes): through B's peerix, straight from A over the LAN, and on A itself"
NAR_LAN="$(ip netns exec "$NS_B" curl -sf "$B_URL/$(hash_of "$BIG").narinfo" | sed -n 's/^URL: //p')"
[[ "$NAR_LAN" == nar/lan/* ]] || die "B's narinfo for $BIG has URL '$NAR_LAN', want nar/lan/..."
NAR_LOCAL="$(ip netns exec "$NS_A" curl -sf "http://127.0.0.1:$PORT/local/$(hash_of "$BIG").narinfo" | sed -n 's/^URL: //p')"
[[ -n "$NAR_LOCAL" ]] || die "A serves no narinfo for $BIG"
read -r T_VIA_B F_VIA_B <<<"$(best_nar "$NS_B" "$B_URL/$NAR_LAN")"
read -r T_DIRECT F_DIRECT <<<"$(best_nar "$NS_B" "http://$A_ADDR:$PORT/$NAR_LOCAL")"
read -r T_ON_A F_ON_A <<<"$(best_nar "$NS_A" "http://127.0.0.1:$PORT/local/$NAR_LOCAL")"

log "Nix on B substituting the 256 MiB path through B's peerix"
record "ip netns exec $NS_B nix-store --store <B's store> -r $BIG --option substituters $B_URL --option trusted-public-keys $PUB --option require-sigs true"
s="$(date +%s.%N)"
ip netns exec "$NS_B" env XDG_CACHE_HOME="$TMP/xdg-nix-b" nix-store --store "$B_STORE" -r "$BIG" \
	--option substituters "$B_URL" --option trusted-public-keys "$PUB" --option require-sigs true \
	>/dev/null 2>"$TMP/nix-b.log" || { cat "$TMP/nix-b.log" >&2; die "nix-store -r on B failed"; }
e="$(date +%s.%N)"
T_NIX="$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", e - s }')"
[[ "$(nix-store --store "$B_STORE" -q --hash "$BIG")" == "$(nix-store --store "$A_STORE" -q --hash "$BIG")" ]] ||
	die "the path on B differs from A's"

for p in "${PEERIX_PIDS[@]}"; do
	kill -0 "${p#*:}" 2>/dev/null || { cat "$TMP/peerix-${p%%:*}.log" >&2; die "peerix on ${p%%:*} died during the benchmark"; }
done

# --- report ------------------------------------------------------------------
echo "# peerix LAN benchmark"
echo
echo "command: \`${cmdline% }\`"
echo
echo "- machine: $(nproc) cores, $(awk '/^model name/ { $1 = $2 = $3 = ""; print; exit }' /proc/cpuinfo | sed 's/^ *//'), $(uname -sr)"
echo "- peerix: $PEERIX_VERSION; $(nix --version); $(curl --version | head -n1 | cut -d' ' -f1-2)"
echo "- LAN: two network namespaces, veth pairs into a Linux bridge in a third; all on one machine, so the numbers show peerix's overhead, not a real network's"
echo "- paths: small $SMALL; 256 MiB $BIG ($BIG_SIZE-byte NAR); A holds both, B starts empty"
echo
echo "| measurement (from B) | time | throughput |"
echo "| --- | ---: | ---: |"
echo "| narinfo hit, first ask (broadcast, A answers, B fetches A's narinfo): time to first byte | $(ms "$NI_COLD") | |"
echo "| narinfo hit, asked again (B's lookup cache), best of 5: time to first byte | $(ms "$NI_WARM") | |"
echo "| narinfo miss (nobody has it), 3 hashes: total | $(ms "$MISS_MIN") – $(ms "$MISS_MAX") | |"
echo "| 256 MiB NAR through B's peerix (\`/nar/lan/…\` on B's loopback), best of $RUNS | $(ms "$T_VIA_B") (first byte $(ms "$F_VIA_B")) | $(mibps "$BIG_SIZE" "$T_VIA_B") |"
echo "| 256 MiB NAR straight from A over the LAN (\`/nar/…\` on A), best of $RUNS | $(ms "$T_DIRECT") (first byte $(ms "$F_DIRECT")) | $(mibps "$BIG_SIZE" "$T_DIRECT") |"
echo "| 256 MiB NAR on A's own loopback (\`/local/nar/…\`), best of $RUNS | $(ms "$T_ON_A") (first byte $(ms "$F_ON_A")) | $(mibps "$BIG_SIZE" "$T_ON_A") |"
echo "| \`nix-store -r\` of the 256 MiB path on B through B's peerix (signatures required) | $(ms "$T_NIX") | $(mibps "$BIG_SIZE" "$T_NIX") |"
echo
echo "Commands:"
echo
cat "$COMMANDS_FILE"
