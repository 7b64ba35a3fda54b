#!/usr/bin/env python3
"""Crash consistency: SIGKILL a daemon in the middle of creates and deletes, restart it,
and check that the cloud converges to a consistent state.

Real nube-scheduler, nube-api and two nube-agents (libvirt test driver) on loopback, via
tests/integration/nubelab.py. Kill points are chosen by timing: a burst of requests is
started and the victim is killed after a delay drawn from a seeded RNG (the seed is
printed, NUBE_CRASH_SEED=<n> replays it). After the restart every check must hold:

  - every server settles: ACTIVE with exactly one libvirt domain, on the host the API
    names, or ERROR with no domain; a deleted server is gone (404) and has no domain;
  - no domain exists in libvirt that the API does not know (nothing spawned twice);
  - allocations match instances: nube-placement-audit --json finds nothing;
  - no bus message is lost: every accepted create settles and every accepted delete
    completes without being repeated by the test.

Short by default (one round per victim, < 90 s); NUBE_CRASH_LONG=1 runs more rounds
with more servers and random delays.

Usage: test_crash.py BUILD_DIR [--keep]
"""

import os
import random
import subprocess
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from nubelab import Lab, http, wait_for  # noqa: E402

LONG = os.environ.get("NUBE_CRASH_LONG") == "1"
ROUNDS = 4 if LONG else 1
SERVERS = 16 if LONG else 8
HOSTS = ("hostA", "hostB")


def settle_timeout():
    return 120 if LONG else 60


def create_burst(lab, prefix, n):
    """POST n servers concurrently; returns the ids the API accepted (202). A POST that
    fails because the API died may or may not have created a server: the caller finds
    those with a list afterwards."""
    ids, lock = [], threading.Lock()

    def one(i):
        try:
            r = lab.create_server(f"{prefix}-{i:02d}")
        except OSError:
            return
        if r.status == 202:
            with lock:
                ids.append(r.json["server"]["id"])
    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    return ts, ids


def list_servers(lab):
    return lab.all_servers()


def all_domains(lab):
    """{uuid: [host, ...]}: where each domain runs."""
    return {u: [h for h, _ in v] for u, v in lab.domains_by_uuid(HOSTS).items()}


def restart(lab, victim):
    if victim == "scheduler":
        lab.start_scheduler()
    elif victim == "api":
        lab.start_api()
    else:
        lab.start_agent(victim)
        wait_for(lambda: lab.hypervisors()[victim]["state"] == "up", 30, f"{victim} up")


