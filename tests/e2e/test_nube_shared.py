#!/usr/bin/env python3
"""test_nube_shared.py - live and cold migration over shared storage (issue 8, e2e).

Two isolated libvirtd hosts on one hub as in test_nube_migrate.py (realhost.py: each its
own network namespace, address, host UUID and nube-agent), but both agents use ONE
instances_dir, as two hosts mounting the same NFS export would. The destination then
sees the instance's disk already at its path: it neither creates an overlay nor, when
the move fails, removes anything; the source migrates with VIR_MIGRATE_UNSAFE (no block
copy) and, once the guest has left, drops only its record, never the shared disk.

  1. os-migrateLive (host null, block_migration "auto") of a guest printing COUNTER:
     the agents log "shared storage", no disk byte is copied (the migration's disk
     total is 0), the counter continues in the same console log without a second boot,
     the server shows the new host, and after the source's clean-up the disk is still
     there, the same file (inode) as before the move, a valid qcow2 on its base;
  2. a migration back (host named), slowed to 1 MiB/s, aborted with DELETE
     /servers/{id}/migrations/{mid}: cancelled, the guest runs on where it was, the
     disk (same inode) survives the destination's clean-up; then the same with the
     destination's incoming QEMU killed mid-way (status error), and with the
     destination's agent killed and restarted before the abort (its slot is lost: only
     its "incoming" marker, never written over shared storage, lets a check remove a
     disk); then the source's agent is killed mid-way and the move completes while it
     is down: the restarted source reads "shared" in its migrating marker and leaves
     the disk to the destination;
  3. block_migration true over shared storage is refused: nube's pre-checks run after
     the 202 (as Nova's since microversion 2.34), so the migration ends in "error" with
     the fault "block migration requested but the instance's disk is on shared storage",
     the guest untouched, nothing claimed, nothing left on the other host;
  4. a cold migration over shared storage fails safely: the destination refuses to
     import over the disk it already sees, the move goes back (migration "error" with
     that fault), the server is ACTIVE on its source again, booted from its own,
     untouched disk (same inode), nothing left on the destination;
  5. delete: no domain on either host, the shared instance directory is gone.
After each step the allocation is on the guest's host only and no migration allocation
is left. Budget ~2 min. Exits 77 when not root. Usage: test_nube_shared.py BUILD_DIR
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import realhost as rh  # noqa: E402
from realhost import bad, check, counters, db_rows, http, ok, readf, timing, wait_for  # noqa: E402

NAMES = ("nubeA", "nubeB")
V259 = {"OpenStack-API-Version": "compute 2.59"}


def main():
    return rh.main("nube-e2e-shared.", scenario, budget_s=150)


def setup(build, base, lab):
    """As realhost.migration_hosts, but both agents share one instances_dir."""
    t = time.monotonic()
    rh.install_guest(lab, rh.guest_image(build))
    tag = rh.net_tag()
    hosts = {n: rh.Host(base, n, f"nube-sh{n[-1].lower()}-{tag}", f"10.71.0.{i + 1}")
             for i, n in enumerate(NAMES)}
    timing("image+hosts-start", (time.monotonic() - t) * 1000)
    ok("2 libvirt hosts up")
    lab.start_scheduler()
    lab.start_api()
    shared = os.path.join(lab.dir, "instances-shared")
    os.makedirs(shared)
    for n, h in hosts.items():
        rh.start_agent(lab, n, h.uri, inst_dir=shared, agent={
            "virt_type": "qemu",
            "migration_uri": f"qemu+tcp://{h.ip}/system",
            "migration_address": h.ip,
            "migration_max_downtime_ms": "500",
            "migration_timeout_s": "60"})
    wait_for(lambda: set(NAMES) <= set(lab.hypervisors()), 20, "hosts registered")
    return hosts, shared


def host_of(lab, sid):
    return db_rows(lab, "SELECT host FROM instances WHERE uuid=?", (sid,))[0][0]


def mig_row(lab, mid):
    rows = db_rows(lab, "SELECT m.status, m.dest_host, p.disk_total, p.fault FROM migrations m "
                        "LEFT JOIN migration_progress p ON p.migration_uuid = m.uuid "
                        "WHERE m.uuid=?", (mid,))
    return rows[0] if rows else (None, None, None, None)


def last_mig(lab, sid, mtype="live-migration"):
    rows = db_rows(lab, "SELECT uuid FROM migrations WHERE instance_uuid=? AND "
                        "migration_type=? ORDER BY created_ms DESC, rowid DESC LIMIT 1",
                   (sid, mtype))
    return rows[0][0] if rows else None


def disk_ok(disk, ino, what):
    """The shared disk is still there, the same file, a qcow2 on its base."""
    try:
        st = os.stat(disk)
    except OSError as e:
        return check(f"{what}: the shared disk is still there ({e})", False)
    p = subprocess.run(["qemu-img", "info", "-U", "--output=json", disk], capture_output=True,
                       text=True)
    good = p.returncode == 0 and '"format": "qcow2"' in p.stdout and \
        '"backing-filename"' in p.stdout
    return check(f"{what}: the shared disk is intact (inode {st.st_ino} == {ino}, "
                 f"qemu-img info rc {p.returncode})", st.st_ino == ino and good)


def allocs_on(lab, sid, host, what):
    allocs = db_rows(lab, "SELECT host FROM allocations WHERE instance_uuid=?", (sid,))
    check(f"{what}: allocation only on {host} ({allocs})", allocs == [(host,)])
    check(f"{what}: no migration allocation left",
          not db_rows(lab, "SELECT * FROM migration_allocations"))


def counting(log, what, n=2, timeout=20):
    try:
        n0 = (counters(readf(log)) or [0])[-1]
        wait_for(lambda: (counters(readf(log)) or [0])[-1] >= n0 + n, timeout,
                 "counter advancing", interval=0.1)
        return ok(f"{what}: the guest keeps counting")
    except AssertionError as e:
        bad(f"{what}: {e}")


def agent_logged(lab, name, text, timeout=10):
    try:
        wait_for(lambda: text in readf(lab.daemons[f"agent-{name}"].log_path), timeout, text)
        return True
    except AssertionError:
        return False


def running_mig(lab, sid):
    r = http("GET", f"{lab.compute}/servers/{sid}/migrations", headers=V259)
    ms = r.json.get("migrations", []) if r.status == 200 else []
    return next((x for x in ms if x["status"] == "running" and
                 x["memory_processed_bytes"] > 0), None)


def settled(lab, mid, timeout=40):
    wait_for(lambda: mig_row(lab, mid)[0] in ("completed", "error", "cancelled"), timeout,
             "migration settled", interval=0.1)
    wait_for(lambda: db_rows(lab, "SELECT task_state FROM instances WHERE uuid=(SELECT "
                                  "instance_uuid FROM migrations WHERE uuid=?)", (mid,))[0][0]
             in ("", "none", None), 20, "task cleared", interval=0.1)
    return mig_row(lab, mid)


def stays(lab, hosts, sid, at, disk, ino, log, what):
    """After a failed or aborted move: the guest runs on `at` only, disk intact."""
    dom = f"instance-{sid}"
    other = [h for h in hosts if h != at][0]
    srv = lab.server(sid)
    check(f"{what}: server ACTIVE on {at} ({srv['status']}, {host_of(lab, sid)})",
          srv["status"] == "ACTIVE" and host_of(lab, sid) == at)
    check(f"{what}: virsh: running on {at}", hosts[at].domstate(dom) == "running")
    try:
        wait_for(lambda: dom not in hosts[other].domains(), 15, f"no domain on {other}")
        ok(f"{what}: {other} has no domain")
    except AssertionError as e:
        bad(f"{what}: {e}")
    disk_ok(disk, ino, what)
    allocs_on(lab, sid, at, what)
    counting(log, what)


def dest_agent_restart(lab, hosts, sid, src, dst, disk, ino, log):
    """2c: the destination's agent is killed and restarted mid-way (its slot is lost; it
    finds the source's "migrating" marker in the shared directory), then the migration
    is aborted: the check it gets must not remove the shared disk."""
    r = http("POST", f"{lab.compute}/servers/{sid}/action",
             {"os-migrateLive": {"host": dst, "block_migration": "auto"}})
    check(f"os-migrateLive to {dst} a third time -> 202 ({r.status})", r.status == 202)
    try:
        mig = wait_for(lambda: running_mig(lab, sid), 30, "migration running", interval=0.1)
        lab.daemons[f"agent-{dst}"].kill9()
        rh.restart_agent(lab, dst)
        r = http("DELETE", f"{lab.compute}/servers/{sid}/migrations/{mig['id']}")
        check(f"DELETE migration after {dst}'s agent restarted -> 202 ({r.status})",
              r.status == 202)
        st = settled(lab, mig["uuid"])[0]
        check(f"migration cancelled ({st})", st == "cancelled")
    except AssertionError as e:
        bad(str(e))
    stays(lab, hosts, sid, src, disk, ino, log, f"after {dst}'s agent restarted")


def source_agent_restart(lab, hosts, sid, src, dst, disk, ino, log):
    """2d: the source's agent is killed mid-way; the migration completes while it is
    down; the restarted source learns from its marker that the storage is shared and
    drops only its record. Returns the new (src, dst)."""
    dom = f"instance-{sid}"
    r = http("POST", f"{lab.compute}/servers/{sid}/action",
             {"os-migrateLive": {"host": dst, "block_migration": "auto"}})
    check(f"os-migrateLive to {dst}, source agent to be killed -> 202 ({r.status})",
          r.status == 202)
    try:
        wait_for(lambda: running_mig(lab, sid), 30, "migration running", interval=0.1)
        lab.daemons[f"agent-{src}"].kill9()
        hosts[src].virsh("migrate-setspeed", dom, "8192")
        wait_for(lambda: hosts[dst].domstate(dom) == "running" and
                 dom not in hosts[src].virsh("list", "--name").split(), 30,
                 "the guest completed the move while the source agent was down")
        ok(f"the guest runs on {dst}; {src}'s agent is down")
        rh.restart_agent(lab, src)
        mid = last_mig(lab, sid)
        st = settled(lab, mid)[0]
        check(f"settled as completed after the source agent's restart ({st})",
              st == "completed" and host_of(lab, sid) == dst)
        check(f"{src} cleaned up (agent log)",
              agent_logged(lab, src, f"migration {mid}: {sid} cleaned from this host"))
    except AssertionError as e:
        bad(str(e))
    at = host_of(lab, sid)
    stays(lab, hosts, sid, at, disk, ino, log, f"after {src}'s agent restarted")
    return (at, src if at == dst else dst)


def scenario(build, base, lab):
    hosts, shared = setup(build, base, lab)

    # ---- boot ----
    t = time.monotonic()
    sid = rh.boot_active(lab, "s1")
    if not sid:
        return 1
    dom = f"instance-{sid}"
    disk = os.path.join(shared, sid, "disk")
    log = os.path.join(shared, sid, "console.log")
    wait_for(lambda: len(counters(readf(log))) >= 2, 60, "guest counting", interval=0.1)
    timing("boot-to-counting", (time.monotonic() - t) * 1000)
    ino = os.stat(disk).st_ino
    src = host_of(lab, sid)
    dst = [h for h in NAMES if h != src][0]
    ok(f"guest counts on {src}; its disk is {disk} (inode {ino})")

    # ---- 1: live migration over shared storage, scheduler's choice ----
    n_before = counters(readf(log))[-1]
    t = time.monotonic()
    r = http("POST", f"{lab.compute}/servers/{sid}/action",
             {"os-migrateLive": {"host": None, "block_migration": "auto"}})
    check(f"os-migrateLive(host null, auto) -> 202 ({r.status})", r.status == 202)
    try:
        wait_for(lambda: host_of(lab, sid) == dst and db_rows(
            lab, "SELECT task_state FROM instances WHERE uuid=?", (sid,))[0][0]
            in ("", "none", None), 60, "instance on the destination", interval=0.05)
        timing("migrate-live (shared) API-to-done", (time.monotonic() - t) * 1000)
    except AssertionError as e:
        bad(str(e))
        for n in ("scheduler", f"agent-{src}", f"agent-{dst}"):
            print(lab.daemons[n].tail(25))
        return 1
    mid = last_mig(lab, sid)
    st, to, disk_total, fault = mig_row(lab, mid)
    check(f"migration completed to {dst} ({st}, {to}, {fault!r})", (st, to) == ("completed", dst))
    check(f"no disk copied (disk total {disk_total})", not disk_total)
    check(f"{dst} prepared for shared storage (agent log)",
          agent_logged(lab, dst, f"prepared {sid} (shared storage)"))
    check(f"{src} migrated without a block copy (agent log)",
          agent_logged(lab, src, "(shared storage)"))
    srv = lab.server(sid)
    check(f"server ACTIVE on {dst} ({srv['status']}, {srv.get('OS-EXT-SRV-ATTR:host')})",
          srv["status"] == "ACTIVE" and srv.get("OS-EXT-SRV-ATTR:host") == dst)
    check(f"virsh: running on {dst}", hosts[dst].domstate(dom) == "running")
    try:
        wait_for(lambda: counters(readf(log))[-1] >= n_before + 4, 30,
                 "counter going on after the move", interval=0.1)
        text = readf(log)
        seq = counters(text)
        steps = [b - a for a, b in zip(seq, seq[1:])]
        check(f"counter continues without a reboot (max step {max(steps)}, "
              f"{text.count('NUBE-GUEST-BOOTED')} boot)",
              all(0 < d <= 8 for d in steps) and text.count("NUBE-GUEST-BOOTED") == 1)
    except AssertionError as e:
        bad(str(e))
    # The main corner case: the source's clean-up must leave the shared disk alone.
    check(f"{src} cleaned up (agent log)",
          agent_logged(lab, src, f"migration {mid}: {sid} cleaned from this host"))
    try:
        wait_for(lambda: dom not in hosts[src].domains(), 10, f"no domain on {src}")
        ok(f"{src} has no domain")
    except AssertionError as e:
        bad(str(e))
    check("the source dropped its record", sid not in lab.domains(src))
    check("no migrating marker left", not os.path.exists(os.path.join(shared, sid,
                                                                      "migrating")))
    disk_ok(disk, ino, "after the source's clean-up")
    allocs_on(lab, sid, dst, "after the move")
    counting(log, "after the move")
    src, dst = dst, src  # the guest now runs on `src`

    # ---- 2a: abort mid-way (host named) ----
    hosts[src].virsh("migrate-setspeed", dom, "1")
    r = http("POST", f"{lab.compute}/servers/{sid}/action",
             {"os-migrateLive": {"host": dst, "block_migration": "auto"}})
    check(f"os-migrateLive to {dst} -> 202 ({r.status})", r.status == 202)
    try:
        mig = wait_for(lambda: running_mig(lab, sid), 30, "migration running", interval=0.1)
        r = http("DELETE", f"{lab.compute}/servers/{sid}/migrations/{mig['id']}")
        check(f"DELETE migration -> 202 ({r.status})", r.status == 202)
        st = settled(lab, mig["uuid"])[0]
        check(f"migration cancelled ({st})", st == "cancelled")
    except AssertionError as e:
        bad(str(e))
    stays(lab, hosts, sid, src, disk, ino, log, "after the abort")

    # ---- 2b: the destination's QEMU dies mid-way ----
    r = http("POST", f"{lab.compute}/servers/{sid}/action",
             {"os-migrateLive": {"host": dst, "block_migration": "auto"}})
    check(f"os-migrateLive to {dst} again -> 202 ({r.status})", r.status == 202)
    try:
        mig = wait_for(lambda: running_mig(lab, sid), 30, "migration running", interval=0.1)
        pidf = os.path.join(base, dst, "run", "qemu", f"{dom}.pid")
        qpid = int(wait_for(lambda: readf(pidf).strip(), 10, "incoming QEMU pid"))
        os.kill(qpid, 9)
        st = settled(lab, mig["uuid"])[0]
        check(f"migration with a dead destination: error ({st})", st == "error")
    except AssertionError as e:
        bad(str(e))
    stays(lab, hosts, sid, src, disk, ino, log, "after the destination died")
    dest_agent_restart(lab, hosts, sid, src, dst, disk, ino, log)
    src, dst = source_agent_restart(lab, hosts, sid, src, dst, disk, ino, log)

    # ---- 3: block_migration true over shared storage ----
    nmig = len(db_rows(lab, "SELECT * FROM migrations WHERE instance_uuid=?", (sid,)))
    r = http("POST", f"{lab.compute}/servers/{sid}/action",
             {"os-migrateLive": {"host": dst, "block_migration": True}})
    check(f"os-migrateLive(block_migration true) -> 202, checked after ({r.status})",
          r.status == 202)
    try:
        wait_for(lambda: len(db_rows(lab, "SELECT * FROM migrations WHERE instance_uuid=?",
                                     (sid,))) > nmig, 10, "migration recorded")
        st, _, _, fault = settled(lab, last_mig(lab, sid))
        check(f"refused: error, 'shared storage' ({st}, {fault!r})",
              st == "error" and "shared storage" in (fault or ""))
    except AssertionError as e:
        bad(str(e))
    stays(lab, hosts, sid, src, disk, ino, log, "after block_migration true")

    # ---- 4: cold migration over shared storage fails safely ----
    boots = readf(log).count("NUBE-GUEST-BOOTED")
    t = time.monotonic()
    r = http("POST", f"{lab.compute}/servers/{sid}/action", {"migrate": {"host": dst}})
    check(f"migrate (cold) to {dst} -> 202 ({r.status} {r.raw[:120]!r})", r.status == 202)
    try:
        wait_for(lambda: (last_mig(lab, sid, "migration") and
                          mig_row(lab, last_mig(lab, sid, "migration"))[0]
                          in ("error", "finished", "confirmed")), 60, "cold move settled",
                 interval=0.1)
        st, _, _, fault = mig_row(lab, last_mig(lab, sid, "migration"))
        check(f"cold move refused: error, the disk is already there ({st}, {fault!r})",
              st == "error" and "already on the destination" in (fault or ""))
        lab.wait_status(sid, {"ACTIVE", "ERROR", "VERIFY_RESIZE"}, timeout=60)
        wait_for(lambda: db_rows(lab, "SELECT task_state FROM instances WHERE uuid=?",
                                 (sid,))[0][0] in ("", "none", None), 30, "task cleared")
        timing("cold migrate (refused) API-to-ACTIVE", (time.monotonic() - t) * 1000)
        wait_for(lambda: readf(log).count("NUBE-GUEST-BOOTED") > boots, 60,
                 "the guest booted again on the source", interval=0.2)
        ok("the guest was started again from its own disk")
    except AssertionError as e:
        bad(str(e))
    migs = http("GET", f"{lab.compute}/os-migrations", headers=V259).json["migrations"]
    cold = [m for m in migs if m["migration_type"] == "migration"]
    check(f"os-migrations: the cold move is in error ({[m['status'] for m in cold]})",
          [m["status"] for m in cold] == ["error"])
    stays(lab, hosts, sid, src, disk, ino, log, "after the refused cold move")

    # ---- 5: delete ----
    r = http("DELETE", f"{lab.compute}/servers/{sid}")
    check(f"DELETE server -> 204 ({r.status})", r.status == 204)
    try:
        wait_for(lambda: not any(dom in h.domains() for h in hosts.values()) and
                 not os.path.exists(os.path.join(shared, sid)), 30, "domain and files gone")
        ok("deleted: no domain on either host, the shared directory is gone")
    except AssertionError as e:
        d = os.path.join(shared, sid)
        bad(f"{e}: {os.listdir(d) if os.path.isdir(d) else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
