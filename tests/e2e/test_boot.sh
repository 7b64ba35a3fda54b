#!/usr/bin/env bash
# tests/e2e/test_boot.sh - one isolated libvirt host boots and ends real TCG guests.
#
# Proves the lab on this machine: a libvirtd started by deploy/lib/libvirt.sh answers with
# its own hostname and host UUID; the guest from deploy/build-guest-image boots with a
# hand-written domain (type='qemu', direct kernel boot, qcow2 overlay with its backing
# format, serial console to a file) through virsh and shows its boot marker, disk and
# counter on the console; `virsh shutdown` (ACPI power button) powers it off cleanly and
# `virsh destroy` ends a second one; stopping the host leaves nothing behind.
# Prints the timings it measures (TIME lines) and "N passed, N failed".
set -u
. "$(dirname "$0")/lib.sh" "$@"

H=e2e-boot
require "guest image built" e2e_guest_image
nube_lv_prepare || { bad "packages and libvirt-qemu user"; e2e_finish; }

ncache=$(ls "$NUBE_LV_CAPCACHE"/*.xml 2>/dev/null | wc -l)
t0=$(e2e_now_ms)
# Called in this shell, not in $(...): libvirtd stays our child and is reaped by us
# (this machine's PID 1 is slow to reap the orphans it adopts).
require "host $H started" nube_lv_host_start "$H" >/dev/null
URI=$(nube_lv_host_uri "$H")
echo "TIME host-start $(( $(e2e_now_ms) - t0 )) ms ($ncache cached QEMU capabilities files before the start)"
V=(virsh -q -c "$URI")
check "host answers with its own hostname" test "$("${V[@]}" hostname)" = "$H"
check "host reports the UUID it was given" \
    grep -q "<uuid>$(cat "$NUBE_LV_BASE/$H/host-uuid")</uuid>" <("${V[@]}" capabilities)
check "starting a running host again is a no-op" test "$(nube_lv_host_start "$H" 2>/dev/null)" = "$URI"

IMG=$(e2e_host_images "$H")
require "base disk in the host's image dir" test -s "$IMG/base.qcow2"

# --- g1: boot, console, ACPI power-off
e2e_overlay "$H" g1
check "overlay names its backing file and format" \
    grep -q 'backing file format: qcow2' <(qemu-img info "$IMG/g1.qcow2")
e2e_domxml g1 > "$NUBE_LV_BASE/g1.xml"
LOG=$(e2e_serial "$H" g1)
t0=$(e2e_now_ms)
require "virsh create g1" "${V[@]}" create "$NUBE_LV_BASE/g1.xml"
t1=$(e2e_now_ms)
require "g1 boot marker on the serial console" e2e_wait_for "$LOG" NUBE-GUEST-BOOTED 60
t2=$(e2e_now_ms)
echo "TIME virsh-create $(( t1 - t0 )) ms, create-to-boot-marker $(( t2 - t0 )) ms"
check "g1 sees its virtio disk (64 MiB)" e2e_wait_for "$LOG" '^NUBE-GUEST-DISK vda 131072' 5
check "g1 counter advances" e2e_wait_for "$LOG" '^COUNTER 3 ' 20
check "g1 got a DHCP lease on its virtio NIC" e2e_wait_for "$LOG" '^NUBE-GUEST-IP 10\.0\.2\.' 20
check "g1 is running" test "$("${V[@]}" domstate g1)" = running

t0=$(e2e_now_ms)
check "virsh shutdown g1 (ACPI)" "${V[@]}" shutdown g1
check "g1 powers itself off on the ACPI event" e2e_wait_for "$LOG" '^NUBE-GUEST-POWEROFF' 20
check "g1 domain is gone after power-off" \
    e2e_wait_cmd 20 not "${V[@]}" domstate g1
echo "TIME acpi-shutdown $(( $(e2e_now_ms) - t0 )) ms"

# --- g2: boot, destroy
e2e_overlay "$H" g2
e2e_domxml g2 > "$NUBE_LV_BASE/g2.xml"
LOG=$(e2e_serial "$H" g2)
t0=$(e2e_now_ms)
require "virsh create g2" "${V[@]}" create "$NUBE_LV_BASE/g2.xml"
require "g2 boot marker" e2e_wait_for "$LOG" NUBE-GUEST-BOOTED 60
echo "TIME create-to-boot-marker (second guest) $(( $(e2e_now_ms) - t0 )) ms"
QPID=$(cat "$NUBE_LV_BASE/$H/run/qemu/g2.pid")
check "g2 QEMU process runs" kill -0 "$QPID"
check "virsh destroy g2" "${V[@]}" destroy g2
check "g2 QEMU process is gone" test ! -d "/proc/$QPID"
check "no domain left on the host" test -z "$("${V[@]}" list --all --name)"

# --- the host stops cleanly and can be stopped twice
t0=$(e2e_now_ms)
check "host stops" nube_lv_host_stop "$H"
echo "TIME host-stop $(( $(e2e_now_ms) - t0 )) ms"
check "host is not running" not nube_lv_host_running "$H"
check "stopping a stopped host is a no-op" nube_lv_host_stop "$H"
e2e_finish
