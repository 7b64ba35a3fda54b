#!/usr/bin/env python3
"""gen_corpus.py - (re)write the seed corpora of the nube fuzz targets.

    python3 tests/fuzz/gen_corpus.py            # writes tests/fuzz/corpus/<name>/seed-*

Seeds are small valid (and a few nearly valid) inputs for each decoder, so both the gcc
driver and libFuzzer start from inputs that reach deep into the code. Files named
crash-* or regress-* in the corpus directories are regression inputs from fuzzing runs;
this script never touches them.
"""
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
U1 = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
U2 = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"
U3 = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def j(o):
    return json.dumps(o, separators=(",", ":")).encode()


def instance(uuid=U1):
    return {"uuid": uuid, "name": "vm-1", "project_id": "p1", "user_id": "u1",
            "image_ref": "cirros", "flavor": {"id": "1", "name": "m1.tiny", "vcpus": 1,
                                              "ram_mb": 512, "disk_gb": 1, "ephemeral_gb": 0,
                                              "swap_mb": 0, "is_public": True,
                                              "disabled": False}}


def bus():
    env = {"v": 1, "id": U1, "type": "instance.spawn", "ts": 1764140000000, "from": "sched",
           "req": "req-" + U2, "body": {"instance": instance()}}
    yield "spawn", j(env)
    yield "ack", j({"v": 1, "id": U2, "type": "ack", "from": "host-1"})
    yield "heartbeat", j({"v": 1, "id": U3, "type": "host.heartbeat", "ts": 5, "from": "h",
                          "req": "", "body": {"host": "h", "vcpus": 4}})
    yield "bad-version", j({"v": 2, "id": U1, "type": "x", "from": "y"})
    yield "bad-id", j({"v": 1, "id": "not-a-uuid", "type": "x", "from": "y"})
    yield "body-array", j({"v": 1, "id": U1, "type": "x", "from": "y", "body": [1, 2]})
    yield "nested", b'{"v":1,"id":"%s","type":"t","from":"f","body":{"a":[{"b":{"c":[1.5e300,-0,"\\u00e9\\u0000"]}}]}}' % U1.encode()
    yield "long-type", j({"v": 1, "id": U1, "type": "t" * 64, "from": "f"})


def messages():
    yield "uuid", j({"instance_uuid": U1})
    yield "spawn", j({"instance": instance()})
    yield "state", j({"instance_uuid": U1, "host": "host-1", "vm_state": "active",
                      "power_state": "running", "task_state": None,
                      "fault": "line1\nline2", "addresses": ["10.0.0.5", "fd00::5"]})
    yield "state-task", j({"instance_uuid": U1, "host": "h", "vm_state": "building",
                           "power_state": "nostate", "task_state": "spawning"})
    yield "host", j({"host": "host-1", "hypervisor_type": "QEMU", "libvirt_uri": "qemu:///system",
                     "vcpus": 8, "ram_mb": 16384, "disk_gb": 100, "running_vms": 2,
                     "instances": [{"uuid": U1, "power_state": "running"},
                                   {"uuid": U2, "power_state": "shutdown"}],
                     "agent_url": "http://127.0.0.1:8776"})
    yield "host-strings", j({"host": "h", "hypervisor_type": "test", "vcpus": "4",
                             "ram_mb": "1024", "disk_gb": 0})
    yield "action-resize", j(dict({"instance_uuid": U1, "action": "resize"},
                                  instance=instance()))
    yield "action-start", j({"instance_uuid": U1, "action": "start"})
    yield "action-mismatch", j({"instance_uuid": U2, "action": "revert_resize",
                                "instance": instance()})


def usage():
    counter = {"id": U1, "instance_uuid": U2, "project_id": "p1", "host": "h1",
               "ts": 1764140000000, "kind": "counter", "boot_id": "h1-7-1764",
               "counters": {"cpu_ns": 1000, "net_rx_bytes": 1, "net_tx_bytes": 2,
                            "disk_rd_bytes": 3, "disk_wr_bytes": 4}}
    gauge = {"id": U3, "instance_uuid": U2, "project_id": "p1", "host": "h1", "ts": 1,
             "kind": "gauge", "gauges": {"vcpus": 1, "ram_mb": 512, "disk_gb": 1,
                                         "mem_used_mb": 100}}
    event = {"id": "00000000-0000-4000-8000-000000000001", "instance_uuid": U2,
             "project_id": "p1", "host": "h1", "ts": 2, "kind": "event", "event": "started",
             "flavor_id": "1", "gauges": {"vcpus": 1, "ram_mb": 512, "disk_gb": 1}}
    yield "batch", j({"samples": [counter, gauge, event]})
    yield "one-bad", j({"samples": [counter, dict(gauge, ts=-1), {"id": 5}]})
    yield "sample", j(event)
    yield "empty", j({"samples": []})
    yield "strings", j({"samples": [dict(counter, ts="17", counters=dict(
        counter["counters"], cpu_ns="99999999999999999999"))]})


