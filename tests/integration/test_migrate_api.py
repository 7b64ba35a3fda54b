#!/usr/bin/env python3
"""test_migrate_api.py - live migration's API, pre-checks and failure paths without root.

Real nube-scheduler, nube-api and two nube-agents on libvirt's test driver (which cannot
migrate). The agents advertise no migration URI, so a migration that passes the
pre-checks is claimed on the destination, prepared there (instance dir + overlay), and
then refused by the scheduler: the destination cleans up, the claim is undone, and the
server stays ACTIVE on its host with its allocation where it was. The real migrations
are tests/e2e/test_nube_migrate.py's.

Checked: os-migrateLive 404 unknown server, 400 unknown host / same host / bad
block_migration, 202 then status error with the fault recorded, allocations and
migration_allocations consistent, the destination's prepared directory removed,
os-migrations lists it as error, the server migrations list is empty (nothing in
progress), abort of a finished migration 400; no valid host (the other host disabled)
leaves the server as it was; evacuate refused while the host is up.
Cold migration (test driver: stop + keep on the source, spawn on the destination):
migrate -> VERIFY_RESIZE on the other host with both allocations held, confirmResize ->
ACTIVE there with one allocation and the source domain gone; migrate back + revertResize
-> ACTIVE on the original host; a named down/disabled host -> 400 with nothing claimed;
automatic confirm after [scheduler] resize_confirm_window_s; a destination whose
spawn fails sends the guest back to the source (migration error, fault recorded); a
resize the host has no room for goes to the other host, and revertResize brings it back
with its old flavor and allocation.
A stopped server (SHUTOFF) cold-migrates too: VERIFY_RESIZE with its domain defined but
not running on the destination, nube-placement-audit finds nothing while it waits (the
source half is held on purpose), confirm -> SHUTOFF there; revert of a second move ->
SHUTOFF on the original host, the destination's copy gone; no cold_moves record is left
after confirm or revert; the agents' disk endpoint answers 404 without the move's token.
A destination whose agent freezes mid-move is given up once it is marked down: the
server is ACTIVE on its source again, allocations consistent.
Usage: test_migrate_api.py BUILD_DIR
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nubelab  # noqa: E402
from nubelab import http, wait_for  # noqa: E402

PASS = FAIL = 0


def check(desc, cond):
    global PASS, FAIL
    if cond:
        PASS += 1
        print(f"ok   {desc}", flush=True)
    else:
        FAIL += 1
        print(f"FAIL {desc}", flush=True)
    return cond


def rows(lab, sql, args=()):
    db = sqlite3.connect(lab.db)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def host_of(lab, sid):
    return rows(lab, "SELECT host FROM instances WHERE uuid=?", (sid,))[0][0]


def boot(lab, name):
    """An ACTIVE server; returns (its id, its host, the other host, its action URL)."""
    r = lab.create_server(name, flavor="1", image="cirros")
    sid = r.json["server"]["id"]
    lab.wait_status(sid, {"ACTIVE"}, timeout=30)
    src = host_of(lab, sid)
    return sid, src, "h2" if src == "h1" else "h1", f"{lab.compute}/servers/{sid}/action"


def main():
    build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
    lab = nubelab.Lab(build, sched_extra="[scheduler]\nresize_confirm_window_s = 4\n")
    t0 = time.monotonic()
    try:
        lab.start_scheduler()
        lab.start_api()
        lab.start_agent("h1")
        lab.start_agent("h2")
        wait_for(lambda: {"h1", "h2"} <= set(lab.hypervisors()), 20, "hosts up")
        scenario(lab)
        scenario_cold(lab)
        scenario_stopped(lab)
    except AssertionError as e:
        check(f"scenario: {e}", False)
    finally:
        codes = lab.stop_all()
        for name, code in codes.items():
            check(f"{name} exited cleanly ({code})", code in (0, None))
        lab.cleanup(keep=FAIL > 0)
        print(f"{PASS} passed, {FAIL} failed ({time.monotonic() - t0:.1f} s)")
    return 1 if FAIL else 0


def scenario(lab):
    sid, src, dst, act = boot(lab, "m")

    r = http("POST", f"{lab.compute}/servers/00000000-0000-4000-8000-000000000000/action",
             {"os-migrateLive": {"host": None}})
    check(f"unknown server -> 404 ({r.status})", r.status == 404)
    r = http("POST", act, {"os-migrateLive": {"host": "nosuchhost"}})
    check(f"unknown host -> 400 ({r.status})", r.status == 400)
    r = http("POST", act, {"os-migrateLive": {"host": src}})
    check(f"same host -> 400 ({r.status} {r.raw[:120]!r})", r.status == 400 and
          b"same one" in r.raw)
    r = http("POST", act, {"os-migrateLive": {"host": dst, "block_migration": "maybe"}})
    check(f"bad block_migration -> 400 ({r.status})", r.status == 400)
    r = http("POST", act, {"evacuate": {}})
    check(f"evacuate while the host is up -> 400 ({r.status})", r.status == 400)

    r = http("POST", act, {"os-migrateLive": {"host": None, "block_migration": "auto"}})
    check(f"os-migrateLive -> 202 ({r.status})", r.status == 202)

    def settled():
        st = rows(lab, "SELECT status FROM migrations WHERE instance_uuid=?", (sid,))
        return st and st[0][0] in ("error", "completed") and \
            lab.server(sid)["status"] == "ACTIVE"
    wait_for(settled, 20, "migration settled")
    st = rows(lab, "SELECT status, source_host, dest_host FROM migrations WHERE "
                   "instance_uuid=?", (sid,))[0]
    check(f"migration {st}: error, {src} -> {dst}", st == ("error", src, dst))
    fault = rows(lab, "SELECT fault FROM migration_progress")
    check(f"fault recorded ({fault})", fault and "migration URI" in fault[0][0])
    check("server still on its host",
          rows(lab, "SELECT host, task_state FROM instances WHERE uuid=?", (sid,))[0][0] == src)
    check("allocation back on the source only",
          rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,)) == [(src,)])
    check("no migration allocation left", not rows(lab, "SELECT * FROM migration_allocations"))
    wait_for(lambda: not os.path.exists(os.path.join(lab.dir, f"instances-{dst}", sid)), 10,
             "destination's prepared directory removed")
    check("destination's prepared directory removed", True)
    migs = http("GET", f"{lab.compute}/os-migrations",
                headers={"OpenStack-API-Version": "compute 2.59"}).json["migrations"]
    check(f"os-migrations lists it ({[m['status'] for m in migs]})",
          len(migs) == 1 and migs[0]["status"] == "error" and
          migs[0]["migration_type"] == "live-migration")
    r = http("GET", f"{lab.compute}/servers/{sid}/migrations")
    check(f"nothing in progress ({r.status} {r.json})", r.status == 200 and
          r.json["migrations"] == [])
    r = http("DELETE", f"{lab.compute}/servers/{sid}/migrations/{migs[0]['id']}")
    check(f"abort of a finished migration -> 400 ({r.status})", r.status == 400)
    r = http("GET", f"{lab.compute}/servers/{sid}/migrations/{migs[0]['uuid']}")
    check(f"show has the fault ({r.status})", r.status == 200 and
          "migration URI" in r.json["migration"]["fault"])

    # No valid host: the only other host disabled.
    r = http("PUT", f"{lab.compute}/os-services/disable",
             {"host": dst, "binary": "nova-compute"})
    check(f"disable {dst} ({r.status})", r.status == 200)
    r = http("POST", act, {"os-migrateLive": {"host": None}})
    check(f"os-migrateLive -> 202 ({r.status})", r.status == 202)
    wait_for(lambda: lab.server(sid)["status"] == "ACTIVE" and
             rows(lab, "SELECT task_state FROM instances WHERE uuid=?", (sid,))[0][0]
             in (None, "", "none"), 20, "task cleared")
    check("no second migration row (nothing was claimed)",
          len(rows(lab, "SELECT * FROM migrations WHERE instance_uuid=?", (sid,))) == 1)
    check("allocation still on the source only",
          rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,)) == [(src,)])
    r = http("POST", act, {"os-migrateLive": {"host": dst}})
    check(f"named disabled host -> 400 ({r.status})", r.status == 400)


def on_host(lab, host, sid):
    """Does host's agent still hold sid (its console endpoint answers 404 otherwise)?"""
    url = rows(lab, "SELECT agent_url FROM host_agents WHERE host=?", (host,))[0][0]
    return http("GET", f"{url}/v1/instances/{sid}/console?length=1").status == 200


