/*
 * migrations.c - the scheduler drives a live migration step by step (migrations.h).
 *
 *   api   --migration.live-->     sched   pre-checks, claim on the destination
 *                                         (cl_store_migration_begin: the migration holds
 *                                         the source allocation, the instance the dest's)
 *   sched --migration.prepare-->  dest    instance dir + overlay; its migration URI
 *   dest  --migration.prepared--> sched
 *   sched --migration.start-->    src     virDomainMigrateToURI3 + monitor
 *   src   --migration.progress--> sched   (unreliable) -> migration_progress
 *   src   --migration.done-->     sched   what the source hypervisor holds now
 *   sched --migration.check-->    dest    what the destination hypervisor holds
 *   dest  --migration.checked-->  sched   cl_store_migration_finish(here), states
 *   sched --migration.cleanup-->  src     (moved) drop record and disk
 *
 * Every step is idempotent and keeps its state in the controller DB (the migrations row
 * and its status), so the handlers need no memory between messages: a resent message
 * finds the row already past its step and does nothing.
 *
 * Status (Nova's live-migration statuses): preparing -> running -> completed, or
 * error / cancelled (an abort was asked: "cancelling" in between).
 *
 * Progress lives in migration_progress, a table this module creates when missing
 * (memory/disk total/processed/remaining, elapsed and downtime, the source's verdict):
 * the placement schema step has no columns for it and is not ours to change.
 */
#include "scheduler/migrations.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "cleanup.h"
#include "db.h"
#include "json.h"
#include "log.h"
#include "messages.h"
#include "migration_msg.h"
#include "model.h"
#include "store_actions.h"
#include "store_compute.h"
#include "store_placement.h"
#include "util.h"

#define LOG_MOD "sched.migrate"

static const char *jstr(json_object *body, const char *key)
{
    const char *s = NULL;
    if (cl_json_get_str(body, key, false, &s, NULL) < 0 || !s)
        return "";
    return s;
}

static bool jbool(json_object *body, const char *key)
{
    bool b = false;
    (void)cl_json_get_bool(body, key, false, &b, NULL);
    return b;
}

static int64_t jint(json_object *body, const char *key)
{
    int64_t v = 0;
    (void)cl_json_get_int64(body, key, false, &v, NULL);
    return v;
}

static int ensure_progress_table(cl_store *st)
{
    return cl_db_exec(cl_store_db(st),
                      "CREATE TABLE IF NOT EXISTS migration_progress ("
                      "  migration_uuid TEXT PRIMARY KEY,"
                      "  memory_total INTEGER NOT NULL DEFAULT 0,"
                      "  memory_processed INTEGER NOT NULL DEFAULT 0,"
                      "  memory_remaining INTEGER NOT NULL DEFAULT 0,"
                      "  disk_total INTEGER NOT NULL DEFAULT 0,"
                      "  disk_processed INTEGER NOT NULL DEFAULT 0,"
                      "  disk_remaining INTEGER NOT NULL DEFAULT 0,"
                      "  elapsed_ms INTEGER NOT NULL DEFAULT 0,"
                      "  downtime_ms INTEGER NOT NULL DEFAULT 0,"
                      "  total_ms INTEGER NOT NULL DEFAULT 0,"
                      "  source_state TEXT NOT NULL DEFAULT '',"
                      "  fault TEXT NOT NULL DEFAULT '',"
                      "  updated_ms INTEGER NOT NULL DEFAULT 0)");
}

static int set_status(cl_store *st, const char *mig, const char *status)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st),
                          "UPDATE migrations SET status = ?2, updated_ms = ?3 WHERE uuid = ?1",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, mig);
    cl_db_bind_text(s, 2, status);
    cl_db_bind_int64(s, 3, cl_now_ms());
    return cl_db_step_done(s);
}

/* Upsert the integer columns named in keys from body (and optional text columns). */
static void progress_put(cl_store *st, const char *mig, json_object *body,
                         const char *const *keys, size_t nkeys, const char *source_state,
                         const char *fault)
{
    char sql[1024];
    size_t used = 0;
    if (ensure_progress_table(st) < 0)
        return;
    used += (size_t)snprintf(sql + used, sizeof(sql) - used,
                             "INSERT INTO migration_progress (migration_uuid, updated_ms) "
                             "VALUES (?1, ?2) ON CONFLICT(migration_uuid) DO UPDATE SET "
                             "updated_ms = ?2");
    for (size_t i = 0; i < nkeys && used < sizeof(sql); i++)
        used += (size_t)snprintf(sql + used, sizeof(sql) - used, ", %s = ?%zu", keys[i], i + 5);
    if (used >= sizeof(sql))
        return;
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    if (cl_db_prepare(cl_store_db(st), sql, &s) < 0)
        return;
    cl_db_bind_text(s, 1, mig);
    cl_db_bind_int64(s, 2, cl_now_ms());
    for (size_t i = 0; i < nkeys; i++)
        cl_db_bind_int64(s, (int)i + 5, jint(body, keys[i]));
    (void)cl_db_step_done(s);
    if (source_state || fault) {
        _cleanup_stmt_ sqlite3_stmt *s2 = NULL;
        if (cl_db_prepare(cl_store_db(st),
                          "UPDATE migration_progress SET source_state = COALESCE(?2, "
                          "source_state), fault = COALESCE(?3, fault) WHERE migration_uuid = ?1",
                          &s2) == 0) {
            cl_db_bind_text(s2, 1, mig);
            if (source_state)
                cl_db_bind_text(s2, 2, source_state);
            if (fault)
                cl_db_bind_text(s2, 3, fault);
            (void)cl_db_step_done(s2);
        }
    }
}

static void progress_source_state(cl_store *st, const char *mig, char *out, size_t len)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    out[0] = '\0';
    if (cl_db_prepare(cl_store_db(st), "SELECT source_state FROM migration_progress WHERE "
                                       "migration_uuid = ?", &s) < 0)
        return;
    cl_db_bind_text(s, 1, mig);
    if (sqlite3_step(s) == SQLITE_ROW)
        cl_db_column_text(s, 0, out, len);
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

static int send(cl_bus *bus, const char *peer, const char *type, const cl_bus_msg *why,
                json_object *body)
{
    if (!body)
        return -ENOMEM;
    int r = cl_bus_send(bus, peer, type, why->req[0] ? why->req : NULL, body, true, NULL);
    if (r < 0)
        cl_err(LOG_MOD, "cannot queue %s for %s: %s", type, peer, strerror(-r));
    return r;
}

/* The move did not happen (before any guest state moved): give the source allocation
 * back, clear the task, record why. */
static void fail_early(cl_store *st, const char *mig, const char *uuid, const char *status,
                       const char *fault)
{
    if (mig && mig[0]) {
        int r = cl_store_migration_finish(st, mig, false);
        if (r < 0 && r != -ENOENT)
            cl_err(LOG_MOD, "migration %s: cannot undo the claim: %s", mig, strerror(-r));
        set_status(st, mig, status);
        progress_put(st, mig, NULL, NULL, 0, NULL, fault);
    }
    cl_store_instance_set_state(st, uuid, -1, CL_TASK_NONE, -1, NULL, 0);
    cl_warn(LOG_MOD, "live migration of %s %s: %s", uuid, status, fault);
}

/* ---- migration.live ---- */

static int by_free_ram_desc(const void *a, const void *b)
{
    int64_t fa = cl_host_free_ram_mb(a), fb = cl_host_free_ram_mb(b);
    return fa < fb ? 1 : fa > fb ? -1 : 0;
}

/* Pick (want "" = the up, enabled host of the same hypervisor type with the most free
 * RAM that has room) and claim the destination: cl_store_migration_begin. 0, or a
 * negative errno with fault filled. */
