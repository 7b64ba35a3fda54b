#!/usr/bin/env python3
"""test_nube_migrate.py - live migration of a real guest through nube (issue 8, e2e suite).

Two isolated libvirtd hosts (deploy/libvirt-host, each in its own network namespace with
its own address, host UUID and TCP listener, joined by the lab's hub bridge), one
nube-agent per host in the root namespace (it reaches its libvirtd through the pathname
unix socket; the *source libvirtd* reaches the destination's TCP listener itself:
peer-to-peer, so the agents advertise [agent] migration_uri/migration_address = the
host's hub address), nube-scheduler + nube-api from tests/integration/nubelab.py.
Storage is not shared: each agent has its own instances_dir (the incremental block copy
runs into an overlay the destination agent creates on its base image); the image
directory (deploy/build-guest-image's busybox guest) is one local cache both read.

Checked: the guest printing COUNTER moves A -> B through os-migrateLive with no host
named (the scheduler picks the only other host and claims it); the destination's console
continues the counter with no second NUBE-GUEST-BOOTED; the server shows the new host and
ACTIVE; the source has no domain, no disk, no record; the allocation sits on B only, no
migration allocation is left, os-migrations says completed with a downtime. Then a
migration back, slowed to 1 MiB/s (virsh migrate-setspeed on the source), is aborted with
DELETE /servers/{id}/migrations/{mid}: the guest keeps running on B, nothing is left on A,
allocations unchanged, status cancelled. Prints TIME lines; exits 77 (skip) when not root.
Usage: test_nube_migrate.py BUILD_DIR
"""

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
import nubelab  # noqa: E402
from nubelab import http, wait_for  # noqa: E402

PASS = 0
FAIL = 0
T0 = time.monotonic()


def ok(desc):
    global PASS
    PASS += 1
    print(f"ok   {desc}", flush=True)


def bad(desc):
    global FAIL
    FAIL += 1
    print(f"FAIL {desc}", flush=True)


def check(desc, cond):
    (ok if cond else bad)(desc)
    return cond


def timing(name, ms):
    print(f"TIME {name} {ms:.0f} ms", flush=True)


def run(*argv, check_rc=True):
    p = subprocess.run(argv, capture_output=True, text=True)
    if check_rc and p.returncode != 0:
        raise RuntimeError(f"{argv}: rc {p.returncode}: {p.stderr.strip()}")
    return p.stdout.strip()


def counters(text):
    return [int(n) for n in re.findall(r"^COUNTER (\d+) ", text, re.M)]


class Host:
    def __init__(self, base, name, ns, ip):
        self.name, self.ip = name, ip
        self.cmd = [os.path.join(TOP, "deploy", "libvirt-host"), "--base", base]
        self.uri = run(*self.cmd, "start", name, "--netns", ns, "--ip",
                       ip + "/24").splitlines()[-1]

    def virsh(self, *args):
        return run("virsh", "-q", "-c", self.uri, *args, check_rc=False)


def db_rows(lab, sql, args=()):
    db = sqlite3.connect(lab.db)
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.Error:
        return []
    finally:
        db.close()


def main():
    if os.geteuid() != 0:
        print("SKIP: needs root (starts libvirtd and namespaces)")
        return 77
    build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(TOP, "build"))
    base = tempfile.mkdtemp(prefix="nube-e2e-mig.")
    lab = nubelab.Lab(build)
    rc = 1
    try:
        rc = scenario(build, base, lab)
    except Exception as e:  # report, then clean up
        bad(f"scenario raised {e!r}")
    finally:
        codes = lab.stop_all()
        for name, code in codes.items():
            if code not in (0, None):
                bad(f"{name} exited with {code}")
                print(lab.daemons[name].tail(30))
        run(os.path.join(TOP, "deploy", "libvirt-host"), "--base", base, "stop-all", "--purge",
            check_rc=False)
        left = subprocess.run([os.path.join(TOP, "deploy", "libvirt-host"), "--base", base,
                               "leftovers"], capture_output=True, text=True).stdout.strip()
        check(f"nothing left behind {left!r}", not left)
        lab.cleanup(keep=FAIL > 0 and os.environ.get("NUBE_E2E_KEEP") == "1")
        shutil.rmtree(base, ignore_errors=True)
        print(f"{PASS} passed, {FAIL} failed ({time.monotonic() - T0:.1f} s)")
    return 1 if FAIL else rc


