# tests/e2e/lib.sh - shared helpers of the end-to-end tests (sourced, not run).
# shellcheck shell=bash
#
# The e2e tests use the real things: libvirtd daemons started with deploy/lib/libvirt.sh
# (each an isolated lab "host" under a private base dir made for the test), the guest
# built by deploy/build-guest-image, and real TCG guests.  Every test:
#   * skips (exit 77, meson's SKIP) when not run as root;
#   * counts its checks and ends with "N passed, N failed" and a non-zero status on any
#     failure (e2e_finish);
#   * cleans up in an EXIT trap: stops every host of its base dir, deletes the dir, and
#     asserts that nothing is left in the machine (processes holding the hosts' mounts,
#     network namespaces, cgroups).  A detached guard process repeats that cleanup if
#     the test is killed before its trap could finish (see E2E_GUARD below).
#
# Usage in a test:  . "$(dirname "$0")/lib.sh" "$@"   (argument 1: meson's build root)

E2E_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
E2E_BUILD=${1:-${MESON_BUILD_ROOT:-$E2E_TOP/build-e2e}}
E2E_PASS=0
E2E_FAIL=0
kernel='' ramdisk='' disk=''    # the guest image set (e2e_guest_image)

if [ "$(id -u)" != 0 ]; then
    echo "SKIP: the e2e tests start libvirtd and namespaces and need root"
    exit 77
fi

NUBE_LV_BASE=$(mktemp -d /tmp/nube-e2e.XXXXXX)
export NUBE_LV_BASE
# NUBE_E2E_COLD=1: start from an empty QEMU capabilities cache, to measure a cold start.
if [ "${NUBE_E2E_COLD:-0}" = 1 ]; then
    NUBE_LV_CAPCACHE=$NUBE_LV_BASE/capcache
    export NUBE_LV_CAPCACHE
fi
. "$E2E_TOP/deploy/lib/libvirt.sh"

e2e_log() { printf '[%s] %s\n' "$(date +%T.%3N)" "$*"; }
e2e_now_ms() { date +%s%3N; }

# ok DESC / bad DESC : record one check's result.
ok()  { E2E_PASS=$((E2E_PASS + 1)); printf 'ok   %s\n' "$*"; }
bad() { E2E_FAIL=$((E2E_FAIL + 1)); printf 'FAIL %s\n' "$*"; }
# not CMD... : status 0 when CMD fails.
not() { ! "$@"; }
# check DESC CMD... : run CMD, record its status as a check.
check() { local d=$1; shift; if "$@"; then ok "$d"; else bad "$d"; fi; }
# require DESC CMD... : like check, but the test cannot go on without it.
require() {
    local d=$1; shift
    if "$@"; then ok "$d"; else bad "$d"; e2e_finish; fi
}

# e2e_wait_for FILE EREGEX SECONDS : poll FILE until a line matches, with a deadline.
e2e_wait_for() {
    local deadline=$(( $(e2e_now_ms) + $3 * 1000 ))
    until grep -aqE "$2" "$1" 2>/dev/null; do
        [ "$(e2e_now_ms)" -lt $deadline ] || return 1
        sleep 0.05
    done
}

# e2e_wait_cmd SECONDS CMD... : poll until CMD succeeds, with a deadline.
e2e_wait_cmd() {
    local deadline=$(( $(e2e_now_ms) + $1 * 1000 )); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(e2e_now_ms)" -lt $deadline ] || return 1
        sleep 0.1
    done
}

# e2e_guest_image : build (or reuse) the test guest; sets kernel, ramdisk, disk.
e2e_guest_image() {
    local out
    out=$("$E2E_TOP/deploy/build-guest-image" "${NUBE_E2E_GUEST_DIR:-$E2E_BUILD/tests/e2e/guest}") ||
        return 1
    eval "$out"
    [ -s "$kernel" ] && [ -s "$ramdisk" ] && [ -s "$disk" ]
}