static int pick_and_claim(cl_store *st, const cl_instance *inst, const cl_host *src,
                          const char *want, const char *type, cl_migration *m, char *fault,
                          size_t flen)
{
    int r;
    memset(m, 0, sizeof(*m));
    if (want[0]) {
        cl_host d;
        r = cl_store_host_get(st, want, &d);
        if (r < 0)
            snprintf(fault, flen, "destination %.64s is unknown", want);
        else if (!d.up || !d.enabled)
            snprintf(fault, flen, "destination %.64s is %s", want, !d.up ? "down" : "disabled");
        else if (strcmp(d.hypervisor_type, src->hypervisor_type) != 0)
            snprintf(fault, flen, "destination %.64s runs %s, the source %s", want,
                     d.hypervisor_type, src->hypervisor_type);
        else if ((r = cl_store_migration_begin(st, inst->uuid, want, type, m)) < 0)
            snprintf(fault, flen, "cannot claim on %.64s: %s", want,
                     r == -ENOSPC ? "not enough room" : strerror(-r));
        return r < 0 ? r : fault[0] ? -EINVAL : 0;
    }
    _cleanup_free_ cl_host *hosts = NULL;
    size_t n = 0;
    r = cl_store_host_list(st, &hosts, &n);
    if (r == 0)
        qsort(hosts, n, sizeof(*hosts), by_free_ram_desc);
    r = -ENOSPC;
    for (size_t i = 0; i < n && r < 0; i++) {
        const cl_host *h = &hosts[i];
        if (strcmp(h->name, src->name) == 0 || !h->up || !h->enabled ||
            strcmp(h->hypervisor_type, src->hypervisor_type) != 0)
            continue;
        r = cl_store_migration_begin(st, inst->uuid, h->name, type, m);
        if (r == -EBUSY)
            break;
    }
    if (r < 0)
        snprintf(fault, flen, "no valid host: %s", r == -EBUSY ? "a migration is in progress"
                 : "no other up, enabled host of the same hypervisor type has room");
    return r;
}

static void on_live(cl_store *st, cl_bus *bus, const cl_bus_msg *msg)
{
    const char *uuid = jstr(msg->body, "instance_uuid");
    const char *want = jstr(msg->body, "host");
    const char *block = jstr(msg->body, "block");
    cl_instance inst;
    cl_host src;
    cl_migration m;
    char fault[512] = "";

    if (!cl_uuid_valid(uuid) || cl_store_instance_get(st, uuid, &inst) < 0) {
        cl_warn(LOG_MOD, "migration.live for unknown instance %s", uuid);
        return;
    }
    if (inst.task_state != CL_TASK_MIGRATING || !inst.host[0]) {
        cl_debug(LOG_MOD, "instance %s is not waiting for a migration", uuid);
        return;
    }
    if (cl_store_host_get(st, inst.host, &src) < 0) {
        fail_early(st, NULL, uuid, "error", "the source host is unknown");
        return;
    }
    if (pick_and_claim(st, &inst, &src, want, "live-migration", &m, fault,
                       sizeof(fault)) < 0) {
        fail_early(st, NULL, uuid, "error", fault);
        return;
    }
    set_status(st, m.uuid, "preparing");
    cl_msg_instance spec;
    spec_of(&inst, &spec);
    json_object *b = cl_msg_spawn_encode(&spec);
    if (b) {
        json_object_object_add(b, "migration_uuid", json_object_new_string(m.uuid));
        json_object_object_add(b, "source_host", json_object_new_string(m.source_host));
        json_object_object_add(b, "block", json_object_new_string(block[0] ? block : "auto"));
    }
    if (send(bus, m.dest_host, CL_MSG_MIGRATION_PREPARE, msg, b) < 0) {
        fail_early(st, m.uuid, uuid, "error", "cannot reach the destination");
        return;
    }
    cl_info(LOG_MOD, "migration %s: %s %s -> %s claimed, preparing the destination", m.uuid,
            uuid, m.source_host, m.dest_host);
}

/* ---- migration.evacuate ---- */

/* The source host is down: claim elsewhere, move the instance there at once (the dead
 * host's allocation is released), and spawn it from its image. */
static void on_evacuate(cl_store *st, cl_bus *bus, const cl_bus_msg *msg)
{
    const char *uuid = jstr(msg->body, "instance_uuid");
    cl_instance inst;
    cl_host src;
    cl_migration m;
    char fault[512] = "";

    if (!cl_uuid_valid(uuid) || cl_store_instance_get(st, uuid, &inst) < 0 ||
        inst.task_state != CL_TASK_MIGRATING || !inst.host[0])
        return;
    if (cl_store_host_get(st, inst.host, &src) < 0) {
        fail_early(st, NULL, uuid, "error", "the source host is unknown");
        return;
    }
    if (src.up) {
        fail_early(st, NULL, uuid, "error", "refusing to evacuate: the host is up again");
        return;
    }
    if (pick_and_claim(st, &inst, &src, jstr(msg->body, "host"), "evacuation", &m, fault,
                       sizeof(fault)) < 0) {
        fail_early(st, NULL, uuid, "error", fault);
        return;
    }
    int r = cl_store_migration_finish(st, m.uuid, true);
    if (r < 0) {
        fail_early(st, m.uuid, uuid, "error", "cannot record the evacuation");
        return;
    }
    set_status(st, m.uuid, "done");
    cl_store_instance_set_state(st, uuid, -1, CL_TASK_SPAWNING, CL_POWER_NOSTATE, NULL, 0);
    cl_msg_instance spec;
    spec_of(&inst, &spec);
    (void)send(bus, m.dest_host, CL_MSG_INSTANCE_SPAWN, msg, cl_msg_spawn_encode(&spec));
    cl_info(LOG_MOD, "evacuation %s: %s rebuilt from its image on %s (%s is down)", m.uuid,
            uuid, m.dest_host, m.source_host);
}

/* ---- migration.prepared ---- */

static void send_check(cl_store *st, cl_bus *bus, const cl_bus_msg *msg, const cl_migration *m,
                       bool source_has)
{
    cl_instance inst;
    cl_msg_instance spec;
    if (cl_store_instance_get(st, m->instance_uuid, &inst) < 0)
        return;
    spec_of(&inst, &spec);
    json_object *b = cl_msg_spawn_encode(&spec);
    if (b) {
        json_object_object_add(b, "migration_uuid", json_object_new_string(m->uuid));
        json_object_object_add(b, "source_has", json_object_new_boolean(source_has));
    }
    (void)send(bus, m->dest_host, CL_MSG_MIGRATION_CHECK, msg, b);
}

static void on_prepared(cl_store *st, cl_bus *bus, const cl_bus_msg *msg)
{
    const char *mig = jstr(msg->body, "migration_uuid");
    cl_migration m;

    if (cl_store_migration_get(st, mig, &m) < 0 || strcmp(m.status, "preparing") != 0)
        return; /* unknown or a resend */
    if (strcmp(msg->peer, m.dest_host) != 0) {
        cl_warn(LOG_MOD, "migration.prepared for %s from %s, not the destination", mig,
                msg->peer);
        return;
    }
    if (!jbool(msg->body, "ok")) {
        fail_early(st, mig, m.instance_uuid, "error", jstr(msg->body, "fault"));
        return;
    }
    if (!jstr(msg->body, "uri")[0]) {
        /* Nothing was copied; the check lets the destination remove its overlay. */
        send_check(st, bus, msg, &m, true);
        fail_early(st, mig, m.instance_uuid, "error", "the destination advertises no "
                   "migration URI ([agent] migration_uri / migration_address)");
        return;
    }
    json_object *b = json_object_new_object();
    json_object_object_add(b, "migration_uuid", json_object_new_string(mig));
    json_object_object_add(b, "instance_uuid", json_object_new_string(m.instance_uuid));
    json_object_object_add(b, "dest_host", json_object_new_string(m.dest_host));
    json_object_object_add(b, "dest_uri", json_object_new_string(jstr(msg->body, "uri")));
    json_object_object_add(b, "dest_address",
                           json_object_new_string(jstr(msg->body, "address")));
    json_object_object_add(b, "dest_instances_dir",
                           json_object_new_string(jstr(msg->body, "instances_dir")));
    json_object_object_add(b, "dest_image_dir",
                           json_object_new_string(jstr(msg->body, "image_dir")));
    json_object_object_add(b, "dest_cache_dir",
                           json_object_new_string(jstr(msg->body, "cache_dir")));
    json_object_object_add(b, "shared", json_object_new_boolean(jbool(msg->body, "shared")));
    set_status(st, mig, "running");
    if (send(bus, m.source_host, CL_MSG_MIGRATION_START, msg, b) < 0) {
        send_check(st, bus, msg, &m, true);
        fail_early(st, mig, m.instance_uuid, "error", "cannot reach the source");
        return;
    }
    cl_info(LOG_MOD, "migration %s: destination %s ready, source %s starts", mig, m.dest_host,
            m.source_host);
}

