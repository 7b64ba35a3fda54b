#!/usr/bin/env python3
"""Compatibility: the stock `openstack` client (Debian python3-openstackclient) against
nube's Compute v2.1.

Starts the real nube-scheduler, nube-api and two nube-agents on libvirt's test driver
(tests/integration/nubelab.py), writes a clouds.yaml into the lab's directory (the image
service is overridden to nube-api's stand-in Image endpoint until nube-image joins the
lab) and runs the real client with -f json for: flavor list/show/create/delete,
keypair create (generated and imported)/list/delete, server create --wait with flavor,
image and key, server list/show, quota show/set, limits show, hypervisor list/show/stats,
compute service list/set --disable, usage list/show, server delete --wait. Outputs are
checked field by field.

Usage: test_compute_cli.py BUILD_DIR [--keep]
Prints one line per check and "N passed, N failed"; exits non-zero on any failure, 77
(skipped) when the openstack client is not installed.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compat import ADMIN_PROJECT_ID, Cli, run_suite  # noqa: E402
from nubelab import ADMIN_PASSWORD, wait_for  # noqa: E402

PUBKEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMdi+/7jveyC425gpdNTLaug30xlVsdcntBYjy02az2C "
          "compat")
PUBKEY_FP = "80:ad:ad:a9:81:01:80:1d:5d:6f:39:2a:47:41:0a:26"


def compute_cli(lab):
    """The client as admin and as bob (project beta), with a 90 s timeout. nube-image is
    not part of these labs: nube-api's stand-in Image endpoint answers."""
    return Cli(lab, {"nube-admin": ("admin", ADMIN_PASSWORD, "admin"),
                     "nube-bob": ("bob", "bob-pw", "beta")},
               image_url=f"http://127.0.0.1:{lab.compute_port}/image", timeout=90)


def start_compute_lab(lab):
    """The scheduler, nube-api and two test-driver agents (cmp-1, cmp-2), registered;
    returns compute_cli(lab)."""
    lab.start_scheduler()
    lab.start_api()
    lab.start_agent("cmp-1")
    lab.start_agent("cmp-2")
    wait_for(lambda: len(lab.hypervisors()) == 2, 30, "two hypervisors")
    return compute_cli(lab)