def json_seeds():
    yield "server", j({"server": {"name": "vm-1", "flavorRef": "1", "imageRef": U1,
                                  "min_count": "2", "networks": "none",
                                  "metadata": {"k": "v"}}})
    yield "numbers", b'{"a":{"b":[0,-1,1e5,1.5,-0.0,9223372036854775807,9223372036854775808,-9223372036854775809,1e999]},"server":{"name":true}}'
    yield "unicode", b'{"server":{"name":"\\u00e9t\\u00e9 \\ud83d\\ude00","flavorRef":"\\u0000x"}}'
    yield "deep", b'{"a":' * 33 + b'1' + b'}' * 33
    yield "array", b'[1,"two",{"three":[null,false]}]'
    yield "scalar", b'  42  '
    yield "trailing", b'{"a":1} {"b":2}'
    yield "control", b'{"server":{"name":"a\\tb\\u007f"}}'


def config():
    yield "full", b"""# nube config
debug = true
name = nube-test

[api]
port = 8774
workers = 8
url = http://127.0.0.1:8774/v2.1 ; the public URL
ratio = 0.25

[db]
timeout = 1e3
offset = -42
path = /tmp/nube.db
enabled = off
"""
    yield "bom", b"\xef\xbb\xbf[DEFAULT]\nname=x\n[ api ]\nport:80\n"
    yield "bad-section", b"[nope]\nx = 1\n"
    yield "bad-key", b"[api]\nprot = 1\n"
    yield "bounds", b"[api]\nport = 70000\n"
    yield "syntax", b"[api\nport\n"
    yield "long-line", b"[db]\npath = " + b"x" * 300 + b"\n"
    yield "double", b"[api]\nratio = nan\n[db]\ntimeout = 0x10\n"
    yield "dup", b"[db]\npath = a\npath = b\n  continued\n"


def inspect_seeds():
    # byte 0: declared format (0 raw, 1 qcow2, 2 vmdk, 3 iso, 4 aki, 5 ari), byte 1: limit
    def seed(declared, limit, img):
        return bytes([declared, limit]) + img

    q3 = bytearray(112)
    q3[0:4] = b"QFI\xfb"
    struct.pack_into(">I", q3, 4, 3)
    struct.pack_into(">I", q3, 20, 16)
    struct.pack_into(">Q", q3, 24, 1 << 30)
    struct.pack_into(">Q", q3, 72, 1)  # dirty: harmless
    struct.pack_into(">I", q3, 100, 104)
    yield "qcow2-v3", seed(1, 0, bytes(q3))
    q2 = bytearray(q3[:72])
    struct.pack_into(">I", q2, 4, 2)
    yield "qcow2-v2", seed(1, 1, bytes(q2))
    qb = bytearray(q3)
    struct.pack_into(">Q", qb, 8, 0x200)
    yield "qcow2-backing", seed(1, 0, bytes(qb))
    qd = bytearray(q3)
    struct.pack_into(">Q", qd, 72, 4)
    yield "qcow2-datafile", seed(1, 0, bytes(qd))

    desc = (b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
            b'createType="monolithicSparse"\n\n# Extent description\n'
            b'RW 2048 SPARSE "disk.vmdk"\n\nddb.virtualHWVersion = "4"\n')
    vm = bytearray(1024)
    vm[0:4] = b"KDMV"
    struct.pack_into("<I", vm, 4, 1)
    struct.pack_into("<Q", vm, 12, 2048)      # capacity (sectors)
    struct.pack_into("<Q", vm, 20, 128)       # grain size
    struct.pack_into("<Q", vm, 28, 1)         # descriptor offset (sectors)
    struct.pack_into("<Q", vm, 36, 1)         # descriptor size (sectors)
    vm[512:512 + len(desc)] = desc
    yield "vmdk-sparse", seed(2, 0, bytes(vm))
    vf = bytearray(vm)
    vf[512:1024] = bytes(512)
    d2 = desc.replace(b"SPARSE", b"FLAT").replace(b'"disk.vmdk"', b'"../../etc/passwd" 0')
    vf[512:512 + len(d2)] = d2
    yield "vmdk-flat", seed(2, 0, bytes(vf))
    yield "vmdk-descriptor", seed(2, 0, desc)

    gpt = bytearray(1024)
    gpt[510:512] = b"\x55\xaa"
    gpt[512:520] = b"EFI PART"
    yield "gpt", seed(0, 1, bytes(gpt))
    bz = bytearray(0x300)
    bz[0x202:0x206] = b"HdrS"
    yield "bzimage", seed(4, 0, bytes(bz))
    yield "gzip", seed(5, 0, b"\x1f\x8b\x08\x00" + bytes(60))
    yield "cpio", seed(5, 2, b"070701" + b"0" * 104)
    yield "raw", seed(0, 2, bytes(range(256)) * 4)
    iso = bytearray(0x8010)
    iso[0x8001:0x8006] = b"CD001"
    yield "iso", seed(3, 0, bytes(iso))
    yield "declared-mismatch", seed(1, 0, bytes(gpt))


