#!/usr/bin/env python3
"""test_nube_cold_migrate.py - cold migration and resize across two real libvirt hosts
(issue 8, e2e suite).

Two isolated libvirtd hosts and their agents as in test_nube_migrate.py (realhost.py:
each host its own instances_dir, no shared storage; the guest image is in nube-image,
nubeA finds its base in its image_dir, nubeB in its nube-image cache), nubeA with 4096 MB and nubeB with
2048 MB of RAM ([resources]) so that the placements below are forced, not guessed. The
disk moves over the agents' HTTP ports (the destination pulls the source's qcow2 overlay
with the move's token and rebases it on its own base image).

A marker is written into the guest's disk while it is stopped (qemu-io: 64 KiB of 0x5a at
1 MiB on /dev/vda, which the busybox guest never writes) and read back after every move.

  1. a stopped server (SHUTOFF on nubeA) cold-migrates: VERIFY_RESIZE on nubeB with its
     domain defined but not running; confirm -> SHUTOFF there, the marker is on nubeB's
     disk, nubeA holds no domain and no instance directory;
  2. started on nubeB, it is resized to a flavor nubeB has no room for: it goes to nubeA,
     boots there with the grown disk (the guest sees 2 GiB), VERIFY_RESIZE; revert ->
     ACTIVE on nubeB with the old flavor, its disk untouched (1 GiB, marker), nubeA clean;
  3. the running server cold-migrates with the stock client (`openstack server migrate
     --wait`, then `openstack server resize confirm`): ACTIVE on nubeA, booted from the
     moved disk (the console shows a new boot, the marker is there), nubeB clean;
  4. allocations: one, on the host it runs on; no migration allocation or cold_moves row
     is left; nube-placement-audit finds nothing.
Prints TIME lines; exits 77 when not root. Usage: test_nube_cold_migrate.py BUILD_DIR
"""

import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "compat"))
import realhost as rh  # noqa: E402
from realhost import bad, check, db_rows, http, nubelab, ok, readf, timing, wait_for  # noqa: E402

MARK_AT, MARK_LEN, MARK = "1M", "64k", "0x5a"
RAM = {"nubeA": 4096, "nubeB": 2048}


def main():
    return rh.main("nube-e2e-cold.", scenario, budget_s=150)


def qemu_io(disk, cmd, shared=False):
    argv = ["qemu-io", "-f", "qcow2"] + (["-r", "-U"] if shared else []) + ["-c", cmd, disk]
    p = subprocess.run(argv, capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def marker_ok(disk, running):
    rc, out = qemu_io(disk, f"read -P {MARK} {MARK_AT} {MARK_LEN}", shared=running)
    return rc == 0 and "read 65536/65536" in out and "verification failed" not in out


def setup(build, base, lab):
    """The guest in nube-image, two hosts and their agents (as realhost.migration_hosts,
    but with the base image found two ways: nubeA reads it from its image_dir, nubeB from
    nube-image through its image cache, so a moved overlay must be rebased on the
    destination's own copy). Returns (hosts, instances_dir, image id, base path by host)."""
    t = time.monotonic()
    img = rh.guest_image(build)
    tag = rh.net_tag()
    hosts = {n: rh.Host(base, n, f"nube-cm{n[-1].lower()}-{tag}", f"10.83.0.{i + 1}")
             for i, n in enumerate(RAM)}
    timing("image+hosts-start", (time.monotonic() - t) * 1000)
    lab.start_scheduler()
    lab.start_api()
    url, key, _ = rh.start_image(lab)
    _, _, did = rh.upload_guest(url, img)
    images = rh.install_guest(lab, img, name=did)  # nubeA's image_dir entry of that id
    inst = {}
    for n, h in hosts.items():
        extra = f"[resources]\nram_mb = {RAM[n]}\n"
        if n == "nubeB":
            extra += f"[image]\nendpoint = {url}\ntoken_key_file = {key}\n"
        _, inst[n] = rh.start_agent(lab, n, h.uri, agent={"virt_type": "qemu",
                                                          "image_dir": images}, extra=extra)
    wait_for(lambda: set(RAM) <= set(lab.hypervisors()), 20, "hosts registered")
    ok("nube-image with the guest, two libvirt hosts and their agents up")
    bases = {"nubeA": os.path.join(images, did, "disk.qcow2"),
             "nubeB": os.path.join(lab.dir, "image-cache") + os.sep}
    return hosts, inst, did, bases


def backing(disk):
    out = subprocess.run(["qemu-img", "info", "-U", "-f", "qcow2", disk], capture_output=True,
                         text=True).stdout
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                 if ln.startswith("backing file:")), "")


