"""realhost.py - what the Python e2e tests share: real libvirt hosts, agents, the guest.

The e2e tests (test_nube_guest.py, test_lxc.py, test_nube_image_boot.py,
test_nube_migrate.py, test_nube_choose.py, test_billing_guest.py) each run nube's daemons
from tests/integration/nubelab.py against real libvirtd "hosts" started by
deploy/libvirt-host under a private base dir, with real TCG guests (the busybox guest of
deploy/build-guest-image). This module holds the parts they used to copy from each other:

  - the check tally: ok/bad/check/timing print one line each; PASS and FAIL count them;
  - run(): a subprocess that must succeed (or not, check_rc=False); readf(), counters()
    (the guest prints "COUNTER n ..." once a second), db_rows() on the controller DB;
  - Host: one isolated libvirtd (own namespaces, with --netns its own address on the
    lab's hub bridge), with virsh on its URI;
  - guest_image()/install_guest(): build (or reuse) the guest and lay it out in the
    agents' image_dir as an AMI-style set (kernel, ramdisk, disk.qcow2, cmdline);
    start_image() (tests/compat/compat.py), upload_image()/upload_guest(): nube-image
    with nube-api's token key, and the guest set in it;
  - start_agent()/restart_agent(): a nube-agent on a real host, its config written from
    one template with per-test keys;
  - start_billing(): nube-billing on loopback;
  - migration_hosts(): N hosts with migration URIs and their agents (live migration);
  - main(): the frame of every test: skip (77) when not root, a base dir and a Lab, the
    scenario, then the teardown (every daemon must exit cleanly, the hosts are stopped
    and purged, nothing may be left in the machine) and the "N passed, N failed" line.
    A guard process in its own session stops the hosts if the test is killed before its
    teardown could run (meson's timeout: SIGTERM, then SIGKILL).
"""

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HOSTCMD = os.path.join(TOP, "deploy", "libvirt-host")
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
sys.path.insert(0, os.path.join(TOP, "tests", "compat"))
import nubelab  # noqa: E402
from nubelab import http, wait_for  # noqa: E402,F401  (re-exported for the tests)
from compat import start_image  # noqa: E402,F401  (nube-image with nube-api's token key)

PASS = 0
FAIL = 0
T0 = time.monotonic()
GUEST_CMDLINE = "console=ttyS0 panic=-1"


# ---- the tally ----
def ok(desc):
    global PASS
    PASS += 1
    print(f"ok   {desc}", flush=True)


def bad(desc):
    global FAIL
    FAIL += 1
    print(f"FAIL {desc}", flush=True)


def check(desc, cond):
    (ok if cond else bad)(desc)
    return cond


def timing(name, ms):
    print(f"TIME {name} {ms:.0f} ms", flush=True)


# ---- small helpers ----
def run(*argv, check_rc=True, env=None, cwd=None):
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
    if check_rc and p.returncode != 0:
        raise RuntimeError(f"{argv}: rc {p.returncode}: {p.stderr.strip()}")
    return p.stdout.strip()


