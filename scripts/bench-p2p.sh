#!/usr/bin/env bash
# bench-p2p.sh: peerix in P2P mode across two home routers. A simulated
# internet (a bridge in its own network namespace, a /24 from 11.0.0.0/8,
# which libp2p classifies as public, assigned only inside these namespaces,
# no route out) holds the tracker host T (peerix tracker with its relay) and
# two routers RA and RB; each router masquerades its private host (A, B)
# and drops unsolicited inbound traffic, as home routers do. A holds a
# 256 MiB single-file path; B fetches its NAR through B's peerix (curl on
# B's loopback, as B's Nix would):
#
#   1. direct: after DCUtR hole punching (checked on B's /api/peers and on
#      RB's packet counters);
#   2. relayed: the routers drop all traffic between each other, B's peerix
#      is restarted (fresh connections), so the bytes must go through the
#      tracker's relay (checked the same way);
#
# plus the daemons' VmRSS/VmHWM before and after each transfer, and how
# fast B answers a miss when the tracker knows no holder. Prints a markdown
# table.
#
#   sudo scripts/bench-p2p.sh
#   PEERIX=/path/to/peerix sudo -E scripts/bench-p2p.sh
#
# Environment:
#   PEERIX      peerix binary (default: go build ./cmd/peerix into a temp dir)
#   BENCH_SALT  salt for the fixture path (default fixed, shared with
#               bench-lan.sh and bench-local.sh, so the 256 MiB path is built once)
#   BENCH_RUNS  downloads per NAR measurement, best taken (default 3)
#
# Needs: root, ip (iproute2), iptables, nix-build, nix, nix-store
# (NIX_REMOTE=local is used), curl, sha256sum.
set -euo pipefail

cmdline="$(printf '%q ' "$0" "$@")"
for v in BENCH_SALT BENCH_RUNS PEERIX; do
	if [[ -n "${!v:-}" ]]; then cmdline="$v=$(printf '%q' "${!v}") $cmdline"; fi
done

BENCH_SALT="${BENCH_SALT:-peerix-bench-1}"
RUNS="${BENCH_RUNS:-3}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HTTP_PORT=12304
TRACKER_PORT=12305
P2P_PORT=12306

log() { echo "bench: $*" >&2; }
die() {
	echo "bench-p2p.sh: $*" >&2
	for f in "${TMP:-/nonexistent}"/peerix-*.log; do
		[[ -f "$f" ]] && { echo "--- $f (last 40 lines)" >&2; tail -n 40 "$f" >&2; }
	done
	exit 1
}

[[ "$(id -u)" == 0 ]] || die "network namespaces need root"
for tool in ip nix-build nix nix-store curl awk sha256sum timeout; do
	command -v "$tool" >/dev/null || die "$tool not found on PATH"
done

TMP="$(mktemp -d /tmp/peerix-bench-p2p.XXXXXX)"
ID="pxbench-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
NETNS=()
declare -A PIDS=() # name -> pid
cleanup() {
	local ns pid name
	for name in "${!PIDS[@]}"; do kill "${PIDS[$name]}" 2>/dev/null || true; done
	for name in "${!PIDS[@]}"; do
		for _ in $(seq 1 50); do kill -0 "${PIDS[$name]}" 2>/dev/null || break; sleep 0.1; done
		kill -9 "${PIDS[$name]}" 2>/dev/null || true
		wait "${PIDS[$name]}" 2>/dev/null || true
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

# --- iptables that works in a namespace ------------------------------------
IPT=""
ip netns add "$ID-probe"
NETNS+=("$ID-probe")
for c in iptables iptables-nft iptables-legacy; do
	command -v "$c" >/dev/null || continue
	if ip netns exec "$ID-probe" "$c" -t nat -S >/dev/null 2>&1 &&
		ip netns exec "$ID-probe" "$c" -A INPUT -m conntrack --ctstate NEW -j ACCEPT >/dev/null 2>&1; then
		IPT="$c"
		break
	fi
done
[[ -n "$IPT" ]] || die "no iptables works in a network namespace here"
ip netns del "$ID-probe"
NETNS=()

# --- peerix binary -----------------------------------------------------------
if [[ -n "${PEERIX:-}" ]]; then
	PEERIX_BIN="$(realpath "$PEERIX")"
else
	log "building ./cmd/peerix"
	(cd "$REPO" && go build -o "$TMP/peerix" ./cmd/peerix)
	PEERIX_BIN="$TMP/peerix"
fi
PEERIX_VERSION="$("$PEERIX_BIN" version 2>&1 | head -n1)"

# --- fixture (the same derivation as bench-lan.sh's "big") -------------------
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
  big = mk "256m" "/bin/dd if=/dev/urandom of=$out bs=1048576 count=256 status=none";
}
EOF
log "building the 256 MiB fixture (salt $BENCH_SALT)"
BIG="$(nix-build "$TMP/bench.nix" -A big --argstr salt "$BENCH_SALT" -o "$TMP/result-big" 2>"$TMP/build.log")" ||
	{ cat "$TMP/build.log" >&2; die "nix-build failed"; }
