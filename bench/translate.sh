#!/usr/bin/env bash
# Translation benchmark of a generated mesh of N services (translator/benches/translate.rs says
# what a service is), one process per size so the RSS peaks don't mix. Per phase, median wall
# time of R rounds:
#   parse      parse::parse_files (YAML text -> Istio resources)
#   translate  translate (lowering to the model + building the Envoy protos)
#   encode     canonical::encode of every resource, what `serve` does (Snapshot::from_resources)
#   JSON       print::write_resources_json, what `translate --output json` does
# The headline "translation plus serialization" figure is parse + translate + encode, with its
# peak RSS (VmHWM during those phases, first round); JSON printing is reported on its own.
#
#   bench/translate.sh                  # N = 1,000 and 10,000, 5 rounds
#   bench/translate.sh 500 2000         # other sizes
#   ROUNDS=3 bench/translate.sh
#
# Target (2-core machine): 10,000 services, headline under 300 ms and 300 MB. The machine is
# shared: compare medians, and rerun when the load average is high.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ROUNDS="${ROUNDS:-5}"
SIZES=("$@")
if [[ ${#SIZES[@]} -eq 0 ]]; then
    SIZES=(1000 10000)
fi

echo "building the benchmark (release profile)..." >&2
BIN="$(cargo bench -p shadowplane-translator --bench translate --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "translate" \
            and "bench" in msg.get("target", {}).get("kind", []) and msg.get("executable"):
        exe = msg["executable"]
print(exe or "")
')"
if [[ -z "$BIN" || ! -x "$BIN" ]]; then
    echo "could not build the benchmark; run: cargo bench -p shadowplane-translator --bench translate --no-run" >&2
    exit 1
fi

echo "machine: $(nproc) cores, $(uname -m), $(rustc --version), load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
header=()
for n in "${SIZES[@]}"; do
    "$BIN" --services "$n" --rounds "$ROUNDS" "${header[@]}"
    header=(--no-header)
done
