#!/bin/sh
# The walkthrough's "loop mode": a steady stream of factoring requests through the mesh
# (Envoy, or the forwarder under the `forwarder` profile; both answer as `mesh`), three desktop
# requests for each Mobile one (the seed routes Mobile user agents to v2, the rest to v1 and
# mirrors those to v3). The numbers range from instant to slow for trial division (v1, v2):
# large primes and a product of two ~30-bit primes, where Pollard's rho (v3) stays fast.
#
# Environment: TARGET (default http://mesh:8080), HOST_HEADER (default calcbackendsvc),
# INTERVAL seconds between requests (default 0.2).
TARGET="${TARGET:-http://mesh:8080}"
HOST_HEADER="${HOST_HEADER:-calcbackendsvc}"
INTERVAL="${INTERVAL:-0.2}"
DESKTOP='Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36'
MOBILE='Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1'
# 600851475143 = 71·839·1471·6857; 9999999967, 99999999977, 999999999989: primes;
# 1000000016000000063 = 1000000007·1000000009 (seconds by trial division).
NUMBERS='12 360 65536 600851475143 9999999967 1234567890 99999999977 18446744073709551615 999999999989 1000000016000000063'

echo "loop: GET $TARGET/factor/<n> with Host: $HOST_HEADER every ${INTERVAL}s"
i=0
while true; do
    for n in $NUMBERS; do
        i=$((i + 1))
        if [ $((i % 4)) -eq 0 ]; then ua="$MOBILE"; else ua="$DESKTOP"; fi
        curl -s -o /dev/null --max-time 30 \
            -H "Host: $HOST_HEADER" -A "$ua" \
            -w "%{http_code} %{time_total}s /factor/$n\n" \
            "$TARGET/factor/$n" || echo "request failed: /factor/$n"
        sleep "$INTERVAL"
    done
done
