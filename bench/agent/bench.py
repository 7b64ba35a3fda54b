#!/usr/bin/env python3
"""bench/agent/bench.py - boot latency through nube vs raw virsh, and nube-agent RSS.

Run by bench/agent/run (which builds the release binaries); see there for what is
measured. Usage: bench.py BUILD_DIR ROUNDS GUESTS
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(TOP, "tests", "e2e"))
import realhost as rh  # noqa: E402  (the e2e tests' hosts, guest and agent config)
from realhost import http, nubelab, run, wait_for  # noqa: E402


def appears(path, t0, timeout=60.0):
    """Seconds from t0 until path exists (libvirt creates the serial log as it starts
    QEMU: the control plane's part, without the guest's boot)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return time.monotonic() - t0
        time.sleep(0.001)
    raise AssertionError(f"{path} not created after {timeout} s")


def first_line(path, t0, timeout=60.0):
    """Seconds from t0 until path holds a complete first line (polled every 2 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                if b"\n" in f.read(4096):
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.002)
    raise AssertionError(f"no console line in {path} after {timeout} s")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def boot_latency(build, rounds):
    img = rh.guest_image(build)
    base = tempfile.mkdtemp(prefix="nube-bench-agent.")
    lab = nubelab.Lab(build)
    try:
        images = os.path.join(rh.install_guest(lab, img), "busybox")
        uri = rh.Host(base, "bench1").uri
        lab.start_scheduler()
        lab.start_api()
        raw = os.path.join(lab.dir, "raw")
        os.makedirs(raw)
        # log_level info: debug logging would weigh on the latencies measured.
        agent, inst = rh.start_agent(lab, "bench1", uri, os.path.join(lab.dir, "instances"),
                                     agent={"virt_type": "qemu"}, log_level="info",
                                     heartbeat_ms=1000)
        wait_for(lambda: "bench1" in lab.hypervisors(), 20, "host registered")
        print(f"agent RSS on a real QEMU host, 0 guests: {rss_kb(agent.proc.pid)} KiB")

        template = None

        def nube_round():
            nonlocal template
            t0 = time.monotonic()
            r = lab.create_server("bench", flavor="1", image="busybox")
            assert r.status == 202, (r.status, r.raw)
            sid = r.json["server"]["id"]
            st = appears(os.path.join(inst, sid, "console.log"), t0)
            dt = first_line(os.path.join(inst, sid, "console.log"), t0)
            if template is None:
                template = (sid, run("virsh", "-q", "-c", uri, "dumpxml", "--inactive",
                                     f"instance-{sid}"))
            r = http("DELETE", f"{lab.compute}/servers/{sid}")
            assert r.status == 204, (r.status, r.raw)
            wait_for(lambda: lab.server(sid) is None, 30, "server deleted", interval=0.02)
            wait_for(lambda: f"instance-{sid}" not in run("virsh", "-q", "-c", uri, "list",
                                                          "--all", "--name"),
                     30, "domain gone", interval=0.02)
            return st, dt

        def raw_round():
            sid, xml = template
            new = str(uuid.uuid4())
            d = os.path.join(raw, new)
            os.makedirs(d)
            x = xml.replace(os.path.join(inst, sid), d).replace(sid, new)
            x = re.sub(r"\s*<mac address='[^']*'/>", "", x)
            path = os.path.join(d, "domain.xml")
            with open(path, "w") as f:
                f.write(x)
            t0 = time.monotonic()
            run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                os.path.join(images, "disk.qcow2"), os.path.join(d, "disk"), "1G")
            proc = subprocess.Popen(["virsh", "-q", "-c", uri, "create", path],
                                    stdout=subprocess.DEVNULL)
            st = appears(os.path.join(d, "console.log"), t0)
            dt = first_line(os.path.join(d, "console.log"), t0)
            assert proc.wait() == 0, "virsh create failed"
            run("virsh", "-q", "-c", uri, "destroy", f"instance-{new}")
            shutil.rmtree(d)
            return st, dt

        nube_round()          # warm-up: page cache, libvirt, the first define
        raw_round()
        nube, rawt = [], []
        for i in range(rounds):
            order = (nube_round, raw_round) if i % 2 == 0 else (raw_round, nube_round)
            for fn in order:
                (nube if fn is nube_round else rawt).append(fn())
        sn = statistics.median(x[0] for x in nube) * 1000
        sr = statistics.median(x[0] for x in rawt) * 1000
        print(f"start -> QEMU started (serial log created): nube median {sn:.0f} ms, raw "
              f"median {sr:.0f} ms: nube adds {sn - sr:.0f} ms")
        nube = [x[1] for x in nube]
        rawt = [x[1] for x in rawt]
        mn, mr = statistics.median(nube) * 1000, statistics.median(rawt) * 1000
        print(f"POST /servers -> first console line (nube): median {mn:.0f} ms  "
              f"[{', '.join(f'{x * 1000:.0f}' for x in nube)}]")
        print(f"qemu-img + virsh create -> first console line (raw): median {mr:.0f} ms  "
              f"[{', '.join(f'{x * 1000:.0f}' for x in rawt)}]")
        print(f"nube adds {mn - mr:.0f} ms (target <= 200 ms): "
              f"{'OK' if mn - mr <= 200 else 'OVER'}; ratio nube/raw {mn / mr:.2f}")
    finally:
        lab.stop_all()
        rh.stop_hosts(base)
        lab.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def agent_rss(build, guests):
    lab = nubelab.Lab(build, host_ram_mb=max(8192, 512 * guests * 2), host_vcpus=64)
    try:
        lab.start_scheduler()
        lab.start_api()
        agent = lab.start_agent("rss1")
        wait_for(lambda: "rss1" in lab.hypervisors(), 20, "host registered")
        time.sleep(1.0)  # a heartbeat or two: steady state
        r0 = rss_kb(agent.proc.pid)
        ids = []
        for i in range(guests):
            r = lab.create_server(f"rss-{i}", flavor="1", image="cirros")
            assert r.status == 202, (r.status, r.raw)
            ids.append(r.json["server"]["id"])
        for sid in ids:
            s = lab.wait_status(sid, {"ACTIVE", "ERROR"}, timeout=30)
            assert s["status"] == "ACTIVE", s
        time.sleep(1.0)
        r1 = rss_kb(agent.proc.pid)
        print(f"agent RSS (test driver): {r0} KiB with 0 guests, {r1} KiB with {guests} "
              f"guests ({(r1 - r0) / max(guests, 1):.0f} KiB per guest)")
    finally:
        lab.stop_all()
        lab.cleanup()


def main():
    build = os.path.abspath(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    guests = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    if os.geteuid() != 0:
        print("boot latency: SKIPPED (needs root for libvirtd)")
    else:
        boot_latency(build, rounds)
    agent_rss(build, guests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
