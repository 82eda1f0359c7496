#!/usr/bin/env bash
# Live fan-out benchmark: N subscribed /live sockets on one pipeline while signed POSTs make
# one update per flush. Reports the server's memory per idle socket, deliveries/s and delivery
# latency (commit time -> frame received). Usage: scripts/bench-live.sh [SOCKETS] [FLUSH] [POSTS/S]
# With PIN=1 the server runs on CPU 0 and the load generator on CPU 1 (taskset), so the two do
# not compete for the same core.
# With SERVER=naive the server is the fan-out baseline instead (`dashd ceiling live`: a task per
# socket fed from a broadcast channel, each update serialized per socket), driven the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
SOCKETS=${1:-10000}
FLUSH=${2:-1s}
POSTS=${3:-20}
SERVER_CPU=(); CLIENT_CPU=()
if [ "${PIN:-0}" = 1 ]; then SERVER_CPU=(taskset -c 0); CLIENT_CPU=(taskset -c 1); fi
cargo build --release --quiet -p dashd
D=$PWD/target/release/dashd
dir=$(mktemp -d)
cd "$dir"
if [ "${SERVER:-dash}" = naive ]; then
    "${SERVER_CPU[@]}" "$D" ceiling live --listen 127.0.0.1:0 --flush "$FLUSH" > out.log 2>&1 &
else
    # The load comes from 1,000 sockets per loopback address: each address is one client to
    # Dash's per-client bounds on /live sessions and connections, which are raised to match,
    # and so is the node's connection cap (10,000 by default), which the sockets alone would fill.
    DASH_FLUSH_INTERVAL=$FLUSH DASH_LOG=warn DASH_MAX_LIVE_PER_CLIENT=100000 DASH_MAX_CONNECTIONS_PER_CLIENT=100000 DASH_MAX_CONNECTIONS=19000 \
        "${SERVER_CPU[@]}" "$D" serve --listen 127.0.0.1:0 > out.log 2>&1 &
fi
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q listening out.log 2>/dev/null && break; sleep 0.1; done
URL=$(grep -o 'http://[0-9.:]*' out.log)
if [ "${SERVER:-dash}" = naive ]; then
    # The baseline checks no signature; the load generator still signs.
    SECRET=whsec_$(head -c 32 /dev/urandom | base64)
else
    SECRET=$(curl -s -X POST "$URL/api/pipelines" -H 'content-type: application/json' -d '{"name":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
fi
rss() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }
before=$(rss)
"${CLIENT_CPU[@]}" "$D" bench-live --url "$URL" --pipeline bench --secret "$SECRET" --sockets "$SOCKETS" --duration 10s --posts-per-sec "$POSTS" > live.txt 2>&1 &
bench=$!
for _ in $(seq 1 240); do grep -q subscribed live.txt && break; sleep 0.5; done
sleep 1.5
after=$(rss)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
cpu_server=$(ticks $server); cpu_client=$(ticks $bench)
echo "server RSS: $before KB idle, $after KB with $SOCKETS subscribed sockets = $(( (after - before) / SOCKETS )) KB per socket"
sleep 9  # the load window (10 s after a 3 s idle, minus the 1.5 s above)
echo "CPU over the load window: server $(( $(ticks $server) - cpu_server ))0 ms, client $(( $(ticks $bench) - cpu_client ))0 ms"
wait $bench || echo "bench-live failed:"
cat live.txt
