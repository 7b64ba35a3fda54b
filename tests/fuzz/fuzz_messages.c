/*
 * fuzz_messages.c - every bus body decoder of libcloud/messages.h on one JSON value.
 *
 * The input is parsed with cl_json_parse (as the bus does for the envelope) and the
 * value is handed to each decoder: uuid, spawn, state (+ addresses), host (with and
 * without the instance list, + agent_url) and action. Invariants beyond "no crash":
 *  - a refusal is -EINVAL/-ENOENT with the cl_error filled and the output untouched;
 *  - an accepted body decodes to a sane struct (terminated strings, UUIDs, enums in
 *    range, non-negative capacities);
 *  - decode -> encode -> decode gives an equal struct.
 */
#include <errno.h>
#include <string.h>

#include "fuzz_common.h"
#include "json.h"
#include "messages.h"

static void check_refusal(int r, const cl_error *err, const void *out, const void *sentinel,
                          size_t n)
{
    FUZZ_CHECK(r == -EINVAL || r == -ENOENT || r == -ENOMEM);
    if (r != -ENOMEM)
        fuzz_check_error(err);
    if (out)
        FUZZ_CHECK(memcmp(out, sentinel, n) == 0);
}

static bool flavor_eq(const cl_flavor *a, const cl_flavor *b)
{
    return strcmp(a->id, b->id) == 0 && strcmp(a->name, b->name) == 0 &&
           a->vcpus == b->vcpus && a->ram_mb == b->ram_mb && a->disk_gb == b->disk_gb &&
           a->ephemeral_gb == b->ephemeral_gb && a->swap_mb == b->swap_mb &&
           a->is_public == b->is_public && a->disabled == b->disabled;
}

static bool instance_eq(const cl_msg_instance *a, const cl_msg_instance *b)
{
    return strcmp(a->uuid, b->uuid) == 0 && strcmp(a->name, b->name) == 0 &&
           strcmp(a->project_id, b->project_id) == 0 && strcmp(a->user_id, b->user_id) == 0 &&
           strcmp(a->image_ref, b->image_ref) == 0 && flavor_eq(&a->flavor, &b->flavor);
}

static void check_instance(const cl_msg_instance *m)
{
    FUZZ_STR_OK(m->uuid);
    FUZZ_STR_OK(m->name);
    FUZZ_STR_OK(m->project_id);
    FUZZ_STR_OK(m->user_id);
    FUZZ_STR_OK(m->image_ref);
    FUZZ_STR_OK(m->flavor.id);
    FUZZ_STR_OK(m->flavor.name);
    FUZZ_CHECK(cl_uuid_valid(m->uuid));
    FUZZ_CHECK(m->name[0] && m->project_id[0] && m->user_id[0]);
    FUZZ_CHECK(m->flavor.id[0] && m->flavor.name[0]);
    FUZZ_CHECK(m->flavor.vcpus >= 1 && m->flavor.ram_mb >= 1 && m->flavor.disk_gb >= 0);
    FUZZ_CHECK(m->flavor.ephemeral_gb >= 0 && m->flavor.swap_mb >= 0);
}

static void fuzz_uuid(json_object *body)
{
    char uuid[CL_UUID_LEN], sentinel[CL_UUID_LEN], uuid2[CL_UUID_LEN];
    cl_error err = {0};

    memset(uuid, 'Z', sizeof(uuid));
    memcpy(sentinel, uuid, sizeof(uuid));
    int r = cl_msg_uuid_decode(body, uuid, &err);
    if (r < 0) {
        check_refusal(r, &err, uuid, sentinel, sizeof(uuid));
        return;
    }
    FUZZ_CHECK(r == 0 && cl_uuid_valid(uuid));
    _cleanup_json_ json_object *enc = cl_msg_uuid_encode(uuid);
    FUZZ_CHECK(enc != NULL);
    FUZZ_CHECK(cl_msg_uuid_decode(enc, uuid2, &err) == 0);
    FUZZ_CHECK(strcmp(uuid, uuid2) == 0);
}

static void fuzz_spawn(json_object *body)
{
    cl_msg_instance m, sentinel, m2;
    cl_error err = {0};

    memset(&m, 0xA5, sizeof(m));
    memcpy(&sentinel, &m, sizeof(m));
    int r = cl_msg_spawn_decode(body, &m, &err);
    if (r < 0) {
        check_refusal(r, &err, &m, &sentinel, sizeof(m));
        return;
    }
    FUZZ_CHECK(r == 0);
    check_instance(&m);
    _cleanup_json_ json_object *enc = cl_msg_spawn_encode(&m);
    FUZZ_CHECK(enc != NULL);
    memset(&m2, 0, sizeof(m2));
    r = cl_msg_spawn_decode(enc, &m2, &err);
    if (r != 0)
        fprintf(stderr, "spawn re-decode: %s\n", err.message);
    FUZZ_CHECK(r == 0);
    FUZZ_CHECK(instance_eq(&m, &m2));
}

