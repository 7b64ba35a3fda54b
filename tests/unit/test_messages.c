/*
 * test_messages.c - the bus message bodies: every encoder's output decodes back to the
 * same struct, and decoders refuse what a confused or hostile peer could send (wrong
 * types, overlong strings, bad uuids, unknown states, negative capacities, huge arrays).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "json.h"
#include "messages.h"

#define UUID1 "0b5c3a52-8d1e-4f4a-9a77-3e2d1c0b9a88"
#define UUID2 "6f1e2d3c-4b5a-4968-8776-554433221100"

static json_object *parse(const char *s)
{
    json_object *o = json_tokener_parse(s);
    assert_non_null(o);
    return o;
}

/* ---- uuid bodies ---- */

static void test_uuid_roundtrip(void **state)
{
    (void)state;
    _cleanup_json_ json_object *o = cl_msg_uuid_encode(UUID1);
    assert_non_null(o);
    char out[CL_UUID_LEN] = "unchanged";
    cl_error err = {0};
    assert_int_equal(cl_msg_uuid_decode(o, out, &err), 0);
    assert_string_equal(out, UUID1);
    assert_null(cl_msg_uuid_encode(NULL));
}

static void test_uuid_reject(void **state)
{
    (void)state;
    const char *bad[] = {
        "{}",
        "{\"instance_uuid\": 5}",
        "{\"instance_uuid\": \"not-a-uuid\"}",
        "{\"instance_uuid\": \"" UUID1 "x\"}",
        "{\"instance_uuid\": null}",
    };
    for (size_t i = 0; i < CL_ARRAY_SIZE(bad); i++) {
        _cleanup_json_ json_object *o = parse(bad[i]);
        char out[CL_UUID_LEN] = "unchanged";
        cl_error err = {0};
        assert_true(cl_msg_uuid_decode(o, out, &err) < 0);
        assert_string_equal(out, "unchanged"); /* outputs untouched on failure */
        assert_int_equal(err.code, CL_E_BAD_REQUEST);
        assert_true(strlen(err.message) > 0);
    }
    _cleanup_json_ json_object *arr = parse("[1]");
    char out[CL_UUID_LEN];
    assert_true(cl_msg_uuid_decode(arr, out, NULL) < 0);
}

/* ---- instance.spawn ---- */

static cl_msg_instance sample_instance(void)
{
    cl_msg_instance in;
    memset(&in, 0, sizeof in);
    cl_strlcpy(in.uuid, UUID1, sizeof in.uuid);
    cl_strlcpy(in.name, "web-1 (é)", sizeof in.name);
    cl_strlcpy(in.project_id, "5a0c5e2b9b6f4f3e8d1c2b3a4f5e6d7c", sizeof in.project_id);
    cl_strlcpy(in.user_id, "0f1e2d3c4b5a49687766554433221100", sizeof in.user_id);
    cl_strlcpy(in.image_ref, UUID2, sizeof in.image_ref);
    cl_strlcpy(in.flavor.id, "42", sizeof in.flavor.id);
    cl_strlcpy(in.flavor.name, "m1.small", sizeof in.flavor.name);
    in.flavor.vcpus = 2;
    in.flavor.ram_mb = 2048;
    in.flavor.disk_gb = 20;
    in.flavor.ephemeral_gb = 1;
    in.flavor.swap_mb = 512;
    in.flavor.is_public = false;
    in.flavor.disabled = true;
    return in;
}

static void test_spawn_roundtrip(void **state)
{
    (void)state;
    cl_msg_instance in = sample_instance();
    _cleanup_json_ json_object *o = cl_msg_spawn_encode(&in);
    assert_non_null(o);
    /* Through text, as on the wire. */
    _cleanup_json_ json_object *back = parse(json_object_to_json_string(o));
    cl_msg_instance out;
    cl_error err = {0};
    assert_int_equal(cl_msg_spawn_decode(back, &out, &err), 0);
    assert_string_equal(out.uuid, in.uuid);
    assert_string_equal(out.name, in.name);
    assert_string_equal(out.project_id, in.project_id);
    assert_string_equal(out.user_id, in.user_id);
    assert_string_equal(out.image_ref, in.image_ref);
    assert_string_equal(out.flavor.id, "42");
    assert_string_equal(out.flavor.name, "m1.small");
    assert_int_equal(out.flavor.vcpus, 2);
    assert_int_equal(out.flavor.ram_mb, 2048);
    assert_int_equal(out.flavor.disk_gb, 20);
    assert_int_equal(out.flavor.ephemeral_gb, 1);
    assert_int_equal(out.flavor.swap_mb, 512);
    assert_false(out.flavor.is_public);
    assert_true(out.flavor.disabled);

    /* A volume-backed server has no image: an empty image_ref is fine. */
    in.image_ref[0] = '\0';
    _cleanup_json_ json_object *o2 = cl_msg_spawn_encode(&in);
    assert_int_equal(cl_msg_spawn_decode(o2, &out, &err), 0);
    assert_string_equal(out.image_ref, "");
}

