#!/usr/bin/env python3
"""test_billing_guest.py - a real guest's CPU time and network traffic, billed (issue 7).

The shared real-host setup (realhost.py): one isolated libvirtd host in its own network
namespace (deploy/libvirt-host), the busybox guest of deploy/build-guest-image booted
under QEMU TCG by a nube-agent whose [billing] endpoint is a real nube-billing (1 s
sample interval). The guest burns CPU (booting under TCG costs seconds of CPU) and moves
network traffic: its DHCP exchange, then 40 pings of 1200 bytes from the host's
namespace to the guest's address (about 49 kB each way). After a rating pass, the
billing API's usage for that instance must show CPU time (meter cpu, ns) and bytes in
and out (meters net_in, net_out) at least as large as what the test caused, read from
libvirt's own counters by the agent. Exits 77 (skip) when not root.
Usage: test_billing_guest.py BUILD_DIR
"""

import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import realhost as rh  # noqa: E402
from realhost import check, http, ok, wait_for  # noqa: E402

PINGS, PING_SIZE = 40, 1200

PINGER = r"""
import os, socket, struct, sys, time
ip, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF
sk = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sk.settimeout(0.5)
ident, got = os.getpid() & 0xFFFF, set()
for seq in range(n):
    payload = bytes(size)
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + payload), ident, seq) + payload
    sk.sendto(pkt, (ip, 0))
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        try:
            data, addr = sk.recvfrom(65535)
        except socket.timeout:
            break
        t, _, _, rid, rseq = struct.unpack("!BBHHH", data[20:28])
        if t == 0 and rid == ident:
            got.add(rseq)
            if rseq == seq:
                break
print(f"{n} transmitted, {len(got)} received")
"""


def scenario(build, base, lab):
    rh.install_guest(lab, rh.guest_image(build))
    ns = f"nube-bill-{rh.net_tag()}"
    host = rh.Host(base, "nubeB", ns, "10.78.0.1")
    ok(f"libvirt host up: {host.uri}")

    lab.start_scheduler()
    lab.start_api()
    b = rh.start_billing(lab, extra="""rate_interval_s = 1
min_charge_s = 0
[prices]
cpu_core_hour = 36000
net_gb_in = 10000
net_gb_out = 10000""")
    billing = b["url"]
    rh.start_agent(lab, "nubeB", host.uri, os.path.join(lab.dir, "instances"), agent={
        "virt_type": "auto", "network": "nube", "shutdown_timeout_s": "10"},
        extra=f"""[billing]
endpoint = {b["bus"]}
sample_interval_s = 1""")
    wait_for(lambda: "nubeB" in lab.hypervisors(), 20, "host registered")

    t0 = int(time.time() * 1000) - 1000
    sid = rh.boot_active(lab, "billed")
    if not sid:
        return 1

    def console():
        r = http("POST", f"{lab.compute}/servers/{sid}/action", {"os-getConsoleOutput": {}})
        return r.json["output"] if r.status == 200 else ""

    def guest_ip():
        m = re.search(r"NUBE-GUEST-IP (\d+\.\d+\.\d+\.\d+)/", console())
        return m.group(1) if m else None
    ip = wait_for(guest_ip, 60, "guest DHCP address on the console", interval=0.2)
    ok(f"guest has {ip} (DHCP traffic)")
    # No ping(8) on the test machine: ICMP echo from a raw socket in the host's namespace.
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PINGER, ip,
                        str(PINGS), str(PING_SIZE)], capture_output=True, text=True, timeout=60)
    got = re.search(r"(\d+) received", p.stdout)
    replies = int(got.group(1)) if got else 0
    if not check(f"{replies}/{PINGS} pings answered by the guest", replies >= PINGS // 2):
        print(p.stdout[-400:], p.stderr[-400:])
        print(subprocess.run(["ip", "netns", "exec", ns, "ip", "-br", "addr"],
                             capture_output=True, text=True).stdout)
    moved = replies * (PING_SIZE + 28)

    def usage():
        http("POST", f"{billing}/v1/rate", {"start": t0 - 3600000,
                                            "end": int(time.time() * 1000) + 3600000})
        r = http("GET", f"{billing}/v1/usage?start={t0 - 3600000}"
                 f"&end={int(time.time() * 1000) + 3600000}")
        q = {}
        for row in (r.json or {}).get("usage", []):
            if row["resource"] == sid:
                q[row["meter"]] = row["quantity"]
        ready = q.get("cpu", 0) > 0 and q.get("net_in", 0) >= moved and \
            q.get("net_out", 0) >= moved
        return q if ready else None
    try:
        q = wait_for(usage, 30, "CPU time and traffic in billing's usage", interval=1.0)
    except AssertionError as e:
        check(f"billing usage shows the guest's CPU and traffic: {e}", False)
        return 1
    check(f"CPU time billed: {q['cpu'] / 1e9:.2f} s of guest CPU (TCG boot)",
          q["cpu"] >= 100_000_000)
    check(f"traffic billed: {q['net_in']} B in, {q['net_out']} B out (>= {moved} B pinged)",
          q["net_in"] >= moved and q["net_out"] >= moved)
    r = http("DELETE", f"{lab.compute}/servers/{sid}")
    check(f"DELETE 204 ({r.status})", r.status == 204)
    wait_for(lambda: http("GET", f"{lab.compute}/servers/{sid}").status == 404, 60,
             "server gone")
    return 0


def main():
    return rh.main("nube-e2e-billing.", scenario)


if __name__ == "__main__":
    sys.exit(main())
