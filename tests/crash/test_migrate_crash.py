#!/usr/bin/env python3
"""Crash consistency of migrations: SIGKILL the scheduler, the source agent or the
destination agent in the middle of cold migrations, restart it, check the cloud settles.

Real nube-scheduler, nube-api and two nube-agents on libvirt's test driver (hostA,
hostB), via tests/integration/nubelab.py. A cold migration there is driven through the
agents (scheduler/migrations.c): claim on the destination, stop on the source (kept for
a revert), spawn on the destination, VERIFY_RESIZE, then confirmResize (destroy the
source copy) or revertResize (destroy the destination's copy, start the source again).

Each round puts SERVERS servers on one host, starts their migrations to the other host
(or their confirms, or their reverts) all at once, and kills the victim after a delay
drawn from a seeded RNG (printed; NUBE_CRASH_SEED=<n> replays it) after a point also
drawn from it: right after the requests, or when the first of the round's migrations
reaches a status (migrating, finished, confirmed, reverted), so the kill lands at
different steps of the flow for different servers. The victim is restarted; then:

  - nothing stays in flight: every server reaches ACTIVE, VERIFY_RESIZE or ERROR with no
    task, and no migration stays in a running status ("migrating", "preparing",
    "running", "cancelling") - "finished" only with its server in VERIFY_RESIZE;
  - a VERIFY_RESIZE left by the crash is confirmed (or reverted) by the test and must end
    ACTIVE;
  - then every ACTIVE server has exactly one libvirt domain, running, on the host the API
    names; an ERROR server has none; no domain exists that the API does not know
    (GET /v1/domains of each agent);
  - allocations match instances: one allocation per server, on its host, no migration
    allocation left, and nube-placement-audit --json finds nothing.

Short by default (three rounds per victim and phase; the scheduler, the source and
the destination agent; ~20 s); NUBE_CRASH_LONG=1 runs more rounds with more servers;
NUBE_CRASH_VICTIMS=scheduler,source,dest picks the victims. Replay a failure with its
victim and seed: NUBE_CRASH_VICTIMS=scheduler NUBE_CRASH_SEED=<seed>.

What the scheduler as a victim found (fixed 2026-11-26): without an outbox, a command it
queued just before the kill was lost and nothing sent it again - the export or import
of a move ("migrating" forever, the server RESIZE), the destroy of the source copy at
confirm (a second, stopped domain on the source), the start of the source copy at revert
(the server SHUTOFF). Now its bus keeps an outbox, stores what a handler queued before
acknowledging the message that caused it, and the first tick after a start sends the
last commands of recent confirms and reverts again (scheduler/migrations.c). Found on
the way: a move marked "finished" under an ACTIVE server (kill between two writes), a
revert whose task a host report cleared (the server stayed VERIFY_RESIZE), a stale
"shut off" resent from an agent's outbox after the server came back (SHUTOFF), and a
release body leaked by the agent (a json-c reference shared between threads).

Usage: test_migrate_crash.py BUILD_DIR [--keep]
"""

import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from nubelab import Lab, http, wait_for  # noqa: E402

LONG = os.environ.get("NUBE_CRASH_LONG") == "1"
ROUNDS = 6 if LONG else 3
SERVERS = 8 if LONG else 4
HOSTS = ("hostA", "hostB")
# Kill points: "post" = right after the requests went out, else the first time one of
# the round's migrations reaches that status; then a random delay of up to 40 ms.
POINTS = {"migrate": ("post", "migrating", "finished"),
          "confirm": ("post", "confirmed"),
          "revert": ("post", "reverted")}
VICTIMS = tuple(os.environ.get("NUBE_CRASH_VICTIMS", "scheduler,source,dest").split(","))
IN_FLIGHT = ("migrating", "preparing", "running", "cancelling", "pre-migrating",
             "queued", "accepted", "confirming", "reverting")


