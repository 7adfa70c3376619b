#!/usr/bin/env bash
# bench-local.sh: `peerix serve --mode local` side by side with nginx serving a
# static file:// binary cache of the same store paths, on this machine, over
# loopback only. Prints a markdown table.
#
#   scripts/bench-local.sh                  # 256 MiB NAR
#   BENCH_BIG=1 scripts/bench-local.sh      # also a 1 GiB NAR (RSS measured on it)
#   PEERIX=/path/to/peerix scripts/bench-local.sh
#
# Environment:
#   PEERIX        peerix binary (default: go build ./cmd/peerix into a temp dir)
#   BENCH_BIG     1: also build and stream a 1 GiB path
#   BENCH_SALT    salt for the paths of test/e2e/testdata/bench.nix (default
#                 peerix-bench-1, fixed, so reruns and the Go benchmarks reuse them)
#   BENCH_DURATION  wrk duration (default 10s)
#
# Needs: nix-build, nix, nix-store (NIX_REMOTE=local is used), nginx, wrk, curl.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/bench.sh"

echo "# peerix local benchmark"
echo
echo "command: \`$(command_line BENCH_DURATION BENCH_SALT BENCH_BIG PEERIX)\`"
echo

BENCH_BIG="${BENCH_BIG:-0}"
DURATION="${BENCH_DURATION:-10s}"
need nix-build nix nix-store nginx wrk curl awk
bench_tmp

export NIX_REMOTE=local
export XDG_CACHE_HOME="$TMP/xdg-cache"
NIX=(nix --extra-experimental-features nix-command)

# --- peerix binary -----------------------------------------------------------
if [[ -z "${PEERIX:-}" ]]; then
	go_build ./cmd/peerix
fi
PEERIX_BIN="${PEERIX:-$TMP/bin/peerix}"
PEERIX_VERSION="$("$PEERIX_BIN" version 2>&1 | head -n1)"

# --- (a) fixtures: test/e2e/testdata/bench.nix -------------------------------
log "building fixtures (salt ${BENCH_SALT:-peerix-bench-1})"
SMALL="$(bench_paths small)"
BIG="$(bench_paths big)"
PATHS=("$SMALL" "$BIG")
if [[ "$BENCH_BIG" == 1 ]]; then
	HUGE="$(bench_paths huge)"
	PATHS+=("$HUGE")
fi

CHROOT="$TMP/chroot"
CACHE="$TMP/cache"
log "copying into the chroot store and the file:// cache"
"${NIX[@]}" copy --no-check-sigs --to "$CHROOT" "${PATHS[@]}" 2>"$TMP/copy.log" ||
	{ cat "$TMP/copy.log" >&2; die "nix copy --to $CHROOT failed"; }
"${NIX[@]}" copy --no-check-sigs --to "file://$CACHE?compression=none" "${PATHS[@]}" 2>"$TMP/copy.log" ||
	{ cat "$TMP/copy.log" >&2; die "nix copy --to file://$CACHE failed"; }
chmod -R a+rX "$CACHE"

hash_of() { basename "$1" | cut -c1-32; }
nar_size() { nix-store --store "$CHROOT" -q --size "$1"; }

# --- (b) servers -------------------------------------------------------------
NGINX_PORT="$(free_port)"
mkdir -p "$TMP/nginx/tmp"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 2;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path $TMP/nginx/tmp/body;
  proxy_temp_path $TMP/nginx/tmp/proxy;
  fastcgi_temp_path $TMP/nginx/tmp/fastcgi;
  uwsgi_temp_path $TMP/nginx/tmp/uwsgi;
  scgi_temp_path $TMP/nginx/tmp/scgi;
  types {
    text/x-nix-narinfo narinfo;
    application/x-nix-archive nar;
    text/plain nix-cache-info;
  }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $CACHE;
  }
}
EOF
log "starting nginx on 127.0.0.1:$NGINX_PORT"
spawn "$TMP/nginx/output.log" nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;'
NGINX_PID=$SPAWNED
NGINX="http://127.0.0.1:$NGINX_PORT"
wait_http "$NGINX/nix-cache-info" "$NGINX_PID" nginx "$TMP/nginx/error.log"

