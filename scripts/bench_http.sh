#!/bin/bash
# bench_http.sh: load benchmark of `embedd serve` with wrk, against offline
# `embedd embed` on the same texts in the same run.
#
#   scripts/bench_http.sh                      (OpenBLAS core type Haswell, as make test)
#   env -u OPENBLAS_L2_SIZE OPENBLAS_CORETYPE=SkylakeX scripts/bench_http.sh
#
# Model: bench-out/minilm from scripts/gen_bench_model.py --shape minilm (made
# when missing), and its texts.txt (1,024 texts of 8..64 words). The server
# listens on 127.0.0.1 only; wrk POSTs /embed with one text per request,
# cycling through the texts (scripts/bench_http.lua), at each concurrency for
# BENCH_DURATION seconds. For each level: requests/s, p50 and p99 latency, and
# the mean batch size of the forward passes that ran meanwhile (deltas of
# embedd_batch_size_sum / _count from /metrics). The HTTP overhead at the
# highest concurrency is 1 - (HTTP texts/s / offline texts/s); target <= 15%.
# The server and wrk share the machine's cores: the overhead includes wrk's
# own CPU time.
#
# Knobs (environment): BENCH_MODEL (bench-out/minilm), BENCH_THREADS (2),
# BENCH_DURATION (15), BENCH_CONCURRENCY ("1 8 64"), EMBEDD_BIN (build/embedd;
# when unset the script runs `make build/embedd` first).
# The "other%" column is the share of the cores that other processes used
# meanwhile: on a shared machine, only rows near 0 are clean.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=${EMBEDD_BIN:-$ROOT/build/embedd}
MODEL=${BENCH_MODEL:-bench-out/minilm}
THREADS=${BENCH_THREADS:-2}
DURATION=${BENCH_DURATION:-15}
LEVELS=${BENCH_CONCURRENCY:-1 8 64}
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell}

die() { echo "bench_http: $*" >&2; exit 1; }
command -v wrk > /dev/null || die "wrk is missing: scripts/install-deps.sh --bench"
command -v curl > /dev/null || die "curl is missing: scripts/install-deps.sh"
if [ -z "${EMBEDD_BIN:-}" ]; then
  make -s build/embedd
fi
[ -x "$BIN" ] || die "no $BIN"
if [ ! -f "$MODEL/model.safetensors" ] || [ ! -f "$MODEL/config.json" ] || [ ! -f "$MODEL/texts.txt" ]; then
  echo "+ /usr/bin/python3 scripts/gen_bench_model.py --out $MODEL --shape minilm"
  /usr/bin/python3 scripts/gen_bench_model.py --out "$MODEL" --shape minilm
fi
TEXTS=$MODEL/texts.txt
N_TEXTS=$(wc -l < "$TEXTS")

WORK=$(mktemp -d /tmp/embedd-bench-http.XXXXXX)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2> /dev/null; then
    kill -TERM "$SERVER_PID" 2> /dev/null || true
    for _ in $(seq 100); do
      kill -0 "$SERVER_PID" 2> /dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2> /dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "embedd HTTP benchmark: $(git -C "$ROOT" rev-parse --short HEAD 2> /dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2> /dev/null || echo ' (dirty tree)'), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "env: OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE-(unset)}"
echo "model: $MODEL ($N_TEXTS texts in $TEXTS), compute threads $THREADS, ${DURATION}s per level"
# Other processes' CPU use skews every number below: measure it for 1 s.
cpu_busy() {  # percent of all cores busy over 1 s
  local a b
  a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat)
  sleep 1
  b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat)
  echo "$a $b" | awk '{ printf "%.0f", 100 * ($3 - $1) / ($4 - $2) }'
}
BUSY=$(cpu_busy)
echo "background CPU use before the run: ${BUSY}% of all cores$([ "$BUSY" -gt 10 ] && echo '  WARNING: the machine is busy; numbers will be low')"

