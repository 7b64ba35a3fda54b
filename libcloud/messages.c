/*
 * messages.c - encoders and decoders of the bodies nube daemons put on the bus.
 *
 * Both ends link this one codec, so a field is spelled once. Encoders build a new json
 * object from a struct; decoders check every field a peer sent before anything reaches
 * a handler: types, string lengths (a string that does not fit its fixed buffer is
 * refused, never silently truncated, because a truncated uuid or host name would address
 * the wrong thing), uuids, enum names (the tables of model.c), non-negative capacities
 * and a cap on arrays. Decoders fill a local copy first so a failure never leaves a
 * half-written output behind (STYLE.md: never clobber outputs on failure).
 *
 * Field lookups go through json.h, which names the bad field in err as
 * "Invalid input for field 'instance.flavor.vcpus': ...".
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "json.h"
#include "messages.h"

/* An agent with more domains than this is not something one message should describe. */
#define MSG_MAX_HOST_INSTANCES 100000

/* Copy a required/optional string field of at most outlen-1 bytes into out.
 * min is the minimum length in bytes; absent optional fields leave out untouched.
 * Strings with control characters are refused by cl_json_get_str_len; the byte length
 * check here guards the fixed buffer whatever "characters" means for UTF-8 input. */
static int get_str(json_object *root, const char *path, bool required, size_t min,
                   char *out, size_t outlen, cl_error *err)
{
    const char *s = NULL;
    int r = cl_json_get_str_len(root, path, required, min, outlen - 1, &s, err);
    if (r < 0)
        return r;
    if (!s)
        return 0;
    if (strlen(s) >= outlen)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': longer than %zu bytes", path,
                            outlen - 1);
    cl_strlcpy(out, s, outlen);
    return 0;
}

/* A string that may carry newlines (a fault message from libvirt does) but must fit. */
static int get_text(json_object *root, const char *path, char *out, size_t outlen,
                    cl_error *err)
{
    const char *s = NULL;
    int r = cl_json_get_str(root, path, false, &s, err);
    if (r < 0)
        return r;
    if (!s)
        return 0;
    json_object *o = cl_json_path(root, path);
    size_t len = o ? (size_t)json_object_get_string_len(o) : strlen(s);
    /* An embedded NUL (\u0000) would hide the rest of the text: refuse it. */
    if (len != strlen(s) || len >= outlen)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': longer than %zu bytes or "
                            "contains NUL", path, outlen - 1);
    cl_strlcpy(out, s, outlen);
    return 0;
}

static int get_uuid(json_object *root, const char *path, char out[CL_UUID_LEN],
                    cl_error *err)
{
    const char *s = NULL;
    int r = cl_json_get_str(root, path, true, &s, err);
    if (r < 0)
        return r;
    if (!s || !cl_uuid_valid(s))
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': expected a UUID", path);
    cl_strlcpy(out, s, CL_UUID_LEN);
    return 0;
}

/* Enum fields are strings from the tables of model.c; parse is the table's parser. */
static int get_enum(json_object *root, const char *path, int (*parse)(const char *, int *),
                    int *out, cl_error *err)
{
    const char *s = NULL;
    int r = cl_json_get_str(root, path, true, &s, err);
    if (r < 0)
        return r;
    if (!s || parse(s, out) < 0)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': unknown value '%.64s'", path,
                            s ? s : "");
    return 0;
}

/* Adapters so one get_enum serves the three enum types (no casts of function types). */
static int parse_vm(const char *s, int *out)
{
    cl_vm_state v;
    int r = cl_vm_state_parse(s, &v);
    if (r == 0)
        *out = (int)v;
    return r;
}

static int parse_task(const char *s, int *out)
{
    cl_task_state v;
    int r = cl_task_state_parse(s, &v);
    if (r == 0)
        *out = (int)v;
    return r;
}

static int parse_power(const char *s, int *out)
{
    cl_power_state v;
    int r = cl_power_state_parse(s, &v);
    if (r == 0)
        *out = (int)v;
    return r;
}

