#!/usr/bin/env bash
# End-to-end latency across a split deployment on loopback: an ingestor (127.0.0.2), a web edge
# that forwards to it (127.0.0.3; the ingestor named by IP in DNS_INGESTOR_QUERY), and a second
# web node (127.0.0.4) with a /live subscriber; PostgreSQL and a private nats-server between
# them. Reports the time from the sender's 202 to the update on the other node.
# Usage: scripts/bench-e2e.sh [FLUSH] [EVENTS] [RATE]   (RUNS=3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
FLUSH=${1:-1s}
EVENTS=${2:-200}
RATE=${3:-20}
RUNS=${RUNS:-3}
PG_ADMIN=${DASH_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}
cargo build --release --quiet -p dashd
D=$PWD/target/release/dashd
dir=$(mktemp -d)
db="dash_bench_e2e_$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
psql "$PG_ADMIN" -qc "CREATE DATABASE $db" >/dev/null
DATABASE_URL="${PG_ADMIN%/*}/$db"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NATS_PORT=$(free_port); PORT=$(free_port)
/usr/sbin/nats-server -a 127.0.0.1 -p "$NATS_PORT" > "$dir/nats.log" 2>&1 & pids+=($!)
start() { # name role listen extra-env...
  local name=$1 role=$2 listen=$3; shift 3
  mkdir -p "$dir/$name"
  (cd "$dir/$name" && env DATABASE_URL="$DATABASE_URL" NATS_URL="nats://127.0.0.1:$NATS_PORT" APP_ROLE="$role" \
    DASH_NODE_ID="$name" DASH_FLUSH_INTERVAL="$FLUSH" DASH_LOG=warn "$@" "$D" serve --listen "$listen") \
    > "$dir/$name/out.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q listening "$dir/$name/out.log" 2>/dev/null && break; sleep 0.1; done
  grep -o 'http://[0-9.:]*' "$dir/$name/out.log"
}
INGESTOR=$(start ingestor ingestor "127.0.0.2:$PORT")
EDGE=$(start web-a web 127.0.0.3:0 DNS_INGESTOR_QUERY=127.0.0.2 DASH_INGESTOR_PORT="$PORT")
LIVE=$(start web-b web 127.0.0.4:0)
for _ in $(seq 1 100); do curl -s "$EDGE/ready" | grep -q '"known":1' && break; sleep 0.1; done
SECRET=$(curl -s -X POST "$EDGE/api/pipelines" -H 'content-type: application/json' -d '{"name":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
echo "flush interval $FLUSH, $EVENTS events at $RATE/s, $RUNS runs"
for run in $(seq 1 "$RUNS"); do
  echo "--- run $run"
  "$D" bench-e2e --post-url "$EDGE" --live-url "$LIVE" --pipeline bench --secret "$SECRET" --events "$EVENTS" --rate "$RATE"
done
for run in $(seq 1 "$RUNS"); do
  echo "--- run $run, posting to the ingestor directly (no edge hop), for comparison"
  "$D" bench-e2e --post-url "$INGESTOR" --live-url "$LIVE" --pipeline bench --secret "$SECRET" --events "$EVENTS" --rate "$RATE"
done
