/*
 * actions.c - POST /v2.1/servers/{id}/action: the server actions of Nova's API.
 *
 * Each action is one key of the request body. The handler checks the caller, then the
 * instance's state and sets its task_state in one store transaction
 * (cl_store_action_begin: two concurrent requests can never both start), then sends a
 * reliable instance.action to the scheduler, which routes it to the instance's host. The
 * agent performs it on the real domain and reports instance.state; the task_state is
 * cleared by that report. Answers follow Nova: 202 without a body (204 for confirmResize),
 * 409 conflictingRequest "Cannot '<action>' instance <uuid> while it is in vm_state <s>"
 * (or task_state), 400 for malformed bodies, 404 for unknown actions and servers.
 *
 *  body key              allowed vm_state                      task_state set
 *  os-start              stopped                               powering-on
 *  os-stop               active, paused, suspended, resized    powering-off
 *  reboot {type}         SOFT: active; HARD: active, stopped,   SOFT: rebooting,
 *                        paused, suspended                      HARD: rebooting_hard
 *  pause / suspend       active                                pausing / suspending
 *  unpause               paused                                unpausing
 *  resume                suspended                             resuming
 *  resize {flavorRef}    active, stopped                       resize_prep
 *  confirmResize         resized                               (none: done in one store
 *                                                               transaction, no agent message)
 *  revertResize          resized                               resize_reverting
 *  os-getConsoleOutput   any, once placed on a host            -
 *  migrate {host}        active (admin)                        resize_migrating
 *
 * Resize is a cold resize on the same host: the store moves the allocation to the new
 * flavor atomically (403/400 when the host has no room), the agent redefines the domain
 * (stopping and restarting a running guest), the server shows VERIFY_RESIZE, and
 * confirmResize / revertResize finish or undo it. When the host has no room, and for
 * migrate (cold migration), the move goes to another host instead (migrate_actions.c,
 * scheduler/migrations.c; "test" hypervisors only for now, 501/400 otherwise), and
 * confirmResize / revertResize act on that migration.
 *
 * os-getConsoleOutput needs a synchronous answer: nube-api asks the agent directly over
 * HTTP (GET <agent_url>/v1/instances/<uuid>/console?length=N, 5 s deadline). The agent
 * announces its URL in host.register (agent_url) and the scheduler keeps it in the
 * host_agents table. This keeps the bus one-way and costs one loopback/LAN round trip.
 */
#include "actions.h"
#include "migrate_actions.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api_int.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "messages.h"
#include "store_actions.h"
#include "util.h"

#define LOG_MOD "api.actions"
#define CONSOLE_TIMEOUT_MS 5000

/* Load the server of the path for an action: 404 for unknown, deleted or another
 * project's server, 403 for a reader. */
static bool load(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, cl_store **out_st,
                 cl_instance *out)
{
    const char *id = cl_http_req_param(req, "id");
    const cl_auth *who = api_auth_current();
    cl_store *st = api_store(ctx, resp);
    int rc;

    if (!st)
        return false;
    rc = (id && strlen(id) < CL_UUID_LEN) ? cl_store_instance_get(st, id, out) : -ENOENT;
    if (rc == 0 && (out->vm_state == CL_VM_DELETED ||
                    (who && !cl_auth_can_read(who, out->project_id))))
        rc = -ENOENT;
    if (rc == -ENOENT) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Instance %.64s could not be found.",
                            id ? id : "");
        return false;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read the server (%s).", strerror(-rc));
        return false;
    }
    if (who && !cl_auth_can_write(who, out->project_id)) {
        cl_http_resp_errorf(resp, CL_E_FORBIDDEN, "Policy doesn't allow this action to be "
                            "performed.");
        return false;
    }
    *out_st = st;
    return true;
}

/* Answer a failed state check as Nova does. */
static void respond_state(cl_http_resp *resp, int rc, const char *action,
                          const cl_instance *inst)
{
    if (rc == -EBUSY)
        cl_http_resp_errorf(resp, CL_E_CONFLICT, "Cannot '%s' instance %s while it is in "
                            "task_state %s", action, inst->uuid,
                            cl_task_state_name(inst->task_state));
    else if (rc == -EPERM)
        cl_http_resp_errorf(resp, CL_E_CONFLICT, "Cannot '%s' instance %s while it is in "
                            "vm_state %s", action, inst->uuid,
                            cl_vm_state_name(inst->vm_state));
    else if (rc == -ENOENT)
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Instance %s could not be found.",
                            inst->uuid);
    else
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot change the server (%s).",
                            strerror(-rc));
}

