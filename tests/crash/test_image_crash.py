#!/usr/bin/env python3
"""nube-image killed in the middle of an upload never leaves a half-active image.

A raw image upload is streamed over a plain socket (Content-Length announced, only part
of the body sent) and nube-image is SIGKILLed mid-body; after the restart the image must
not be `active`, and a later complete upload of another image must reach `active` with
the exact bytes. A second round kills right after the whole body was sent: the image is
then either not active, or active with exactly the bytes uploaded. A last round checks
that the byte quota's reservations of uploads in flight do not outlive a crash: an upload
holding the rest of the quota is killed with the daemon, and after the restart the room
is free again.

Usage: test_image_crash.py BUILD_DIR
"""

import hashlib
import os
import shutil
import socket
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from nubelab import Daemon, free_port, http, wait_for  # noqa: E402

TOKEN = "crash-image-admin-token-0123456789"
SIZE = 8 << 20
QUOTA = 3 * SIZE  # bytes per project: rounds 2 and 3 store at most 2 * SIZE


def start(build, work, port):
    conf = os.path.join(work, "image.conf")
    with open(conf, "w") as f:
        f.write(f"[DEFAULT]\nstate_dir = {work}/state\nlog_level = debug\n[image]\n"
                f"port = {port}\nmax_image_bytes = {SIZE * 4}\n"
                f"quota_bytes_per_project = {QUOTA}\n[auth]\n"
                f"admin_token = {TOKEN}\n")
    d = Daemon("image", [os.path.join(build, "image-store", "nube-image"), "-c", conf],
               os.path.join(work, "image.log")).start()

    def up():
        if not d.alive():
            raise AssertionError(f"nube-image exited:\n{d.tail()}")
        try:
            return http("GET", f"http://127.0.0.1:{port}/healthz", token=None,
                        timeout=2).status == 200
        except OSError:
            return False
    wait_for(up, 30, "nube-image up")
    return d


def new_image(api, name):
    r = http("POST", api, {"name": name, "disk_format": "raw", "container_format": "bare"},
             token=TOKEN)
    assert r.status == 201, (r.status, r.raw[:300])
    return r.json["id"]


def stream_upload(port, iid, data, send_bytes):
    """PUT the file announcing len(data) bytes but sending only send_bytes of them."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall((f"PUT /v2/images/{iid}/file HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"X-Auth-Token: {TOKEN}\r\nContent-Type: application/octet-stream\r\n"
               f"Content-Length: {len(data)}\r\n\r\n").encode())
    s.sendall(data[:send_bytes])
    return s


def status(api, iid):
    r = http("GET", f"{api}/{iid}", token=TOKEN)
    assert r.status == 200, (r.status, r.raw[:300])
    return r.json


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    work = tempfile.mkdtemp(prefix="nube-crash-img-")
    os.makedirs(os.path.join(work, "state"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/v2/images"
    data = os.urandom(SIZE)
    passed = failed = 0
    d = None
    try:
        # Round 1: killed with half of the body received.
        d = start(build, work, port)
        iid = new_image(api, "half")
        s = stream_upload(port, iid, data, SIZE // 2)
        wait_for(lambda: status(api, iid)["status"] == "saving", 10, "upload in progress",
                 0.05)
        d.kill9()
        s.close()
        d = start(build, work, port)
        st = status(api, iid)
        assert st["status"] != "active", f"half-uploaded image is active: {st}"
        r = http("GET", f"{api}/{iid}/file", token=TOKEN)
        assert r.status != 200 or len(r.raw) == 0, f"half an image served: {len(r.raw)} B"
        print(f"ok   killed mid-upload: image is '{st['status']}', not active")
        passed += 1

        # Round 2: killed once the whole body was sent (before or after it committed).
        iid2 = new_image(api, "whole")
        s = stream_upload(port, iid2, data, SIZE)
        time.sleep(0.05)
        d.kill9()
        s.close()
        d = start(build, work, port)
        st = status(api, iid2)
        if st["status"] == "active":
            r = http("GET", f"{api}/{iid2}/file", token=TOKEN)
            assert r.status == 200 and hashlib.sha256(r.raw).digest() == \
                hashlib.sha256(data).digest(), "active image with other bytes than uploaded"
        print(f"ok   killed at the end of the upload: '{st['status']}', consistent")
        passed += 1

        # The service works after both crashes.
        iid3 = new_image(api, "after")
        s = stream_upload(port, iid3, data, SIZE)
        resp = s.makefile("rb").readline()
        s.close()
        assert b" 204" in resp or b" 200" in resp, resp
        assert status(api, iid3)["status"] == "active"
        r = http("GET", f"{api}/{iid3}/file", token=TOKEN)
        assert r.raw == data, "downloaded bytes differ"
        print("ok   a complete upload after the crashes is active with the exact bytes")
        passed += 1

        # Round 4: an upload in flight holds the rest of the quota; a crash frees it.
        r = http("GET", f"{api}?status=active", token=TOKEN)
        stored = sum(i["size"] for i in r.json["images"])
        small = data[:64 << 10]
        holder = new_image(api, "holder")
        s = stream_upload(port, holder, data[:1] * (QUOTA - stored), SIZE // 4)
        wait_for(lambda: status(api, holder)["status"] == "saving", 10,
                 "holder upload in progress", 0.05)
        iid4 = new_image(api, "small")
        s4 = stream_upload(port, iid4, small, len(small))
        resp = s4.makefile("rb").readline()
        s4.close()
        assert b" 413" in resp, f"upload past the reserved quota: {resp!r}"
        d.kill9()
        s.close()
        d = start(build, work, port)
        assert status(api, holder)["status"] != "active"
        s4 = stream_upload(port, iid4, small, len(small))
        resp = s4.makefile("rb").readline()
        s4.close()
        assert b" 204" in resp, f"reservation survived the crash: {resp!r}"
        print(f"ok   quota reservations end with the daemon ({stored} B stored, "
              f"413 while an upload held the rest, 204 after the restart)")
        passed += 1
    except Exception as e:  # noqa: BLE001
        failed += 1
        print(f"FAIL {e}")
        traceback.print_exc()
        if d:
            print(d.tail(30))
    finally:
        if d and d.alive():
            d.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
