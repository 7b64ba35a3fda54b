/*
 * migrate_actions.c - moving servers through the Compute API (migrate_actions.h).
 *
 * os-migrateLive checks what can be checked at once (admin, state, a named destination
 * that exists, is up and enabled, is not the current host, and runs the same
 * hypervisor) so the caller gets Nova's 400 instead of a silent no-op, sets task_state
 * "migrating" (cl_store_action_begin: no other action can start meanwhile) and hands the
 * work to the scheduler (migration.live). The scheduler re-checks and claims the
 * destination under the database lock; everything after that is reported through the
 * instance (status MIGRATING, then ACTIVE on the new host) and the migration rows.
 *
 * Cold moves (migrate, a resize the host has no room for, confirmResize/revertResize of
 * those) and evacuate follow the same pattern: the same checks (host_arg, dest_ok,
 * begin_failed), a task state, and a message to the scheduler (to_scheduler), which
 * claims, moves the disk between the agents and reports through the instance.
 *
 * The server migrations sub-resource (Nova 2.22+/2.23+) lists in-progress live
 * migrations with memory/disk progress; show also answers finished ones, and adds nube's
 * measured times (elapsed_ms, downtime_ms, total_ms) and the failure reason, which the
 * bench and the tests read. Progress rows come from the scheduler's migration_progress
 * table; missing table or row means zeros.
 */
#include "migrate_actions.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "migration_msg.h"
#include "store_actions.h"
#include "util.h"

#define LOG_MOD "api.migrate"

static bool in_progress(const char *status)
{
    return strcmp(status, "preparing") == 0 || strcmp(status, "running") == 0 ||
           strcmp(status, "migrating") == 0 || strcmp(status, "cancelling") == 0;
}

/* ---- what every move checks (os-migrateLive, migrate, resize elsewhere, evacuate) ---- */

/* The optional "host" of an action body (*host "" when absent or null). false with a 400
 * answered when it is not a short string. */
static bool host_arg(cl_http_resp *resp, json_object *arg, const char **host)
{
    json_object *v = NULL;
    *host = "";
    if (!arg || !json_object_is_type(arg, json_type_object) ||
        !json_object_object_get_ex(arg, "host", &v) || !v)
        return true;
    if (!json_object_is_type(v, json_type_string) ||
        strlen(json_object_get_string(v)) >= CL_HOST_MAX) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid input for field/attribute host.");
        return false;
    }
    *host = json_object_get_string(v);
    return true;
}

/* A named destination: known, not the current host, up and enabled, and (src given) of
 * the source's hypervisor type. false with Nova's 400 answered. */
static bool dest_ok(cl_http_resp *resp, cl_store *st, const char *host, const cl_instance *cur,
                    const cl_host *src)
{
    cl_host d;
    if (cl_store_host_get(st, host, &d) < 0) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Compute host %.64s could not be found.",
                            host);
        return false;
    }
    if (strcmp(host, cur->host) == 0) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "The target host can't be the same one.");
        return false;
    }
    if (!d.up || !d.enabled) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Compute service of %.64s is unavailable "
                            "at this time.", host);
        return false;
    }
    if (src && strcmp(src->hypervisor_type, d.hypervisor_type) != 0) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Unable to migrate instance (%s) to host "
                            "(%.64s): hypervisor type %s differs from %s.", cur->uuid, host,
                            d.hypervisor_type, src->hypervisor_type);
        return false;
    }
    return true;
}

/* cl_store_action_begin refused: 409 for a state or task in the way (inst as it is). */
static void begin_failed(cl_http_resp *resp, int rc, const char *action, const char *uuid,
                         const cl_instance *inst)
{
    if (rc == -EBUSY || rc == -EPERM)
        cl_http_resp_errorf(resp, CL_E_CONFLICT, "Cannot '%s' instance %s while it is in %s %s",
                            action, uuid, rc == -EBUSY ? "task_state" : "vm_state",
                            rc == -EBUSY ? cl_task_state_name(inst->task_state)
                                         : cl_vm_state_name(inst->vm_state));
    else
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot change the server (%s).",
                            strerror(-rc));
}