# start_peerix NAME [extra flags...]: sets PEERIX_URL and PEERIX_PID
start_peerix() {
	local name=$1
	shift
	local port
	port="$(free_port)"
	spawn "$TMP/peerix-$name.log" "$PEERIX_BIN" serve --mode local --store-root "$CHROOT" \
		--listen "127.0.0.1:$port" --state-dir "$TMP/state-$name" "$@"
	PEERIX_PID=$SPAWNED
	PEERIX_URL="http://127.0.0.1:$port"
	log "starting peerix ($name) on 127.0.0.1:$port"
	wait_http "$PEERIX_URL/local/nix-cache-info" "$PEERIX_PID" "peerix ($name)" "$TMP/peerix-$name.log"
}
start_peerix main
PX="$PEERIX_URL"
PX_PID="$PEERIX_PID"

RSS_IDLE="$(vm "$PX_PID")"

# NAR URLs (relative to the cache base) from each server's own narinfo.
nar_url() {
	local u
	u="$(curl -sf "$1/$(hash_of "$2").narinfo" | sed -n 's/^URL: //p')"
	[[ -n "$u" ]] || die "no narinfo for $2 at $1"
	echo "$u"
}
NG_SMALL="$NGINX/$(nar_url "$NGINX" "$SMALL")"
NG_BIG="$NGINX/$(nar_url "$NGINX" "$BIG")"
PX_SMALL="$PX/local/$(nar_url "$PX/local" "$SMALL")"
PX_BIG="$PX/local/$(nar_url "$PX/local" "$BIG")"
NG_NARINFO="$NGINX/$(hash_of "$SMALL").narinfo"
PX_NARINFO="$PX/local/$(hash_of "$SMALL").narinfo"

# --- measurement helpers -----------------------------------------------------
# The measurement helpers run in $(...) subshells, so they log their
# commands to a file.
COMMANDS_FILE="$TMP/commands"
: >"$COMMANDS_FILE"
record() { echo "    $*" >>"$COMMANDS_FILE"; }
# wrk_run URL: prints "req/s|latency avg|note"
wrk_run() {
	local out rps lat errs
	record "wrk -t2 -c8 -d$DURATION --latency $1"
	out="$(wrk -t2 -c8 -d"$DURATION" --latency "$1")"
	rps="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")"
	lat="$(awk '$1 == "Latency" {
		v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
		f = (u == "us") ? 0.001 : (u == "s") ? 1000 : (u == "m") ? 60000 : 1
		printf "%.3f ms", v * f; exit }' <<<"$out")"
	errs="$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | paste -sd ';' - || true)"
	echo "$rps|$lat|$errs"
}
CURL_FMT='%{size_download} %{time_total} %{time_starttransfer} %{http_code}'
# curl_best URL SIZE RUNS: best (lowest total time) of RUNS downloads;
# prints "size time_total ttfb"
curl_best() {
	local url=$1 size=$2 runs=$3 best="" best_total="" line got total ttfb code
	record "curl -s -o /dev/null -w '$CURL_FMT' $url  (best of $runs)"
	for _ in $(seq 1 "$runs"); do
		line="$(curl -s -o /dev/null -w "$CURL_FMT" "$url")"
		read -r got total ttfb code <<<"$line"
		[[ "$code" == 200 && "$got" == "$size" ]] || die "GET $url: HTTP $code, $got bytes, want 200 and $size bytes"
		if [[ "$(min "$total" "$best_total")" == "$total" ]]; then
			best_total="$total"
			best="$got $total $ttfb"
		fi
	done
	echo "$best"
}
# dump_best PATH RUNS: best wall time of nix-store --dump to /dev/null, in s
dump_best() {
	local best="" start
	record "nix-store --store $CHROOT --dump $1 > /dev/null  (best of $2)"
	for _ in $(seq 1 "$2"); do
		start="$(now)"
		nix-store --store "$CHROOT" --dump "$1" >/dev/null
		best="$(min "$(since "$start")" "$best")"
	done
	echo "$best"
}
field() { cut -d'|' -f"$2" <<<"$1"; }
note() { [[ -n "$1" ]] && echo "$1" || true; }