/* json_object_object_add() consumes val; a NULL val (allocation failure) is caught by
 * the caller checking the builder's result in one place (add_ok). */
static bool add_ok(json_object *obj, const char *key, json_object *val)
{
    if (!val)
        return false;
    if (json_object_object_add(obj, key, val) < 0) {
        json_object_put(val);
        return false;
    }
    return true;
}

static bool add_str(json_object *obj, const char *key, const char *s)
{
    return add_ok(obj, key, json_object_new_string(s ? s : ""));
}

static bool add_i64(json_object *obj, const char *key, int64_t v)
{
    return add_ok(obj, key, json_object_new_int64(v));
}

/* ---- instance uuid bodies: instance.schedule, instance.delete, instance.destroy ---- */

/* Build {"instance_uuid": "<uuid>"}. Returns a new object or NULL (NULL uuid, no memory).
 * The caller owns the result (cl_bus_send takes it over). */
json_object *cl_msg_uuid_encode(const char *instance_uuid)
{
    if (!instance_uuid)
        return NULL;
    _cleanup_json_ json_object *o = json_object_new_object();
    if (!o || !add_str(o, "instance_uuid", instance_uuid))
        return NULL;
    return TAKE_PTR(o);
}

/* Decode {"instance_uuid"}; out_uuid is written only on success. 0 or -EINVAL/-ENOENT. */
int cl_msg_uuid_decode(json_object *body, char out_uuid[CL_UUID_LEN], cl_error *err)
{
    char uuid[CL_UUID_LEN];
    if (!json_object_is_type(body, json_type_object))
        return cl_error_set(err, CL_E_BAD_REQUEST, "message body must be an object");
    int r = get_uuid(body, "instance_uuid", uuid, err);
    if (r < 0)
        return r;
    memcpy(out_uuid, uuid, CL_UUID_LEN);
    return 0;
}

/* ---- instance.spawn ---- */

static json_object *flavor_encode(const cl_flavor *f)
{
    _cleanup_json_ json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    if (!add_str(o, "id", f->id) || !add_str(o, "name", f->name) ||
        !add_i64(o, "vcpus", f->vcpus) || !add_i64(o, "ram_mb", f->ram_mb) ||
        !add_i64(o, "disk_gb", f->disk_gb) || !add_i64(o, "ephemeral_gb", f->ephemeral_gb) ||
        !add_i64(o, "swap_mb", f->swap_mb) ||
        !add_ok(o, "is_public", json_object_new_boolean(f->is_public)) ||
        !add_ok(o, "disabled", json_object_new_boolean(f->disabled)))
        return NULL;
    return TAKE_PTR(o);
}

/* Build {"instance": {uuid, name, project_id, user_id, image_ref, flavor{...}}}.
 * Returns a new object (caller owns) or NULL. */
json_object *cl_msg_spawn_encode(const cl_msg_instance *inst)
{
    if (!inst)
        return NULL;
    _cleanup_json_ json_object *body = json_object_new_object();
    json_object *i = json_object_new_object();
    if (!body || !add_ok(body, "instance", i))
        return NULL;
    /* i is owned by body from here on. */
    if (!add_str(i, "uuid", inst->uuid) || !add_str(i, "name", inst->name) ||
        !add_str(i, "project_id", inst->project_id) || !add_str(i, "user_id", inst->user_id) ||
        !add_str(i, "image_ref", inst->image_ref) ||
        !add_ok(i, "flavor", flavor_encode(&inst->flavor)))
        return NULL;
    return TAKE_PTR(body);
}

