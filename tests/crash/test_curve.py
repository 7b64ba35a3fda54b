#!/usr/bin/env python3
"""The authenticated bus with real daemons: CURVE + ZAP between nube-scheduler, nube-api
and nube-agents, keys made by nube-keys.

  - hostA (its own key, allowed as hostA) registers and runs a server;
  - an agent with an unknown key (hostC) never registers: the handshake is refused;
  - an agent that presents hostA's key but calls itself hostB never registers: a key
    speaks only for its own host;
  - hostB's own (allowed) key running an agent that calls itself hostA gets no command
    and not even an ack (its messages are refused), whether hostA is up or away: while
    hostA is killed, the destroy of hostA's server waits in the scheduler; hostA,
    restarted beside the impostor, gets it at once (each connection has its own routing
    id "<host>#<nonce>", the scheduler routes a host only to a connection its key
    spoke on);
  - hostA's usage samples reach nube-billing over CURVE with hostA's key (billing admits
    only allowed keys and refuses samples about another host: test_billing_api.c);
  - revoking hostA's key (nube-keys revoke) silences it: the scheduler marks it down;
  - the secret key files are 0600 and an agent refuses to start with a readable one.

Usage: test_curve.py BUILD_DIR [--keep]
"""

import os
import signal
import stat
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from nubelab import Lab, free_port, http, wait_for  # noqa: E402
from realhost import start_billing  # noqa: E402


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    keep = "--keep" in sys.argv
    lab = Lab(build)
    keys = os.path.join(lab.dir, "keys")
    allowed = os.path.join(lab.dir, "allowed")
    os.makedirs(keys)
    os.makedirs(allowed)
    tool = lab.binary("scheduler", "nube-keys")

    def run(*args):
        p = subprocess.run([tool, *args], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p.stdout

    for name in ("nube-scheduler", "nube-billing", "nube-api", "hostA", "hostB", "hostC"):
        run("gen", "--name", name, "--out", keys)
    for name in ("nube-api", "hostA", "hostB"):  # hostC is never allowed
        run("allow", "--dir", allowed, os.path.join(keys, f"{name}.pub"))
    srv_pub = os.path.join(keys, "nube-scheduler.pub")

    def client_keys(name):
        return (f"[bus]\ncurve_secret_key_file = {os.path.join(keys, name + '.key')}\n"
                f"curve_server_key_file = {srv_pub}\n")
    lab.sched_extra = (f"[bus]\ncurve_secret_key_file = "
                       f"{os.path.join(keys, 'nube-scheduler.key')}\n"
                       f"allowed_keys_dir = {allowed}\n")
    lab.api_extra = client_keys("nube-api")
    # hostB presents hostA's key; hostC its own, unknown key.
    agent_keys = {"hostA": client_keys("hostA"), "hostB": client_keys("hostA"),
                  "hostC": client_keys("hostC")}
    orig_write = lab.write

    def write(name, text):
        if name.startswith("nube-agent-") and name.endswith(".conf"):
            text += agent_keys.get(name[len("nube-agent-"):-len(".conf")], "")
        return orig_write(name, text)
    lab.write = write

    passed = failed = 0

    def check(name, fn):
        nonlocal passed, failed
        try:
            fn()
            print(f"ok   {name}")
            passed += 1
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"FAIL {name}: {e}")
            traceback.print_exc()

    def keys_0600():
        for name in ("nube-scheduler", "hostA"):
            mode = stat.S_IMODE(os.stat(os.path.join(keys, f"{name}.key")).st_mode)
            assert mode == 0o600, oct(mode)

    def known_key_works():
        lab.start_agent("hostA")
        wait_for(lambda: lab.hypervisors().get("hostA", {}).get("state") == "up", 30,
                 "hostA up over CURVE")
        r = lab.create_server("curvy")
        assert r.status == 202, (r.status, r.raw)
        s = lab.wait_status(r.json["server"]["id"], ("ACTIVE", "ERROR"), 60)
        assert s["status"] == "ACTIVE", s

    def others_refused():
        lab.start_agent("hostB")
        lab.start_agent("hostC")
        time.sleep(3)   # several heartbeats and register resends
        hv = lab.hypervisors()
        assert "hostB" not in hv, f"hostB registered with hostA's key: {hv['hostB']}"
        assert "hostC" not in hv, "hostC registered with an unknown key"
        log = open(os.path.join(lab.dir, "scheduler.log"), errors="replace").read()
        assert "refused a bus connection" in log, "no ZAP refusal logged"
        assert "its key belongs to 'hostA'" in log, "no hostB-as-hostA refusal logged"

    def boot_on_hostA(name):
        r = lab.create_server(name)
        assert r.status == 202, (r.status, r.raw)
        s = lab.wait_status(r.json["server"]["id"], ("ACTIVE", "ERROR"), 60)
        assert s["status"] == "ACTIVE", s
        return s["id"]

    imp_port = free_port()

    def metric(port, name):
        r = http("GET", f"http://127.0.0.1:{port}/metrics", token=None)
        body = r.raw.decode(errors="replace") if isinstance(r.raw, bytes) else str(r.raw)
        for line in body.splitlines():
            if line.startswith(name + " "):
                return int(line.split()[1])
        raise AssertionError(f"no {name} in /metrics of port {port}")

    imp_received = 'nube_agent_bus_messages_total{kind="received"}'
    imp_sid = {}

    def takeover_refused():
        # hostB's allowed key, routing id (host) "hostA", its own state dir and node.
        imp_dir = os.path.join(lab.dir, "impostor")
        os.makedirs(os.path.join(imp_dir, "instances"), exist_ok=True)
        conf = lab.write("impostor.conf", f"""[DEFAULT]
log_level = debug
state_dir = {imp_dir}
[agent]
host = hostA
libvirt_uri = test:///default
heartbeat_interval_ms = 500
instances_dir = {imp_dir}/instances
[bus]
scheduler_endpoint = tcp://127.0.0.1:{lab.bus_port}
resend_ms = 300
{client_keys("hostB")[len("[bus]"):]}
[http]
listen = 127.0.0.1
port = {imp_port}
""")
        lab._start("impostor", lab.binary("compute-agent", "nube-agent"), conf,
                   f"http://127.0.0.1:{imp_port}/healthz")
        # It connects beside hostA (its own routing id) and speaks: refused.
        wait_for(lambda: "its key belongs to 'hostB'" in open(
            os.path.join(lab.dir, "scheduler.log"), errors="replace").read(), 30,
            "the impostor's messages refused by the scheduler")
        sid = boot_on_hostA("after-impostor")
        imp_sid["sid"] = sid
        r = http("GET", f"http://127.0.0.1:{imp_port}/v1/domains")
        body = r.raw.decode(errors="replace") if isinstance(r.raw, bytes) else str(r.raw)
        assert r.status == 200, (r.status, body)
        assert sid not in body, "the impostor received hostA's create"
        hv = lab.hypervisors()
        assert hv["hostA"]["state"] == "up", hv["hostA"]
        assert "hostB" not in hv, hv
        # Not one message from the scheduler reached it, not even an ack.
        assert metric(imp_port, imp_received) == 0, "the impostor received something"

    def impostor_while_away():
        # hostA dies; the impostor stays, heartbeating as hostA with hostB's key.
        sid = imp_sid["sid"]
        lab.daemons["agent-hostA"].kill9()
        wait_for(lambda: lab.hypervisors()["hostA"]["state"] == "down", 30,
                 "hostA down after SIGKILL")
        # A local delete: the record goes now, the destroy waits for hostA on the bus.
        r = http("DELETE", f"{lab.compute}/servers/{sid}")
        assert r.status == 204, (r.status, r.raw)
        time.sleep(2)   # several resends (resend_ms = 300) with the impostor connected
        assert metric(imp_port, imp_received) == 0, "the impostor received the destroy"
        imp_log = open(os.path.join(lab.dir, "impostor.log"), errors="replace").read()
        assert sid not in imp_log, "the impostor heard of hostA's server"
        # hostA restarts and connects beside the impostor: its destroy arrives at once.
        t0 = time.monotonic()
        lab.start_agent("hostA")
        wait_for(lambda: metric(lab.agent_ports["hostA"], "nube_agent_destroys_total") >= 1,
                 30, "hostA's destroy delivered after its restart")
        assert sid not in lab.domains("hostA"), "hostA still runs the deleted server"
        print(f"     the destroy reached hostA {time.monotonic() - t0:.1f}s after its "
              f"restart, with the impostor still connected")
        assert metric(imp_port, imp_received) == 0, "the impostor received something"
        wait_for(lambda: lab.hypervisors()["hostA"]["state"] == "up", 30, "hostA up again")

    def restart_gets_id_back():
        lab.daemons["impostor"].stop()
        lab.daemons["agent-hostA"].proc.send_signal(signal.SIGKILL)
        lab.daemons["agent-hostA"].proc.wait(10)
        t0 = time.monotonic()
        lab.start_agent("hostA")
        wait_for(lambda: lab.hypervisors()["hostA"]["state"] == "up", 30, "hostA up again")
        boot_on_hostA("after-restart")
        print(f"     hostA served again {time.monotonic() - t0:.1f}s after its restart")

    def usage_to_billing():
        billing = start_billing(lab, extra=(
            f"curve_secret_key_file = {os.path.join(keys, 'nube-billing.key')}\n"
            f"allowed_keys_dir = {allowed}"))
        agent_keys["hostA"] += (f"[billing]\nendpoint = {billing['bus']}\n"
                                f"sample_interval_s = 1\n"
                                f"curve_server_key_file = "
                                f"{os.path.join(keys, 'nube-billing.pub')}\n")
        lab.daemons["agent-hostA"].stop()
        lab.start_agent("hostA")

        def metric(name):
            r = http("GET", f"{billing['url']}/metrics")
            body = r.raw.decode(errors="replace") if isinstance(r.raw, bytes) else str(r.raw)
            for line in body.splitlines():
                if line.startswith(name + " "):
                    return int(line.split()[1])
            return -1
        acc = 'nube_billing_samples_total{result="accepted"}'
        wait_for(lambda: metric(acc) > 0, 30, "hostA's samples stored by billing")
        assert metric('nube_billing_samples_total{result="rejected"}') == 0
        log = open(os.path.join(lab.dir, "billing.log"), errors="replace").read()
        assert "as 'hostA'" in log, "billing's ZAP handler did not admit hostA's key"

    def revocation():
        out = run("list", "--dir", allowed)
        assert "hostA" in out, out
        run("revoke", "--dir", allowed, "hostA")
        wait_for(lambda: lab.hypervisors()["hostA"]["state"] == "down", 30,
                 "hostA down after its key was revoked")

    def readable_secret_refused():
        k = os.path.join(keys, "hostC.key")
        os.chmod(k, 0o644)
        conf = lab.write("nube-agent-hostC.conf", "[DEFAULT]\nstate_dir = " + lab.dir +
                         "\n[agent]\nhost = hostC\nlibvirt_uri = test:///default\n")
        p = subprocess.run([lab.binary("compute-agent", "nube-agent"), "--config", conf],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode != 0 and "chmod 600" in (p.stdout + p.stderr), \
            (p.returncode, p.stdout[-500:], p.stderr[-500:])

    try:
        lab.start_scheduler()
        lab.start_api()
        check("secret key files are 0600", keys_0600)
        check("an allowed key registers and runs a server", known_key_works)
        check("unknown key and hostA's key posing as hostB are refused", others_refused)
        check("hostB's key posing as hostA gets nothing, hostA keeps working",
              takeover_refused)
        check("with hostA away the impostor gets no command; hostA back gets it",
              impostor_while_away)
        check("a restarted hostA is served at once", restart_gets_id_back)
        check("hostA's usage samples reach billing over CURVE", usage_to_billing)
        check("revoking a key silences its host", revocation)
        check("a secret key readable by others is refused", readable_secret_refused)
    finally:
        lab.stop_all()
        lab.cleanup(keep=keep)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