static void fuzz_state(json_object *body)
{
    cl_msg_state m, sentinel, m2;
    cl_error err = {0};

    memset(&m, 0xA5, sizeof(m));
    memcpy(&sentinel, &m, sizeof(m));
    int r = cl_msg_state_decode(body, &m, &err);
    if (r < 0) {
        check_refusal(r, &err, &m, &sentinel, sizeof(m));
    } else {
        FUZZ_CHECK(r == 0);
        FUZZ_STR_OK(m.instance_uuid);
        FUZZ_STR_OK(m.host);
        FUZZ_STR_OK(m.fault);
        FUZZ_CHECK(cl_uuid_valid(m.instance_uuid) && m.host[0]);
        FUZZ_CHECK((unsigned)m.vm_state < CL_VM_STATE_MAX);
        FUZZ_CHECK((unsigned)m.power_state < CL_POWER_STATE_MAX);
        FUZZ_CHECK((unsigned)m.task_state < CL_TASK_STATE_MAX);
        _cleanup_json_ json_object *enc = cl_msg_state_encode(&m);
        FUZZ_CHECK(enc != NULL);
        memset(&m2, 0, sizeof(m2));
        r = cl_msg_state_decode(enc, &m2, &err);
        if (r != 0)
            fprintf(stderr, "state re-decode: %s\n", err.message);
        FUZZ_CHECK(r == 0);
        FUZZ_CHECK(strcmp(m.instance_uuid, m2.instance_uuid) == 0);
        FUZZ_CHECK(strcmp(m.host, m2.host) == 0 && strcmp(m.fault, m2.fault) == 0);
        FUZZ_CHECK(m.vm_state == m2.vm_state && m.power_state == m2.power_state &&
                   m.task_state == m2.task_state);
    }

    /* The optional address list of the same body. */
    char addrs[CL_MSG_MAX_ADDRESSES][CL_MSG_ADDR_LEN], addrs2[CL_MSG_MAX_ADDRESSES][CL_MSG_ADDR_LEN];
    size_t n = 99, n2 = 99;
    bool present = false, present2 = false;
    memset(&err, 0, sizeof(err));
    r = cl_msg_state_get_addresses(body, addrs, &n, &present, &err);
    if (r < 0) {
        check_refusal(r, &err, NULL, NULL, 0);
        return;
    }
    FUZZ_CHECK(r == 0 && n <= CL_MSG_MAX_ADDRESSES);
    FUZZ_CHECK(present || n == 0);
    for (size_t i = 0; i < n; i++) {
        FUZZ_STR_OK(addrs[i]);
        FUZZ_CHECK(addrs[i][0] != '\0');
    }
    if (!present)
        return;
    _cleanup_json_ json_object *o = json_object_new_object();
    FUZZ_CHECK(o != NULL);
    FUZZ_CHECK(cl_msg_state_set_addresses(o, (const char (*)[CL_MSG_ADDR_LEN])addrs, n) == 0);
    FUZZ_CHECK(cl_msg_state_get_addresses(o, addrs2, &n2, &present2, &err) == 0);
    FUZZ_CHECK(present2 && n2 == n);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(strcmp(addrs[i], addrs2[i]) == 0);
}