static int flavor_decode(json_object *body, cl_flavor *f, cl_error *err)
{
    json_object *obj = NULL;
    int r;
    if ((r = cl_json_get_object(body, "instance.flavor", true, &obj, err)) < 0)
        return r;
    if ((r = get_str(body, "instance.flavor.id", true, 1, f->id, sizeof f->id, err)) < 0 ||
        (r = get_str(body, "instance.flavor.name", true, 1, f->name, sizeof f->name, err)) < 0)
        return r;
    /* A domain needs at least one vcpu and some memory; disks may be zero (boot from an
     * image-sized root, no ephemeral, no swap). */
    if ((r = cl_json_get_int_range(body, "instance.flavor.vcpus", true, 1, INT32_MAX,
                                   &f->vcpus, err)) < 0 ||
        (r = cl_json_get_int_range(body, "instance.flavor.ram_mb", true, 1, INT32_MAX,
                                   &f->ram_mb, err)) < 0 ||
        (r = cl_json_get_int_range(body, "instance.flavor.disk_gb", true, 0, INT32_MAX,
                                   &f->disk_gb, err)) < 0 ||
        (r = cl_json_get_int_range(body, "instance.flavor.ephemeral_gb", false, 0, INT32_MAX,
                                   &f->ephemeral_gb, err)) < 0 ||
        (r = cl_json_get_int_range(body, "instance.flavor.swap_mb", false, 0, INT32_MAX,
                                   &f->swap_mb, err)) < 0)
        return r;
    if ((r = cl_json_get_bool(body, "instance.flavor.is_public", false, &f->is_public, err)) < 0 ||
        (r = cl_json_get_bool(body, "instance.flavor.disabled", false, &f->disabled, err)) < 0)
        return r;
    return 0;
}

/* Decode an instance.spawn body into *out (written only on success). 0 or -EINVAL/-ENOENT. */
int cl_msg_spawn_decode(json_object *body, cl_msg_instance *out, cl_error *err)
{
    cl_msg_instance m;
    int r;

    memset(&m, 0, sizeof m);
    m.flavor.is_public = true;
    if (!json_object_is_type(body, json_type_object))
        return cl_error_set(err, CL_E_BAD_REQUEST, "message body must be an object");
    json_object *obj = NULL;
    if ((r = cl_json_get_object(body, "instance", true, &obj, err)) < 0)
        return r;
    if ((r = get_uuid(body, "instance.uuid", m.uuid, err)) < 0 ||
        (r = get_str(body, "instance.name", true, 1, m.name, sizeof m.name, err)) < 0 ||
        (r = get_str(body, "instance.project_id", true, 1, m.project_id, sizeof m.project_id,
                     err)) < 0 ||
        (r = get_str(body, "instance.user_id", true, 1, m.user_id, sizeof m.user_id, err)) < 0 ||
        /* image_ref may be empty: a server booted from a volume has no image. */
        (r = get_str(body, "instance.image_ref", false, 0, m.image_ref, sizeof m.image_ref,
                     err)) < 0 ||
        (r = flavor_decode(body, &m.flavor, err)) < 0)
        return r;
    *out = m;
    return 0;
}

/* ---- instance.state ---- */

/* Build the instance.state body; fault is omitted when empty. Caller owns the result. */
json_object *cl_msg_state_encode(const cl_msg_state *st)
{
    if (!st)
        return NULL;
    _cleanup_json_ json_object *o = json_object_new_object();
    if (!o || !add_str(o, "instance_uuid", st->instance_uuid) || !add_str(o, "host", st->host) ||
        !add_str(o, "vm_state", cl_vm_state_name(st->vm_state)) ||
        !add_str(o, "power_state", cl_power_state_name(st->power_state)) ||
        !add_str(o, "task_state", cl_task_state_name(st->task_state)))
        return NULL;
    if (st->fault[0] && !add_str(o, "fault", st->fault))
        return NULL;
    return TAKE_PTR(o);
}

/* Decode an instance.state body into *out (written only on success). task_state may be
 * "none" or JSON null (the API's spelling of no task). 0 or -EINVAL/-ENOENT. */