A_STORE="$TMP/a-store"
B_STORE="$TMP/b-store"
"${NIX[@]}" copy --no-check-sigs --to "$A_STORE" "$BIG" 2>"$TMP/copy.log" ||
	{ cat "$TMP/copy.log" >&2; die "nix copy --to $A_STORE failed"; }
nix-store --store "$B_STORE" --init
BIG_SIZE="$(nix-store --store "$A_STORE" -q --size "$BIG")"
BIG_HASH="$(basename "$BIG" | cut -c1-32)"
BIG_SHA="$(nix-store --store "$A_STORE" --dump "$BIG" | sha256sum | cut -d' ' -f1)"
mkdir -p "$TMP/keys"
"$PEERIX_BIN" keygen bench-p2p --out "$TMP/keys" >/dev/null 2>&1 || die "peerix keygen failed"
PUB="$(cat "$TMP/keys/bench-p2p.pub")"

# --- the internet, the routers, the hosts ------------------------------------
W="11.$((RANDOM % 256)).$((RANDOM % 256))"
T_ADDR="$W.2"
RA_WAN="$W.10"
RB_WAN="$W.11"
A_NET="10.$((RANDOM % 254 + 1)).$((RANDOM % 256))"
B_NET="192.168.$((RANDOM % 256))"
NS_INET="$ID-inet" NS_T="$ID-t" NS_RA="$ID-ra" NS_RB="$ID-rb" NS_A="$ID-a" NS_B="$ID-b"
log "internet $W.0/24: T=$T_ADDR RA=$RA_WAN RB=$RB_WAN; A=$A_NET.2 behind RA, B=$B_NET.2 behind RB (namespaces $ID-*)"
addns() {
	ip netns add "$1"
	NETNS=("$1" "${NETNS[@]}")
	ip -n "$1" link set lo up
}
addns "$NS_INET"
ip -n "$NS_INET" link add br0 type bridge
ip -n "$NS_INET" link set br0 up
wan_leg() { # ns port ifname addr
	ip -n "$NS_INET" link add "$2" type veth peer name "$3" netns "$1"
	ip -n "$NS_INET" link set "$2" master br0 up
	ip -n "$1" addr add "$4/24" dev "$3"
	ip -n "$1" link set "$3" up
}
addns "$NS_T"
wan_leg "$NS_T" vt eth0 "$T_ADDR"
# router NS_R WAN_ADDR NS_HOST LAN_PREFIX OTHER_WAN
router() {
	local r=$1 wan=$2 h=$3 lan=$4 other=$5
	addns "$r"
	addns "$h"
	wan_leg "$r" "v${r##*-}" wan "$wan"
	ip -n "$r" link add lan type veth peer name eth0 netns "$h"
	ip -n "$r" addr add "$lan.1/24" dev lan
	ip -n "$r" link set lan up
	ip -n "$h" addr add "$lan.2/24" dev eth0
	ip -n "$h" link set eth0 up
	ip -n "$h" route add default via "$lan.1"
	ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
	local ipt=(ip netns exec "$r" "$IPT")
	"${ipt[@]}" -t nat -A POSTROUTING -o wan -j MASQUERADE
	# Counting only: traffic of this LAN with the tracker and with the other router.
	"${ipt[@]}" -N pxacct
	for a in "$T_ADDR" "$other"; do
		# UDP (QUIC) first, so the next rule counts the rest (TCP).
		"${ipt[@]}" -A pxacct -i wan -s "$a" -p udp -j RETURN
		"${ipt[@]}" -A pxacct -i wan -s "$a" -j RETURN
		"${ipt[@]}" -A pxacct -o wan -d "$a" -j RETURN
	done
	"${ipt[@]}" -A FORWARD -j pxacct
	"${ipt[@]}" -A FORWARD -i lan -o wan -j ACCEPT
	"${ipt[@]}" -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
	"${ipt[@]}" -A FORWARD -i wan -j DROP
	"${ipt[@]}" -P FORWARD DROP
	"${ipt[@]}" -A INPUT -i wan -m conntrack --ctstate NEW -j DROP
}
router "$NS_RA" "$RA_WAN" "$NS_A" "$A_NET" "$RB_WAN"
router "$NS_RB" "$RB_WAN" "$NS_B" "$B_NET" "$RA_WAN"