/* Apply one mutation to a valid spawn body and expect the decoder to refuse it. */
static void expect_spawn_rejected(const char *path_obj, const char *key, json_object *val)
{
    cl_msg_instance in = sample_instance();
    _cleanup_json_ json_object *o = cl_msg_spawn_encode(&in);
    json_object *target = cl_json_path(o, path_obj);
    assert_non_null(target);
    if (val)
        json_object_object_add(target, key, val);
    else
        json_object_object_del(target, key);
    cl_msg_instance out;
    memset(&out, 0x5a, sizeof out);
    cl_error err = {0};
    assert_true(cl_msg_spawn_decode(o, &out, &err) < 0);
    assert_int_equal(err.code, CL_E_BAD_REQUEST);
    assert_int_equal((unsigned char)out.uuid[0], 0x5a); /* untouched */
}

static void test_spawn_reject(void **state)
{
    (void)state;
    char longname[CL_NAME_MAX + 1];
    memset(longname, 'n', CL_NAME_MAX);
    longname[CL_NAME_MAX] = '\0'; /* 256 characters: one too many */
    char longid[CL_ID_MAX + 1];
    memset(longid, 'p', CL_ID_MAX);
    longid[CL_ID_MAX] = '\0';
    /* 128 two-byte characters = 256 bytes: within 255 characters, not within the buffer. */
    char wide[2 * 128 + 1];
    for (int i = 0; i < 128; i++)
        memcpy(wide + 2 * i, "\xc3\xa9", 2);
    wide[2 * 128] = '\0';

    expect_spawn_rejected("instance", "uuid", json_object_new_string("nope"));
    expect_spawn_rejected("instance", "uuid", NULL);
    expect_spawn_rejected("instance", "name", json_object_new_string(longname));
    expect_spawn_rejected("instance", "name", json_object_new_string(wide));
    expect_spawn_rejected("instance", "name", json_object_new_string(""));
    expect_spawn_rejected("instance", "name", json_object_new_int(3));
    expect_spawn_rejected("instance", "project_id", json_object_new_string(longid));
    expect_spawn_rejected("instance", "user_id", NULL);
    expect_spawn_rejected("instance", "flavor", json_object_new_string("m1.small"));
    expect_spawn_rejected("instance.flavor", "vcpus", json_object_new_int(0));
    expect_spawn_rejected("instance.flavor", "ram_mb", json_object_new_int(-1));
    expect_spawn_rejected("instance.flavor", "disk_gb", json_object_new_int(-5));
    expect_spawn_rejected("instance.flavor", "swap_mb", json_object_new_string("lots"));
    expect_spawn_rejected("instance.flavor", "is_public", json_object_new_string("yes"));
    expect_spawn_rejected("instance.flavor", "id", NULL);

    _cleanup_json_ json_object *empty = parse("{}");
    cl_msg_instance out;
    assert_true(cl_msg_spawn_decode(empty, &out, NULL) < 0);
    _cleanup_json_ json_object *notobj = parse("{\"instance\": [1,2]}");
    assert_true(cl_msg_spawn_decode(notobj, &out, NULL) < 0);
}

/* ---- instance.state ---- */