static void spec_of(const cl_instance *inst, cl_msg_instance *m)
{
    memset(m, 0, sizeof(*m));
    cl_strlcpy(m->uuid, inst->uuid, sizeof(m->uuid));
    cl_strlcpy(m->name, inst->name, sizeof(m->name));
    cl_strlcpy(m->project_id, inst->project_id, sizeof(m->project_id));
    cl_strlcpy(m->user_id, inst->user_id, sizeof(m->user_id));
    cl_strlcpy(m->image_ref, inst->image_ref, sizeof(m->image_ref));
    m->flavor = inst->flavor;
}

/* Send the action to the scheduler; on failure put the previous task back and answer
 * 503. Returns true when sent. */
static bool send_action(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp,
                        cl_store *st, const cl_instance *inst, cl_action action,
                        bool with_spec, cl_task_state prev_task)
{
    cl_msg_instance m;
    if (with_spec)
        spec_of(inst, &m);
    json_object *body = cl_msg_action_encode(inst->uuid, action, with_spec ? &m : NULL);
    int rc = body ? cl_bus_send(ctx->bus, NULL, CL_MSG_INSTANCE_ACTION, req->request_id, body,
                                true, NULL)
                  : -ENOMEM;
    if (rc < 0) {
        cl_store_instance_set_state(st, inst->uuid, -1, (int)prev_task, -1, NULL, 0);
        cl_http_resp_errorf(resp, CL_E_UNAVAILABLE,
                            "The scheduler queue is full; try again later.");
        return false;
    }
    cl_info(LOG_MOD, "server %s: %s requested", inst->uuid, cl_action_name(action));
    api_instance_action_record(st, inst->uuid, cl_action_name(action));
    return true;
}

/* A state-checked action that the agent performs. */
static void simple_action(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp,
                          cl_store *st, const cl_instance *cur, const char *api_name,
                          cl_action action, unsigned allowed, cl_task_state task)
{
    cl_instance inst = *cur;
    int rc = cl_store_action_begin(st, cur->uuid, allowed, task, &inst);
    if (rc < 0) {
        respond_state(resp, rc, api_name, &inst);
        return;
    }
    if (send_action(ctx, req, resp, st, &inst, action, false, CL_TASK_NONE))
        cl_http_resp_json(resp, 202, NULL);
}

static void do_reboot(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, cl_store *st,
                      const cl_instance *cur, json_object *arg)
{
    json_object *t = NULL;
    const char *type;
    if (!json_object_is_type(arg, json_type_object) ||
        !json_object_object_get_ex(arg, "type", &t) ||
        !json_object_is_type(t, json_type_string)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid input for field/attribute "
                            "reboot. 'type' is a required property");
        return;
    }
    type = json_object_get_string(t);
    if (strcasecmp(type, "SOFT") == 0)
        simple_action(ctx, req, resp, st, cur, "reboot", CL_ACTION_REBOOT_SOFT,
                      CL_VM_BIT(CL_VM_ACTIVE), CL_TASK_REBOOTING);
    else if (strcasecmp(type, "HARD") == 0)
        simple_action(ctx, req, resp, st, cur, "reboot", CL_ACTION_REBOOT_HARD,
                      CL_VM_BIT(CL_VM_ACTIVE) | CL_VM_BIT(CL_VM_STOPPED) |
                          CL_VM_BIT(CL_VM_PAUSED) | CL_VM_BIT(CL_VM_SUSPENDED),
                      CL_TASK_REBOOTING_HARD);
    else
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid input for field/attribute "
                            "type. Value: %.32s. '%.32s' is not one of ['HARD', 'SOFT']",
                            type, type);
}

/* flavorRef: an id, or a URL whose last path segment is the id. */
static bool flavor_ref(json_object *arg, char *out, size_t outlen, cl_http_resp *resp)
{
    json_object *v = NULL;
    const char *s;
    if (!json_object_is_type(arg, json_type_object) ||
        !json_object_object_get_ex(arg, "flavorRef", &v) ||
        !(json_object_is_type(v, json_type_string) || json_object_is_type(v, json_type_int))) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid input for field/attribute "
                            "resize. 'flavorRef' is a required property");
        return false;
    }
    s = json_object_get_string(v);
    const char *slash = strrchr(s, '/');
    if (slash)
        s = slash + 1;
    if (!*s || strlen(s) >= outlen) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid flavorRef provided.");
        return false;
    }
    cl_strlcpy(out, s, outlen);
    return true;
}

