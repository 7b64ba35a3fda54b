# deploy/lib/libvirt.sh - isolated libvirt "hosts" on one machine (sourced, not run).
# shellcheck shell=bash
#
# A nube lab host is a real libvirtd (Debian 12 ships only the monolithic daemon) that
# believes it owns the machine:
#   * its own mount namespace, in which private directories under $NUBE_LV_BASE/NAME are
#     bind-mounted over /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and
#     /var/cache/libvirt.  Its config, sockets, domain definitions, images and logs are
#     therefore its own, and nothing in the machine's /etc is touched.  qemu.conf has no
#     command-line override, so the bind mount is the only way to give it one;
#   * its own UTS namespace (hostname NAME) and its own host_uuid: without DMI the UUID
#     would be random per start, and libvirt refuses to migrate between equal UUIDs;
#   * optionally its own network namespace: an "eth0" veth whose peer sits on a bridge in
#     a hub namespace shared by the hosts of the same base dir, an address, and a TCP
#     listener (auth none, reachable only inside the hub) for peer-to-peer migration;
#     qemu.conf's migration_host makes QEMU's stream use that address instead of the
#     hostname, which resolves nowhere.  Daemons started through `ip netns exec` see a
#     remounted /sys without /sys/fs/cgroup, so they run without cgroups (cpu stats then
#     come from /proc; cputune/memtune limits do not apply).
# Clients reach a host through its pathname unix socket, which works from any network
# namespace:  qemu:///system?socket=$NUBE_LV_BASE/NAME/run/libvirt-sock
#
# QEMU runs as root with security_driver none and dynamic_ownership off (no AppArmor here,
# no chown of images) and stdio_handler file (no virtlogd without systemd).  The first
# connection to a fresh daemon probes qemu-system-x86_64/-i386 for ~8 s under TCG; the
# result is shared through NUBE_LV_CAPCACHE so every later host starts in well under 1 s
# (libvirt re-probes on its own when QEMU or libvirt change).
#
# libvirtd does not kill guests when it exits, so a stop destroys them (and the networks,
# which kills dnsmasq) first, then SIGTERMs the daemon and waits for it, then kills any
# QEMU/dnsmasq the daemon left (by the pid files in its run dir), deletes the namespaces
# it created and the empty cgroup directories libvirt leaves behind.  Every function is
# idempotent.  The daemons run in their own session, so a test harness killing its
# process group cannot leave guests without their libvirtd.
#
# Functions (all nube_lv_*; they return non-zero and print a message on failure):
#   nube_lv_prepare                      packages + the libvirt-qemu user
#   nube_lv_host_start NAME [--netns NS --ip IP[/PREFIX]] [--uuid UUID] [--lxc]
#                                        --lxc: make the LXC driver usable (lxc:///system
#                                        on the same socket, see nube_lv_host_uri_lxc):
#                                        libvirt 9's libvirt_lxc fails on this machine's
#                                        hybrid cgroups ("Unable to create directory
#                                        /sys/fs/cgroup/unified"), so the daemon's private
#                                        mount namespace unmounts /sys/fs/cgroup/unified
#                                        (the host keeps it). Not with --netns (cgroups
#                                        are hidden there and LXC needs them).
#   nube_lv_host_stop NAME [--purge]     --purge also deletes the host's directory
#   nube_lv_host_uri NAME                print the client URI
#   nube_lv_host_running NAME            status 0 when its libvirtd answers to kill -0
#   nube_lv_host_list                    NAME STATE PID NETNS IP URI, one host a line
#   nube_lv_stop_all [--purge]           stop every host of the base dir
#   nube_lv_leftovers                    print what of this base dir still exists in the
#                                        machine (processes, mounts, namespaces, cgroups)
# Environment: NUBE_LV_BASE (default /var/lib/nube/libvirt-hosts), NUBE_LV_CAPCACHE
# (default /var/cache/nube/libvirt-capabilities), NUBE_LV_READY_TIMEOUT (60 s).

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NUBE_LV_BASE=${NUBE_LV_BASE:-/var/lib/nube/libvirt-hosts}
NUBE_LV_CAPCACHE=${NUBE_LV_CAPCACHE:-/var/cache/nube/libvirt-capabilities}
NUBE_LV_READY_TIMEOUT=${NUBE_LV_READY_TIMEOUT:-60}
NUBE_PKGS_LIBVIRT="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86
  qemu-utils libxml2-utils dnsmasq-base iptables cpio"
