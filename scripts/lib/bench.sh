# shellcheck shell=bash
# scripts/lib/bench.sh: what the shell benchmarks (bench-local.sh,
# bench-tracker.sh) share. Source it at the top level of a script that runs
# under `set -euo pipefail`, so that it sees the script's arguments:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib/bench.sh"
#   bench_tmp        # $TMP, and the exit trap that stops and removes everything
#
# The benchmarks between simulated hosts (LAN, P2P across NAT) are Go
# benchmarks in test/e2e, on the end-to-end tests' topologies.

BENCH_SCRIPT="$(basename "$0")"
BENCH_ARGS=("$@")
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BENCH_PIDS=()

log() { echo "bench: $*" >&2; }
die() {
	echo "$BENCH_SCRIPT: $*" >&2
	exit 1
}

# need TOOL...: dies unless every TOOL is on PATH.
need() {
	local tool
	for tool in "$@"; do
		command -v "$tool" >/dev/null || die "$tool not found on PATH"
	done
}

# command_line VAR...: the script's command line as run, for the report,
# preceded by those VARs (the environment that changes what it does) that
# are set.
command_line() {
	local line v
	line="$(printf '%q ' "$0" "${BENCH_ARGS[@]}")"
	for v in "$@"; do
		if [[ -n "${!v:-}" ]]; then line="$v=$(printf '%q' "${!v}") $line"; fi
	done
	echo "${line% }"
}

# bench_tmp makes $TMP (readable by all: nginx workers and PostgreSQL may
# run as other users) and sets the exit trap: every process started with
# spawn and still running is stopped (SIGTERM, SIGKILL after 5 s), the
# script's bench_cleanup runs if it defines one, and $TMP is removed.
bench_tmp() {
	TMP="$(mktemp -d "/tmp/peerix-${BENCH_SCRIPT%.sh}.XXXXXX")"
	chmod 755 "$TMP"
	trap bench_exit EXIT
	trap 'exit 130' INT TERM
}

bench_exit() {
	local pid
	for pid in "${BENCH_PIDS[@]}"; do stop_pid "$pid" 5; done
	if declare -F bench_cleanup >/dev/null; then bench_cleanup || true; fi
	chmod -R u+w "$TMP" 2>/dev/null || true
	rm -rf "$TMP"
}

# spawn LOG COMMAND...: runs COMMAND in the background, its output into LOG;
# sets SPAWNED to its pid. It is stopped at exit if still running.
spawn() {
	local logfile=$1
	shift
	"$@" >"$logfile" 2>&1 &
	SPAWNED=$!
	BENCH_PIDS+=("$SPAWNED")
}

# stop_pid PID [SECONDS]: SIGTERM, a wait of at most SECONDS (default 10)
# for the process to exit, then SIGKILL.
stop_pid() {
	local pid=$1 wait=${2:-10}
	kill "$pid" 2>/dev/null || return 0
	for _ in $(seq 1 $((wait * 10))); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "process $pid did not stop within ${wait}s of SIGTERM; killing it"
		kill -9 "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

# free_port prints a loopback port nothing answers on.
free_port() {
	local port
	for _ in $(seq 1 100); do
		port=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "$port"
			return
		fi
	done
	die "no free port found"
}

# wait_http URL PID NAME LOG: until URL answers 200, at most 30 s; dies
# showing LOG if PID exits first or time runs out.
wait_http() {
	local url=$1 pid=$2 name=$3 logfile=$4
	for _ in $(seq 1 300); do
		if curl -sf -o /dev/null --max-time 2 "$url"; then return; fi
		kill -0 "$pid" 2>/dev/null || { cat "$logfile" >&2; die "$name exited before serving $url"; }
		sleep 0.1
	done
	cat "$logfile" >&2
	die "$name did not serve $url within 30s"
}

# go_build PACKAGE...: builds the commands into $TMP/bin/, static as
# the Makefile builds them.
go_build() {
	log "building $*"
	(cd "$REPO" && CGO_ENABLED=0 go build -o "$TMP/bin/" "$@")
}

# bench_paths ATTR...: builds those attributes of test/e2e/testdata/bench.nix
# (salt BENCH_SALT, default peerix-bench-1, as the Go benchmarks use, so the
# paths are built once) and prints their store paths, one a line.
bench_paths() {
	local attr
	for attr in "$@"; do
		nix-build "$REPO/test/e2e/testdata/bench.nix" -A "$attr" --argstr salt "${BENCH_SALT:-peerix-bench-1}" \
			-o "$TMP/result-$attr" 2>"$TMP/build-$attr.log" ||
			{ cat "$TMP/build-$attr.log" >&2; die "nix-build -A $attr failed"; }
	done
}

# machine: one line on the machine the numbers come from.
machine() {
	echo "$(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, $(uname -sr)"
}

# now: the time in seconds, with nanoseconds.
now() { date +%s.%N; }

# since START: seconds since START (from now).
since() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.6f", e - s }'; }

# min A B: the smaller number; A alone if B is empty.
min() { awk -v a="$1" -v b="${2:-}" 'BEGIN { print (b == "" || a + 0 < b + 0) ? a : b }'; }

# ms SECONDS, mibps BYTES SECONDS: numbers for the report.
ms() { awk -v t="$1" 'BEGIN { printf "%.2f ms", t * 1000 }'; }
mibps() { awk -v n="$1" -v t="$2" 'BEGIN { printf "%.0f MiB/s", n / t / 1048576 }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f MiB", b / 1048576 }'; }

# vm PID: its VmRSS / VmHWM in MiB.
vm() { awk '/^VmRSS|^VmHWM/ { v[$1] = sprintf("%.1f", $2 / 1024) } END { printf "%s / %s MiB", v["VmRSS:"], v["VmHWM:"] }' "/proc/$1/status"; }
