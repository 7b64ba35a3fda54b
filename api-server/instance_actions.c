/*
 * instance_actions.c - GET /v2.1/servers/{id}/os-instance-actions and
 * GET /v2.1/servers/{id}/os-instance-actions/{request_id}, read from the instance_actions
 * audit table the store writes with every user action (create, delete, and the server
 * actions).
 *
 * Nova keeps finer "events" per action (compute_build_and_run_instance, ...); nube
 * records one row per action, so the show answer carries one event built from it, with
 * the result once the action finished. Events are shown to admins only, as Nova's
 * default policy (os_compute_api:os-instance-actions:events) does; the server's owner
 * sees the action itself. Actions of a deleted server stay readable, as in Nova.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
#include "cleanup.h"
#include "db.h"
#include "json.h"
#include "log.h"
#include "util.h"

/* The server of {id}, deleted ones included (their history stays readable). */
static bool load(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, cl_store **out_st,
                 cl_instance *out)
{
    const char *id = cl_http_req_param(req, "id");
    const cl_auth *a = api_auth_current();
    cl_store *st = api_store(ctx, resp);
    int rc;

    if (!st)
        return false;
    rc = (id && strlen(id) < CL_UUID_LEN) ? cl_store_instance_get(st, id, out) : -ENOENT;
    if (rc == -ENOENT || (rc == 0 && (!a || !cl_auth_can_read(a, out->project_id)))) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Instance %.64s could not be found.",
                            id ? id : "");
        return false;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read the server (%s).", strerror(-rc));
        return false;
    }
    *out_st = st;
    return true;
}

void api_instance_action_record(cl_store *st, const char *uuid, const char *nova_name)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    const char *rid = cl_log_request_id();
    /* Bus wire names (cl_action_name) are accepted too and mapped to Nova's. */
    if (strncmp(nova_name, "reboot", 6) == 0)
        nova_name = "reboot";
    else if (strcmp(nova_name, "revert_resize") == 0)
        nova_name = "revertResize";
    /* finish_ms 0 and no result: the event reads "in progress" as in Nova until the
     * store closes open actions (delete does). */
    int rc = cl_db_prepare(cl_store_db(st),
                           "INSERT INTO instance_actions (instance_uuid, action, request_id,"
                           " start_ms, finish_ms, result) VALUES (?, ?, ?, ?, 0, '')",
                           &s);
    if (rc == 0) {
        cl_db_bind_text(s, 1, uuid);
        cl_db_bind_text(s, 2, nova_name);
        cl_db_bind_text(s, 3, rid ? rid : "");
        cl_db_bind_int64(s, 4, cl_now_ms());
        rc = cl_db_step_done(s);
    }
    if (rc < 0)
        cl_debug("api.actions", "server %s: cannot record action %s (%s)", uuid, nova_name,
                 strerror(-rc));
}

static json_object *action_json(const cl_instance *inst, const cl_instance_action *act)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "action", json_object_new_string(act->action));
    json_object_object_add(o, "instance_uuid", json_object_new_string(inst->uuid));
    json_object_object_add(o, "message",
                           strcmp(act->result, "error") == 0 ? json_object_new_string("Error")
                                                             : NULL);
    json_object_object_add(o, "project_id", json_object_new_string(inst->project_id));
    json_object_object_add(o, "request_id", json_object_new_string(act->request_id));
    json_object_object_add(o, "start_time", api_time_json(act->start_ms, false));
    json_object_object_add(o, "user_id", json_object_new_string(inst->user_id));
    return o;
}

/* GET /v2.1/servers/{id}/os-instance-actions */
void api_instance_actions_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_free_ cl_instance_action *acts = NULL;
    json_object *body, *list;
    cl_instance inst;
    cl_store *st;
    size_t n = 0;
    int rc;

    if (!api_compute_begin(ud, req, resp, true, NULL) || !load(ud, req, resp, &st, &inst))
        return;
    rc = cl_store_instance_actions(st, inst.uuid, &acts, &n);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read actions (%s).", strerror(-rc));
        return;
    }
    list = json_object_new_array();
    for (size_t i = 0; i < n; i++)
        json_object_array_add(list, action_json(&inst, &acts[i]));
    body = json_object_new_object();
    json_object_object_add(body, "instanceActions", list);
    cl_http_resp_json(resp, 200, body);
}

/* GET /v2.1/servers/{id}/os-instance-actions/{req} */
void api_instance_actions_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_free_ cl_instance_action *acts = NULL;
    const char *rid = cl_http_req_param(req, "req");
    const cl_auth *a;
    json_object *body, *o;
    cl_instance inst;
    cl_store *st;
    size_t n = 0;
    int rc;

    if (!api_compute_begin(ud, req, resp, true, NULL) || !load(ud, req, resp, &st, &inst))
        return;
    a = api_auth_current();
    rc = cl_store_instance_actions(st, inst.uuid, &acts, &n);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read actions (%s).", strerror(-rc));
        return;
    }
    for (size_t i = 0; rid && i < n; i++) {
        if (strcmp(acts[i].request_id, rid) != 0)
            continue;
        o = action_json(&inst, &acts[i]);
        if (cl_auth_is_admin(a)) {
            json_object *events = json_object_new_array();
            json_object *ev = json_object_new_object();
            char name[96];

            snprintf(name, sizeof(name), "compute_%s", acts[i].action);
            json_object_object_add(ev, "event", json_object_new_string(name));
            json_object_object_add(ev, "start_time", api_time_json(acts[i].start_ms, false));
            json_object_object_add(ev, "finish_time", api_time_json(acts[i].finish_ms, false));
            json_object_object_add(ev, "result",
                                   acts[i].result[0]
                                       ? json_object_new_string(
                                             strcmp(acts[i].result, "error") == 0 ? "Error"
                                                                                  : "Success")
                                       : NULL);
            json_object_object_add(ev, "traceback", NULL);
            json_object_array_add(events, ev);
            json_object_object_add(o, "events", events);
        }
        body = json_object_new_object();
        json_object_object_add(body, "instanceAction", o);
        cl_http_resp_json(resp, 200, body);
        return;
    }
    cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Action for request_id %.80s on instance %s not "
                        "found", rid ? rid : "", inst.uuid);
}