# The directories each host gets privately, and the machine-wide record of the ones this
# library had to create as mount points (removed again when no libvirtd runs at all).
_NUBE_LV_DIRS="/etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt"
_NUBE_LV_MADE_DIRS=/run/nube-libvirt-mountpoints

_lv_log() { printf 'libvirt-host: %s\n' "$*" >&2; }
_lv_err() { printf 'libvirt-host: error: %s\n' "$*" >&2; return 1; }
_lv_now_ms() { date +%s%3N; }

# _lv_dir NAME : the host's directory.  Names become hostnames, file names and interface
# name parts, so they are kept to a safe alphabet.
_lv_dir() {
    [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$ ]] || { _lv_err "bad host name '$1'"; return 1; }
    echo "$NUBE_LV_BASE/$1"
}

# _lv_short STRING : 6 hex digits naming STRING in interface and namespace names (IFNAMSIZ
# is 16, so names cannot carry the whole base path or host name).
_lv_short() { printf '%s' "$1" | sha256sum | cut -c1-6; }
_lv_hub() { echo "nubehub-$(_lv_short "$NUBE_LV_BASE")"; }

# _lv_pid_is PID COMM : status 0 when PID is alive and runs COMM (guards against a stale
# pid file naming a recycled pid).
_lv_pid_is() {
    [ -n "$1" ] && [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}

# _lv_wait_gone PID SECONDS : wait for PID to exit.
_lv_wait_gone() {
    local deadline=$(( $(_lv_now_ms) + $2 * 1000 ))
    while kill -0 "$1" 2>/dev/null; do
        # A zombie has exited; only its parent can reap it.
        [ "$(awk '/^State:/{print $2}' "/proc/$1/status" 2>/dev/null)" = Z ] && return 0
        [ "$(_lv_now_ms)" -lt $deadline ] || return 1
        sleep 0.05
    done
    return 0
}

# nube_lv_prepare : install what is missing and create the libvirt-qemu user.  The QEMU
# driver resolves its compiled-in default user before it reads qemu.conf and refuses to
# load without it; libvirt-daemon-system (not installed: it is systemd units) would create it.
nube_lv_prepare() {
    nube_ensure_packages $NUBE_PKGS_LIBVIRT
    if ! getent passwd libvirt-qemu >/dev/null; then
        useradd --system -U -M -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu ||
            { _lv_err "cannot create user libvirt-qemu"; return 1; }
    fi
}

nube_lv_host_uri() {
    local h; h=$(_lv_dir "$1") || return 1
    echo "qemu:///system?socket=$h/run/libvirt-sock"
}

# nube_lv_host_uri_lxc NAME : the LXC driver of the same daemon (start it with --lxc).
nube_lv_host_uri_lxc() {
    local h; h=$(_lv_dir "$1") || return 1
    echo "lxc:///system?socket=$h/run/libvirt-sock"
}

# nube_lv_host_pid NAME : print the pid of the host's libvirtd if it runs.
nube_lv_host_pid() {
    local h pid; h=$(_lv_dir "$1") || return 1
    pid=$(cat "$h/libvirtd.pid" 2>/dev/null) || return 1
    _lv_pid_is "$pid" libvirtd || return 1
    echo "$pid"
}

nube_lv_host_running() { nube_lv_host_pid "$1" >/dev/null 2>&1; }

# _lv_netns_exists NS : `ip netns add` makes /run/netns/NS (no pipe into grep -q, which
# can fail under pipefail when grep exits before the writer).
_lv_netns_exists() { [ -e "/run/netns/$1" ]; }

# _lv_hub_up : the hub namespace with bridge br0 that joins the hosts' veths.
_lv_hub_up() {
    local hub; hub=$(_lv_hub)
    _lv_netns_exists "$hub" || ip netns add "$hub" || return 1
    ip -n "$hub" link show br0 >/dev/null 2>&1 ||
        ip -n "$hub" link add br0 type bridge || return 1
    ip -n "$hub" link set lo up && ip -n "$hub" link set br0 up
}

# _lv_hub_down_if_unused : delete the hub once no host veth is attached any more.
_lv_hub_down_if_unused() {
    local hub deadline h; hub=$(_lv_hub)
    _lv_netns_exists "$hub" || return 0
    # Still in use while any host of the base dir with a network namespace runs.
    for h in "$NUBE_LV_BASE"/*/; do
        [ -f "$h/netns.created" ] || grep -q '^NETNS=.' "$h/host.env" 2>/dev/null || continue
        nube_lv_host_running "$(basename "$h")" && return 0
    done
    # A deleted namespace takes its veth (and the peer) with it asynchronously.
    deadline=$(( $(_lv_now_ms) + 3000 ))
    while [ -n "$(ip -n "$hub" -o link show master br0 2>/dev/null)" ]; do
        [ "$(_lv_now_ms)" -lt $deadline ] || return 0
        sleep 0.05
    done
    ip netns del "$hub" 2>/dev/null || true
}

# _lv_net_up NAME NS [IP] : netns NS (created if missing, remembered for the stop) with lo
# and, given IP, eth0 = a veth to the hub bridge with IP on it.
_lv_net_up() {
    local name=$1 ns=$2 ip=$3 h hub peer; h=$(_lv_dir "$name") || return 1
    hub=$(_lv_hub); peer="nv$(_lv_short "$NUBE_LV_BASE/$name")"
    if ! _lv_netns_exists "$ns"; then
        ip netns add "$ns" || return 1
        echo "$ns" > "$h/netns.created"
    fi
    ip -n "$ns" link set lo up
    # Without an address the host is only isolated (its NAT networks stay in there).
    [ -n "$ip" ] || return 0
    [[ $ip == */* ]] || ip="$ip/24"
    _lv_hub_up || return 1
    if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
        ip -n "$hub" link del "$peer" 2>/dev/null || true
        ip link add "$peer" netns "$hub" type veth peer name eth0 netns "$ns" || return 1
        ip -n "$hub" link set "$peer" master br0 up || return 1
        echo "$ns" > "$h/veth.created"
    fi
    ip -n "$ns" addr replace "$ip" dev eth0 && ip -n "$ns" link set eth0 up
}

