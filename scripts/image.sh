#!/usr/bin/env bash
# Builds Dash's container image the way a user would, without a Docker daemon or an image
# registry: podman builds the unmodified Dockerfile on local base images that stand in for
# `debian:bookworm-slim` and `rust:<RUST_VERSION>-slim-bookworm` where those are not already in
# podman's storage (images there, the real ones pulled by hand say, are used as they are).
#
#   scripts/image.sh base                  the two base images (made once; their roots cached)
#   scripts/image.sh build [TAG [FLAGS…]]  `podman build` of the Dockerfile, all stages (release);
#                                          FLAGS go to podman build (--no-cache: a cold build)
#   scripts/image.sh runtime BINARY TAG    the Dockerfile's runtime stage around a dashd already
#                                          built (the test suite's: its build stage skipped)
#   scripts/image.sh can-run               exit 0 when podman can run containers here
#
# The stand-ins: a Debian 12 root from `debootstrap --variant=minbase` with the official image's
# package sources, slimmed as Debian's container images are (no docs, manuals, translations or
# apt caches); the Rust builder is that root plus gcc, libc6-dev and ca-certificates (as the
# official slim image installs) and this machine's own Rust toolchain at the official image's
# paths (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo), without its docs, and the
# certificate authorities this machine adds in /usr/local/share/ca-certificates. Builds run on the
# host's network, so they reach the crate and package registries as this machine does.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

# vfs and runc: overlay and crun do not work on every kernel and cgroup setup this runs on, and
# containers here are refused podman's default ulimits.
PODMAN=(podman --storage-driver=vfs --runtime=runc --cgroup-manager=cgroupfs)
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
CACHE="${DASH_TEST_CACHE:-/var/tmp/dash-test-cache}"
DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
RUST_VERSION=$(sed -n 's/^ARG RUST_VERSION=//p' Dockerfile)
RUST_IMAGE="docker.io/library/rust:${RUST_VERSION}-slim-bookworm"

# The Debian mirrors this machine's own apt uses (its deb822 sources, else sources.list), or
# DASH_DEBIAN_MIRROR and DASH_DEBIAN_SECURITY_MIRROR: the repository names no package host.
# $1: main (the release and its updates) or security.
debian_mirror() {
    local found=""
    if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
        found=$(awk -v want="$1" 'BEGIN { RS = "" } {
            uri = ""; suites = ""
            n = split($0, lines, "\n")
            for (i = 1; i <= n; i++) {
                if (lines[i] ~ /^URIs:/) { split(lines[i], f, " "); uri = f[2] }
                if (lines[i] ~ /^Suites:/) { suites = lines[i] }
            }
            if (uri != "" && suites != "" && ((want == "security") == (suites ~ /-security/))) { print uri; exit }
        }' /etc/apt/sources.list.d/*.sources)
    fi
    if [ -z "$found" ] && [ -f /etc/apt/sources.list ]; then
        found=$(awk -v want="$1" '$1 == "deb" {
            uri = ""; suite = ""
            for (i = 2; i <= NF; i++) {
                if ($i ~ /^\[/ || inopt) { inopt = ($i !~ /\]$/); continue }
                if (uri == "") { uri = $i } else if (suite == "") { suite = $i }
            }
            if (uri != "" && ((want == "security") == (suite ~ /-security/))) { print uri; exit }
        }' /etc/apt/sources.list)
    fi
    echo "$found"
}
MIRROR="${DASH_DEBIAN_MIRROR:-$(debian_mirror main)}"
SECURITY_MIRROR="${DASH_DEBIAN_SECURITY_MIRROR:-$(debian_mirror security)}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
log() { echo "== image: $*" >&2; }
# Temporary folders (a root, a build context), removed however the script ends.
CLEANUP=()
trap 'if [ ${#CLEANUP[@]} -gt 0 ]; then as_root rm -rf "${CLEANUP[@]}"; fi' EXIT

ensure_tools() {
    local missing=()
    command -v podman >/dev/null 2>&1 || missing+=(podman)
    command -v runc >/dev/null 2>&1 || missing+=(runc)
    command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        as_root apt-get update -q >/dev/null
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    fi
}

image_exists() { "${PODMAN[@]}" image exists "$1"; }

