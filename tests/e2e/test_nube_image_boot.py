#!/usr/bin/env python3
"""test_nube_image_boot.py - a real guest booted from nube-image (issue 6, e2e suite).

One isolated libvirtd host (deploy/libvirt-host, own network namespace), nube-scheduler
and nube-api from tests/integration/nubelab.py, nube-image with nube-api's token key, and
one nube-agent on that host whose only image source is nube-image ([image] endpoint,
token_key_file: it mints a reader token for each instance's project). The guest set from
deploy/build-guest-image is uploaded over HTTP as Glance would take it: the kernel (aki),
the ramdisk (ari) and the qcow2 disk naming both (kernel_id, ramdisk_id,
os_command_line).

Checked: the server goes ACTIVE and prints NUBE-GUEST-BOOTED in os-getConsoleOutput; its
disk is a qcow2 overlay whose backing file (format stated) is in the agent's image cache;
the agent downloaded 3 files; a second server downloads nothing (3 cache hits); a disk
whose stored blob was altered behind nube-image's back makes the spawn fail with a fault
naming the sha512 mismatch, and leaves nothing in the cache. Exits 77 (skip) when not
root. Budget: < 90 s. Usage: test_nube_image_boot.py BUILD_DIR
"""

import hashlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import realhost as rh  # noqa: E402
from realhost import check, http, ok, run, wait_for  # noqa: E402


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    return None


def main():
    return rh.main("nube-e2e-img.", scenario, budget_s=90)


def scenario(build, base, lab):
    img = rh.guest_image(build)
    uri = rh.Host(base, "nubeI", f"nube-img-{rh.net_tag()}", "10.81.0.1").uri
    ok(f"libvirt host up: {uri}")

    lab.start_scheduler()
    lab.start_api()
    image_url, key, image_state = rh.start_image(lab)

    # ---- the guest set, uploaded as Glance takes it ----
    t = time.monotonic()
    kid, rid, did = rh.upload_guest(image_url, img)
    r = http("GET", f"{image_url}/v2/images/{did}")
    check("disk image active with kernel_id/ramdisk_id", r.status == 200 and
          r.json["status"] == "active" and r.json["kernel_id"] == kid)
    print(f"TIME upload {(time.monotonic() - t) * 1000:.0f} ms", flush=True)
    # A second disk whose stored blob gets corrupted behind nube-image's back.
    badq = os.path.join(lab.dir, "bad.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", badq, "48M")
    with open(badq, "ab") as f:
        f.write(b"nube-bad-hash" * 4096)  # data past the header, then flipped in the store
    bid = rh.upload_image(image_url, "bad", "qcow2", badq, kernel_id=kid, ramdisk_id=rid)
    sha = hashlib.sha256(open(badq, "rb").read()).hexdigest()
    blob = os.path.join(image_state, "images", "blobs", sha[:2], sha[2:])
    os.chmod(blob, 0o600)
    with open(blob, "r+b") as f:
        f.seek(os.path.getsize(blob) - 100)
        f.write(b"X")

    # ---- the agent: nube-image only ----
    inst_dir = os.path.join(lab.dir, "instances")
    rh.start_agent(lab, "nubeI", uri, inst_dir, agent={
        "virt_type": "qemu", "image_dir": None, "network": "nube"}, extra=f"""[image]
endpoint = {image_url}
token_key_file = {key}""")
    agent_port = lab.agent_ports["nubeI"]
    wait_for(lambda: "nubeI" in lab.hypervisors(), 20, "host registered")

    def metrics():
        return http("GET", f"http://127.0.0.1:{agent_port}/metrics", token=None).raw.decode()

    def console(sid):
        r = http("POST", f"{lab.compute}/servers/{sid}/action", {"os-getConsoleOutput": {}})
        return r.json["output"] if r.status == 200 else ""

    # ---- boot from nube-image ----
    t = time.monotonic()
    r = lab.create_server("g1", flavor="1", image=did)
    if not check(f"POST /servers 202 ({r.status})", r.status == 202):
        return 1
    s1 = r.json["server"]["id"]
    s = lab.wait_status(s1, {"ACTIVE", "ERROR"}, timeout=60)
    if not check(f"server ACTIVE ({s['status']} {s.get('fault')})", s["status"] == "ACTIVE"):
        return 1
    wait_for(lambda: "NUBE-GUEST-BOOTED" in console(s1), 60, "boot marker", interval=0.2)
    ok("NUBE-GUEST-BOOTED in os-getConsoleOutput")
    print(f"TIME POST-to-boot-marker {(time.monotonic() - t) * 1000:.0f} ms", flush=True)
    m = metrics()
    check("the agent downloaded kernel, ramdisk and disk once (3)",
          metric(m, "nube_agent_image_downloads_total") == 3)
    info = run("qemu-img", "info", "-U", os.path.join(inst_dir, s1, "disk"))
    cache = os.path.join(lab.dir, "image-cache")
    check("the disk is a qcow2 overlay on the cached base, backing format stated",
          "backing file: " + cache in info and "backing file format: qcow2" in info)
    entries = [n for n in os.listdir(cache) if len(n) == 64]
    check(f"3 verified entries in the cache, read-only ({len(entries)})", len(entries) == 3 and
          all(os.stat(os.path.join(cache, n)).st_mode & 0o777 == 0o444 for n in entries))

    # ---- a second server: everything from the cache ----
    r = lab.create_server("g2", flavor="1", image=did)
    s2 = r.json["server"]["id"]
    s = lab.wait_status(s2, {"ACTIVE", "ERROR"}, timeout=60)
    check(f"second server ACTIVE ({s['status']} {s.get('fault')})", s["status"] == "ACTIVE")
    m = metrics()
    check("second server: no download, 3 cache hits",
          metric(m, "nube_agent_image_downloads_total") == 3 and
          metric(m, "nube_agent_image_cache_hits_total") == 3)

    # ---- an altered blob: the spawn fails, clearly ----
    r = lab.create_server("bad", flavor="1", image=bid)
    s3 = r.json["server"]["id"]
    s = lab.wait_status(s3, {"ACTIVE", "ERROR"}, timeout=60)
    fault = (s.get("fault") or {}).get("message", "")
    i = fault.find("sha512")
    check(f"altered image: ERROR with a sha512 fault ({s['status']}: ...{fault[i - 60:i + 100]})",
          s["status"] == "ERROR" and "sha512 mismatch" in fault)
    check("nothing unverified in the cache",
          len([n for n in os.listdir(cache) if len(n) == 64]) == 3 and
          not [n for n in os.listdir(cache) if n.startswith("tmp.")])

    # ---- delete everything ----
    for sid in (s1, s2, s3):
        http("DELETE", f"{lab.compute}/servers/{sid}")
    for sid in (s1, s2, s3):
        wait_for(lambda: lab.server(sid) is None or lab.server(sid)["status"] == "DELETED",
                 30, f"server {sid} deleted")
    check("no domain left", not lab.domains("nubeI"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