# _lv_mountpoints : the bind-mount targets must exist in the machine's mount namespace.
# Ones made here are recorded so _lv_mountpoints_cleanup can remove them.
_lv_mountpoints() {
    local d
    for d in $_NUBE_LV_DIRS; do
        [ -d "$d" ] && continue
        mkdir -p "$d" || return 1
        echo "$d" >> "$_NUBE_LV_MADE_DIRS"
    done
}

# _lv_no_libvirtd : status 0 when no libvirtd runs on the machine (any base dir, or the
# system one).  Zombies (daemons reparented to a PID 1 that has not reaped them yet) hold
# no mounts and no cgroups.
_lv_no_libvirtd() {
    local pid
    for pid in $(pgrep -x libvirtd); do
        [ "$(awk '/^State:/{print $2}' "/proc/$pid/status" 2>/dev/null)" = Z ] || return 1
    done
    return 0
}

# _lv_mountpoints_cleanup : remove the recorded mount points, but only while no libvirtd
# runs at all: rmdir of a directory that is a mount point in another mount namespace
# succeeds on Linux and silently detaches that mount, which would pull the private
# /run/libvirt from under a running host (of any base dir).
_lv_mountpoints_cleanup() {
    local d
    [ -f "$_NUBE_LV_MADE_DIRS" ] || return 0
    _lv_no_libvirtd || return 0
    for d in $(sort -ru "$_NUBE_LV_MADE_DIRS"); do rmdir "$d" 2>/dev/null || true; done
    rm -f "$_NUBE_LV_MADE_DIRS"
}

