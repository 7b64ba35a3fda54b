#!/usr/bin/env python3
"""Placement at scale with simulated hosts (issue 4).

Real nube-scheduler and nube-api on loopback; the hosts are nube-agent processes running
[agent] simulate_hosts = N (simulate.c), each host its own bus identity and libvirt
test:/// connection. Checks:
  - 200 parallel boots against room for exactly 150: exactly 150 ACTIVE, 50 ERROR with a
    "No valid host" fault that names the RAM filter, and no host overcommitted;
  - a 10-member anti-affinity group booted in parallel on 10 hosts lands on 10 distinct
    hosts, and the 11th member fails naming the group policy;
  - availability zones, aggregate extra specs and image properties filter hosts, and
    their "no valid host" faults name the filter;
  - a host that fails every spawn: the build retries on an alternate and goes ACTIVE;
    three failing hosts exhaust max_attempts and the fault lists every attempt;
  - nube-placement-audit finds planted inconsistencies and --repair fixes them.

Usage: test_placement.py BUILD_DIR [--keep]
"""

import os
import sqlite3
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nubelab import Lab, http, wait_for  # noqa: E402

NO_QUOTA = """[quota]
instances = -1
cores = -1
ram = -1
server_groups = -1
server_group_members = -1
"""


def boot(lab, name, flavor="1", hints=None, az=None, metadata=None):
    srv = {"name": name, "flavorRef": flavor, "imageRef": "cirros"}
    if az:
        srv["availability_zone"] = az
    if metadata:
        srv["metadata"] = metadata
    body = {"server": srv}
    if hints:
        body["os:scheduler_hints"] = hints
    r = http("POST", f"{lab.compute}/servers", body)
    assert r.status == 202, (r.status, r.raw[:300])
    return r.json["server"]["id"]


def boot_many(lab, names, workers=50, **kw):
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(lambda n: boot(lab, n, **kw), names))


def wait_final(lab, ids, timeout=60):
    """Every server ACTIVE or ERROR; returns {id: server} (one list call per poll)."""
    ids = set(ids)

    def done():
        r = http("GET", f"{lab.compute}/servers/detail?limit=1000")
        if r.status != 200:
            return None
        got = {s["id"]: s for s in r.json["servers"] if s["id"] in ids}
        if len(got) == len(ids) and all(s["status"] in ("ACTIVE", "ERROR") for s in got.values()):
            return got
        return None
    return wait_for(done, timeout, f"{len(ids)} servers ACTIVE/ERROR", interval=0.3)


def host_of(s):
    return s.get("OS-EXT-SRV-ATTR:host")


def fault_of(s):
    return (s.get("fault") or {}).get("message", "")


def assert_no_overcommit(lab):
    """From the controller DB: per host, allocations within capacity."""
    db = sqlite3.connect(lab.db, timeout=10)
    try:
        rows = db.execute(
            "SELECT h.name, h.vcpus * h.cpu_ratio - h.reserved_vcpus,"
            " h.ram_mb * h.ram_ratio - h.reserved_ram_mb, h.disk_gb * h.disk_ratio - h.reserved_disk_gb,"
            " COALESCE(SUM(a.vcpus), 0), COALESCE(SUM(a.ram_mb), 0), COALESCE(SUM(a.disk_gb), 0)"
            " FROM hosts h LEFT JOIN allocations a ON a.host = h.name GROUP BY h.name").fetchall()
    finally:
        db.close()
    for name, cap_c, cap_r, cap_d, uc, ur, ud in rows:
        assert uc <= cap_c and ur <= cap_r and ud <= cap_d, (name, cap_c, cap_r, cap_d, uc, ur, ud)
    return rows


# ---- scenarios ----