def rows(lab, sql, args=()):
    db = sqlite3.connect(lab.db, timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def list_servers(lab):
    return lab.all_servers()


def all_domains(lab):
    return lab.domains_by_uuid(HOSTS)


def daemon_name(victim):
    return victim if victim == "scheduler" else f"agent-{victim}"


def registrations(lab, host):
    """How many times the scheduler (all its runs: one log) took host's registration."""
    try:
        with open(os.path.join(lab.dir, "scheduler.log"), errors="replace") as f:
            return f.read().count(f"host {host} registered")
    except OSError:
        return 0


def restart(lab, victim, before):
    """Restart victim; an agent also until the scheduler took its new registration (a
    registration arriving late, in the next round, would abort that round's imports:
    the scheduler reads it as the destination restarting mid-import)."""
    if victim == "scheduler":
        lab.start_scheduler()
    else:
        lab.start_agent(victim)
        wait_for(lambda: registrations(lab, victim) > before, 30, f"{victim} registered")
        wait_for(lambda: lab.hypervisors()[victim]["state"] == "up", 30, f"{victim} up")


def service(lab, host, enable):
    r = http("PUT", f"{lab.compute}/os-services/{'enable' if enable else 'disable'}",
             {"host": host, "binary": "nova-compute"})
    assert r.status == 200, (r.status, r.raw)


def action_burst(lab, sids, body):
    """POST body to every server's action at once; returns (threads, {sid: status})."""
    got, lock = {}, threading.Lock()

    def one(sid):
        try:
            r = http("POST", f"{lab.compute}/servers/{sid}/action", body)
        except OSError:
            return
        with lock:
            got[sid] = r.status
    ts = [threading.Thread(target=one, args=(sid,)) for sid in sids]
    for t in ts:
        t.start()
    return ts, got


def wait_all(lab, sids, statuses, timeout, what):
    """Wait until every server of sids is in statuses; the failure names the others."""
    try:
        wait_for(lambda: all(list_servers(lab)[s]["status"] in statuses for s in sids),
                 timeout, what, 0.05)
    except AssertionError:
        servers = list_servers(lab)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}: " + str(
            {s: (servers[s]["status"], servers[s].get("OS-EXT-STS:task_state"),
                 rows(lab, "SELECT uuid, status, source_host, dest_host FROM migrations "
                           "WHERE instance_uuid=? ORDER BY created_ms DESC LIMIT 1", (s,)))
             for s in sids if servers[s]["status"] not in statuses}))


def settle(lab, sids, timeout=60):
    """Wait until no server of sids has a task and no migration is in flight."""
    def quiet():
        servers = list_servers(lab)
        if any(servers[s]["status"] not in ("ACTIVE", "VERIFY_RESIZE", "ERROR") or
               servers[s].get("OS-EXT-STS:task_state") for s in sids):
            return False
        return not rows(lab, "SELECT uuid FROM migrations WHERE status IN (%s)" %
                        ",".join("?" * len(IN_FLIGHT)), IN_FLIGHT)
    try:
        wait_for(quiet, timeout, "servers settled, no migration in flight", 0.3)
    except AssertionError:
        servers = list_servers(lab)
        stuck = {s: (servers[s]["status"], servers[s].get("OS-EXT-STS:task_state"))
                 for s in sids}
        migs = rows(lab, "SELECT instance_uuid, source_host, dest_host, status FROM "
                         "migrations WHERE status IN (%s)" % ",".join("?" * len(IN_FLIGHT)),
                    IN_FLIGHT)
        raise AssertionError(f"not settled after {timeout} s: servers {stuck}, "
                             f"migrations in flight {migs}")
    servers = list_servers(lab)
    # "finished" (awaiting confirm) only with its server in VERIFY_RESIZE.
    for uuid, status in rows(lab, "SELECT instance_uuid, status FROM migrations WHERE "
                                  "status = 'finished'"):
        assert servers.get(uuid, {}).get("status") == "VERIFY_RESIZE", \
            f"migration of {uuid} finished but the server is {servers.get(uuid)}"
    return servers