# Other processes' share of the cores during a phase: busy jiffies of the
# whole machine less those of the server and of this script's children (wrk,
# embedd embed, curl). Over ~5% means the phase's numbers are not clean.
busy_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
own_jiffies() {
  local server=0
  if [ -n "$SERVER_PID" ] && [ -r "/proc/$SERVER_PID/stat" ]; then
    server=$(awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat")
  fi
  awk -v s="$server" '{ print s + $16 + $17 }' "/proc/$$/stat"
}
phase_start() { PH_T=$(date +%s.%N); PH_B=$(busy_jiffies); PH_O=$(own_jiffies); }
phase_other() {  # percent of all cores used by other processes since phase_start
  local t b o
  t=$(date +%s.%N); b=$(busy_jiffies); o=$(own_jiffies)
  awk -v t0="$PH_T" -v t1="$t" -v b0="$PH_B" -v b1="$b" -v o0="$PH_O" -v o1="$o" -v n="$(nproc)" \
    -v hz="$(getconf CLK_TCK)" 'BEGIN { v = 100 * ((b1 - b0) - (o1 - o0)) / ((t1 - t0) * hz * n); printf "%.0f", v < 0 ? 0 : v }'
}

# ---- offline: embedd embed on the same texts ---------------------------------
# Two runs before the HTTP levels and two after; the best one counts (a
# busy moment on a shared machine only makes the overhead look smaller).
OFFLINE_CMD="$BIN embed --model $MODEL --threads $THREADS --stats < $TEXTS > /dev/null"
OFFLINE_TPS=0
offline_runs() {  # offline_runs LABEL
  local tps run other
  for run in 1 2; do
    phase_start
    "$BIN" embed --model "$MODEL" --threads "$THREADS" --stats < "$TEXTS" > /dev/null 2> "$WORK/offline.txt"
    other=$(phase_other)
    tps=$(sed -n 's/.*"texts_per_s": \([0-9.]*\).*/\1/p' "$WORK/offline.txt")
    [ -n "$tps" ] || die "no --stats line: $(cat "$WORK/offline.txt")"
    echo "  offline ($1, run $run): $tps texts/s   (other processes: ${other}% of the cores)"
    OFFLINE_TPS=$(awk -v a="$OFFLINE_TPS" -v b="$tps" 'BEGIN { print (b > a ? b : a) }')
  done
}
echo
echo "+ $OFFLINE_CMD"
offline_runs before

# ---- the server ---------------------------------------------------------------
SERVER_CMD="$BIN serve --model $MODEL --host 127.0.0.1 --port 0 --threads $THREADS --max-concurrent-requests 1024"
echo
echo "+ $SERVER_CMD"
# shellcheck disable=SC2086
$SERVER_CMD 2> "$WORK/server.log" &
SERVER_PID=$!
PORT=""
for _ in $(seq 300); do
  PORT=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/server.log")
  [ -n "$PORT" ] && break
  kill -0 "$SERVER_PID" 2> /dev/null || die "server exited: $(cat "$WORK/server.log")"
  sleep 0.1
done
[ -n "$PORT" ] || die "server not listening after 30 s: $(cat "$WORK/server.log")"
URL=http://127.0.0.1:$PORT

metric() {  # metric NAME FILE: value of an unlabelled sample
  awk -v n="$1" '$1 == n { print $2 }' "$2"
}

wait_idle() {  # until no forward pass ran for 0.5 s and nothing is queued (60 s at most)
  local prev="" cur
  for _ in $(seq 120); do
    curl -sf "$URL/metrics" > "$WORK/idle.txt"
    cur="$(metric embedd_batches_total "$WORK/idle.txt") $(metric embedd_queue_depth "$WORK/idle.txt")"
    [ "$cur" = "$prev" ] && [ "${cur#* }" = 0 ] && return 0
    prev=$cur
    sleep 0.5
  done
  die "server still busy 60 s after wrk stopped"
}

run_wrk() {  # run_wrk CONCURRENCY SECONDS OUT
  local threads=1
  [ "$1" -ge 8 ] && threads=2
  BENCH_TEXTS=$TEXTS wrk -t "$threads" -c "$1" -d "${2}s" --timeout 30s -s scripts/bench_http.lua "$URL/embed" > "$3"
}

echo "+ BENCH_TEXTS=$TEXTS wrk -t T -c C -d ${DURATION}s --timeout 30s -s scripts/bench_http.lua $URL/embed   (T = 1 for C < 8, else 2)"
run_wrk 8 3 "$WORK/warmup.txt"   # warm-up, not reported
wait_idle

echo
printf '%12s %10s %10s %10s %12s %8s %8s\n' concurrency "req/s" "p50 ms" "p99 ms" "mean batch" errors "other%"
HTTP_TPS=0
LAST_LEVEL=""
for c in $LEVELS; do
  curl -sf "$URL/metrics" > "$WORK/m0.txt"
  phase_start
  run_wrk "$c" "$DURATION" "$WORK/wrk.$c.txt"
  other=$(phase_other)
  wait_idle   # requests still in flight when wrk stopped belong to this level
  curl -sf "$URL/metrics" > "$WORK/m1.txt"
  line=$(grep '^RESULT ' "$WORK/wrk.$c.txt") || die "wrk printed no RESULT: $(cat "$WORK/wrk.$c.txt")"
  get() { echo "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
  reqs=$(get requests); dur=$(get duration_us); p50=$(get p50_us); p99=$(get p99_us)
  errs=$(( $(get non2xx) + $(get connect_err) + $(get read_err) + $(get write_err) + $(get timeouts) ))
  ds=$(awk -v a="$(metric embedd_batch_size_sum "$WORK/m0.txt")" -v b="$(metric embedd_batch_size_sum "$WORK/m1.txt")" 'BEGIN { print b - a }')
  dc=$(awk -v a="$(metric embedd_batch_size_count "$WORK/m0.txt")" -v b="$(metric embedd_batch_size_count "$WORK/m1.txt")" 'BEGIN { print b - a }')
  rps=$(awk -v r="$reqs" -v d="$dur" 'BEGIN { printf "%.1f", r / (d / 1e6) }')
  printf '%12s %10s %10.2f %10.2f %12s %8s %8s\n' "$c" "$rps" "$(awk -v x="$p50" 'BEGIN { print x / 1000 }')" \
    "$(awk -v x="$p99" 'BEGIN { print x / 1000 }')" \
    "$(awk -v s="$ds" -v n="$dc" 'BEGIN { if (n > 0) printf "%.2f", s / n; else print "-" }')" "$errs" "$other"
  HTTP_TPS=$rps
  LAST_LEVEL=$c
done

echo
echo "+ $OFFLINE_CMD"
offline_runs after
BUSY=$(cpu_busy)
echo "background CPU use after the run: ${BUSY}% of all cores (server still up, idle)"
echo
echo "offline embedd embed: $OFFLINE_TPS texts/s (--threads $THREADS, best of 4)"
awk -v h="$HTTP_TPS" -v o="$OFFLINE_TPS" -v c="$LAST_LEVEL" 'BEGIN {
  ov = 1 - h / o
  printf "HTTP at concurrency %s: %.1f texts/s; overhead 1 - http/offline = %.1f%% (target <= 15%%): %s\n",
         c, h, 100 * ov, ov <= 0.15 ? "ok" : "OVER TARGET"
}'
