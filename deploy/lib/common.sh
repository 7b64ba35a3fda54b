# deploy/lib/common.sh - shared shell helpers for deploy/quickstart and deploy/run-tests.
# Sourced, not run. Everything here is idempotent: it installs only what is missing.

NUBE_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# Debian packages, by purpose.
NUBE_PKGS_BUILD="gcc pkg-config meson ninja-build libvirt-dev libzmq3-dev libjson-c-dev
  libsqlite3-dev libssl-dev libcurl4-openssl-dev libmicrohttpd-dev uuid-dev libinih-dev
  libcmocka-dev libyaml-dev"
NUBE_PKGS_RUNTIME="libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu python3-openstackclient
  libxml2-utils python3 curl sqlite3 ca-certificates"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# nube_ensure_packages PKG... : apt-get install the packages that are not installed yet.
nube_ensure_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}); run as root or install them"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

# nube_build DIR [meson options...] : configure (once) and build.
nube_build() {
    local dir=$1; shift
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" "$NUBE_TOP" "$@" >/dev/null || die "meson setup failed"
    else
        meson configure "$dir" "$@" >/dev/null || die "meson configure failed"
    fi
    ninja -C "$dir" >"$dir/ninja.log" 2>&1 || { tail -40 "$dir/ninja.log" >&2; die "build failed"; }
}

# nube_free_port : print a TCP port that is free on 127.0.0.1 right now.
nube_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# nube_wait_http URL SECONDS : wait until URL answers 200.
nube_wait_http() {
    local url=$1 deadline=$((SECONDS + $2))
    while [ $SECONDS -lt $deadline ]; do
        curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}
