#!/usr/bin/env bash
# Runs Dash's whole test suite: formatting, lints, unit tests, and the integration suite twice:
# on the embedded store (SQLite) and on PostgreSQL. Integration tests start the real dashd on
# port 0; PostgreSQL tests create a database of their own per test and drop it after.
# The dashboard is also tested in headless Chromium, and roles apart over a private nats-server.
# Anything the tests need that a fresh machine lacks is installed and started here.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is required (https://rustup.rs)" >&2
    exit 1
fi
# The sqlx macros must never check queries against a live DATABASE_URL at build time.
unset DATABASE_URL
export SQLX_OFFLINE=true

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# PostgreSQL on 127.0.0.1:5432: installed and started when missing; the suite never stops it.
ensure_postgres() {
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
        echo "== installing PostgreSQL"
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
    fi
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        echo "== starting PostgreSQL"
        as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
    fi
    for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
    local url="postgres://postgres@127.0.0.1:5432/postgres"
    if ! psql "$url" -qtAc 'SELECT 1' >/dev/null 2>&1; then
        # A fresh install asks for a password over TCP: give the postgres role one.
        as_root su postgres -c "psql -qc \"ALTER ROLE postgres PASSWORD 'postgres'\"" >/dev/null
        url="postgres://postgres:postgres@127.0.0.1:5432/postgres"
    fi
    # Databases left behind by an interrupted earlier run.
    for db in $(psql "$url" -qtAc "SELECT datname FROM pg_database WHERE datname LIKE 'dash_test_%'"); do
        psql "$url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
    done
    export DASH_TEST_POSTGRES="$url"
}

# Headless Chromium for the dashboard's browser tests (Debian's package; no downloads at test time).
ensure_chromium() {
    if [ -n "${DASH_TEST_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1; then
        return
    fi
    echo "== installing Chromium"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
}

# nats-server for the tests that run roles apart; each such test starts its own on a free port.
ensure_nats_server() {
    if [ -n "${DASH_TEST_NATS_SERVER:-}" ] || command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then
        return
    fi
    echo "== installing nats-server"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server >/dev/null
}

# promtool (Debian's prometheus package) checks the /metrics exposition in a test.
ensure_promtool() {
    if [ -n "${DASH_TEST_PROMTOOL:-}" ] || command -v promtool >/dev/null 2>&1; then
        return
    fi
    echo "== installing promtool (prometheus)"
    as_root apt-get update -q
    # The package's service is not started: only the promtool binary is used.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
}

ensure_postgres
ensure_chromium
ensure_nats_server
ensure_promtool

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test (SQLite integration suite; store tests on both backends)"
cargo test --workspace --locked -- --test-threads "${DASH_TEST_THREADS:-4}"
echo "== cargo test (integration suite on PostgreSQL)"
# --workspace keeps the features of the run above, so nothing is rebuilt for this one.
DASH_TEST_BACKEND=postgres cargo test --workspace --test spine --locked -- --test-threads "${DASH_TEST_THREADS:-4}"