/* ---- progress, done, checked ---- */

static void on_progress(cl_store *st, const cl_bus_msg *msg)
{
    static const char *const keys[] = {"memory_total", "memory_processed", "memory_remaining",
                                       "disk_total", "disk_processed", "disk_remaining",
                                       "elapsed_ms"};
    const char *mig = jstr(msg->body, "migration_uuid");
    cl_migration m;
    if (cl_store_migration_get(st, mig, &m) < 0 || strcmp(msg->peer, m.source_host) != 0)
        return;
    progress_put(st, mig, msg->body, keys, CL_ARRAY_SIZE(keys), NULL, NULL);
}

static void on_done(cl_store *st, cl_bus *bus, const cl_bus_msg *msg)
{
    static const char *const keys[] = {"total_ms"};
    const char *mig = jstr(msg->body, "migration_uuid");
    const char *source = jstr(msg->body, "source");
    cl_migration m;

    if (cl_store_migration_get(st, mig, &m) < 0 || strcmp(msg->peer, m.source_host) != 0)
        return;
    if (strcmp(m.status, "running") != 0 && strcmp(m.status, "cancelling") != 0)
        return;
    progress_put(st, mig, msg->body, keys, 1, source, jstr(msg->body, "fault"));
    bool source_has = strcmp(source, "running") == 0 || strcmp(source, "paused") == 0;
    cl_info(LOG_MOD, "migration %s: source says %s%s%s; asking %s", mig, source,
            jstr(msg->body, "fault")[0] ? ", " : "", jstr(msg->body, "fault"), m.dest_host);
    send_check(st, bus, msg, &m, source_has);
}

static void on_checked(cl_store *st, cl_bus *bus, const cl_bus_msg *msg)
{
    static const char *const keys[] = {"downtime_ms", "elapsed_ms"};
    const char *mig = jstr(msg->body, "migration_uuid");
    bool here = jbool(msg->body, "here");
    char source[32];
    cl_migration m;
    int r;

    if (cl_store_migration_get(st, mig, &m) < 0 || strcmp(msg->peer, m.dest_host) != 0)
        return;
    if (strcmp(m.status, "running") != 0 && strcmp(m.status, "cancelling") != 0 &&
        strcmp(m.status, "error") != 0)
        return;
    bool was_error = strcmp(m.status, "error") == 0; /* a check to clean up after a failure */
    progress_source_state(st, mig, source, sizeof(source));
    if (here && !was_error) {
        progress_put(st, mig, msg->body, keys, CL_ARRAY_SIZE(keys), NULL, NULL);
        r = cl_store_migration_finish(st, mig, true);
        if (r < 0) {
            cl_err(LOG_MOD, "migration %s: cannot record the move: %s", mig, strerror(-r));
            return;
        }
        set_status(st, mig, "completed");
        cl_store_instance_set_state(st, m.instance_uuid, -1, CL_TASK_NONE, -1, NULL, 0);
        json_object *b = json_object_new_object();
        json_object_object_add(b, "migration_uuid", json_object_new_string(mig));
        json_object_object_add(b, "instance_uuid", json_object_new_string(m.instance_uuid));
        json_object_object_add(b, "moved", json_object_new_boolean(true));
        (void)send(bus, m.source_host, CL_MSG_MIGRATION_CLEANUP, msg, b);
        cl_info(LOG_MOD, "migration %s: %s now runs on %s (downtime %" PRId64 " ms)", mig,
                m.instance_uuid, m.dest_host, jint(msg->body, "downtime_ms"));
        return;
    }
    if (was_error)
        return;
    bool source_has = strcmp(source, "running") == 0 || strcmp(source, "paused") == 0;
    if (!source_has) {
        /* Neither hypervisor runs it: the guest is lost; say so instead of pretending. */
        cl_store_migration_finish(st, mig, false);
        set_status(st, mig, "error");
        cl_store_instance_fail(st, m.instance_uuid, "the guest runs on neither host after "
                               "a failed live migration", 500);
        cl_err(LOG_MOD, "migration %s: %s runs nowhere", mig, m.instance_uuid);
        return;
    }
    fail_early(st, mig, m.instance_uuid,
               strcmp(m.status, "cancelling") == 0 ? "cancelled" : "error",
               "the guest stayed on the source");
    /* The source keeps it: release its claim on the instance (a source that restarted
     * mid-way still holds the migration's marker). */
    json_object *b = json_object_new_object();
    json_object_object_add(b, "migration_uuid", json_object_new_string(mig));
    json_object_object_add(b, "instance_uuid", json_object_new_string(m.instance_uuid));
    json_object_object_add(b, "moved", json_object_new_boolean(false));
    (void)send(bus, m.source_host, CL_MSG_MIGRATION_CLEANUP, msg, b);
}

/* ---- abort / force-complete (from nube-api) ---- */

static void on_abort(cl_store *st, cl_bus *bus, const cl_bus_msg *msg)
{
    const char *mig = jstr(msg->body, "migration_uuid");
    const char *action = jstr(msg->body, "action");
    cl_migration m;

    if (cl_store_migration_get(st, mig, &m) < 0)
        return;
    bool force = strcmp(action, "force_complete") == 0;
    if (strcmp(m.status, "preparing") == 0 && !force) {
        /* Nothing runs yet: the check makes the destination drop its overlay. */
        send_check(st, bus, msg, &m, true);
        fail_early(st, mig, m.instance_uuid, "cancelled", "aborted before it started");
        return;
    }
    if (strcmp(m.status, "running") != 0)
        return;
    if (!force)
        set_status(st, mig, "cancelling");
    json_object *b = json_object_new_object();
    json_object_object_add(b, "migration_uuid", json_object_new_string(mig));
    json_object_object_add(b, "instance_uuid", json_object_new_string(m.instance_uuid));
    json_object_object_add(b, "action", json_object_new_string(force ? "force_complete"
                                                                     : "abort"));
    (void)send(bus, m.source_host, CL_MSG_MIGRATION_ABORT, msg, b);
}

/* ---- cold migration and resize to another host (issue 8) ----
 *
 *   api   --migration.cold-->           sched  claim on the destination (the migration
 *                                              holds the source half), record the move
 *                                              (cold_moves: old flavor, power state, a
 *                                              random transfer token), host := dest
 *   sched --migration.cold_export-->    src    stop the guest (ACPI, then destroy), offer
 *                                              its overlay on the agent's HTTP port to the
 *                                              holder of the token; size and sha256
 *   src   --migration.cold_exported-->  sched
 *   sched --migration.cold_import-->    dest   base image through its image cache, pull
 *                                              the overlay from the source (token), check
 *                                              size, sha256 and format, rebase it on the
 *                                              local base
 *   dest  --migration.cold_imported-->  sched
 *   sched --instance.spawn-->           dest   power_on false: define only (a stopped
 *                                              server stays stopped, as in Nova); the
 *                                              disk is kept and grown to the new flavor
 *   dest  --instance.state-->           sched  ACTIVE (or SHUTOFF) becomes RESIZED
 *                                              (VERIFY_RESIZE), migration "finished"
 *
 * Once the destination has the disk the source stops offering it (cold_release).
 * confirmResize (or the window [scheduler] resize_confirm_window_s passing) drops the
 * source half and destroys the source's domain and files;
 * revertResize (and every failure on the way) gives the allocation back, restores the
 * old flavor, destroys what reached the destination and starts the untouched source
 * copy again when it ran before. The instance's host is the destination from the claim
 * on, so the source's reports while it stops are ignored (sched.c).
 *
 * Crashes: every message is resent until its handler returned, so each handler can run
 * twice. The record's phase says which step was reached: a resend of the step just
 * done repeats its (idempotent) request instead of the state change; confirm and revert
 * mark the record first and send before they write, and the tick finishes a marked one
 * (cold_sweep); an agent that registers again gets its lost export asked again, and a
 * lost import sends the guest back to the source (cold_on_register). The scheduler's
 * bus keeps an outbox and stores what a handler queued before it acknowledges the
 * message that caused it, so a killed scheduler still sends each step's command, or the
 * step's trigger comes again; only the commands of an end (confirm, revert, failure)
 * have no trigger to come again: they are sent once more after a start
 * (sched_migrations_resume, cold_move_ends).
 *
 * Test-driver hosts hold no disk file: the source says so (nodisk) and the destination
 * imports nothing; the same messages run, which is what test_migrate_api.py checks. */

