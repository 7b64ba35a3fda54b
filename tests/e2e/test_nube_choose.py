#!/usr/bin/env python3
"""test_nube_choose.py - the scheduler chooses a live migration's destination (issue 8, e2e).

Three isolated libvirtd hosts on one hub (realhost.migration_hosts: each its own network
namespace, address, host UUID and nube-agent, peer-to-peer migration without shared
storage), nube-scheduler + nube-api. os-migrateLive with "host": null lets the scheduler
pick: it tries the up, enabled hosts of the same hypervisor type by free RAM, most first,
and claims on the first that has room. The inventories are set so that the host it
would try first is the wrong one each time:

  nubeA  the real host's resources (about the machine's RAM);
  nubeB  [resources] ram_mb = 65536, disk_gb = 2: the most free RAM, room for one guest
         of the test's flavor (2 GB disk);
  nubeC  [resources] ram_mb = 32768.

  1. g1 boots on A (B and C disabled), prints COUNTER; C is enabled, B stays disabled.
     os-migrateLive(null) must skip B (disabled, though it has the most room) and land
     on C.
  2. A filler boots on B (A and C disabled for it): B is now full (2 of 2 GB claimed).
     A is enabled again. os-migrateLive(null) of g1 must skip B (enabled, most free RAM,
     but no room) and land on A.
  3. C is disabled: the only enabled candidate, B, is full -> no valid host; g1 stays
     running on A, nothing claimed (no migration row), the scheduler logs why.

  4. The scheduler is killed at a seeded random point of a chosen live migration and
     restarted (NUBE_E2E_NO_SCHED_KILL=1 skips it): it must settle with the guest
     running on exactly one host, the controller's, allocations with it.

After each move: the counter continues on the destination with no second boot, the
server shows the new host and ACTIVE, the source has no domain and no disk, the
allocation is on the destination only, no migration allocation is left, and
nube-placement-audit finds nothing. Budget ~90 s. Exits 77 when not root.
Usage: test_nube_choose.py BUILD_DIR
"""

import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import realhost as rh  # noqa: E402
from realhost import bad, check, counters, db_rows, http, ok, readf, timing, wait_for  # noqa: E402

FLAVOR = {"name": "choose", "id": "choose", "ram": 256, "vcpus": 1, "disk": 2}


def main():
    return rh.main("nube-e2e-choose.", scenario, budget_s=120)


def service(lab, host, enable):
    r = http("PUT", f"{lab.compute}/os-services/{'enable' if enable else 'disable'}",
             {"host": host, "binary": "nova-compute"})
    assert r.status == 200, (host, enable, r.status, r.raw)
    wait_for(lambda: lab.hypervisors()[host].get("status") ==
             ("enabled" if enable else "disabled"), 10, f"{host} enabled={enable}")


def host_of(lab, sid):
    return db_rows(lab, "SELECT host FROM instances WHERE uuid=?", (sid,))[0][0]


def audit_clean(lab):
    p = subprocess.run([lab.binary("scheduler", "nube-placement-audit"), "--config",
                        os.path.join(lab.dir, "nube-scheduler.conf"), "--json"],
                       capture_output=True, text=True, timeout=30)
    return check(f"nube-placement-audit clean (rc {p.returncode} {p.stdout.strip()[:200]})",
                 p.returncode == 0)


def live_choose(lab, hosts, inst_dirs, sid, src, want):
    """os-migrateLive with no host from src; checks it lands on want, moved cleanly."""
    dom = f"instance-{sid}"
    src_log = os.path.join(inst_dirs[src], sid, "console.log")
    dst_log = os.path.join(inst_dirs[want], sid, "console.log")
    fd = open(src_log, errors="replace")  # survives the source's clean-up (unlink)
    t = time.monotonic()
    r = http("POST", f"{lab.compute}/servers/{sid}/action",
             {"os-migrateLive": {"host": None, "block_migration": "auto"}})
    check(f"os-migrateLive(host null) from {src} -> 202 ({r.status})", r.status == 202)

    def settled():
        row = db_rows(lab, "SELECT host, task_state FROM instances WHERE uuid=?", (sid,))
        return row and row[0][1] in ("", "none", None) and row[0][0] != src
    try:
        wait_for(settled, 90, "instance moved", interval=0.05)
        timing(f"migrate-live {src}->? API-to-done", (time.monotonic() - t) * 1000)
    except AssertionError as e:
        bad(str(e))
        for n in ("scheduler", f"agent-{src}", f"agent-{want}"):
            print(lab.daemons[n].tail(20))
        fd.close()
        return False
    got = host_of(lab, sid)
    if not check(f"the scheduler chose {want} ({got})", got == want):
        fd.close()
        return False
    srv = lab.server(sid)
    check(f"server ACTIVE on {want} ({srv['status']}, {srv.get('OS-EXT-SRV-ATTR:host')})",
          srv["status"] == "ACTIVE" and srv.get("OS-EXT-SRV-ATTR:host") == want)
    check(f"virsh: running on {want}", hosts[want].domstate(dom) == "running")
    try:
        wait_for(lambda: len(counters(readf(dst_log))) >= 2, 30, "counter on the destination",
                 interval=0.1)
        src_text, dst_text = fd.read(), readf(dst_log)
        last, first = counters(src_text)[-1], counters(dst_text)[0]
        check(f"counter continues on {want} ({last} -> {first}), no reboot",
              last < first <= last + 8 and "NUBE-GUEST-BOOTED" not in dst_text)
    except AssertionError as e:
        bad(str(e))
    fd.close()
    try:
        wait_for(lambda: dom not in hosts[src].domains() and
                 not os.path.exists(os.path.join(inst_dirs[src], sid)), 15, "source clean")
        ok(f"{src} clean: no domain, no disk")
    except AssertionError as e:
        bad(str(e))
    allocs = db_rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,))
    check(f"allocation only on {want} ({allocs})", allocs == [(want,)])
    check("no migration allocation left",
          not db_rows(lab, "SELECT * FROM migration_allocations"))
    m = db_rows(lab, "SELECT status, dest_host FROM migrations WHERE instance_uuid=? "
                     "ORDER BY created_ms DESC LIMIT 1", (sid,))
    check(f"migration record completed to {want} ({m})", m == [("completed", want)])
    audit_clean(lab)
    return True


