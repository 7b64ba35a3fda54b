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
allocations unchanged, status cancelled. Same with the destination's QEMU killed mid-copy
(status error, the guest never stops on B, A clean), and with the source agent killed
mid-way and restarted (settled by asking both hosts: the guest runs once, where the
controller says, allocations agree); force_complete of a slow one pauses the guest and
finishes it (the counter continues on the destination). Evacuate: refused while B is up; B's agent is
killed (its libvirtd still runs the guest), B goes down, evacuate rebuilds the guest from
its image on A; when B's agent comes back the stale copy is destroyed there. Drain: five
guests on A (B disabled while they boot), `nube host drain A --parallel 2` moves all five
live to B (NUBE_E2E_NO_DRAIN=1 skips it). Prints TIME lines; exits 77 when not root.
Usage: test_nube_migrate.py BUILD_DIR
"""

import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import realhost as rh  # noqa: E402
from realhost import (bad, check, counters, db_rows, http, nubelab, ok,  # noqa: E402,F401
                      readf, timing, wait_for)


def main():
    return rh.main("nube-e2e-mig.", scenario)


def setup(build, base, lab, network_tag="10.78.0", names=("nubeA", "nubeB")):
    """Guest image, the libvirt hosts, scheduler, API and one agent per host (also used
    by bench/migration). Returns (hosts by name, instances_dir by name)."""
    return rh.migration_hosts(build, base, lab, names, network_tag)


def scenario(build, base, lab):
    hosts, inst_dirs = setup(build, base, lab)
    # (base: the libvirt hosts' directories; QEMU pid files live in <base>/<host>/run/qemu)

    # ---- boot ----
    t = time.monotonic()
    sid = rh.boot_active(lab, "m1")
    if not sid:
        return 1
    dom = f"instance-{sid}"
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
    wait_for(lambda: len(counters(readf(dst_log))) >= 2, 20,
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
        r = http("GET", f"{lab.compute}/servers/{sid}/migrations",
                 headers={"OpenStack-API-Version": "compute 2.59"})
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

    # ---- the destination fails mid-copy: its QEMU dies ----
    r = http("POST", f"{lab.compute}/servers/{sid}/action",
             {"os-migrateLive": {"host": src}})
    check(f"os-migrateLive to {src} again -> 202 ({r.status})", r.status == 202)
    try:
        mig = wait_for(running_mig, 30, "second migration running", interval=0.1)
        pidf = os.path.join(base, src, "run", "qemu", f"{dom}.pid")
        qpid = int(wait_for(lambda: readf(pidf).strip(), 10, "incoming QEMU pid"))
        os.kill(qpid, 9)
        wait_for(lambda: db_rows(lab, "SELECT status FROM migrations WHERE uuid=?",
                                 (mig["uuid"],))[0][0] in ("error", "cancelled", "completed"),
                 30, "failed migration settled")
        st = db_rows(lab, "SELECT status FROM migrations WHERE uuid=?", (mig["uuid"],))[0][0]
        check(f"migration with a dead destination: status error ({st})", st == "error")
    except AssertionError as e:
        bad(str(e))
    wait_for(lambda: lab.server(sid)["status"] == "ACTIVE", 20, "server ACTIVE again")
    row = db_rows(lab, "SELECT host FROM instances WHERE uuid=?", (sid,))[0][0]
    check(f"server still on {dst} after the destination died ({row})", row == dst)
    check(f"virsh: still running on {dst}", hosts[dst].virsh("domstate", dom) == "running")
    wait_for(lambda: not hosts[src].virsh("list", "--all", "--name"), 10,
             "nothing left on the failed destination")
    ok(f"{src} has no domain after the failure")
    check(f"{src} has no half-copied disk",
          not os.path.exists(os.path.join(inst_dirs[src], sid, "disk")))
    allocs = db_rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,))
    check(f"allocation still only on {dst} ({allocs})", allocs == [(dst,)])
    check("no migration allocation left", not db_rows(lab, "SELECT * FROM migration_allocations"))
    n0 = counters(readf(dst_log))[-1]
    wait_for(lambda: counters(readf(dst_log))[-1] >= n0 + 2, 10, "counter still advancing")
    ok("guest keeps counting after the failed migration")

    # ---- the source agent is killed mid-migration, then restarted ----
    r = http("POST", f"{lab.compute}/servers/{sid}/action",
             {"os-migrateLive": {"host": src}})
    check(f"os-migrateLive to {src} a third time -> 202 ({r.status})", r.status == 202)
    try:
        mig = wait_for(running_mig, 30, "third migration running", interval=0.1)
        lab.daemons[f"agent-{dst}"].kill9()
        rh.restart_agent(lab, dst)
        wait_for(lambda: db_rows(lab, "SELECT status FROM migrations WHERE uuid=?",
                                 (mig["uuid"],))[0][0] in ("error", "cancelled", "completed"),
                 30, "migration settled after the source agent's restart")
        st = db_rows(lab, "SELECT status FROM migrations WHERE uuid=?", (mig["uuid"],))[0][0]
        print(f"      settled as {st}")
    except AssertionError as e:
        bad(str(e))
    wait_for(lambda: lab.server(sid)["status"] == "ACTIVE", 20, "server ACTIVE again")
    row = db_rows(lab, "SELECT host FROM instances WHERE uuid=?", (sid,))[0][0]
    on = [h for h in hosts if hosts[h].virsh("domstate", dom) == "running"]
    check(f"after the agent crash the guest runs on exactly one host, the controller's "
          f"({on}, {row})", on == [row])
    allocs = db_rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,))
    check(f"allocation only on {row} ({allocs})", allocs == [(row,)])
    check("no migration allocation left", not db_rows(lab, "SELECT * FROM migration_allocations"))
    if row != dst:  # it completed after all: keep the rest of the scenario's roles
        src, dst = dst, src
        dst_log = os.path.join(inst_dirs[dst], sid, "console.log")
    n0 = counters(readf(dst_log))[-1]
    wait_for(lambda: counters(readf(dst_log))[-1] >= n0 + 2, 10, "counter still advancing")
    check("no reboot", "NUBE-GUEST-BOOTED" not in readf(dst_log))
    other = [h for h in hosts if h != row][0]
    wait_for(lambda: not hosts[other].virsh("list", "--all", "--name"), 10,
             f"nothing left on {other}")
    ok(f"{other} clean")

    # ---- force-complete: a slow migration finishes with the guest paused ----
    fd = open(dst_log, errors="replace")
    r = http("POST", f"{lab.compute}/servers/{sid}/action",
             {"os-migrateLive": {"host": src}})
    check(f"os-migrateLive to {src} for force-complete -> 202 ({r.status})", r.status == 202)
    try:
        mig = wait_for(running_mig, 30, "migration running", interval=0.1)
        r = http("POST", f"{lab.compute}/servers/{sid}/migrations/{mig['id']}/action",
                 {"force_complete": None})
        check(f"force_complete -> 202 ({r.status})", r.status == 202)
        wait_for(lambda: hosts[dst].virsh("domstate", dom) == "paused", 10, "source paused")
        ok("force-complete paused the guest on the source")
        hosts[dst].virsh("migrate-setspeed", dom, "8192")  # let the rest through now
        wait_for(lambda: db_rows(lab, "SELECT status FROM migrations WHERE uuid=?",
                                 (mig["uuid"],))[0][0] in ("error", "completed"), 60,
                 "forced migration settled")
        st = db_rows(lab, "SELECT status FROM migrations WHERE uuid=?", (mig["uuid"],))[0][0]
        check(f"forced migration completed ({st})", st == "completed")
        src, dst = dst, src
        dst_log = os.path.join(inst_dirs[dst], sid, "console.log")
        wait_for(lambda: len(counters(readf(dst_log))) >= 2, 20, "counting after the move")
        last, first = counters(fd.read())[-1], counters(readf(dst_log))[0]
        check(f"runs on {dst}, counter continues ({last} -> {first}), no reboot",
              hosts[dst].virsh("domstate", dom) == "running" and first > last and
              "NUBE-GUEST-BOOTED" not in readf(dst_log))
    except AssertionError as e:
        bad(str(e))
    fd.close()

    # ---- evacuate: the host holding it goes down ----
    r = http("POST", f"{lab.compute}/servers/{sid}/action", {"evacuate": {}})
    check(f"evacuate while {dst} is up -> 400 ({r.status})", r.status == 400)
    agent = lab.daemons[f"agent-{dst}"]
    agent.kill9()
    wait_for(lambda: lab.hypervisors()[dst]["state"] == "down", 20, f"{dst} down")
    t = time.monotonic()
    r = http("POST", f"{lab.compute}/servers/{sid}/action", {"evacuate": {}})
    check(f"evacuate -> 200 ({r.status} {r.raw[:200]!r})", r.status == 200)
    wait_for(lambda: db_rows(lab, "SELECT host FROM instances WHERE uuid=?", (sid,))[0][0]
             == src and lab.server(sid)["status"] == "ACTIVE", 60, f"rebuilt on {src}")
    evac_log = os.path.join(inst_dirs[src], sid, "console.log")
    wait_for(lambda: "NUBE-GUEST-BOOTED" in readf(evac_log), 60,
             "evacuated guest booted")
    timing("evacuate API-to-booted", (time.monotonic() - t) * 1000)
    ok(f"evacuated: rebuilt from its image on {src} and booted")
    allocs = db_rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,))
    check(f"allocation only on {src} ({allocs})", allocs == [(src,)])
    # The dead host comes back still running the old copy: it must be fenced.
    rh.restart_agent(lab, dst)
    wait_for(lambda: not hosts[dst].virsh("list", "--all", "--name"), 30,
             f"old copy destroyed on {dst}")
    ok(f"{dst} came back: its stale copy was destroyed, the guest runs once")
    check(f"still running on {src}", hosts[src].virsh("domstate", dom) == "running")

    # ---- delete ----
    r = http("DELETE", f"{lab.compute}/servers/{sid}")
    check(f"DELETE server -> 204 ({r.status})", r.status == 204)
    wait_for(lambda: not hosts[src].virsh("list", "--all", "--name"), 30, "domain gone")
    ok("deleted: no domain on either host")
    if os.environ.get("NUBE_E2E_NO_DRAIN") != "1":
        drain(lab, hosts, inst_dirs)
    return 0


def run_cli(lab, *args, timeout=150):
    clouds = lab.write("clouds.yaml", f"""clouds:
  admin:
    auth:
      auth_url: http://127.0.0.1:{lab.identity_port}/v3
      username: admin
      password: {nubelab.ADMIN_PASSWORD}
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update({"OS_CLIENT_CONFIG_FILE": clouds, "HOME": lab.dir})
    return subprocess.run([lab.binary("cli", "nube"), "--os-cloud", "admin", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def drain(lab, hosts, inst_dirs, n=5):
    """Five guests on nubeA (nubeB disabled while they boot), then `nube host drain`."""
    p = run_cli(lab, "host", "disable", "nubeB", "--reason", "boot all on A")
    check(f"nube host disable nubeB (rc {p.returncode} {p.stderr.strip()})", p.returncode == 0)
    t = time.monotonic()
    sids = []
    for i in range(n):
        r = lab.create_server(f"d{i}", flavor="1", image="busybox")
        sids.append(r.json["server"]["id"])
    for sid in sids:
        lab.wait_status(sid, {"ACTIVE"}, timeout=90)
    on_a = [row[0] for row in db_rows(lab, "SELECT host FROM instances WHERE uuid IN (%s)" %
                                      ",".join("?" * n), sids)]
    check(f"{n} guests ACTIVE on nubeA ({on_a})", on_a == ["nubeA"] * n)
    for sid in sids:
        wait_for(lambda: counters(readf(os.path.join(inst_dirs["nubeA"], sid, "console.log"))),
                 90, "guest counting",
                 interval=0.2)
    timing(f"{n} guests booted and counting", (time.monotonic() - t) * 1000)
    p = run_cli(lab, "host", "enable", "nubeB")
    check(f"nube host enable nubeB (rc {p.returncode})", p.returncode == 0)
    wait_for(lambda: lab.hypervisors()["nubeB"].get("status") == "enabled", 10,
             "nubeB enabled")
    t = time.monotonic()
    p = run_cli(lab, "host", "drain", "nubeA", "--parallel", "2", "--reason", "maintenance")
    timing(f"nube host drain ({n} guests, 2 at a time)", (time.monotonic() - t) * 1000)
    print("      " + p.stdout.strip().replace("\n", "\n      "))
    check(f"drain exit 0 ({p.returncode} {p.stderr.strip()[-300:]!r})", p.returncode == 0)
    check(f"drain reports {n} moved", p.stdout.count("moved to nubeB") == n)
    on_b = [row[0] for row in db_rows(lab, "SELECT host FROM instances WHERE uuid IN (%s)" %
                                      ",".join("?" * n), sids)]
    check(f"all {n} on nubeB in the controller", on_b == ["nubeB"] * n)
    running = hosts["nubeB"].virsh("list", "--name").split()
    check(f"all {n} running on nubeB", all(f"instance-{s}" in running for s in sids))
    check("nubeA has no domain", not hosts["nubeA"].virsh("list", "--all", "--name"))
    allocs = db_rows(lab, "SELECT DISTINCT host FROM allocations")
    check(f"allocations only on nubeB ({allocs})", allocs == [("nubeB",)])
    boots = sum(open(os.path.join(inst_dirs["nubeB"], s, "console.log"), errors="replace")
                .read().count("NUBE-GUEST-BOOTED") for s in sids)
    check(f"no guest rebooted ({boots} boot markers on nubeB)", boots == 0)
    svc = http("GET", f"{lab.compute}/os-services?host=nubeA").json["services"]
    check(f"nubeA disabled with its reason ({svc[0]['status']}, {svc[0]['disabled_reason']})",
          svc[0]["status"] == "disabled" and svc[0]["disabled_reason"] == "maintenance")
    for sid in sids:
        http("DELETE", f"{lab.compute}/servers/{sid}")
    wait_for(lambda: not hosts["nubeB"].virsh("list", "--all", "--name"), 30,
             "drained guests deleted")


if __name__ == "__main__":
    sys.exit(main())