# e2e_host_images NAME : the host's image dir (/var/lib/libvirt/images inside it), with
# a copy of the guest's base disk, as an image cache would hold it.
e2e_host_images() {
    local d="$NUBE_LV_BASE/$1/lib/images"
    mkdir -p "$d" && cp --sparse=always "$disk" "$d/base.qcow2" && echo "$d"
}

# e2e_overlay HOST GUEST : a qcow2 overlay GUEST.qcow2 on the host's base.qcow2.  The
# backing path is relative, so it resolves in the daemon's namespace and in ours; the
# backing format is stated so QEMU never probes it.
e2e_overlay() {
    (cd "$NUBE_LV_BASE/$1/lib/images" && rm -f "$2.qcow2" &&
        qemu-img create -q -f qcow2 -F qcow2 -b base.qcow2 "$2.qcow2")
}

# e2e_serial HOST GUEST : the guest's serial log as seen from outside the host.
e2e_serial() { echo "$NUBE_LV_BASE/$1/log/qemu/$2-serial.log"; }

# e2e_domxml GUEST : a TCG domain with direct kernel boot, a virtio disk (the overlay in
# the host's image dir), a user-mode virtio NIC, the serial console in a file and a
# virtio balloon with stats.  on_poweroff destroy: an ACPI power-off ends the domain.
e2e_domxml() {
    cat <<EOF
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$kernel</kernel>
    <initrd>$ramdisk</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/$1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'><model type='virtio'/></interface>
    <serial type='file'>
      <source path='/var/log/libvirt/qemu/$1-serial.log' append='on'/>
    </serial>
    <memballoon model='virtio'><stats period='5'/></memballoon>
  </devices>
</domain>
EOF
}

# e2e_counters FILE : the COUNTER numbers in a serial log, one a line.
e2e_counters() { tr -d '\r' < "$1" 2>/dev/null | sed -n 's/^COUNTER \([0-9]*\) .*/\1/p'; }
e2e_boots() { grep -ac NUBE-GUEST-BOOTED "$1" 2>/dev/null || true; }

e2e_cleanup() {
    local rc=$? left
    trap - EXIT INT TERM
    nube_lv_stop_all --purge >/dev/null 2>&1
    left=$(nube_lv_leftovers)
    rm -rf "$NUBE_LV_BASE"
    kill "$E2E_GUARD" 2>/dev/null
    if [ -n "$left" ]; then
        printf 'FAIL cleanup left behind:\n%s\n' "$left"
        [ $rc -ne 0 ] || rc=1
    fi
    exit $rc
}
trap e2e_cleanup EXIT
trap 'exit 1' INT TERM

# The guard: a process in its own session that waits for this test to end and then stops
# whatever it left.  It covers what no trap can: meson's timeout sends SIGTERM to the
# test's process group and SIGKILL 0.5 s later, while a running virsh can hold the trap
# back for longer.  After a normal end the test kills the guard, which then does nothing.
setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
    "$2" --base "$3" stop-all --purge && rm -rf "$3"' e2e-guard \
    $$ "$E2E_TOP/deploy/libvirt-host" "$NUBE_LV_BASE" > /dev/null 2>&1 < /dev/null &
E2E_GUARD=$!

# e2e_finish : stop the hosts, check that nothing is left, print the tally, exit.
e2e_finish() {
    local left
    trap - EXIT INT TERM
    nube_lv_stop_all --purge >/dev/null 2>&1
    left=$(nube_lv_leftovers)
    if [ -z "$left" ]; then ok "nothing left behind (processes, mounts, netns, cgroups)"
    else bad "cleanup left behind: $left"; fi
    check "no host directory left in the base dir" test -z "$(nube_lv_host_list)"
    kill "$E2E_GUARD" 2>/dev/null
    rm -rf "$NUBE_LV_BASE"
    echo "$E2E_PASS passed, $E2E_FAIL failed"
    [ $E2E_FAIL -eq 0 ] || exit 1
    exit 0
}