static void fuzz_host(json_object *body, bool want_instances)
{
    cl_msg_host h, sentinel, h2;
    cl_msg_host_instance *inst = NULL, *inst2 = NULL;
    size_t n = 12345, n2 = 0;
    cl_error err = {0};

    memset(&h, 0xA5, sizeof(h));
    memcpy(&sentinel, &h, sizeof(h));
    int r = cl_msg_host_decode(body, &h, want_instances ? &inst : NULL, &n, &err);
    if (r < 0) {
        check_refusal(r, &err, &h, &sentinel, sizeof(h));
        FUZZ_CHECK(inst == NULL && n == 12345);
        return;
    }
    FUZZ_CHECK(r == 0);
    FUZZ_STR_OK(h.host);
    FUZZ_STR_OK(h.hypervisor_type);
    FUZZ_STR_OK(h.libvirt_uri);
    FUZZ_CHECK(h.host[0] && h.hypervisor_type[0]);
    FUZZ_CHECK(h.vcpus >= 0 && h.ram_mb >= 0 && h.disk_gb >= 0 && h.running_vms >= 0);
    FUZZ_CHECK(n == 0 || !want_instances || inst != NULL);
    for (size_t i = 0; want_instances && i < n; i++) {
        FUZZ_CHECK(cl_uuid_valid(inst[i].uuid));
        FUZZ_CHECK((unsigned)inst[i].power_state < CL_POWER_STATE_MAX);
    }
    if (want_instances) {
        _cleanup_json_ json_object *enc = cl_msg_host_encode(&h, inst, n);
        FUZZ_CHECK(enc != NULL);
        memset(&h2, 0, sizeof(h2));
        r = cl_msg_host_decode(enc, &h2, &inst2, &n2, &err);
        if (r != 0)
            fprintf(stderr, "host re-decode: %s\n", err.message);
        FUZZ_CHECK(r == 0);
        FUZZ_CHECK(strcmp(h.host, h2.host) == 0 &&
                   strcmp(h.hypervisor_type, h2.hypervisor_type) == 0 &&
                   strcmp(h.libvirt_uri, h2.libvirt_uri) == 0);
        FUZZ_CHECK(h.vcpus == h2.vcpus && h.ram_mb == h2.ram_mb && h.disk_gb == h2.disk_gb &&
                   h.running_vms == h2.running_vms);
        FUZZ_CHECK(n2 == n);
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK(strcmp(inst[i].uuid, inst2[i].uuid) == 0 &&
                       inst[i].power_state == inst2[i].power_state);
        free(inst);
        free(inst2);
    }

    /* agent_url of the same body: get -> set -> get. */
    char url[512], url2[512];
    memset(&err, 0, sizeof(err));
    r = cl_msg_host_get_agent_url(body, url, sizeof(url), &err);
    if (r < 0) {
        check_refusal(r, &err, NULL, NULL, 0);
        return;
    }
    FUZZ_STR_OK(url);
    FUZZ_CHECK(url[0] == '\0' || strncmp(url, "http://", 7) == 0);
    if (!url[0])
        return;
    _cleanup_json_ json_object *o = json_object_new_object();
    FUZZ_CHECK(o && cl_msg_host_set_agent_url(o, url) == 0);
    FUZZ_CHECK(cl_msg_host_get_agent_url(o, url2, sizeof(url2), &err) == 0);
    FUZZ_CHECK(strcmp(url, url2) == 0);
    /* A buffer too small for the URL is an error, never a cut. */
    char small[16];
    r = cl_msg_host_get_agent_url(o, small, sizeof(small), &err);
    FUZZ_CHECK(strlen(url) < sizeof(small) ? r == 0 : r < 0);
}

static void fuzz_action(json_object *body)
{
    cl_msg_action m, sentinel, m2;
    cl_error err = {0};

    memset(&m, 0xA5, sizeof(m));
    memcpy(&sentinel, &m, sizeof(m));
    int r = cl_msg_action_decode(body, &m, &err);
    if (r < 0) {
        check_refusal(r, &err, &m, &sentinel, sizeof(m));
        return;
    }
    FUZZ_CHECK(r == 0);
    FUZZ_CHECK(cl_uuid_valid(m.instance_uuid));
    FUZZ_CHECK((unsigned)m.action < CL_ACTION_MAX);
    if (m.action == CL_ACTION_RESIZE || m.action == CL_ACTION_REVERT_RESIZE)
        FUZZ_CHECK(m.has_instance);
    if (m.has_instance) {
        check_instance(&m.instance);
        FUZZ_CHECK(strcmp(m.instance.uuid, m.instance_uuid) == 0);
    }
    _cleanup_json_ json_object *enc =
        cl_msg_action_encode(m.instance_uuid, m.action, m.has_instance ? &m.instance : NULL);
    FUZZ_CHECK(enc != NULL);
    memset(&m2, 0, sizeof(m2));
    r = cl_msg_action_decode(enc, &m2, &err);
    if (r != 0)
        fprintf(stderr, "action re-decode: %s\n", err.message);
    FUZZ_CHECK(r == 0);
    FUZZ_CHECK(strcmp(m.instance_uuid, m2.instance_uuid) == 0 && m.action == m2.action &&
               m.has_instance == m2.has_instance);
    if (m.has_instance)
        FUZZ_CHECK(instance_eq(&m.instance, &m2.instance));
    /* The name table and its parser agree. */
    cl_action a;
    FUZZ_CHECK(cl_action_parse(cl_action_name(m.action), &a) == 0 && a == m.action);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    _cleanup_json_ json_object *body = NULL;
    cl_error err = {0};

    if (size > 256 * 1024)
        return 0;
    if (cl_json_parse((const char *)data, size, &body, &err) < 0)
        return 0;
    fuzz_uuid(body);
    fuzz_spawn(body);
    fuzz_state(body);
    fuzz_host(body, true);
    fuzz_host(body, false);
    fuzz_action(body);
    return 0;
}
