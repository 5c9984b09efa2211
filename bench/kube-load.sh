#!/usr/bin/env bash
# Kubernetes benchmark (issue 6): `shadowplane serve --kubernetes` (release build, its own
# process) against the Kubernetes API server stand-in of tests/common/kube_apiserver.rs, started
# inside the benchmark and filled with a large cluster. benches/kube_load.rs says exactly what is
# generated and measured.
#
#   bench/kube-load.sh                                    # 10,000 Services, 1,000 VirtualServices
#   bench/kube-load.sh --services 200 --virtual-services 20 --rounds 3      # a quick run
#   bench/kube-load.sh --keep                             # keep serve.log (path printed)
#   KUBE_LOAD_RUST_LOG=shadowplane=debug bench/kube-load.sh   # serve's log level (default info)
#
# Options (passed to the benchmark): --services N (10000), --virtual-services N (1000),
# --namespaces N (100), --endpoints N (Pods per Service, 3), --rounds N (endpoint changes, 5),
# --settle SECS (2), --sync-timeout SECS (900), --debounce D (serve's --debounce; default
# serve's own), --bin PATH, --keep.
#
# Measured: time from spawning serve to /readyz 200 and to a delta ADS client holding every
# cluster and its endpoints; serve's peak and steady RSS; time for one EndpointSlice change
# (an endpoint's ready flag) to reach the client, median over the rounds, and which xDS types
# the change sent (only EDS is expected).
#
# Environment: REPORT (JSON lines file; default target/kube-load/results-<time>.jsonl),
# KUBE_LOAD_RUST_LOG.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

mkdir -p target/kube-load
REPORT="${REPORT:-target/kube-load/results-$(date +%Y%m%d-%H%M%S).jsonl}"

echo "building shadowplane and the benchmark (release profile)..." >&2
cargo build --release --bin shadowplane >&2
BENCH="$(cargo bench --bench kube_load --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "kube_load" \
            and "bench" in msg.get("target", {}).get("kind", []) and msg.get("executable"):
        exe = msg["executable"]
print(exe or "")
')"
if [[ -z "$BENCH" || ! -x "$BENCH" ]]; then
    echo "could not build the benchmark; run: cargo bench --bench kube_load --no-run" >&2
    exit 1
fi

echo "machine: $(nproc) cores, $(free -m | awk '/^Mem:/ {print $2}') MiB RAM, load average $(cut -d' ' -f1-3 /proc/loadavg), $(uname -m), $(rustc --version)" >&2
echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src translator || echo ' (with uncommitted changes in src/ or translator/)')" >&2
echo "results: $REPORT" >&2

exec "$BENCH" --bin "$ROOT/target/release/shadowplane" --report "$REPORT" "$@"