# --- (c) narinfo requests/s --------------------------------------------------
log "wrk on narinfo"
W_NG_NI="$(wrk_run "$NG_NARINFO")"
W_PX_NI="$(wrk_run "$PX_NARINFO")"

# The same with a signing key: peerix signs every narinfo it serves.
mkdir -p "$TMP/keys"
"$PEERIX_BIN" keygen bench --out "$TMP/keys" >/dev/null 2>&1 || die "peerix keygen failed"
start_peerix signed --signing-key-file "$TMP/keys/bench.sec"
PXS="$PEERIX_URL"
curl -sf "$PXS/local/$(hash_of "$SMALL").narinfo" | grep -q '^Sig: bench:' || die "signed peerix serves no Sig: bench: line"
W_PXS_NI="$(wrk_run "$PXS/local/$(hash_of "$SMALL").narinfo")"
stop_pid "$PEERIX_PID"

# --- (d) NAR throughput ------------------------------------------------------
BIG_SIZE="$(nar_size "$BIG")"
log "streaming the 256 MiB NAR ($BIG_SIZE bytes)"
C_NG_BIG="$(curl_best "$NG_BIG" "$BIG_SIZE" 3)"
C_PX_BIG="$(curl_best "$PX_BIG" "$BIG_SIZE" 3)"
D_BIG="$(dump_best "$BIG" 3)"

if [[ "$BENCH_BIG" == 1 ]]; then
	HUGE_SIZE="$(nar_size "$HUGE")"
	NG_HUGE="$NGINX/$(nar_url "$NGINX" "$HUGE")"
	PX_HUGE="$PX/local/$(nar_url "$PX/local" "$HUGE")"
	log "streaming the 1 GiB NAR ($HUGE_SIZE bytes)"
	C_NG_HUGE="$(curl_best "$NG_HUGE" "$HUGE_SIZE" 2)"
	C_PX_HUGE="$(curl_best "$PX_HUGE" "$HUGE_SIZE" 2)"
	D_HUGE="$(dump_best "$HUGE" 2)"
fi

# --- (e) fixed cost per NAR request ------------------------------------------
SMALL_SIZE="$(nar_size "$SMALL")"
log "wrk on the small NAR ($SMALL_SIZE bytes)"
W_NG_SM="$(wrk_run "$NG_SMALL")"
W_PX_SM="$(wrk_run "$PX_SMALL")"
C_NG_SM="$(curl_best "$NG_SMALL" "$SMALL_SIZE" 5)"
C_PX_SM="$(curl_best "$PX_SMALL" "$SMALL_SIZE" 5)"

# --- (f) peerix memory while streaming ---------------------------------------
RSS_BEFORE="$(vm "$PX_PID")"
if [[ "$BENCH_BIG" == 1 ]]; then
	log "streaming the 1 GiB NAR from peerix for the RSS measurement"
	curl_best "$PX_HUGE" "$HUGE_SIZE" 1 >/dev/null
else
	curl_best "$PX_BIG" "$BIG_SIZE" 1 >/dev/null
fi
RSS_AFTER="$(vm "$PX_PID")"
kill -0 "$PX_PID" 2>/dev/null || die "peerix died during the benchmark"

# --- report ------------------------------------------------------------------
read -r _ t_ng_big f_ng_big <<<"$C_NG_BIG"
read -r _ t_px_big f_px_big <<<"$C_PX_BIG"
read -r _ _ f_ng_sm <<<"$C_NG_SM"
read -r _ _ f_px_sm <<<"$C_PX_SM"

