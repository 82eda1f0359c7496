#!/usr/bin/env bash
# Live fan-out benchmark: N subscribed /live sockets on one pipeline while signed POSTs make
# one update per flush. Reports the server's memory per idle socket, deliveries/s and delivery
# latency (commit time -> frame received). Usage: scripts/bench-live.sh [SOCKETS] [FLUSH] [POSTS/S]
# With PIN=1 the server runs on CPU 0 and the load generator on CPU 1 (taskset), so the two do
# not compete for the same core.
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
DASH_FLUSH_INTERVAL=$FLUSH DASH_LOG=warn "${SERVER_CPU[@]}" "$D" serve --listen 127.0.0.1:0 > out.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q listening out.log 2>/dev/null && break; sleep 0.1; done
URL=$(grep -o 'http://[0-9.:]*' out.log)
SECRET=$(curl -s -X POST "$URL/api/pipelines" -H 'content-type: application/json' -d '{"name":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
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
