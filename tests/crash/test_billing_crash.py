#!/usr/bin/env python3
"""nube-billing killed while it ingests usage samples loses none and counts none twice.

Real nube-scheduler, nube-api, nube-billing and one nube-agent sampling every second
(the BillingLab of tests/integration/test_billing.py). Servers run, nube-billing is
SIGKILLed ROUNDS times at random moments of the sample flow and restarted; the agent keeps
unacknowledged samples in its outbox meanwhile. Then the servers are deleted, and once the
flow is over the samples billing stored must be exactly the samples the agent queued
(its nube_agent_usage_samples_total): same count, no duplicate id; and the hourly
rollup rating reads (ctr_hour) must equal the sums of the stored samples' deltas.

Then kill points during rating: the whole window is re-rated (POST /v1/rate) and
nube-billing is SIGKILLed while that request runs, RATE_KILLS times at random instants
(before, during or after its transaction), restarted and made to rate again: the rated
table must be exactly the one rated before the kills (no hour lost, none doubled).

Usage: test_billing_crash.py BUILD_DIR
"""

import os
import random
import sqlite3
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from nubelab import http, wait_for  # noqa: E402
from test_billing import BillingLab  # noqa: E402

ROUNDS = 6 if os.environ.get("NUBE_CRASH_LONG") == "1" else 2
RATE_KILLS = 10 if os.environ.get("NUBE_CRASH_LONG") == "1" else 3


def agent_sent(lab):
    m = http("GET", f"http://127.0.0.1:{lab.agent_ports['hostA']}/metrics", token=None)
    for line in m.raw.decode().splitlines():
        if line.startswith("nube_agent_usage_samples_total"):
            return int(line.split()[-1])
    raise AssertionError("agent has no nube_agent_usage_samples_total")


def stored(lab):
    db = sqlite3.connect(os.path.join(lab.dir, "billing.db"), timeout=10)
    try:
        return db.execute("SELECT count(*), count(DISTINCT id) FROM samples").fetchone()
    finally:
        db.close()


def rollup_mismatches(lab):
    """Groups where ctr_hour differs from the samples' deltas (the rollup's invariant)."""
    db = sqlite3.connect(os.path.join(lab.dir, "billing.db"), timeout=10)
    try:
        s = dict(((h, i, p), tuple(v)) for h, i, p, *v in db.execute(
            "SELECT ts / 3600000, inst, project_id, sum(d_cpu), sum(d_rx), sum(d_tx),"
            " sum(d_rd), sum(d_wr) FROM samples WHERE kind = 0 GROUP BY 1, 2, 3"))
        h = dict(((h, i, p), tuple(v)) for h, i, p, *v in db.execute(
            "SELECT hour, inst, project_id, d_cpu, d_rx, d_tx, d_rd, d_wr FROM ctr_hour"))
        return [k for k in set(s) | set(h) if s.get(k) != h.get(k)], len(h)
    finally:
        db.close()


def rated(lab):
    db = sqlite3.connect(os.path.join(lab.dir, "billing.db"), timeout=10)
    try:
        return db.execute("SELECT period, project_id, resource, meter, quantity, cost"
                          " FROM rated ORDER BY 1, 2, 3, 4").fetchall()
    finally:
        db.close()


def rate(lab, window):
    try:
        return http("POST", f"{lab.billing}/v1/rate", window, timeout=10).status
    except Exception:  # noqa: BLE001 - killed under the request
        return None


def kills_during_rating(lab, rnd):
    now = int(time.time() * 1000)
    window = {"start": now - 2 * 3600000, "end": now + 3600000}
    assert rate(lab, window) == 200
    ref = rated(lab)
    assert ref, "nothing was rated"
    for _ in range(RATE_KILLS):
        t = threading.Thread(target=rate, args=(lab, window))
        t.start()
        time.sleep(rnd.uniform(0.0, 0.03))
        lab.daemons["billing"].kill9()
        t.join(15)
        restart_billing(lab)
        assert rate(lab, window) == 200
        got = rated(lab)
        assert got == ref, f"rated rows differ after a kill during rating: {got} != {ref}"
    print(f"ok   billing killed {RATE_KILLS} times while rating; {len(ref)} rated rows "
          f"identical after each restart")


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    seed = int(os.environ.get("NUBE_CRASH_SEED", str(int(time.time()))))
    rnd = random.Random(seed)
    lab = BillingLab(build)
    ok = False
    try:
        lab.start_scheduler()
        lab.start_api()
        lab.start_billing()
        lab.start_billing_agent("hostA")
        wait_for(lambda: lab.hypervisors().get("hostA", {}).get("state") == "up", 30,
                 "hostA registered")
        ids = []
        for i in range(3):
            r = lab.create_server(f"metered-{i}")
            assert r.status == 202, (r.status, r.raw[:200])
            ids.append(r.json["server"]["id"])
        for sid in ids:
            lab.wait_status(sid, ("ACTIVE",), 30)
        wait_for(lambda: agent_sent(lab) > 0, 20, "samples flowing")
        for _ in range(ROUNDS):
            time.sleep(rnd.uniform(0.5, 1.5))
            lab.daemons["billing"].kill9()
            time.sleep(rnd.uniform(0.2, 1.0))
            restart_billing(lab)
        for sid in ids:
            assert http("DELETE", f"{lab.compute}/servers/{sid}").status == 204
        for sid in ids:
            wait_for(lambda s=sid: http("GET", f"{lab.compute}/servers/{s}").status == 404,
                     30, "deleted")

        # The flow stops with the servers; wait until billing has caught up and is stable.
        def caught_up():
            sent = agent_sent(lab)
            n, distinct = stored(lab)
            return sent > 0 and n == sent and distinct == n
        try:
            wait_for(caught_up, 30, "billing stored every sample the agent sent", 0.3)
        except AssertionError:
            raise AssertionError(f"agent sent {agent_sent(lab)}, billing stored "
                                 f"(rows, distinct ids) {stored(lab)}")
        time.sleep(1.5)
        sent, (n, distinct) = agent_sent(lab), stored(lab)
        assert n == sent == distinct, (sent, n, distinct)
        print(f"ok   seed {seed}: billing killed {ROUNDS} times mid-ingest; "
              f"{sent} samples sent, {n} stored, {distinct} distinct")
        bad, groups = rollup_mismatches(lab)
        assert groups > 0 and not bad, f"hourly rollup differs from the samples: {bad}"
        print(f"ok   hourly rollup equals the samples' deltas ({groups} groups)")
        kills_during_rating(lab, rnd)
        ok = True
    except Exception as e:  # noqa: BLE001
        print(f"FAIL {e}")
        traceback.print_exc()
        r = http("GET", f"{lab.compute}/servers/detail")
        print([(x["name"], x["status"], x.get("fault")) for x in r.json.get("servers", [])])
        for d in lab.daemons.values():
            print(f"--- {d.name}:\n{d.tail(15)}")
    finally:
        lab.stop_all()
        lab.cleanup()
    print(f"{1 if ok else 0} passed, {0 if ok else 1} failed")
    return 0 if ok else 1


def restart_billing(lab):
    """Start nube-billing again with the config it had (same ports, same database)."""
    conf = os.path.join(lab.dir, "nube-billing.conf")
    lab._start("billing", lab.binary("billing", "nube-billing"), conf,
               f"{lab.billing}/healthz")


if __name__ == "__main__":
    sys.exit(main())