echo "- machine: $(machine)"
echo "- peerix: $PEERIX_VERSION; $(nginx -v 2>&1); $(nix --version); $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)"
echo "- paths: small $SMALL ($SMALL_SIZE-byte NAR); 256 MiB $BIG ($BIG_SIZE-byte NAR)${HUGE:+; 1 GiB $HUGE ($HUGE_SIZE-byte NAR)}"
echo "- nginx serves \`nix copy --to file://…?compression=none\` of the same paths (worker_processes 2, sendfile on, access_log off); peerix serves the chroot store they were copied into"
echo
echo "| measurement | nginx (static cache) | peerix --mode local | nix-store --dump |"
echo "| --- | ---: | ---: | ---: |"
echo "| narinfo, req/s (wrk -t2 -c8 -d$DURATION) | $(field "$W_NG_NI" 1) | $(field "$W_PX_NI" 1) | |"
echo "| narinfo, latency avg | $(field "$W_NG_NI" 2) | $(field "$W_PX_NI" 2) | |"
echo "| narinfo signed per request, req/s / latency avg | (signed at copy time) | $(field "$W_PXS_NI" 1) / $(field "$W_PXS_NI" 2) | |"
echo "| 256 MiB NAR, throughput (best of 3) | $(mibps "$BIG_SIZE" "$t_ng_big") | $(mibps "$BIG_SIZE" "$t_px_big") | $(mibps "$BIG_SIZE" "$D_BIG") |"
echo "| 256 MiB NAR, total time | $(ms "$t_ng_big") | $(ms "$t_px_big") | $(ms "$D_BIG") |"
echo "| 256 MiB NAR, time to first byte | $(ms "$f_ng_big") | $(ms "$f_px_big") | |"
if [[ "$BENCH_BIG" == 1 ]]; then
	read -r _ t_ng_huge _ <<<"$C_NG_HUGE"
	read -r _ t_px_huge _ <<<"$C_PX_HUGE"
	echo "| 1 GiB NAR, throughput (best of 2) | $(mibps "$HUGE_SIZE" "$t_ng_huge") | $(mibps "$HUGE_SIZE" "$t_px_huge") | $(mibps "$HUGE_SIZE" "$D_HUGE") |"
fi
echo "| small NAR ($SMALL_SIZE B), req/s (wrk) | $(field "$W_NG_SM" 1) | $(field "$W_PX_SM" 1) | |"
echo "| small NAR, latency avg (wrk) | $(field "$W_NG_SM" 2) | $(field "$W_PX_SM" 2) | |"
echo "| small NAR, time to first byte (best of 5) | $(ms "$f_ng_sm") | $(ms "$f_px_sm") | |"
echo "| peerix VmRSS / VmHWM: idle after start | | $RSS_IDLE | |"
echo "| peerix VmRSS / VmHWM: before streaming $( [[ "$BENCH_BIG" == 1 ]] && echo "1 GiB" || echo "256 MiB") | | $RSS_BEFORE | |"
echo "| peerix VmRSS / VmHWM: after streaming it | | $RSS_AFTER | |"
echo
warn=""
for w in "nginx narinfo:$(field "$W_NG_NI" 3)" "peerix narinfo:$(field "$W_PX_NI" 3)" \
	"peerix signed narinfo:$(field "$W_PXS_NI" 3)" "nginx small NAR:$(field "$W_NG_SM" 3)" \
	"peerix small NAR:$(field "$W_PX_SM" 3)"; do
	if [[ -n "${w#*:}" ]]; then warn+="- wrk errors, ${w%%:*}: ${w#*:}"$'\n'; fi
done
if [[ -n "$warn" ]]; then
	echo "$warn"
fi
echo "Commands:"
echo
cat "$COMMANDS_FILE"