def scenario_overcommit(build):
    """15 hosts x 10 m1.tiny (RAM 5120 MB at ratio 1.0) = room for exactly 150."""
    lab = Lab(build, api_extra=NO_QUOTA)
    try:
        lab.start_scheduler()
        lab.start_api()
        lab.start_sim_agents("oc", 15, vcpus=4, ram_mb=5120, disk_gb=100)
        t0 = time.monotonic()
        ids = boot_many(lab, [f"oc-{i:03d}" for i in range(200)])
        final = wait_final(lab, ids)
        took = time.monotonic() - t0
        active = [s for s in final.values() if s["status"] == "ACTIVE"]
        errors = [s for s in final.values() if s["status"] == "ERROR"]
        assert len(active) == 150, (len(active), len(errors))
        assert len(errors) == 50
        for s in errors:
            f = fault_of(s)
            assert "No valid host was found" in f and "RAM (need 512 MB)" in f, f
        per_host = {}
        for s in active:
            per_host[host_of(s)] = per_host.get(host_of(s), 0) + 1
        assert len(per_host) == 15 and all(v == 10 for v in per_host.values()), per_host
        assert_no_overcommit(lab)
        print(f"     200 parallel boots, room for 150: 150 ACTIVE, 50 ERROR in {took:.1f}s;"
              f" sample fault: {fault_of(errors[0])[:160]}")
        return lab
    except BaseException:
        lab.keep_on_fail = True
        raise


