#!/usr/bin/env bash
# Runs Dash's whole test suite: formatting, lints, unit tests, and the integration suite three
# times: on the embedded store (SQLite), on PostgreSQL, and on TimescaleDB. Integration tests start the real dashd on
# port 0; PostgreSQL tests create a database of their own per test and drop it after.
# The dashboard is also tested in headless Chromium, and roles apart over a private nats-server;
# the image's runtime layer runs both roles under podman, and fly.toml is checked offline.
# Anything the tests need that a fresh machine lacks is installed and started here.
set -euo pipefail
shopt -s inherit_errexit
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

# TimescaleDB, built from its unmodified source (the vendored tarball beside the checkout, or
# DASH_TIMESCALEDB_SOURCE naming the folder that holds it) into a private copy of the PostgreSQL
# installation, never system-wide: the shared server on 5432 stays plain. The build is cached
# (DASH_TEST_CACHE) and reused while its .so is there. Three private clusters on free ports: one
# preloading TimescaleDB (the suite's third pass runs on it), one Apache-only, one where the
# extension is installed but not preloaded (both for the layout-choice tests).
TS_VERSION=2.28.3
ts_pg_major() { ls /usr/lib/postgresql | sort -V | tail -n 1; }
# Builds TimescaleDB when it is not cached; false (the pass is skipped) only when there is neither
# a cached build nor the source, and then only where a skip is allowed: with
# DASH_REQUIRE_TIMESCALE=1 (.ci/run sets it) a skip fails the run. The build goes into a folder
# of its own and is moved into place with a stamp once complete, under a lock, so an interrupted
# or concurrent build is never taken for a finished one.
ensure_timescaledb() {
    local major root src="" cache
    major=$(ts_pg_major)
    cache="${DASH_TEST_CACHE:-/var/tmp/dash-test-cache}"
    root="$cache/timescaledb-$TS_VERSION-pg$major"
    mkdir -p "$cache"
    chmod 755 "$cache"
    exec 9>"$cache/timescaledb.lock"
    flock 9
    if [ ! -f "$root/.complete" ]; then
        for dir in "${DASH_TIMESCALEDB_SOURCE:-}" ../shared/vendor ../../shared/vendor; do
            if [ -n "$dir" ] && [ -f "$dir/timescaledb-$TS_VERSION.tar.gz" ] && [ -f "$dir/build-timescaledb.sh" ]; then
                src=$(cd "$dir" && pwd)
                break
            fi
        done
        if [ -z "$src" ]; then
            echo "!!"
            echo "!! TimescaleDB pass SKIPPED: no cached build in $root and no source"
            echo "!! (timescaledb-$TS_VERSION.tar.gz and build-timescaledb.sh; set DASH_TIMESCALEDB_SOURCE)."
            echo "!!"
            flock -u 9
            if [ "${DASH_REQUIRE_TIMESCALE:-0}" = 1 ]; then
                echo "DASH_REQUIRE_TIMESCALE=1: the TimescaleDB pass must run here" >&2
                exit 1
            fi
            return 1
        fi
        echo "== building TimescaleDB $TS_VERSION into $root (cached for later runs)"
        (cd "$src" && sha256sum -c --ignore-missing --quiet SHA256SUMS) || { echo "TimescaleDB source: checksum mismatch" >&2; exit 1; }
        rm -rf "$root.building" "$root"
        PRIVATE_ROOT="$root.building" PG_MAJOR="$major" bash "$src/build-timescaledb.sh" "$src/timescaledb-$TS_VERSION.tar.gz" \
            || { echo "TimescaleDB build failed" >&2; exit 1; }
        ls "$root.building/usr/lib/postgresql/$major/lib"/timescaledb*.so >/dev/null
        mv "$root.building" "$root"
        touch "$root/.complete"
    fi
    flock -u 9
    TS_BIN="$root/usr/lib/postgresql/$major/bin"
}
start_timescale_clusters() {
    TS_RUN=$(mktemp -d /tmp/dash-ts.XXXXXX)
    chmod 755 "$TS_RUN"
    trap stop_timescale_clusters EXIT
    DASH_TEST_TIMESCALE_FULL=$(start_ts_cluster full "shared_preload_libraries = 'timescaledb'")
    DASH_TEST_TIMESCALE_APACHE=$(start_ts_cluster apache "shared_preload_libraries = 'timescaledb'" "timescaledb.license = 'apache'")
    DASH_TEST_TIMESCALE_NOT_PRELOADED=$(start_ts_cluster notpreloaded)
    export DASH_TEST_TIMESCALE_FULL DASH_TEST_TIMESCALE_APACHE DASH_TEST_TIMESCALE_NOT_PRELOADED
    # dashd verify's private cluster runs on this build too (TimescaleDB preloaded).
    export DASH_TEST_TIMESCALE_BIN="$TS_BIN"
    export DASH_TEST_REQUIRE_TIMESCALE=1
}
as_postgres_user() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$1"; else bash -c "$1"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# start_ts_cluster NAME [postgresql.conf lines...] → prints its admin URL
start_ts_cluster() {
    local name=$1 dir="$TS_RUN/$1" port
    shift
    port=$(free_port)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_postgres_user "'$TS_BIN/initdb' -D '$dir/data' -A trust -U postgres >/dev/null"
    {
        echo "port = $port"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$dir'"
        echo "timescaledb.telemetry_level = off"
        echo "fsync = off"
        for line in "$@"; do echo "$line"; done
    } >>"$dir/data/postgresql.conf"
    as_postgres_user "'$TS_BIN/pg_ctl' -D '$dir/data' -l '$dir/log' -w -t 60 start >/dev/null" \
        || { echo "TimescaleDB cluster $name did not start:" >&2; cat "$dir/log" >&2; exit 1; }
    echo "postgres://postgres@127.0.0.1:$port/postgres"
}
stop_timescale_clusters() {
    [ -n "${TS_RUN:-}" ] || return 0
    for data in "$TS_RUN"/*/data; do
        [ -d "$data" ] && as_postgres_user "'$TS_BIN/pg_ctl' -D '$data' -m immediate stop >/dev/null 2>&1" || true
    done
    rm -rf "$TS_RUN"
}

# Tools from PyPI, pinned, in a virtualenv of the test cache: Schemathesis checks every operation
# of /api/openapi.json against the real dashd (the debug build the tests just made) and fails on
# any check it reports (scripts/schemathesis.toml says which checks are off where, and why); the
# svix library signs webhooks the way senders behind Svix do, slack_sdk and twilio the way Slack
# and Twilio do (DASH_TEST_PYTHON, for spine tests; scripts/sign-webhook.py).
SCHEMATHESIS_VERSION=4.32.5
SVIX_VERSION=2.9.1
SLACK_SDK_VERSION=3.48.0
TWILIO_VERSION=9.13.0
TEST_VENV="${DASH_TEST_CACHE:-/var/tmp/dash-test-cache}/venv-st$SCHEMATHESIS_VERSION-svix$SVIX_VERSION-slack$SLACK_SDK_VERSION-twilio$TWILIO_VERSION"
ensure_test_venv() {
    if [ ! -x "$TEST_VENV/bin/st" ] || ! "$TEST_VENV/bin/python" -c 'import svix, slack_sdk, twilio' >/dev/null 2>&1; then
        echo "== installing schemathesis, svix, slack_sdk and twilio into $TEST_VENV"
        python3 -m venv "$TEST_VENV"
        "$TEST_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            "schemathesis==$SCHEMATHESIS_VERSION" "svix==$SVIX_VERSION" \
            "slack_sdk==$SLACK_SDK_VERSION" "twilio==$TWILIO_VERSION"
    fi
    export DASH_TEST_PYTHON="$TEST_VENV/bin/python"
}

# GitHub's and Stripe's own signing code, from the npm registry (Node.js from Debian when the
# machine has none): scripts/sign-webhook.mjs runs beside the modules (DASH_TEST_NODE_SIGNER).
OCTOKIT_METHODS_VERSION=6.0.0
STRIPE_NODE_VERSION=23.2.0
SIGNERS_DIR="${DASH_TEST_CACHE:-/var/tmp/dash-test-cache}/node-providers-octokit$OCTOKIT_METHODS_VERSION-stripe$STRIPE_NODE_VERSION"
ensure_node_signers() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        echo "== installing Node.js and npm"
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null
    fi
    if [ ! -d "$SIGNERS_DIR/node_modules/stripe" ] || [ ! -d "$SIGNERS_DIR/node_modules/@octokit/webhooks-methods" ]; then
        echo "== installing @octokit/webhooks-methods $OCTOKIT_METHODS_VERSION and stripe $STRIPE_NODE_VERSION into $SIGNERS_DIR"
        rm -rf "$SIGNERS_DIR.building"
        mkdir -p "$SIGNERS_DIR.building"
        echo '{"private":true}' >"$SIGNERS_DIR.building/package.json"
        (cd "$SIGNERS_DIR.building" && npm install --no-audit --no-fund --silent \
            "@octokit/webhooks-methods@$OCTOKIT_METHODS_VERSION" "stripe@$STRIPE_NODE_VERSION")
        rm -rf "$SIGNERS_DIR"
        mv "$SIGNERS_DIR.building" "$SIGNERS_DIR"
    fi
    # ES modules resolve from the script's own folder: the signer sits beside node_modules.
    cp scripts/sign-webhook.mjs "$SIGNERS_DIR/sign-webhook.mjs"
    export DASH_TEST_NODE_SIGNER="$SIGNERS_DIR/sign-webhook.mjs"
}
run_schemathesis() {
    local venv="$TEST_VENV"
    local dir port pid status=0 dashd config up=0
    dashd="$(pwd)/target/debug/dashd"
    config="$(pwd)/scripts/schemathesis.toml"
    dir=$(mktemp -d /tmp/dash-st.XXXXXX)
    port=$(free_port)
    (cd "$dir" && exec env -i PATH="$PATH" DASH_LISTEN="127.0.0.1:$port" "$dashd" serve >"$dir/dashd.log" 2>&1) &
    pid=$!
    for _ in $(seq 1 100); do
        if curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1; then up=1; break; fi
        sleep 0.1
    done
    if [ "$up" != 1 ]; then echo "dashd did not start for schemathesis:"; cat "$dir/dashd.log"; return 1; fi
    # Run from its own folder: Schemathesis keeps a cache in the working directory.
    (cd "$dir" && "$venv/bin/st" --config-file "$config" run "http://127.0.0.1:$port/api/openapi.json" \
        --max-examples 20 --max-time 60 --request-timeout 10 --no-color \
        --suppress-health-check=filter_too_much,too_slow >"$dir/st.log" 2>&1) || status=$?
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if grep -q panicked "$dir/dashd.log"; then status=1; echo "dashd panicked under schemathesis:"; cat "$dir/dashd.log"; fi
    tail -n 12 "$dir/st.log"
    if [ "$status" != 0 ]; then cat "$dir/st.log"; rm -rf "$dir"; return 1; fi
    rm -rf "$dir"
}

# The image's runtime layer: podman builds the Dockerfile's runtime stage around the binary this
# suite just built (scripts/image.sh runtime; the build stage is a release-time script), and a
# test runs it as Fly would (crates/dashd/tests/spine/image.rs). Where podman cannot run
# containers the test is skipped loudly; with DASH_REQUIRE_IMAGE=1 (.ci/run) that fails the run.
IMAGE_TEST_TAG=localhost/dash-test:runtime
run_image_test() {
    if ! bash scripts/image.sh can-run; then
        echo "!!"
        echo "!! image test SKIPPED: podman cannot run containers here (scripts/image.sh can-run)"
        echo "!!"
        if [ "${DASH_REQUIRE_IMAGE:-0}" = 1 ]; then
            echo "DASH_REQUIRE_IMAGE=1: the image test must run here" >&2
            exit 1
        fi
        return 0
    fi
    bash scripts/image.sh runtime target/debug/dashd "$IMAGE_TEST_TAG"
    local out
    out=$(mktemp)
    DASH_TEST_IMAGE="$IMAGE_TEST_TAG" cargo test --workspace --test spine --locked -- \
        --ignored --exact image::the_image_runs_both_roles_as_fly_does_on_a_root_owned_volume 2>&1 | tee "$out"
    # A renamed test would otherwise match nothing and pass.
    grep -q '^test result: ok. 1 passed' "$out" || { echo "the image test did not run" >&2; rm -f "$out"; exit 1; }
    rm -f "$out"
}

# The release a rolling upgrade starts from: the suite's `dashd verify` run starts its cluster on
# it and swaps nodes between it and this build, both ways (`upgrade` faults). Built once from this
# clone's history (git archive, no worktree) and cached (DASH_TEST_CACHE): only the binary is kept.
# It gets a target folder of its own: cargo names a workspace crate's artifacts by its path inside
# the workspace, so in a shared one the two releases' crates would overwrite each other, and an
# unchanged-looking artifact of one would be linked into the other. Skipped loudly where the
# history does not hold the commit (a shallow clone).
PREVIOUS_RELEASE=6ac32230f045731256d426924e1c7620c122c38f
ensure_previous_release() {
    local cache root src
    cache="${DASH_TEST_CACHE:-/var/tmp/dash-test-cache}"
    root="$cache/dashd-$PREVIOUS_RELEASE"
    mkdir -p "$cache"
    exec 8>"$cache/previous-release.lock"
    flock 8
    if [ ! -x "$root/dashd" ]; then
        if ! git cat-file -e "$PREVIOUS_RELEASE^{commit}" 2>/dev/null; then
            echo "!!"
            echo "!! upgrade faults SKIPPED: the previous release ($PREVIOUS_RELEASE) is not in this clone's history"
            echo "!!"
            flock -u 8
            return 0
        fi
        echo "== building the previous release (${PREVIOUS_RELEASE:0:12}) for the upgrade faults (cached in $root)"
        rm -rf "$root.building"
        mkdir -p "$root.building/src"
        src="$root.building/src"
        git archive "$PREVIOUS_RELEASE" | tar -x -C "$src"
        # One build, kept only for its binary: no debug info, no incremental state.
        (cd "$src" && CARGO_PROFILE_DEV_DEBUG=0 CARGO_INCREMENTAL=0 \
            cargo build --locked -p dashd --target-dir "$root.building/target") \
            || { echo "building the previous release failed" >&2; rm -rf "$root.building"; exit 1; }
        cp "$root.building/target/debug/dashd" "$root.building/dashd"
        rm -rf "$root.building/src" "$root.building/target"
        mv "$root.building" "$root"
    fi
    flock -u 8
    export DASH_TEST_PREVIOUS_DASHD="$root/dashd"
}

# python3 with venv (Schemathesis's virtualenv, free ports) and curl.
ensure_python() {
    if command -v python3 >/dev/null 2>&1 && python3 -c 'import ensurepip, venv' >/dev/null 2>&1 \
        && command -v curl >/dev/null 2>&1; then
        return
    fi
    echo "== installing python3, python3-venv, curl"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv curl >/dev/null
}

# Each step's wall time, printed at the end (docs/BENCHMARKS.md keeps the suite's own table).
STEP_NAME="" STEP_START=$SECONDS STEP_TIMES=()
step() {
    if [ -n "$STEP_NAME" ]; then STEP_TIMES+=("$(printf '%5d s  %s' $((SECONDS - STEP_START)) "$STEP_NAME")"); fi
    STEP_NAME="$1" STEP_START=$SECONDS
    if [ -n "$1" ]; then echo "== $1"; fi
}

step "services and caches (PostgreSQL, Chromium, NATS, TimescaleDB, the previous release)"
ensure_python
ensure_postgres
ensure_chromium
ensure_nats_server
ensure_promtool
ensure_test_venv
ensure_node_signers
# A PostgreSQL test that cannot find its server fails rather than passing silently.
export DASH_TEST_REQUIRE_POSTGRES=1
TIMESCALE=0
if ensure_timescaledb; then
    TIMESCALE=1
    start_timescale_clusters
fi

ensure_previous_release

step "cargo fmt --check"
cargo fmt --all -- --check
step "unused dependencies"
python3 scripts/unused-deps.py
step "fly.toml against Fly's schema and Dash's settings"
python3 scripts/check-fly.py --self-test
# The test build first: clippy then reuses its proc macros, build scripts and their
# dependencies (the same units), and checks only the rest (docs/BENCHMARKS.md, the build).
step "cargo build (the test binaries)"
# The spine binary's path, to start its longest test apart (below).
SPINE_BIN=$(cargo test --workspace --locked --no-run -q --message-format=json-render-diagnostics |
    python3 -c 'import json, sys
for m in map(json.loads, sys.stdin):
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "spine" and m.get("executable"):
        print(m["executable"])')
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo test (SQLite integration suite; store tests on both backends)"
# The fault harness's run (~90 s) starts first, beside the rest: in name order it would start
# last and the pass would wait for it alone (docs/BENCHMARKS.md, the SQLite pass test by test).
VERIFY_TEST=verify::thirty_seeded_faults_keep_every_acknowledged_event_exactly_once
VERIFY_LOG=$(mktemp)
(cd crates/dashd && exec "$SPINE_BIN" --exact "$VERIFY_TEST") > "$VERIFY_LOG" 2>&1 &
VERIFY_PID=$!
if ! cargo test --workspace --locked -- --test-threads "${DASH_TEST_THREADS:-4}" --skip "$VERIFY_TEST"; then
    kill "$VERIFY_PID" 2> /dev/null || true
    exit 1
fi
VERIFY_OK=0
wait "$VERIFY_PID" || VERIFY_OK=$?
echo "== $VERIFY_TEST (started beside the pass above)"
cat "$VERIFY_LOG"
rm -f "$VERIFY_LOG"
[ "$VERIFY_OK" = 0 ]
step "cargo test (the tests that need PostgreSQL itself: migrations, clusters, roles apart)"
# Marked ignored so that a plain `cargo test` without PostgreSQL shows them as not run rather
# than passed; named *_on_postgres.
cargo test --workspace --locked -- --ignored on_postgres --test-threads "${DASH_TEST_THREADS:-4}"
step "schemathesis (the OpenAPI document against the real server, 60 s)"
run_schemathesis
step "the image's runtime layer, run as Fly runs it (podman)"
run_image_test

step "cargo test (integration suite on PostgreSQL)"
# --workspace keeps the features of the run above, so nothing is rebuilt for this one.
DASH_TEST_BACKEND=postgres cargo test --workspace --test spine --locked -- --test-threads "${DASH_TEST_THREADS:-4}"
if [ "$TIMESCALE" = 1 ]; then
    step "cargo test (store tests and the integration suite on TimescaleDB $TS_VERSION, preloaded)"
    DASH_TEST_BACKEND=postgres DASH_TEST_POSTGRES="$DASH_TEST_TIMESCALE_FULL" DASH_TEST_TIMESCALE=1 \
        cargo test --workspace --lib --test spine --locked -- --test-threads "${DASH_TEST_THREADS:-4}"
    DASH_TEST_BACKEND=postgres DASH_TEST_POSTGRES="$DASH_TEST_TIMESCALE_FULL" DASH_TEST_TIMESCALE=1 \
        cargo test --workspace --lib --locked -- --ignored on_postgres --test-threads "${DASH_TEST_THREADS:-4}"
else
    echo "!! TimescaleDB pass SKIPPED (see above)"
fi
step ""
echo "== time by step"
printf '%s\n' "${STEP_TIMES[@]}"
printf '%5d s  in all\n' "$SECONDS"