static void do_resize(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, cl_store *st,
                      const cl_instance *cur, json_object *arg)
{
    char ref[CL_ID_MAX];
    cl_flavor fl;
    cl_instance inst = *cur;
    int rc;

    if (!flavor_ref(arg, ref, sizeof(ref), resp))
        return;
    if (cl_store_flavor_get(st, ref, &fl) < 0 || fl.disabled) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Unable to locate requested flavor.");
        return;
    }
    rc = cl_store_resize_begin(st, cur->uuid, &fl, &inst);
    if (rc == -EINVAL) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "When resizing, instances must change flavor!");
        return;
    }
    if (rc == -ENOSPC) {
        /* Another host then (migrate_actions.c), where that is implemented. */
        if (api_resize_other_host(ctx, req, resp, st, cur, &fl))
            return;
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "No valid host was found. Host %s has "
                            "no room for flavor %s.", cur->host, fl.name);
        return;
    }
    if (rc < 0) {
        respond_state(resp, rc, "resize", &inst);
        return;
    }
    if (send_action(ctx, req, resp, st, &inst, CL_ACTION_RESIZE, true, CL_TASK_NONE))
        cl_http_resp_json(resp, 202, NULL);
}

static void do_confirm(cl_http_resp *resp, cl_store *st, const cl_instance *cur)
{
    cl_instance inst = *cur;
    int rc = cl_store_resize_confirm(st, cur->uuid, &inst);
    if (rc < 0) {
        respond_state(resp, rc, "confirmResize", &inst);
        return;
    }
    cl_info(LOG_MOD, "server %s: resize confirmed", cur->uuid);
    api_instance_action_record(st, cur->uuid, "confirmResize");
    cl_http_resp_json(resp, 204, NULL);
}

static void do_revert(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, cl_store *st,
                      const cl_instance *cur)
{
    cl_instance inst = *cur;
    int rc = cl_store_resize_revert_begin(st, cur->uuid, &inst);
    if (rc == -ENOSPC) {
        cl_http_resp_errorf(resp, CL_E_CONFLICT, "Host %s has no room for the old flavor.",
                            cur->host);
        return;
    }
    if (rc < 0) {
        respond_state(resp, rc, "revertResize", &inst);
        return;
    }
    /* The agent reports ACTIVE (or SHUTOFF) once the old flavor is back, which clears
     * the task; a failed send leaves the old flavor recorded and the task cleared. */
    if (send_action(ctx, req, resp, st, &inst, CL_ACTION_REVERT_RESIZE, true, CL_TASK_NONE))
        cl_http_resp_json(resp, 202, NULL);
}

/* {"length": N} with N an integer, a string of digits, or null; -1 and absent: all. */
static bool console_length(json_object *arg, int64_t *out, cl_http_resp *resp)
{
    json_object *v = NULL;
    *out = -1;
    if (arg && !json_object_is_type(arg, json_type_object) &&
        !json_object_is_type(arg, json_type_null))
        goto bad;
    if (!arg || !json_object_object_get_ex(arg, "length", &v) || !v)
        return true;
    if (json_object_is_type(v, json_type_int)) {
        *out = json_object_get_int64(v);
    } else if (json_object_is_type(v, json_type_string)) {
        if (cl_parse_int64(json_object_get_string(v), out) < 0)
            goto bad;
    } else {
        goto bad;
    }
    if (*out < -1)
        goto bad;
    return true;
bad:
    cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid input for field/attribute length. "
                        "Value must be an integer >= -1 or null.");
    return false;
}

static void do_console(cl_http_resp *resp, cl_store *st, const cl_instance *inst,
                       json_object *arg)
{
    char base[512], url[1024];
    int64_t length;
    cl_http_result res = {0};
    cl_error err = {0};
    _cleanup_json_ json_object *answer = NULL;
    json_object *out = NULL;

    if (!console_length(arg, &length, resp))
        return;
    if (!inst->host[0]) {
        cl_http_resp_errorf(resp, CL_E_CONFLICT, "Instance %s is not ready yet.", inst->uuid);
        return;
    }
    if (cl_store_host_agent_url_get(st, inst->host, base, sizeof(base)) < 0) {
        cl_http_resp_errorf(resp, CL_E_NOT_IMPLEMENTED, "Unable to get console output: host "
                            "%s does not serve consoles.", inst->host);
        return;
    }
    snprintf(url, sizeof(url), "%s/v1/instances/%s/console?length=%" PRId64, base, inst->uuid,
             length);
    int rc = cl_http_request("GET", url, NULL, NULL, 0, CONSOLE_TIMEOUT_MS, &res, &err);
    if (rc < 0 || res.status != 200 ||
        cl_json_parse_object(res.body, res.body_len, &answer, &err) < 0 ||
        !json_object_object_get_ex(answer, "output", &out) ||
        !json_object_is_type(out, json_type_string)) {
        cl_debug(LOG_MOD, "console of %s from %s: rc %d status %ld: %s", inst->uuid, url, rc,
                 res.status, err.message);
        if (rc == 0 && res.status == 404)
            cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Guest does not have a console "
                                "available.");
        else
            cl_http_resp_errorf(resp, CL_E_UNAVAILABLE, "Unable to get console output from "
                                "host %s; try again later.", inst->host);
        cl_http_result_free(&res);
        return;
    }
    cl_http_result_free(&res);
    json_object *body = json_object_new_object();
    json_object_object_add(body, "output", json_object_get(out));
    cl_http_resp_json(resp, 200, body);
}

