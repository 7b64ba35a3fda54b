"""compat.py - what the compat suites share: the stock `openstack` client pointed at a
nube lab (tests/integration/nubelab.py) through a clouds.yaml in the lab's directory, and
the suite runner (argument and client checks, one line per check, the daemons' exit codes
at the end, log tails on an unexpected error, "N passed, N failed").

A suite is a function body(lab, check): it starts the daemons it needs and calls
check(name, fn) for each step; run_suite() does the rest. start_image() runs nube-image
with nube-api's token key (the e2e tests use it too). The client runs with an
environment of its own: no OS_* variable of the caller and HOME in the lab's directory,
so no user-level clouds.yaml or cache leaks in.
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
from nubelab import ADMIN_TOKEN, Lab, free_port, wait_for  # noqa: E402

ADMIN_PROJECT_ID = "5a0c5e2b9b6f4f3e8d1c2b3a4f5e6d7c"


class Cli:
    """The real client. clouds maps a cloud name to (user, password, project) in the
    Default domain; image_url, when given, overrides the image endpoint."""

    def __init__(self, lab, clouds, image_url=None, default_cloud="nube-admin", timeout=60):
        self.lab = lab
        self.config = os.path.join(lab.dir, "clouds.yaml")
        self.default_cloud = default_cloud
        self.timeout = timeout
        url = f"http://127.0.0.1:{lab.identity_port}/v3"
        doc = {"clouds": {name: self._cloud(url, user, password, project, image_url)
                          for name, (user, password, project) in clouds.items()}}
        with open(self.config, "w") as f:
            json.dump(doc, f, indent=2)  # JSON is YAML: no yaml module needed
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        self.env["OS_CLIENT_CONFIG_FILE"] = self.config
        self.env["HOME"] = lab.dir

    @staticmethod
    def _cloud(url, user, password, project, image_url):
        c = {"auth": {"auth_url": url, "username": user, "password": password,
                      "project_name": project, "user_domain_name": "Default",
                      "project_domain_name": "Default"},
             "region_name": "RegionOne", "identity_api_version": 3,
             "interface": "public"}
        if image_url:
            c["image_endpoint_override"] = image_url
        return c

    def run_as(self, cloud, *args, check=True, as_json=True, timeout=None):
        """openstack --os-cloud CLOUD ARGS [-f json]: the parsed JSON (or the text),
        or with check=False the CompletedProcess; a failure raises AssertionError."""
        argv = ["openstack", "--os-cloud", cloud] + list(args)
        if as_json:
            argv += ["-f", "json"]
        p = subprocess.run(argv, capture_output=True, text=True, env=self.env,
                           timeout=timeout or self.timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {p.returncode}:\n{p.stderr[-2000:]}")
        if not check:
            return p
        return json.loads(p.stdout) if as_json and p.stdout.strip() else p.stdout

    def run(self, *args, cloud=None, **kw):
        """run_as() on the default cloud unless cloud= names another."""
        return self.run_as(cloud or self.default_cloud, *args, **kw)


def start_image(lab):
    """nube-image on loopback verifying nube-api's sealed tokens with nube-api's key (its
    default [auth] token_key_file, written once nube-api runs: start the API first).
    Shared with the e2e tests. Returns (url, token key path, nube-image's state_dir)."""
    key = os.path.join(lab.dir, "token.key")
    wait_for(lambda: os.path.exists(key), 10, "nube-api's token key")
    port = free_port()
    state = os.path.join(lab.dir, "image")
    os.makedirs(state)
    conf = lab.write("nube-image.conf", f"""[DEFAULT]
log_level = debug
state_dir = {state}
[image]
listen = 127.0.0.1
port = {port}
[auth]
admin_token = {ADMIN_TOKEN}
token_key_file = {key}
""")
    lab._start("image", lab.binary("image-store", "nube-image"), conf,
               f"http://127.0.0.1:{port}/healthz")
    return f"http://127.0.0.1:{port}", key, state


def run_suite(doc, body, **lab_kwargs):
    """Run one suite from the command line (BUILD_DIR [--keep]); returns the exit code:
    2 on usage, 77 (skipped) without the openstack client, 1 on any failure."""
    if len(sys.argv) < 2:
        print(doc)
        return 2
    if not shutil.which("openstack"):
        print("openstack client not installed: skipping")
        return 77
    keep = "--keep" in sys.argv
    lab = Lab(sys.argv[1], **lab_kwargs)
    passed, failed = 0, 0

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
        body(lab, check)
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
