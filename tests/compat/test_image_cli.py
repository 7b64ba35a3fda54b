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

import json
import os
import shutil
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import nubelab  # noqa: E402
from nubelab import ADMIN_PASSWORD, ADMIN_TOKEN, Lab, free_port, wait_for  # noqa: E402


class Cli:
    def __init__(self, lab, image_url):
        self.config = os.path.join(lab.dir, "clouds.yaml")
        url = f"http://127.0.0.1:{lab.identity_port}/v3"
        clouds = {"clouds": {
            "nube-admin": self._cloud(url, "admin", ADMIN_PASSWORD, "admin", image_url),
            "nube-bob": self._cloud(url, "bob", "bob-pw", "beta", image_url),
        }}
        with open(self.config, "w") as f:
            json.dump(clouds, f, indent=2)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        self.env["OS_CLIENT_CONFIG_FILE"] = self.config
        self.env["HOME"] = lab.dir

    @staticmethod
    def _cloud(url, user, password, project, image_url):
        return {"auth": {"auth_url": url, "username": user, "password": password,
                         "project_name": project, "user_domain_name": "Default",
                         "project_domain_name": "Default"},
                "region_name": "RegionOne", "identity_api_version": 3,
                "interface": "public", "image_endpoint_override": image_url}

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
    st = {}

    def check(name, fn):
        nonlocal passed, failed
        t0 = time.monotonic()
        try:
            fn()
            passed += 1
            print(f"ok   {name} ({time.monotonic() - t0:.1f}s)", flush=True)
        except Exception:  # noqa: BLE001 - report and go on
            failed += 1
            print(f"FAIL {name}", flush=True)
            traceback.print_exc()

    try:
        lab.start_scheduler()
        lab.start_api()
        key = os.path.join(lab.dir, "token.key")
        wait_for(lambda: os.path.exists(key), 10, "nube-api's token key")
        port = free_port()
        os.makedirs(os.path.join(lab.dir, "image"))
        conf = lab.write("nube-image.conf", f"""[DEFAULT]
log_level = debug
state_dir = {os.path.join(lab.dir, "image")}
[image]
listen = 127.0.0.1
port = {port}
[auth]
admin_token = {ADMIN_TOKEN}
token_key_file = {key}
""")
        lab._start("image", lab.binary("image-store", "nube-image"), conf,
                   f"http://127.0.0.1:{port}/healthz")
        cli = Cli(lab, f"http://127.0.0.1:{port}")
        data = os.path.join(lab.dir, "disk.raw")
        with open(data, "wb") as f:
            f.write(bytes((i * 7) % 251 + 1 for i in range(256 * 1024)))

        def setup_bob():
            p = cli.run("nube-admin", "project", "create", "beta")
            st["beta"] = p["id"]
            cli.run("nube-admin", "user", "create", "--project", "beta", "--password",
                    "bob-pw", "bob")
            cli.run("nube-admin", "role", "add", "--project", "beta", "--user", "bob",
                    "member", as_json=False)
        check("project beta with member bob", setup_bob)

        def create():
            i = cli.run("nube-admin", "image", "create", "--file", data, "--disk-format", "raw",
                        "--container-format", "bare", "--private", "img-a")
            st["id"] = i["id"]
            # The client prints the record as created, before its upload: show it again.
            i = cli.run("nube-admin", "image", "show", st["id"])
            assert i["status"] == "active" and i["size"] == 256 * 1024, i
        check("image create --file (admin, private): active", create)

        def lists():
            names = [i["Name"] for i in cli.run("nube-admin", "image", "list")]
            assert "img-a" in names, names
            names = [i["Name"] for i in cli.run("nube-bob", "image", "list")]
            assert "img-a" not in names, names
            p = cli.run("nube-bob", "image", "show", st["id"], check=False)
            assert p.returncode != 0, p.stdout
        check("admin lists it; bob (sealed token, project beta) neither lists nor shows it",
              lists)

        def save():
            out = os.path.join(lab.dir, "back.raw")
            cli.run("nube-admin", "image", "save", "--file", out, st["id"], as_json=False)
            assert open(out, "rb").read() == open(data, "rb").read()
        check("image save returns the same bytes", save)

        def share():
            cli.run("nube-admin", "image", "set", "--shared", st["id"], as_json=False)
            m = cli.run("nube-admin", "image", "add", "project", st["id"], "beta")
            assert m["status"] == "pending", m
            names = [i["Name"] for i in cli.run("nube-bob", "image", "list")]
            assert "img-a" not in names, names
        check("set --shared, add project beta: pending, still unlisted for bob", share)

        def accept():
            cli.run("nube-bob", "image", "set", "--accept", st["id"], as_json=False)
            names = [i["Name"] for i in cli.run("nube-bob", "image", "list")]
            assert "img-a" in names, names
            assert cli.run("nube-bob", "image", "show", st["id"])["name"] == "img-a"
            ms = cli.run("nube-admin", "image", "member", "list", st["id"])
            assert [(m["Member ID"], m["Status"]) for m in ms] == [(st["beta"], "accepted")], ms
            p = cli.run("nube-bob", "image", "delete", st["id"], check=False, as_json=False)
            assert p.returncode != 0, "bob deleted the admin's image"
        check("bob accepts: lists and shows it, cannot delete it; member list", accept)

        def unshare():
            cli.run("nube-admin", "image", "remove", "project", st["id"], "beta", as_json=False)
            names = [i["Name"] for i in cli.run("nube-bob", "image", "list")]
            assert "img-a" not in names, names
        check("remove project: gone for bob", unshare)

        def delete():
            cli.run("nube-admin", "image", "delete", st["id"], as_json=False)
            names = [i["Name"] for i in cli.run("nube-admin", "image", "list")]
            assert "img-a" not in names, names
        check("image delete", delete)
    finally:
        codes = lab.stop_all()
        for name, code in codes.items():
            if code not in (0, None):
                failed += 1
                print(f"FAIL {name} exited with {code}")
        lab.cleanup(keep=keep or failed > 0 and os.environ.get("NUBE_KEEP") == "1")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
