#!/usr/bin/env bash
# xDS benchmark: `shadowplane serve` (release build, its own process) under simulated ADS clients
# and in front of a real Envoy. benches/xds_load.rs says exactly what is generated and measured.
#
#   bench/xds-load.sh                 # the standard set (below), then the tables
#   CLIENTS=2000 bench/xds-load.sh    # other sizes
#   DEBOUNCE=10ms bench/xds-load.sh   # serve's --debounce (default: serve's own default, 20ms)
#   ONLY=envoy bench/xds-load.sh      # only run 4 (the real Envoy); ONLY=load: only runs 1-3
#   PORTS=100 ONLY=load bench/xds-load.sh   # services over 100 ports (100 route configurations):
#                                     # a one-VirtualService change is then ~0.5% of a full push,
#                                     # which isolates the server's own per-client overhead
#   VHDS=1 ONLY=load bench/xds-load.sh    # the delta clients (runs 1 and 3) and the real Envoy
#                                     # send node metadata VHDS="true" and subscribe to
#                                     # VirtualHost after RDS: a one-VirtualService change is
#                                     # then one VirtualHost resource (run 2, SotW, is unchanged)
#
# Standard set, each run a fresh server:
#   1. delta, $CLIENTS clients (default 1,000), 3 changes of one VirtualService
#   2. SotW, same
#   3. delta, $BIG_CLIENTS clients (default 10,000): the memory figure (stops ramping, and says
#      so, when the machine's MemAvailable falls under $MIN_FREE_MB or the server's RSS passes
#      $MAX_RSS_MB: the machine is shared)
#   4. a real Envoy (delta ADS), file write → first answer from the new route, $ROUNDS rounds,
#      on the same mesh and on a mesh of $SMALL_SERVICES services (default 10; 0 skips it)
#      (skipped, and said, if no Envoy: set ENVOY_BIN or run scripts/test.sh once)
#
# Environment: ONLY (envoy|load), VHDS (1: delta clients and Envoy on VHDS), CLIENTS, BIG_CLIENTS (0 skips run 3), SERVICES (1000), PORTS
# (1, simulated clients only), PER_CONN
# (ADS streams per HTTP/2 connection, 100), DEBOUNCE, ROUNDS (5), CHANGES (3), MIN_FREE_MB
# (4000), MAX_RSS_MB (8000), ENVOY_BIN,
# REPORT (JSON lines file; default target/xds-load/results-<time>.jsonl).
#
# Targets (issue 3): 1,000 delta clients all ACKed in under 1 s; under 50 KB of server memory per
# connected client at 10,000 clients; a one-route change sends under 1% of the bytes of a full
# SotW push; file write → Envoy answering from the new route in under 100 ms median.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CLIENTS="${CLIENTS:-1000}"
BIG_CLIENTS="${BIG_CLIENTS:-10000}"
SERVICES="${SERVICES:-1000}"
PORTS="${PORTS:-1}"
SMALL_SERVICES="${SMALL_SERVICES:-10}"
PER_CONN="${PER_CONN:-100}"
DEBOUNCE="${DEBOUNCE:-20ms}"
ONLY="${ONLY:-}"
VHDS="${VHDS:-}"
case "$VHDS" in
    ""|0) vhds=() ;;
    1) vhds=(--vhds) ;;
    *) echo "VHDS must be 1 or 0, not $VHDS" >&2; exit 2 ;;
esac
case "$ONLY" in
    ""|envoy|load) ;;
    *) echo "ONLY must be envoy or load, not $ONLY" >&2; exit 2 ;;
esac
ROUNDS="${ROUNDS:-5}"
CHANGES="${CHANGES:-3}"
MIN_FREE_MB="${MIN_FREE_MB:-4000}"
MAX_RSS_MB="${MAX_RSS_MB:-8000}"
mkdir -p target/xds-load
REPORT="${REPORT:-target/xds-load/results-$(date +%Y%m%d-%H%M%S).jsonl}"

# Every client stream is a file descriptor only with PER_CONN=1; raise the limit anyway, as far
# as the hard limit allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "building shadowplane and the benchmark (release profile)..." >&2
cargo build --release --bin shadowplane >&2
BENCH="$(cargo bench --bench xds_load --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "xds_load" \
            and "bench" in msg.get("target", {}).get("kind", []) and msg.get("executable"):
        exe = msg["executable"]
print(exe or "")
')"
if [[ -z "$BENCH" || ! -x "$BENCH" ]]; then
    echo "could not build the benchmark; run: cargo bench --bench xds_load --no-run" >&2
    exit 1
fi
BIN="$ROOT/target/release/shadowplane"

echo "machine: $(nproc) cores, $(free -m | awk '/^Mem:/ {print $2}') MiB RAM, fd limit $(ulimit -n), $(uname -m), $(rustc --version)" >&2
echo "results: $REPORT" >&2

common=(--bin "$BIN" --services "$SERVICES" --debounce "$DEBOUNCE" --report "$REPORT")
if [[ "$ONLY" != envoy ]]; then
    "$BENCH" load --mode delta ${vhds[@]+"${vhds[@]}"} --clients "$CLIENTS" --per-conn "$PER_CONN" --changes "$CHANGES" \
        --ports "$PORTS" --min-free-mb "$MIN_FREE_MB" --max-rss-mb "$MAX_RSS_MB" "${common[@]}" >/dev/null
    "$BENCH" load --mode sotw --clients "$CLIENTS" --per-conn "$PER_CONN" --changes "$CHANGES" \
        --ports "$PORTS" --min-free-mb "$MIN_FREE_MB" --max-rss-mb "$MAX_RSS_MB" "${common[@]}" >/dev/null
    if [[ "$BIG_CLIENTS" -gt 0 ]]; then
        "$BENCH" load --mode delta ${vhds[@]+"${vhds[@]}"} --clients "$BIG_CLIENTS" --per-conn "$PER_CONN" --changes "$CHANGES" \
            --ports "$PORTS" --min-free-mb "$MIN_FREE_MB" --max-rss-mb "$MAX_RSS_MB" "${common[@]}" >/dev/null
    fi
fi

envoy_bin="${ENVOY_BIN:-}"
if [[ -z "$envoy_bin" && -x .venv/bin/envoy ]]; then
    envoy_bin="$ROOT/.venv/bin/envoy"
fi
if [[ -z "$envoy_bin" ]]; then
    envoy_bin="$(command -v envoy || true)"
fi
if [[ "$ONLY" == load ]]; then
    :
elif [[ -n "$envoy_bin" ]]; then
    "$BENCH" envoy --mode delta ${vhds[@]+"${vhds[@]}"} --rounds "$ROUNDS" --envoy-bin "$envoy_bin" "${common[@]}" >/dev/null
    if [[ "$SMALL_SERVICES" -gt 0 ]]; then
        # The same with a small mesh: what does not depend on the config's size.
        "$BENCH" envoy --mode delta ${vhds[@]+"${vhds[@]}"} --rounds "$ROUNDS" --envoy-bin "$envoy_bin" --bin "$BIN" \
            --services "$SMALL_SERVICES" --debounce "$DEBOUNCE" --report "$REPORT" >/dev/null
    fi
else
    echo "no Envoy (set ENVOY_BIN or run scripts/test.sh once): the real-Envoy measurement is skipped" >&2
fi

"$BENCH" render "$REPORT"
