#!/usr/bin/env python3
"""bench/api/bench.py - the measuring half of bench/api/run (see there).

Usage: bench.py BUILD_DIR SERVERS SECONDS CONNECTIONS
"""

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "integration"))
from nubelab import ADMIN_PASSWORD, Lab, free_port, http  # noqa: E402

ADMIN_PROJECT_ID = "5a0c5e2b9b6f4f3e8d1c2b3a4f5e6d7c"  # nube-api's defaults
ADMIN_USER_ID = "0f1e2d3c4b5a49687766554433221100"
ITERATIONS = 200000  # [auth] password_iterations default


class QuietLab(Lab):
    """nubelab's daemons log at debug level; a benchmark measures the API, not the log."""

    def write(self, name, text):
        return super().write(name, text.replace("log_level = debug", "log_level = warning"))


def seed(db, n):
    """n ACTIVE servers of the admin project, with a key and two metadata items each,
    written as the store writes them (newest first by created_ms)."""
    con = sqlite3.connect(db, timeout=30)
    now = int(time.time() * 1000)
    rows, extras, meta = [], [], []
    for i in range(n):
        u = str(uuid.uuid4())
        t = now - (n - i) * 1000
        rows.append((u, f"bench-{i:04d}", ADMIN_PROJECT_ID, ADMIN_USER_ID, "cirros", "1",
                     "m1.tiny", 1, 512, 1, f"host-{i % 50:02d}", "active", "none",
                     "running", t, t, t))
        extras.append((u, "bench-key"))
        meta += [(u, "role", "web"), (u, "tier", str(i % 3))]
    with con:
        con.executemany(
            "INSERT INTO instances (uuid, name, project_id, user_id, image_ref, flavor_id,"
            " flavor_name, vcpus, ram_mb, disk_gb, host, vm_state, task_state, power_state,"
            " created_ms, updated_ms, launched_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows)
        con.executemany("INSERT INTO instance_extra (instance_uuid, key_name) VALUES (?, ?)",
                        extras)
        con.executemany("INSERT INTO instance_metadata (instance_uuid, meta_key, meta_value)"
                        " VALUES (?, ?, ?)", meta)
    con.close()


def parse_wrk(out):
    def ms(v):
        m = re.match(r"([\d.]+)(us|ms|s)", v)
        x = float(m.group(1))
        return {"us": x / 1000, "ms": x, "s": x * 1000}[m.group(2)]
    r = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
         "requests": int(re.search(r"(\d+) requests in", out).group(1)),
         "p50": ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
         "p99": ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    r["errors"] = (int(bad.group(1)) if bad else 0)
    r["socket_errors"] = sock.group(1) if sock else ""
    return r


def wrk(url, seconds, conns, headers=(), script=None):
    argv = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    for h in headers:
        argv += ["-H", h]
    if script:
        argv += ["-s", script]
    argv.append(url)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed: {p.stderr}")
    return parse_wrk(p.stdout)


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def line(name, r, extra=""):
    err = f"errors={r['errors']}" + (f" socket[{r['socket_errors']}]" if r["socket_errors"]
                                      else "")
    print(f"{name:<42} {r['rps']:>10.1f} req/s  p50 {r['p50']:>8.3f} ms  "
          f"p99 {r['p99']:>8.3f} ms  {err}{extra}", flush=True)


def start_nginx(tmp, size):
    root = os.path.join(tmp, "www")
    os.makedirs(root)
    # nginx's workers drop to an unprivileged user when started as root: let them read.
    os.chmod(tmp, 0o755)
    os.chmod(root, 0o755)
    with open(os.path.join(root, "detail.json"), "wb") as f:
        f.write(b"x" * size)
    os.chmod(os.path.join(root, "detail.json"), 0o644)
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes auto;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/cbt;
    proxy_temp_path {tmp}/pt;
    fastcgi_temp_path {tmp}/ft;
    uwsgi_temp_path {tmp}/ut;
    scgi_temp_path {tmp}/st;
    types {{ application/json json; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
""")
    p = subprocess.Popen(["/usr/sbin/nginx", "-c", conf, "-p", tmp],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/detail.json"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if http("GET", url, token=None, timeout=2).status == 200:
                return p, url
        except OSError:
            pass
        time.sleep(0.05)
    p.terminate()
    raise RuntimeError("nginx did not start")


def main():
    build, n, seconds, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    lab = QuietLab(build)
    nginx = None
    tmp = tempfile.mkdtemp(prefix="nube-bench-nginx-")
    try:
        # The controller as it runs: a scheduler and simulated hosts whose heartbeats
        # write the database all the time (BENCH_SIM_HOSTS=0: nube-api alone).
        sim = int(os.environ.get("BENCH_SIM_HOSTS", "100"))
        if sim:
            lab.start_scheduler()
        api = lab.start_api()
        if sim:
            lab.start_sim_agents("sim", sim)
        ident = f"http://127.0.0.1:{lab.identity_port}/v3"
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": ADMIN_PASSWORD}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}
        r = http("POST", f"{ident}/auth/tokens", body, token=None)
        assert r.status == 201, (r.status, r.raw)
        token = r.headers.get("X-Subject-Token") or r.headers.get("x-subject-token")
        seed(lab.db, n)
        detail = f"{lab.compute}/servers/detail"
        r = http("GET", detail, token=token)
        assert r.status == 200 and len(r.json["servers"]) == n, (r.status, r.raw[:300])
        size = len(r.raw)
        nginx, static = start_nginx(tmp, size)
        print(f"nube-api ({os.path.basename(os.path.abspath(build))}), {n} servers, "
              f"{sim} simulated hosts heartbeating, "
              f"detail body {size} bytes, wrk -t2 -c{conns} -d{seconds}s, "
              f"{os.cpu_count()} CPUs", flush=True)

        hdr = [f"X-Auth-Token: {token}"]
        line("nginx static file (same size)", wrk(static, seconds, conns))
        # BENCH_PERF=FILE: record nube-api with perf during the detail run (profiling).
        prof = None
        if os.environ.get("BENCH_PERF"):
            prof = subprocess.Popen(["perf", "record", "-g", "-o", os.environ["BENCH_PERF"],
                                     "-p", str(api.proc.pid)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        c0 = cpu_s(api.proc.pid)
        d = wrk(detail, seconds, conns, hdr)
        cpu = (cpu_s(api.proc.pid) - c0) / max(d["requests"], 1) * 1000
        if prof:
            prof.send_signal(2)
            prof.wait(30)
        line(f"GET /v2.1/servers/detail ({n})", d, f"  nube-api CPU {cpu:.2f} ms/req")
        # The same page with a changes-since that differs on every request: each answer
        # is rendered (no cached answer can match), the cost after any change.
        cold = os.path.join(tmp, "cold.lua")
        with open(cold, "w") as f:
            f.write("local n = 0\nrequest = function()\n  n = n + 1\n"
                    "  return wrk.format(nil, wrk.path .. string.format("
                    "\"?changes-since=2000-01-%02dT%02d:%02d:00Z\", 1 + math.floor(n / 1440) % 28,"
                    " math.floor(n / 60) % 24, n % 60))\nend\n")
        c0 = cpu_s(api.proc.pid)
        d = wrk(detail, seconds, conns, hdr, script=cold)
        cpu = (cpu_s(api.proc.pid) - c0) / max(d["requests"], 1) * 1000
        line(f"  same, rendered every time (no cache)", d, f"  nube-api CPU {cpu:.2f} ms/req")

        c0 = cpu_s(api.proc.pid)
        v = wrk(f"{ident}/auth/tokens", seconds, conns, hdr + [f"X-Subject-Token: {token}"])
        cpu = (cpu_s(api.proc.pid) - c0) / max(v["requests"], 1) * 1000
        line("GET /v3/auth/tokens (validate)", v, f"  nube-api CPU {cpu:.4f} ms/req "
             "(whole request: HTTP + verify + body)")

        lua = os.path.join(tmp, "issue.lua")
        with open(lua, "w") as f:
            f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                    f"wrk.body = [[{json.dumps(body)}]]\n")
        c0 = cpu_s(api.proc.pid)
        iss = wrk(f"{ident}/auth/tokens", seconds, conns, script=lua)
        cpu = (cpu_s(api.proc.pid) - c0) / max(iss["requests"], 1) * 1000
        t0 = time.process_time()
        for _ in range(5):
            hashlib.pbkdf2_hmac("sha256", ADMIN_PASSWORD.encode(), b"0123456789abcdef",
                                ITERATIONS)
        h = (time.process_time() - t0) / 5 * 1000
        line("POST /v3/auth/tokens (password issue)", iss,
             f"  nube-api CPU {cpu:.2f} ms/req; PBKDF2-SHA256 x{ITERATIONS} alone "
             f"{h:.2f} ms CPU -> ceiling {os.cpu_count() * 1000 / h:.1f} req/s "
             f"on {os.cpu_count()} CPUs")
        codes = lab.stop_all()
        assert codes.get("api") == 0, codes
    finally:
        if nginx:
            nginx.terminate()
            nginx.wait(10)
        lab.cleanup()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