def sched_kill(lab, hosts, inst_dirs, sid):
    """os-migrateLive(null) of g1 (on A; C enabled again, B full -> C), SIGKILL of the
    scheduler after a seeded random delay (NUBE_E2E_SEED replays it), restart. Whatever
    the point, it must settle: no migration in flight, the guest running on exactly one
    host, the controller's, allocations with it, the counter going on."""
    seed = int(os.environ.get("NUBE_E2E_SEED", str(int(time.time()))))
    delay = random.Random(seed).uniform(0.0, 2.5)
    service(lab, "nubeC", True)
    dom = f"instance-{sid}"
    r = http("POST", f"{lab.compute}/servers/{sid}/action",
             {"os-migrateLive": {"host": None}})
    check(f"os-migrateLive(host null) -> 202 ({r.status})", r.status == 202)
    time.sleep(delay)
    lab.daemons["scheduler"].kill9()
    st = db_rows(lab, "SELECT status FROM migrations WHERE instance_uuid=? "
                      "ORDER BY created_ms DESC LIMIT 1", (sid,))
    print(f"      scheduler killed {delay * 1000:.0f} ms into the migration (seed {seed}, "
          f"migration {st})", flush=True)
    lab.start_scheduler()
    in_flight = ("preparing", "running", "cancelling", "queued", "pre-migrating")

    def settled():
        row = db_rows(lab, "SELECT host, task_state FROM instances WHERE uuid=?", (sid,))
        migs = db_rows(lab, "SELECT status FROM migrations WHERE instance_uuid=?", (sid,))
        return row and row[0][1] in ("", "none", None) and \
            not any(m[0] in in_flight for m in migs)
    try:
        wait_for(settled, 90, "migration settled after the scheduler's restart", interval=0.2)
        ok("settled after the scheduler's restart")
    except AssertionError as e:
        bad(str(e))
        print(lab.daemons["scheduler"].tail(30))
        return
    at = host_of(lab, sid)
    st = db_rows(lab, "SELECT status, dest_host FROM migrations WHERE instance_uuid=? "
                      "ORDER BY created_ms DESC LIMIT 1", (sid,))
    print(f"      settled as {st}, the controller says {at}", flush=True)
    check(f"settled on nubeA or nubeC ({at})", at in ("nubeA", "nubeC"))
    try:
        wait_for(lambda: [h for h in hosts if dom in hosts[h].domains()] == [at], 30,
                 "one domain, on the controller's host")
        ok(f"exactly one domain, on {at}")
    except AssertionError:
        bad(f"domains: {[(h, hosts[h].domstate(dom)) for h in hosts if dom in hosts[h].domains()]}"
            f", controller: {at}")
    check(f"virsh: running on {at}", hosts[at].domstate(dom) == "running")
    allocs = db_rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,))
    check(f"allocation only on {at} ({allocs})", allocs == [(at,)])
    check("no migration allocation left",
          not db_rows(lab, "SELECT * FROM migration_allocations"))
    audit_clean(lab)
    log = os.path.join(inst_dirs[at], sid, "console.log")
    try:
        n0 = counters(readf(log))[-1]
        wait_for(lambda: counters(readf(log))[-1] >= n0 + 2, 20, "counter advancing")
        ok("the guest keeps counting")
    except (AssertionError, IndexError) as e:
        bad(f"counter on {at}: {e!r}")