# _lv_cgroups_cleanup : libvirt (cgroup v1 + unified hybrid here) can leave empty
# machine/qemu-N-NAME.libvirt-qemu directories after its guests are gone.  rmdir refuses
# any cgroup that still has processes or children, so this never touches a live guest.
_lv_cgroups_cleanup() {
    local c
    for c in /sys/fs/cgroup/*/machine /sys/fs/cgroup/machine; do
        [ -d "$c" ] || continue
        find "$c" -mindepth 1 -depth -type d -name 'qemu-*' -exec rmdir {} \; 2>/dev/null || true
        # The "machine" partition itself is libvirt's too; it creates it again on demand.
        if _lv_no_libvirtd; then rmdir "$c" 2>/dev/null || true; fi
    done
    return 0
}

# _lv_write_config DIR NAME UUID IP : libvirtd.conf and qemu.conf of a host.
_lv_write_config() {
    local h=$1 name=$2 uuid=$3 ip=${4%/*}
    mkdir -p "$h"/{etc,run,lib/images,log/qemu,cache/qemu/capabilities}
    [ -f /etc/libvirt/libvirt.conf ] && cp /etc/libvirt/libvirt.conf "$h/etc/"
    {
        echo "# written by deploy/lib/libvirt.sh for lab host $name"
        echo "host_uuid = \"$uuid\""
        echo "log_outputs = \"3:file:/var/log/libvirt/libvirtd.log\""
        if [ -n "$ip" ]; then
            # Plain TCP without auth: only ever bound to the host's address in the hub.
            echo "listen_tls = 0"
            echo "listen_tcp = 1"
            echo "listen_addr = \"$ip\""
            echo "auth_tcp = \"none\""
        fi
    } > "$h/etc/libvirtd.conf"
    {
        echo "# written by deploy/lib/libvirt.sh for lab host $name"
        echo 'user = "root"'
        echo 'group = "root"'
        echo 'dynamic_ownership = 0'
        echo 'security_driver = "none"'
        echo 'stdio_handler = "file"'
        if [ -n "$ip" ]; then echo "migration_host = \"$ip\""; fi
    } > "$h/etc/qemu.conf"
}

# nube_lv_host_start NAME [--netns NS --ip IP[/PREFIX]] [--uuid UUID]
# Start host NAME (no-op when it runs) and wait until it answers, with a deadline.
# The host UUID is kept in the host's directory, so a restarted host is the same host.
nube_lv_host_start() {
    local name=${1:-} ns='' ip='' uuid='' lxc='' h t0 pid deadline uri
    shift || true
    while [ $# -gt 0 ]; do
        case $1 in
        --lxc) lxc=1; shift ;;
        --netns) ns=${2:-}; shift 2 ;;
        --ip) ip=${2:-}; shift 2 ;;
        --uuid) uuid=${2:-}; shift 2 ;;
        *) _lv_err "unknown option $1"; return 1 ;;
        esac
    done
    h=$(_lv_dir "$name") || return 1
    [ -z "$ip" ] || [ -n "$ns" ] || { _lv_err "--ip needs --netns"; return 1; }
    [ -z "$lxc" ] || [ -z "$ns" ] || { _lv_err "--lxc cannot be used with --netns"; return 1; }
    if [ -n "$lxc" ] && [ ! -x /usr/lib/libvirt/libvirt_lxc ]; then
        nube_ensure_packages libvirt-daemon-driver-lxc ||
            { _lv_err "--lxc needs libvirt-daemon-driver-lxc"; return 1; }
    fi
    if nube_lv_host_running "$name"; then nube_lv_host_uri "$name"; return 0; fi
    [ "$(id -u)" = 0 ] || { _lv_err "must run as root"; return 1; }
    getent passwd libvirt-qemu >/dev/null ||
        { _lv_err "no libvirt-qemu user: run nube_lv_prepare first"; return 1; }
    [ -n "$uuid" ] || uuid=$(cat "$h/host-uuid" 2>/dev/null || cat /proc/sys/kernel/random/uuid)
    mkdir -p "$h" && echo "$uuid" > "$h/host-uuid"
    _lv_write_config "$h" "$name" "$uuid" "$ip" || { _lv_err "cannot write the config of $name"; return 1; }
    printf 'NETNS=%s\nIP=%s\n' "$ns" "$ip" > "$h/host.env"
    # A daemon killed hard leaves its sockets and pid file; libvirtd refuses a stale pid
    # file only if the pid is alive, and rebinds the sockets, but start from a clean slate.
    rm -f "$h"/run/libvirt-sock* "$h/run/libvirtd.pid"

    # Seed the capabilities cache unless the host has its own already.
    if [ -d "$NUBE_LV_CAPCACHE" ] && ! ls "$h"/cache/qemu/capabilities/*.xml >/dev/null 2>&1; then
        cp -p "$NUBE_LV_CAPCACHE"/*.xml "$h/cache/qemu/capabilities/" 2>/dev/null || true
    fi
    _lv_mountpoints || { _lv_err "cannot create the libvirt mount points"; return 1; }
    [ -z "$ns" ] || _lv_net_up "$name" "$ns" "$ip" || { _lv_err "network for $name failed"; return 1; }

    local inner="set -e
mount --bind '$h/etc' /etc/libvirt
mount --bind '$h/run' /run/libvirt
mount --bind '$h/lib' /var/lib/libvirt
mount --bind '$h/log' /var/log/libvirt
mount --bind '$h/cache' /var/cache/libvirt
hostname '$name'
${lxc:+if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi}
exec /usr/sbin/libvirtd --config /etc/libvirt/libvirtd.conf --pid-file /run/libvirt/libvirtd.pid ${ip:+--listen}"
    local -a pre=()
    [ -z "$ns" ] || pre=(ip netns exec "$ns")
    t0=$(_lv_now_ms)
    # setsid: the daemon gets its own session, so a harness that kills the caller's
    # process group (meson does on timeout) cannot orphan the guests.  `ip netns exec`,
    # unshare without --fork and sh's exec all replace themselves, and so does setsid
    # unless the caller has job control; the daemon's own pid file settles it.
    setsid "${pre[@]}" unshare -m -u --propagation private sh -c "$inner" \
        > "$h/daemon.out" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > "$h/libvirtd.pid"

    # Ready = the QEMU driver answers, which includes the capabilities probe.
    uri=$(nube_lv_host_uri "$name")
    deadline=$(( t0 + NUBE_LV_READY_TIMEOUT * 1000 ))
    until virsh -q -c "$uri" version >/dev/null 2>&1; do
        if [ -s "$h/run/libvirtd.pid" ] && [ "$(cat "$h/run/libvirtd.pid")" != "$pid" ]; then
            pid=$(cat "$h/run/libvirtd.pid"); echo "$pid" > "$h/libvirtd.pid"
        fi
        # A dead $! is final once the daemon had time to write its pid file.
        if { ! kill -0 "$pid" 2>/dev/null && [ $(( $(_lv_now_ms) - t0 )) -gt 2000 ]; } ||
           [ "$(_lv_now_ms)" -ge $deadline ]; then
            tail -n 20 "$h/daemon.out" "$h/log/libvirtd.log" >&2 2>/dev/null
            nube_lv_host_stop "$name" >/dev/null 2>&1
            _lv_err "libvirtd for $name did not become ready"; return 1
        fi
        sleep 0.05
    done
    if [ -s "$h/run/libvirtd.pid" ]; then
        pid=$(cat "$h/run/libvirtd.pid"); echo "$pid" > "$h/libvirtd.pid"
    fi
    _lv_log "host $name ready in $(( $(_lv_now_ms) - t0 )) ms (pid $pid${ns:+, netns $ns}${ip:+, $ip})"
    # Share a freshly probed cache; write it aside and rename so readers never see half.
    if ! ls "$NUBE_LV_CAPCACHE"/*.xml >/dev/null 2>&1; then
        local tmp
        mkdir -p "$(dirname "$NUBE_LV_CAPCACHE")"
        if tmp=$(mktemp -d "$NUBE_LV_CAPCACHE.XXXXXX"); then
            rmdir "$NUBE_LV_CAPCACHE" 2>/dev/null
            # mv -T fails when another host published first; then ours is not needed.
            cp -p "$h"/cache/qemu/capabilities/*.xml "$tmp/" 2>/dev/null &&
                mv -T "$tmp" "$NUBE_LV_CAPCACHE" 2>/dev/null
            rm -rf "$tmp"
        fi
    fi
    echo "$uri"
}

# _lv_kill_pidfiles DIR COMM : SIGKILL every live COMM named by a pid file in DIR.
_lv_kill_pidfiles() {
    local f pid
    for f in "$1"/*.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f" 2>/dev/null)
        if _lv_pid_is "$pid" "$2"; then
            kill -KILL "$pid" 2>/dev/null
            _lv_wait_gone "$pid" 5 || true
        fi
    done
}

# nube_lv_host_stop NAME [--purge]
# Destroy the host's guests and networks (definitions stay, like a host that reboots),
# stop libvirtd, remove its namespaces.  --purge also deletes the host's directory.
nube_lv_host_stop() {
    local name=${1:-} purge=${2:-} h pid uri d ns
    h=$(_lv_dir "$name") || return 1
    [ -d "$h" ] || return 0
    uri=$(nube_lv_host_uri "$name")
    if pid=$(nube_lv_host_pid "$name"); then
        for d in $(timeout 20 virsh -q -c "$uri" list --name 2>/dev/null); do
            timeout 20 virsh -q -c "$uri" destroy "$d" >/dev/null 2>&1 || true
        done
        # Containers of a --lxc host (libvirt_lxc processes outlive libvirtd).
        if [ -x /usr/lib/libvirt/libvirt_lxc ]; then
            local lxc; lxc=$(nube_lv_host_uri_lxc "$name")
            for d in $(timeout 20 virsh -q -c "$lxc" list --name 2>/dev/null); do
                timeout 20 virsh -q -c "$lxc" destroy "$d" >/dev/null 2>&1 || true
            done
        fi
        for d in $(timeout 20 virsh -q -c "$uri" net-list --name 2>/dev/null); do
            timeout 20 virsh -q -c "$uri" net-destroy "$d" >/dev/null 2>&1 || true
        done
        kill -TERM "$pid" 2>/dev/null
        if ! _lv_wait_gone "$pid" 10; then
            _lv_log "libvirtd $pid of $name ignored SIGTERM; SIGKILL"
            kill -KILL "$pid" 2>/dev/null
            _lv_wait_gone "$pid" 5 || { _lv_err "libvirtd $pid of $name does not die"; return 1; }
        fi
    fi
    # Whatever the daemon could not clean up (it was killed, or a destroy timed out).
    _lv_kill_pidfiles "$h/run/qemu" qemu-system-x86
    _lv_kill_pidfiles "$h/run/network" dnsmasq
    rm -f "$h/libvirtd.pid"
    if [ -f "$h/netns.created" ]; then
        ns=$(cat "$h/netns.created")
        ip netns del "$ns" 2>/dev/null || true
    elif [ -f "$h/veth.created" ]; then
        # Someone else's namespace: take out only the link this library put in.
        ip -n "$(cat "$h/veth.created")" link del eth0 2>/dev/null || true
    fi
    rm -f "$h/netns.created" "$h/veth.created"
    _lv_hub_down_if_unused
    _lv_cgroups_cleanup
    _lv_mountpoints_cleanup
    [ "$purge" = --purge ] && rm -rf "$h"
    return 0
}

# nube_lv_host_list : NAME STATE PID NETNS IP URI for every host of the base dir.
nube_lv_host_list() {
    local h name pid NETNS IP
    for h in "$NUBE_LV_BASE"/*/; do
        [ -f "$h/host-uuid" ] || continue
        name=$(basename "$h"); NETNS='' IP=''
        # shellcheck disable=SC1091
        [ -f "$h/host.env" ] && . "$h/host.env"
        if pid=$(nube_lv_host_pid "$name" 2>/dev/null); then
            printf '%s running %s %s %s %s\n' "$name" "$pid" "${NETNS:--}" "${IP:--}" "$(nube_lv_host_uri "$name")"
        else
            printf '%s stopped - %s %s -\n' "$name" "${NETNS:--}" "${IP:--}"
        fi
    done
}