int cl_msg_state_decode(json_object *body, cl_msg_state *out, cl_error *err)
{
    cl_msg_state m;
    int vm = 0, power = 0, task = CL_TASK_NONE;
    int r;

    memset(&m, 0, sizeof m);
    if (!json_object_is_type(body, json_type_object))
        return cl_error_set(err, CL_E_BAD_REQUEST, "message body must be an object");
    if ((r = get_uuid(body, "instance_uuid", m.instance_uuid, err)) < 0 ||
        (r = get_str(body, "host", true, 1, m.host, sizeof m.host, err)) < 0 ||
        (r = get_enum(body, "vm_state", parse_vm, &vm, err)) < 0 ||
        (r = get_enum(body, "power_state", parse_power, &power, err)) < 0)
        return r;
    json_object *t = NULL;
    if (!json_object_object_get_ex(body, "task_state", &t))
        return cl_error_set(err, CL_E_BAD_REQUEST, "Missing required field 'task_state'");
    if (t && (r = get_enum(body, "task_state", parse_task, &task, err)) < 0)
        return r;
    if ((r = get_text(body, "fault", m.fault, sizeof m.fault, err)) < 0)
        return r;
    m.vm_state = (cl_vm_state)vm;
    m.power_state = (cl_power_state)power;
    m.task_state = (cl_task_state)task;
    *out = m;
    return 0;
}

/* ---- host.register / host.heartbeat ---- */

/* Build the host body; with ninstances > 0 an "instances" array of {uuid, power_state}
 * is added (host.register). Returns a new object (caller owns) or NULL. */
json_object *cl_msg_host_encode(const cl_msg_host *h, const cl_msg_host_instance *instances,
                                size_t ninstances)
{
    if (!h || (ninstances > 0 && !instances))
        return NULL;
    _cleanup_json_ json_object *o = json_object_new_object();
    if (!o || !add_str(o, "host", h->host) || !add_str(o, "hypervisor_type", h->hypervisor_type) ||
        !add_str(o, "libvirt_uri", h->libvirt_uri) || !add_i64(o, "vcpus", h->vcpus) ||
        !add_i64(o, "ram_mb", h->ram_mb) || !add_i64(o, "disk_gb", h->disk_gb) ||
        !add_i64(o, "running_vms", h->running_vms))
        return NULL;
    if (ninstances == 0)
        return TAKE_PTR(o);
    json_object *arr = json_object_new_array_ext((int)ninstances);
    if (!add_ok(o, "instances", arr))
        return NULL;
    for (size_t i = 0; i < ninstances; i++) {
        json_object *e = json_object_new_object();
        if (!e || json_object_array_add(arr, e) < 0) {
            json_object_put(e);
            return NULL;
        }
        if (!add_str(e, "uuid", instances[i].uuid) ||
            !add_str(e, "power_state", cl_power_state_name(instances[i].power_state)))
            return NULL;
    }
    return TAKE_PTR(o);
}

static int host_instances_decode(json_object *body, cl_msg_host_instance **out_arr,
                                 size_t *out_n, cl_error *err)
{
    json_object *arr = NULL;
    int r = cl_json_get_array(body, "instances", false, &arr, err);
    if (r < 0)
        return r;
    size_t n = arr ? json_object_array_length(arr) : 0;
    if (n > MSG_MAX_HOST_INSTANCES)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field 'instances': more than %d entries",
                            MSG_MAX_HOST_INSTANCES);
    _cleanup_free_ cl_msg_host_instance *v = NULL;
    if (n > 0 && !(v = calloc(n, sizeof *v)))
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        json_object *e = json_object_array_get_idx(arr, i);
        char path[48];
        int power = 0;
        if (!json_object_is_type(e, json_type_object))
            return cl_error_set(err, CL_E_BAD_REQUEST,
                                "Invalid input for field 'instances[%zu]': expected an object",
                                i);
        /* Paths inside the element are reported with its index for the operator. */
        snprintf(path, sizeof path, "instances[%zu].uuid", i);
        const char *s = NULL;
        json_object *u = NULL;
        if (!json_object_object_get_ex(e, "uuid", &u) ||
            !json_object_is_type(u, json_type_string) ||
            !cl_uuid_valid(s = json_object_get_string(u)))
            return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid input for field '%s': "
                                "expected a UUID", path);
        cl_strlcpy(v[i].uuid, s, CL_UUID_LEN);
        snprintf(path, sizeof path, "instances[%zu].power_state", i);
        json_object *p = NULL;
        if (!json_object_object_get_ex(e, "power_state", &p) ||
            !json_object_is_type(p, json_type_string) ||
            parse_power(json_object_get_string(p), &power) < 0)
            return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid input for field '%s': "
                                "expected a power state", path);
        v[i].power_state = (cl_power_state)power;
    }
    *out_arr = TAKE_PTR(v);
    *out_n = n;
    return 0;
}

