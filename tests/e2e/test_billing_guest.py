#!/usr/bin/env python3
"""test_billing_guest.py - a real guest's CPU time and network traffic, billed (issue 7).

Reuses test_nube_guest.py's setup: one isolated libvirtd host in its own network
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
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_nube_guest as g  # noqa: E402  (its Host, run, check and counters)
from test_nube_guest import check, ok, run  # noqa: E402

nubelab = g.nubelab
http, wait_for = g.http, g.wait_for

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


def start_billing(lab):
    port, bus = nubelab.free_port(), f"tcp://127.0.0.1:{nubelab.free_port()}"
    conf = lab.write("nube-billing.conf", f"""[DEFAULT]
log_level = debug
state_dir = {lab.dir}
[billing]
listen = 127.0.0.1
port = {port}
bus_listen = {bus}
rate_interval_s = 1
min_charge_s = 0
[database]
connection = {lab.dir}/billing.db
[auth]
admin_token = {nubelab.ADMIN_TOKEN}
[prices]
cpu_core_hour = 36000
net_gb_in = 10000
net_gb_out = 10000
""")
    lab._start("billing", lab.binary("billing", "nube-billing"), conf,
               f"http://127.0.0.1:{port}/healthz")
    return f"http://127.0.0.1:{port}", bus


def scenario(build, base, lab):
    out = run(os.path.join(g.TOP, "deploy", "build-guest-image"),
              os.path.join(build, "tests", "e2e", "guest"))
    img = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    images = os.path.join(lab.dir, "images", "busybox")
    os.makedirs(images)
    for name, key in (("kernel", "kernel"), ("ramdisk", "ramdisk"), ("disk.qcow2", "disk")):
        os.symlink(img[key], os.path.join(images, name))
    with open(os.path.join(images, "cmdline"), "w") as f:
        f.write("console=ttyS0 panic=-1\n")
    ns = f"nube-bill-{os.getpid() % 100000}"
    host = g.Host(base, "nubeB", ns, "10.78.0.1/24")
    ok(f"libvirt host up: {host.uri}")

    lab.start_scheduler()
    lab.start_api()
    billing, bus = start_billing(lab)
    inst_dir = os.path.join(lab.dir, "instances")
    os.makedirs(inst_dir)
    agent_port = nubelab.free_port()
    lab.agent_ports["nubeB"] = agent_port
    conf = lab.write("nube-agent-nubeB.conf", f"""[DEFAULT]
log_level = debug
state_dir = {lab.dir}
[agent]
host = nubeB
libvirt_uri = {host.uri}
heartbeat_interval_ms = 300
instances_dir = {inst_dir}
virt_type = auto
image_dir = {os.path.join(lab.dir, "images")}
network = nube
shutdown_timeout_s = 10
[billing]
endpoint = {bus}
sample_interval_s = 1
[bus]
scheduler_endpoint = tcp://127.0.0.1:{lab.bus_port}
resend_ms = 300
[http]
listen = 127.0.0.1
port = {agent_port}
""")
    lab._start("agent-nubeB", lab.binary("compute-agent", "nube-agent"), conf,
               f"http://127.0.0.1:{agent_port}/healthz")
    wait_for(lambda: "nubeB" in lab.hypervisors(), 20, "host registered")

    t0 = int(time.time() * 1000) - 1000
    r = lab.create_server("billed", flavor="1", image="busybox")
    if not check(f"POST /servers 202 ({r.status})", r.status == 202):
        return 1
    sid = r.json["server"]["id"]
    s = lab.wait_status(sid, {"ACTIVE", "ERROR"}, timeout=60)
    if not check(f"server ACTIVE ({s['status']})", s["status"] == "ACTIVE"):
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
    if os.geteuid() != 0:
        print("SKIP: needs root (starts libvirtd and namespaces)")
        return 77
    build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(g.TOP, "build"))
    base = tempfile.mkdtemp(prefix="nube-e2e-billing.")
    lab = nubelab.Lab(build)
    rc = 1
    try:
        rc = scenario(build, base, lab)
    except Exception as e:  # noqa: BLE001 - reported as a failure, cleanup still runs
        check(f"scenario: {e!r}", False)
    finally:
        for name, code in lab.stop_all().items():
            check(f"{name} exited cleanly ({code})", code in (0, None))
        run(os.path.join(g.TOP, "deploy", "libvirt-host"), "--base", base, "stop-all",
            "--purge", check_rc=False)
        lab.cleanup(keep=g.FAIL > 0 and os.environ.get("NUBE_E2E_KEEP") == "1")
        shutil.rmtree(base, ignore_errors=True)
        print(f"{g.PASS} passed, {g.FAIL} failed ({time.monotonic() - g.T0:.1f} s)")
    return 1 if g.FAIL or rc else 0


if __name__ == "__main__":
    sys.exit(main())
