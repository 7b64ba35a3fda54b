#!/usr/bin/env python3
"""test_hypervisors.py - host capabilities and live resize through the real daemons.

nube-scheduler + nube-api + one nube-agent on a libvirt test:///<file> host with
[agent] live_resize = true (tests/integration/nubelab.py). Checks that the agent's
host.register carries its capabilities (hypervisor_version, cpu_arch land in the
scheduler's hosts table), that a resize to a flavor with the same disks changes vCPUs and
memory without stopping the domain (the agent logs "resized live"; the domain never goes
to SHUTOFF), that confirm keeps the new flavor, and that a resize beyond the domain's
headroom falls back to the cold path. Usage: test_hypervisors.py BUILD_DIR
"""

import os
import sqlite3
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nubelab  # noqa: E402
from nubelab import http, wait_for  # noqa: E402


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    lab = nubelab.Lab(build, host_ram_mb=16384, host_vcpus=8)
    t0 = time.monotonic()
    ok = False
    try:
        lab.start_scheduler()
        lab.start_api()
        # nubelab's start_agent config plus live_resize.
        real_write = lab.write

        def write(name, text):
            if name.startswith("nube-agent-"):
                text = text.replace("[agent]\n", "[agent]\nlive_resize = true\n", 1)
            return real_write(name, text)
        lab.write = write
        agent = lab.start_agent("hv1")
        lab.write = real_write
        wait_for(lambda: "hv1" in lab.hypervisors(), 20, "host registered")

        def caps():
            db = sqlite3.connect(lab.db, timeout=10)
            try:
                return db.execute("SELECT hypervisor_version, cpu_arch FROM hosts"
                                  " WHERE name='hv1'").fetchone()
            finally:
                db.close()
        c = wait_for(lambda: caps() if caps() and caps()[0] else None, 10, "capabilities")
        assert c[0] > 0 and c[1], c
        print(f"ok   capabilities recorded: hypervisor_version {c[0]}, cpu_arch {c[1]}")
        hv = lab.hypervisors()["hv1"]
        assert hv["hypervisor_version"] == c[0], hv
        print("ok   os-hypervisors/detail shows hypervisor_version")

        db = sqlite3.connect(lab.db, timeout=10)
        with db:
            db.execute("INSERT INTO flavors (id, name, vcpus, ram_mb, disk_gb) VALUES"
                       " ('tiny2', 'm1.tiny.2cpu', 2, 1024, 1)")   # same disk as '1'
        db.close()

        r = lab.create_server("grow", flavor="1", image="cirros")
        assert r.status == 202, (r.status, r.raw)
        sid = r.json["server"]["id"]
        s = lab.wait_status(sid, {"ACTIVE", "ERROR"}, timeout=20)
        assert s["status"] == "ACTIVE", s

        r = http("POST", f"{lab.compute}/servers/{sid}/action", {"resize": {"flavorRef": "tiny2"}})
        assert r.status == 202, (r.status, r.raw)
        seen = set()

        def resized():
            st = lab.server(sid)["status"]
            seen.add(st)
            return st in ("VERIFY_RESIZE", "ERROR") and st
        st = wait_for(resized, 20, "VERIFY_RESIZE", interval=0.02)
        assert st == "VERIFY_RESIZE", st
        assert "SHUTOFF" not in seen, seen
        log = open(agent.log_path, errors="replace").read()
        assert f"instance {sid} resized live to 2 vCPUs, 1024 MB" in log, log[-3000:]
        print("ok   resize with equal disk done live (no SHUTOFF, agent: resized live)")
        r = http("POST", f"{lab.compute}/servers/{sid}/action", {"confirmResize": None})
        assert r.status == 204, (r.status, r.raw)
        s = lab.wait_status(sid, {"ACTIVE"}, timeout=10)
        assert s["flavor"]["id"] == "tiny2", s["flavor"]
        print("ok   confirm keeps the new flavor")

        # Beyond the headroom (4x memory): the cold path still resizes.
        db = sqlite3.connect(lab.db, timeout=10)
        with db:
            db.execute("INSERT INTO flavors (id, name, vcpus, ram_mb, disk_gb) VALUES"
                       " ('huge1', 'm1.huge.1disk', 2, 8192, 1)")
        db.close()
        r = http("POST", f"{lab.compute}/servers/{sid}/action", {"resize": {"flavorRef": "huge1"}})
        assert r.status == 202, (r.status, r.raw)
        s = lab.wait_status(sid, {"VERIFY_RESIZE", "ERROR"}, timeout=20)
        assert s["status"] == "VERIFY_RESIZE", s
        log = open(agent.log_path, errors="replace").read()
        assert "live resize not possible" in log and "resizing cold" in log, log[-3000:]
        print("ok   resize beyond the headroom falls back to cold")
        r = http("DELETE", f"{lab.compute}/servers/{sid}")
        assert r.status == 204, (r.status, r.raw)
        wait_for(lambda: lab.server(sid) is None, 20, "server deleted")
        ok = True
    finally:
        codes = lab.stop_all()
        bad = {k: v for k, v in codes.items() if v not in (0, None)}
        if bad:
            print(f"FAIL daemons exited badly: {bad}")
            ok = False
        lab.cleanup(keep=not ok and os.environ.get("NUBE_IT_KEEP") == "1")
    print(f"{'PASS' if ok else 'FAIL'} test_hypervisors ({time.monotonic() - t0:.1f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