def readf(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def counters(text):
    """The guest's COUNTER numbers in a console text, in order."""
    return [int(n) for n in re.findall(r"^COUNTER (\d+) ", text, re.M)]


def boot_active(lab, name, flavor="1", image="busybox", timeout=60):
    """Create a server and wait until it is ACTIVE, checking both steps; its id, or None
    when a check failed (the test then stops)."""
    r = lab.create_server(name, flavor=flavor, image=image)
    if not check(f"POST /servers {name} 202 ({r.status})", r.status == 202):
        print(r.raw)
        return None
    sid = r.json["server"]["id"]
    s = lab.wait_status(sid, {"ACTIVE", "ERROR"}, timeout=timeout)
    if not check(f"{name} ACTIVE ({s['status']} {s.get('fault')})", s["status"] == "ACTIVE"):
        return None
    return sid


def db_rows(lab, sql, args=()):
    """Rows of the controller DB ([] when the query fails, e.g. a table not made yet)."""
    db = sqlite3.connect(lab.db)
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.Error:
        return []
    finally:
        db.close()


def net_tag():
    """A per-run suffix for network namespace names (they are machine-wide)."""
    return f"{os.getpid() % 100000}"


# ---- hosts ----
class Host:
    """One isolated libvirtd under base. ns+ip: its own network namespace with ip/24 on
    the base dir's hub bridge (hosts of one base dir in the same /24 reach each other);
    lxc: also serve lxc:///system on the same socket (no network namespace)."""

    def __init__(self, base, name, ns=None, ip=None, lxc=False):
        self.base, self.name, self.ns, self.ip = base, name, ns, ip
        self.cmd = [HOSTCMD, "--base", base]
        argv = self.cmd + ["start", name]
        if ns:
            argv += ["--netns", ns, "--ip", f"{ip}/24"]
        if lxc:
            argv += ["--lxc"]
        out = run(*argv).splitlines()[-1]
        self.uri = f"lxc:///system?socket={out.split('socket=', 1)[1]}" if lxc else out

    def virsh(self, *args, check_rc=False):
        return run("virsh", "-q", "-c", self.uri, *args, check_rc=check_rc)

    def domstate(self, dom):
        return self.virsh("domstate", dom)

    def domains(self):
        """Names of every domain libvirt holds on this host (running or not)."""
        return self.virsh("list", "--all", "--name").split()


def stop_hosts(base):
    """Stop and purge every host of base; returns what is still left in the machine."""
    run(HOSTCMD, "--base", base, "stop-all", "--purge", check_rc=False)
    return subprocess.run([HOSTCMD, "--base", base, "leftovers"], capture_output=True,
                          text=True).stdout.strip()


def start_guard(base):
    """A process in its own session that stops base's hosts once this test is gone, even
    when it was killed before its teardown ran; the teardown kills it first."""
    script = ('while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; '
              '"$2" --base "$3" stop-all --purge; rm -rf "$3"')
    return subprocess.Popen(["bash", "-c", script, "e2e-guard", str(os.getpid()), HOSTCMD, base],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


# ---- the guest ----
def guest_image(build):
    """Build (or reuse) deploy/build-guest-image's guest; {kernel, ramdisk, disk}."""
    out = run(os.path.join(TOP, "deploy", "build-guest-image"),
              os.path.join(build, "tests", "e2e", "guest"))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def install_guest(lab, img, name="busybox", cmdline=GUEST_CMDLINE):
    """The guest as image `name` in the agents' image_dir (lab.dir/images)."""
    images = os.path.join(lab.dir, "images", name)
    os.makedirs(images)
    for file, key in (("kernel", "kernel"), ("ramdisk", "ramdisk"), ("disk.qcow2", "disk")):
        os.symlink(img[key], os.path.join(images, file))
    with open(os.path.join(images, "cmdline"), "w") as f:
        f.write(cmdline + "\n")
    return os.path.join(lab.dir, "images")


def upload_image(image_url, name, disk_format, path, **props):
    """Create a public image in nube-image (props: more of its fields) and PUT its file;
    returns its id."""
    body = {"name": name, "disk_format": disk_format, "visibility": "public",
            "container_format": disk_format if disk_format in ("aki", "ari") else "bare"}
    body.update(props)
    r = http("POST", f"{image_url}/v2/images", body)
    assert r.status == 201, (r.status, r.raw)
    with open(path, "rb") as f:
        r2 = http("PUT", f"{image_url}/v2/images/{r.json['id']}/file", raw=f.read(),
                  headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert r2.status == 204, (r2.status, r2.raw)
    return r.json["id"]


def upload_guest(image_url, img):
    """The guest set as Glance takes it: kernel (aki), ramdisk (ari) and the qcow2 disk
    naming both, with the guest's command line; returns (kernel, ramdisk, disk) ids."""
    kid = upload_image(image_url, "guest-kernel", "aki", img["kernel"])
    rid = upload_image(image_url, "guest-ramdisk", "ari", img["ramdisk"])
    did = upload_image(image_url, "guest", "qcow2", img["disk"], kernel_id=kid,
                       ramdisk_id=rid, os_command_line=GUEST_CMDLINE)
    return kid, rid, did


# ---- daemons ----
def agent_conf(lab, name, uri, inst_dir, agent=None, extra="", log_level="debug",
               heartbeat_ms=300):
    """Write nube-agent-<name>.conf. agent: [agent] keys after host/libvirt_uri/
    heartbeat/instances_dir, in order (None drops a default: image_dir, network,
    shutdown_timeout_s); extra: more sections (text)."""
    keys = {"image_dir": os.path.join(lab.dir, "images"), "network": "",
            "shutdown_timeout_s": "5"}
    keys.update(agent or {})
    lines = "".join(f"{k} = {v}\n" for k, v in keys.items() if v is not None)
    port = lab.agent_ports.setdefault(name, nubelab.free_port())
    return lab.write(f"nube-agent-{name}.conf", f"""[DEFAULT]
log_level = {log_level}
state_dir = {lab.dir}
[agent]
host = {name}
libvirt_uri = {uri}
heartbeat_interval_ms = {heartbeat_ms}
instances_dir = {inst_dir}
{lines}{extra}
[bus]
scheduler_endpoint = tcp://127.0.0.1:{lab.bus_port}
resend_ms = 300
[http]
listen = 127.0.0.1
port = {port}
""")


def restart_agent(lab, name, daemon_name=None):
    """(Re)start the agent of host `name` from its config; returns the Daemon."""
    return lab._start(daemon_name or f"agent-{name}", lab.binary("compute-agent", "nube-agent"),
                      os.path.join(lab.dir, f"nube-agent-{name}.conf"),
                      f"http://127.0.0.1:{lab.agent_ports[name]}/healthz")


def start_agent(lab, name, uri, inst_dir=None, agent=None, extra="", **conf):
    """A nube-agent on a real host; returns (Daemon, instances_dir). conf: agent_conf()'s
    log_level, heartbeat_ms."""
    inst_dir = inst_dir or os.path.join(lab.dir, f"instances-{name}")
    os.makedirs(inst_dir, exist_ok=True)
    agent_conf(lab, name, uri, inst_dir, agent, extra, **conf)
    return restart_agent(lab, name), inst_dir


def start_billing(lab, extra="", optional=False):
    """nube-billing on loopback: {"url", "bus", "db"}. optional: None (with a note) when
    it is not built or does not start, instead of failing."""
    binary = lab.binary("billing", "nube-billing")
    if optional and not os.path.exists(binary):
        return None
    port, bus = nubelab.free_port(), f"tcp://127.0.0.1:{nubelab.free_port()}"
    db = os.path.join(lab.dir, "billing.db")
    conf = lab.write("nube-billing.conf", f"""[DEFAULT]
log_level = debug
state_dir = {lab.dir}
[billing]
listen = 127.0.0.1
port = {port}
bus_listen = {bus}
{extra}
[database]
connection = {db}
[auth]
admin_token = {nubelab.ADMIN_TOKEN}
""")
    try:
        lab._start("billing", binary, conf, f"http://127.0.0.1:{port}/healthz")
    except AssertionError as e:
        if not optional:
            raise
        print(f"note: nube-billing did not start ({e}); usage samples not checked")
        return None
    return {"url": f"http://127.0.0.1:{port}", "bus": bus, "db": db}


def migration_hosts(build, base, lab, names=("nubeA", "nubeB"), network_tag="10.78.0",
                    agent_extra=None):
    """Guest image, len(names) libvirt hosts on one hub (network_tag.1, .2, ...),
    scheduler, API and one agent per host set up for peer-to-peer live migration without
    shared storage (each its own instances_dir, one image cache all read).
    agent_extra: {host: extra config text} (e.g. a [resources] section).
    Returns (hosts by name, instances_dir by name)."""
    t = time.monotonic()
    install_guest(lab, guest_image(build))
    tag = net_tag()
    hosts = {n: Host(base, n, f"nube-mg{n[-1].lower()}-{tag}", f"{network_tag}.{i + 1}")
             for i, n in enumerate(names)}
    timing("image+hosts-start", (time.monotonic() - t) * 1000)
    ok(f"{len(names)} libvirt hosts up")

    lab.start_scheduler()
    lab.start_api()
    inst_dirs = {}
    for n, h in hosts.items():
        _, inst_dirs[n] = start_agent(lab, n, h.uri, agent={
            "virt_type": "qemu",
            "migration_uri": f"qemu+tcp://{h.ip}/system",
            "migration_address": h.ip,
            "migration_max_downtime_ms": "500",
            "migration_timeout_s": "60"}, extra=(agent_extra or {}).get(n, ""))
    wait_for(lambda: set(names) <= set(lab.hypervisors()), 20, "hosts registered")
    return hosts, inst_dirs


# ---- the frame ----
def main(prefix, scenario, lab_kwargs=None, killed=(), budget_s=None):
    """Run scenario(build, base, lab) as an e2e test; returns the exit status: 77 when
    not root (or when the scenario returns 77), 1 on any failed check, else 0.
    killed: daemon names whose exit status is not checked (the test killed them)."""
    if os.geteuid() != 0:
        print("SKIP: needs root (starts libvirtd and namespaces)")
        return 77
    build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(TOP, "build"))
    base = tempfile.mkdtemp(prefix=prefix)
    guard = start_guard(base)
    lab = nubelab.Lab(build, **(lab_kwargs or {}))
    rc = 1
    try:
        rc = scenario(build, base, lab)
    except Exception as e:  # noqa: BLE001 - reported as a failure; the teardown still runs
        bad(f"scenario raised {e!r}")
        traceback.print_exc()
    finally:
        codes = lab.stop_all()
        # Every daemon must exit cleanly (the sanitizers report through the exit code).
        for name, code in codes.items():
            if code not in (0, None) and name not in killed:
                bad(f"{name} exited with {code}")
                print(lab.daemons[name].tail(30))
        left = stop_hosts(base)
        check(f"nothing left behind {left!r}", not left)
        guard.send_signal(signal.SIGKILL)
        guard.wait()
        lab.cleanup(keep=FAIL > 0 and os.environ.get("NUBE_E2E_KEEP") == "1")
        shutil.rmtree(base, ignore_errors=True)
        took = time.monotonic() - T0
        print(f"{PASS} passed, {FAIL} failed ({took:.1f} s)")
        if budget_s and took > budget_s:
            print(f"WARN: over the {budget_s} s budget")
    if rc == 77:
        return 77
    return 1 if FAIL or rc else 0
