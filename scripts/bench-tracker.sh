#!/usr/bin/env bash
# bench-tracker.sh: the tracker at scale. Starts `peerix tracker` on loopback
# over SQLite, then over a private PostgreSQL server, plays many signed peers
# against each with cmd/peerix-loadgen, and prints a markdown table: time to
# take every full announcement, delta / find / heartbeat latency, database
# size, tracker memory.
#
#   scripts/bench-tracker.sh                                  # 1,000 peers x 20,000 hashes, both backends
#   BENCH_PEERS=100 BENCH_HASHES=5000 scripts/bench-tracker.sh  # a quick run
#   BENCH_BACKENDS=postgres scripts/bench-tracker.sh
#
# Environment:
#   BENCH_PEERS        peers (default 1000)
#   BENCH_HASHES       hashes in each peer's full set (default 20000)
#   BENCH_DELTAS       delta announcements per peer (default 5; 20 hashes each)
#   BENCH_FINDS        find queries (default 20000)
#   BENCH_ANNOUNCERS   peers sending their full set at once (default 4)
#   BENCH_CONCURRENCY  requests in flight in the delta/find phase (default 16)
#   BENCH_RATE         requests/s in the delta/find phase (default 500; 0 = flat out)
#   BENCH_LIGHT_RATE   then, on the same registry, 50 more peers, their
#                      deltas and finds at this rate for about 60 s (default
#                      0: skip)
#   BENCH_SETTLE       pause between the full announcements and the
#                      delta/find phase (default 30s; heartbeats go on)
#   BENCH_DURATION     cap per backend (default 30m)
#   BENCH_BACKENDS     "sqlite postgres" (default), or one of them
#   BENCH_PG_OPTS      extra postgres -c settings, e.g. "-c shared_buffers=4GB"
#   PEERIX, PEERIX_LOADGEN  binaries (default: go build into a temp dir)
#
# At full scale (20 M hash rows per backend) a run takes about 14 minutes on
# a 2-vCPU VM, 10 of them SQLite taking the full sets, and SQLite writes
# about 150 GiB to the disk (see docs/benchmarks.md); BENCH_BACKENDS=postgres
# takes about 3 minutes. Needs: go (unless both binaries are
# given), curl, jq, and for PostgreSQL Debian's postgresql package
# (scripts/deps.sh test). As root, PostgreSQL runs as the postgres user.
# Everything listens on 127.0.0.1 and lives in one temporary directory,
# removed at the end.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/bench.sh"

cmdline="$(command_line BENCH_PEERS BENCH_HASHES BENCH_DELTAS BENCH_FINDS BENCH_ANNOUNCERS BENCH_CONCURRENCY BENCH_RATE BENCH_LIGHT_RATE BENCH_SETTLE BENCH_DURATION BENCH_BACKENDS BENCH_PG_OPTS)"

PEERS="${BENCH_PEERS:-1000}"
HASHES="${BENCH_HASHES:-20000}"
DELTAS="${BENCH_DELTAS:-5}"
FINDS="${BENCH_FINDS:-20000}"
ANNOUNCERS="${BENCH_ANNOUNCERS:-4}"
CONCURRENCY="${BENCH_CONCURRENCY:-16}"
RATE="${BENCH_RATE:-500}"
SETTLE="${BENCH_SETTLE:-30s}"
LIGHT_RATE="${BENCH_LIGHT_RATE:-0}"
DURATION="${BENCH_DURATION:-30m}"
BACKENDS="${BENCH_BACKENDS:-sqlite postgres}"
PG_OPTS="${BENCH_PG_OPTS:-}"
need curl jq awk
bench_tmp
PGDATA=""
PGBIN=""
AS_PG=()
# bench_cleanup stops the PostgreSQL server, if one is running (bench_exit).
bench_cleanup() {
	if [[ -n "$PGDATA" && -e "$PGDATA/postmaster.pid" ]]; then
		"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1 || true
	fi
}

if [[ -z "${PEERIX:-}" || -z "${PEERIX_LOADGEN:-}" ]]; then
	go_build ./cmd/peerix ./cmd/peerix-loadgen
fi
PEERIX="${PEERIX:-$TMP/bin/peerix}"
PEERIX_LOADGEN="${PEERIX_LOADGEN:-$TMP/bin/peerix-loadgen}"