def clouds():
    yield "basic", b"""clouds:
  nube:
    auth:
      auth_url: http://127.0.0.1:5000/v3
      username: admin
      password: secret
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: internal
  a:
    auth: {auth_url: 'https://keystone.example/', user_id: u1, password: "p\\x41ss", project_id: p1}
"""
    yield "anchors", b"""defaults: &d
  auth_url: http://k:5000
  password: pw
clouds:
  nube:
    auth:
      <<: *d
      username: u
      project_name: p
  a: {auth: *d}
"""
    yield "nulls", b"clouds:\n  nube:\n    auth:\n      auth_url: ~\n      username: null\n    region_name: \n"
    yield "not-mapping", b"- clouds\n- nube\n"
    yield "bad-yaml", b"clouds:\n  nube: [\n"
    yield "auth-list", b"clouds:\n  nube:\n    auth: [1, 2]\n"
    yield "tags", b"%YAML 1.1\n---\nclouds: !!map\n  nube: &x\n    auth: {auth_url: !!str http://a/v2.0, username: u, password: p, project_id: '1'}\n...\n"


def http():
    body = j({"thing": {"name": "one", "count": 3}})
    yield "get", b"GET /v1/things/abc?marker=x%20y&limit=5 HTTP/1.1\r\nHost: a\r\nX-Echo: hi\r\n\r\n"
    yield "detail", b"GET /v1/things/detail/ HTTP/1.1\r\nHost: a\r\nX-OpenStack-Request-Id: req-" + U1.encode() + b"\r\n\r\n"
    yield "post", (b"POST /v1/things HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body)) + body
    yield "post-chunked", (b"POST /v1/things HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                           b"Content-Type: application/json\r\n\r\n%x\r\n" % len(body)) + body + b"\r\n0\r\n\r\n"
    yield "put", b"PUT /v1/things/a%2Fb/tags/t%00x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
    yield "put-ok", b"PUT /v1/things/x/tags/%C3%A9 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
    yield "delete", b"DELETE /v1/things/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx"
    yield "405", b"PATCH /v1/things/1 HTTP/1.1\r\nHost: a\r\n\r\n"
    yield "health", b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
    yield "too-large", b"POST /v1/things HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n{}"
    yield "http10", b"HEAD /v1/things/1 HTTP/1.0\r\n\r\n"
    yield "garbage", b"\x00\xff GET / HTTP/9.9\r\n\r\n"
    yield "deep-path", b"GET /" + b"a/" * 40 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    yield "bad-json", (b"POST /v1/things HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\n"
                       b"Content-Length: 5\r\n\r\n{\"a\":")


TARGETS = {"bus": bus, "messages": messages, "usage": usage, "json": json_seeds,
           "config": config, "inspect": inspect_seeds, "clouds": clouds, "http": http}


def main():
    only = sys.argv[1:]
    for name, gen in TARGETS.items():
        if only and name not in only:
            continue
        d = os.path.join(HERE, "corpus", name)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            if f.startswith("seed-"):
                os.unlink(os.path.join(d, f))
        n = 0
        for seed_name, data in gen():
            with open(os.path.join(d, "seed-" + seed_name), "wb") as f:
                f.write(data)
            n += 1
        print(f"{name}: {n} seeds")


if __name__ == "__main__":
    main()