def body(lab, check):
    st = {}
    cli = start_compute_lab(lab)

    def flavor_list_show():
        fl = cli.run("flavor", "list")
        names = {f["Name"]: f for f in fl}
        assert "m1.tiny" in names and names["m1.tiny"]["RAM"] == 512, fl
        f = cli.run("flavor", "show", "m1.tiny")
        assert f["ram"] == 512 and f["vcpus"] == 1 and f["disk"] == 1, f
    check("flavor list/show", flavor_list_show)

    def flavor_create():
        f = cli.run("flavor", "create", "--ram", "256", "--disk", "1", "--vcpus", "1",
                    "--id", "compat-f", "--property", "hw:cpu_policy=shared",
                    "compat.flavor")
        assert f["id"] == "compat-f" and f["ram"] == 256, f
        f = cli.run("flavor", "show", "compat.flavor")
        assert f["id"] == "compat-f", f
        assert "hw:cpu_policy" in json.dumps(f["properties"]), f
    check("flavor create/show", flavor_create)

    def keypair_create():
        out = cli.run("keypair", "create", "gen-key", as_json=False)
        assert "PRIVATE KEY-----" in out, out[:200]
        path = os.path.join(lab.dir, "compat.pub")
        with open(path, "w") as f:
            f.write(PUBKEY + "\n")
        k = cli.run("keypair", "create", "--public-key", path, "imp-key")
        assert k["fingerprint"] == PUBKEY_FP, k
        ks = {k["Name"]: k for k in cli.run("keypair", "list")}
        assert set(ks) == {"gen-key", "imp-key"}, ks
        assert ks["imp-key"]["Fingerprint"] == PUBKEY_FP, ks
    check("keypair create/list", keypair_create)

    def server_create():
        s = cli.run("server", "create", "--flavor", "m1.tiny", "--image", "cirros",
                    "--key-name", "imp-key", "--wait", "compat-vm")
        assert s["status"] == "ACTIVE", s
        assert s["key_name"] == "imp-key", s
        st["id"] = s["id"]
    check("server create --wait (flavor, image, key)", server_create)

    def server_list_show():
        ls = cli.run("server", "list")
        assert any(s["ID"] == st["id"] and s["Status"] == "ACTIVE" for s in ls), ls
        s = cli.run("server", "show", "compat-vm")
        assert s["id"] == st["id"] and s["key_name"] == "imp-key", s
        assert s["OS-EXT-SRV-ATTR:host"] in ("cmp-1", "cmp-2"), s
        assert "m1.tiny" in json.dumps(s["flavor"]), s
    check("server list/show", server_list_show)

    def other_project():
        # A member of another project sees none of it: 404s, empty lists, 403 for
        # operator commands.
        cli.run("project", "create", "beta")
        cli.run("user", "create", "--password", "bob-pw", "--project", "beta", "bob")
        cli.run("role", "add", "--project", "beta", "--user", "bob", "member",
                as_json=False)
        assert cli.run("server", "list", cloud="nube-bob") == []
        p = cli.run("server", "show", st["id"], check=False, cloud="nube-bob")
        assert p.returncode != 0 and "No server" in p.stderr, p.stderr
        p = cli.run("server", "delete", st["id"], check=False, as_json=False,
                    cloud="nube-bob")
        assert p.returncode != 0, p.stdout
        assert cli.run("keypair", "list", cloud="nube-bob") == []
        p = cli.run("hypervisor", "list", check=False, cloud="nube-bob")
        assert p.returncode != 0 and "403" in p.stderr, p.stderr
        q = cli.run("quota", "show", cloud="nube-bob")
        assert q["instances"] == 10, q
    check("another project's member: isolation and policy", other_project)

    def quota_show_set():
        q = cli.run("quota", "show")
        assert q["cores"] == 20 and q["instances"] == 10 and q["ram"] == 51200, q
        cli.run("quota", "set", "--cores", "30", "--instances", "12", "admin",
                as_json=False)
        q = cli.run("quota", "show", "admin")
        assert q["cores"] == 30 and q["instances"] == 12, q
    check("quota show/set", quota_show_set)

    def limits_show():
        lim = {x["Name"]: x["Value"] for x in cli.run("limits", "show", "--absolute")}
        assert lim["maxTotalCores"] == 30, lim
        assert lim["totalInstancesUsed"] == 1 and lim["totalCoresUsed"] == 1, lim
        assert lim["totalRAMUsed"] == 512, lim
    check("limits show --absolute", limits_show)

    def hypervisors():
        hl = cli.run("hypervisor", "list")
        assert {h["Hypervisor Hostname"] for h in hl} == {"cmp-1", "cmp-2"}, hl
        h = cli.run("hypervisor", "show", str(hl[0]["ID"]))
        assert h["hypervisor_hostname"] == hl[0]["Hypervisor Hostname"], h
        assert h["vcpus"] > 0 and h["state"] == "up", h
        s = cli.run("hypervisor", "stats", "show")
        assert s["count"] == 2 and s["running_vms"] == 1, s
    check("hypervisor list/show/stats", hypervisors)

    def services():
        sl = cli.run("compute", "service", "list")
        assert {s["Host"] for s in sl} == {"cmp-1", "cmp-2"}, sl
        assert all(s["Binary"] == "nova-compute" and s["State"] == "up" for s in sl), sl
        cli.run("compute", "service", "set", "--disable", "--disable-reason", "maint",
                "cmp-2", "nova-compute", as_json=False)
        sl = {s["Host"]: s for s in cli.run("compute", "service", "list", "--long")}
        assert sl["cmp-2"]["Status"] == "disabled", sl
        assert sl["cmp-2"]["Disabled Reason"] == "maint", sl
        assert sl["cmp-1"]["Status"] == "enabled", sl
    check("compute service list/set --disable", services)

    def disabled_gets_nothing():
        # With cmp-2 disabled every new server lands on cmp-1.
        s = cli.run("server", "create", "--flavor", "m1.tiny", "--image", "cirros",
                    "--wait", "compat-vm2")
        s = cli.run("server", "show", s["id"])
        assert s["OS-EXT-SRV-ATTR:host"] == "cmp-1", s
        cli.run("server", "delete", "--wait", s["id"], as_json=False)
    check("disabled service gets no servers", disabled_gets_nothing)

    def count(v):
        # "Servers" is a count in tables and the list itself with -f json.
        return len(v) if isinstance(v, list) else int(v)

    def usage():
        ul = cli.run("usage", "list")
        mine = [u for u in ul if u["Project"] in ("admin", ADMIN_PROJECT_ID)]
        assert mine and count(mine[0]["Servers"]) >= 1, ul
        assert float(mine[0]["RAM MB-Hours"]) > 0, ul
        u = cli.run("usage", "show")
        assert count(u["Servers"]) >= 1, u
    check("usage list/show", usage)

    def server_delete():
        cli.run("server", "delete", "--wait", "compat-vm", as_json=False)
        p = cli.run("server", "show", st["id"], check=False)
        assert p.returncode != 0, p.stdout
    check("server delete --wait", server_delete)

    def cleanup_objects():
        cli.run("keypair", "delete", "gen-key", "imp-key", as_json=False)
        assert cli.run("keypair", "list") == []
        cli.run("flavor", "delete", "compat-f", as_json=False)
        p = cli.run("flavor", "show", "compat-f", check=False)
        assert p.returncode != 0, p.stdout
    check("keypair/flavor delete", cleanup_objects)


def main():
    return run_suite(__doc__, body, api_extra="[quota]\ninstances = 10\ncores = 20\nram = 51200\n")


if __name__ == "__main__":
    sys.exit(main())