/* Hand the move to the scheduler (body taken over). false with the task undone and 503
 * answered when its queue is full. */
static bool to_scheduler(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp,
                         cl_store *st, const char *uuid, const char *type, json_object *b)
{
    if (cl_bus_send(ctx->bus, NULL, type, req->request_id, b, true, NULL) == 0)
        return true;
    cl_store_instance_set_state(st, uuid, -1, CL_TASK_NONE, -1, NULL, 0);
    cl_http_resp_errorf(resp, CL_E_UNAVAILABLE, "The scheduler queue is full; try again "
                        "later.");
    return false;
}

void api_migrate_live(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, cl_store *st,
                      const cl_instance *cur, json_object *arg)
{
    const char *host = "", *block = "auto";
    json_object *v = NULL;
    cl_instance inst = *cur;
    int rc;

    if (!api_require_admin(resp, "os_compute_api:os-migrate-server:migrate_live"))
        return;
    if (!json_object_is_type(arg, json_type_object)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid input for field/attribute "
                            "os-migrateLive.");
        return;
    }
    if (!host_arg(resp, arg, &host))
        return;
    if (json_object_object_get_ex(arg, "block_migration", &v) && v) {
        /* false asks for shared storage in Nova (< 2.25), and the stock client sends it
         * by default; nube detects shared storage itself, so false means "auto": the
         * disk is copied when the destination does not already see it. */
        if (json_object_is_type(v, json_type_boolean))
            block = json_object_get_boolean(v) ? "true" : "auto";
        else if (json_object_is_type(v, json_type_string) &&
                 strcmp(json_object_get_string(v), "auto") == 0)
            block = "auto";
        else if (json_object_is_type(v, json_type_string) &&
                 strcmp(json_object_get_string(v), "true") == 0)
            block = "true";
        else if (json_object_is_type(v, json_type_string) &&
                 strcmp(json_object_get_string(v), "false") == 0)
            block = "auto";
        else {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid input for field/attribute "
                                "block_migration.");
            return;
        }
    }
    if (host[0]) {
        cl_host s;
        if (!dest_ok(resp, st, host, cur, cl_store_host_get(st, cur->host, &s) == 0 ? &s
                                                                                  : NULL))
            return;
    }
    rc = cl_store_action_begin(st, cur->uuid, CL_VM_BIT(CL_VM_ACTIVE) | CL_VM_BIT(CL_VM_PAUSED),
                               CL_TASK_MIGRATING, &inst);
    if (rc == 0 && !inst.host[0])
        rc = -EPERM;
    if (rc < 0) {
        begin_failed(resp, rc, "os-migrateLive", cur->uuid, &inst);
        return;
    }
    json_object *b = json_object_new_object();
    json_object_object_add(b, "instance_uuid", json_object_new_string(cur->uuid));
    json_object_object_add(b, "host", json_object_new_string(host));
    json_object_object_add(b, "block", json_object_new_string(block));
    if (!to_scheduler(ctx, req, resp, st, cur->uuid, CL_MSG_MIGRATION_LIVE, b))
        return;
    cl_info(LOG_MOD, "server %s: live migration to %s requested", cur->uuid,
            host[0] ? host : "(scheduler's choice)");
    cl_http_resp_json(resp, 202, NULL);
}

/* Cold migration: the scheduler claims and moves (scheduler/migrations.c, on_cold): the
 * source exports the stopped guest's overlay, the destination pulls it over the agents'
 * HTTP ports. QEMU hosts and test-driver hosts (no disk file) can; Xen and LXC guests
 * keep other files (rootfs, image properties) that are not moved yet. */
#define MSG_COLD "migration.cold"
#define MSG_COLD_CONFIRM "migration.confirm"
#define MSG_COLD_REVERT "migration.revert"

