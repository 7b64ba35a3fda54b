"""nubelab - start real nube daemons on loopback for integration tests.

A Lab owns a temporary directory, writes the daemons' INI files, starts nube-scheduler,
nube-api and any number of nube-agents (libvirt test driver hosts described by XML files
written here), and stops everything it started: every process gets SIGTERM and must exit
0 within a deadline (a sanitizer report or a hang is a test failure), and the directory
is removed. Standard library only, so it runs wherever python3 does.
"""

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

ADMIN_TOKEN = "it-admin-token-0123456789abcdef"
ADMIN_PASSWORD = "it-admin-password"


# free_port() hands out ports that a daemon binds later, so nothing may take them in
# between. Binding port 0 and closing (the old way) returns a port from the kernel's
# ephemeral range, which any process may be given again at once - another test's
# port-0 bind or any outgoing connection (meson runs several suites at a time) - and the
# daemon then fails with "Address already in use". So ports come from below the
# ephemeral range, which the kernel never hands out by itself, and each one is reserved
# among concurrent test processes with a lock on the byte at offset <port> of one shared
# file: the lock lives as long as this process (the kernel drops it when the process
# dies, however it dies), so a restarted daemon gets its port back and no other nubelab
# user picks it meanwhile. A bind check skips ports some unrelated program uses. Each
# process starts its scan at a pid-derived offset, so concurrent processes rarely even
# meet in the lock file.
_PORT_LOCKS = os.path.join(tempfile.gettempdir(), f"nubelab-ports-{os.getuid()}.lock")
_port_lock_fd = None
_ports_held = set()


def _port_pool():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    if lo - 10000 >= 2000:
        return 10000, lo - 1
    if 65535 - hi >= 2000:
        return hi + 1, 65535
    return None


