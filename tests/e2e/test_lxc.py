#!/usr/bin/env python3
"""test_lxc.py - a system container through nube on libvirt's LXC driver (issue 5, e2e).

One isolated libvirtd host started by deploy/libvirt-host with --lxc (its private mount
namespace unmounts /sys/fs/cgroup/unified: libvirt 9's libvirt_lxc fails on this
machine's hybrid cgroup layout otherwise; no network namespace, LXC needs the cgroups),
nube-scheduler + nube-api from tests/integration/nubelab.py, and one nube-agent on
lxc:///system?socket=... . The image is a root file system tar the test builds from
Debian's busybox-static (the same .deb deploy/build-guest-image caches), served from the
agent's local image_dir as <image>/rootfs.tar; its /sbin/init writes a marker and
sleeps.

Checked: the host registers as LXC with its capabilities (hypervisor_version, cpu_arch in
the scheduler's hosts table); POST /servers -> ACTIVE; the agent extracted the rootfs into
instances_dir/<uuid>/rootfs and the container's init ran in it (marker file written
inside the container, with the container's own hostname); virsh agrees the domain runs
with type lxc and nube metadata; an "instance-<uuid>" container without nube metadata,
defined behind nube's back, shows as nube_agent_orphan_domains 1 and is left alone;
stop/start act on the container; delete leaves no domain and no rootfs. Prints TIME
lines; exits 77 (skip) when not root or when libvirt's LXC driver cannot be installed.
Usage: test_lxc.py BUILD_DIR
"""

import glob
import io
import os
import sqlite3
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import realhost as rh  # noqa: E402
from realhost import bad, check, http, ok, run, timing, wait_for  # noqa: E402

BB_CACHE = os.environ.get("NUBE_GUEST_CACHE", "/var/cache/nube/guest")
INIT = """#!/bin/sh
trap "exit 0" TERM
echo "NUBE-LXC-MARKER $(hostname) pid=$$" > /marker
i=0
while true; do echo "COUNTER $i" > /counter; i=$((i+1)); sleep 1; done
"""


def busybox(work):
    """A static busybox binary: from the guest image's package cache, else apt-get."""
    debs = sorted(glob.glob(os.path.join(BB_CACHE, "busybox-static_*.deb")))
    if not debs:
        run("apt-get", "download", "-q", "busybox-static", cwd=work)
        debs = sorted(glob.glob(os.path.join(work, "busybox-static_*.deb")))
    out = os.path.join(work, "bb")
    run("dpkg-deb", "-x", debs[-1], out)
    return os.path.join(out, "bin", "busybox")


def build_rootfs_tar(path, bb):
    """A minimal root file system: busybox, its applet links, and our /sbin/init."""
    with tarfile.open(path, "w") as t:
        def add_dir(name):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            t.addfile(ti)

        def add_file(name, data, mode):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), mode
            t.addfile(ti, io.BytesIO(data))

        for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "etc", "root"):
            add_dir(d)
        with open(bb, "rb") as f:
            add_file("bin/busybox", f.read(), 0o755)
        for applet in ("sh", "sleep", "echo", "cat", "hostname", "ls"):
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(ti)
        add_file("sbin/init", INIT.encode(), 0o755)
        add_file("etc/hostname", b"nube-lxc\n", 0o644)


def main():
    return rh.main("nube-e2e-lxc.", scenario)