/* Decode a host.register / host.heartbeat body into *out and, when out_instances is not
 * NULL, a malloc'd array of the reported instances (NULL when none; caller frees) and
 * its length in *out_n. Outputs are written only on success. 0, -EINVAL/-ENOENT, -ENOMEM. */
int cl_msg_host_decode(json_object *body, cl_msg_host *out,
                       cl_msg_host_instance **out_instances, size_t *out_n, cl_error *err)
{
    cl_msg_host h;
    int r;

    memset(&h, 0, sizeof h);
    if (!json_object_is_type(body, json_type_object))
        return cl_error_set(err, CL_E_BAD_REQUEST, "message body must be an object");
    if ((r = get_str(body, "host", true, 1, h.host, sizeof h.host, err)) < 0 ||
        (r = get_str(body, "hypervisor_type", true, 1, h.hypervisor_type,
                     sizeof h.hypervisor_type, err)) < 0 ||
        (r = get_str(body, "libvirt_uri", false, 0, h.libvirt_uri, sizeof h.libvirt_uri,
                     err)) < 0)
        return r;
    /* Capacities can be zero (a host being drained) but never negative. */
    if ((r = cl_json_get_int_range(body, "vcpus", true, 0, INT64_MAX, &h.vcpus, err)) < 0 ||
        (r = cl_json_get_int_range(body, "ram_mb", true, 0, INT64_MAX, &h.ram_mb, err)) < 0 ||
        (r = cl_json_get_int_range(body, "disk_gb", true, 0, INT64_MAX, &h.disk_gb, err)) < 0 ||
        (r = cl_json_get_int_range(body, "running_vms", false, 0, INT64_MAX, &h.running_vms,
                                   err)) < 0)
        return r;
    cl_msg_host_instance *arr = NULL;
    size_t n = 0;
    if ((r = host_instances_decode(body, &arr, &n, err)) < 0)
        return r;
    *out = h;
    if (out_instances) {
        *out_instances = arr;
        if (out_n)
            *out_n = n;
    } else {
        free(arr);
        if (out_n)
            *out_n = n;
    }
    return 0;
}

/* ---- appended by issue 5: instance.action, addresses, agent_url ---- */

static const char *const action_names[CL_ACTION_MAX] = {
    [CL_ACTION_START] = "start",         [CL_ACTION_STOP] = "stop",
    [CL_ACTION_REBOOT_SOFT] = "reboot_soft", [CL_ACTION_REBOOT_HARD] = "reboot_hard",
    [CL_ACTION_PAUSE] = "pause",         [CL_ACTION_UNPAUSE] = "unpause",
    [CL_ACTION_SUSPEND] = "suspend",     [CL_ACTION_RESUME] = "resume",
    [CL_ACTION_RESIZE] = "resize",       [CL_ACTION_REVERT_RESIZE] = "revert_resize",
};

/* The wire name of an action ("unknown" for values outside the enum). */
const char *cl_action_name(cl_action a)
{
    return (unsigned)a < CL_ACTION_MAX ? action_names[a] : "unknown";
}

