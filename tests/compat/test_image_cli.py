#!/usr/bin/env python3
"""Compatibility: the stock `openstack` client against nube-image with nube-api's tokens.

Starts nube-scheduler and nube-api (tests/integration/nubelab.py) and nube-image with
nube-api's token key, so the tokens the client gets from Identity are verified by
nube-image itself. A second project "beta" with a member user "bob" checks isolation and
sharing through the client: image create --file, list, show, save; bob does not see the
admin's private image; set --shared, add project (pending: still invisible), bob's
set --accept (visible), member list, remove project (gone again), delete.

Usage: test_image_cli.py BUILD_DIR [--keep]
Prints one line per check and "N passed, N failed"; exits non-zero on any failure, 77
(skipped) when the openstack client is not installed.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compat import Cli, run_suite, start_image  # noqa: E402
from nubelab import ADMIN_PASSWORD  # noqa: E402


def body(lab, check):
    st = {}
    lab.start_scheduler()
    lab.start_api()
    image_url, _, _ = start_image(lab)
    cli = Cli(lab, {"nube-admin": ("admin", ADMIN_PASSWORD, "admin"),
                    "nube-bob": ("bob", "bob-pw", "beta")}, image_url=image_url)
    data = os.path.join(lab.dir, "disk.raw")
    with open(data, "wb") as f:
        f.write(bytes((i * 7) % 251 + 1 for i in range(256 * 1024)))

    def setup_bob():
        p = cli.run_as("nube-admin", "project", "create", "beta")
        st["beta"] = p["id"]
        cli.run_as("nube-admin", "user", "create", "--project", "beta", "--password",
                   "bob-pw", "bob")
        cli.run_as("nube-admin", "role", "add", "--project", "beta", "--user", "bob",
                   "member", as_json=False)
    check("project beta with member bob", setup_bob)

    def create():
        i = cli.run_as("nube-admin", "image", "create", "--file", data, "--disk-format", "raw",
                       "--container-format", "bare", "--private", "img-a")
        st["id"] = i["id"]
        # The client prints the record as created, before its upload: show it again.
        i = cli.run_as("nube-admin", "image", "show", st["id"])
        assert i["status"] == "active" and i["size"] == 256 * 1024, i
    check("image create --file (admin, private): active", create)

    def lists():
        names = [i["Name"] for i in cli.run_as("nube-admin", "image", "list")]
        assert "img-a" in names, names
        names = [i["Name"] for i in cli.run_as("nube-bob", "image", "list")]
        assert "img-a" not in names, names
        p = cli.run_as("nube-bob", "image", "show", st["id"], check=False)
        assert p.returncode != 0, p.stdout
    check("admin lists it; bob (sealed token, project beta) neither lists nor shows it",
          lists)

    def save():
        out = os.path.join(lab.dir, "back.raw")
        cli.run_as("nube-admin", "image", "save", "--file", out, st["id"], as_json=False)
        assert open(out, "rb").read() == open(data, "rb").read()
    check("image save returns the same bytes", save)

    def share():
        cli.run_as("nube-admin", "image", "set", "--shared", st["id"], as_json=False)
        m = cli.run_as("nube-admin", "image", "add", "project", st["id"], "beta")
        assert m["status"] == "pending", m
        names = [i["Name"] for i in cli.run_as("nube-bob", "image", "list")]
        assert "img-a" not in names, names
    check("set --shared, add project beta: pending, still unlisted for bob", share)

    def accept():
        cli.run_as("nube-bob", "image", "set", "--accept", st["id"], as_json=False)
        names = [i["Name"] for i in cli.run_as("nube-bob", "image", "list")]
        assert "img-a" in names, names
        assert cli.run_as("nube-bob", "image", "show", st["id"])["name"] == "img-a"
        ms = cli.run_as("nube-admin", "image", "member", "list", st["id"])
        assert [(m["Member ID"], m["Status"]) for m in ms] == [(st["beta"], "accepted")], ms
        p = cli.run_as("nube-bob", "image", "delete", st["id"], check=False, as_json=False)
        assert p.returncode != 0, "bob deleted the admin's image"
    check("bob accepts: lists and shows it, cannot delete it; member list", accept)

    def unshare():
        cli.run_as("nube-admin", "image", "remove", "project", st["id"], "beta", as_json=False)
        names = [i["Name"] for i in cli.run_as("nube-bob", "image", "list")]
        assert "img-a" not in names, names
    check("remove project: gone for bob", unshare)

    def delete():
        cli.run_as("nube-admin", "image", "delete", st["id"], as_json=False)
        names = [i["Name"] for i in cli.run_as("nube-admin", "image", "list")]
        assert "img-a" not in names, names
    check("image delete", delete)


if __name__ == "__main__":
    sys.exit(run_suite(__doc__, body))