static void test_state_roundtrip(void **state)
{
    (void)state;
    cl_msg_state st;
    memset(&st, 0, sizeof st);
    cl_strlcpy(st.instance_uuid, UUID1, sizeof st.instance_uuid);
    cl_strlcpy(st.host, "compute-7", sizeof st.host);
    /* Every combination of the three enums survives the trip. */
    for (int vm = 0; vm < CL_VM_STATE_MAX; vm++)
        for (int task = 0; task < CL_TASK_STATE_MAX; task++)
            for (int pw = 0; pw < CL_POWER_STATE_MAX; pw++) {
                st.vm_state = (cl_vm_state)vm;
                st.task_state = (cl_task_state)task;
                st.power_state = (cl_power_state)pw;
                _cleanup_json_ json_object *o = cl_msg_state_encode(&st);
                assert_non_null(o);
                cl_msg_state out;
                cl_error err = {0};
                assert_int_equal(cl_msg_state_decode(o, &out, &err), 0);
                assert_int_equal(out.vm_state, vm);
                assert_int_equal(out.task_state, task);
                assert_int_equal(out.power_state, pw);
                assert_string_equal(out.fault, "");
            }
    st.vm_state = CL_VM_ERROR;
    cl_strlcpy(st.fault, "spawn failed:\nlibvirt said no", sizeof st.fault);
    _cleanup_json_ json_object *o = cl_msg_state_encode(&st);
    _cleanup_json_ json_object *back = parse(json_object_to_json_string(o));
    cl_msg_state out;
    assert_int_equal(cl_msg_state_decode(back, &out, NULL), 0);
    assert_string_equal(out.fault, st.fault);
    assert_string_equal(out.host, "compute-7");
    assert_string_equal(out.instance_uuid, UUID1);

    /* task_state null is the API's spelling of "none". */
    _cleanup_json_ json_object *n = parse("{\"instance_uuid\":\"" UUID1 "\",\"host\":\"h\","
                                          "\"vm_state\":\"active\",\"power_state\":\"running\","
                                          "\"task_state\":null}");
    assert_int_equal(cl_msg_state_decode(n, &out, NULL), 0);
    assert_int_equal(out.task_state, CL_TASK_NONE);
    assert_int_equal(out.vm_state, CL_VM_ACTIVE);
    assert_int_equal(out.power_state, CL_POWER_RUNNING);
}

static void test_state_reject(void **state)
{
    (void)state;
    char longfault[CL_FAULT_MAX + 2];
    memset(longfault, 'f', CL_FAULT_MAX);
    longfault[CL_FAULT_MAX] = '\0';
    const char *base = "{\"instance_uuid\":\"" UUID1 "\",\"host\":\"h\",\"vm_state\":\"active\","
                       "\"power_state\":\"running\",\"task_state\":\"none\"}";
    struct {
        const char *key;
        json_object *val; /* NULL: delete the key */
    } cases[] = {
        {"vm_state", json_object_new_string("exploded")},
        {"vm_state", json_object_new_int(1)},
        {"power_state", json_object_new_string("RUNNING!")},
        {"task_state", json_object_new_string("dancing")},
        {"task_state", NULL},
        {"host", json_object_new_string("")},
        {"host", NULL},
        {"instance_uuid", json_object_new_string("x")},
        {"fault", json_object_new_string(longfault)},
        {"fault", json_object_new_int(500)},
        {"fault", json_object_new_string_len("a\0b", 3)},
    };
    for (size_t i = 0; i < CL_ARRAY_SIZE(cases); i++) {
        _cleanup_json_ json_object *o = parse(base);
        if (cases[i].val)
            json_object_object_add(o, cases[i].key, cases[i].val);
        else
            json_object_object_del(o, cases[i].key);
        cl_msg_state out;
        cl_error err = {0};
        int r = cl_msg_state_decode(o, &out, &err);
        if (r == 0)
            fail_msg("case %zu (%s) was accepted", i, cases[i].key);
        assert_int_equal(err.code, CL_E_BAD_REQUEST);
    }
    /* The unmodified base is fine (so the cases above fail for their own reason). */
    _cleanup_json_ json_object *ok = parse(base);
    cl_msg_state out;
    assert_int_equal(cl_msg_state_decode(ok, &out, NULL), 0);
}

/* ---- host.register / host.heartbeat ---- */

static cl_msg_host sample_host(void)
{
    cl_msg_host h;
    memset(&h, 0, sizeof h);
    cl_strlcpy(h.host, "compute-1", sizeof h.host);
    cl_strlcpy(h.hypervisor_type, "QEMU", sizeof h.hypervisor_type);
    cl_strlcpy(h.libvirt_uri, "qemu:///system", sizeof h.libvirt_uri);
    h.vcpus = 16;
    h.ram_mb = 65536;
    h.disk_gb = 500;
    h.running_vms = 2;
    return h;
}

