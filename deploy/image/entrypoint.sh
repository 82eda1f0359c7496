#!/bin/sh
# The image's entrypoint, under tini. Fly runs `release_command = "dashd migrate"` and each
# `[processes]` command (`serve --role web`) as the image's CMD after this ENTRYPOINT, so a
# command arrives with or without the program's name. A program on PATH that is none of dashd's
# subcommands (`sh`, to look around) runs as given.
#
# Started as root (the image's default), it makes dashd's data directory writable by the `dash`
# user, then runs dashd as that user: a fresh volume (a Fly volume, a root-owned bind mount) is
# owned by root, and the server itself never runs as root. Started as any other user (`--user`),
# it runs dashd as that user and changes nothing.
set -eu

DASHD=/usr/local/bin/dashd

case "${1:-}" in
    dashd | "$DASHD") shift ;;
    "" | -* | serve | migrate | pipeline | view | bench | bench-live | bench-e2e | ceiling | data-dir | help) ;;
    *) if command -v -- "$1" >/dev/null 2>&1; then exec "$@"; fi ;;
esac

if [ "$(id -u)" = 0 ]; then
    # The directory dashd will use, as dashd resolves it (DASH_DATA_DIR, DASH_CONFIG or
    # --config, config/$DASH_ENV.toml). Settings it refuses are left for dashd to report below.
    config=""
    previous=""
    for arg in "$@"; do
        case "$arg" in --config=*) config=${arg#--config=} ;; esac
        if [ "$previous" = --config ]; then config=$arg; fi
        previous=$arg
    done
    if data=$(env ${config:+"DASH_CONFIG=$config"} "$DASHD" data-dir 2>/dev/null); then
        mkdir -p "$data"
        # Everything in it that is not dash's: all of a fresh volume, or a file a root shell
        # (`fly ssh console`) left behind. A walk of inodes, cheap even under a large intake log.
        find "$data" -xdev \( ! -user dash -o ! -group dash \) -exec chown -h dash:dash {} +
    fi
    exec setpriv --reuid=dash --regid=dash --clear-groups -- "$DASHD" "$@"
fi
exec "$DASHD" "$@"
