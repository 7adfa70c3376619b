#!/usr/bin/env bash
# bench-local.sh: `peerix serve --mode local` side by side with nginx serving a
# static file:// binary cache of the same store paths, on this machine, over
# loopback only. Prints a markdown table.
#
#   scripts/bench-local.sh                  # 256 MiB NAR
#   BENCH_BIG=1 scripts/bench-local.sh      # also a 1 GiB NAR (RSS measured on it)
#   PEERIX=/path/to/peerix scripts/bench-local.sh
#   PEERIX_BASELINE=/tmp/peerix-old BENCH_STREAM=0 scripts/bench-local.sh
#                                           # requests/s only, this build and an older one
#
# The requests/s rows (narinfo, small NAR) are measured in rounds: in each
# round wrk runs against nginx, then peerix (then its signing instance, then
# the baseline's, then scripts/nethttp-floor: Go's net/http serving the same
# bytes from memory with no handler work, the most a net/http server reaches
# here), one after the other; a row reports the median of the
# rounds and the median of the per-round ratios to nginx, so that load from
# other work on the machine hits both sides alike.
#
# Environment:
#   PEERIX        peerix binary (default: go build ./cmd/peerix into a temp dir)
#   PEERIX_BASELINE  another peerix binary (an older build) to measure
#                 alongside, in the same rounds
#   BENCH_BIG     1: also build and stream a 1 GiB path
#   BENCH_STREAM  0: skip the NAR streaming rows and the memory rows
#   BENCH_SALT    salt for the paths of test/e2e/testdata/bench.nix (default
#                 peerix-bench-1, fixed, so reruns and the Go benchmarks reuse them)
#   BENCH_DURATION  wrk duration (default 10s)
#   BENCH_ROUNDS  rounds of the requests/s rows (default 3)
#
# Needs: nix-build, nix, nix-store (NIX_REMOTE=local is used), nginx, wrk, curl.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/bench.sh"

echo "# peerix local benchmark"
echo
echo "command: \`$(command_line BENCH_DURATION BENCH_ROUNDS BENCH_SALT BENCH_BIG BENCH_STREAM PEERIX PEERIX_BASELINE)\`"
echo

BENCH_BIG="${BENCH_BIG:-0}"
BENCH_STREAM="${BENCH_STREAM:-1}"
DURATION="${BENCH_DURATION:-10s}"
ROUNDS="${BENCH_ROUNDS:-3}"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS=$ROUNDS: want a positive number"
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
if [[ -n "${PEERIX_BASELINE:-}" ]]; then
	[[ -x "$PEERIX_BASELINE" ]] || die "PEERIX_BASELINE=$PEERIX_BASELINE is not an executable"
	BASELINE_VERSION="$("$PEERIX_BASELINE" version 2>&1 | head -n1)"
fi

# --- (a) fixtures: test/e2e/testdata/bench.nix -------------------------------
log "building fixtures (salt ${BENCH_SALT:-peerix-bench-1})"
SMALL="$(bench_paths small)"
PATHS=("$SMALL")
if [[ "$BENCH_STREAM" != 0 ]]; then
	BIG="$(bench_paths big)"
	PATHS+=("$BIG")
	if [[ "$BENCH_BIG" == 1 ]]; then
		HUGE="$(bench_paths huge)"
		PATHS+=("$HUGE")
	fi
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