def finish_verify(lab, sids, rnd):
    """Confirm or revert whatever a crash left in VERIFY_RESIZE; then settle again."""
    servers = list_servers(lab)
    left = [s for s in sids if servers[s]["status"] == "VERIFY_RESIZE"]
    for s in left:
        body = {"confirmResize": None} if rnd.random() < 0.5 else {"revertResize": None}
        r = http("POST", f"{lab.compute}/servers/{s}/action", body)
        assert r.status in (202, 204), (s, body, r.status, r.raw[:200])
    if left:
        wait_all(lab, left, ("ACTIVE", "ERROR"), 30, "VERIFY_RESIZE confirmed/reverted")
    return settle(lab, sids), len(left)


def check_consistent(lab, sids):
    servers = list_servers(lab)
    for s in sids:
        assert servers[s]["status"] in ("ACTIVE", "ERROR"), (s, servers[s]["status"])

    def domains_match():
        doms = all_domains(lab)
        for sid, srv in servers.items():
            want = [(srv["OS-EXT-SRV-ATTR:host"], "running")] \
                if srv["status"] == "ACTIVE" else []
            if doms.get(sid, []) != want:
                return False
        return all(uuid in servers for uuid in doms)
    try:
        wait_for(domains_match, 30, "one running domain per ACTIVE server, on its host", 0.3)
    except AssertionError:
        doms = all_domains(lab)
        bad = {sid: (srv["status"], srv["OS-EXT-SRV-ATTR:host"], doms.get(sid))
               for sid, srv in servers.items()
               if doms.get(sid, []) != ([(srv["OS-EXT-SRV-ATTR:host"], "running")]
                                         if srv["status"] == "ACTIVE" else [])}
        extra = [u for u in doms if u not in servers]
        raise AssertionError(f"domains disagree: {bad}, unknown domains: {extra}")
    allocs = rows(lab, "SELECT instance_uuid, host FROM allocations")
    want = sorted((sid, srv["OS-EXT-SRV-ATTR:host"]) for sid, srv in servers.items()
                  if srv["OS-EXT-SRV-ATTR:host"])
    assert sorted(allocs) == want, f"allocations {sorted(allocs)} != instances {want}"
    mallocs = rows(lab, "SELECT * FROM migration_allocations")
    assert not mallocs, f"migration allocations left: {mallocs}"
    conf = os.path.join(lab.dir, "nube-scheduler.conf")
    p = subprocess.run([lab.binary("scheduler", "nube-placement-audit"), "--config", conf,
                        "--json"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, f"placement audit: rc={p.returncode} {p.stdout} {p.stderr}"
    return servers


def place_on(lab, sids, host):
    """Bring sids to host (cold migrate + confirm the ones elsewhere), all ACTIVE."""
    servers = list_servers(lab)
    away = [s for s in sids if servers[s]["OS-EXT-SRV-ATTR:host"] != host]
    for s in away:
        r = http("POST", f"{lab.compute}/servers/{s}/action", {"migrate": {"host": host}})
        assert r.status == 202, (s, r.status, r.raw[:200])
    if away:
        wait_all(lab, away, ("VERIFY_RESIZE",), 30, f"moved to {host}")
        for s in away:
            r = http("POST", f"{lab.compute}/servers/{s}/action", {"confirmResize": None})
            assert r.status == 204, (s, r.status, r.raw[:200])
        wait_all(lab, away, ("ACTIVE",), 30, "confirmed")
    settle(lab, sids)


def crash_round(lab, sids, victim, phase, rnd):
    """Kill victim during phase (migrate, confirm, revert) of sids' cold migrations from
    the host they are on to the other one; restart; check."""
    servers = list_servers(lab)
    src = servers[sids[0]]["OS-EXT-SRV-ATTR:host"]
    dst = HOSTS[1] if src == HOSTS[0] else HOSTS[0]
    before = {u for (u,) in rows(lab, "SELECT uuid FROM migrations")}
    if phase == "migrate":
        body = {"migrate": {"host": dst}}
    else:
        ts, got = action_burst(lab, sids, {"migrate": {"host": dst}})
        for t in ts:
            t.join(30)
        assert all(got.get(s) == 202 for s in sids), got
        wait_all(lab, sids, ("VERIFY_RESIZE",), 30, "VERIFY_RESIZE before the crash")
        body = {"confirmResize": None} if phase == "confirm" else {"revertResize": None}
    who = {"scheduler": "scheduler", "source": src, "dest": dst}[victim]
    point, delay = rnd.choice(POINTS[phase]), rnd.uniform(0.0, 0.04)

    def reached():
        """The first of this round's migrations in the point's status (the rest are
        still on their way: the kill lands at different steps for different servers)."""
        return point == "post" or any(
            u not in before and st == point
            for u, st in rows(lab, "SELECT uuid, status FROM migrations"))
    regs = registrations(lab, who)
    ts, got = action_burst(lab, sids, body)
    try:
        wait_for(reached, 10, f"a migration {point}", interval=0.005)
    except AssertionError:
        point += " (not seen)"
    time.sleep(delay)
    lab.daemons[daemon_name(who)].kill9()
    for t in ts:
        t.join(30)
    restart(lab, who, regs)
    settle(lab, sids)
    _, leftover = finish_verify(lab, sids, rnd)
    servers = check_consistent(lab, sids)
    where = {}
    for s in sids:
        key = f"{servers[s]['status']}@{servers[s]['OS-EXT-SRV-ATTR:host']}"
        where[key] = where.get(key, 0) + 1
    return (f"{who} killed {delay * 1000:.0f} ms after {point} ({phase} {src}->{dst}): "
            f"accepted {sum(1 for v in got.values() if v in (202, 204))}/{len(sids)}, "
            f"{leftover} left verifying, now {where}")


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    keep = "--keep" in sys.argv
    seed = int(os.environ.get("NUBE_CRASH_SEED", str(int(time.time()))))
    rnd = random.Random(seed)
    print(f"seed {seed} ({'long' if LONG else 'short'}: {ROUNDS} round(s), {SERVERS} servers)")
    lab = Lab(build, host_vcpus=16, host_ram_mb=65536)
    passed = failed = 0
    t0 = time.monotonic()
    try:
        lab.start_scheduler()
        lab.start_api()
        for h in HOSTS:
            lab.start_agent(h)
        wait_for(lambda: all(lab.hypervisors().get(h, {}).get("state") == "up"
                             for h in HOSTS), 30, "agents up")
        service(lab, HOSTS[1], False)  # every server starts on hostA
        sids = []
        for i in range(SERVERS):
            r = lab.create_server(f"mc-{i:02d}")
            assert r.status == 202, (r.status, r.raw)
            sids.append(r.json["server"]["id"])
        for s in sids:
            lab.wait_status(s, {"ACTIVE"}, timeout=30)
        service(lab, HOSTS[1], True)
        plan = [(v, p, r) for r in range(ROUNDS) for p in ("migrate", "confirm", "revert")
                for v in VICTIMS]
        for victim, phase, r in plan:
            name = f"kill -9 {victim} during cold {phase} (round {r})"
            try:
                # Servers that ended in ERROR stay out of the next rounds.
                live = [s for s in sids if list_servers(lab)[s]["status"] == "ACTIVE"]
                assert live, "no ACTIVE server left"
                place_on(lab, live, list_servers(lab)[live[0]]["OS-EXT-SRV-ATTR:host"])
                what = crash_round(lab, live, victim, phase, rnd)
                print(f"ok   {name}: {what}", flush=True)
                passed += 1
            except Exception as e:  # noqa: BLE001 - report and stop
                failed += 1
                print(f"FAIL {name}: {e}", flush=True)
                traceback.print_exc()
                for d in lab.daemons.values():
                    if not d.alive():
                        print(f"--- {d.name} (dead) log tail:\n{d.tail(20)}")
                break  # the lab is in an unknown state; later rounds would only echo this
        if not failed:
            for s in sids:
                http("DELETE", f"{lab.compute}/servers/{s}")
            wait_for(lambda: not any(s in list_servers(lab) for s in sids), 30, "deleted")
    finally:
        codes = lab.stop_all()
        for name, code in codes.items():
            if code not in (0, None):
                print(f"FAIL {name} exited with {code}")
                failed += 1
        lab.cleanup(keep=keep or failed > 0 and os.environ.get("NUBE_CRASH_KEEP") == "1")
    print(f"{passed} passed, {failed} failed ({time.monotonic() - t0:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