# from_bytes ROUTER_NS ADDR: bytes its LAN received from ADDR so far
from_bytes() {
	ip netns exec "$1" "$IPT" -L pxacct -v -n -x | awk -v a="$2" '$6 == "wan" && $8 == a { s += $2 } END { print s + 0 }'
}

# udp_bytes ROUTER_NS ADDR: the UDP part of from_bytes
udp_bytes() {
	ip netns exec "$1" "$IPT" -L pxacct -v -n -x | awk -v a="$2" '$6 == "wan" && $8 == a && ($4 == "udp" || $4 == "17") { s += $2 } END { print s + 0 }'
}

# --- processes -----------------------------------------------------------------
# wait_http NS URL NAME: until URL answers 200 (bounded 30 s)
wait_http() {
	local ns=$1 url=$2 name=$3
	for _ in $(seq 1 300); do
		if ip netns exec "$ns" curl -sf -o /dev/null --max-time 2 "$url"; then return; fi
		kill -0 "${PIDS[$name]}" 2>/dev/null || die "$name exited"
		sleep 0.1
	done
	die "$name not ready within 30s"
}
log "starting the tracker on T"
ip netns exec "$NS_T" "$PEERIX_BIN" tracker --listen "0.0.0.0:$TRACKER_PORT" --db "$TMP/tracker/tracker.db" \
	--relay-port "$P2P_PORT" --peer-ttl 30s 2>"$TMP/peerix-tracker.log" &
PIDS[tracker]=$!
TRACKER="http://$T_ADDR:$TRACKER_PORT"
wait_http "$NS_T" "$TRACKER/v1/info" tracker

# start_peer NAME NS STORE [flags...]
start_peer() {
	local name=$1 ns=$2 store=$3
	shift 3
	ip netns exec "$ns" "$PEERIX_BIN" serve --mode p2p --tracker "$TRACKER" --filter none \
		--listen "127.0.0.1:$HTTP_PORT" --p2p-port "$P2P_PORT" --store-root "$store" \
		--state-dir "$TMP/state-$name" --verbose "$@" 2>>"$TMP/peerix-$name.log" &
	PIDS[$name]=$!
	wait_http "$ns" "http://127.0.0.1:$HTTP_PORT/api/status" "$name"
}
log "starting peerix on A (holds the path) and B (empty)"
start_peer A "$NS_A" "$A_STORE" --signing-key-file "$TMP/keys/bench-p2p.sec"
start_peer B "$NS_B" "$B_STORE" --trusted-public-key "$PUB"
MEM_START_A="$(awk '/^VmRSS/ { r = $2 } /^VmHWM/ { h = $2 } END { printf "%.0f/%.0f MiB", r / 1024, h / 1024 }' "/proc/${PIDS[A]}/status")"
MEM_START_B="$(awk '/^VmRSS/ { r = $2 } /^VmHWM/ { h = $2 } END { printf "%.0f/%.0f MiB", r / 1024, h / 1024 }' "/proc/${PIDS[B]}/status")"
A_ID="$(ip netns exec "$NS_A" curl -sf "http://127.0.0.1:$HTTP_PORT/api/status" | sed -n 's/^ *"peer_id": "\(.*\)",$/\1/p')"
[[ -n "$A_ID" ]] || die "no peer_id in A's /api/status"

