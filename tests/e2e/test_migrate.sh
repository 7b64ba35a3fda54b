#!/usr/bin/env bash
# tests/e2e/test_migrate.sh - live migration of a running guest between two lab hosts.
#
# Two libvirt hosts, each in its own network namespace with its own address, host UUID
# and hostname, joined by the lab's hub bridge; storage is not shared (each host has its
# own /var/lib/libvirt/images with its own copy of the base disk, as an image cache would).
# The guest prints a counter on its serial console; each host logs the console into its
# own /var/log/libvirt.  The test migrates A -> B and back B -> A with
#   virsh migrate --live --p2p --persistent --undefinesource --copy-storage-inc
# (peer to peer: the source libvirtd talks to qemu+tcp://<dest ip>/system itself; the
# destination overlay is pre-created on its own base, as libvirt only pre-creates volumes
# of storage pools) and asserts after each move that the destination's console continues
# the counter without a second boot marker, that the domain is defined only on the
# destination and that the source's QEMU is gone.  Prints TIME lines and "N passed, N failed".
set -u
. "$(dirname "$0")/lib.sh" "$@"

A=e2e-mig-a
B=e2e-mig-b
NSA=nube-e2e-a-$$
NSB=nube-e2e-b-$$
IPA=10.77.0.1
IPB=10.77.0.2
G=mig1

require "guest image built" e2e_guest_image
nube_lv_prepare || { bad "packages and libvirt-qemu user"; e2e_finish; }

t0=$(e2e_now_ms)
# Called in this shell, not in $(...): the daemons stay our children and are reaped by us.
require "host $A started in netns $NSA" \
    nube_lv_host_start $A --netns $NSA --ip $IPA/24 --uuid 11111111-1111-4111-8111-111111111111 >/dev/null
t1=$(e2e_now_ms)
require "host $B started in netns $NSB" \
    nube_lv_host_start $B --netns $NSB --ip $IPB/24 --uuid 22222222-2222-4222-8222-222222222222 >/dev/null
UA=$(nube_lv_host_uri $A)
UB=$(nube_lv_host_uri $B)
echo "TIME host-start $A $(( t1 - t0 )) ms, $B $(( $(e2e_now_ms) - t1 )) ms"
check "$A reaches $B's libvirtd over TCP" \
    test "$(ip netns exec $NSA virsh -q -c qemu+tcp://$IPB/system hostname 2>/dev/null)" = $B
check "$B reaches $A's libvirtd over TCP" \
    test "$(ip netns exec $NSB virsh -q -c qemu+tcp://$IPA/system hostname 2>/dev/null)" = $A

e2e_host_images $A >/dev/null && e2e_host_images $B >/dev/null
require "overlay on $A" e2e_overlay $A $G
e2e_domxml $G > "$NUBE_LV_BASE/$G.xml"
require "define $G on $A" virsh -q -c "$UA" define "$NUBE_LV_BASE/$G.xml"
require "start $G on $A" virsh -q -c "$UA" start $G
LA=$(e2e_serial $A $G)
LB=$(e2e_serial $B $G)
require "$G boots on $A" e2e_wait_for "$LA" NUBE-GUEST-BOOTED 60
require "$G counts on $A" e2e_wait_for "$LA" '^COUNTER 3 ' 20

# migrate SRC_URI DST_HOST DST_IP : one live migration with the timing and job stats.
migrate() {
    local t0 rc
    t0=$(e2e_now_ms)
    timeout 60 virsh -q -c "$1" migrate --live --p2p --persistent --undefinesource \
        --copy-storage-inc $G "qemu+tcp://$3/system"
    rc=$?
    echo "TIME migrate -> $2 $(( $(e2e_now_ms) - t0 )) ms (virsh wall)"
    virsh -q -c "$(nube_lv_host_uri "$2")" domjobinfo $G --completed 2>/dev/null |
        grep -E 'Time elapsed:|[Dd]owntime|Memory processed:|Disk processed:|File processed:' | sed 's/^/      /'
    return $rc
}

# continues SRC_LOG DST_LOG : the destination console goes on counting where the source
# stopped, and the guest did not boot again.
continues() {
    local last first
    e2e_wait_for "$2" '^COUNTER [0-9]+ ' 20 || { echo "no counter on the destination"; return 1; }
    last=$(e2e_counters "$1" | tail -n1)
    first=$(e2e_counters "$2" | head -n1)
    echo "      source last COUNTER $last, destination first COUNTER $first, boot markers on destination: $(e2e_boots "$2")"
    [ "$(e2e_boots "$2")" = 0 ] && [ -n "$last" ] && [ -n "$first" ] &&
        [ "$first" -gt "$last" ] && [ "$first" -le $((last + 4)) ]
}

QA=$(cat "$NUBE_LV_BASE/$A/run/qemu/$G.pid")
# The destination disk must exist: the same overlay on B's own base image.
require "overlay on $B" e2e_overlay $B $G
check "live migration $A -> $B" migrate "$UA" $B $IPB
check "$G runs on $B" test "$(virsh -q -c "$UB" domstate $G 2>/dev/null)" = running
check "$G is persistent on $B" grep -qE 'Persistent: +yes' <(virsh -q -c "$UB" dominfo $G)
check "$G is no longer defined on $A" test -z "$(virsh -q -c "$UA" list --all --name)"
check "$A's QEMU for $G is gone" test ! -d "/proc/$QA"
check "counter continues on $B without a reboot" continues "$LA" "$LB"
check "counter advances on $B" e2e_wait_for "$LB" "^COUNTER $(( $(e2e_counters "$LB" | head -n1) + 4 )) " 10

# And back, onto a fresh overlay on A (the old one is stale: the guest wrote on B since).
QB=$(cat "$NUBE_LV_BASE/$B/run/qemu/$G.pid")
: > "$LA"
require "fresh overlay on $A" e2e_overlay $A $G
check "live migration $B -> $A" migrate "$UB" $A $IPA
check "$G runs on $A again" test "$(virsh -q -c "$UA" domstate $G 2>/dev/null)" = running
check "$G is no longer defined on $B" test -z "$(virsh -q -c "$UB" list --all --name)"
check "$B's QEMU for $G is gone" test ! -d "/proc/$QB"
check "counter continues on $A without a reboot" continues "$LB" "$LA"

check "destroy $G" virsh -q -c "$UA" destroy $G
check "undefine $G" virsh -q -c "$UA" undefine $G
t0=$(e2e_now_ms)
check "stop $A" nube_lv_host_stop $A
check "stop $B" nube_lv_host_stop $B
echo "TIME host-stop both $(( $(e2e_now_ms) - t0 )) ms"
check "network namespaces $NSA and $NSB are gone" not grep -qE "^($NSA|$NSB)( |\$)" <(ip netns list)
e2e_finish