#define MSG_COLD "migration.cold"
#define MSG_COLD_CONFIRM "migration.confirm"
#define MSG_COLD_REVERT "migration.revert"
#define MSG_COLD_EXPORT "migration.cold_export"
#define MSG_COLD_EXPORTED "migration.cold_exported"
#define MSG_COLD_IMPORT "migration.cold_import"
#define MSG_COLD_IMPORTED "migration.cold_imported"
#define MSG_COLD_RELEASE "migration.cold_release"

/* A move of ours: a cold migration, or a resize to another host (a same-host resize
 * keeps its own record in the actions step). */
static bool is_cold(const cl_migration_row *r)
{
    return (strcmp(r->type, "migration") == 0 || strcmp(r->type, "resize") == 0) &&
           strcmp(r->source_host, r->dest_host) != 0;
}

/* The cold migration of uuid in status (NULL: "migrating" or "finished"), or -ENOENT. */
static int cold_pending(cl_store *st, const char *uuid, const char *status, cl_migration *out)
{
    _cleanup_free_ cl_migration_row *rows = NULL;
    size_t n = 0;
    int r = cl_store_migrations_list(st, NULL, NULL, uuid, NULL, &rows, &n);
    if (r < 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        const char *s = rows[i].status;
        if (!is_cold(&rows[i]))
            continue;
        if (status ? strcmp(s, status) == 0
                   : (strcmp(s, "migrating") == 0 || strcmp(s, "finished") == 0))
            return cl_store_migration_get(st, rows[i].uuid, out);
    }
    return -ENOENT;
}

static void send_action(cl_bus *bus, const cl_bus_msg *msg, const char *host,
                        const char *uuid, cl_action a)
{
    (void)send(bus, host, CL_MSG_INSTANCE_ACTION, msg, cl_msg_action_encode(uuid, a, NULL));
}

static json_object *mig_body(const cl_migration *m)
{
    json_object *b = json_object_new_object();
    if (b) {
        json_object_object_add(b, "migration_uuid", json_object_new_string(m->uuid));
        json_object_object_add(b, "instance_uuid", json_object_new_string(m->instance_uuid));
    }
    return b;
}

/* instance.destroy of the copy a move leaves behind ("moved": the agent sends no
 * "deleted" usage event, the instance lives on elsewhere). */
static json_object *moved_body(const cl_migration *m)
{
    json_object *b = cl_msg_uuid_encode(m->instance_uuid);
    if (b)
        json_object_object_add(b, "moved", json_object_new_boolean(true));
    return b;
}

/* 32 random bytes in hex: only the two agents of this move learn it (bus messages). */
static int new_token(char *out, size_t len)
{
    unsigned char b[32];
    if (len < 2 * sizeof(b) + 1 || getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b))
        return -EIO;
    for (size_t i = 0; i < sizeof(b); i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    explicit_bzero(b, sizeof(b));
    return 0;
}

/* Mark the record with the end being carried out ("back:<status>" or "confirm") before
 * any of its effects: a scheduler killed half-way finishes it from the record at its
 * next tick (cold_sweep). Messages go out before the database changes; every step is
 * idempotent, so doing it all again is the recovery. */
static void cold_mark(cl_store *st, const char *mig, const char *phase, cl_cold_move *c,
                      bool *have)
{
    *have = cl_store_cold_move_get(st, mig, c) == 0;
    if (*have && strcmp(c->phase, phase) != 0) {
        cl_strlcpy(c->phase, phase, sizeof(c->phase));
        if (cl_store_cold_move_put(st, c) < 0)
            cl_err(LOG_MOD, "migration %s: cannot record the step %s", mig, phase);
    }
}

/* ---- ends a killed scheduler may not have sent ----
 * A confirm or revert queues its commands and then writes its end; the bus stores them
 * in its outbox only when the handler (or tick) has returned. A scheduler killed in
 * between loses them with the move already ended in the database, and nothing would
 * send them again (tests/crash/test_migrate_crash.py: a stopped second domain left on
 * the source, a reverted server left SHUTOFF). So each end is also written to
 * cold_move_ends (a table this module creates, like migration_progress) and the first
 * tick after a start sends the commands of the ends younger than COLD_END_KEEP_MS again
 * (sched_migrations_resume); the agents treat them as the repeats they may be. */
#define COLD_END_KEEP_MS 60000

static int ensure_ends_table(cl_store *st)
{
    return cl_db_exec(cl_store_db(st), "CREATE TABLE IF NOT EXISTS cold_move_ends ("
                                       "  migration_uuid TEXT PRIMARY KEY,"
                                       "  confirmed INTEGER NOT NULL,"
                                       "  power_on INTEGER NOT NULL,"
                                       "  ended_ms INTEGER NOT NULL)");
}

static void cold_end_record(cl_store *st, const char *mig, bool confirmed, bool power_on)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    if (ensure_ends_table(st) < 0 ||
        cl_db_prepare(cl_store_db(st), "INSERT OR REPLACE INTO cold_move_ends (migration_uuid,"
                      " confirmed, power_on, ended_ms) VALUES (?1, ?2, ?3, ?4)", &s) < 0) {
        cl_err(LOG_MOD, "migration %s: cannot record its end", mig);
        return;
    }
    cl_db_bind_text(s, 1, mig);
    cl_db_bind_int64(s, 2, confirmed);
    cl_db_bind_int64(s, 3, power_on);
    cl_db_bind_int64(s, 4, cl_now_ms());
    if (cl_db_step_done(s) < 0)
        cl_err(LOG_MOD, "migration %s: cannot record its end", mig);
}

/* The commands of a revert or failed move: the destination drops its domain and disk
 * (destroy) and an imported disk no domain uses yet (release); the source ends the
 * export and, when start, runs the guest again. */
static void cold_back_send(cl_bus *bus, const cl_bus_msg *msg, const cl_migration *m,
                           bool start)
{
    (void)send(bus, m->dest_host, CL_MSG_INSTANCE_DESTROY, msg, moved_body(m));
    json_object *drop = mig_body(m);
    if (drop)
        json_object_object_add(drop, "drop_disk", json_object_new_boolean(true));
    (void)send(bus, m->dest_host, MSG_COLD_RELEASE, msg, drop);
    (void)send(bus, m->source_host, MSG_COLD_RELEASE, msg, mig_body(m));
    if (start)
        send_action(bus, msg, m->source_host, m->instance_uuid, CL_ACTION_START);
}

/* The commands of a confirm: the source's copy goes; the destination keeps its disk. */
static void cold_confirm_send(cl_bus *bus, const cl_bus_msg *msg, const cl_migration *m)
{
    (void)send(bus, m->source_host, MSG_COLD_RELEASE, msg, mig_body(m));
    (void)send(bus, m->source_host, CL_MSG_INSTANCE_DESTROY, msg, moved_body(m));
    (void)send(bus, m->dest_host, MSG_COLD_RELEASE, msg, mig_body(m));
}