def scenario_groups_and_filters(build):
    lab = Lab(build, api_extra=NO_QUOTA)
    try:
        lab.start_scheduler()
        lab.start_api()
        lab.start_sim_agents("ag", 10, vcpus=8, ram_mb=8192, disk_gb=200)
        mv = {"OpenStack-API-Version": "compute 2.64", "X-OpenStack-Nova-API-Version": "2.64"}
        r = http("POST", f"{lab.compute}/os-server-groups",
                 {"server_group": {"name": "web", "policy": "anti-affinity"}}, headers=mv)
        assert r.status == 200, (r.status, r.raw)
        gid = r.json["server_group"]["id"]
        assert r.json["server_group"]["policy"] == "anti-affinity"

        ids = boot_many(lab, [f"web-{i}" for i in range(10)], workers=10, hints={"group": gid})
        final = wait_final(lab, ids)
        assert all(s["status"] == "ACTIVE" for s in final.values()), \
            {k: (s["status"], fault_of(s)) for k, s in final.items()}
        hosts = {host_of(s) for s in final.values()}
        assert len(hosts) == 10, hosts
        eleventh = boot(lab, "web-10", hints={"group": gid})
        s11 = wait_final(lab, [eleventh])[eleventh]
        assert s11["status"] == "ERROR", s11
        assert "ServerGroupAntiAffinity(web)" in fault_of(s11), fault_of(s11)
        r = http("GET", f"{lab.compute}/os-server-groups/{gid}", headers=mv)
        assert r.status == 200 and len(r.json["server_group"]["members"]) >= 10, r.raw[:300]
        print(f"     anti-affinity: 10 members on 10 hosts; 11th: {fault_of(s11)[:140]}")
        # The 2.1 dialect ("policies"), soft policies from 2.15 only, delete.
        r = http("GET", f"{lab.compute}/os-server-groups")
        assert r.status == 200 and r.json["server_groups"][0]["policies"] == ["anti-affinity"], r.raw
        r = http("POST", f"{lab.compute}/os-server-groups",
                 {"server_group": {"name": "x", "policies": ["soft-affinity"]}})
        assert r.status == 400, (r.status, r.raw)
        r = http("POST", f"{lab.compute}/os-server-groups",
                 {"server_group": {"name": "x", "policies": ["soft-affinity"]}},
                 headers={"OpenStack-API-Version": "compute 2.15"})
        assert r.status == 200, (r.status, r.raw)
        r = http("DELETE", f"{lab.compute}/os-server-groups/{r.json['server_group']['id']}")
        assert r.status == 204, (r.status, r.raw)
        r = http("POST", f"{lab.compute}/servers", {"server": {"name": "x", "flavorRef": "1",
                 "imageRef": "cirros"}, "os:scheduler_hints": {"group": "not-a-uuid"}})
        assert r.status == 400, (r.status, r.raw)

        # Availability zone through an aggregate.
        r = http("POST", f"{lab.compute}/os-aggregates",
                 {"aggregate": {"name": "rack2", "availability_zone": "az2"}})
        assert r.status == 200, (r.status, r.raw)
        agg = r.json["aggregate"]["id"]
        for h in ("ag-0003", "ag-0004"):
            r = http("POST", f"{lab.compute}/os-aggregates/{agg}/action", {"add_host": {"host": h}})
            assert r.status == 200, (r.status, r.raw)
        r = http("POST", f"{lab.compute}/os-aggregates/{agg}/action",
                 {"set_metadata": {"metadata": {"ssd": "true"}}})
        assert r.status == 200 and r.json["aggregate"]["metadata"]["ssd"] == "true", r.raw
        ids = boot_many(lab, [f"az-{i}" for i in range(4)], workers=4, az="az2")
        final = wait_final(lab, ids)
        assert {host_of(s) for s in final.values()} <= {"ag-0003", "ag-0004"}, final
        assert all(s["status"] == "ACTIVE" for s in final.values())
        bad = boot(lab, "az-none", az="az9")
        s = wait_final(lab, [bad])[bad]
        assert s["status"] == "ERROR" and "10 removed by AvailabilityZone(az9)" in fault_of(s), s
        print(f"     AZ: az2 -> ag-0003/ag-0004; az9: {fault_of(s)[:100]}")
        r = http("GET", f"{lab.compute}/os-aggregates")
        assert r.status == 200 and r.json["aggregates"][0]["hosts"] == ["ag-0003", "ag-0004"], r.raw
        assert r.json["aggregates"][0]["availability_zone"] == "az2"
        r = http("DELETE", f"{lab.compute}/os-aggregates/{agg}")
        assert r.status == 400, (r.status, r.raw)  # still has hosts

        # Aggregate extra specs: a flavor that needs ssd=true. Flavor extra specs are
        # written straight into the controller DB here (the compute concern's table).
        db = sqlite3.connect(lab.db, timeout=10)
        with db:
            db.execute("INSERT INTO flavors (id, name, vcpus, ram_mb, disk_gb) VALUES"
                       " ('ssd1', 'ssd.tiny', 1, 512, 1)")
            db.execute("INSERT INTO flavor_extra_specs (flavor_id, spec_key, spec_value) VALUES"
                       " ('ssd1', 'aggregate_instance_extra_specs:ssd', 'true')")
            db.execute("INSERT INTO flavors (id, name, vcpus, ram_mb, disk_gb) VALUES"
                       " ('nvme1', 'nvme.tiny', 1, 512, 1)")
            db.execute("INSERT INTO flavor_extra_specs (flavor_id, spec_key, spec_value) VALUES"
                       " ('nvme1', 'aggregate_instance_extra_specs:nvme', 'true')")
        db.close()
        ids = boot_many(lab, [f"ssd-{i}" for i in range(3)], workers=3, flavor="ssd1")
        final = wait_final(lab, ids)
        assert all(s["status"] == "ACTIVE" and host_of(s) in ("ag-0003", "ag-0004")
                   for s in final.values()), {k: (s["status"], host_of(s), fault_of(s))
                                              for k, s in final.items()}
        bad = boot(lab, "nvme", flavor="nvme1")
        s = wait_final(lab, [bad])[bad]
        assert s["status"] == "ERROR" and "AggregateInstanceExtraSpecs(nvme=true)" in fault_of(s), s

        # Image properties: a Xen PV image never lands on these (libvirt test) hosts.
        bad = boot(lab, "xen-pv", metadata={"hypervisor_type": "xen", "vm_mode": "xen"})
        s = wait_final(lab, [bad])[bad]
        assert s["status"] == "ERROR" and "ImageProperties(hypervisor_type=xen" in fault_of(s), s
        ok = boot(lab, "hvm", metadata={"vm_mode": "hvm"})
        assert wait_final(lab, [ok])[ok]["status"] == "ACTIVE"
        print(f"     extra specs ssd=true -> rack2; image props: {fault_of(s)[:110]}")
        assert_no_overcommit(lab)
        return lab
    except BaseException:
        lab.keep_on_fail = True
        raise