# run_tracker NAME DB MEASURE: starts a tracker on DB, loads it, records
# results in $TMP/NAME.json (loadgen), $TMP/NAME.hwm (tracker VmHWM, kB),
# $TMP/NAME.io (bytes the tracker wrote to storage), runs MEASURE (database
# size and such), then the light-load run ($TMP/NAME-light.json).
run_tracker() {
	local name="$1" db="$2" measure="$3" port pid
	port="$(free_port)"
	spawn "$TMP/$name-tracker.log" "$PEERIX" tracker --listen "127.0.0.1:$port" --db "$db" --relay-port 0 --peer-ttl 30m
	pid=$SPAWNED
	wait_http "http://127.0.0.1:$port/v1/info" "$pid" "$name tracker" "$TMP/$name-tracker.log"
	log "$name: loading the tracker (pid $pid) with $PEERS peers x $HASHES hashes"
	local rc=0
	"$PEERIX_LOADGEN" -tracker "http://127.0.0.1:$port" -peers "$PEERS" -hashes "$HASHES" \
		-deltas "$DELTAS" -finds "$FINDS" -announce-concurrency "$ANNOUNCERS" \
		-concurrency "$CONCURRENCY" -rate "$RATE" -settle "$SETTLE" \
		-duration "$DURATION" -json "$TMP/$name.json" >&2 || rc=$?
	[[ -s "$TMP/$name.json" ]] || die "$name: the load generator wrote no results (exit $rc)"
	awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" >"$TMP/$name.hwm"
	io_bytes "$pid" >"$TMP/$name.io"
	"$measure"
	if [[ "$LIGHT_RATE" != 0 ]]; then
		# Light load on the same registry: 50 more peers (their own
		# hashes, the same pool) with deltas, and finds at LIGHT_RATE.
		log "$name: light load, $LIGHT_RATE requests/s"
		"$PEERIX_LOADGEN" -tracker "http://127.0.0.1:$port" -peers 50 -hashes "$HASHES" -first-peer "$PEERS" \
			-deltas 20 -finds "$((LIGHT_RATE * 50))" -announce-concurrency "$ANNOUNCERS" \
			-concurrency "$CONCURRENCY" -rate "$LIGHT_RATE" -settle 10s \
			-duration "$DURATION" -json "$TMP/$name-light.json" >&2 || true
		[[ -s "$TMP/$name-light.json" ]] || die "$name: the light-load run wrote no results"
	fi
	stop_pid "$pid" 60
}

# io_bytes PID: what the process has written to storage (page-cache pages it
# dirtied included), from /proc/PID/io; read before it exits.
io_bytes() {
	awk '/^write_bytes:/ {w = $2} /^cancelled_write_bytes:/ {c = $2} END {print w - c}' "/proc/$1/io"
}

measure_sqlite() {
	local size=0 f
	for f in "$TMP"/sqlite/tracker.db*; do size=$((size + $(stat -c %s "$f"))); done
	echo "$size" >"$TMP/sqlite.size"
}

bench_sqlite() {
	mkdir -p "$TMP/sqlite"
	run_tracker sqlite "$TMP/sqlite/tracker.db" measure_sqlite
}

PGPORT=""
measure_postgres() {
	local port="$PGPORT"
	"${AS_PG[@]}" "$PGBIN/psql" -h 127.0.0.1 -p "$port" -U postgres -qAtc "SELECT pg_database_size('peerix')" postgres >"$TMP/postgres.size"
	# What the server wrote: its WAL, and the data pages written out so far
	# (pages still dirty in shared buffers are not counted).
	"${AS_PG[@]}" "$PGBIN/psql" -h 127.0.0.1 -p "$port" -U postgres -qAtc \
		"SELECT (SELECT wal_bytes FROM pg_stat_wal) + (SELECT (buffers_checkpoint + buffers_clean + buffers_backend) * 8192 FROM pg_stat_bgwriter)" postgres >"$TMP/postgres.pgio"
	# The server's own memory: proportional set size of all its processes
	# (shared buffers counted once).
	local pss=0 pid pm
	pm="$(head -1 "$PGDATA/postmaster.pid")"
	for pid in "$pm" $(pgrep -P "$pm" || true); do
		pss=$((pss + $(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)))
	done
	echo "$pss" >"$TMP/postgres.pss"
}

bench_postgres() {
	local dir
	dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
	[[ -x "$dir/postgres" ]] || die "PostgreSQL not installed (Debian package postgresql: scripts/deps.sh test)"
	PGBIN="$dir"
	mkdir -p "$TMP/pg"
	if [[ "$(id -u)" == 0 ]]; then
		chown postgres: "$TMP/pg"
		AS_PG=(runuser -u postgres --)
	fi
	PGDATA="$TMP/pg/data"
	local port
	port="$(free_port)"
	"${AS_PG[@]}" "$PGBIN/initdb" -D "$PGDATA" -U postgres -A trust -E UTF8 --locale=C >/dev/null
	# Settings for a database of this size on this machine (the defaults
	# are for a 128 MB server): a buffer cache that holds the hot index,
	# checkpoints far enough apart that index pages are not rewritten to
	# the WAL in full over and over. Durability settings stay default.
	"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -l "$TMP/pg/server.log" -w -t 60 start -o \
		"-k $TMP/pg -p $port -c listen_addresses=127.0.0.1 -c shared_buffers=2GB -c max_wal_size=8GB -c checkpoint_timeout=15min -c max_connections=200 $PG_OPTS" >/dev/null
	"${AS_PG[@]}" "$PGBIN/psql" -h 127.0.0.1 -p "$port" -U postgres -qAtc "CREATE DATABASE peerix" postgres
	PGPORT="$port"
	run_tracker postgres "postgres://postgres@127.0.0.1:$port/peerix?sslmode=disable" measure_postgres
	"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
}

