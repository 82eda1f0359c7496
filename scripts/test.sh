#!/usr/bin/env bash
# Runs Dash's whole test suite: formatting, lints, unit and integration tests.
# Integration tests start the real dashd binary on port 0 against real SQLite in temp dirs.
# Anything the tests need that a fresh machine lacks is installed here.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is required (https://rustup.rs)" >&2
    exit 1
fi
# The apalis/sqlx macros must never check queries against a live DATABASE_URL at build time.
unset DATABASE_URL
export SQLX_OFFLINE=true

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked -- --test-threads "${DASH_TEST_THREADS:-4}"