log "waiting until the tracker lists A as holder, with its relay address"
for i in $(seq 1 300); do
	if ip netns exec "$NS_T" curl -sf --max-time 2 "$TRACKER/v1/find/$BIG_HASH" | grep -q "p2p-circuit"; then break; fi
	[[ $i == 300 ]] && die "the tracker never listed A as holder of $BIG_HASH with a /p2p-circuit address"
	sleep 0.1
done

B_URL="http://127.0.0.1:$HTTP_PORT"
CURL_FMT='%{http_code} %{size_download} %{time_total} %{time_starttransfer}'
on_b() { ip netns exec "$NS_B" curl -s -o /dev/null --max-time 120 -w "$CURL_FMT" "$@"; }
ms() { awk -v t="$1" 'BEGIN { printf "%.1f ms", t * 1000 }'; }
mbps() { awk -v n="$1" -v t="$2" 'BEGIN { printf "%.0f MB/s", n / t / 1e6 }'; }
mem() { # NAME: "VmRSS/VmHWM" in MiB
	awk '/^VmRSS/ { r = $2 } /^VmHWM/ { h = $2 } END { printf "%.0f/%.0f MiB", r / 1024, h / 1024 }' "/proc/${PIDS[$1]}/status"
}
# conn_to_a: B's /api/peers entry on A, as "connected direct relayed"
conn_to_a() {
	ip netns exec "$NS_B" curl -sf --max-time 2 "$B_URL/api/peers" | tr -d ' \n' |
		grep -o "\"peer_id\":\"$A_ID\"[^}]*" | sed 's/.*"connected":\([a-z]*\).*"direct":\([a-z]*\).*"relayed":\([a-z]*\).*/\1 \2 \3/' || true
}

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
log "miss: B asks for hashes the tracker knows no holder of"
MISS_MIN="" MISS_MAX=""
for _ in 1 2 3; do
	absent="$(od -An -N32 -tu1 /dev/urandom |
		awk '{ for (i = 1; i <= NF; i++) printf "%s", substr("0123456789abcdfghijklmnpqrsvwxyz", $i % 32 + 1, 1) }')"
	read -r code _ t _ <<<"$(on_b "$B_URL/$absent.narinfo")"
	[[ "$code" == 404 ]] || die "miss narinfo from B: HTTP $code, want 404"
	if [[ -z "$MISS_MIN" ]] || awk -v a="$t" -v b="$MISS_MIN" 'BEGIN { exit !(a < b) }'; then MISS_MIN="$t"; fi
	if [[ -z "$MISS_MAX" ]] || awk -v a="$t" -v b="$MISS_MAX" 'BEGIN { exit !(a > b) }'; then MISS_MAX="$t"; fi
done

