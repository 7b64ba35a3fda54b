#!/usr/bin/env python3
"""bench/migration/bench.py BUILD_DIR ROUND_TRIPS - see bench/migration/run."""

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
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
sys.path.insert(0, os.path.join(TOP, "tests", "e2e"))
import nubelab  # noqa: E402
from nubelab import http, wait_for  # noqa: E402
import test_nube_migrate as T  # noqa: E402


def sh(*argv):
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{argv}: {p.stderr.strip()}")
    return p.stdout


def jobinfo(host, dom):
    out = host.virsh("domjobinfo", dom, "--completed")
    el = re.search(r"Time elapsed:\s+(\d+)", out)
    dt = re.search(r"Total downtime:\s+(\d+)", out)
    return (int(el.group(1)) if el else 0, int(dt.group(1)) if dt else 0)


def main():
    if os.geteuid() != 0:
        print("SKIP: needs root")
        return 77
    build, rounds = os.path.abspath(sys.argv[1]), int(sys.argv[2])
    base = tempfile.mkdtemp(prefix="nube-bench-mig.")
    lab = nubelab.Lab(build)
    try:
        return bench(build, base, lab, rounds)
    finally:
        lab.stop_all()
        subprocess.run([os.path.join(TOP, "deploy", "libvirt-host"), "--base", base,
                        "stop-all", "--purge"], capture_output=True)
        lab.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def bench(build, base, lab, rounds):
    hosts, inst = T.setup(build, base, lab, "10.76.0")
    r = lab.create_server("bench", flavor="1", image="busybox")
    sid = r.json["server"]["id"]
    dom = f"instance-{sid}"
    lab.wait_status(sid, {"ACTIVE"}, timeout=60)
    at = T.db_rows(lab, "SELECT host FROM instances WHERE uuid=?", (sid,))[0][0]
    log = lambda h: os.path.join(inst[h], sid, "console.log")  # noqa: E731
    wait_for(lambda: len(T.counters(open(log(at), errors="replace").read())) >= 2, 60,
             "nube guest counting")

    # The raw twin: nube's domain, renamed, its own disks per host, no nube metadata.
    xml = hosts[at].virsh("dumpxml", "--migratable", dom)
    xml = re.sub(r"<metadata>.*?</metadata>", "", xml, flags=re.S)
    raw_uuid = str(uuid.uuid4())
    xml = xml.replace(sid, raw_uuid).replace(f"instance-{raw_uuid}", "rawtwin")
    base_img = os.path.join(lab.dir, "images", "busybox", "disk.qcow2")
    raw_xml = {}
    for h in hosts:
        d = os.path.join(lab.dir, f"raw-{h}")
        os.makedirs(d)
        raw_xml[h] = os.path.join(d, "dom.xml")
        with open(raw_xml[h], "w") as f:
            f.write(xml.replace(os.path.join(inst[at], raw_uuid), d))

    def raw_overlay(h):
        disk = os.path.join(lab.dir, f"raw-{h}", "disk")
        if os.path.exists(disk):
            os.unlink(disk)
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base_img, disk,
           "1G")
    raw_overlay(at)
    sh("virsh", "-q", "-c", hosts[at].uri, "define", raw_xml[at])
    sh("virsh", "-q", "-c", hosts[at].uri, "start", "rawtwin")
    raw_log = lambda h: os.path.join(lab.dir, f"raw-{h}", "console.log")  # noqa: E731
    wait_for(lambda: len(T.counters(open(raw_log(at), errors="replace").read())) >= 2, 60,
             "raw twin counting")
    raw_at = at

    res = {"nube": [], "raw": []}
    for i in range(rounds * 2):
        # nube
        dst = "nubeB" if at == "nubeA" else "nubeA"
        t = time.monotonic()
        r = http("POST", f"{lab.compute}/servers/{sid}/action",
                 {"os-migrateLive": {"host": dst}})
        assert r.status == 202, r.raw

        def moved():
            row = T.db_rows(lab, "SELECT host, task_state FROM instances WHERE uuid=?", (sid,))
            return row and row[0][0] == dst and row[0][1] in ("", "none", None)
        wait_for(moved, 60, "nube migration done", interval=0.005)
        total = (time.monotonic() - t) * 1000
        migs = http("GET", f"{lab.compute}/os-migrations?instance_uuid={sid}",
                    headers={"OpenStack-API-Version": "compute 2.59"}).json["migrations"]
        m = http("GET", f"{lab.compute}/servers/{sid}/migrations/{migs[0]['uuid']}").json
        mm = m["migration"]
        assert mm["status"] == "completed", mm
        res["nube"].append((total, mm["elapsed_ms"], mm["downtime_ms"]))
        print(f"nube  {at} -> {dst}: total {total:.0f} ms, libvirt elapsed "
              f"{mm['elapsed_ms']} ms, downtime {mm['downtime_ms']} ms", flush=True)
        at = dst
        time.sleep(1)  # let the guest settle (bench only)
        # raw
        rdst = "nubeB" if raw_at == "nubeA" else "nubeA"
        raw_overlay(rdst)
        t = time.monotonic()
        sh("virsh", "-q", "-c", hosts[raw_at].uri, "migrate", "--live", "--p2p",
           "--persistent", "--undefinesource", "--copy-storage-inc", "--xml", raw_xml[rdst],
           "--persistent-xml", raw_xml[rdst], "rawtwin",
           f"qemu+tcp://{hosts[rdst].ip}/system", "--migrateuri", f"tcp://{hosts[rdst].ip}")
        total = (time.monotonic() - t) * 1000
        el, dt = jobinfo(hosts[rdst], "rawtwin")
        res["raw"].append((total, el, dt))
        print(f"virsh {raw_at} -> {rdst}: total {total:.0f} ms, libvirt elapsed {el} ms, "
              f"downtime {dt} ms", flush=True)
        raw_at = rdst
        time.sleep(1)

    med = {k: [statistics.median(x[j] for x in v) for j in range(3)] for k, v in res.items()}
    print(f"== {len(res['nube'])} migrations each, medians ==")
    for k in ("nube", "raw"):
        print(f"{k:5s} total {med[k][0]:.0f} ms, libvirt elapsed {med[k][1]:.0f} ms, "
              f"downtime {med[k][2]:.0f} ms (max {max(x[2] for x in res[k])} ms)")
    ratio = med["nube"][0] / med["raw"][0]
    print(f"ratio total time nube/virsh: {ratio:.2f} (target <= 1.1)")
    print(f"ratio downtime nube/virsh: {med['nube'][2] / max(med['raw'][2], 1):.2f}; "
          f"configured max downtime 500 ms: "
          f"{'within' if max(x[2] for x in res['nube']) <= 500 else 'EXCEEDED'}")
    sh("virsh", "-q", "-c", hosts[raw_at].uri, "destroy", "rawtwin")
    sh("virsh", "-q", "-c", hosts[raw_at].uri, "undefine", "rawtwin")
    return 0


if __name__ == "__main__":
    sys.exit(main())
