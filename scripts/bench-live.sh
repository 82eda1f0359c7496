#!/usr/bin/env bash
# Live fan-out benchmark: N subscribed /live sockets on one pipeline while signed POSTs make
# one update per flush. Reports the server's memory per idle socket, deliveries/s and delivery
# latency (commit time -> frame received). Usage: scripts/bench-live.sh [SOCKETS] [FLUSH]
set -euo pipefail
cd "$(dirname "$0")/.."
SOCKETS=${1:-10000}
FLUSH=${2:-1s}
cargo build --release --quiet -p dashd
D=$PWD/target/release/dashd
dir=$(mktemp -d)
cd "$dir"
DASH_FLUSH_INTERVAL=$FLUSH DASH_LOG=warn "$D" serve --listen 127.0.0.1:0 > out.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q listening out.log 2>/dev/null && break; sleep 0.1; done
URL=$(grep -o 'http://[0-9.:]*' out.log)
SECRET=$(curl -s -X POST "$URL/api/pipelines" -d '{"name":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
rss() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }
before=$(rss)
"$D" bench-live --url "$URL" --pipeline bench --secret "$SECRET" --sockets "$SOCKETS" --duration 10s --posts-per-sec 20 > live.txt 2>&1 &
bench=$!
for _ in $(seq 1 240); do grep -q subscribed live.txt && break; sleep 0.5; done
sleep 1.5
after=$(rss)
echo "server RSS: $before KB idle, $after KB with $SOCKETS subscribed sockets = $(( (after - before) / SOCKETS )) KB per socket"
wait $bench
cat live.txt
