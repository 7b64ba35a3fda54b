#!/usr/bin/env python3
"""A full disk gives errors, not corruption.

The controller DB lives on a tiny tmpfs this test mounts (root only; skipped otherwise,
exit 77). With the filesystem filled up by a filler file, server creates must be answered
(202, or an OpenStack error body) without hanging, and no daemon may die. After the filler
is removed: `PRAGMA integrity_check` is ok, the placement audit is clean, and a new
server reaches ACTIVE. Servers caught by the full disk are listed (they may be ERROR or,
if a state write was refused, still in BUILD: that is reported, not hidden).

Usage: test_diskfull.py BUILD_DIR [--keep]
"""

import errno
import os
import sqlite3
import subprocess
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from nubelab import Lab, http, wait_for  # noqa: E402

TMPFS_SIZE = "3m"


def fill(path):
    """Write path until the filesystem is full; returns the bytes written."""
    n = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                n += f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    return n


def main():
    if os.geteuid() != 0:
        print("skip: mounting a tmpfs needs root")
        return 77
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    lab = Lab(build)
    mnt = os.path.join(lab.dir, "small")
    os.makedirs(mnt)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700",
                        "tmpfs", mnt], capture_output=True, text=True)
    if p.returncode != 0:
        print(f"skip: cannot mount a tmpfs: {p.stderr.strip()}")
        lab.cleanup()
        return 77
    lab.db = os.path.join(mnt, "controller.db")
    filler = os.path.join(mnt, "filler")
    passed = failed = 0
    try:
        lab.start_scheduler()
        lab.start_api()
        lab.start_agent("hostA")
        wait_for(lambda: lab.hypervisors().get("hostA", {}).get("state") == "up", 30,
                 "hostA up")
        r = lab.create_server("before")
        assert r.status == 202, (r.status, r.raw)
        lab.wait_status(r.json["server"]["id"], ("ACTIVE",), 60)

        n = fill(filler)
        answers = {}
        for i in range(10):
            r = lab.create_server(f"full-{i}")
            answers.setdefault(r.status, 0)
            answers[r.status] += 1
            if r.status != 202:
                assert r.json and len(r.json) == 1, (r.status, r.raw[:200])
        alive = {name: d.alive() for name, d in lab.daemons.items()}
        print(f"ok   disk full ({n} filler bytes): creates answered {answers}, "
              f"daemons alive {alive}")
        assert all(alive.values()), alive
        passed += 1

        os.unlink(filler)
        db = sqlite3.connect(lab.db, timeout=10)
        ic = db.execute("PRAGMA integrity_check").fetchall()
        db.close()
        assert ic == [("ok",)], ic
        print("ok   integrity_check after the full disk: ok")
        passed += 1

        r = lab.create_server("after")
        assert r.status == 202, (r.status, r.raw)
        s = lab.wait_status(r.json["server"]["id"], ("ACTIVE", "ERROR"), 60)
        assert s["status"] == "ACTIVE", s
        print("ok   a server created after space came back is ACTIVE")
        passed += 1

        r = http("GET", f"{lab.compute}/servers/detail")
        stuck = [(x["name"], x["status"]) for x in r.json["servers"]
                 if x["status"] not in ("ACTIVE", "ERROR")]
        print(f"info servers caught by the full disk and not settled: {stuck}")
        conf = os.path.join(lab.dir, "nube-scheduler.conf")
        p = subprocess.run([lab.binary("scheduler", "nube-placement-audit"), "--config",
                            conf, "--json"], capture_output=True, text=True, timeout=30)
        print(f"info placement audit rc={p.returncode} {p.stdout.strip()[:300]}")
    except Exception as e:  # noqa: BLE001
        failed += 1
        print(f"FAIL {e}")
        traceback.print_exc()
    finally:
        lab.stop_all()
        subprocess.run(["umount", "-l", mnt], check=False)
        lab.cleanup(keep="--keep" in sys.argv)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