# A Debian 12 root as `debian:bookworm-slim` is made: minbase, the official image's sources
# (bookworm, bookworm-updates, bookworm-security), no package lists or caches left in it.
ensure_debian_image() {
    image_exists "$DEBIAN_IMAGE" && return 0
    if [ -z "$MIRROR" ]; then
        echo "no Debian mirror in this machine's apt sources: set DASH_DEBIAN_MIRROR" >&2
        exit 1
    fi
    [ -n "$SECURITY_MIRROR" ] || SECURITY_MIRROR="${MIRROR%/debian}/debian-security"
    local tarball="$CACHE/bookworm-minbase.tar"
    mkdir -p "$CACHE"
    if [ ! -f "$tarball" ]; then
        local root
        root=$(mktemp -d /var/tmp/dash-bookworm.XXXXXX)
        CLEANUP+=("$root" "$root.log")
        log "debootstrap bookworm (minbase) from $MIRROR"
        as_root debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
            || { tail -n 20 "$root.log" >&2; exit 1; }
        as_root rm -f "$root/etc/apt/sources.list"
        as_root tee "$root/etc/apt/sources.list.d/debian.sources" >/dev/null <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        # What makes Debian's container images slim: dpkg leaves out documentation, manuals and
        # translations (copyright files kept), and apt keeps no package caches in a layer.
        as_root tee "$root/etc/dpkg/dpkg.cfg.d/slim" >/dev/null <<EOF
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
EOF
        as_root tee "$root/etc/apt/apt.conf.d/slim" >/dev/null <<EOF
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
EOF
        as_root find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
        as_root find "$root/usr/share/doc" -mindepth 1 -depth -type d -empty -delete
        as_root sh -c "rm -rf '$root'/usr/share/man/* '$root'/usr/share/info/* '$root'/usr/share/locale/* \
            '$root'/usr/share/groff/* '$root'/usr/share/lintian/* \
            '$root'/var/lib/apt/lists/* '$root'/var/cache/apt/*.bin '$root'/var/cache/apt/archives/*.deb"
        as_root chmod 755 "$root" # mktemp made it 0700: the image's / would shut out every user but root
        as_root tar -C "$root" -cf "$tarball.part" .
        mv "$tarball.part" "$tarball"
    fi
    log "importing $DEBIAN_IMAGE (stand-in: debootstrap minbase)"
    "${PODMAN[@]}" import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        --change 'LABEL dash.stand-in=debootstrap-minbase' \
        "$tarball" "$DEBIAN_IMAGE" >/dev/null
}

# `rust:<RUST_VERSION>-slim-bookworm` as the official image lays it out, from this machine's
# toolchain (which must be that version).
ensure_rust_image() {
    image_exists "$RUST_IMAGE" && return 0
    local sysroot version context
    sysroot=$(rustc --print sysroot)
    version=$(rustc --version | awk '{print $2}')
    case "$version" in
        "$RUST_VERSION" | "$RUST_VERSION".*) ;;
        *) echo "this machine's rustc is $version; the Dockerfile builds with $RUST_VERSION" >&2; exit 1 ;;
    esac
    context=$(mktemp -d /var/tmp/dash-rust-image.XXXXXX)
    CLEANUP+=("$context")
    # The certificate authorities this machine adds to Debian's (a registry reached through a
    # proxy of its own, say) go into the builder too, so that cargo reaches the crate registry as here.
    local host_ca=/usr/local/share/ca-certificates
    [ -d "$host_ca" ] || { host_ca="$context/no-ca"; mkdir "$host_ca"; }
    cat >"$context/Containerfile" <<EOF
FROM $DEBIAN_IMAGE
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUST_VERSION=$version
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && cp -r /host-ca/. /usr/local/share/ca-certificates/ \
 && update-ca-certificates >/dev/null
RUN toolchain=/usr/local/rustup/toolchains/$version-x86_64-unknown-linux-gnu \
 && mkdir -p "\$toolchain" /usr/local/cargo/bin \
 && cd /toolchain && cp -a bin lib libexec "\$toolchain"/ \
 && mkdir -p "\$toolchain/share" && cp -a share/man "\$toolchain/share/" \
 && cp /rustup /usr/local/cargo/bin/rustup \
 && for tool in cargo cargo-clippy cargo-fmt clippy-driver rustc rustdoc rustfmt rust-gdb rust-lldb; do \
      ln -s rustup "/usr/local/cargo/bin/\$tool"; done \
 && printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$version-x86_64-unknown-linux-gnu" \
      > /usr/local/rustup/settings.toml \
 && chmod -R a+w /usr/local/rustup /usr/local/cargo \
 && rustc --version && cargo --version
