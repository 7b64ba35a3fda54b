#!/usr/bin/env python3
"""Walking-skeleton integration test: one server flows API -> scheduler -> agent -> libvirt.

Starts the real nube-scheduler, nube-api and two nube-agents on loopback with temporary
state; the agents drive libvirt's test driver (in-process simulated hypervisors, a real
libvirt client: the same calls as for QEMU). Each host has room for exactly 15 m1.tiny
servers (4 cores x 4.0 ratio = 16 vCPUs, 7680 MB RAM at ratio 1.0, 100 GB disk).

Usage: test_skeleton.py BUILD_DIR [--keep]
Prints one line per check and the closing line "N passed, N failed".
"""

import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nubelab import Lab, http, http_curl, run_checks, wait_for  # noqa: E402

FAULT_KEYS = ("code", "message")


def fault_body(r, name, code):
    """Assert an OpenStack-style error body {"<name>": {"code": code, "message": ...}}."""
    assert r.status == code, f"expected {code}, got {r.status}: {r.raw[:300]!r}"
    assert r.json and name in r.json, f"expected '{name}' error body, got {r.raw[:300]!r}"
    inner = r.json[name]
    for k in FAULT_KEYS:
        assert k in inner, f"error body lacks {k}: {r.json}"
    assert inner["code"] == code
    assert inner["message"], "empty error message"
    rid = {k.lower(): v for k, v in r.headers.items()}.get("x-openstack-request-id", "")
    assert rid.startswith("req-"), f"no request id header: {r.headers}"


def create_many(lab, names, flavor="1"):
    """Create servers concurrently; returns {name: (status, id)}."""
    out = {}
    lock = threading.Lock()

    def one(n):
        r = lab.create_server(n, flavor=flavor)
        sid = r.json["server"]["id"] if r.status == 202 else None
        with lock:
            out[n] = (r.status, sid)
    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def wait_final(lab, ids, timeout=90):
    """Wait until every server is ACTIVE or ERROR; returns {id: server}."""
    final = {}

    def done():
        for sid in ids:
            if sid in final:
                continue
            s = lab.server(sid)
            if s and s["status"] in ("ACTIVE", "ERROR"):
                final[sid] = s
        return len(final) == len(ids)
    wait_for(done, timeout, f"{len(ids)} servers to settle", interval=0.2)
    return final


def delete_all(lab, ids):
    for sid in ids:
        r = http("DELETE", f"{lab.compute}/servers/{sid}")
        assert r.status in (204, 404), (r.status, r.raw)
    wait_for(lambda: all(lab.server(s) is None for s in ids), 60, "servers deleted", 0.2)


# --------------------------------------------------------------------------------------
def check_twenty_servers(lab, state):
    """20 servers over HTTP all reach ACTIVE, spread over both hosts, visible in libvirt."""
    res = create_many(lab, [f"web-{i:02d}" for i in range(20)])
    assert all(st == 202 for st, _ in res.values()), res
    ids = [sid for _, sid in res.values()]
    final = wait_final(lab, ids)
    bad = {s["name"]: s.get("fault") for s in final.values() if s["status"] != "ACTIVE"}
    assert not bad, f"not ACTIVE: {bad}"
    hosts = {s["OS-EXT-SRV-ATTR:host"] for s in final.values()}
    assert hosts == {"hostA", "hostB"}, f"not spread over both hosts: {hosts}"
    doms = {**lab.domains("hostA"), **lab.domains("hostB")}
    missing = [sid for sid in ids if sid not in doms]
    assert not missing, f"servers without a libvirt domain: {missing}"
    for s in final.values():
        d = lab.domains(s["OS-EXT-SRV-ATTR:host"])[s["id"]]
        assert d["state"] == "running", d
        assert s["OS-EXT-STS:power_state"] == 1 and s["OS-EXT-STS:task_state"] is None
    hv = lab.hypervisors()
    assert sum(h["running_vms"] for h in hv.values()) == 20, hv
    assert sum(h["vcpus_used"] for h in hv.values()) == 20, hv
    state["ids"] = ids
    state["final"] = final


def check_too_big_is_error(lab, state):
    """A server that fits no host ends in ERROR with a fault saying why."""
    r = lab.create_server("too-big", flavor="5")   # m1.xlarge: 8 vCPU, 16 GB
    assert r.status == 202, (r.status, r.raw)
    sid = r.json["server"]["id"]
    s = lab.wait_status(sid, ("ERROR",), 30)
    fault = s.get("fault") or {}
    assert "No valid host" in fault.get("message", ""), s
    assert "16384" in fault["message"] or "RAM" in fault["message"], fault
    assert s["OS-EXT-SRV-ATTR:host"] in (None, ""), s
    delete_all(lab, [sid])


def check_delete_removes_domain(lab, state):
    """Deleting a server removes its libvirt domain and frees the host's resources."""
    sid = state["ids"].pop()
    host = state["final"][sid]["OS-EXT-SRV-ATTR:host"]
    before = lab.hypervisors()[host]["vcpus_used"]
    r = http("DELETE", f"{lab.compute}/servers/{sid}")
    assert r.status == 204, (r.status, r.raw)
    wait_for(lambda: lab.server(sid) is None, 30, "server 404 after delete", 0.1)
    assert sid not in lab.domains(host), "domain still in libvirt after delete"
    assert lab.hypervisors()[host]["vcpus_used"] == before - 1
    r = http("GET", f"{lab.compute}/servers/{sid}")
    assert r.status == 404
    fault_body(r, "itemNotFound", 404)