/* Undo a cold move whose source still holds the stopped guest (revert or failure). */
static void cold_back(cl_store *st, cl_bus *bus, const cl_bus_msg *msg, const cl_migration *m,
                      const char *status, const char *fault)
{
    cl_cold_move c;
    bool have;
    char phase[16];
    snprintf(phase, sizeof(phase), "back:%s", status);
    cold_mark(st, m->uuid, phase, &c, &have);
    bool power_on = !have || c.power_on;
    cold_back_send(bus, msg, m, power_on);
    cl_flavor f;
    if (have && c.old_flavor_id[0] &&
        (cl_store_flavor_get(st, c.old_flavor_id, &f) < 0 ||
         cl_store_instance_set_flavor(st, m->instance_uuid, &f, true) < 0))
        cl_err(LOG_MOD, "migration %s: cannot restore flavor '%s' of %s", m->uuid,
               c.old_flavor_id, m->instance_uuid);
    if (cl_store_instance_set_host(st, m->instance_uuid, m->source_host) < 0)
        cl_err(LOG_MOD, "migration %s: cannot put %s back on %s", m->uuid, m->instance_uuid,
               m->source_host);
    /* A stopped guest stays stopped: done. One that ran: the source's report after the
     * start ends a revert (task resize_reverting, VERIFY_RESIZE -> ACTIVE); a failed
     * move's task ends here (sched.c keeps a move's task against host reports) and the
     * server is ACTIVE again. Both are written, not assumed: a host's report handled
     * between nube-api's revert and this can have cleared the task, and a scheduler
     * killed as the move arrived can have left VERIFY_RESIZE on a move still under way
     * (tests/crash/test_migrate_crash.py: a reverted server stayed VERIFY_RESIZE). */
    if (!power_on)
        cl_store_instance_set_state(st, m->instance_uuid, CL_VM_STOPPED, CL_TASK_NONE,
                                    CL_POWER_SHUTDOWN, NULL, 0);
    else if (strcmp(status, "reverted") == 0)
        cl_store_instance_set_state(st, m->instance_uuid, -1, CL_TASK_RESIZE_REVERTING, -1,
                                    NULL, 0);
    else
        cl_store_instance_set_state(st, m->instance_uuid, CL_VM_ACTIVE, CL_TASK_NONE, -1,
                                    NULL, 0);
    int r = cl_store_migration_finish(st, m->uuid, false);
    if (r < 0)
        cl_err(LOG_MOD, "migration %s: cannot give the allocation back: %s", m->uuid,
               strerror(-r));
    set_status(st, m->uuid, status);
    if (fault)
        progress_put(st, m->uuid, NULL, NULL, 0, NULL, fault);
    cold_end_record(st, m->uuid, false, power_on);
    (void)cl_store_cold_move_delete(st, m->uuid);
    cl_info(LOG_MOD, "cold migration %s: %s back on %s (%s%s%s)", m->uuid, m->instance_uuid,
            m->source_host, status, fault ? ": " : "", fault ? fault : "");
}

/* Confirm: the source's copy goes, the destination's half becomes the instance's. */
static void cold_confirm(cl_store *st, cl_bus *bus, const cl_bus_msg *msg,
                         const cl_migration *m)
{
    cl_cold_move c;
    bool have;
    cold_mark(st, m->uuid, "confirm", &c, &have);
    bool power_on = !have || c.power_on;
    cold_confirm_send(bus, msg, m);
    int r = cl_store_migration_finish(st, m->uuid, true);
    if (r < 0) {
        cl_err(LOG_MOD, "migration %s: cannot confirm: %s", m->uuid, strerror(-r));
        cl_store_instance_set_state(st, m->instance_uuid, -1, CL_TASK_NONE, -1, NULL, 0);
        return; /* the record stays: the sweep tries again */
    }
    set_status(st, m->uuid, "confirmed");
    cl_store_instance_set_state(st, m->instance_uuid, power_on ? CL_VM_ACTIVE : CL_VM_STOPPED,
                                CL_TASK_NONE, -1, NULL, 0);
    cold_end_record(st, m->uuid, true, power_on);
    (void)cl_store_cold_move_delete(st, m->uuid);
    cl_info(LOG_MOD, "cold migration %s of %s confirmed; source %s cleaned", m->uuid,
            m->instance_uuid, m->source_host);
}

/* Finish the ends a killed scheduler left half-done (their record says which), and give
 * up the moves whose next step waits for a host that is down. */
static void cold_sweep(cl_store *st, cl_bus *bus)
{
    _cleanup_free_ cl_cold_move *moves = NULL;
    size_t n = 0;
    if (cl_store_cold_moves_list(st, &moves, &n) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        cl_migration m;
        cl_host h;
        bool back = strncmp(moves[i].phase, "back:", 5) == 0;
        explicit_bzero(moves[i].token, sizeof(moves[i].token));
        if (cl_store_migration_get(st, moves[i].migration_uuid, &m) < 0)
            continue;
        cl_bus_msg why;
        memset(&why, 0, sizeof(why));
        /* A step waits for a host that went down: the move cannot finish; the guest
         * goes back to (or stays on) the source, which starts it when it can. */
        const char *waits = strcmp(moves[i].phase, "exporting") == 0 ? m.source_host
                            : strcmp(moves[i].phase, "importing") == 0 ||
                                      strcmp(moves[i].phase, "spawning") == 0
                                  ? m.dest_host : NULL;
        if (waits && strcmp(m.status, "migrating") == 0 &&
            cl_store_host_get(st, waits, &h) == 0 && !h.up) {
            char fault[160];
            snprintf(fault, sizeof(fault), "host %.64s went down during the move", waits);
            cold_back(st, bus, &why, &m, "error", fault);
            continue;
        }
        if (!back && strcmp(moves[i].phase, "confirm") != 0)
            continue;
        cl_warn(LOG_MOD, "cold migration %s: finishing its %s after a restart", m.uuid,
                moves[i].phase);
        if (back)
            cold_back(st, bus, &why, &m, moves[i].phase + 5, NULL);
        else
            cold_confirm(st, bus, &why, &m);
    }
}

/* migration.cold again while its move is claimed: the scheduler restarted before this
 * handler sent the export (the API's message was not acknowledged). Finish it; a claim
 * without its record (killed between the two writes) is undone. */
static void cold_resume(cl_store *st, cl_bus *bus, const cl_bus_msg *msg, const cl_migration *m)
{
    cl_cold_move c;
    if (cl_store_cold_move_get(st, m->uuid, &c) < 0) {
        (void)cl_store_instance_set_host(st, m->instance_uuid, m->source_host);
        fail_early(st, m->uuid, m->instance_uuid, "error", "the scheduler restarted while "
                   "claiming the destination");
        return;
    }
    if (strcmp(c.phase, "exporting") == 0) {
        (void)cl_store_instance_set_host(st, m->instance_uuid, m->dest_host);
        json_object *b = mig_body(m);
        if (b)
            json_object_object_add(b, "token", json_object_new_string(c.token));
        (void)send(bus, m->source_host, MSG_COLD_EXPORT, msg, b);
        cl_info(LOG_MOD, "cold migration %s: export asked again", m->uuid);
    }
    explicit_bzero(c.token, sizeof(c.token));
}