static bool cold_capable(const cl_host *h)
{
    return strcasecmp(h->hypervisor_type, "test") == 0 ||
           strcasecmp(h->hypervisor_type, "QEMU") == 0 ||
           strcasecmp(h->hypervisor_type, "KVM") == 0;
}

/* A stopped server moves too (Nova keeps its power state: SHUTOFF where it lands). */
#define COLD_STATES (CL_VM_BIT(CL_VM_ACTIVE) | CL_VM_BIT(CL_VM_STOPPED))

void api_migrate_cold(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, cl_store *st,
                      const cl_instance *cur, json_object *arg)
{
    const char *host = "";
    cl_instance inst = *cur;
    cl_host s;
    int rc;

    if (!api_require_admin(resp, "os_compute_api:os-migrate-server:migrate"))
        return;
    if (arg && !json_object_is_type(arg, json_type_object) &&
        !json_object_is_type(arg, json_type_null)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid input for field/attribute "
                            "migrate.");
        return;
    }
    if (!host_arg(resp, arg, &host))
        return;
    if (!cur->host[0] || cl_store_host_get(st, cur->host, &s) < 0) {
        cl_http_resp_errorf(resp, CL_E_CONFLICT, "Cannot 'migrate' instance %s: it has no "
                            "host.", cur->uuid);
        return;
    }
    if (!cold_capable(&s)) {
        cl_http_resp_errorf(resp, CL_E_NOT_IMPLEMENTED, "Cold migration of %s instances is "
                            "not implemented yet; use os-migrateLive.", s.hypervisor_type);
        return;
    }
    if (host[0] && !dest_ok(resp, st, host, cur, &s))
        return;
    rc = cl_store_action_begin(st, cur->uuid, COLD_STATES, CL_TASK_RESIZE_MIGRATING, &inst);
    if (rc < 0) {
        begin_failed(resp, rc, "migrate", cur->uuid, &inst);
        return;
    }
    json_object *b = json_object_new_object();
    json_object_object_add(b, "instance_uuid", json_object_new_string(cur->uuid));
    json_object_object_add(b, "host", json_object_new_string(host));
    if (!to_scheduler(ctx, req, resp, st, cur->uuid, MSG_COLD, b))
        return;
    cl_info(LOG_MOD, "server %s: cold migration to %s requested", cur->uuid,
            host[0] ? host : "(scheduler's choice)");
    api_instance_action_record(st, cur->uuid, "migrate");
    cl_http_resp_json(resp, 202, NULL);
}

bool api_resize_other_host(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp,
                           cl_store *st, const cl_instance *cur, const cl_flavor *fl)
{
    cl_instance inst = *cur;
    cl_host s;

    if (!cur->host[0] || cl_store_host_get(st, cur->host, &s) < 0 || !cold_capable(&s))
        return false;
    /* A hint, not a claim (the scheduler claims): with no other host that looks big
     * enough, answer the same-host 400 at once rather than fail later. */
    _cleanup_free_ cl_host *hosts = NULL;
    size_t n = 0;
    bool some = false;
    if (cl_store_host_list(st, &hosts, &n) < 0)
        return false;
    for (size_t i = 0; i < n && !some; i++)
        some = strcmp(hosts[i].name, s.name) != 0 && hosts[i].up && hosts[i].enabled &&
               strcmp(hosts[i].hypervisor_type, s.hypervisor_type) == 0 &&
               cl_host_free_vcpus(&hosts[i]) >= fl->vcpus &&
               cl_host_free_ram_mb(&hosts[i]) >= fl->ram_mb &&
               cl_host_free_disk_gb(&hosts[i]) >= fl->disk_gb;
    if (!some)
        return false;
    int rc = cl_store_action_begin(st, cur->uuid, COLD_STATES, CL_TASK_RESIZE_MIGRATING,
                                   &inst);
    if (rc < 0) {
        begin_failed(resp, rc, "resize", cur->uuid, &inst);
        return true;
    }
    json_object *b = json_object_new_object();
    json_object_object_add(b, "instance_uuid", json_object_new_string(cur->uuid));
    json_object_object_add(b, "host", json_object_new_string(""));
    json_object_object_add(b, "flavor_id", json_object_new_string(fl->id));
    if (!to_scheduler(ctx, req, resp, st, cur->uuid, MSG_COLD, b))
        return true;
    cl_info(LOG_MOD, "server %s: resize to %s on another host requested (%s is full)",
            cur->uuid, fl->name, cur->host);
    api_instance_action_record(st, cur->uuid, "resize");
    cl_http_resp_json(resp, 202, NULL);
    return true;
}

