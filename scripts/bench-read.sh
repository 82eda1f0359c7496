#!/usr/bin/env bash
# Read-path benchmark on PostgreSQL: loads N events (default 10 million, 10 pipelines, spread
# over the last 2 days) into a fresh Dash database, then times the read API against it.
# Usage: scripts/bench-read.sh [ROWS] [ADMIN_URL]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-10000000}
ADMIN=${2:-postgres://postgres@127.0.0.1:5432/postgres}
BASE=${ADMIN%/*}
DB=dash_bench_read
cargo build --release --quiet -p dashd
psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
DATABASE_URL="$BASE/$DB" ./target/release/dashd migrate >/dev/null 2>&1

echo "loading $ROWS events..."
start=$(date +%s)
psql "$BASE/$DB" -q <<SQL
INSERT INTO pipelines (id, name, secret, token_hash)
    SELECT 'p' || i, 'p' || i, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'none' FROM generate_series(1, 10) i;
INSERT INTO events (pipeline_id, event_id, event_time, received_at, payload)
    SELECT 'p' || (g % 10 + 1), 'e' || g,
           now() - make_interval(secs => (g * 172800.0 / $ROWS)), now() - make_interval(secs => (g * 172800.0 / $ROWS)),
           ('{"type":"order.created","n":' || g || ',"data":{"amount":4200,"currency":"EUR"}}')::json
    FROM generate_series(1, $ROWS) g;
INSERT INTO event_rollup_minute (pipeline_id, minute, event_count)
    SELECT pipeline_id, date_trunc('minute', event_time), count(*) FROM events GROUP BY 1, 2;
UPDATE pipelines p SET event_count = c.n, seq = 1 FROM (SELECT pipeline_id, count(*) n FROM events GROUP BY 1) c
    WHERE c.pipeline_id = p.id;
ANALYZE;
SQL
echo "loaded in $(( $(date +%s) - start )) s"

dir=$(mktemp -d)
(cd "$dir" && DATABASE_URL="$BASE/$DB" DASH_LOG=warn exec "$OLDPWD/target/release/dashd" serve --listen 127.0.0.1:0 > out.log 2>&1) &
for _ in $(seq 1 100); do grep -q listening "$dir/out.log" 2>/dev/null && break; sleep 0.1; done
URL=$(grep -o 'http://[0-9.:]*' "$dir/out.log")

time_ms() { # median of 9 requests, milliseconds
    for _ in $(seq 1 9); do curl -s -o /dev/null -w '%{time_total}\n' "$URL$1"; done \
        | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[5] * 1000}'
}
echo "rows: $(psql "$BASE/$DB" -tAc 'SELECT count(*) FROM events')"
echo "GET /api/pipelines/p3/events?limit=50               $(time_ms '/api/pipelines/p3/events?limit=50') ms"
echo "GET /api/pipelines/p3/series (last hour, 1m)        $(time_ms '/api/pipelines/p3/series') ms"
echo "GET /api/pipelines/p3/series (last 24 h, 5m)        $(time_ms "/api/pipelines/p3/series?from=$(( ($(date +%s) - 86400) * 1000 ))&bucket=5m") ms"
echo "GET /api/pipelines/p3/series (last 48 h, 1h)        $(time_ms "/api/pipelines/p3/series?from=$(( ($(date +%s) - 172800) * 1000 ))&bucket=1h") ms"
echo "GET /api/pipelines/p3                               $(time_ms '/api/pipelines/p3') ms"
kill %1 2>/dev/null || true
rm -rf "$dir"