static void test_host_roundtrip(void **state)
{
    (void)state;
    cl_msg_host h = sample_host();
    cl_msg_host_instance inst[2];
    memset(inst, 0, sizeof inst);
    cl_strlcpy(inst[0].uuid, UUID1, sizeof inst[0].uuid);
    inst[0].power_state = CL_POWER_RUNNING;
    cl_strlcpy(inst[1].uuid, UUID2, sizeof inst[1].uuid);
    inst[1].power_state = CL_POWER_SHUTDOWN;

    _cleanup_json_ json_object *o = cl_msg_host_encode(&h, inst, 2);
    assert_non_null(o);
    _cleanup_json_ json_object *back = parse(json_object_to_json_string(o));
    cl_msg_host out;
    _cleanup_free_ cl_msg_host_instance *arr = NULL;
    size_t n = 99;
    cl_error err = {0};
    assert_int_equal(cl_msg_host_decode(back, &out, &arr, &n, &err), 0);
    assert_string_equal(out.host, "compute-1");
    assert_string_equal(out.hypervisor_type, "QEMU");
    assert_string_equal(out.libvirt_uri, "qemu:///system");
    assert_int_equal(out.vcpus, 16);
    assert_int_equal(out.ram_mb, 65536);
    assert_int_equal(out.disk_gb, 500);
    assert_int_equal(out.running_vms, 2);
    assert_int_equal(n, 2);
    assert_non_null(arr);
    assert_string_equal(arr[0].uuid, UUID1);
    assert_int_equal(arr[0].power_state, CL_POWER_RUNNING);
    assert_string_equal(arr[1].uuid, UUID2);
    assert_int_equal(arr[1].power_state, CL_POWER_SHUTDOWN);

    /* Heartbeat: no instances; decoding without an array pointer works too. */
    _cleanup_json_ json_object *hb = cl_msg_host_encode(&h, NULL, 0);
    assert_non_null(hb);
    assert_null(cl_json_path(hb, "instances"));
    _cleanup_free_ cl_msg_host_instance *none = NULL;
    n = 99;
    assert_int_equal(cl_msg_host_decode(hb, &out, &none, &n, NULL), 0);
    assert_int_equal(n, 0);
    assert_null(none);
    assert_int_equal(cl_msg_host_decode(back, &out, NULL, NULL, NULL), 0);
}

static void test_host_reject(void **state)
{
    (void)state;
    struct {
        const char *key;
        json_object *val;
    } cases[] = {
        {"vcpus", json_object_new_int(-1)},
        {"ram_mb", json_object_new_int64(-4096)},
        {"disk_gb", json_object_new_string("big")},
        {"running_vms", json_object_new_int(-2)},
        {"host", json_object_new_string("")},
        {"host", NULL},
        {"hypervisor_type", json_object_new_string("a-hypervisor-type-name-that-is-too-long")},
        {"instances", json_object_new_string("none")},
        {"instances", parse("[{\"uuid\":\"bad\",\"power_state\":\"running\"}]")},
        {"instances", parse("[{\"uuid\":\"" UUID1 "\",\"power_state\":\"on\"}]")},
        {"instances", parse("[{\"uuid\":\"" UUID1 "\"}]")},
        {"instances", parse("[7]")},
    };
    for (size_t i = 0; i < CL_ARRAY_SIZE(cases); i++) {
        cl_msg_host h = sample_host();
        _cleanup_json_ json_object *o = cl_msg_host_encode(&h, NULL, 0);
        if (cases[i].val)
            json_object_object_add(o, cases[i].key, cases[i].val);
        else
            json_object_object_del(o, cases[i].key);
        cl_msg_host out;
        cl_msg_host_instance *arr = (cl_msg_host_instance *)0x1;
        size_t n = 77;
        cl_error err = {0};
        if (cl_msg_host_decode(o, &out, &arr, &n, &err) == 0)
            fail_msg("case %zu (%s) was accepted", i, cases[i].key);
        assert_int_equal(err.code, CL_E_BAD_REQUEST);
        assert_ptr_equal(arr, (cl_msg_host_instance *)0x1); /* untouched */
        assert_int_equal(n, 77);
    }
}