LABEL dash.stand-in=machine-toolchain
EOF
    log "building $RUST_IMAGE (stand-in: bookworm + this machine's Rust $version)"
    "${PODMAN[@]}" build --quiet --network=host --pull=never "${LIMITS[@]}" \
        -v "$sysroot:/toolchain:ro" -v "$(command -v rustup):/rustup:ro" -v "$host_ca:/host-ca:ro" \
        -t "$RUST_IMAGE" -f "$context/Containerfile" "$context" >/dev/null
}

can_run() {
    "${PODMAN[@]}" run --rm --network=host "${LIMITS[@]}" --pull=never "$DEBIAN_IMAGE" true >/dev/null 2>&1
}

# The runtime stage of the Dockerfile, word for word, with its one `COPY --from=build` of the
# binary taking BINARY from the context instead; every other file it copies comes from the
# checkout. The binary's debug info is stripped on the way, as the build stage does.
build_runtime() {
    local binary=$1 tag=$2 context stage previous
    context=$(mktemp -d /var/tmp/dash-runtime.XXXXXX)
    CLEANUP+=("$context")
    stage=$(awk '/^FROM .* AS runtime$/ { on = 1 } on' Dockerfile)
    [ -n "$stage" ] || { echo "Dockerfile: no stage named runtime" >&2; exit 1; }
    local from_build
    from_build=$(grep -c '^COPY --from=build ' <<<"$stage" || true)
    if [ "$from_build" != 1 ] || ! grep -q '^COPY --from=build /src/target/release/dashd /usr/local/bin/dashd$' <<<"$stage"; then
        echo "Dockerfile: the runtime stage must take exactly dashd from the build stage" >&2
        exit 1
    fi
    sed 's#^COPY --from=build /src/target/release/dashd #COPY dashd #' <<<"$stage" >"$context/Containerfile"
    objcopy --strip-debug "$binary" "$context/dashd"
    grep '^COPY ' "$context/Containerfile" | grep -v -- '--from=' | while read -r _ args; do
        read -ra words <<<"$args"
        for source in "${words[@]:0:${#words[@]}-1}"; do
            [ "$source" = dashd ] && continue
            cp -a --parents "$source" "$context/"
        done
    done
    log "building $tag: the Dockerfile's runtime stage around $binary"
    # One image, no intermediate layers (each a full copy on vfs); the one this tag named before
    # is removed, and nothing else in podman's storage is touched.
    previous=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
    "${PODMAN[@]}" build --quiet --layers=false --network=host --pull=never "${LIMITS[@]}" \
        -t "$tag" -f "$context/Containerfile" "$context" >/dev/null
    if [ -n "$previous" ] && [ "$previous" != "$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$tag")" ]; then
        "${PODMAN[@]}" rmi --force "$previous" >/dev/null 2>&1 || true
    fi
}

image_size() { "${PODMAN[@]}" image inspect --format '{{.Size}}' "$1"; }

command=${1:-}
case "$command" in
    base)
        ensure_tools
        ensure_debian_image
        ensure_rust_image
        ;;
    can-run)
        ensure_tools
        ensure_debian_image
        can_run
        ;;
    runtime)
        [ $# = 3 ] || { echo "usage: $0 runtime BINARY TAG" >&2; exit 2; }
        ensure_tools
        ensure_debian_image
        build_runtime "$2" "$3"
        echo "$3: $(( $(image_size "$3") / 1000000 )) MB"
        ;;
    build)
        shift
        tag=dash:latest
        if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
            tag=$1
            shift
        fi
        ensure_tools
        ensure_debian_image
        ensure_rust_image
        log "podman build of the Dockerfile as $tag"
        start=$(date +%s)
        "${PODMAN[@]}" build --network=host --pull=never "${LIMITS[@]}" "$@" -t "$tag" -f Dockerfile .
        end=$(date +%s)
        echo "$tag built in $((end - start)) s; image $(( $(image_size "$tag") / 1000000 )) MB"
        ;;
    *)
        sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