# start_peerix NAME [extra flags...]: sets PEERIX_URL and PEERIX_PID. The
# binary is $PEERIX_BIN, or $BIN if set.
start_peerix() {
	local name=$1
	shift
	local port
	port="$(free_port)"
	spawn "$TMP/peerix-$name.log" "${BIN:-$PEERIX_BIN}" serve --mode local --store-root "$CHROOT" \
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
PX_SMALL="$PX/local/$(nar_url "$PX/local" "$SMALL")"
if [[ "$BENCH_STREAM" != 0 ]]; then
	NG_BIG="$NGINX/$(nar_url "$NGINX" "$BIG")"
	PX_BIG="$PX/local/$(nar_url "$PX/local" "$BIG")"
fi
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

# --- (c) requests/s, interleaved -------------------------------------------
# The signing instances: peerix signs every narinfo it serves with its key.
mkdir -p "$TMP/keys"
"$PEERIX_BIN" keygen bench --out "$TMP/keys" >/dev/null 2>&1 || die "peerix keygen failed"
start_peerix signed --signing-key-file "$TMP/keys/bench.sec"
PXS="$PEERIX_URL"
curl -sf "$PXS/local/$(hash_of "$SMALL").narinfo" | grep -q '^Sig: bench:' || die "signed peerix serves no Sig: bench: line"
PXS_NARINFO="$PXS/local/$(hash_of "$SMALL").narinfo"
SMALL_SIZE="$(nar_size "$SMALL")"

# Targets of the rounds: label and URL, nginx first (the ratios' base).
NI_LABELS=(nginx peerix "peerix signed")
NI_URLS=("$NG_NARINFO" "$PX_NARINFO" "$PXS_NARINFO")
SM_LABELS=(nginx peerix)
SM_URLS=("$NG_SMALL" "$PX_SMALL")
if [[ -n "${PEERIX_BASELINE:-}" ]]; then
	BIN="$PEERIX_BASELINE" start_peerix baseline
	PB="$PEERIX_URL"
	BIN="$PEERIX_BASELINE" start_peerix baseline-signed --signing-key-file "$TMP/keys/bench.sec"
	PBS="$PEERIX_URL"
	NI_LABELS+=(baseline "baseline signed")
	NI_URLS+=("$PB/local/$(hash_of "$SMALL").narinfo" "$PBS/local/$(hash_of "$SMALL").narinfo")
	SM_LABELS+=(baseline)
	SM_URLS+=("$PB/local/$(nar_url "$PB/local" "$SMALL")")
fi

# The floor: Go's net/http serving the same two files from memory, no
# handler work at all; what any server built on net/http can reach here.
(cd "$REPO" && CGO_ENABLED=0 go build -o "$TMP/bin/" ./scripts/nethttp-floor) || die "building scripts/nethttp-floor failed"
FLOOR_PORT="$(free_port)"
FLOOR="http://127.0.0.1:$FLOOR_PORT"
spawn "$TMP/floor.log" "$TMP/bin/nethttp-floor" "127.0.0.1:$FLOOR_PORT" \
	"${NG_NARINFO#"$NGINX"}=$CACHE/$(hash_of "$SMALL").narinfo" "${NG_SMALL#"$NGINX"}=$CACHE${NG_SMALL#"$NGINX"}"
wait_http "$FLOOR${NG_NARINFO#"$NGINX"}" "$SPAWNED" nethttp-floor "$TMP/floor.log"
NI_LABELS+=("net/http floor")
NI_URLS+=("$FLOOR${NG_NARINFO#"$NGINX"}")
SM_LABELS+=("net/http floor")
SM_URLS+=("$FLOOR${NG_SMALL#"$NGINX"}")
FLOOR_NI=$((${#NI_URLS[@]} - 1)) FLOOR_SM=$((${#SM_URLS[@]} - 1))

# rounds NAME URL...: ROUNDS rounds of wrk on each URL in turn; the results
# go to R[NAME,round,index] ("req/s|latency|errors").
declare -A R
rounds() {
	local name=$1 round i
	shift
	local urls=("$@")
	for round in $(seq 1 "$ROUNDS"); do
		log "$name: round $round of $ROUNDS"
		for i in "${!urls[@]}"; do
			R[$name,$round,$i]="$(wrk_run "${urls[$i]}")"
		done
	done
}
# median NUMBER...: the median (the mean of the middle two of an even count).
median() {
	printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
		if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# cell NAME INDEX: "median req/s (median ratio to nginx x)" of a target.
cell() {
	local name=$1 i=$2 round rps=() ratios=() base this
	for round in $(seq 1 "$ROUNDS"); do
		this="$(field "${R[$name,$round,$i]}" 1)"
		base="$(field "${R[$name,$round,0]}" 1)"
		rps+=("$this")
		ratios+=("$(awk -v a="$this" -v b="$base" 'BEGIN { printf "%.3f", (b > 0) ? a / b : 0 }')")
	done
	if [[ "$i" == 0 ]]; then
		printf '%.0f' "$(median "${rps[@]}")"
	else
		printf '%.0f (%.2fx)' "$(median "${rps[@]}")" "$(median "${ratios[@]}")"
	fi
}
# round_rows NAME LABEL...: one table row per round: req/s of each target,
# ratio to nginx in brackets.
round_rows() {
	local name=$1 round i cells base this
	shift
	for round in $(seq 1 "$ROUNDS"); do
		cells=""
		base="$(field "${R[$name,$round,0]}" 1)"
		for i in $(seq 0 $(($# - 1))); do
			this="$(field "${R[$name,$round,$i]}" 1)"
			if [[ "$i" == 0 ]]; then
				cells+=" $this |"
			else
				cells+=" $this ($(awk -v a="$this" -v b="$base" 'BEGIN { printf "%.2fx", (b > 0) ? a / b : 0 }')) |"
			fi
		done
		echo "| $name $round |$cells"
	done
}

log "wrk on narinfo and the small NAR ($SMALL_SIZE bytes), $ROUNDS rounds"
rounds narinfo "${NI_URLS[@]}"
rounds small-nar "${SM_URLS[@]}"

# --- (d) fixed cost per NAR request ------------------------------------------
C_NG_SM="$(curl_best "$NG_SMALL" "$SMALL_SIZE" 5)"
C_PX_SM="$(curl_best "$PX_SMALL" "$SMALL_SIZE" 5)"

# --- (e) NAR throughput, and peerix's memory while streaming -----------------
if [[ "$BENCH_STREAM" != 0 ]]; then
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
	RSS_BEFORE="$(vm "$PX_PID")"
	if [[ "$BENCH_BIG" == 1 ]]; then
		log "streaming the 1 GiB NAR from peerix for the RSS measurement"
		curl_best "$PX_HUGE" "$HUGE_SIZE" 1 >/dev/null
	else
		curl_best "$PX_BIG" "$BIG_SIZE" 1 >/dev/null
	fi
	RSS_AFTER="$(vm "$PX_PID")"
fi
kill -0 "$PX_PID" 2>/dev/null || die "peerix died during the benchmark"

# --- report ------------------------------------------------------------------
read -r _ _ f_ng_sm <<<"$C_NG_SM"
read -r _ _ f_px_sm <<<"$C_PX_SM"

echo "- machine: $(machine)"
echo "- peerix: $PEERIX_VERSION${BASELINE_VERSION:+; baseline: $BASELINE_VERSION ($PEERIX_BASELINE)}; $(nginx -v 2>&1); $(nix --version); $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)"
echo "- paths: small $SMALL ($SMALL_SIZE-byte NAR)${BIG_SIZE:+; 256 MiB $BIG ($BIG_SIZE-byte NAR)}${HUGE_SIZE:+; 1 GiB $HUGE ($HUGE_SIZE-byte NAR)}"
echo "- nginx serves \`nix copy --to file://…?compression=none\` of the same paths (worker_processes 2, sendfile on, access_log off); peerix serves the chroot store they were copied into"
echo "- req/s rows: wrk -t2 -c8 -d$DURATION, $ROUNDS rounds, each round every server in turn; median of the rounds, and in brackets the median of the per-round ratios to nginx"
echo
baseline_head="" baseline_rule=""
if [[ -n "${PEERIX_BASELINE:-}" ]]; then baseline_head=" peerix baseline |" baseline_rule=" ---: |"; fi
echo "| measurement | nginx (static cache) | peerix --mode local |$baseline_head nix-store --dump |"
echo "| --- | ---: | ---: |$baseline_rule ---: |"
b_ni="" b_nis="" b_sm=""
if [[ -n "${PEERIX_BASELINE:-}" ]]; then
	b_ni=" $(cell narinfo 3) |" b_nis=" $(cell narinfo 4) |" b_sm=" $(cell small-nar 2) |"
fi
echo "| narinfo, req/s | $(cell narinfo 0) | $(cell narinfo 1) |$b_ni |"
echo "| narinfo with our signature added, req/s | (signed at copy time) | $(cell narinfo 2) |$b_nis |"
echo "| small NAR ($SMALL_SIZE B), req/s | $(cell small-nar 0) | $(cell small-nar 1) |$b_sm |"
echo "| the narinfo from a bare net/http server (the floor), req/s | | $(cell narinfo "$FLOOR_NI") |${baseline_head:+ |} |"
echo "| the small NAR from a bare net/http server (the floor), req/s | | $(cell small-nar "$FLOOR_SM") |${baseline_head:+ |} |"
echo "| small NAR, time to first byte (best of 5) | $(ms "$f_ng_sm") | $(ms "$f_px_sm") |${baseline_head:+ |} |"
if [[ "$BENCH_STREAM" != 0 ]]; then
	read -r _ t_ng_big f_ng_big <<<"$C_NG_BIG"
	read -r _ t_px_big f_px_big <<<"$C_PX_BIG"
	nb="${baseline_head:+ |}"
	echo "| 256 MiB NAR, throughput (best of 3) | $(mibps "$BIG_SIZE" "$t_ng_big") | $(mibps "$BIG_SIZE" "$t_px_big") |$nb $(mibps "$BIG_SIZE" "$D_BIG") |"
	echo "| 256 MiB NAR, total time | $(ms "$t_ng_big") | $(ms "$t_px_big") |$nb $(ms "$D_BIG") |"
	echo "| 256 MiB NAR, time to first byte | $(ms "$f_ng_big") | $(ms "$f_px_big") |$nb |"
	if [[ "$BENCH_BIG" == 1 ]]; then
		read -r _ t_ng_huge _ <<<"$C_NG_HUGE"
		read -r _ t_px_huge _ <<<"$C_PX_HUGE"
		echo "| 1 GiB NAR, throughput (best of 2) | $(mibps "$HUGE_SIZE" "$t_ng_huge") | $(mibps "$HUGE_SIZE" "$t_px_huge") |$nb $(mibps "$HUGE_SIZE" "$D_HUGE") |"
	fi
	echo "| peerix VmRSS / VmHWM: idle after start | | $RSS_IDLE |$nb |"
	echo "| peerix VmRSS / VmHWM: before streaming $( [[ "$BENCH_BIG" == 1 ]] && echo "1 GiB" || echo "256 MiB") | | $RSS_BEFORE |$nb |"
	echo "| peerix VmRSS / VmHWM: after streaming it | | $RSS_AFTER |$nb |"
fi
echo
echo "Rounds (req/s, ratio to nginx in brackets):"
echo
echo "| round | $(IFS='|'; echo "${NI_LABELS[*]}" | sed 's/|/ | /g') |"
echo "|$(printf ' --- |%.0s' $(seq 0 ${#NI_LABELS[@]}))"
round_rows narinfo "${NI_LABELS[@]}"
echo
echo "| round | $(IFS='|'; echo "${SM_LABELS[*]}" | sed 's/|/ | /g') |"
echo "|$(printf ' --- |%.0s' $(seq 0 ${#SM_LABELS[@]}))"
round_rows small-nar "${SM_LABELS[@]}"
echo
warn=""
for key in "${!R[@]}"; do
	errs="$(field "${R[$key]}" 3)"
	if [[ -n "$errs" ]]; then warn+="- wrk errors, $key: $errs"$'\n'; fi
done
if [[ -n "$warn" ]]; then
	echo "$warn"
fi
echo "Commands:"
echo
sort -u "$COMMANDS_FILE"