bool api_migrate_cold_end(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp,
                          cl_store *st, const cl_instance *cur, bool confirm)
{
    _cleanup_free_ cl_migration_row *rows = NULL;
    size_t n = 0;
    bool pending = false;
    cl_instance inst = *cur;
    const char *name = confirm ? "confirmResize" : "revertResize";

    if (cl_store_migrations_list(st, NULL, "finished", cur->uuid, NULL, &rows, &n) < 0)
        return false;
    for (size_t i = 0; i < n; i++)
        pending |= (strcmp(rows[i].type, "migration") == 0 ||
                    strcmp(rows[i].type, "resize") == 0) &&
                   strcmp(rows[i].source_host, rows[i].dest_host) != 0;
    if (!pending)
        return false;
    int rc = cl_store_action_begin(st, cur->uuid, CL_VM_BIT(CL_VM_RESIZED),
                                   confirm ? CL_TASK_RESIZE_CONFIRMING
                                           : CL_TASK_RESIZE_REVERTING, &inst);
    if (rc < 0) {
        begin_failed(resp, rc, name, cur->uuid, &inst);
        return true;
    }
    json_object *b = json_object_new_object();
    json_object_object_add(b, "instance_uuid", json_object_new_string(cur->uuid));
    if (!to_scheduler(ctx, req, resp, st, cur->uuid,
                      confirm ? MSG_COLD_CONFIRM : MSG_COLD_REVERT, b))
        return true;
    cl_info(LOG_MOD, "server %s: %s of the cold migration requested", cur->uuid, name);
    api_instance_action_record(st, cur->uuid, name);
    cl_http_resp_json(resp, confirm ? 204 : 202, NULL);
    return true;
}

void api_evacuate(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, cl_store *st,
                  const cl_instance *cur, json_object *arg)
{
    const char *host = "";
    cl_instance inst = *cur;
    cl_host src;
    int rc;

    if (!api_require_admin(resp, "os_compute_api:os-evacuate"))
        return;
    if (!host_arg(resp, arg, &host))
        return;
    if (!cur->host[0] || cl_store_host_get(st, cur->host, &src) < 0) {
        cl_http_resp_errorf(resp, CL_E_CONFLICT, "Cannot 'evacuate' instance %s: it has no "
                            "host.", cur->uuid);
        return;
    }
    if (src.up) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Compute service of %s is still in use.",
                            src.name);
        return;
    }
    if (host[0]) {
        cl_host d;
        if (cl_store_host_get(st, host, &d) < 0 || !d.up || !d.enabled ||
            strcmp(host, cur->host) == 0) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Compute host %.64s could not be "
                                "found or is not available.", host);
            return;
        }
    }
    rc = cl_store_action_begin(st, cur->uuid, CL_VM_BIT(CL_VM_ACTIVE) |
                               CL_VM_BIT(CL_VM_STOPPED) | CL_VM_BIT(CL_VM_ERROR) |
                               CL_VM_BIT(CL_VM_PAUSED), CL_TASK_MIGRATING, &inst);
    if (rc < 0) {
        begin_failed(resp, rc, "evacuate", cur->uuid, &inst);
        return;
    }
    json_object *b = json_object_new_object();
    json_object_object_add(b, "instance_uuid", json_object_new_string(cur->uuid));
    json_object_object_add(b, "host", json_object_new_string(host));
    if (!to_scheduler(ctx, req, resp, st, cur->uuid, CL_MSG_MIGRATION_EVACUATE, b))
        return;
    cl_info(LOG_MOD, "server %s: evacuation from %s requested", cur->uuid, cur->host);
    /* 2.14+: 200 without a body (the adminPass of older microversions is not kept). */
    cl_http_resp_json(resp, 200, NULL);
}