# nube_lv_stop_all [--purge] : stop every host of the base dir.  With --purge the base
# dir itself goes too, if nothing else is in it.
nube_lv_stop_all() {
    local h rc=0
    for h in "$NUBE_LV_BASE"/*/; do
        [ -f "$h/host-uuid" ] || continue
        nube_lv_host_stop "$(basename "$h")" "${1:-}" || rc=1
    done
    _lv_hub_down_if_unused
    _lv_cgroups_cleanup
    _lv_mountpoints_cleanup
    if [ "${1:-}" = --purge ]; then rmdir "$NUBE_LV_BASE" 2>/dev/null || true; fi
    return $rc
}

# _lv_fsrel DIR : DIR's path relative to the root of the file system that holds it (DIR
# need not exist any more).
_lv_fsrel() {
    local d=$1 tail='' target fsroot rest
    while [ ! -e "$d" ]; do tail="/$(basename "$d")$tail"; d=$(dirname "$d"); done
    read -r target fsroot < <(findmnt -n -o TARGET,FSROOT -T "$d")
    rest=${d#"$target"}
    echo "${fsroot%/}/${rest#/}$tail" | sed 's://*:/:g; s:/$::'
}

# nube_lv_leftovers : print every trace of this base dir's hosts that is still in the
# machine: processes that still hold its bind mounts (libvirtd, QEMU, dnsmasq), its network
# namespaces, leftover cgroups.  Prints nothing when the machine is clean.
nube_lv_leftovers() {
    local p hub h rel
    # A bind mount shows in /proc/PID/mountinfo as its path inside the file system that
    # holds it (field 4), so look for the base dir's path relative to that file system.
    rel=$(_lv_fsrel "$NUBE_LV_BASE")
    for p in /proc/[0-9]*; do
        if awk -v r="$rel/" 'index($4, r) == 1 { f = 1 } END { exit !f }' "$p/mountinfo" 2>/dev/null; then
            echo "process ${p#/proc/}: $(tr '\0' ' ' < "$p/cmdline" 2>/dev/null | cut -c1-120)"
        fi
    done
    hub=$(_lv_hub)
    if _lv_netns_exists "$hub"; then echo "netns $hub"; fi
    for h in "$NUBE_LV_BASE"/*/; do
        [ -f "$h/netns.created" ] && echo "netns $(cat "$h/netns.created") (of $(basename "$h"))"
    done
    # Empty guest cgroups are leftovers; populated ones belong to live guests (whose
    # processes the mount check above reports if they are ours).
    find /sys/fs/cgroup -path '*machine/qemu-*' -type d 2>/dev/null | while read -r h; do
        [ -n "$(cat "$h/cgroup.procs" 2>/dev/null)" ] || echo "cgroup $h"
    done
    if _lv_no_libvirtd; then
        find /sys/fs/cgroup -maxdepth 2 -name machine -type d 2>/dev/null | sed 's/^/cgroup /'
    fi
    return 0
}