static void on_cold(cl_store *st, cl_bus *bus, const cl_bus_msg *msg)
{
    const char *uuid = jstr(msg->body, "instance_uuid");
    cl_instance inst;
    cl_host src;
    cl_migration m;
    char fault[512] = "";

    if (!cl_uuid_valid(uuid) || cl_store_instance_get(st, uuid, &inst) < 0 ||
        inst.task_state != CL_TASK_RESIZE_MIGRATING || !inst.host[0])
        return;
    if (cold_pending(st, uuid, "migrating", &m) == 0) {
        cold_resume(st, bus, msg, &m);
        return;
    }
    if (cl_store_host_get(st, inst.host, &src) < 0) {
        fail_early(st, NULL, uuid, "error", "the source host is unknown");
        return;
    }
    const char *flavor_id = jstr(msg->body, "flavor_id");
    cl_flavor old = inst.flavor, fl;
    if (flavor_id[0]) {
        if (cl_store_flavor_get(st, flavor_id, &fl) < 0 ||
            cl_store_instance_set_flavor(st, uuid, &fl, false) < 0) {
            fail_early(st, NULL, uuid, "error", "cannot apply the new flavor");
            return;
        }
        inst.flavor = fl;
    }
    if (pick_and_claim(st, &inst, &src, jstr(msg->body, "host"),
                       flavor_id[0] ? "resize" : "migration", &m, fault, sizeof(fault)) < 0) {
        if (flavor_id[0])
            (void)cl_store_instance_set_flavor(st, uuid, &old, false);
        fail_early(st, NULL, uuid, "error", fault);
        return;
    }
    cl_cold_move c;
    memset(&c, 0, sizeof(c));
    cl_strlcpy(c.migration_uuid, m.uuid, sizeof(c.migration_uuid));
    if (flavor_id[0])
        cl_strlcpy(c.old_flavor_id, old.id, sizeof(c.old_flavor_id));
    c.power_on = inst.vm_state != CL_VM_STOPPED;
    cl_strlcpy(c.phase, "exporting", sizeof(c.phase));
    if (new_token(c.token, sizeof(c.token)) < 0 || cl_store_cold_move_put(st, &c) < 0 ||
        (flavor_id[0] && cl_store_instance_set_flavor(st, uuid, &fl, true) < 0)) {
        fail_early(st, m.uuid, uuid, "error", "cannot record the move");
        if (flavor_id[0])
            (void)cl_store_instance_set_flavor(st, uuid, &old, true);
        (void)cl_store_cold_move_delete(st, m.uuid);
        return;
    }
    explicit_bzero(c.token, sizeof(c.token));
    progress_put(st, m.uuid, NULL, NULL, 0, "shutoff", NULL);
    if (cl_store_instance_set_host(st, uuid, m.dest_host) < 0 ||
        set_status(st, m.uuid, "migrating") < 0) {
        fail_early(st, m.uuid, uuid, "error", "cannot record the move");
        (void)cl_store_instance_set_host(st, uuid, m.source_host);
        (void)cl_store_cold_move_delete(st, m.uuid);
        return;
    }
    /* The token goes to the source now and to the destination once the disk is ready. */
    cl_cold_move again;
    json_object *b = mig_body(&m);
    if (b && cl_store_cold_move_get(st, m.uuid, &again) == 0)
        json_object_object_add(b, "token", json_object_new_string(again.token));
    explicit_bzero(again.token, sizeof(again.token));
    if (send(bus, m.source_host, MSG_COLD_EXPORT, msg, b) < 0) {
        cold_back(st, bus, msg, &m, "error", "cannot reach the source");
        return;
    }
    cl_info(LOG_MOD, "cold migration %s: %s %s -> %s (%s), source stops and exports", m.uuid,
            uuid, m.source_host, m.dest_host, c.power_on ? "running" : "stopped");
}

/* The migration a message from its source (or destination) is about, in status
 * "migrating"; false when unknown, from another host, or settled (a resend). */
static bool cold_step(cl_store *st, const cl_bus_msg *msg, bool from_source, cl_migration *m)
{
    const char *mig = jstr(msg->body, "migration_uuid");
    if (!cl_uuid_valid(mig) || cl_store_migration_get(st, mig, m) < 0)
        return false;
    if (strcmp(msg->peer, from_source ? m->source_host : m->dest_host) != 0) {
        cl_warn(LOG_MOD, "%s for %s from %s, not its %s", msg->type, mig, msg->peer,
                from_source ? "source" : "destination");
        return false;
    }
    return strcmp(m->status, "migrating") == 0;
}

static void on_cold_exported(cl_store *st, cl_bus *bus, const cl_bus_msg *msg)
{
    cl_migration m;
    cl_cold_move c;
    cl_instance inst;
    char url[512] = "", disk_url[700];
    bool nodisk = jbool(msg->body, "nodisk");

    /* Phase "importing" already: a resend after a restart cut this handler short (the
     * import request is idempotent on the destination). */
    if (!cold_step(st, msg, true, &m) || cl_store_cold_move_get(st, m.uuid, &c) < 0 ||
        (strcmp(c.phase, "importing") != 0 &&
         cl_store_cold_move_advance(st, m.uuid, "exporting", "importing") < 0))
        return;
    if (!jbool(msg->body, "ok")) {
        cold_back(st, bus, msg, &m, "error", jstr(msg->body, "fault")[0]
                  ? jstr(msg->body, "fault") : "the source could not export the disk");
        return;
    }
    if (cl_store_instance_get(st, m.instance_uuid, &inst) < 0)
        return;
    if (!nodisk && (cl_store_host_agent_url_get(st, m.source_host, url, sizeof(url)) < 0 ||
                    !url[0])) {
        cold_back(st, bus, msg, &m, "error", "the source agent announced no HTTP endpoint "
                  "to fetch the disk from ([http] port)");
        return;
    }
    snprintf(disk_url, sizeof(disk_url), "%s/v1/migrations/%s/disk", url, m.uuid);
    /* The destination refuses an overlay larger than the largest of both flavors. */
    int64_t max_gb = inst.flavor.disk_gb;
    cl_flavor old;
    if (c.old_flavor_id[0] && cl_store_flavor_get(st, c.old_flavor_id, &old) == 0 &&
        old.disk_gb > max_gb)
        max_gb = old.disk_gb;
    cl_msg_instance spec;
    spec_of(&inst, &spec);
    json_object *b = cl_msg_spawn_encode(&spec);
    if (b) {
        json_object_object_add(b, "migration_uuid", json_object_new_string(m.uuid));
        json_object_object_add(b, "url", json_object_new_string(nodisk ? "" : disk_url));
        json_object_object_add(b, "token", json_object_new_string(c.token));
        json_object_object_add(b, "nodisk", json_object_new_boolean(nodisk));
        json_object_object_add(b, "size", json_object_new_int64(jint(msg->body, "size")));
        json_object_object_add(b, "sha256", json_object_new_string(jstr(msg->body, "sha256")));
        json_object_object_add(b, "max_disk_gb", json_object_new_int64(max_gb));
    }
    explicit_bzero(c.token, sizeof(c.token));
    if (send(bus, m.dest_host, MSG_COLD_IMPORT, msg, b) < 0) {
        cold_back(st, bus, msg, &m, "error", "cannot reach the destination");
        return;
    }
    cl_info(LOG_MOD, "cold migration %s: source exported %" PRId64 " bytes%s; %s imports",
            m.uuid, jint(msg->body, "size"), nodisk ? " (no disk file)" : "", m.dest_host);
}

static void on_cold_imported(cl_store *st, cl_bus *bus, const cl_bus_msg *msg)
{
    cl_migration m;
    cl_cold_move c;
    cl_instance inst;

    /* Phase "spawning" already: a resend after a restart (spawning is idempotent). */
    if (!cold_step(st, msg, false, &m) || cl_store_cold_move_get(st, m.uuid, &c) < 0 ||
        (strcmp(c.phase, "spawning") != 0 &&
         cl_store_cold_move_advance(st, m.uuid, "importing", "spawning") < 0))
        return;
    if (!jbool(msg->body, "ok")) {
        cold_back(st, bus, msg, &m, "error", jstr(msg->body, "fault")[0]
                  ? jstr(msg->body, "fault") : "the destination could not import the disk");
        return;
    }
    if (cl_store_instance_get(st, m.instance_uuid, &inst) < 0)
        return;
    /* The destination holds its copy: the source stops offering the disk now (its own
     * copy stays, stopped, for a revert). */
    (void)send(bus, m.source_host, MSG_COLD_RELEASE, msg, mig_body(&m));
    cl_msg_instance spec;
    spec_of(&inst, &spec);
    json_object *b = cl_msg_spawn_encode(&spec);
    if (b) { /* migration_uuid: an arrival ("migrated" for billing, not "created") */
        json_object_object_add(b, "power_on", json_object_new_boolean(c.power_on));
        json_object_object_add(b, "migration_uuid", json_object_new_string(m.uuid));
    }
    if (send(bus, m.dest_host, CL_MSG_INSTANCE_SPAWN, msg, b) < 0) {
        cold_back(st, bus, msg, &m, "error", "cannot reach the destination");
        return;
    }
    cl_info(LOG_MOD, "cold migration %s: disk of %s on %s, %s it there", m.uuid,
            m.instance_uuid, m.dest_host, c.power_on ? "starting" : "defining");
}