/* ---- the server migrations sub-resource ---- */

typedef struct progress {
    int64_t v[10];
    char fault[512];
} progress;

static const char *const prog_cols[] = {"memory_total", "memory_processed",
                                        "memory_remaining", "disk_total", "disk_processed",
                                        "disk_remaining", "elapsed_ms", "downtime_ms",
                                        "total_ms"};

static void progress_get(cl_store *st, const char *mig, progress *out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    memset(out, 0, sizeof(*out));
    if (cl_db_prepare(cl_store_db(st),
                      "SELECT memory_total, memory_processed, memory_remaining, disk_total,"
                      " disk_processed, disk_remaining, elapsed_ms, downtime_ms, total_ms,"
                      " fault FROM migration_progress WHERE migration_uuid = ?", &s) < 0)
        return; /* no table yet: nothing measured */
    cl_db_bind_text(s, 1, mig);
    if (sqlite3_step(s) != SQLITE_ROW)
        return;
    for (int i = 0; i < 9; i++)
        out->v[i] = sqlite3_column_int64(s, i);
    cl_db_column_text(s, 9, out->fault, sizeof(out->fault));
}

static json_object *mig_json(cl_store *st, const cl_migration_row *m, int mv)
{
    static const char *const names[] = {"memory_total_bytes", "memory_processed_bytes",
                                        "memory_remaining_bytes", "disk_total_bytes",
                                        "disk_processed_bytes", "disk_remaining_bytes"};
    progress p;
    json_object *o = json_object_new_object();

    progress_get(st, m->uuid, &p);
    json_object_object_add(o, "id", json_object_new_int64(m->id));
    json_object_object_add(o, "server_uuid", json_object_new_string(m->instance_uuid));
    json_object_object_add(o, "source_compute", json_object_new_string(m->source_host));
    json_object_object_add(o, "source_node", json_object_new_string(m->source_host));
    json_object_object_add(o, "dest_compute", json_object_new_string(m->dest_host));
    json_object_object_add(o, "dest_node", json_object_new_string(m->dest_host));
    json_object_object_add(o, "dest_host", json_object_new_string(""));
    json_object_object_add(o, "status", json_object_new_string(m->status));
    for (size_t i = 0; i < CL_ARRAY_SIZE(names); i++)
        json_object_object_add(o, names[i], json_object_new_int64(p.v[i]));
    json_object_object_add(o, "created_at", api_time_json(m->created_ms, false));
    json_object_object_add(o, "updated_at", api_time_json(m->updated_ms, false));
    if (mv >= 59)
        json_object_object_add(o, "uuid", json_object_new_string(m->uuid));
    if (mv >= 80) {
        json_object_object_add(o, "user_id", json_object_new_string(m->user_id));
        json_object_object_add(o, "project_id", json_object_new_string(m->project_id));
    }
    /* nube's measurements (not in Nova): what the bench and operators compare. */
    for (size_t i = 6; i < CL_ARRAY_SIZE(prog_cols); i++)
        json_object_object_add(o, prog_cols[i], json_object_new_int64(p.v[i]));
    json_object_object_add(o, "fault", json_object_new_string(p.fault));
    return o;
}

/* Admin + the server; *rows: its live migrations (newest first). */
static bool load_rows(const cl_http_req *req, cl_http_resp *resp, void *ud, bool write,
                      int *mv, cl_store **st, cl_instance *inst, cl_migration_row **rows,
                      size_t *n)
{
    api_ctx *ctx = ud;
    if (!api_compute_begin(ctx, req, resp, true, mv) ||
        !api_require_admin(resp, "os_compute_api:servers:migrations:index") ||
        !api_server_load(ctx, req, resp, write, "os_compute_api:servers:migrations:index", st,
                         inst))
        return false;
    int rc = cl_store_migrations_list(*st, NULL, NULL, inst->uuid, "live-migration", rows, n);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot list migrations (%s).", strerror(-rc));
        return false;
    }
    return true;
}