def check_agent_restart_loses_nothing(lab, state):
    """kill -9 an agent, start it again: every server is still ACTIVE and in libvirt."""
    on_a = [sid for sid in state["ids"] if state["final"][sid]["OS-EXT-SRV-ATTR:host"] == "hostA"]
    assert on_a, "no server on hostA"
    lab.daemons["agent-hostA"].kill9()
    # The scheduler notices the missing heartbeats and marks the host down.
    wait_for(lambda: lab.hypervisors()["hostA"]["state"] == "down", 30, "hostA down")
    lab.start_agent("hostA")
    wait_for(lambda: lab.hypervisors()["hostA"]["state"] == "up", 30, "hostA up again")
    wait_for(lambda: all(sid in lab.domains("hostA") for sid in on_a), 30,
             "hostA's domains back in libvirt")
    for sid in state["ids"]:
        s = lab.server(sid)
        assert s and s["status"] == "ACTIVE", (sid, s and s["status"])
    assert lab.hypervisors()["hostA"]["running_vms"] == len(on_a)


def check_bad_input(lab, state):
    """Bad requests get the right 4xx and an OpenStack-style body; the API keeps serving."""
    url = f"{lab.compute}/servers"
    fault_body(http("POST", url, raw=b'{"server": {"name": "x",'), "badRequest", 400)
    fault_body(http("POST", url, {"server": {"name": "x", "flavorRef": "nope",
                                             "imageRef": "cirros"}}), "badRequest", 400)
    fault_body(http("POST", url, {"server": {"flavorRef": "1", "imageRef": "cirros"}}),
               "badRequest", 400)
    fault_body(http("POST", url, {"server": {"name": 42, "flavorRef": "1",
                                             "imageRef": "cirros"}}), "badRequest", 400)
    fault_body(http("POST", url, {"nothing": {}}), "badRequest", 400)
    big = b'{"server": {"name": "' + b"a" * (2 * 1024 * 1024) + b'"}}'
    fault_body(http_curl("POST", url, big), "requestEntityTooLarge", 413)
    fault_body(http("GET", f"{lab.compute}/no-such-thing"), "itemNotFound", 404)
    fault_body(http("GET", f"{lab.compute}/servers/00000000-0000-0000-0000-000000000000"),
               "itemNotFound", 404)
    fault_body(http("GET", f"{lab.compute}/flavors/m1.tiny"), "itemNotFound", 404)
    r = http("GET", f"{lab.compute}/servers", token="wrong")
    assert r.status == 401, (r.status, r.raw)
    r = http("GET", f"{lab.compute}/servers")
    assert r.status == 200 and "servers" in r.json
    assert lab.daemons["api"].alive()


def check_concurrency_no_overcommit(lab, state):
    """50 simultaneous creates against room for 30: exactly 30 ACTIVE, 20 ERROR."""
    delete_all(lab, state["ids"])
    hv = lab.hypervisors()
    assert all(h["vcpus_used"] == 0 and h["running_vms"] == 0 for h in hv.values()), hv
    res = create_many(lab, [f"burst-{i:02d}" for i in range(50)])
    assert all(st == 202 for st, _ in res.values()), res
    ids = [sid for _, sid in res.values()]
    final = wait_final(lab, ids, timeout=120)
    statuses = [s["status"] for s in final.values()]
    n_active, n_error = statuses.count("ACTIVE"), statuses.count("ERROR")
    assert (n_active, n_error) == (30, 20), f"ACTIVE {n_active}, ERROR {n_error}"
    hv = lab.hypervisors()
    for name, h in hv.items():
        assert h["memory_mb_used"] <= h["memory_mb"], (name, h)
        assert h["running_vms"] == 15, (name, h)
        assert len(lab.domains(name)) == 15, name
    assert sum(h["running_vms"] for h in hv.values()) == 30
    for s in final.values():
        if s["status"] == "ERROR":
            assert "No valid host" in s["fault"]["message"], s["fault"]
    delete_all(lab, ids)
    hv = lab.hypervisors()
    assert all(h["vcpus_used"] == 0 and h["memory_mb_used"] == 0 for h in hv.values()), hv
    assert not lab.domains("hostA") and not lab.domains("hostB")


CHECKS = [check_bad_input, check_twenty_servers, check_too_big_is_error,
          check_delete_removes_domain, check_agent_restart_loses_nothing,
          check_concurrency_no_overcommit]


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"

    def setup(lab):
        lab.start_scheduler()
        lab.start_api()
        lab.start_agent("hostA")
        lab.start_agent("hostB")
        wait_for(lambda: {k for k, h in lab.hypervisors().items() if h["state"] == "up"}
                 == {"hostA", "hostB"}, 30, "both hosts registered")

    # Without the twenty servers the later checks have nothing to work on.
    return run_checks(Lab(build), setup, CHECKS,
                      stop=lambda check, st: check is check_twenty_servers and not st.get("ids"))


if __name__ == "__main__":
    sys.exit(main())
