#!/usr/bin/env python3
"""Compatibility: the stock `openstack` client (Debian python3-openstackclient) against
nube's Identity v3.

Starts the real nube-scheduler and nube-api on loopback (tests/integration/nubelab.py),
writes a clouds.yaml into the lab's temporary directory and runs the real client
(OS_CLIENT_CONFIG_FILE) for: token issue, catalog list, project create/list/show, user
create/list, role list, role add, role assignment list --names, token issue as the new
user, the new user refused identity administration, and the deletes. Outputs are read
with -f json and checked field by field.

Usage: test_identity_cli.py BUILD_DIR [--keep]
Prints one line per check and "N passed, N failed"; exits non-zero on any failure, 77
(skipped) when the openstack client is not installed.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from nubelab import ADMIN_PASSWORD, Lab  # noqa: E402

ADMIN_PROJECT_ID = "5a0c5e2b9b6f4f3e8d1c2b3a4f5e6d7c"
ADMIN_USER_ID = "0f1e2d3c4b5a49687766554433221100"


class Cli:
    def __init__(self, lab):
        self.lab = lab
        self.config = os.path.join(lab.dir, "clouds.yaml")
        url = f"http://127.0.0.1:{lab.identity_port}/v3"
        clouds = {"clouds": {
            "nube-admin": self._cloud(url, "admin", ADMIN_PASSWORD, "admin"),
            "nube-alice": self._cloud(url, "alice", "alice-pw", "alpha"),
        }}
        # JSON is YAML: no yaml module needed here.
        with open(self.config, "w") as f:
            json.dump(clouds, f, indent=2)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        self.env["OS_CLIENT_CONFIG_FILE"] = self.config
        self.env["HOME"] = lab.dir  # no user-level clouds.yaml or caches leak in

    @staticmethod
    def _cloud(url, user, password, project):
        return {"auth": {"auth_url": url, "username": user, "password": password,
                         "project_name": project, "user_domain_name": "Default",
                         "project_domain_name": "Default"},
                "region_name": "RegionOne", "identity_api_version": 3,
                "interface": "public"}

    def run(self, cloud, *args, check=True, as_json=True):
        argv = ["openstack", "--os-cloud", cloud] + list(args)
        if as_json:
            argv += ["-f", "json"]
        p = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {p.returncode}:\n{p.stderr[-1500:]}")
        if not check:
            return p
        return json.loads(p.stdout) if as_json and p.stdout.strip() else p.stdout


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    if not shutil.which("openstack"):
        print("openstack client not installed: skipping")
        return 77
    keep = "--keep" in sys.argv
    lab = Lab(sys.argv[1])
    passed, failed = 0, 0
    state = {}

    def check(name, fn):
        nonlocal passed, failed
        t0 = time.monotonic()
        try:
            fn()
            passed += 1
            print(f"ok   {name} ({time.monotonic() - t0:.1f}s)")
        except Exception:  # noqa: BLE001 - report and go on
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()

    try:
        lab.start_scheduler()
        lab.start_api()
        cli = Cli(lab)

        def token_issue():
            t = cli.run("nube-admin", "token", "issue")
            assert t["project_id"] == ADMIN_PROJECT_ID, t
            assert t["user_id"] == ADMIN_USER_ID, t
            assert t["id"].startswith("nb1_"), t
            assert t["expires"], t
        check("token issue (admin)", token_issue)

        def catalog_list():
            cat = cli.run("nube-admin", "catalog", "list")
            types = {c["Type"]: c for c in cat}
            for want in ("compute", "identity", "image", "billing"):
                assert want in types, cat
            eps = types["compute"]["Endpoints"]
            text = json.dumps(eps)
            assert f"127.0.0.1:{lab.compute_port}/v2.1" in text, eps
            for iface in ("public", "internal", "admin"):
                assert iface in text, eps
            assert "RegionOne" in text, eps
        check("catalog list", catalog_list)

        def project_create():
            p = cli.run("nube-admin", "project", "create", "--description", "Team alpha",
                        "alpha")
            assert p["name"] == "alpha" and len(p["id"]) == 32, p
            assert p["description"] == "Team alpha" and p["enabled"] is True, p
            assert p["domain_id"] == "default", p
            state["alpha"] = p["id"]
        check("project create", project_create)

        def project_list():
            ps = cli.run("nube-admin", "project", "list")
            names = {p["Name"]: p["ID"] for p in ps}
            assert names.get("alpha") == state["alpha"], ps
            assert names.get("admin") == ADMIN_PROJECT_ID, ps
            show = cli.run("nube-admin", "project", "show", "alpha")
            assert show["id"] == state["alpha"], show
        check("project list/show", project_list)

        def user_create():
            u = cli.run("nube-admin", "user", "create", "--password", "alice-pw",
                        "--project", "alpha", "alice")
            assert u["name"] == "alice" and len(u["id"]) == 32, u
            assert u["default_project_id"] == state["alpha"], u
            assert u["enabled"] is True, u
            state["alice"] = u["id"]
        check("user create --password --project", user_create)

        def user_list():
            us = cli.run("nube-admin", "user", "list")
            names = {u["Name"]: u["ID"] for u in us}
            assert names.get("alice") == state["alice"], us
            assert names.get("admin") == ADMIN_USER_ID, us
        check("user list", user_list)

        def role_list():
            rs = cli.run("nube-admin", "role", "list")
            assert {"admin", "member", "reader"} <= {r["Name"] for r in rs}, rs
        check("role list", role_list)

        def role_add():
            out = cli.run("nube-admin", "role", "add", "--project", "alpha", "--user",
                          "alice", "member", as_json=False)
            assert out.strip() == "", out
        check("role add --project --user member", role_add)

        def assignment_list():
            ras = cli.run("nube-admin", "role", "assignment", "list", "--names")
            rows = {(r["Role"], r["User"], r["Project"]) for r in ras}
            assert ("member", "alice@Default", "alpha@Default") in rows, ras
            assert ("admin", "admin@Default", "admin@Default") in rows, ras
            mine = cli.run("nube-admin", "role", "assignment", "list", "--user", "alice",
                           "--project", "alpha", "--names")
            assert [r["Role"] for r in mine] == ["member"], mine
        check("role assignment list --names", assignment_list)

        def token_as_alice():
            t = cli.run("nube-alice", "token", "issue")
            assert t["project_id"] == state["alpha"], t
            assert t["user_id"] == state["alice"], t
        check("token issue (new user)", token_as_alice)

        def alice_refused():
            p = cli.run("nube-alice", "project", "create", "beta", check=False)
            assert p.returncode != 0, p.stdout
            assert "403" in p.stderr or "not authorized" in p.stderr, p.stderr
        check("member refused identity admin (403)", alice_refused)

        def deletes():
            cli.run("nube-admin", "user", "delete", "alice", as_json=False)
            cli.run("nube-admin", "project", "delete", "alpha", as_json=False)
            p = cli.run("nube-admin", "project", "show", "alpha", check=False)
            assert p.returncode != 0, p.stdout
            t = cli.run("nube-alice", "token", "issue", check=False)
            assert t.returncode != 0, t.stdout
        check("user/project delete", deletes)

        codes = lab.stop_all()
        for name, code in codes.items():
            if code == 0:
                passed += 1
                print(f"ok   {name} exited 0")
            else:
                failed += 1
                print(f"FAIL {name} exited {code}:\n{lab.daemons[name].tail()}")
    except Exception:  # noqa: BLE001
        failed += 1
        traceback.print_exc()
        for d in lab.daemons.values():
            print(f"--- {d.name} log tail ---\n{d.tail()}")
    finally:
        lab.cleanup(keep=keep or failed > 0 and os.environ.get("NUBE_KEEP_ON_FAIL") == "1")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
