#!/usr/bin/env bash
# Translation benchmark: parse + translate + print (JSON) of a generated mesh of N services
# (translator/benches/translate.rs says what a service is), median wall time of R rounds and
# peak RSS (VmHWM), one process per size so the peaks don't mix.
#
#   bench/translate.sh                  # N = 1,000 and 10,000, 5 rounds
#   bench/translate.sh 500 2000         # other sizes
#   ROUNDS=3 bench/translate.sh
#
# Target (2-core machine): 10,000 services under 300 ms and 300 MB.
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

echo "machine: $(nproc) cores, $(uname -m), $(rustc --version)" >&2
header=()
for n in "${SIZES[@]}"; do
    "$BIN" --services "$n" --rounds "$ROUNDS" "${header[@]}"
    header=(--no-header)
done