def _bindable(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port():
    """A TCP port on 127.0.0.1 that stays reserved for this process (see above)."""
    global _port_lock_fd
    pool = _port_pool()
    if pool is None:  # no room outside the ephemeral range: best effort
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    if _port_lock_fd is None:
        # Never closed: closing any descriptor of the file would drop all our locks.
        _port_lock_fd = os.open(_PORT_LOCKS, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    first, last = pool
    size = last - first + 1
    start = (os.getpid() * 7919) % size
    for i in range(size):
        port = first + (start + i) % size
        if port in _ports_held:
            continue
        try:
            fcntl.lockf(_port_lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
        except OSError:
            continue  # another test process holds it
        if not _bindable(port):
            fcntl.lockf(_port_lock_fd, fcntl.LOCK_UN, 1, port)
            continue
        _ports_held.add(port)
        return port
    raise AssertionError(f"no free port in {first}-{last}")


def wait_for(pred, timeout, what, interval=0.05):
    """Poll pred() until it returns a true value or the deadline passes (then raise)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.raw = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None


def http(method, url, body=None, token=ADMIN_TOKEN, headers=None, raw=None, timeout=30):
    hdrs = {"Accept": "application/json"}
    if token:
        hdrs["X-Auth-Token"] = token
    data = None
    if raw is not None:
        data = raw
        hdrs["Content-Type"] = "application/json"
    elif body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Response(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, dict(e.headers), e.read())


def http_curl(method, url, body, token=ADMIN_TOKEN, timeout=30):
    """Send a request with curl (which reads the answer while still sending, as real
    clients do): an early 413 to an oversized body reaches us instead of a broken pipe."""
    with tempfile.NamedTemporaryFile() as f, tempfile.NamedTemporaryFile() as out:
        f.write(body)
        f.flush()
        cmd = ["curl", "-sS", "-X", method, "-o", out.name, "-D", "-", "-w", "\n%{http_code}",
               "-H", "Content-Type: application/json", "-H", f"X-Auth-Token: {token}",
               "--data-binary", f"@{f.name}", "--max-time", str(timeout), url]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 5)
        lines = p.stdout.strip().splitlines()
        status = int(lines[-1]) if lines and lines[-1].isdigit() else 0
        headers = {}
        for line in lines[1:-1]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        return Response(status, headers, open(out.name, "rb").read())


class Daemon:
    def __init__(self, name, argv, log_path):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.proc = None

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        self.proc.kill()
        self.proc.wait(10)
        self.log.close()

    def stop(self, timeout=20):
        """SIGTERM and wait; returns the exit code (None if it had to be killed)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                self.log.close()
                return None
        self.log.close()
        return self.proc.returncode

    def tail(self, n=40):
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


class Lab:
    def __init__(self, build_dir, host_ram_mb=7680, host_vcpus=4, host_disk_gb=100,
                 api_extra="", sched_extra=""):
        self.build = os.path.abspath(build_dir)
        self.dir = tempfile.mkdtemp(prefix="nube-it-")
        self.db = os.path.join(self.dir, "controller.db")
        self.bus_port = free_port()
        self.compute_port = free_port()
        self.identity_port = free_port()
        self.sched_http_port = free_port()
        self.host_ram_mb = host_ram_mb
        self.host_vcpus = host_vcpus
        self.host_disk_gb = host_disk_gb
        self.daemons = {}
        self.agent_ports = {}
        self.failures = []
        # Extra INI text appended to nube-api.conf / nube-scheduler.conf (new sections).
        self.api_extra = api_extra
        self.sched_extra = sched_extra

    # ---- paths and config ----
    def binary(self, sub, name):
        return os.path.join(self.build, sub, name)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    @property
    def compute(self):
        return f"http://127.0.0.1:{self.compute_port}/v2.1"

    def start_scheduler(self):
        conf = self.write("nube-scheduler.conf", f"""[DEFAULT]
log_level = debug
state_dir = {self.dir}
[database]
connection = {self.db}
[bus]
listen = tcp://127.0.0.1:{self.bus_port}
resend_ms = 300
[scheduler]
host_down_after_s = 3
check_interval_ms = 200
[http]
listen = 127.0.0.1
port = {self.sched_http_port}
{self.sched_extra}""")
        return self._start("scheduler", self.binary("scheduler", "nube-scheduler"), conf,
                           f"http://127.0.0.1:{self.sched_http_port}/healthz")

    def start_api(self):
        conf = self.write("nube-api.conf", f"""[DEFAULT]
log_level = debug
state_dir = {self.dir}
[database]
connection = {self.db}
[bus]
scheduler_endpoint = tcp://127.0.0.1:{self.bus_port}
resend_ms = 300
[api]
listen = 127.0.0.1
compute_port = {self.compute_port}
identity_port = {self.identity_port}
[auth]
admin_token = {ADMIN_TOKEN}
admin_password = {ADMIN_PASSWORD}
{self.api_extra}
{self._quota_section()}""")
        return self._start("api", self.binary("api-server", "nube-api"), conf,
                           f"http://127.0.0.1:{self.compute_port}/healthz")

    def _quota_section(self):
        # Tests create more servers in one project than Nova's default quotas allow;
        # unlimited unless the test configures [quota] itself (quota tests do).
        if "[quota]" in self.api_extra:
            return ""
        return "[quota]\ninstances = -1\ncores = -1\nram = -1\n"

    def start_agent(self, host, extra=""):
        """A test-driver agent for host; extra: more config sections (e.g. [billing])."""
        port = self.agent_ports.setdefault(host, free_port())
        node = self.write(f"{host}.xml", f"""<node>
  <cpu><mhz>2600</mhz><model>x86_64</model><nodes>1</nodes><sockets>1</sockets>
    <cores>{self.host_vcpus}</cores><threads>1</threads><active>{self.host_vcpus}</active></cpu>
  <memory>{self.host_ram_mb * 1024}</memory>
</node>
""")
        inst = os.path.join(self.dir, f"instances-{host}")
        os.makedirs(inst, exist_ok=True)
        conf = self.write(f"nube-agent-{host}.conf", f"""[DEFAULT]
log_level = debug
state_dir = {self.dir}
[agent]
host = {host}
libvirt_uri = test://{node}
heartbeat_interval_ms = 500
instances_dir = {inst}
[bus]
scheduler_endpoint = tcp://127.0.0.1:{self.bus_port}
resend_ms = 300
{extra}[resources]
disk_gb = {self.host_disk_gb}
[http]
listen = 127.0.0.1
port = {port}
""")
        return self._start(f"agent-{host}", self.binary("compute-agent", "nube-agent"), conf,
                           f"http://127.0.0.1:{port}/healthz")

    def start_sim_agents(self, name, n, vcpus=4, ram_mb=8192, disk_gb=100, fail_spawns=False,
                         first=0, timeout=60):
        """One nube-agent process simulating n hosts named <name>-NNNN (simulate.c);
        returns when the scheduler lists all of them as up."""
        conf = self.write(f"nube-agent-{name}.conf", f"""[DEFAULT]
log_level = info
state_dir = {self.dir}
[agent]
host = {name}
libvirt_uri = test:///default
heartbeat_interval_ms = 1000
instances_dir = {self.dir}/instances-{name}
simulate_hosts = {n}
simulate_vcpus = {vcpus}
simulate_ram_mb = {ram_mb}
simulate_disk_gb = {disk_gb}
simulate_first = {first}
fail_spawns = {"true" if fail_spawns else "false"}
[bus]
scheduler_endpoint = tcp://127.0.0.1:{self.bus_port}
resend_ms = 300
[http]
port = 0
""")
        d = Daemon(f"agent-{name}", [self.binary("compute-agent", "nube-agent"), "--config", conf],
                   os.path.join(self.dir, f"agent-{name}.log"))
        self.daemons[d.name] = d.start()
        names = {f"{name}-{i:04d}" for i in range(first, first + n)}

        def registered():
            if not d.alive():
                raise AssertionError(f"{d.name} exited with {d.proc.returncode}:\n{d.tail()}")
            hv = self.hypervisors()
            return all(h in hv and hv[h].get("state") == "up" for h in names)
        wait_for(registered, timeout, f"{n} simulated hosts {name}-* up", interval=0.2)
        return d

    def _start(self, name, binary, conf, health_url):
        d = Daemon(name, [binary, "--config", conf], os.path.join(self.dir, f"{name}.log"))
        self.daemons[name] = d.start()

        def healthy():
            if not d.alive():
                raise AssertionError(f"{name} exited with {d.proc.returncode}:\n{d.tail()}")
            try:
                return http("GET", health_url, token=None, timeout=2).status == 200
            except OSError:
                return False
        wait_for(healthy, 60, f"{name} /healthz")
        return d

    # ---- API helpers ----
    def create_server(self, name, flavor="1", image="cirros"):
        return http("POST", f"{self.compute}/servers",
                    {"server": {"name": name, "flavorRef": flavor, "imageRef": image}})

    def server(self, sid):
        r = http("GET", f"{self.compute}/servers/{sid}")
        return r.json["server"] if r.status == 200 else None

    def wait_status(self, sid, statuses, timeout=60):
        def check():
            s = self.server(sid)
            return s if s and s["status"] in statuses else None
        return wait_for(check, timeout, f"server {sid} in {statuses}", interval=0.1)

    def hypervisors(self):
        r = http("GET", f"{self.compute}/os-hypervisors/detail")
        assert r.status == 200, (r.status, r.raw)
        return {h["hypervisor_hostname"]: h for h in r.json["hypervisors"]}

    def domains(self, host):
        r = http("GET", f"http://127.0.0.1:{self.agent_ports[host]}/v1/domains", token=None)
        assert r.status == 200, (r.status, r.raw)
        return {d["uuid"]: d for d in r.json["domains"] if d.get("nube")}

    def all_servers(self):
        """Every project's servers, {id: server} (GET /servers/detail?all_tenants=1)."""
        r = http("GET", f"{self.compute}/servers/detail?all_tenants=1")
        assert r.status == 200, (r.status, r.raw[:300])
        return {s["id"]: s for s in r.json["servers"]}

    def domains_by_uuid(self, hosts):
        """The agents' live domains across hosts: {uuid: [(host, state), ...]}."""
        doms = {}
        for h in hosts:
            for uuid, d in self.domains(h).items():
                doms.setdefault(uuid, []).append((h, d["state"]))
        return doms

    # ---- teardown ----
    def stop_all(self):
        """Stop every daemon (agents first). Returns {name: exit code}."""
        codes = {}
        order = sorted(self.daemons, key=lambda n: (not n.startswith("agent"), n != "api"))
        for name in order:
            codes[name] = self.daemons[name].stop()
        return codes

    def cleanup(self, keep=False):
        for d in self.daemons.values():
            if d.alive():
                d.proc.kill()
                d.proc.wait(10)
        if keep:
            print(f"(keeping {self.dir} for inspection)")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def run_checks(lab, setup, checks, state=None, stop=None):
    """The integration suites' runner: setup(lab), then each check(lab, state) in order,
    printing "ok"/"FAIL" with the traceback and going on after a failure unless
    stop(check, state) says the rest cannot run. Then every daemon is stopped (a non-zero
    exit is a failure), the logs of a failed run are shown, and the lab is removed
    (kept with --keep). Returns the process exit code."""
    state = {} if state is None else state
    passed = failed = 0
    try:
        setup(lab)
        for check in checks:
            t0 = time.monotonic()
            try:
                check(lab, state)
                passed += 1
                print(f"ok   {check.__name__} ({time.monotonic() - t0:.1f}s)", flush=True)
            except Exception:  # noqa: BLE001 - report and go on with the next check
                failed += 1
                print(f"FAIL {check.__name__}\n{traceback.format_exc()}", flush=True)
                if stop and stop(check, state):
                    break
    except Exception:  # noqa: BLE001
        failed += 1
        print(f"FAIL setup\n{traceback.format_exc()}", flush=True)
    finally:
        codes = lab.stop_all()
        for name, code in codes.items():
            if code != 0:
                failed += 1
                print(f"FAIL clean shutdown of {name}: exit {code}\n"
                      f"{lab.daemons[name].tail()}", flush=True)
        if failed:
            for name, d in lab.daemons.items():
                print(f"--- {name} log tail ---\n{d.tail(25)}")
        lab.cleanup(keep="--keep" in sys.argv)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0