void api_servers_action(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    _cleanup_json_ json_object *body = NULL;
    cl_error err = {0};
    cl_instance inst;
    cl_store *st;

    if (!api_compute_begin(ctx, req, resp, true, NULL))
        return;
    if (cl_http_req_json(req, &body, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    if (json_object_object_length(body) != 1) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "The request body must name exactly one "
                            "action.");
        return;
    }
    if (!load(ctx, req, resp, &st, &inst))
        return;

    const char *key = NULL;
    json_object *arg = NULL;
    json_object_object_foreach(body, k, v) {
        key = k;
        arg = v;
    }
    const unsigned stop_ok = CL_VM_BIT(CL_VM_ACTIVE) | CL_VM_BIT(CL_VM_PAUSED) |
                             CL_VM_BIT(CL_VM_SUSPENDED) | CL_VM_BIT(CL_VM_RESIZED);
    if (strcmp(key, "os-start") == 0)
        simple_action(ctx, req, resp, st, &inst, key, CL_ACTION_START,
                      CL_VM_BIT(CL_VM_STOPPED), CL_TASK_POWERING_ON);
    else if (strcmp(key, "os-stop") == 0)
        simple_action(ctx, req, resp, st, &inst, key, CL_ACTION_STOP, stop_ok,
                      CL_TASK_POWERING_OFF);
    else if (strcmp(key, "reboot") == 0)
        do_reboot(ctx, req, resp, st, &inst, arg);
    else if (strcmp(key, "pause") == 0)
        simple_action(ctx, req, resp, st, &inst, key, CL_ACTION_PAUSE, CL_VM_BIT(CL_VM_ACTIVE),
                      CL_TASK_PAUSING);
    else if (strcmp(key, "unpause") == 0)
        simple_action(ctx, req, resp, st, &inst, key, CL_ACTION_UNPAUSE,
                      CL_VM_BIT(CL_VM_PAUSED), CL_TASK_UNPAUSING);
    else if (strcmp(key, "suspend") == 0)
        simple_action(ctx, req, resp, st, &inst, key, CL_ACTION_SUSPEND,
                      CL_VM_BIT(CL_VM_ACTIVE), CL_TASK_SUSPENDING);
    else if (strcmp(key, "resume") == 0)
        simple_action(ctx, req, resp, st, &inst, key, CL_ACTION_RESUME,
                      CL_VM_BIT(CL_VM_SUSPENDED), CL_TASK_RESUMING);
    else if (strcmp(key, "resize") == 0)
        do_resize(ctx, req, resp, st, &inst, arg);
    else if (strcmp(key, "confirmResize") == 0) {
        if (!api_migrate_cold_end(ctx, req, resp, st, &inst, true)) /* migrate_actions.c */
            do_confirm(resp, st, &inst);
    } else if (strcmp(key, "revertResize") == 0) {
        if (!api_migrate_cold_end(ctx, req, resp, st, &inst, false))
            do_revert(ctx, req, resp, st, &inst);
    } else if (strcmp(key, "migrate") == 0)
        api_migrate_cold(ctx, req, resp, st, &inst, arg); /* migrate_actions.c */
    else if (strcmp(key, "os-getConsoleOutput") == 0)
        do_console(resp, st, &inst, arg);
    else if (strcmp(key, "os-migrateLive") == 0)
        api_migrate_live(ctx, req, resp, st, &inst, arg); /* migrate_actions.c */
    else if (strcmp(key, "evacuate") == 0)
        api_evacuate(ctx, req, resp, st, &inst, arg); /* migrate_actions.c */
    else
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "There is no such action: %.64s", key);
}

json_object *api_actions_addresses_json(cl_store *st, const char *uuid)
{
    char addrs[CL_MSG_MAX_ADDRESSES][CL_MSG_ADDR_LEN];
    size_t n = 0;
    json_object *o = json_object_new_object();

    if (!o || cl_store_instance_addresses_get(st, uuid, addrs, CL_MSG_MAX_ADDRESSES, &n) < 0 ||
        n == 0)
        return o;
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        json_object *a = json_object_new_object();
        json_object_object_add(a, "version",
                               json_object_new_int(strchr(addrs[i], ':') ? 6 : 4));
        json_object_object_add(a, "addr", json_object_new_string(addrs[i]));
        json_object_object_add(a, "OS-EXT-IPS:type", json_object_new_string("fixed"));
        json_object_array_add(arr, a);
    }
    json_object_object_add(o, "nube", arr);
    return o;
}