static void test_host_array_cap(void **state)
{
    (void)state;
    cl_msg_host h = sample_host();
    _cleanup_json_ json_object *o = cl_msg_host_encode(&h, NULL, 0);
    json_object *arr = json_object_new_array();
    json_object_object_add(o, "instances", arr);
    /* 100001 entries: one more than any message may carry. The same (shared) element
     * is enough: the cap is checked before the elements are. */
    json_object *e = parse("{\"uuid\":\"" UUID1 "\",\"power_state\":\"running\"}");
    for (int i = 0; i < 100001; i++)
        json_object_array_add(arr, json_object_get(e));
    json_object_put(e);
    cl_msg_host out;
    cl_msg_host_instance *list = NULL;
    size_t n = 0;
    cl_error err = {0};
    assert_true(cl_msg_host_decode(o, &out, &list, &n, &err) < 0);
    assert_null(list);
    assert_non_null(strstr(err.message, "instances"));
    /* At the cap it is accepted. */
    json_object_array_del_idx(arr, 0, 1);
    assert_int_equal(cl_msg_host_decode(o, &out, &list, &n, &err), 0);
    assert_int_equal(n, 100000);
    free(list);
}

/* Image properties ride along an instance.spawn body, optional and typed. */
static void test_spawn_image_props(void **state)
{
    (void)state;
    cl_msg_instance in = sample_instance();
    cl_msg_image_props p = {0}, out;
    cl_error err = {0};
    bool present = true;

    _cleanup_json_ json_object *o = cl_msg_spawn_encode(&in);
    assert_non_null(o);
    /* Absent: nothing, and not present. */
    assert_int_equal(cl_msg_spawn_get_image_props(o, &out, &present, &err), 0);
    assert_false(present);
    assert_string_equal(out.vm_mode, "");
    assert_false(cl_msg_image_props_is_container(&out));

    snprintf(p.vm_mode, sizeof p.vm_mode, "xen");
    snprintf(p.os_command_line, sizeof p.os_command_line, "console=hvc0");
    snprintf(p.init, sizeof p.init, "/bin/sh");
    p.lxc = true;
    assert_int_equal(cl_msg_spawn_set_image_props(o, &p), 0);
    _cleanup_json_ json_object *back = parse(json_object_to_json_string(o));
    json_object *ip = NULL;
    assert_true(json_object_object_get_ex(back, "image_properties", &ip));
    /* Only the fields that say something. */
    assert_false(json_object_object_get_ex(ip, "architecture", NULL));
    assert_int_equal(cl_msg_spawn_get_image_props(back, &out, &present, &err), 0);
    assert_true(present);
    assert_string_equal(out.vm_mode, "xen");
    assert_string_equal(out.os_command_line, "console=hvc0");
    assert_string_equal(out.init, "/bin/sh");
    assert_true(out.lxc);
    assert_true(cl_msg_image_props_is_container(&out));
    /* The spawn itself still decodes. */
    cl_msg_instance inst;
    assert_int_equal(cl_msg_spawn_decode(back, &inst, &err), 0);

    /* Wrong types are refused, naming the field. */
    _cleanup_json_ json_object *bad =
        parse("{\"image_properties\":{\"vm_mode\":7}}");
    assert_true(cl_msg_spawn_get_image_props(bad, &out, &present, &err) < 0);
    assert_non_null(strstr(err.message, "vm_mode"));
    _cleanup_json_ json_object *bad2 = parse("{\"image_properties\":[]}");
    assert_true(cl_msg_spawn_get_image_props(bad2, &out, &present, &err) < 0);
    cl_msg_image_props c = {0};
    snprintf(c.disk_format, sizeof c.disk_format, "TAR");
    assert_true(cl_msg_image_props_is_container(&c));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uuid_roundtrip),  cmocka_unit_test(test_uuid_reject),
        cmocka_unit_test(test_spawn_roundtrip), cmocka_unit_test(test_spawn_reject),
        cmocka_unit_test(test_state_roundtrip), cmocka_unit_test(test_state_reject),
        cmocka_unit_test(test_host_roundtrip),  cmocka_unit_test(test_host_reject),
        cmocka_unit_test(test_host_array_cap), cmocka_unit_test(test_spawn_image_props),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