def check_consistent(lab, deleted=()):
    """Wait until nothing is in flight, then check the invariants (module docstring)."""
    def settled():
        servers = list_servers(lab)
        return all(s["status"] in ("ACTIVE", "ERROR") for s in servers.values()) and \
            not any(sid in servers for sid in deleted)
    try:
        wait_for(settled, settle_timeout(), "every server ACTIVE/ERROR, deletes done", 0.3)
    except AssertionError:
        stuck = {sid: (s["status"], s.get("OS-EXT-STS:task_state"))
                 for sid, s in list_servers(lab).items()
                 if s["status"] not in ("ACTIVE", "ERROR") or sid in deleted}
        raise AssertionError(f"not settled: {stuck}")
    servers = list_servers(lab)

    # Domains follow instances; the agents may need a sync period to remove leftovers.
    def domains_match():
        doms = all_domains(lab)
        for sid, s in servers.items():
            want = [s["OS-EXT-SRV-ATTR:host"]] if s["status"] == "ACTIVE" else []
            if doms.get(sid, []) != want:
                return False
        return all(uuid in servers for uuid in doms)
    try:
        wait_for(domains_match, 30, "domains match instances", 0.3)
    except AssertionError:
        doms = all_domains(lab)
        bad = {sid: (s["status"], s["OS-EXT-SRV-ATTR:host"], doms.get(sid))
               for sid, s in servers.items()
               if doms.get(sid, []) != ([s["OS-EXT-SRV-ATTR:host"]]
                                         if s["status"] == "ACTIVE" else [])}
        extra = [u for u in doms if u not in servers]
        raise AssertionError(f"domains disagree: {bad}, unknown domains: {extra}")
    for sid in deleted:
        assert http("GET", f"{lab.compute}/servers/{sid}").status == 404, sid

    conf = os.path.join(lab.dir, "nube-scheduler.conf")
    p = subprocess.run([lab.binary("scheduler", "nube-placement-audit"), "--config", conf,
                        "--json"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, f"placement audit: rc={p.returncode} {p.stdout} {p.stderr}"
    return servers


def crash_create(lab, victim, rnd, tag):
    """Kill victim during a burst of creates, restart it, check."""
    before = set(list_servers(lab))
    ts, ids = create_burst(lab, f"{tag}", SERVERS)
    time.sleep(rnd.uniform(0.0, 0.15))
    lab.daemons[victim if victim in ("scheduler", "api") else f"agent-{victim}"].kill9()
    for t in ts:
        t.join(60)
    restart(lab, victim)
    servers = check_consistent(lab)
    missing = [sid for sid in ids if sid not in servers]
    assert not missing, f"accepted creates lost: {missing}"
    new = [sid for sid in servers if sid not in before]
    active = sum(1 for sid in new if servers[sid]["status"] == "ACTIVE")
    return f"{len(ids)} accepted, {len(new)} created, {active} ACTIVE"


def crash_delete(lab, victim, rnd, tag):
    """Create servers, then kill victim during a burst of deletes, restart, check."""
    ts, ids = create_burst(lab, f"{tag}", SERVERS)
    for t in ts:
        t.join(60)
    check_consistent(lab)
    accepted, lock = [], threading.Lock()

    def one(sid):
        try:
            r = http("DELETE", f"{lab.compute}/servers/{sid}")
        except OSError:
            return
        if r.status in (204, 404):
            with lock:
                accepted.append(sid)
    dts = [threading.Thread(target=one, args=(sid,)) for sid in ids]
    for t in dts:
        t.start()
    time.sleep(rnd.uniform(0.0, 0.1))
    lab.daemons[victim if victim in ("scheduler", "api") else f"agent-{victim}"].kill9()
    for t in dts:
        t.join(60)
    restart(lab, victim)
    check_consistent(lab, deleted=accepted)
    # Clean up what the API did not accept (the killed API), the normal way.
    for sid in set(ids) - set(accepted):
        assert http("DELETE", f"{lab.compute}/servers/{sid}").status in (204, 404)
    check_consistent(lab, deleted=ids)
    return f"{len(accepted)}/{len(ids)} deletes accepted, all gone"


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
        plan = []
        for r in range(ROUNDS):
            for victim in ("scheduler", "hostA", "api"):
                plan.append(("create", victim, r))
            for victim in ("scheduler", "hostB") + (("api",) if LONG else ()):
                plan.append(("delete", victim, r))
        for kind, victim, r in plan:
            name = f"kill -9 {victim} during {kind}s (round {r})"
            tag = f"c{r}{kind[0]}{victim[-1]}"
            try:
                fn = crash_create if kind == "create" else crash_delete
                what = fn(lab, victim, rnd, tag)
                print(f"ok   {name}: {what}")
                passed += 1
            except Exception as e:  # noqa: BLE001 - report and go on
                failed += 1
                print(f"FAIL {name}: {e}")
                traceback.print_exc()
                for d in lab.daemons.values():
                    if not d.alive():
                        print(f"--- {d.name} (dead) log tail:\n{d.tail(20)}")
                break  # the lab is in an unknown state; later rounds would only echo this
    finally:
        lab.stop_all()
        lab.cleanup(keep=keep or failed > 0 and os.environ.get("NUBE_CRASH_KEEP") == "1")
    print(f"{passed} passed, {failed} failed ({time.monotonic() - t0:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