def scenario(build, base, lab):
    t = time.monotonic()
    images = os.path.join(lab.dir, "images", "busybox-rootfs")
    os.makedirs(images)
    build_rootfs_tar(os.path.join(images, "rootfs.tar"), busybox(lab.dir))
    ok("busybox rootfs.tar in the agent's image_dir")

    try:
        host = rh.Host(base, "lxc1", lxc=True)
    except RuntimeError as e:
        print(e)
        if not os.path.exists("/usr/lib/libvirt/libvirt_lxc"):
            print("SKIP: libvirt's LXC driver (libvirt-daemon-driver-lxc) is not available")
            return 77
        bad("libvirt host with --lxc did not start")
        return 1
    uri = host.uri
    timing("host-start", (time.monotonic() - t) * 1000)
    ok(f"libvirt host up: {uri}")

    virsh = host.virsh

    lab.start_scheduler()
    lab.start_api()
    inst_dir = os.path.join(lab.dir, "instances")
    rh.start_agent(lab, "lxc1", uri, inst_dir, extra="""[resources]
vcpus = 4
ram_mb = 4096
disk_gb = 20""")
    agent_port = lab.agent_ports["lxc1"]
    hv = wait_for(lambda: lab.hypervisors().get("lxc1"), 20, "host registered")
    check(f"host registers as LXC ({hv.get('hypervisor_type')})",
          hv.get("hypervisor_type") == "LXC")

    def host_caps():
        db = sqlite3.connect(lab.db)
        try:
            return db.execute("SELECT hypervisor_version, cpu_arch FROM hosts WHERE name=?",
                              ("lxc1",)).fetchone()
        finally:
            db.close()

    caps = wait_for(lambda: (host_caps() or (0, ""))[0] and host_caps(), 10,
                    "capabilities recorded")
    # The LXC driver's "hypervisor version" is the kernel's (6.1.0 -> 6001000).
    rel = [int(x) for x in os.uname().release.split("-")[0].split(".")[:3]]
    want = rel[0] * 1000000 + rel[1] * 1000 + (rel[2] if len(rel) > 2 else 0)
    check(f"capabilities reach the scheduler: version {caps[0]} (kernel {want}), "
          f"arch {caps[1]}", caps[0] == want and caps[1] == os.uname().machine)

    # ---- boot a container through the API ----
    t = time.monotonic()
    # vm_mode=exe (server metadata, as an image property): the scheduler's image
    # properties filter keeps it to LXC hosts and the agent receives it with the spawn.
    r = http("POST", f"{lab.compute}/servers",
             {"server": {"name": "c1", "flavorRef": "1", "imageRef": "busybox-rootfs",
                         "metadata": {"vm_mode": "exe"}}})
    if not check(f"POST /servers 202 ({r.status})", r.status == 202):
        print(r.raw)
        return 1
    sid = r.json["server"]["id"]
    dom = f"instance-{sid}"
    s = lab.wait_status(sid, {"ACTIVE", "ERROR"}, timeout=30)
    t_active = time.monotonic()
    check(f"server ACTIVE ({s['status']} {s.get('fault')})", s["status"] == "ACTIVE")
    marker = os.path.join(inst_dir, sid, "rootfs", "marker")
    try:
        wait_for(lambda: os.path.exists(marker) and os.path.getsize(marker) > 0, 15,
                 "marker written by the container's init", interval=0.02)
    except AssertionError as e:
        bad(str(e))
        return 1
    t_marker = time.monotonic()
    timing("POST-to-ACTIVE", (t_active - t) * 1000)
    timing("POST-to-marker", (t_marker - t) * 1000)
    text = open(marker).read().strip()
    check(f"the container's init ran inside it: {text!r}",
          text.startswith("NUBE-LXC-MARKER") and dom in text)
    check("virsh: container running", virsh("domstate", dom) == "running")
    xml = virsh("dumpxml", dom)
    check("domain is type lxc, init /sbin/init, rootfs mounted on /, nube metadata",
          "type='lxc'" in xml and "<init>/sbin/init</init>" in xml and
          f"{sid}/rootfs" in xml and "nube.dev/xmlns" in xml)
    check("agent lists the domain as nube's", sid in lab.domains("lxc1"))
    props = os.path.join(inst_dir, sid, "image_properties.json")
    check("image properties reached the agent (vm_mode exe)",
          os.path.exists(props) and '"exe"' in open(props).read())

    # ---- an orphan: named like ours, no nube metadata ----
    orphan_uuid = "0badc0de-0000-4000-8000-000000000001"
    orphan_dir = os.path.join(lab.dir, "orphan-rootfs")
    os.makedirs(orphan_dir)
    run("tar", "-xf", os.path.join(images, "rootfs.tar"), "-C", orphan_dir)
    oxml = os.path.join(lab.dir, "orphan.xml")
    with open(oxml, "w") as f:
        f.write(f"""<domain type='lxc'><name>instance-{orphan_uuid}</name>
<uuid>{orphan_uuid}</uuid><memory unit='MiB'>64</memory>
<os><type>exe</type><init>/sbin/init</init></os>
<devices><filesystem type='mount'><source dir='{orphan_dir}'/><target dir='/'/></filesystem>
<console type='pty'/></devices></domain>
""")
    run("virsh", "-q", "-c", uri, "define", oxml)

    def orphans():
        r = http("GET", f"http://127.0.0.1:{agent_port}/metrics", token=None)
        for line in r.raw.decode().splitlines():
            if line.startswith("nube_agent_orphan_domains "):
                return int(float(line.split()[1]))
        return None

    try:
        wait_for(lambda: orphans() == 1, 20, "nube_agent_orphan_domains 1", interval=0.2)
        ok("orphan domain counted in nube_agent_orphan_domains")
    except AssertionError as e:
        bad(str(e))
    check("orphan left alone (still defined)", virsh("domstate", f"instance-{orphan_uuid}")
          == "shut off")
    run("virsh", "-q", "-c", uri, "undefine", f"instance-{orphan_uuid}", check_rc=False)

    # ---- stop / start act on the container ----
    def act(body):
        r = http("POST", f"{lab.compute}/servers/{sid}/action", body)
        check(f"{list(body)[0]} -> {r.status}", r.status == 202)

    os.unlink(marker)
    act({"os-stop": None})
    s = lab.wait_status(sid, {"SHUTOFF", "ERROR"}, timeout=30)
    check(f"stop: {s['status']}, virsh {virsh('domstate', dom)!r}",
          s["status"] == "SHUTOFF" and virsh("domstate", dom) == "shut off")
    act({"os-start": None})
    s = lab.wait_status(sid, {"ACTIVE", "ERROR"}, timeout=30)
    check(f"start: {s['status']}", s["status"] == "ACTIVE")
    try:
        wait_for(lambda: os.path.exists(marker), 15, "marker after start", interval=0.05)
        ok("start ran the container's init again")
    except AssertionError as e:
        bad(str(e))

    # ---- delete: no domain, no rootfs ----
    t = time.monotonic()
    r = http("DELETE", f"{lab.compute}/servers/{sid}")
    check(f"DELETE -> {r.status}", r.status == 204)
    try:
        wait_for(lambda: lab.server(sid) is None, 30, "server gone", interval=0.05)
        timing("delete", (time.monotonic() - t) * 1000)
        wait_for(lambda: not os.path.exists(os.path.join(inst_dir, sid)), 10,
                 "instance dir removed", interval=0.05)
        ok("rootfs and instance dir removed")
    except AssertionError as e:
        bad(str(e))
    check("virsh: no domain left", dom not in virsh("list", "--all", "--name"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