def scenario(build, base, lab):
    hosts, inst_dirs = rh.migration_hosts(
        build, base, lab, ("nubeA", "nubeB", "nubeC"), "10.74.0",
        agent_extra={"nubeB": "[resources]\nram_mb = 65536\ndisk_gb = 2",
                     "nubeC": "[resources]\nram_mb = 32768"})
    r = http("POST", f"{lab.compute}/flavors", {"flavor": FLAVOR})
    check(f"flavor {FLAVOR['id']} (2 GB disk) created ({r.status})", r.status == 200)
    hv = lab.hypervisors()
    order = sorted(hv, key=lambda h: -(hv[h]["memory_mb"] - hv[h]["memory_mb_used"]))
    check(f"by free RAM: nubeB first, then nubeC ({order})", order[:2] == ["nubeB", "nubeC"])

    # ---- 1: g1 on A; B disabled (most room), C enabled -> C ----
    service(lab, "nubeB", False)
    service(lab, "nubeC", False)
    r = lab.create_server("g1", flavor=FLAVOR["id"], image="busybox")
    if not check(f"POST /servers g1 -> 202 ({r.status})", r.status == 202):
        return 1
    sid = r.json["server"]["id"]
    s = lab.wait_status(sid, {"ACTIVE", "ERROR"}, timeout=60)
    if not check(f"g1 ACTIVE on nubeA ({s['status']} {host_of(lab, sid)})",
                 s["status"] == "ACTIVE" and host_of(lab, sid) == "nubeA"):
        return 1
    wait_for(lambda: len(counters(readf(os.path.join(inst_dirs["nubeA"], sid,
                                                      "console.log")))) >= 2,
             60, "g1 counting", interval=0.1)
    service(lab, "nubeC", True)
    if not live_choose(lab, hosts, inst_dirs, sid, "nubeA", "nubeC"):
        return 1

    # ---- 2: a filler makes B full; A enabled again -> A ----
    service(lab, "nubeB", True)
    service(lab, "nubeA", False)
    service(lab, "nubeC", False)
    r = lab.create_server("filler", flavor=FLAVOR["id"], image="busybox")
    fid = r.json["server"]["id"]
    s = lab.wait_status(fid, {"ACTIVE", "ERROR"}, timeout=60)
    check(f"filler ACTIVE on nubeB ({s['status']} {host_of(lab, fid)})",
          s["status"] == "ACTIVE" and host_of(lab, fid) == "nubeB")
    service(lab, "nubeA", True)
    service(lab, "nubeC", True)
    hv = lab.hypervisors()
    check(f"nubeB: most free RAM, its disk full ({hv['nubeB']['local_gb_used']} of "
          f"{hv['nubeB']['local_gb']} GB)",
          hv["nubeB"]["local_gb_used"] >= hv["nubeB"]["local_gb"] and
          hv["nubeB"]["memory_mb"] - hv["nubeB"]["memory_mb_used"] >
          max(hv[h]["memory_mb"] - hv[h]["memory_mb_used"] for h in ("nubeA", "nubeC")))
    if not live_choose(lab, hosts, inst_dirs, sid, "nubeC", "nubeA"):
        return 1

    # ---- 3: C disabled, B full -> no valid host; g1 stays on A ----
    service(lab, "nubeC", False)
    nmig = len(db_rows(lab, "SELECT * FROM migrations WHERE instance_uuid=?", (sid,)))
    r = http("POST", f"{lab.compute}/servers/{sid}/action",
             {"os-migrateLive": {"host": None}})
    check(f"os-migrateLive(host null) with no candidate -> 202 ({r.status})", r.status == 202)
    wait_for(lambda: db_rows(lab, "SELECT task_state FROM instances WHERE uuid=?",
                             (sid,))[0][0] in ("", "none", None), 20, "task cleared")
    check(f"g1 still ACTIVE on nubeA ({host_of(lab, sid)})",
          lab.server(sid)["status"] == "ACTIVE" and host_of(lab, sid) == "nubeA" and
          hosts["nubeA"].domstate(f"instance-{sid}") == "running")
    check("the scheduler logged 'no valid host'",
          "no valid host" in readf(lab.daemons["scheduler"].log_path))
    check("nothing claimed: no new migration row, no migration allocation",
          len(db_rows(lab, "SELECT * FROM migrations WHERE instance_uuid=?", (sid,))) == nmig
          and not db_rows(lab, "SELECT * FROM migration_allocations"))
    allocs = db_rows(lab, "SELECT instance_uuid, host FROM allocations ORDER BY host")
    check(f"allocations: g1 on nubeA, the filler on nubeB ({allocs})",
          allocs == [(sid, "nubeA"), (fid, "nubeB")])
    audit_clean(lab)

    # ---- 4: the scheduler is killed during a chosen live migration ----
    if os.environ.get("NUBE_E2E_NO_SCHED_KILL") != "1":
        sched_kill(lab, hosts, inst_dirs, sid)

    # ---- clean up ----
    for x in (sid, fid):
        http("DELETE", f"{lab.compute}/servers/{x}")
    try:
        wait_for(lambda: not any(d.startswith("instance-") for h in hosts.values()
                                 for d in h.domains()), 30, "domains gone")
        ok("deleted: no domain on any host")
    except AssertionError as e:
        bad(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
