#!/usr/bin/env python3
"""End-to-end placement bench: N instances to ACTIVE across H simulated hosts.

Real nube-scheduler and nube-api (tests/integration/nubelab.py) and nube-agent
processes running [agent] simulate_hosts (each host its own bus identity and libvirt
test:/// connection). Creates N servers (one request each, `inflight` requests in
flight), waits until every one is ACTIVE, and prints the time, the rate and the
scheduler's own decision time (from /metrics).

Usage: e2e.py BUILD_DIR HOSTS INSTANCES [INFLIGHT] [AGENT_PROCS]
Prints one line: "hosts=H instances=N inflight=F start_hosts_s=.. to_active_s=.. ..."
"""

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tests", "integration"))
from nubelab import Lab, http, wait_for  # noqa: E402

NO_QUOTA = "[quota]\ninstances = -1\ncores = -1\nram = -1\n"
SCHED = "[scheduler]\nmax_instances_per_host = 0\nhost_down_after_s = 60\n"


def metric(lab, name):
    m = http("GET", f"http://127.0.0.1:{lab.sched_http_port}/metrics", token=None).raw.decode()
    for line in m.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0


def main():
    build, hosts, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    inflight = int(sys.argv[4]) if len(sys.argv) > 4 else 50
    procs = int(sys.argv[5]) if len(sys.argv) > 5 else max(1, min(4, hosts // 100))
    # Every run has room for all instances: RAM per host scales with instances per host.
    per_host = (n + hosts - 1) // hosts
    ram = max(4096, per_host * 512 + 1024)
    vcpus = max(4, (per_host + 3) // 4 + 1)
    lab = Lab(build, api_extra=NO_QUOTA, sched_extra=SCHED)
    try:
        lab.start_scheduler()
        lab.start_api()
        t0 = time.monotonic()
        step = (hosts + procs - 1) // procs
        for p in range(procs):
            first = p * step
            cnt = min(step, hosts - first)
            if cnt > 0:
                lab.start_sim_agents(f"sim{p}", cnt, vcpus=vcpus, ram_mb=ram, disk_gb=1000,
                                     first=first, timeout=300)
        start_hosts = time.monotonic() - t0
        d0 = metric(lab, "nube_scheduler_decision_seconds_total")

        def create(i):
            r = http("POST", f"{lab.compute}/servers",
                     {"server": {"name": f"b-{i:05d}", "flavorRef": "1", "imageRef": "cirros"}})
            assert r.status == 202, (r.status, r.raw[:200])
            return r.json["server"]["id"]

        t1 = time.monotonic()
        with ThreadPoolExecutor(max_workers=inflight) as ex:
            ids = set(ex.map(create, range(n)))
        accepted = time.monotonic() - t1

        def statuses():
            """Every server's status, page by page (the API caps a page at 1000)."""
            out, marker = [], None
            while True:
                q = f"limit=1000&marker={marker}" if marker else "limit=1000"
                r = http("GET", f"{lab.compute}/servers/detail?{q}")
                if r.status != 200:
                    return None
                page = r.json["servers"]
                out += [s["status"] for s in page if s["id"] in ids]
                if len(page) < 1000:
                    return out
                marker = page[-1]["id"]

        def all_active():
            st = statuses()
            if st is None:
                return None
            bad = [s for s in st if s == "ERROR"]
            assert not bad, f"{len(bad)} servers in ERROR"
            return len(st) == n and all(s == "ACTIVE" for s in st)
        wait_for(all_active, 600, f"{n} servers ACTIVE", interval=0.25)
        to_active = time.monotonic() - t1
        decided = metric(lab, "nube_scheduler_decisions_total")
        dsec = metric(lab, "nube_scheduler_decision_seconds_total") - d0
        print(f"hosts={hosts} instances={n} inflight={inflight} start_hosts_s={start_hosts:.1f} "
              f"accepted_s={accepted:.2f} to_active_s={to_active:.2f} "
              f"rate_per_s={n / to_active:.0f} "
              f"sched_mean_decision_ms={1000 * dsec / max(decided, 1):.3f}", flush=True)
        codes = lab.stop_all()
        bad = {k: v for k, v in codes.items() if v != 0}
        if bad:
            print(f"unclean shutdown: {bad}")
            return 1
        return 0
    finally:
        lab.cleanup()


if __name__ == "__main__":
    sys.exit(main())
