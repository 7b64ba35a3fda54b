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
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compat import ADMIN_PROJECT_ID, Cli, run_suite  # noqa: E402
from nubelab import ADMIN_PASSWORD  # noqa: E402

ADMIN_USER_ID = "0f1e2d3c4b5a49687766554433221100"


def body(lab, check):
    state = {}
    lab.start_scheduler()
    lab.start_api()
    cli = Cli(lab, {"nube-admin": ("admin", ADMIN_PASSWORD, "admin"),
                    "nube-alice": ("alice", "alice-pw", "alpha")})

    def token_issue():
        t = cli.run_as("nube-admin", "token", "issue")
        assert t["project_id"] == ADMIN_PROJECT_ID, t
        assert t["user_id"] == ADMIN_USER_ID, t
        assert t["id"].startswith("nb1_"), t
        assert t["expires"], t
    check("token issue (admin)", token_issue)

    def catalog_list():
        cat = cli.run_as("nube-admin", "catalog", "list")
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
        p = cli.run_as("nube-admin", "project", "create", "--description", "Team alpha",
                    "alpha")
        assert p["name"] == "alpha" and len(p["id"]) == 32, p
        assert p["description"] == "Team alpha" and p["enabled"] is True, p
        assert p["domain_id"] == "default", p
        state["alpha"] = p["id"]
    check("project create", project_create)

    def project_list():
        ps = cli.run_as("nube-admin", "project", "list")
        names = {p["Name"]: p["ID"] for p in ps}
        assert names.get("alpha") == state["alpha"], ps
        assert names.get("admin") == ADMIN_PROJECT_ID, ps
        show = cli.run_as("nube-admin", "project", "show", "alpha")
        assert show["id"] == state["alpha"], show
    check("project list/show", project_list)

    def user_create():
        u = cli.run_as("nube-admin", "user", "create", "--password", "alice-pw",
                    "--project", "alpha", "alice")
        assert u["name"] == "alice" and len(u["id"]) == 32, u
        assert u["default_project_id"] == state["alpha"], u
        assert u["enabled"] is True, u
        state["alice"] = u["id"]
    check("user create --password --project", user_create)

    def user_list():
        us = cli.run_as("nube-admin", "user", "list")
        names = {u["Name"]: u["ID"] for u in us}
        assert names.get("alice") == state["alice"], us
        assert names.get("admin") == ADMIN_USER_ID, us
    check("user list", user_list)

    def role_list():
        rs = cli.run_as("nube-admin", "role", "list")
        assert {"admin", "member", "reader"} <= {r["Name"] for r in rs}, rs
    check("role list", role_list)

    def role_add():
        out = cli.run_as("nube-admin", "role", "add", "--project", "alpha", "--user",
                      "alice", "member", as_json=False)
        assert out.strip() == "", out
    check("role add --project --user member", role_add)

    def assignment_list():
        ras = cli.run_as("nube-admin", "role", "assignment", "list", "--names")
        rows = {(r["Role"], r["User"], r["Project"]) for r in ras}
        assert ("member", "alice@Default", "alpha@Default") in rows, ras
        assert ("admin", "admin@Default", "admin@Default") in rows, ras
        mine = cli.run_as("nube-admin", "role", "assignment", "list", "--user", "alice",
                       "--project", "alpha", "--names")
        assert [r["Role"] for r in mine] == ["member"], mine
    check("role assignment list --names", assignment_list)

    def token_as_alice():
        t = cli.run_as("nube-alice", "token", "issue")
        assert t["project_id"] == state["alpha"], t
        assert t["user_id"] == state["alice"], t
    check("token issue (new user)", token_as_alice)

    def alice_refused():
        p = cli.run_as("nube-alice", "project", "create", "beta", check=False)
        assert p.returncode != 0, p.stdout
        assert "403" in p.stderr or "not authorized" in p.stderr, p.stderr
    check("member refused identity admin (403)", alice_refused)

    def deletes():
        cli.run_as("nube-admin", "user", "delete", "alice", as_json=False)
        cli.run_as("nube-admin", "project", "delete", "alpha", as_json=False)
        p = cli.run_as("nube-admin", "project", "show", "alpha", check=False)
        assert p.returncode != 0, p.stdout
        t = cli.run_as("nube-alice", "token", "issue", check=False)
        assert t.returncode != 0, t.stdout
    check("user/project delete", deletes)


def main():
    return run_suite(__doc__, body)


if __name__ == "__main__":
    sys.exit(main())
