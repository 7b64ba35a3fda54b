#!/usr/bin/env python3
"""Compatibility: server actions with the stock `openstack` client (Debian
python3-openstackclient) against nube's Compute v2.1.

Starts the real nube-scheduler, nube-api and two nube-agents on libvirt's test driver
(tests/integration/nubelab.py) and runs the real client for: server stop/start,
reboot --wait (soft and --hard), pause/unpause, suspend/resume, resize --wait + confirm
and + revert, console log show, server show after each action, server event list,
server set --name/--property, create --min 2 --max 2, key pairs, server group
(anti-affinity) + create --hint group=, availability zone list, quota set --instances
and an over-quota create that fails with Nova's message, server delete --wait.

Usage: test_actions_cli.py BUILD_DIR [--keep]
Prints one line per check and "N passed, N failed"; exits non-zero on any failure, 77
(skipped) when the openstack client is not installed.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compat import run_suite  # noqa: E402
from nubelab import wait_for  # noqa: E402
from test_compute_cli import start_compute_lab  # noqa: E402


def body(lab, check):
    st = {}
    cli = start_compute_lab(lab)

    def show(sid=None):
        return cli.run("server", "show", sid or st["id"])

    def wait_show(want, sid=None, timeout=30):
        # "server stop/start/pause/..." return at once (no --wait in the client):
        # poll server show like a user would.
        return wait_for(lambda: (lambda s: s if s["status"] == want else None)(show(sid)),
                        timeout, f"status {want}", interval=0.3)

    def create():
        s = cli.run("server", "create", "--flavor", "m1.tiny", "--image", "cirros",
                    "--wait", "act-vm")
        assert s["status"] == "ACTIVE", s
        st["id"] = s["id"]
        s = show()
        assert s["OS-EXT-STS:vm_state"] == "active", s
        assert s["OS-EXT-STS:power_state"] in ("Running", 1), s
    check("server create --wait", create)

    def stop_start():
        cli.run("server", "stop", st["id"], as_json=False)
        s = wait_show("SHUTOFF")
        assert s["OS-EXT-STS:vm_state"] == "stopped", s
        assert s["OS-EXT-STS:power_state"] in ("Shutdown", 4), s
        p = cli.run("server", "stop", st["id"], check=False, as_json=False)
        assert p.returncode != 0 and "409" in p.stderr, p.stderr  # already stopped
        cli.run("server", "start", st["id"], as_json=False)
        s = wait_show("ACTIVE")
        assert s["OS-EXT-STS:vm_state"] == "active", s
    check("server stop/start", stop_start)

    def reboot():
        cli.run("server", "reboot", "--wait", st["id"], as_json=False)
        assert show()["status"] == "ACTIVE"
        cli.run("server", "reboot", "--hard", "--wait", st["id"], as_json=False)
        assert show()["status"] == "ACTIVE"
    check("server reboot --wait (soft, --hard)", reboot)

    def pause_unpause():
        cli.run("server", "pause", st["id"], as_json=False)
        s = wait_show("PAUSED")
        assert s["OS-EXT-STS:vm_state"] == "paused", s
        cli.run("server", "unpause", st["id"], as_json=False)
        wait_show("ACTIVE")
    check("server pause/unpause", pause_unpause)

    def suspend_resume():
        cli.run("server", "suspend", st["id"], as_json=False)
        s = wait_show("SUSPENDED")
        assert s["OS-EXT-STS:vm_state"] == "suspended", s
        cli.run("server", "resume", st["id"], as_json=False)
        wait_show("ACTIVE")
    check("server suspend/resume", suspend_resume)

    def resize_confirm():
        cli.run("server", "resize", "--flavor", "m1.small", "--wait", st["id"],
                as_json=False)
        s = show()
        assert s["status"] == "VERIFY_RESIZE", s
        assert "m1.small" in str(s["flavor"]), s
        cli.run("server", "resize", "confirm", st["id"], as_json=False)
        s = wait_show("ACTIVE")
        assert "m1.small" in str(s["flavor"]), s
    check("server resize --wait + confirm", resize_confirm)

    def resize_revert():
        cli.run("server", "resize", "--flavor", "m1.tiny", "--wait", st["id"],
                as_json=False)
        assert show()["status"] == "VERIFY_RESIZE"
        cli.run("server", "resize", "revert", st["id"], as_json=False)
        s = wait_show("ACTIVE")
        assert "m1.small" in str(s["flavor"]), s
    check("server resize --wait + revert", resize_revert)

    def console():
        out = cli.run("console", "log", "show", st["id"], as_json=False)
        assert isinstance(out, str)  # test-driver guests may print nothing
        out = cli.run("console", "log", "show", "--lines", "5", st["id"], as_json=False)
        assert len(out.splitlines()) <= 5, out
    check("console log show", console)

    def events():
        ev = cli.run("server", "event", "list", st["id"])
        acts = [e["Action"] for e in ev]
        for a in ("create", "stop", "start", "reboot", "pause", "unpause", "suspend",
                  "resume", "resize", "confirmResize", "revertResize"):
            assert a in acts, (a, acts)
        req = ev[0]["Request ID"]
        e = cli.run("server", "event", "show", st["id"], req)
        assert e["request_id"] == req and e["action"] == ev[0]["Action"], e
    check("server event list/show", events)

    def set_name_property():
        cli.run("server", "set", "--name", "act-renamed", "--property", "role=web",
                "--property", "tier=1", st["id"], as_json=False)
        s = show()
        assert s["name"] == "act-renamed", s
        props = s["properties"]
        if isinstance(props, str):
            assert "role='web'" in props and "tier='1'" in props, props
        else:
            assert props == {"role": "web", "tier": "1"}, props
        cli.run("server", "unset", "--property", "tier", st["id"], as_json=False)
        props = show()["properties"]
        assert "tier" not in str(props) and "web" in str(props), props
    check("server set --name/--property, unset --property", set_name_property)

    def min_max():
        cli.run("server", "create", "--flavor", "m1.tiny", "--image", "cirros",
                "--min", "2", "--max", "2", "--wait", "multi", as_json=False)
        ls = [s for s in cli.run("server", "list") if s["Name"].startswith("multi")]
        assert len(ls) == 2, ls
        assert all(s["Status"] == "ACTIVE" for s in ls), ls
        assert {s["Name"] for s in ls} == {"multi-1", "multi-2"}, ls
        st["multi"] = [s["ID"] for s in ls]
    check("server create --min 2 --max 2", min_max)

    def keypair_group_hint():
        cli.run("keypair", "create", "act-key", as_json=False)
        g = cli.run("server", "group", "create", "--policy", "anti-affinity", "spread")
        assert g["name"] == "spread" and "anti-affinity" in str(g.get("policy", g.get(
            "policies"))), g
        ids = []
        for i in range(2):
            s = cli.run("server", "create", "--flavor", "m1.tiny", "--image", "cirros",
                        "--key-name", "act-key", "--hint", f"group={g['id']}", "--wait",
                        f"grp-{i}")
            assert s["key_name"] == "act-key", s
            ids.append(s["id"])
        hosts = {show(i)["OS-EXT-SRV-ATTR:host"] for i in ids}
        assert hosts == {"cmp-1", "cmp-2"}, hosts
        g = cli.run("server", "group", "show", "spread")
        assert set(ids) <= set(str(g["members"]).replace(",", " ").split()) or \
            all(i in str(g["members"]) for i in ids), g
        st["grp"] = ids
    check("keypair + server group anti-affinity + --hint group=", keypair_group_hint)

    def az_list():
        az = cli.run("availability", "zone", "list", "--compute")
        assert any(z["Zone Name"] == "nova" and z["Zone Status"] == "available"
                   for z in az), az
    check("availability zone list", az_list)

    def over_quota():
        used = len(cli.run("server", "list"))
        cli.run("quota", "set", "--instances", str(used), "admin", as_json=False)
        p = cli.run("server", "create", "--flavor", "m1.tiny", "--image", "cirros",
                    "too-many", check=False)
        assert p.returncode != 0, p.stdout
        assert "Quota exceeded for instances" in p.stderr and "403" in p.stderr, p.stderr
        cli.run("quota", "set", "--instances", "20", "admin", as_json=False)
    check("quota set --instances; over-quota create fails", over_quota)

    def delete():
        ids = [st["id"]] + st.get("multi", []) + st.get("grp", [])
        cli.run("server", "delete", "--wait", *ids, as_json=False)
        assert cli.run("server", "list") == []
        p = cli.run("server", "show", st["id"], check=False)
        assert p.returncode != 0 and "No server" in p.stderr, p.stderr
        cli.run("server", "group", "delete", "spread", as_json=False)
        cli.run("keypair", "delete", "act-key", as_json=False)
    check("server delete --wait", delete)


def main():
    return run_suite(__doc__, body, api_extra="[quota]\ninstances = 20\ncores = 40\nram = 102400\n")


if __name__ == "__main__":
    sys.exit(main())