static void on_cold_end(cl_store *st, cl_bus *bus, const cl_bus_msg *msg, bool confirm)
{
    const char *uuid = jstr(msg->body, "instance_uuid");
    cl_instance inst;
    cl_migration m;

    if (!cl_uuid_valid(uuid) || cl_store_instance_get(st, uuid, &inst) < 0 ||
        cold_pending(st, uuid, "finished", &m) < 0)
        return;
    if (confirm)
        cold_confirm(st, bus, msg, &m);
    else
        cold_back(st, bus, msg, &m, "reverted", NULL);
}

bool sched_migrations_cold_report(cl_store *st, cl_bus *bus, const cl_instance *inst,
                                  const char *host, int *vm_state, const char *fault)
{
    cl_migration m;
    cl_cold_move c;
    if (cold_pending(st, inst->uuid, NULL, &m) < 0 || strcmp(host, m.dest_host) != 0)
        return false;
    bool have = cl_store_cold_move_get(st, m.uuid, &c) == 0;
    bool power_on = !have || c.power_on;
    /* Before the spawn went out, what the destination says about the instance is a late
     * report of an earlier stay there (a copy a revert destroyed, say), not this move's
     * arrival (tests/crash/test_migrate_crash.py: taken as arrived, the guest was lost
     * at confirm). */
    if (have && strcmp(m.status, "migrating") == 0 && strcmp(c.phase, "spawning") != 0)
        return true;
    if (*vm_state == CL_VM_ERROR && strcmp(m.status, "migrating") == 0) {
        cl_bus_msg why;
        memset(&why, 0, sizeof(why));
        cold_back(st, bus, &why, &m, "error", fault && fault[0] ? fault
                                                 : "the destination failed to start it");
        return true;
    }
    /* Arrived as it left: running, or defined and shut off for a stopped server. */
    bool arrived = *vm_state == (power_on ? CL_VM_ACTIVE : CL_VM_STOPPED);
    if (arrived || (strcmp(m.status, "finished") == 0 &&
                    (*vm_state == CL_VM_ACTIVE || *vm_state == CL_VM_STOPPED))) {
        if (strcmp(m.status, "migrating") == 0) {
            /* The move's task ends here, whatever sched.c decides for the report's; the
             * server shows VERIFY_RESIZE before the move is "finished": a scheduler
             * killed in between leaves it "migrating" for the report's resend to finish,
             * never finished under an ACTIVE server (tests/crash/test_migrate_crash.py). */
            cl_store_instance_set_state(st, inst->uuid, CL_VM_RESIZED, CL_TASK_NONE, -1, NULL,
                                        0);
            set_status(st, m.uuid, "finished");
            cl_info(LOG_MOD, "cold migration %s: %s %s on %s, waiting for confirm", m.uuid,
                    inst->uuid, power_on ? "runs" : "is defined (stopped)", m.dest_host);
        }
        *vm_state = CL_VM_RESIZED;
    }
    return false;
}

/* host (re)registered: a cold move's step it was running died with its agent. The
 * export is redone (stopping a stopped guest and measuring its disk again are harmless);
 * an import is abandoned (the source still holds the guest: back there). */
static void cold_on_register(cl_store *st, cl_bus *bus, const char *host)
{
    _cleanup_free_ cl_migration_row *rows = NULL;
    size_t n = 0;
    if (cl_store_migrations_list(st, host, "migrating", NULL, NULL, &rows, &n) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        cl_migration m;
        cl_cold_move c;
        if (!is_cold(&rows[i]) || cl_store_migration_get(st, rows[i].uuid, &m) < 0 ||
            cl_store_cold_move_get(st, m.uuid, &c) < 0)
            continue;
        cl_bus_msg why;
        memset(&why, 0, sizeof(why));
        if (strcmp(m.source_host, host) == 0 && strcmp(c.phase, "exporting") == 0) {
            cl_warn(LOG_MOD, "cold migration %s: source %s restarted while exporting; asking "
                    "again", m.uuid, host);
            json_object *b = mig_body(&m);
            if (b)
                json_object_object_add(b, "token", json_object_new_string(c.token));
            (void)send(bus, host, MSG_COLD_EXPORT, &why, b);
        } else if (strcmp(m.dest_host, host) == 0 && strcmp(c.phase, "importing") == 0) {
            cold_back(st, bus, &why, &m, "error", "the destination agent restarted during "
                      "the disk import");
        }
        explicit_bzero(c.token, sizeof(c.token));
    }
}

/* m is the newest move of its instance: repeating its end undoes no later one. */
static bool cold_is_latest(cl_store *st, const cl_migration *m)
{
    _cleanup_free_ cl_migration_row *rows = NULL;
    size_t n = 0;
    return cl_store_migrations_list(st, NULL, NULL, m->instance_uuid, NULL, &rows, &n) == 0 &&
           n > 0 && strcmp(rows[0].uuid, m->uuid) == 0;
}

/* After a revert (or failure) that was to start the source copy: start it again only
 * while the server is still where and as the end left it, and nobody asked an action of
 * it since (a stop after the revert must stay a stop). */
static bool cold_start_again(cl_store *st, const cl_migration *m, int64_t ended_ms)
{
    cl_instance inst;
    if (cl_store_instance_get(st, m->instance_uuid, &inst) < 0 ||
        strcmp(inst.host, m->source_host) != 0)
        return false;
    if (inst.task_state != CL_TASK_RESIZE_REVERTING &&
        (inst.task_state != CL_TASK_NONE ||
         (inst.vm_state != CL_VM_ACTIVE && inst.vm_state != CL_VM_STOPPED)))
        return false;
    _cleanup_stmt_ sqlite3_stmt *q = NULL;
    if (cl_db_prepare(cl_store_db(st), "SELECT 1 FROM instance_actions WHERE instance_uuid = ?1"
                      " AND start_ms > ?2 LIMIT 1", &q) < 0)
        return false;
    cl_db_bind_text(q, 1, m->instance_uuid);
    cl_db_bind_int64(q, 2, ended_ms);
    return sqlite3_step(q) == SQLITE_DONE;
}

#define COLD_END_MAX 256

void sched_migrations_resume(cl_store *st, cl_bus *bus)
{
    struct {
        char mig[CL_UUID_LEN];
        bool confirmed, power_on;
        int64_t ended_ms;
    } ends[COLD_END_MAX];
    size_t n = 0, sent = 0;
    {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        if (ensure_ends_table(st) < 0 ||
            cl_db_prepare(cl_store_db(st), "SELECT migration_uuid, confirmed, power_on, "
                          "ended_ms FROM cold_move_ends WHERE ended_ms >= ?1 ORDER BY "
                          "ended_ms DESC LIMIT ?2", &q) < 0)
            return;
        cl_db_bind_int64(q, 1, cl_now_ms() - COLD_END_KEEP_MS);
        sqlite3_bind_int(q, 2, COLD_END_MAX);
        while (n < COLD_END_MAX && sqlite3_step(q) == SQLITE_ROW) {
            cl_db_column_text(q, 0, ends[n].mig, CL_UUID_LEN);
            ends[n].confirmed = sqlite3_column_int64(q, 1) != 0;
            ends[n].power_on = sqlite3_column_int64(q, 2) != 0;
            ends[n].ended_ms = sqlite3_column_int64(q, 3);
            n++;
        }
    }
    for (size_t i = 0; i < n; i++) {
        cl_migration m;
        if (cl_store_migration_get(st, ends[i].mig, &m) < 0 || !cold_is_latest(st, &m))
            continue;
        cl_bus_msg why;
        memset(&why, 0, sizeof(why));
        if (ends[i].confirmed)
            cold_confirm_send(bus, &why, &m);
        else
            cold_back_send(bus, &why, &m,
                           ends[i].power_on && cold_start_again(st, &m, ends[i].ended_ms));
        sent++;
    }
    if (sent)
        cl_info(LOG_MOD, "re-sent the last commands of %zu cold migration ends after start",
                sent);
}