for b in $BACKENDS; do
	case "$b" in
	sqlite) bench_sqlite ;;
	postgres) bench_postgres ;;
	*) die "unknown backend $b (want sqlite, postgres)" ;;
	esac
done

# The table.
q() { jq -r "$2" "$TMP/$1.json"; }
row() { # row [-light] LABEL JQ-EXPRESSION: a cell per backend from its (light-load) results
	local suffix="" line b
	if [[ "$1" == -light ]]; then suffix=-light; shift; fi
	line="| $1 |"
	for b in $BACKENDS; do line+=" $(q "$b$suffix" "$2") |"; done
	echo "$line"
}
echo "command: \`${cmdline% }\`"
echo
echo "$(machine); tracker, database and load generator on the same machine."
echo
header="| |" sep="| --- |"
for b in $BACKENDS; do
	case "$b" in sqlite) header+=" SQLite |" ;; postgres) header+=" PostgreSQL |" ;; esac
	sep+=" --- |"
done
echo "$header"
echo "$sep"
row "full announcements, $PEERS peers x $HASHES hashes ($ANNOUNCERS at once)" '"\(.full_announce_s | floor) s (\(.full_hashes_per_s / 1000 | floor) k hashes/s)"'
row "full set of $HASHES hashes (one request), p50 / p99" '"\(.full_set.p50_ms | round) / \(.full_set.p99_ms | round) ms"'
if [[ "$RATE" == 0 ]]; then
	busy="flat out"
else
	busy="$RATE req/s for $(((PEERS * (DELTAS + 1) + FINDS) / RATE)) s"
fi
row "busy: $busy, $CONCURRENCY in flight" '"\(.delta.n + .find.n + .heartbeat.n) requests"'
row "busy: delta (10 removed, 10 added), p50 / p99" '"\(.delta.p50_ms) / \(.delta.p99_ms) ms"'
row "busy: find, p50 / p99" '"\(.find.p50_ms) / \(.find.p99_ms) ms"'
row "busy: find of a popular hash (100 of up to 1,000 holders), p50 / p99" '"\(.find_popular.p50_ms) / \(.find_popular.p99_ms) ms"'
row "busy: find of a hash one peer holds, p50 / p99" '"\(.find_single.p50_ms) / \(.find_single.p99_ms) ms"'
row "busy: find of a hash no one holds, p50 / p99" '"\(.find_miss.p50_ms) / \(.find_miss.p99_ms) ms"'
row "busy: heartbeat, p50 / p99" '"\(.heartbeat.p50_ms) / \(.heartbeat.p99_ms) ms"'
if [[ "$LIGHT_RATE" != 0 ]]; then
	row -light "light: $LIGHT_RATE req/s for 60 s" '"\(.delta.n + .find.n + .heartbeat.n) requests"'
	row -light "light: delta, p50 / p99" '"\(.delta.p50_ms) / \(.delta.p99_ms) ms"'
	row -light "light: find, p50 / p99" '"\(.find.p50_ms) / \(.find.p99_ms) ms"'
	row -light "light: find of a popular hash, p50 / p99" '"\(.find_popular.p50_ms) / \(.find_popular.p99_ms) ms"'
fi
row "hashes held after the busy phase" '"\(.held_hashes)"'
line="| errors, count mismatches |"
for b in $BACKENDS; do
	if [[ "$LIGHT_RATE" != 0 ]]; then
		line+=" $(jq -rs '"\(.[0].errors + .[1].errors), \(.[0].count_mismatches + .[1].count_mismatches)"' "$TMP/$b.json" "$TMP/$b-light.json") |"
	else
		line+=" $(q "$b" '"\(.errors), \(.count_mismatches)"') |"
	fi
done
echo "$line"
line="| database size after the busy phase |"
for b in $BACKENDS; do
	case "$b" in
	sqlite) line+=" $(mib "$(cat "$TMP/sqlite.size")") (file + WAL + shm) |" ;;
	postgres) line+=" $(mib "$(cat "$TMP/postgres.size")") (pg_database_size) |" ;;
	esac
done
echo "$line"
line="| written to storage up to the end of the busy phase |"
for b in $BACKENDS; do
	case "$b" in
	sqlite) line+=" $(awk -v b="$(cat "$TMP/sqlite.io")" 'BEGIN { printf "%.1f GiB", b / 1073741824 }') (tracker's write_bytes) |" ;;
	postgres) line+=" $(awk -v b="$(cat "$TMP/postgres.pgio")" 'BEGIN { printf "%.1f GiB", b / 1073741824 }') (WAL + data pages written so far) |" ;;
	esac
done
echo "$line"
line="| tracker memory (VmHWM) after the busy phase |"
for b in $BACKENDS; do line+=" $(mib $(($(cat "$TMP/$b.hwm") * 1024))) |"; done
echo "$line"
if [[ " $BACKENDS " == *" postgres "* ]]; then
	line="| PostgreSQL server memory (PSS of all its processes) after the busy phase |"
	for b in $BACKENDS; do
		case "$b" in sqlite) line+=" — |" ;; postgres) line+=" $(mib $(($(cat "$TMP/postgres.pss") * 1024))) |" ;; esac
	done
	echo "$line"
fi