/* Parse a wire name; 0 or -EINVAL. */
int cl_action_parse(const char *s, cl_action *out)
{
    if (!s)
        return -EINVAL;
    for (int i = 0; i < CL_ACTION_MAX; i++) {
        if (strcmp(s, action_names[i]) == 0) {
            *out = (cl_action)i;
            return 0;
        }
    }
    return -EINVAL;
}

static int parse_action(const char *s, int *out)
{
    cl_action a;
    int r = cl_action_parse(s, &a);
    if (r == 0)
        *out = (int)a;
    return r;
}

/* Build {"instance_uuid", "action", "instance"?}. New object (caller owns) or NULL. */
json_object *cl_msg_action_encode(const char *instance_uuid, cl_action action,
                                  const cl_msg_instance *inst)
{
    if (!instance_uuid || (unsigned)action >= CL_ACTION_MAX)
        return NULL;
    _cleanup_json_ json_object *o = inst ? cl_msg_spawn_encode(inst) : json_object_new_object();
    if (!o || !add_str(o, "instance_uuid", instance_uuid) ||
        !add_str(o, "action", cl_action_name(action)))
        return NULL;
    return TAKE_PTR(o);
}

/* Decode an instance.action body (outputs written only on success). */
int cl_msg_action_decode(json_object *body, cl_msg_action *out, cl_error *err)
{
    cl_msg_action m;
    int act = 0, r;

    memset(&m, 0, sizeof m);
    if (!json_object_is_type(body, json_type_object))
        return cl_error_set(err, CL_E_BAD_REQUEST, "message body must be an object");
    if ((r = get_uuid(body, "instance_uuid", m.instance_uuid, err)) < 0 ||
        (r = get_enum(body, "action", parse_action, &act, err)) < 0)
        return r;
    m.action = (cl_action)act;
    if (json_object_object_get_ex(body, "instance", NULL)) {
        if ((r = cl_msg_spawn_decode(body, &m.instance, err)) < 0)
            return r;
        if (strcmp(m.instance.uuid, m.instance_uuid) != 0)
            return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid input for field "
                                "'instance.uuid': differs from instance_uuid");
        m.has_instance = true;
    }
    if ((m.action == CL_ACTION_RESIZE || m.action == CL_ACTION_REVERT_RESIZE) &&
        !m.has_instance)
        return cl_error_set(err, CL_E_BAD_REQUEST, "Missing required field 'instance' "
                            "(the flavor to apply)");
    *out = m;
    return 0;
}

/* Printable ASCII only: addresses and URLs end up in JSON answers and log lines. */
static bool printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e)
            return false;
    return true;
}

/* Add "addresses": [..] to an instance.state body. 0, -EINVAL, -ENOMEM. */
int cl_msg_state_set_addresses(json_object *body, const char (*addrs)[CL_MSG_ADDR_LEN],
                               size_t n)
{
    if (!body || n > CL_MSG_MAX_ADDRESSES || (n > 0 && !addrs))
        return -EINVAL;
    json_object *arr = json_object_new_array();
    if (!add_ok(body, "addresses", arr))
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        json_object *s = json_object_new_string(addrs[i]);
        if (!s || json_object_array_add(arr, s) < 0) {
            json_object_put(s);
            return -ENOMEM;
        }
    }
    return 0;
}

/* Read the optional "addresses" of an instance.state body. */
int cl_msg_state_get_addresses(json_object *body, char (*out)[CL_MSG_ADDR_LEN], size_t *out_n,
                               bool *out_present, cl_error *err)
{
    json_object *arr = NULL;
    int r = cl_json_get_array(body, "addresses", false, &arr, err);
    if (r < 0)
        return r;
    *out_present = arr != NULL;
    *out_n = 0;
    if (!arr)
        return 0;
    size_t n = json_object_array_length(arr);
    if (n > CL_MSG_MAX_ADDRESSES)
        return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid input for field 'addresses': "
                            "more than %d entries", CL_MSG_MAX_ADDRESSES);
    for (size_t i = 0; i < n; i++) {
        json_object *e = json_object_array_get_idx(arr, i);
        const char *s = json_object_is_type(e, json_type_string) ? json_object_get_string(e)
                                                                 : NULL;
        if (!s || !*s || strlen(s) >= CL_MSG_ADDR_LEN || !printable(s))
            return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid input for field "
                                "'addresses[%zu]': expected an address", i);
        cl_strlcpy(out[i], s, CL_MSG_ADDR_LEN);
    }
    *out_n = n;
    return 0;
}