def cold_migrate(lab, sid, body, want_host):
    act = f"{lab.compute}/servers/{sid}/action"
    r = http("POST", act, {"migrate": body})
    check(f"migrate {body} -> 202 ({r.status} {r.raw[:120]!r})", r.status == 202)
    wait_for(lambda: lab.server(sid)["status"] == "VERIFY_RESIZE", 20, "VERIFY_RESIZE")
    host = host_of(lab, sid)
    check(f"VERIFY_RESIZE on {want_host} ({host})", host == want_host)
    check("both halves held while verifying",
          len(rows(lab, "SELECT * FROM migration_allocations")) == 1 and
          rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,)) ==
          [(want_host,)])


def scenario_cold(lab):
    sid, src, dst, act = boot(lab, "c")

    # dst may have been disabled by the live scenario.
    r = http("POST", act, {"migrate": {"host": dst}})
    check(f"migrate to a disabled host -> 400 ({r.status})", r.status == 400)
    check("nothing claimed", not rows(lab, "SELECT * FROM migration_allocations"))
    http("PUT", f"{lab.compute}/os-services/enable", {"host": dst, "binary": "nova-compute"})
    r = http("POST", act, {"migrate": {"host": src}})
    check(f"migrate to the same host -> 400 ({r.status})", r.status == 400)

    cold_migrate(lab, sid, None, dst)
    check("the source keeps it until confirm", on_host(lab, src, sid))
    r = http("POST", act, {"confirmResize": None})
    check(f"confirmResize -> 204 ({r.status})", r.status == 204)
    wait_for(lambda: lab.server(sid)["status"] == "ACTIVE", 20, "ACTIVE after confirm")
    check("confirmed: one allocation, on the destination",
          rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,)) == [(dst,)]
          and not rows(lab, "SELECT * FROM migration_allocations"))
    wait_for(lambda: not on_host(lab, src, sid), 10, "source cleaned after confirm")
    check("source cleaned after confirm", True)
    check("migration confirmed",
          rows(lab, "SELECT status FROM migrations WHERE instance_uuid=? AND "
                    "migration_type='migration' ORDER BY created_ms", (sid,))[0][0] ==
          "confirmed")

    cold_migrate(lab, sid, {"host": src}, src)
    r = http("POST", act, {"revertResize": None})
    check(f"revertResize -> 202 ({r.status})", r.status == 202)
    wait_for(lambda: lab.server(sid)["status"] == "ACTIVE" and
             rows(lab, "SELECT task_state FROM instances WHERE uuid=?", (sid,))[0][0]
             in (None, "", "none"), 20, "ACTIVE after revert")
    check("reverted: back on the previous host with one allocation",
          rows(lab, "SELECT host FROM instances WHERE uuid=?", (sid,)) == [(dst,)] and
          rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,)) == [(dst,)]
          and not rows(lab, "SELECT * FROM migration_allocations"))
    wait_for(lambda: not on_host(lab, src, sid), 10, "revert destination cleaned")
    check("revert's destination cleaned", on_host(lab, dst, sid))

    cold_migrate(lab, sid, {}, src)
    wait_for(lambda: lab.server(sid)["status"] == "ACTIVE", 20, "auto-confirm")
    check("auto-confirmed after the window",
          rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,)) == [(src,)]
          and not rows(lab, "SELECT * FROM migration_allocations"))

    # A destination whose spawn fails: back on the source, allocations consistent.
    lab.start_sim_agents("bad", 1, fail_spawns=True)
    r = http("POST", act, {"migrate": {"host": "bad-0000"}})
    check(f"migrate to a failing host -> 202 ({r.status} {r.raw[:120]!r})", r.status == 202)
    wait_for(lambda: rows(lab, "SELECT status FROM migrations WHERE instance_uuid=? AND "
                               "dest_host='bad-0000'", (sid,)) == [("error",)] and
             lab.server(sid)["status"] == "ACTIVE", 20, "back on the source")
    check("failed: still on its host with one allocation",
          rows(lab, "SELECT host FROM instances WHERE uuid=?", (sid,)) == [(src,)] and
          rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,)) == [(src,)]
          and not rows(lab, "SELECT * FROM migration_allocations"))
    fault = rows(lab, "SELECT p.fault FROM migration_progress p JOIN migrations m ON "
                      "m.uuid = p.migration_uuid WHERE m.dest_host='bad-0000'")
    check(f"fault recorded ({fault})", fault and "fail_spawns" in (fault[0][0] or ""))

    # Resize to a flavor the host has no room for: moved to the other host, then reverted.
    http("PUT", f"{lab.compute}/os-services/disable",
         {"host": "bad-0000", "binary": "nova-compute"})
    hv = lab.hypervisors()
    free = {h: hv[h]["memory_mb"] - hv[h]["memory_mb_used"] for h in (src, dst)}
    cur_ram = rows(lab, "SELECT ram_mb FROM instances WHERE uuid=?", (sid,))[0][0]
    want = free[src] + cur_ram + 1
    if want > free[dst]:
        print(f"skip resize to another host: free {free}, needs {want} MB on {dst}")
        return
    r = http("POST", f"{lab.compute}/flavors",
             {"flavor": {"name": "cold-big", "id": "cold-big", "ram": want, "vcpus": 1,
                         "disk": 1}})
    check(f"flavor created ({r.status})", r.status == 200)
    r = http("POST", act, {"resize": {"flavorRef": "cold-big"}})
    check(f"resize beyond the host -> 202 ({r.status} {r.raw[:120]!r})", r.status == 202)
    wait_for(lambda: lab.server(sid)["status"] == "VERIFY_RESIZE", 20, "resize VERIFY")
    got = (rows(lab, "SELECT host, flavor_id FROM instances WHERE uuid=?", (sid,)),
           rows(lab, "SELECT host, ram_mb FROM allocations WHERE instance_uuid=?", (sid,)))
    check(f"resized on the other host with the new flavor ({got})",
          got == ([(dst, "cold-big")], [(dst, want)]))
    r = http("POST", act, {"revertResize": None})
    check(f"revertResize -> 202 ({r.status})", r.status == 202)
    wait_for(lambda: lab.server(sid)["status"] == "ACTIVE" and
             rows(lab, "SELECT task_state FROM instances WHERE uuid=?", (sid,))[0][0]
             in (None, "", "none"), 20, "ACTIVE after the resize revert")
    check("reverted: old flavor and allocation on the source",
          rows(lab, "SELECT host, ram_mb FROM instances WHERE uuid=?", (sid,)) ==
          [(src, cur_ram)] and
          rows(lab, "SELECT host, ram_mb FROM allocations WHERE instance_uuid=?", (sid,)) ==
          [(src, cur_ram)] and not rows(lab, "SELECT * FROM migration_allocations"))


