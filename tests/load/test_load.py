#!/usr/bin/env python3
"""Load test: mixed Compute API traffic from many projects against simulated hosts.

Real nube-scheduler, nube-api and one nube-agent simulating HOSTS hosts (libvirt test
driver). PROJECTS projects each get a member user and token; THREADS workers pick a
project and an operation at random, for DURATION seconds:

  list    GET /servers, /servers/detail   200, only the project's own servers
  show    GET /servers/<own id>           200, the same id and tenant
  peek    GET /servers/<other project's>  404 (isolation)
  create  POST /servers                   202 (the id is tracked)
  delete  DELETE /servers/<own ACTIVE>    204
  action  POST /servers/<own>/action      202 reboot (409 while the server is busy)
  flavors GET /flavors/detail             200, non-empty

Every answer is checked against the expectation above; anything else is a wrong answer.
The summary prints requests, wrong answers, p50/p99/max latency per operation, and the
RSS of each daemon half-way (steady state: a project holds at most MAX_PER_PROJECT
servers, creates turn into deletes beyond) and at the end. Then all servers settle and are deleted
and nube-placement-audit must be clean. The test fails on any wrong answer, a p99 over
P99_LIMIT_MS, or memory growing by more than MEM_GROWTH (ratio) + MEM_SLACK_MB. A check of
[quota] max_concurrent_builds (403 overLimit) runs first.

Short by default (run-tests); bench/load/run passes --duration/--threads for the long run.

Usage: test_load.py BUILD_DIR [--duration S] [--threads N] [--projects N] [--hosts N]
"""

import argparse
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

PASSWORD = "load-test-password-1"
BUILD_CAP = 5
MAX_PER_PROJECT = 12


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pct(values, p):
    if not values:
        return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.lat = {}
        self.wrong = []
        self.count = 0

    def add(self, op, ms, ok, detail=""):
        with self.lock:
            self.count += 1
            self.lat.setdefault(op, []).append(ms)
            if not ok and len(self.wrong) < 50:
                self.wrong.append(f"{op}: {detail}")
            if not ok:
                self.wrong_n = getattr(self, "wrong_n", 0) + 1


def make_project(lab, name, member_role):
    ident = f"http://127.0.0.1:{lab.identity_port}/v3"
    r = http("POST", f"{ident}/projects", {"project": {"name": name, "domain_id": "default"}})
    assert r.status == 201, (r.status, r.raw[:300])
    p = r.json["project"]
    r = http("POST", f"{ident}/users", {"user": {
        "name": f"{name}-u", "password": PASSWORD, "domain_id": "default",
        "default_project_id": p["id"]}})
    assert r.status == 201, (r.status, r.raw[:300])
    u = r.json["user"]
    r = http("PUT", f"{ident}/projects/{p['id']}/users/{u['id']}/roles/{member_role}")
    assert r.status in (200, 204), (r.status, r.raw[:300])
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": u["name"], "domain": {"id": "default"}, "password": PASSWORD}}},
        "scope": {"project": {"id": p["id"]}}}}
    r = http("POST", f"{ident}/auth/tokens", body, token=None)
    assert r.status == 201, (r.status, r.raw[:300])
    tok = {k.lower(): v for k, v in r.headers.items()}["x-subject-token"]
    return {"id": p["id"], "token": tok, "servers": [], "lock": threading.Lock()}