/* Add "agent_url" to a host.register body. 0, -EINVAL, -ENOMEM. */
int cl_msg_host_set_agent_url(json_object *body, const char *url)
{
    if (!body || !url)
        return -EINVAL;
    return add_str(body, "agent_url", url) ? 0 : -ENOMEM;
}

/* Read the optional "agent_url" ("" when absent). */
int cl_msg_host_get_agent_url(json_object *body, char *out, size_t outlen, cl_error *err)
{
    char url[512] = "";
    int r = get_str(body, "agent_url", false, 0, url, sizeof url, err);
    if (r < 0)
        return r;
    if (url[0] && (strncmp(url, "http://", 7) != 0 || !printable(url) || strlen(url) >= outlen))
        return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid input for field 'agent_url': "
                            "expected an http:// URL");
    cl_strlcpy(out, url, outlen);
    return 0;
}

/* ---- image properties on instance.spawn ---- */

#define IMAGE_PROP_STRS(X)                                                                \
    X(vm_mode) X(hypervisor_type) X(architecture) X(container_format) X(disk_format)      \
    X(os_command_line)

/* Add "image_properties" with the non-empty fields of p. */
int cl_msg_spawn_set_image_props(json_object *body, const cl_msg_image_props *p)
{
    if (!body || !p)
        return -EINVAL;
    json_object *o = json_object_new_object();
    if (!add_ok(body, "image_properties", o))
        return -ENOMEM;
#define ADD_PROP(f)                                                                       \
    if (p->f[0] && !add_str(o, #f, p->f))                                                 \
        return -ENOMEM;
    IMAGE_PROP_STRS(ADD_PROP)
#undef ADD_PROP
    if (p->init[0] && !add_str(o, "nube_init", p->init))
        return -ENOMEM;
    if (p->lxc && !add_ok(o, "nube_lxc", json_object_new_boolean(1)))
        return -ENOMEM;
    return 0;
}

/* Read the optional "image_properties" object of an instance.spawn body. */
int cl_msg_spawn_get_image_props(json_object *body, cl_msg_image_props *out, bool *present,
                                 cl_error *err)
{
    cl_msg_image_props p;
    json_object *o = NULL;
    int r;

    memset(&p, 0, sizeof p);
    if (present)
        *present = false;
    if ((r = cl_json_get_object(body, "image_properties", false, &o, err)) < 0)
        return r;
    if (o) {
#define GET_PROP(f)                                                                       \
        if ((r = get_str(body, "image_properties." #f, false, 0, p.f, sizeof p.f, err)) < 0) \
            return r;
        IMAGE_PROP_STRS(GET_PROP)
#undef GET_PROP
        if ((r = get_str(body, "image_properties.nube_init", false, 0, p.init, sizeof p.init,
                         err)) < 0 ||
            (r = cl_json_get_bool(body, "image_properties.nube_lxc", false, &p.lxc, err)) < 0)
            return r;
        if (present)
            *present = true;
    }
    *out = p;
    return 0;
}

bool cl_msg_image_props_is_container(const cl_msg_image_props *p)
{
    return p && (p->lxc || strcasecmp(p->vm_mode, "exe") == 0 ||
                 strcasecmp(p->hypervisor_type, "lxc") == 0 ||
                 strcasecmp(p->container_format, "tar") == 0 ||
                 strcasecmp(p->disk_format, "tar") == 0);
}