def audit(lab):
    conf = os.path.join(lab.dir, "nube-scheduler.conf")
    return subprocess.run([lab.binary("scheduler", "nube-placement-audit"), "--config", conf],
                          capture_output=True, text=True, timeout=30)


def scenario_stopped(lab):
    http("PUT", f"{lab.compute}/os-services/enable", {"host": "h1", "binary": "nova-compute"})
    http("PUT", f"{lab.compute}/os-services/enable", {"host": "h2", "binary": "nova-compute"})
    sid, src, dst, act = boot(lab, "s")
    r = http("POST", act, {"os-stop": None})
    check(f"os-stop -> 202 ({r.status})", r.status == 202)
    lab.wait_status(sid, {"SHUTOFF"}, timeout=20)

    r = http("POST", act, {"migrate": {"host": dst}})
    check(f"migrate a SHUTOFF server -> 202 ({r.status} {r.raw[:120]!r})", r.status == 202)
    wait_for(lambda: lab.server(sid)["status"] == "VERIFY_RESIZE", 20, "VERIFY_RESIZE")
    srv = lab.server(sid)
    check(f"VERIFY_RESIZE on {dst}, powered off ({srv.get('OS-EXT-SRV-ATTR:host')}, "
          f"power {srv.get('OS-EXT-STS:power_state')})",
          host_of(lab, sid) == dst and
          srv.get("OS-EXT-STS:power_state") == 4)
    doms = lab.domains(dst)
    check(f"defined on {dst}, not running ({doms.get(sid, {}).get('state')})",
          sid in doms and doms[sid]["state"] == "shutdown")
    p = audit(lab)
    check(f"audit clean while VERIFY_RESIZE (rc {p.returncode}: {p.stdout.strip()[-200:]!r} "
          f"{p.stderr.strip()[-200:]!r})",
          p.returncode == 0)
    mig = rows(lab, "SELECT uuid FROM migrations WHERE instance_uuid=?", (sid,))[0][0]
    url = rows(lab, "SELECT agent_url FROM host_agents WHERE host=?", (src,))[0][0]
    r = http("GET", f"{url}/v1/migrations/{mig}/disk", token=None)
    check(f"disk endpoint without the token -> 404 ({r.status})", r.status == 404)
    r = http("GET", f"{url}/v1/migrations/{mig}/disk", token=None,
             headers={"X-Nube-Migration-Token": "0" * 64})
    check(f"disk endpoint with a wrong token -> 404 ({r.status})", r.status == 404)
    r = http("POST", act, {"confirmResize": None})
    check(f"confirmResize -> 204 ({r.status})", r.status == 204)
    wait_for(lambda: lab.server(sid)["status"] == "SHUTOFF", 20, "SHUTOFF after confirm")
    check(f"confirmed: SHUTOFF on {dst} with one allocation",
          rows(lab, "SELECT host FROM instances WHERE uuid=?", (sid,)) == [(dst,)] and
          rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,)) == [(dst,)]
          and not rows(lab, "SELECT * FROM migration_allocations"))
    wait_for(lambda: sid not in lab.domains(src), 10, "source domain gone")
    check("source domain gone after confirm", True)
    check("no cold_moves record left", not rows(lab, "SELECT * FROM cold_moves"))
    p = audit(lab)
    check(f"audit clean after confirm (rc {p.returncode})", p.returncode == 0)

    # A second move back, reverted: SHUTOFF where it was, nothing on the other host.
    r = http("POST", act, {"migrate": None})
    check(f"migrate back -> 202 ({r.status})", r.status == 202)
    wait_for(lambda: lab.server(sid)["status"] == "VERIFY_RESIZE", 20, "VERIFY_RESIZE")
    r = http("POST", act, {"revertResize": None})
    check(f"revertResize -> 202 ({r.status})", r.status == 202)
    wait_for(lambda: lab.server(sid)["status"] == "SHUTOFF" and
             rows(lab, "SELECT task_state FROM instances WHERE uuid=?", (sid,))[0][0]
             in (None, "", "none"), 20, "SHUTOFF after revert")
    check(f"reverted: SHUTOFF on {dst}",
          rows(lab, "SELECT host FROM instances WHERE uuid=?", (sid,)) == [(dst,)] and
          rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,)) == [(dst,)])
    wait_for(lambda: sid not in lab.domains(src), 10, "revert destination cleaned")
    check(f"still defined, stopped, on {dst}",
          lab.domains(dst).get(sid, {}).get("state") == "shutdown")
    check("no cold_moves record left", not rows(lab, "SELECT * FROM cold_moves"))
    r = http("POST", act, {"os-start": None})
    check(f"os-start after the revert -> 202 ({r.status})", r.status == 202)
    lab.wait_status(sid, {"ACTIVE"}, timeout=20)
    check("it starts again", True)

    # The destination freezes mid-move (its agent stopped): once it is marked down the
    # move is given up and the guest runs on its source again.
    frozen = lab.start_sim_agents("frozen", 1)
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        r = http("POST", act, {"migrate": {"host": "frozen-0000"}})
        check(f"migrate to a host that froze -> 202 ({r.status} {r.raw[:100]!r})",
              r.status == 202)
        wait_for(lambda: rows(lab, "SELECT status FROM migrations WHERE instance_uuid=? AND "
                                   "dest_host='frozen-0000'", (sid,)) == [("error",)] and
                 lab.server(sid)["status"] == "ACTIVE", 20, "move given up")
        fault = rows(lab, "SELECT p.fault FROM migration_progress p JOIN migrations m ON "
                          "m.uuid = p.migration_uuid WHERE m.dest_host='frozen-0000'")
        check(f"given up when the destination went down ({fault})",
              fault and "went down" in (fault[0][0] or ""))
        check(f"back on {dst} with one allocation",
              rows(lab, "SELECT host FROM instances WHERE uuid=?", (sid,)) == [(dst,)] and
              rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,)) ==
              [(dst,)] and not rows(lab, "SELECT * FROM migration_allocations"))
        check("no cold_moves record left", not rows(lab, "SELECT * FROM cold_moves"))
    finally:
        frozen.proc.send_signal(signal.SIGCONT)


if __name__ == "__main__":
    sys.exit(main())