def scenario_retries_and_audit(build):
    lab = Lab(build, api_extra=NO_QUOTA)
    try:
        lab.start_scheduler()
        lab.start_api()
        # The failing host has the most free RAM, so it is every build's first choice.
        lab.start_sim_agents("bad", 1, vcpus=8, ram_mb=16384, fail_spawns=True)
        lab.start_sim_agents("good", 2, vcpus=8, ram_mb=8192)
        ids = boot_many(lab, [f"r-{i}" for i in range(4)], workers=4)
        final = wait_final(lab, ids)
        assert all(s["status"] == "ACTIVE" and host_of(s).startswith("good-")
                   for s in final.values()), {k: (s["status"], host_of(s), fault_of(s))
                                              for k, s in final.items()}
        m = http("GET", f"http://127.0.0.1:{lab.sched_http_port}/metrics", token=None).raw.decode()
        retries = [l for l in m.splitlines() if l.startswith("nube_scheduler_retries_total")]
        assert retries and int(retries[0].split()[-1]) >= 1, retries
        print(f"     failing host: 4 builds retried onto good-* ({retries[0]})")

        # Three failing hosts in their own zone: max_attempts (3) exhausted.
        lab.start_sim_agents("flaky", 3, vcpus=8, ram_mb=8192, fail_spawns=True)
        r = http("POST", f"{lab.compute}/os-aggregates",
                 {"aggregate": {"name": "flaky", "availability_zone": "flaky"}})
        agg = r.json["aggregate"]["id"]
        for i in range(3):
            r = http("POST", f"{lab.compute}/os-aggregates/{agg}/action",
                     {"add_host": {"host": f"flaky-{i:04d}"}})
            assert r.status == 200, r.raw
        sid = boot(lab, "doomed", az="flaky")
        s = wait_final(lab, [sid])[sid]
        f = fault_of(s)
        assert s["status"] == "ERROR" and "Exceeded maximum number of retries" in f, s
        assert all(f"on flaky-{i:04d}" in f for i in range(3)), f
        print(f"     3 failing hosts: {f[:150]}")

        # Audit: plant an orphan allocation, a missing one and a wrong size.
        conf = os.path.join(lab.dir, "nube-scheduler.conf")
        audit = lab.binary("scheduler", "nube-placement-audit")
        p = subprocess.run([audit, "--config", conf], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
        active = [k for k, v in final.items()]
        db = sqlite3.connect(lab.db, timeout=10)
        with db:
            db.execute("DELETE FROM allocations WHERE instance_uuid = ?", (active[0],))
            db.execute("UPDATE allocations SET ram_mb = 4096 WHERE instance_uuid = ?", (active[1],))
            db.execute("INSERT INTO allocations (instance_uuid, host, vcpus, ram_mb, disk_gb,"
                       " created_ms) VALUES (?, 'good-0000', 1, 512, 1, 0)", (sid,))
        db.close()
        p = subprocess.run([audit, "--config", conf], capture_output=True, text=True, timeout=30)
        assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
        for kind in ("missing-allocation", "wrong-size", "orphan-allocation"):
            assert kind in p.stdout, p.stdout
        p = subprocess.run([audit, "--config", conf, "--repair"], capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 0 and "3 findings repaired" in p.stdout, (p.stdout, p.stderr)
        p = subprocess.run([audit, "--config", conf], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0 and "0 findings" in p.stdout, p.stdout
        assert_no_overcommit(lab)
        print("     audit: 3 planted inconsistencies found and repaired")
        return lab
    except BaseException:
        lab.keep_on_fail = True
        raise


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = sys.argv[1]
    passed = failed = 0
    t_all = time.monotonic()
    for sc in (scenario_overcommit, scenario_groups_and_filters, scenario_retries_and_audit):
        t0 = time.monotonic()
        lab = None
        try:
            lab = sc(build)
            passed += 1
            print(f"ok   {sc.__name__} ({time.monotonic() - t0:.1f}s)", flush=True)
        except Exception:  # noqa: BLE001
            failed += 1
            print(f"FAIL {sc.__name__}\n{traceback.format_exc()}", flush=True)
        finally:
            lab = lab or _last_lab()
            if lab:
                codes = lab.stop_all()
                bad = {n: c for n, c in codes.items() if c != 0}
                if bad:
                    failed += 1
                    print(f"FAIL clean shutdown: {bad}", flush=True)
                if bad or getattr(lab, "keep_on_fail", False):
                    for name, d in lab.daemons.items():
                        print(f"--- {name} log tail ---\n{d.tail(20)}")
                lab.cleanup(keep="--keep" in sys.argv and failed > 0)
    print(f"total {time.monotonic() - t_all:.1f}s")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


_labs = []
_orig_init = Lab.__init__


def _track_init(self, *a, **kw):
    _orig_init(self, *a, **kw)
    _labs.append(self)


Lab.__init__ = _track_init


def _last_lab():
    return _labs[-1] if _labs else None


if __name__ == "__main__":
    sys.exit(main())