def scenario(build, base, lab):
    t = time.monotonic()
    out = run(os.path.join(TOP, "deploy", "build-guest-image"),
              os.path.join(build, "tests", "e2e", "guest"))
    img = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    images = os.path.join(lab.dir, "images", "busybox")
    os.makedirs(images)
    os.symlink(img["kernel"], os.path.join(images, "kernel"))
    os.symlink(img["ramdisk"], os.path.join(images, "ramdisk"))
    os.symlink(img["disk"], os.path.join(images, "disk.qcow2"))
    with open(os.path.join(images, "cmdline"), "w") as f:
        f.write("console=ttyS0 panic=-1\n")
    tag = f"{os.getpid() % 100000}"
    hosts = {"nubeA": Host(base, "nubeA", f"nube-mga-{tag}", "10.78.0.1"),
             "nubeB": Host(base, "nubeB", f"nube-mgb-{tag}", "10.78.0.2")}
    timing("image+hosts-start", (time.monotonic() - t) * 1000)
    ok("two libvirt hosts up")

    lab.start_scheduler()
    lab.start_api()
    inst_dirs = {}
    for name, h in hosts.items():
        port = nubelab.free_port()
        lab.agent_ports[name] = port
        inst_dirs[name] = os.path.join(lab.dir, f"instances-{name}")
        os.makedirs(inst_dirs[name])
        conf = lab.write(f"nube-agent-{name}.conf", f"""[DEFAULT]
log_level = debug
state_dir = {lab.dir}
[agent]
host = {name}
libvirt_uri = {h.uri}
heartbeat_interval_ms = 300
instances_dir = {inst_dirs[name]}
virt_type = qemu
image_dir = {os.path.join(lab.dir, "images")}
network =
shutdown_timeout_s = 5
migration_uri = qemu+tcp://{h.ip}/system
migration_address = {h.ip}
migration_max_downtime_ms = 500
migration_timeout_s = 60
[bus]
scheduler_endpoint = tcp://127.0.0.1:{lab.bus_port}
resend_ms = 300
[http]
listen = 127.0.0.1
port = {port}
""")
        lab._start(f"agent-{name}", lab.binary("compute-agent", "nube-agent"), conf,
                   f"http://127.0.0.1:{port}/healthz")
    wait_for(lambda: {"nubeA", "nubeB"} <= set(lab.hypervisors()), 20, "hosts registered")

    # ---- boot ----
    t = time.monotonic()
    r = lab.create_server("m1", flavor="1", image="busybox")
    if not check(f"POST /servers 202 ({r.status})", r.status == 202):
        print(r.raw)
        return 1
    sid = r.json["server"]["id"]
    dom = f"instance-{sid}"
    s = lab.wait_status(sid, {"ACTIVE", "ERROR"}, timeout=60)
    if not check(f"server ACTIVE ({s['status']} {s.get('fault')})", s["status"] == "ACTIVE"):
        return 1
    src = db_rows(lab, "SELECT host FROM instances WHERE uuid=?", (sid,))[0][0]
    dst = "nubeB" if src == "nubeA" else "nubeA"
    src_log = os.path.join(inst_dirs[src], sid, "console.log")
    dst_log = os.path.join(inst_dirs[dst], sid, "console.log")
    wait_for(lambda: len(counters(open(src_log, errors="replace").read())) >= 3, 60,
             "guest counting on the source", interval=0.1)
    timing("boot-to-counting", (time.monotonic() - t) * 1000)
    ok(f"guest counts on {src}")

    # ---- live migration, scheduler's choice ----
    fd = open(src_log, errors="replace")  # survives the source's clean-up (unlink)
    t = time.monotonic()
    r = http("POST", f"{lab.compute}/servers/{sid}/action",
             {"os-migrateLive": {"host": None, "block_migration": "auto"}})
    check(f"os-migrateLive -> 202 ({r.status} {r.raw[:200]!r})", r.status == 202)

    def moved():
        row = db_rows(lab, "SELECT host, task_state FROM instances WHERE uuid=?", (sid,))
        return row and row[0][0] == dst and row[0][1] in ("", "none", None)
    try:
        wait_for(moved, 60, "instance on the destination", interval=0.05)
        timing("migrate-live API-to-done", (time.monotonic() - t) * 1000)
    except AssertionError as e:
        bad(str(e))
        for n in ("scheduler", f"agent-{src}", f"agent-{dst}"):
            if n in lab.daemons:
                print(lab.daemons[n].tail(25))
        return 1
    srv = lab.server(sid)
    check(f"server ACTIVE on {dst} ({srv['status']}, {srv.get('OS-EXT-SRV-ATTR:host')})",
          srv["status"] == "ACTIVE" and srv.get("OS-EXT-SRV-ATTR:host", dst) == dst)
    check(f"virsh: running on {dst}", hosts[dst].virsh("domstate", dom) == "running")
    check(f"virsh: persistent on {dst}",
          re.search(r"Persistent:\s+yes", hosts[dst].virsh("dominfo", dom)) is not None)
    wait_for(lambda: len(counters(open(dst_log, errors="replace").read())) >= 2, 20,
             "counter on the destination", interval=0.1)
    src_text = fd.read()
    fd.close()
    dst_text = open(dst_log, errors="replace").read()
    last, first = counters(src_text)[-1], counters(dst_text)[0]
    print(f"      source last COUNTER {last}, destination first COUNTER {first}")
    check("counter continues on the destination without a reboot",
          first > last and first <= last + 8 and "NUBE-GUEST-BOOTED" not in dst_text)
    wait_for(lambda: not hosts[src].virsh("list", "--all", "--name"), 10,
             "source has no domain")
    ok(f"{src} has no domain left")
    wait_for(lambda: not os.path.exists(os.path.join(inst_dirs[src], sid)), 10,
             "source instance dir removed")
    ok(f"{src}'s disk and console log removed")
    check("source agent dropped its record", sid not in lab.domains(src))
    allocs = db_rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,))
    check(f"allocation only on {dst} ({allocs})", allocs == [(dst,)])
    check("no migration allocation left", not db_rows(lab, "SELECT * FROM migration_allocations"))
    migs = http("GET", f"{lab.compute}/os-migrations",
                headers={"OpenStack-API-Version": "compute 2.59"}).json["migrations"]
    check(f"os-migrations: one completed live-migration ({[m['status'] for m in migs]})",
          len(migs) == 1 and migs[0]["status"] == "completed" and
          migs[0]["migration_type"] == "live-migration" and migs[0]["dest_compute"] == dst)
    m = http("GET", f"{lab.compute}/servers/{sid}/migrations/{migs[0]['uuid']}").json
    if m and "migration" in m:
        mm = m["migration"]
        timing(f"migrate-live libvirt elapsed (downtime {mm['downtime_ms']} ms)",
               mm["elapsed_ms"])
        check(f"downtime measured and within the maximum ({mm['downtime_ms']} ms)",
              0 < mm["downtime_ms"] <= 2000)
    check("console through the API comes from the new host",
          "COUNTER" in http("POST", f"{lab.compute}/servers/{sid}/action",
                            {"os-getConsoleOutput": {"length": 5}}).json.get("output", ""))

    # ---- abort mid-way: a migration back, slowed down ----
    hosts[dst].virsh("migrate-setspeed", dom, "1")
    t = time.monotonic()
    r = http("POST", f"{lab.compute}/servers/{sid}/action",
             {"os-migrateLive": {"host": src, "block_migration": "auto"}})
    check(f"os-migrateLive back to {src} -> 202 ({r.status})", r.status == 202)

    def running_mig():
        r = http("GET", f"{lab.compute}/servers/{sid}/migrations")
        ms = r.json.get("migrations", []) if r.status == 200 else []
        return next((x for x in ms if x["status"] == "running" and
                     x["memory_processed_bytes"] > 0), None)
    try:
        mig = wait_for(running_mig, 30, "migration running with progress", interval=0.1)
        ok(f"progress reported ({mig['memory_processed_bytes']} of "
           f"{mig['memory_total_bytes']} bytes)")
        r = http("DELETE", f"{lab.compute}/servers/{sid}/migrations/{mig['id']}")
        check(f"DELETE migration -> 202 ({r.status})", r.status == 202)
        wait_for(lambda: db_rows(lab, "SELECT status FROM migrations WHERE uuid=?",
                                 (mig["uuid"],))[0][0] in ("cancelled", "error"), 30,
                 "migration finished")
        timing("abort API-to-settled", (time.monotonic() - t) * 1000)
        st = db_rows(lab, "SELECT status FROM migrations WHERE uuid=?", (mig["uuid"],))[0][0]
        check(f"migration cancelled ({st})", st == "cancelled")
    except AssertionError as e:
        bad(str(e))
    wait_for(lambda: lab.server(sid)["status"] == "ACTIVE", 20, "server ACTIVE again")
    row = db_rows(lab, "SELECT host FROM instances WHERE uuid=?", (sid,))[0][0]
    check(f"server still on {dst} ({row})", row == dst)
    check(f"virsh: still running on {dst}", hosts[dst].virsh("domstate", dom) == "running")
    wait_for(lambda: not hosts[src].virsh("list", "--all", "--name"), 10,
             "nothing arrived on the source")
    ok(f"{src} has no domain after the abort")
    check(f"{src} has no half-copied disk",
          not os.path.exists(os.path.join(inst_dirs[src], sid, "disk")))
    allocs = db_rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,))
    check(f"allocation still only on {dst} ({allocs})", allocs == [(dst,)])
    check("no migration allocation left", not db_rows(lab, "SELECT * FROM migration_allocations"))
    n0 = counters(open(dst_log, errors="replace").read())[-1]
    wait_for(lambda: counters(open(dst_log, errors="replace").read())[-1] >= n0 + 2, 10,
             "counter still advancing")
    ok("guest keeps counting after the abort")

    # ---- delete ----
    r = http("DELETE", f"{lab.compute}/servers/{sid}")
    check(f"DELETE server -> 204 ({r.status})", r.status == 204)
    wait_for(lambda: not hosts[dst].virsh("list", "--all", "--name"), 30, "domain gone")
    ok("deleted: no domain on either host")
    return 0


if __name__ == "__main__":
    sys.exit(main())