def worker(lab, projects, stats, deadline, rnd):
    url = lab.compute
    while time.monotonic() < deadline:
        pr = rnd.choice(projects)
        tok = pr["token"]
        with pr["lock"]:
            own = list(pr["servers"])
        op = rnd.choices(["list", "show", "peek", "create", "delete", "action", "flavors"],
                         [25, 20, 10, 15, 10, 10, 10])[0]
        if op in ("show", "delete", "action") and not own:
            op = "create"
        # A steady population, so memory can be judged flat: creates turn into deletes
        # once a project holds MAX_PER_PROJECT servers.
        if op == "create" and len(own) >= MAX_PER_PROJECT:
            op = "delete"
        t0 = time.monotonic()
        ok, detail = True, ""
        try:
            if op == "list":
                path = rnd.choice(["/servers", "/servers/detail"])
                r = http("GET", url + path, token=tok)
                ok = r.status == 200 and all(
                    s.get("tenant_id", pr["id"]) == pr["id"] for s in r.json["servers"])
                detail = f"{r.status} {r.raw[:200]!r}"
            elif op == "show":
                sid = rnd.choice(own)
                r = http("GET", f"{url}/servers/{sid}", token=tok)
                # 404 is right for a server this project deleted a moment ago.
                ok = (r.status == 200 and r.json["server"]["id"] == sid and
                      r.json["server"]["tenant_id"] == pr["id"]) or r.status == 404
                detail = f"{r.status} {r.raw[:200]!r}"
            elif op == "peek":
                other = rnd.choice([p for p in projects if p is not pr])
                with other["lock"]:
                    theirs = list(other["servers"])
                if not theirs:
                    continue
                r = http("GET", f"{url}/servers/{rnd.choice(theirs)}", token=tok)
                ok = r.status == 404
                detail = f"another project's server answered {r.status}"
            elif op == "create":
                r = http("POST", f"{url}/servers", {"server": {
                    "name": f"load-{rnd.randrange(1 << 30)}", "flavorRef": "1",
                    "imageRef": "cirros"}}, token=tok)
                ok = r.status == 202 and "id" in r.json["server"]
                if ok:
                    with pr["lock"]:
                        pr["servers"].append(r.json["server"]["id"])
                detail = f"{r.status} {r.raw[:200]!r}"
            elif op == "delete":
                with pr["lock"]:
                    if not pr["servers"]:
                        continue
                    sid = pr["servers"].pop(rnd.randrange(len(pr["servers"])))
                r = http("DELETE", f"{url}/servers/{sid}", token=tok)
                ok = r.status == 204
                detail = f"{r.status} {r.raw[:200]!r}"
            elif op == "action":
                sid = rnd.choice(own)
                r = http("POST", f"{url}/servers/{sid}/action", {"reboot": {"type": "SOFT"}},
                         token=tok)
                # 409: the server is building, rebooting or being deleted; 404: deleted.
                ok = r.status in (202, 409, 404)
                detail = f"{r.status} {r.raw[:200]!r}"
            else:
                r = http("GET", f"{url}/flavors/detail", token=tok)
                ok = r.status == 200 and len(r.json["flavors"]) > 0
                detail = f"{r.status}"
        except Exception as e:  # noqa: BLE001 - a transport error is a wrong answer too
            ok, detail = False, repr(e)
        stats.add(op, (time.monotonic() - t0) * 1000, ok, detail)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--projects", type=int, default=4)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--p99-limit-ms", type=float, default=2000)
    ap.add_argument("--mem-growth", type=float, default=1.25)
    ap.add_argument("--mem-slack-mb", type=float, default=32)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()

    # ASan keeps freed memory in a quarantine (256 MB by default) that would read as
    # growth; a small one keeps RSS meaningful in sanitizer builds.
    os.environ["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8"
    lab = Lab(a.build, api_extra=f"[quota]\ninstances = -1\ncores = -1\nram = -1\n"
                                 f"max_concurrent_builds = {BUILD_CAP * 1000}\n")
    failed = []
    try:
        lab.start_scheduler()
        lab.start_api()
        lab.start_sim_agents("sim", a.hosts, vcpus=64, ram_mb=262144, disk_gb=10000)
        r = http("GET", f"http://127.0.0.1:{lab.identity_port}/v3/roles?name=member")
        member = r.json["roles"][0]["id"]
        projects = [make_project(lab, f"load{i}", member) for i in range(a.projects)]

        # The memory baseline is taken half-way, once the server population and the
        # daemons' caches have reached their steady state; the end must match it.
        pids = {n: d.proc.pid for n, d in lab.daemons.items()}
        stats = Stats()
        deadline = time.monotonic() + a.duration
        ts = [threading.Thread(target=worker, args=(lab, projects, stats, deadline,
                                                    random.Random(i + 2)))
              for i in range(a.threads)]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        time.sleep(a.duration / 2)
        rss0 = {n: rss_kb(p) for n, p in pids.items()}
        for t in ts:
            t.join(a.duration + 120)
        elapsed = time.monotonic() - t0
        rss1 = {n: rss_kb(p) for n, p in pids.items()}

        wrong = getattr(stats, "wrong_n", 0)
        allms = [x for v in stats.lat.values() for x in v]
        print(f"requests {stats.count} in {elapsed:.1f} s ({stats.count / elapsed:.0f}/s), "
              f"{a.threads} threads, {a.projects} projects, {a.hosts} simulated hosts")
        print(f"wrong answers {wrong}")
        for w in stats.wrong[:10]:
            print(f"  {w}")
        print(f"{'op':8} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for op, v in sorted(stats.lat.items()):
            print(f"{op:8} {len(v):6d} {pct(v, 50):8.1f} {pct(v, 99):8.1f} {max(v):8.1f}")
        p99 = pct(allms, 99)
        print(f"{'all':8} {len(allms):6d} {pct(allms, 50):8.1f} {p99:8.1f} {max(allms):8.1f}")
        for n in pids:
            print(f"rss {n:12} half-way {rss0[n] / 1024:7.1f} MB  end {rss1[n] / 1024:7.1f} MB")
        if wrong:
            failed.append(f"{wrong} wrong answers")
        if p99 > a.p99_limit_ms:
            failed.append(f"p99 {p99:.0f} ms over {a.p99_limit_ms:.0f} ms")
        for n in pids:
            if rss1[n] > rss0[n] * a.mem_growth + a.mem_slack_mb * 1024:
                failed.append(f"{n} RSS grew {rss0[n]} -> {rss1[n]} kB")

        # Drain: every server settles, then all are deleted; placement must be clean.
        def settled():
            r = http("GET", f"{lab.compute}/servers/detail?all_tenants=1")
            return r.status == 200 and all(s["status"] in ("ACTIVE", "ERROR")
                                           for s in r.json["servers"])
        wait_for(settled, 120, "servers settled after the load", 0.5)

        # [quota] max_concurrent_builds: with the scheduler stopped nothing leaves BUILD,
        # so the cap is hit deterministically.
        lab.daemons["scheduler"].stop()
        lab.daemons["api"].stop()
        lab.api_extra = lab.api_extra.replace(f"max_concurrent_builds = {BUILD_CAP * 1000}",
                                              f"max_concurrent_builds = {BUILD_CAP}")
        lab.start_api()
        codes = []
        for i in range(BUILD_CAP + 2):
            r = http("POST", f"{lab.compute}/servers", {"server": {
                "name": f"cap-{i}", "flavorRef": "1", "imageRef": "cirros"}},
                token=projects[0]["token"])
            codes.append(r.status)
            if r.status == 403:
                assert "overLimit" in r.json, r.raw[:200]
        want = [202] * BUILD_CAP + [403, 403]
        print(f"build cap {BUILD_CAP}: creates answered {codes}")
        if codes != want:
            failed.append(f"max_concurrent_builds: {codes} != {want}")
        lab.start_scheduler()
        wait_for(settled, 120, "servers settled after the cap check", 0.5)

        r = http("GET", f"{lab.compute}/servers?all_tenants=1")
        ids = [s["id"] for s in r.json["servers"]]
        for sid in ids:
            assert http("DELETE", f"{lab.compute}/servers/{sid}").status in (204, 404)
        wait_for(lambda: not http("GET", f"{lab.compute}/servers?all_tenants=1")
                 .json["servers"], 120, "all servers deleted", 0.5)
        conf = os.path.join(lab.dir, "nube-scheduler.conf")
        p = subprocess.run([lab.binary("scheduler", "nube-placement-audit"), "--config",
                            conf, "--json"], capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            failed.append(f"placement audit: {p.stdout[:300]}")
        print(f"drained: {len(ids)} servers deleted, placement audit rc={p.returncode}")
    except Exception as e:  # noqa: BLE001
        failed.append(repr(e))
        traceback.print_exc()
    finally:
        lab.stop_all()
        lab.cleanup(keep=a.keep)
    print("FAIL: " + "; ".join(failed) if failed else "ok: load test passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