/* Ends older than COLD_END_KEEP_MS were stored in the outbox long ago: forget them. */
static void cold_ends_prune(cl_store *st)
{
    _cleanup_stmt_ sqlite3_stmt *q = NULL;
    if (cl_db_prepare(cl_store_db(st), "DELETE FROM cold_move_ends WHERE ended_ms < ?1",
                      &q) < 0)
        return; /* no table yet */
    cl_db_bind_int64(q, 1, cl_now_ms() - COLD_END_KEEP_MS);
    (void)cl_db_step_done(q);
}

void sched_migrations_auto_confirm(cl_store *st, cl_bus *bus, int64_t window_s)
{
    _cleanup_free_ cl_migration_row *rows = NULL;
    size_t n = 0;
    cold_sweep(st, bus);
    cold_ends_prune(st);
    if (window_s <= 0 ||
        cl_store_migrations_list(st, NULL, "finished", NULL, NULL, &rows, &n) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        cl_migration m;
        cl_instance inst;
        if (!is_cold(&rows[i]) || cl_store_migration_get(st, rows[i].uuid, &m) < 0 ||
            cl_now_ms() - m.updated_ms < window_s * 1000 ||
            cl_store_instance_get(st, m.instance_uuid, &inst) < 0 ||
            inst.vm_state != CL_VM_RESIZED || inst.task_state != CL_TASK_NONE)
            continue;
        cl_bus_msg why;
        memset(&why, 0, sizeof(why));
        json_object *b = json_object_new_object();
        json_object_object_add(b, "instance_uuid", json_object_new_string(m.instance_uuid));
        why.body = b;
        cl_info(LOG_MOD, "cold migration %s: confirm window of %" PRId64 " s passed", m.uuid,
                window_s);
        on_cold_end(st, bus, &why, true);
        json_object_put(b);
    }
}

bool sched_migrations_on_msg(cl_store *st, cl_bus *bus, const cl_bus_msg *msg)
{
    if (!CL_MSG_IS_MIGRATION(msg->type))
        return false;
    /* With bus authentication, only nube-api starts or stops a migration, and a host
     * speaks only from its own key (the handlers compare the peer with the row). */
    bool from_api = strcmp(msg->type, CL_MSG_MIGRATION_LIVE) == 0 ||
                    strcmp(msg->type, CL_MSG_MIGRATION_ABORT) == 0 ||
                    strcmp(msg->type, CL_MSG_MIGRATION_EVACUATE) == 0 ||
                    strcmp(msg->type, MSG_COLD) == 0 || strcmp(msg->type, MSG_COLD_CONFIRM) == 0 ||
                    strcmp(msg->type, MSG_COLD_REVERT) == 0;
    if (msg->user_id[0] && (from_api ? strcmp(msg->user_id, "nube-api") != 0
                                     : strcmp(msg->user_id, msg->peer) != 0)) {
        cl_warn(LOG_MOD, "refused %s from '%s'", msg->type, msg->user_id);
        return true;
    }
    if (strcmp(msg->type, CL_MSG_MIGRATION_LIVE) == 0)
        on_live(st, bus, msg);
    else if (strcmp(msg->type, CL_MSG_MIGRATION_PREPARED) == 0)
        on_prepared(st, bus, msg);
    else if (strcmp(msg->type, CL_MSG_MIGRATION_PROGRESS) == 0)
        on_progress(st, msg);
    else if (strcmp(msg->type, CL_MSG_MIGRATION_DONE) == 0)
        on_done(st, bus, msg);
    else if (strcmp(msg->type, CL_MSG_MIGRATION_CHECKED) == 0)
        on_checked(st, bus, msg);
    else if (strcmp(msg->type, CL_MSG_MIGRATION_ABORT) == 0)
        on_abort(st, bus, msg);
    else if (strcmp(msg->type, CL_MSG_MIGRATION_EVACUATE) == 0)
        on_evacuate(st, bus, msg);
    else if (strcmp(msg->type, MSG_COLD) == 0)
        on_cold(st, bus, msg);
    else if (strcmp(msg->type, MSG_COLD_EXPORTED) == 0)
        on_cold_exported(st, bus, msg);
    else if (strcmp(msg->type, MSG_COLD_IMPORTED) == 0)
        on_cold_imported(st, bus, msg);
    else if (strcmp(msg->type, MSG_COLD_CONFIRM) == 0)
        on_cold_end(st, bus, msg, true);
    else if (strcmp(msg->type, MSG_COLD_REVERT) == 0)
        on_cold_end(st, bus, msg, false);
    else
        cl_warn(LOG_MOD, "ignoring %s from %s", msg->type, msg->peer);
    return true;
}

bool sched_migrations_fence(cl_store *st, cl_bus *bus, const char *host, const char *uuid)
{
    _cleanup_free_ cl_migration_row *rows = NULL;
    size_t n = 0;
    if (cl_store_migrations_list(st, NULL, NULL, uuid, NULL, &rows, &n) < 0)
        return false;
    /* Not a stale copy but an arrival: a live migration to this host is in flight (the
     * check settles it; a destroy here would also remove a shared disk). */
    for (size_t i = 0; i < n; i++)
        if (strcmp(rows[i].dest_host, host) == 0 &&
            (strcmp(rows[i].status, "preparing") == 0 ||
             strcmp(rows[i].status, "running") == 0 ||
             strcmp(rows[i].status, "cancelling") == 0))
            return false;
    for (size_t i = 0; i < n; i++) {
        const cl_migration_row *m = &rows[i];
        if (strcmp(m->source_host, host) != 0 ||
            (strcmp(m->status, "done") != 0 && strcmp(m->status, "completed") != 0))
            continue;
        cl_warn(LOG_MOD, "host %s still runs %s, which moved to %s (%s %s): destroying it "
                "there", host, uuid, m->dest_host, m->type, m->uuid);
        json_object *b = cl_msg_uuid_encode(uuid);
        return b && cl_bus_send(bus, host, CL_MSG_INSTANCE_DESTROY, NULL, b, true, NULL) == 0;
    }
    return false;
}

void sched_migrations_on_register(cl_store *st, cl_bus *bus, const char *host,
                                  const cl_msg_host_instance *ri, size_t nri)
{
    _cleanup_free_ cl_migration_row *rows = NULL;
    size_t n = 0;
    if (cl_store_migrations_list(st, host, NULL, NULL, "live-migration", &rows, &n) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        const cl_migration_row *r = &rows[i];
        cl_migration m;
        if (strcmp(r->source_host, host) != 0 ||
            (strcmp(r->status, "running") != 0 && strcmp(r->status, "cancelling") != 0) ||
            cl_store_migration_get(st, r->uuid, &m) < 0)
            continue;
        bool source_has = false;
        for (size_t k = 0; k < nri; k++)
            if (strcmp(ri[k].uuid, m.instance_uuid) == 0)
                source_has = ri[k].power_state == CL_POWER_RUNNING ||
                             ri[k].power_state == CL_POWER_PAUSED;
        /* The source restarted mid-migration: its run is gone; settle now. */
        progress_put(st, m.uuid, NULL, NULL, 0, source_has ? "running" : "absent",
                     "the source agent restarted during the migration");
        cl_bus_msg why;
        memset(&why, 0, sizeof(why));
        cl_warn(LOG_MOD, "migration %s: source %s restarted mid-way; the domain is %s there, "
                "asking %s", m.uuid, host, source_has ? "still" : "no longer", m.dest_host);
        send_check(st, bus, &why, &m, source_has);
    }
    cold_on_register(st, bus, host);
}