def scenario(build, base, lab):
    hosts, inst, image, bases = setup(build, base, lab)
    A, B = "nubeA", "nubeB"

    def disk(host, sid):
        return os.path.join(inst[host], sid, "disk")

    def log(host, sid):
        return os.path.join(inst[host], sid, "console.log")

    def host_of(sid):
        return db_rows(lab, "SELECT host FROM instances WHERE uuid=?", (sid,))[0][0]

    def status(sid, want, timeout=60):
        s = lab.wait_status(sid, {want, "ERROR"}, timeout=timeout)
        if s["status"] != want:
            for n in ("scheduler", f"agent-{A}", f"agent-{B}"):
                print(lab.daemons[n].tail(20))
        return s

    def clean(host, sid):
        wait_for(lambda: f"instance-{sid}" not in hosts[host].domains() and
                 not os.path.exists(os.path.join(inst[host], sid)), 20, f"{host} clean")
        return True

    def allocations_ok(sid, host):
        allocs = db_rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,))
        return allocs == [(host,)] and not db_rows(lab, "SELECT * FROM migration_allocations")

    act = None

    def action(body):
        return http("POST", act, body)

    # ---- boot on nubeA (the host with the most free RAM), stop, mark the disk ----
    t = time.monotonic()
    r = lab.create_server("c1", flavor="1", image=image)
    if not check(f"POST /servers 202 ({r.status})", r.status == 202):
        return 1
    sid = r.json["server"]["id"]
    act = f"{lab.compute}/servers/{sid}/action"
    dom = f"instance-{sid}"
    if not check("ACTIVE", status(sid, "ACTIVE")["status"] == "ACTIVE"):
        return 1
    check(f"booted on {A} ({host_of(sid)})", host_of(sid) == A)
    wait_for(lambda: "NUBE-GUEST-BOOTED" in readf(log(A, sid)), 60, "guest booted")
    timing("boot", (time.monotonic() - t) * 1000)
    r = action({"os-stop": None})
    check(f"os-stop -> 202 ({r.status})", r.status == 202)
    check("SHUTOFF", status(sid, "SHUTOFF", 30)["status"] == "SHUTOFF")
    rc, out = qemu_io(disk(A, sid), f"write -P {MARK} {MARK_AT} {MARK_LEN}")
    check(f"marker written into the stopped guest's disk ({rc} {out.strip()[:80]!r})", rc == 0)

    # ---- 1. a stopped server cold-migrates and stays stopped ----
    t = time.monotonic()
    r = action({"migrate": None})
    check(f"migrate SHUTOFF server -> 202 ({r.status} {r.raw[:200]!r})", r.status == 202)
    s = status(sid, "VERIFY_RESIZE", 60)
    timing("cold migrate (stopped) API-to-VERIFY_RESIZE", (time.monotonic() - t) * 1000)
    check(f"VERIFY_RESIZE on {B} ({s['status']}, {host_of(sid)}, power "
          f"{s.get('OS-EXT-STS:power_state')})", s["status"] == "VERIFY_RESIZE" and
          host_of(sid) == B and s.get("OS-EXT-STS:power_state") == 4)
    check(f"virsh: defined and shut off on {B} ({hosts[B].domstate(dom)})",
          hosts[B].domstate(dom) == "shut off")
    check(f"{A} keeps its stopped copy until confirm", hosts[A].domstate(dom) == "shut off")
    mig, token = db_rows(lab, "SELECT m.uuid, c.token FROM migrations m JOIN cold_moves c "
                              "ON c.migration_uuid = m.uuid WHERE m.instance_uuid=?", (sid,))[0]
    url = f"http://127.0.0.1:{lab.agent_ports[A]}/v1/migrations/{mig}/disk"
    r = http("GET", url, token=None, headers={"X-Nube-Migration-Token": token})
    check(f"{A} no longer offers the disk once {B} has it ({r.status})", r.status == 404)
    p = audit(lab)
    check(f"nube-placement-audit clean while VERIFY_RESIZE ({p.returncode} "
          f"{p.stdout.strip()[-160:]!r})", p.returncode == 0)
    r = action({"confirmResize": None})
    check(f"confirmResize -> 204 ({r.status})", r.status == 204)
    s = status(sid, "SHUTOFF", 30)
    check(f"SHUTOFF on {B} after confirm ({s['status']})", s["status"] == "SHUTOFF" and
          host_of(sid) == B)
    check(f"marker on {B}'s disk", marker_ok(disk(B, sid), running=False))
    bb = backing(disk(B, sid))
    check(f"{B}'s overlay rebased on the base in {B}'s image cache ({bb})",
          bb.startswith(bases[B]))
    check(f"{A} clean after confirm: no domain, no overlay", clean(A, sid))
    check(f"one allocation, on {B}", allocations_ok(sid, B))

    # ---- 2. resize beyond nubeB's room: to nubeA, then revert ----
    r = action({"os-start": None})
    check(f"os-start on {B} -> 202 ({r.status})", r.status == 202)
    check("ACTIVE", status(sid, "ACTIVE", 30)["status"] == "ACTIVE")
    wait_for(lambda: "NUBE-GUEST-DISK" in readf(log(B, sid)), 60, f"booted on {B}")
    check(f"{B}'s guest sees the 1 GiB disk", "NUBE-GUEST-DISK vda 2097152" in readf(log(B, sid)))
    r = http("POST", f"{lab.compute}/flavors",
             {"flavor": {"name": "cold-big", "id": "cold-big", "ram": RAM[B] + 512,
                         "vcpus": 1, "disk": 2}})
    check(f"flavor cold-big ({r.status})", r.status == 200)
    t = time.monotonic()
    r = action({"resize": {"flavorRef": "cold-big"}})
    check(f"resize beyond {B} -> 202 ({r.status} {r.raw[:200]!r})", r.status == 202)
    s = status(sid, "VERIFY_RESIZE", 90)
    timing("resize across hosts API-to-VERIFY_RESIZE", (time.monotonic() - t) * 1000)
    check(f"VERIFY_RESIZE on {A} with cold-big ({host_of(sid)}, {s['flavor']})",
          host_of(sid) == A and s["status"] == "VERIFY_RESIZE")
    wait_for(lambda: "NUBE-GUEST-DISK" in readf(log(A, sid)), 60, f"booted on {A}")
    check(f"{A}'s guest sees the grown 2 GiB disk",
          "NUBE-GUEST-DISK vda 4194304" in readf(log(A, sid)))
    check(f"marker on {A}'s grown disk", marker_ok(disk(A, sid), running=True))
    r = action({"revertResize": None})
    check(f"revertResize -> 202 ({r.status})", r.status == 202)
    wait_for(lambda: lab.server(sid)["status"] == "ACTIVE" and host_of(sid) == B, 60,
             f"ACTIVE on {B} after revert")
    flavor = db_rows(lab, "SELECT flavor_id FROM instances WHERE uuid=?", (sid,))[0][0]
    check(f"reverted: ACTIVE on {B} with flavor 1 ({flavor})", flavor == "1")
    try:
        wait_for(lambda: hosts[B].domstate(dom) == "running", 20, f"running on {B}")
        ok(f"virsh: running on {B}")
    except AssertionError as e:
        bad(str(e))
    check(f"{B}'s disk untouched: marker there", marker_ok(disk(B, sid), running=True))
    check(f"{A} clean after revert", clean(A, sid))
    check(f"one allocation, on {B}", allocations_ok(sid, B))

    # ---- 3. the running server, with the stock client ----
    if not shutil.which("openstack"):
        print("note: no openstack client; migrating through the API")
        cli = None
    else:
        from compat import Cli  # tests/compat/compat.py
        cli = Cli(lab, {"admin": ("admin", nubelab.ADMIN_PASSWORD, "admin")},
                  default_cloud="admin", timeout=150)
    boots_b = readf(log(B, sid)).count("NUBE-GUEST-BOOTED")
    t = time.monotonic()
    if cli:
        p = cli.run("server", "migrate", "--wait", sid, as_json=False, check=False)
        check(f"openstack server migrate --wait (rc {p.returncode} {p.stderr.strip()[-200:]!r})",
              p.returncode == 0)
    else:
        check("migrate -> 202", action({"migrate": None}).status == 202)
    s = status(sid, "VERIFY_RESIZE", 60)
    timing("cold migrate (running) to VERIFY_RESIZE", (time.monotonic() - t) * 1000)
    check(f"VERIFY_RESIZE on {A} ({host_of(sid)})", host_of(sid) == A)
    check(f"{B} had booted it {boots_b} time(s); it stopped there",
          hosts[B].domstate(dom) == "shut off")
    if cli:
        p = cli.run("server", "resize", "confirm", sid, as_json=False, check=False)
        check(f"openstack server resize confirm (rc {p.returncode})", p.returncode == 0)
    else:
        check("confirmResize -> 204", action({"confirmResize": None}).status == 204)
    s = status(sid, "ACTIVE", 30)
    check(f"ACTIVE on {A} after confirm ({s['status']})", host_of(sid) == A)
    wait_for(lambda: "COUNTER" in readf(log(A, sid)), 60, f"counting on {A}")
    out = http("POST", act, {"os-getConsoleOutput": {"length": 50}}).json.get("output", "")
    check("console through the API: booted on the new host", "NUBE-GUEST-BOOTED" in out)
    check(f"marker on {A}'s disk", marker_ok(disk(A, sid), running=True))
    ab = backing(disk(A, sid))
    check(f"{A}'s overlay on {A}'s image_dir base again ({ab})", ab == bases[A])
    check(f"{B} clean after confirm: no domain, no overlay", clean(B, sid))
    check(f"one allocation, on {A}", allocations_ok(sid, A))
    check("no cold_moves record left", not db_rows(lab, "SELECT * FROM cold_moves"))
    migs = db_rows(lab, "SELECT migration_type, status FROM migrations WHERE instance_uuid=? "
                        "ORDER BY created_ms", (sid,))
    check(f"migrations recorded ({migs})", migs == [("migration", "confirmed"),
                                                     ("resize", "reverted"),
                                                     ("migration", "confirmed")])
    p = audit(lab)
    check(f"nube-placement-audit clean ({p.returncode})", p.returncode == 0)

    r = http("DELETE", f"{lab.compute}/servers/{sid}")
    check(f"DELETE -> 204 ({r.status})", r.status == 204)
    try:
        wait_for(lambda: not hosts[A].domains() and not hosts[B].domains(), 30, "no domains")
        ok("deleted: no domain on either host")
    except AssertionError as e:
        bad(str(e))
    return 0


def audit(lab):
    conf = os.path.join(lab.dir, "nube-scheduler.conf")
    return subprocess.run([lab.binary("scheduler", "nube-placement-audit"), "--config", conf],
                          capture_output=True, text=True, timeout=30)


if __name__ == "__main__":
    sys.exit(main())