# measure PHASE WANT_DIRECT(true|false): narinfo, wait for the connection
# kind, then RUNS downloads of the NAR; sets R_<PHASE>_* variables.
measure() {
	local phase=$1 want_direct=$2 code size total ttfb best="" c nar
	read -r code _ _ ttfb <<<"$(on_b "$B_URL/$BIG_HASH.narinfo")"
	[[ "$code" == 200 ]] || die "$phase: narinfo of $BIG from B: HTTP $code"
	eval "R_${phase}_NI=$ttfb"
	nar="$(ip netns exec "$NS_B" curl -sf --max-time 30 "$B_URL/$BIG_HASH.narinfo" | sed -n 's/^URL: //p')"
	[[ "$nar" == nar/p2p/* ]] || die "$phase: B's narinfo URL is '$nar', want nar/p2p/..."
	# The first download also makes the connection and, if it can, the hole punch.
	read -r code size _ _ <<<"$(on_b "$B_URL/$nar")"
	[[ "$code" == 200 && "$size" == "$BIG_SIZE" ]] || die "$phase: warm-up GET $nar: HTTP $code, $size bytes"
	for i in $(seq 1 100); do
		c="$(conn_to_a)"
		if [[ "$want_direct" == true && "$c" == "true true"* ]]; then break; fi
		if [[ "$want_direct" == false && "$c" == "true false true" ]]; then break; fi
		[[ $i == 100 ]] && die "$phase: B's connection to A is '$c' (connected direct relayed) after 10 s"
		sleep 0.1
	done
	local got_sha
	got_sha="$(ip netns exec "$NS_B" curl -sf --max-time 120 "$B_URL/$nar" | sha256sum | cut -d' ' -f1)"
	[[ "$got_sha" == "$BIG_SHA" ]] || die "$phase: the NAR through B has sha256 $got_sha, A's is $BIG_SHA"
	eval "R_${phase}_MEM_BEFORE_A='$(mem A)' R_${phase}_MEM_BEFORE_B='$(mem B)'"
	local from_a0 from_t0 udp_a0 udp_t0
	udp_a0="$(udp_bytes "$NS_RB" "$RA_WAN")"
	udp_t0="$(udp_bytes "$NS_RB" "$T_ADDR")"
	from_a0="$(from_bytes "$NS_RB" "$RA_WAN")"
	from_t0="$(from_bytes "$NS_RB" "$T_ADDR")"
	for _ in $(seq 1 "$RUNS"); do
		read -r code size total ttfb <<<"$(on_b "$B_URL/$nar")"
		[[ "$code" == 200 && "$size" == "$BIG_SIZE" ]] || die "$phase: GET $nar from B: HTTP $code, $size bytes; want 200 and $BIG_SIZE"
		if [[ -z "$best" ]] || awk -v a="$total" -v b="${best%% *}" 'BEGIN { exit !(a < b) }'; then best="$total $ttfb"; fi
	done
	eval "R_${phase}_MEM_AFTER_A='$(mem A)' R_${phase}_MEM_AFTER_B='$(mem B)'"
	eval "R_${phase}_T=${best%% *} R_${phase}_TTFB=${best#* }"
	eval "R_${phase}_CONN='$(conn_to_a)'"
	eval "R_${phase}_FROM_A=$(($(from_bytes "$NS_RB" "$RA_WAN") - from_a0))"
	eval "R_${phase}_FROM_T=$(($(from_bytes "$NS_RB" "$T_ADDR") - from_t0))"
	eval "R_${phase}_UDP_A=$(($(udp_bytes "$NS_RB" "$RA_WAN") - udp_a0))"
	eval "R_${phase}_UDP_T=$(($(udp_bytes "$NS_RB" "$T_ADDR") - udp_t0))"
}

log "direct: B fetches the 256 MiB NAR after hole punching"
measure DIRECT true
(( R_DIRECT_FROM_A >= RUNS * BIG_SIZE )) ||
	die "direct phase: only $R_DIRECT_FROM_A bytes came from A's router (want >= $((RUNS * BIG_SIZE))); $R_DIRECT_FROM_T from the tracker"

log "relayed: the routers drop each other's traffic; B's peerix restarts"
ip netns exec "$NS_RA" "$IPT" -I FORWARD 1 -s "$RB_WAN" -j DROP
ip netns exec "$NS_RA" "$IPT" -I FORWARD 1 -d "$RB_WAN" -j DROP
ip netns exec "$NS_RB" "$IPT" -I FORWARD 1 -s "$RA_WAN" -j DROP
ip netns exec "$NS_RB" "$IPT" -I FORWARD 1 -d "$RA_WAN" -j DROP
kill "${PIDS[B]}"
for _ in $(seq 1 100); do kill -0 "${PIDS[B]}" 2>/dev/null || break; sleep 0.1; done
kill -0 "${PIDS[B]}" 2>/dev/null && die "B's peerix did not stop within 10 s of SIGTERM"
wait "${PIDS[B]}" 2>/dev/null || true
start_peer B "$NS_B" "$B_STORE" --trusted-public-key "$PUB"
MEM_RESTART_B="$(mem B)"
measure RELAYED false
(( R_RELAYED_FROM_T >= RUNS * BIG_SIZE )) ||
	die "relayed phase: only $R_RELAYED_FROM_T bytes came from the tracker/relay (want >= $((RUNS * BIG_SIZE)))"

LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
for name in tracker A B; do
	kill -0 "${PIDS[$name]}" 2>/dev/null || die "$name died during the benchmark"
done

# --- report ------------------------------------------------------------------
echo "# peerix P2P benchmark"
echo
echo "command: \`${cmdline% }\`"
echo
echo "- machine: $(nproc) cores, $(awk '/^model name/ { $1 = $2 = $3 = ""; print; exit }' /proc/cpuinfo | sed 's/^ *//'), $(uname -sr)"
echo "- load average (1/5/15 min) before the measurements: $LOAD_BEFORE; after: $LOAD_AFTER (the machine's other work competes for the same cores)"
echo "- peerix: $PEERIX_VERSION; $(curl --version | head -n1 | cut -d' ' -f1-2); iptables: $IPT"
echo "- network: network namespaces on one machine: tracker T ($T_ADDR, peerix tracker + relay) and routers RA ($RA_WAN), RB ($RB_WAN) on a simulated internet (a bridge; $W.0/24, public to libp2p, no route out); A ($A_NET.2) behind RA, B ($B_NET.2) behind RB; the routers MASQUERADE and drop unsolicited inbound traffic"
echo "- path: $BIG ($BIG_SIZE-byte NAR, incompressible); A holds it, B starts empty; every download is checked by size, one per phase by SHA-256"
echo "- measured with curl on B's loopback through B's peerix (\`/nar/p2p/…\`), best of $RUNS; MB = 10^6 bytes; memory is VmRSS/VmHWM from /proc/PID/status"
echo
echo "| measurement (from B) | time | throughput | bytes into B's LAN from A's router / from T (of which UDP, i.e. QUIC) | B's link to A (connected direct relayed) |"
echo "| --- | ---: | ---: | ---: | --- |"
echo "| narinfo miss (tracker knows no holder), 3 hashes | $(ms "$MISS_MIN") – $(ms "$MISS_MAX") | | | |"
echo "| narinfo hit, first ask (direct phase): time to first byte | $(ms "$R_DIRECT_NI") | | | |"
echo "| 256 MiB NAR, direct (hole punched) | $(ms "$R_DIRECT_T") (first byte $(ms "$R_DIRECT_TTFB")) | $(mbps "$BIG_SIZE" "$R_DIRECT_T") | $R_DIRECT_FROM_A ($R_DIRECT_UDP_A) / $R_DIRECT_FROM_T ($R_DIRECT_UDP_T) | $R_DIRECT_CONN |"
echo "| narinfo hit, first ask (relayed phase): time to first byte | $(ms "$R_RELAYED_NI") | | | |"
echo "| 256 MiB NAR, relayed through T | $(ms "$R_RELAYED_T") (first byte $(ms "$R_RELAYED_TTFB")) | $(mbps "$BIG_SIZE" "$R_RELAYED_T") | $R_RELAYED_FROM_A ($R_RELAYED_UDP_A) / $R_RELAYED_FROM_T ($R_RELAYED_UDP_T) | $R_RELAYED_CONN |"
echo
echo "| daemon memory (VmRSS/VmHWM) | at start, before any transfer | before the $RUNS timed downloads | after them |"
echo "| --- | ---: | ---: | ---: |"
echo "| A (serving), direct phase | $MEM_START_A | $R_DIRECT_MEM_BEFORE_A | $R_DIRECT_MEM_AFTER_A |"
echo "| B (fetching), direct phase | $MEM_START_B | $R_DIRECT_MEM_BEFORE_B | $R_DIRECT_MEM_AFTER_B |"
echo "| A (serving), relayed phase | | $R_RELAYED_MEM_BEFORE_A | $R_RELAYED_MEM_AFTER_A |"
echo "| B (fetching, restarted), relayed phase | $MEM_RESTART_B | $R_RELAYED_MEM_BEFORE_B | $R_RELAYED_MEM_AFTER_B |"
echo
echo "\"Before\" is after one warm-up download and one SHA-256-checked download, so VmHWM already includes a full transfer; a NAR held in memory would show as VmHWM ≥ 256 MiB."