static const cl_migration_row *find_row(const cl_migration_row *rows, size_t n, const char *mid)
{
    for (size_t i = 0; mid && i < n; i++) {
        char id[32];
        snprintf(id, sizeof(id), "%" PRId64, rows[i].id);
        if (strcmp(id, mid) == 0 || strcmp(rows[i].uuid, mid) == 0)
            return &rows[i];
    }
    return NULL;
}

void api_server_migrations_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_free_ cl_migration_row *rows = NULL;
    size_t n = 0;
    int mv = API_MV_MIN;
    cl_store *st;
    cl_instance inst;

    if (!load_rows(req, resp, ud, false, &mv, &st, &inst, &rows, &n))
        return;
    json_object *list = json_object_new_array();
    for (size_t i = 0; i < n; i++)
        if (in_progress(rows[i].status))
            json_object_array_add(list, mig_json(st, &rows[i], mv));
    json_object *body = json_object_new_object();
    json_object_object_add(body, "migrations", list);
    cl_http_resp_json(resp, 200, body);
}

void api_server_migration_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_free_ cl_migration_row *rows = NULL;
    size_t n = 0;
    int mv = API_MV_MIN;
    cl_store *st;
    cl_instance inst;

    if (!load_rows(req, resp, ud, false, &mv, &st, &inst, &rows, &n))
        return;
    const cl_migration_row *m = find_row(rows, n, cl_http_req_param(req, "mid"));
    if (!m) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Migration %.64s could not be found.",
                            cl_http_req_param(req, "mid"));
        return;
    }
    json_object *body = json_object_new_object();
    json_object_object_add(body, "migration", mig_json(st, m, mv));
    cl_http_resp_json(resp, 200, body);
}

/* Abort or force-complete an in-progress live migration of the server. */
static void control(const cl_http_req *req, cl_http_resp *resp, void *ud, const char *action)
{
    api_ctx *ctx = ud;
    _cleanup_free_ cl_migration_row *rows = NULL;
    size_t n = 0;
    int mv = API_MV_MIN;
    cl_store *st;
    cl_instance inst;

    if (!load_rows(req, resp, ud, true, &mv, &st, &inst, &rows, &n))
        return;
    const cl_migration_row *m = find_row(rows, n, cl_http_req_param(req, "mid"));
    if (!m) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Migration %.64s could not be found.",
                            cl_http_req_param(req, "mid"));
        return;
    }
    if (!in_progress(m->status)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Migration %s is not in progress "
                            "(status %s).", m->uuid, m->status);
        return;
    }
    json_object *b = json_object_new_object();
    json_object_object_add(b, "migration_uuid", json_object_new_string(m->uuid));
    json_object_object_add(b, "instance_uuid", json_object_new_string(inst.uuid));
    json_object_object_add(b, "action", json_object_new_string(action));
    int rc = cl_bus_send(ctx->bus, NULL, CL_MSG_MIGRATION_ABORT, req->request_id, b, true,
                         NULL);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_UNAVAILABLE, "The scheduler queue is full; try again "
                            "later.");
        return;
    }
    cl_info(LOG_MOD, "server %s: %s of migration %s requested", inst.uuid, action, m->uuid);
    cl_http_resp_json(resp, 202, NULL);
}

void api_server_migration_delete(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    control(req, resp, ud, "abort");
}

void api_server_migration_action(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_json_ json_object *body = NULL;
    cl_error err = {0};
    json_object *v = NULL;

    if (cl_http_req_json(req, &body, &err) < 0) {
        /* Answer after the auth prologue would be nicer; a bad body is a 400 anyway. */
        cl_http_resp_error(resp, &err);
        return;
    }
    if (!json_object_object_get_ex(body, "force_complete", &v)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid input: expected "
                            "force_complete.");
        return;
    }
    control(req, resp, ud, "force_complete");
}
