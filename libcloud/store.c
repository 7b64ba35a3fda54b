/*
 * store.c - the controller database on SQLite: flavors, instances, hosts, allocations
 * and the instance action log, shared by nube-api and nube-scheduler.
 *
 * Both daemons open the same file (WAL), each thread through its own cl_store. The rules
 * that keep them from stepping on each other:
 *
 *  - Every read-check-write runs in BEGIN IMMEDIATE (cl_db_begin_immediate), so the check
 *    and the write happen under SQLite's single write lock. The busy timeout queues the
 *    writers; a deferred transaction would instead fail with SQLITE_BUSY_SNAPSHOT as soon
 *    as another connection committed between its read and its write.
 *  - Capacity is never stored as a counter. A host's usage is the sum of its allocation
 *    rows, so "release" is a DELETE and there is no counter to drift. cl_store_claim()
 *    re-reads that sum inside its write transaction, which is what makes concurrent
 *    claims from many scheduler threads (or two schedulers) safe: the second claimer
 *    waits for the lock and then sees the first one's allocation.
 *  - Failing or deleting an instance deletes its allocation in the same transaction.
 *
 * States are stored as their names ("building", "spawning", "running") so the file reads
 * well in the sqlite3 shell and survives reordering of the C enums. The flavor is copied
 * into the instance row at create time, as Nova embeds it: resizing or deleting a flavor
 * later does not change what an existing server was given.
 *
 * instance_actions is the audit trail Nova keeps (os-instance-actions): one row per user
 * action with the request id, so "who created/deleted this and what happened" can be
 * answered from the database alone.
 */
#include "store.h"
#include "store_schema.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "util.h"

#define ST_LOG "store"
#define STORE_BUSY_MS 5000

struct cl_store {
    cl_db *db;
};

/* Migration 1: the controller schema and Nova's default flavors. Seeding inside the
 * migration makes it happen exactly once, atomically with the tables. */
static const char schema_v1[] =
    "CREATE TABLE flavors ("
    "  id TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL UNIQUE,"
    "  vcpus INTEGER NOT NULL,"
    "  ram_mb INTEGER NOT NULL,"
    "  disk_gb INTEGER NOT NULL,"
    "  ephemeral_gb INTEGER NOT NULL DEFAULT 0,"
    "  swap_mb INTEGER NOT NULL DEFAULT 0,"
    "  is_public INTEGER NOT NULL DEFAULT 1,"
    "  disabled INTEGER NOT NULL DEFAULT 0"
    ");"
    "INSERT INTO flavors (id, name, vcpus, ram_mb, disk_gb) VALUES"
    "  ('1', 'm1.tiny', 1, 512, 1),"
    "  ('2', 'm1.small', 1, 2048, 20),"
    "  ('3', 'm1.medium', 2, 4096, 40),"
    "  ('4', 'm1.large', 4, 8192, 80),"
    "  ('5', 'm1.xlarge', 8, 16384, 160);"
    "CREATE TABLE instances ("
    "  uuid TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  project_id TEXT NOT NULL,"
    "  user_id TEXT NOT NULL,"
    "  image_ref TEXT NOT NULL DEFAULT '',"
    "  flavor_id TEXT NOT NULL,"
    "  flavor_name TEXT NOT NULL,"
    "  vcpus INTEGER NOT NULL,"
    "  ram_mb INTEGER NOT NULL,"
    "  disk_gb INTEGER NOT NULL,"
    "  ephemeral_gb INTEGER NOT NULL DEFAULT 0,"
    "  swap_mb INTEGER NOT NULL DEFAULT 0,"
    "  flavor_is_public INTEGER NOT NULL DEFAULT 1,"
    "  flavor_disabled INTEGER NOT NULL DEFAULT 0,"
    "  host TEXT NOT NULL DEFAULT '',"
    "  vm_state TEXT NOT NULL,"
    "  task_state TEXT NOT NULL,"
    "  power_state TEXT NOT NULL,"
    "  fault TEXT NOT NULL DEFAULT '',"
    "  fault_code INTEGER NOT NULL DEFAULT 0,"
    "  fault_at_ms INTEGER NOT NULL DEFAULT 0,"
    "  request_id TEXT NOT NULL DEFAULT '',"
    "  created_ms INTEGER NOT NULL,"
    "  updated_ms INTEGER NOT NULL,"
    "  launched_ms INTEGER NOT NULL DEFAULT 0,"
    "  deleted_ms INTEGER NOT NULL DEFAULT 0"
    ");"
    /* Listing is newest first, per project (tenants) or across all (admins). */
    "CREATE INDEX instances_by_created ON instances (created_ms DESC, uuid DESC);"
    "CREATE INDEX instances_by_project ON instances (project_id, created_ms DESC, uuid DESC);"
    "CREATE INDEX instances_by_host ON instances (host);"
    /* AUTOINCREMENT: a hypervisor id is never reused, even after a host row is removed. */
    "CREATE TABLE hosts ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  name TEXT NOT NULL UNIQUE,"
    "  hypervisor_type TEXT NOT NULL DEFAULT '',"
    "  libvirt_uri TEXT NOT NULL DEFAULT '',"
    "  vcpus INTEGER NOT NULL DEFAULT 0,"
    "  ram_mb INTEGER NOT NULL DEFAULT 0,"
    "  disk_gb INTEGER NOT NULL DEFAULT 0,"
    "  cpu_ratio REAL NOT NULL DEFAULT 1.0,"
    "  ram_ratio REAL NOT NULL DEFAULT 1.0,"
    "  disk_ratio REAL NOT NULL DEFAULT 1.0,"
    "  reserved_vcpus INTEGER NOT NULL DEFAULT 0,"
    "  reserved_ram_mb INTEGER NOT NULL DEFAULT 0,"
    "  reserved_disk_gb INTEGER NOT NULL DEFAULT 0,"
    "  up INTEGER NOT NULL DEFAULT 1,"
    "  enabled INTEGER NOT NULL DEFAULT 1,"
    "  last_seen_ms INTEGER NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL DEFAULT 0"
    ");"
    "CREATE TABLE allocations ("
    "  instance_uuid TEXT PRIMARY KEY REFERENCES instances (uuid) ON DELETE CASCADE,"
    "  host TEXT NOT NULL REFERENCES hosts (name),"
    "  vcpus INTEGER NOT NULL,"
    "  ram_mb INTEGER NOT NULL,"
    "  disk_gb INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL"
    ");"
    "CREATE INDEX allocations_by_host ON allocations (host);"
    "CREATE TABLE instance_actions ("
    "  id INTEGER PRIMARY KEY,"
    "  instance_uuid TEXT NOT NULL REFERENCES instances (uuid) ON DELETE CASCADE,"
    "  action TEXT NOT NULL,"
    "  request_id TEXT NOT NULL DEFAULT '',"
    "  start_ms INTEGER NOT NULL,"
    "  finish_ms INTEGER NOT NULL DEFAULT 0,"
    "  result TEXT NOT NULL DEFAULT ''"
    ");"
    "CREATE INDEX instance_actions_by_instance ON instance_actions (instance_uuid, start_ms);";

static const cl_db_migration store_migrations[] = {
    {1, schema_v1},
    {2, cl_store_schema_identity},
    {3, cl_store_schema_compute},
    {4, cl_store_schema_placement},
    {5, cl_store_schema_actions},
};

/* ---------------------------------------------------------------------------------- */
/* small helpers                                                                       */

/* End a write transaction: commit when the body succeeded, roll back otherwise (also
 * when the commit itself fails). Returns the body's result or the commit's error. */
static int finish_tx(cl_db *db, int r)
{
    if (r >= 0) {
        int c = cl_db_commit(db);
        if (c == 0)
            return r;
        r = c;
    }
    cl_db_rollback(db);
    return r;
}

static bool vm_ok(int s) { return s >= 0 && s < CL_VM_STATE_MAX; }
static bool task_ok(int s) { return s >= 0 && s < CL_TASK_STATE_MAX; }
static bool power_ok(int s) { return s >= 0 && s < CL_POWER_STATE_MAX; }

/* Disk a flavor takes on a host, as Nova's placement counts DISK_GB: root + ephemeral +
 * swap rounded up to whole GB. */
static int64_t flavor_disk_gb(const cl_flavor *f)
{
    return f->disk_gb + f->ephemeral_gb + (f->swap_mb + 1023) / 1024;
}

/* Audit trail: a new action row. request_id NULL uses the thread's request id (the HTTP
 * layer and the bus set it), so callers need not pass it through. */
static int action_add(cl_db *db, const char *uuid, const char *action, const char *request_id,
                      int64_t start_ms, int64_t finish_ms, const char *result)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db,
                          "INSERT INTO instance_actions (instance_uuid, action, request_id,"
                          " start_ms, finish_ms, result) VALUES (?, ?, ?, ?, ?, ?)",
                          &s);
    if (r < 0)
        return r;
    const char *req = request_id ? request_id : cl_log_request_id();
    cl_db_bind_text(s, 1, uuid);
    cl_db_bind_text(s, 2, action);
    cl_db_bind_text(s, 3, req ? req : "");
    cl_db_bind_int64(s, 4, start_ms);
    cl_db_bind_int64(s, 5, finish_ms);
    cl_db_bind_text(s, 6, result);
    return cl_db_step_done(s);
}

/* Close every open action of an instance with result. */
static int actions_finish(cl_db *db, const char *uuid, int64_t now, const char *result)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db,
                          "UPDATE instance_actions SET finish_ms = ?, result = ?"
                          " WHERE instance_uuid = ? AND finish_ms = 0",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_int64(s, 1, now);
    cl_db_bind_text(s, 2, result);
    cl_db_bind_text(s, 3, uuid);
    return cl_db_step_done(s);
}

static int alloc_delete(cl_db *db, const char *uuid)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db, "DELETE FROM allocations WHERE instance_uuid = ?", &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    return cl_db_step_done(s);
}

/* ---------------------------------------------------------------------------------- */
/* open / close                                                                        */

int cl_store_open(const char *path, cl_store **out, cl_error *err)
{
    cl_store *st = calloc(1, sizeof(*st));
    if (!st) {
        cl_error_set(err, CL_E_INTERNAL, "out of memory");
        return -ENOMEM;
    }
    int r = cl_db_open(path, store_migrations, CL_ARRAY_SIZE(store_migrations),
                       STORE_BUSY_MS, &st->db, err);
    if (r < 0) {
        free(st);
        return r;
    }
    *out = st;
    return 0;
}

void cl_store_free(cl_store *st)
{
    if (!st)
        return;
    cl_db_close(st->db);
    free(st);
}

cl_db *cl_store_db(cl_store *st) { return st ? st->db : NULL; }

/* ---------------------------------------------------------------------------------- */
/* flavors                                                                             */

#define FLAVOR_COLS "id, name, vcpus, ram_mb, disk_gb, ephemeral_gb, swap_mb, is_public, disabled"

/* A cl_db_row_fn: decode one flavor row into elem (a cl_flavor). */
static int flavor_read(sqlite3_stmt *s, void *elem, void *ctx)
{
    cl_flavor *f = elem;

    (void)ctx;
    cl_db_column_text(s, 0, f->id, sizeof(f->id));
    cl_db_column_text(s, 1, f->name, sizeof(f->name));
    f->vcpus = sqlite3_column_int64(s, 2);
    f->ram_mb = sqlite3_column_int64(s, 3);
    f->disk_gb = sqlite3_column_int64(s, 4);
    f->ephemeral_gb = sqlite3_column_int64(s, 5);
    f->swap_mb = sqlite3_column_int64(s, 6);
    f->is_public = sqlite3_column_int(s, 7) != 0;
    f->disabled = sqlite3_column_int(s, 8) != 0;
    return 0;
}

int cl_store_flavor_get(cl_store *st, const char *id_or_name, cl_flavor *out)
{
    if (!id_or_name)
        return -EINVAL;
    /* An id match wins over a name match: Nova resolves flavorRef as an id, and the CLI
     * falls back to names. */
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(st->db,
                          "SELECT " FLAVOR_COLS " FROM flavors WHERE id = ?1 OR name = ?1"
                          " ORDER BY (id = ?1) DESC LIMIT 1",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, id_or_name);
    r = cl_db_step_row(s);
    if (r <= 0)
        return r == 0 ? -ENOENT : r;
    return flavor_read(s, out, NULL);
}

int cl_store_flavor_list(cl_store *st, cl_flavor **out, size_t *out_n)
{
    /* Numeric ids first in numeric order (shorter digit strings are smaller), then the
     * others in string order: "1" < "2" < "10" < "abc". */
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(st->db,
                          "SELECT " FLAVOR_COLS " FROM flavors ORDER BY"
                          " (id = '' OR id GLOB '*[^0-9]*'),"
                          " CASE WHEN id GLOB '*[^0-9]*' THEN 0 ELSE length(id) END, id",
                          &s);
    if (r < 0)
        return r;
    return cl_db_collect(s, sizeof(**out), flavor_read, NULL, NULL, (void **)out, out_n);
}

int cl_store_flavor_create(cl_store *st, const cl_flavor *f)
{
    if (!f || !f->id[0] || !f->name[0] || f->vcpus <= 0 || f->ram_mb <= 0 || f->disk_gb < 0 ||
        f->ephemeral_gb < 0 || f->swap_mb < 0)
        return -EINVAL;
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(st->db,
                          "INSERT INTO flavors (" FLAVOR_COLS ") VALUES (?,?,?,?,?,?,?,?,?)",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, f->id);
    cl_db_bind_text(s, 2, f->name);
    cl_db_bind_int64(s, 3, f->vcpus);
    cl_db_bind_int64(s, 4, f->ram_mb);
    cl_db_bind_int64(s, 5, f->disk_gb);
    cl_db_bind_int64(s, 6, f->ephemeral_gb);
    cl_db_bind_int64(s, 7, f->swap_mb);
    cl_db_bind_int64(s, 8, f->is_public);
    cl_db_bind_int64(s, 9, f->disabled);
    return cl_db_step_done(s); /* UNIQUE id/name -> -EEXIST */
}

/* ---------------------------------------------------------------------------------- */
/* instances                                                                           */

#define INSTANCE_COLS                                                                      \
    "uuid, name, project_id, user_id, image_ref, flavor_id, flavor_name, vcpus, ram_mb,"   \
    " disk_gb, ephemeral_gb, swap_mb, flavor_is_public, flavor_disabled, host, vm_state,"  \
    " task_state, power_state, fault, fault_code, fault_at_ms, request_id, created_ms,"    \
    " updated_ms, launched_ms, deleted_ms"

/* A cl_db_row_fn: decode one instance row into elem, a cl_instance (untouched on
 * failure). -EIO when a stored state name is unknown to this binary. */
static int instance_read(sqlite3_stmt *s, void *elem, void *ctx)
{
    cl_instance *out = elem;
    cl_instance i;

    (void)ctx;
    memset(&i, 0, sizeof(i));
    cl_db_column_text(s, 0, i.uuid, sizeof(i.uuid));
    cl_db_column_text(s, 1, i.name, sizeof(i.name));
    cl_db_column_text(s, 2, i.project_id, sizeof(i.project_id));
    cl_db_column_text(s, 3, i.user_id, sizeof(i.user_id));
    cl_db_column_text(s, 4, i.image_ref, sizeof(i.image_ref));
    cl_db_column_text(s, 5, i.flavor.id, sizeof(i.flavor.id));
    cl_db_column_text(s, 6, i.flavor.name, sizeof(i.flavor.name));
    i.flavor.vcpus = sqlite3_column_int64(s, 7);
    i.flavor.ram_mb = sqlite3_column_int64(s, 8);
    i.flavor.disk_gb = sqlite3_column_int64(s, 9);
    i.flavor.ephemeral_gb = sqlite3_column_int64(s, 10);
    i.flavor.swap_mb = sqlite3_column_int64(s, 11);
    i.flavor.is_public = sqlite3_column_int(s, 12) != 0;
    i.flavor.disabled = sqlite3_column_int(s, 13) != 0;
    cl_db_column_text(s, 14, i.host, sizeof(i.host));

    const char *vm = (const char *)sqlite3_column_text(s, 15);
    const char *task = (const char *)sqlite3_column_text(s, 16);
    const char *power = (const char *)sqlite3_column_text(s, 17);
    if (cl_vm_state_parse(vm ? vm : "", &i.vm_state) < 0 ||
        cl_task_state_parse(task ? task : "", &i.task_state) < 0 ||
        cl_power_state_parse(power ? power : "", &i.power_state) < 0) {
        cl_debug(ST_LOG, "instance %s: unknown state %s/%s/%s", i.uuid, vm ? vm : "",
                 task ? task : "", power ? power : "");
        return -EIO;
    }
    cl_db_column_text(s, 18, i.fault, sizeof(i.fault));
    i.fault_code = sqlite3_column_int(s, 19);
    i.fault_at_ms = sqlite3_column_int64(s, 20);
    cl_db_column_text(s, 21, i.request_id, sizeof(i.request_id));
    i.created_ms = sqlite3_column_int64(s, 22);
    i.updated_ms = sqlite3_column_int64(s, 23);
    i.launched_ms = sqlite3_column_int64(s, 24);
    i.deleted_ms = sqlite3_column_int64(s, 25);
    *out = i;
    return 0;
}

static int instance_insert(cl_db *db, const cl_instance *inst, int64_t now)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db,
                          "INSERT INTO instances (" INSTANCE_COLS ") VALUES (?,?,?,?,?,?,?,?,?,?,"
                          "?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                          &s);
    if (r < 0)
        return r;
    const cl_flavor *f = &inst->flavor;
    cl_db_bind_text(s, 1, inst->uuid);
    cl_db_bind_text(s, 2, inst->name);
    cl_db_bind_text(s, 3, inst->project_id);
    cl_db_bind_text(s, 4, inst->user_id);
    cl_db_bind_text(s, 5, inst->image_ref);
    cl_db_bind_text(s, 6, f->id);
    cl_db_bind_text(s, 7, f->name);
    cl_db_bind_int64(s, 8, f->vcpus);
    cl_db_bind_int64(s, 9, f->ram_mb);
    cl_db_bind_int64(s, 10, f->disk_gb);
    cl_db_bind_int64(s, 11, f->ephemeral_gb);
    cl_db_bind_int64(s, 12, f->swap_mb);
    cl_db_bind_int64(s, 13, f->is_public);
    cl_db_bind_int64(s, 14, f->disabled);
    cl_db_bind_text(s, 15, inst->host);
    cl_db_bind_text(s, 16, cl_vm_state_name(inst->vm_state));
    cl_db_bind_text(s, 17, cl_task_state_name(inst->task_state));
    cl_db_bind_text(s, 18, cl_power_state_name(inst->power_state));
    cl_db_bind_text(s, 19, inst->fault);
    cl_db_bind_int64(s, 20, inst->fault[0] ? inst->fault_code : 0);
    cl_db_bind_int64(s, 21, inst->fault[0] ? (inst->fault_at_ms ? inst->fault_at_ms : now) : 0);
    cl_db_bind_text(s, 22, inst->request_id);
    cl_db_bind_int64(s, 23, now);
    cl_db_bind_int64(s, 24, now);
    cl_db_bind_int64(s, 25, 0);
    cl_db_bind_int64(s, 26, 0);
    return cl_db_step_done(s);
}

int cl_store_instance_create(cl_store *st, const cl_instance *inst)
{
    if (!inst || !cl_uuid_valid(inst->uuid) || !vm_ok(inst->vm_state) ||
        !task_ok(inst->task_state) || !power_ok(inst->power_state) ||
        inst->vm_state == CL_VM_DELETED)
        return -EINVAL;

    int64_t now = cl_now_ms();
    int r = cl_db_begin_immediate(st->db);
    if (r < 0)
        return r;
    r = instance_insert(st->db, inst, now);
    if (r == 0)
        r = action_add(st->db, inst->uuid, "create", inst->request_id[0] ? inst->request_id : NULL,
                       now, 0, "");
    return finish_tx(st->db, r);
}

int cl_store_instance_get(cl_store *st, const char *uuid, cl_instance *out)
{
    if (!uuid)
        return -EINVAL;
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(st->db, "SELECT " INSTANCE_COLS " FROM instances WHERE uuid = ?", &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    r = cl_db_step_row(s);
    if (r <= 0)
        return r == 0 ? -ENOENT : r;
    return instance_read(s, out, NULL);
}

int cl_store_instance_list(cl_store *st, const cl_instance_filter *f, cl_instance **out,
                           size_t *out_n)
{
    static const cl_instance_filter none = {0};
    if (!f)
        f = &none;

    /* Ties in created_ms (servers created in the same millisecond) are broken by
     * insertion order, the rowid, as Nova breaks them by its autoincrement id: "newest
     * first" then holds for every pair, and the marker resumes exactly after its row. */
    int64_t m_created = 0, m_rowid = 0;
    if (f->marker) {
        _cleanup_stmt_ sqlite3_stmt *m = NULL;
        int r = cl_db_prepare(st->db, "SELECT created_ms, rowid FROM instances WHERE uuid = ?",
                              &m);
        if (r < 0)
            return r;
        cl_db_bind_text(m, 1, f->marker);
        r = cl_db_step_row(m);
        if (r <= 0)
            return r == 0 ? -ENOENT : r;
        m_created = sqlite3_column_int64(m, 0);
        m_rowid = sqlite3_column_int64(m, 1);
    }

    /* The SQL is assembled from fixed fragments only; every value is a bound parameter
     * (named, so the fragments need no counting). Separate fragments rather than
     * "(?1 IS NULL OR project_id = ?1)" so the planner can use the project index. */
    char sql[1024];
    snprintf(sql, sizeof(sql),
             "SELECT " INSTANCE_COLS " FROM instances WHERE 1%s%s%s%s"
             " ORDER BY created_ms DESC, rowid DESC%s",
             f->project_id ? " AND project_id = :project" : "",
             f->host ? " AND host = :host" : "",
             f->include_deleted ? "" : " AND vm_state <> :deleted",
             f->marker ? " AND (created_ms < :mc OR (created_ms = :mc AND rowid < :mr))" : "",
             f->limit > 0 ? " LIMIT :limit" : "");

    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(st->db, sql, &s);
    if (r < 0)
        return r;
    if (f->project_id)
        cl_db_bind_text(s, sqlite3_bind_parameter_index(s, ":project"), f->project_id);
    if (f->host)
        cl_db_bind_text(s, sqlite3_bind_parameter_index(s, ":host"), f->host);
    if (f->marker) {
        cl_db_bind_int64(s, sqlite3_bind_parameter_index(s, ":mc"), m_created);
        cl_db_bind_int64(s, sqlite3_bind_parameter_index(s, ":mr"), m_rowid);
    }
    if (!f->include_deleted)
        cl_db_bind_text(s, sqlite3_bind_parameter_index(s, ":deleted"),
                        cl_vm_state_name(CL_VM_DELETED));
    if (f->limit > 0)
        cl_db_bind_int64(s, sqlite3_bind_parameter_index(s, ":limit"), f->limit);
    return cl_db_collect(s, sizeof(**out), instance_read, NULL, NULL, (void **)out, out_n);
}

/* Current vm_state / task_state / launched_ms of a live instance, inside a transaction.
 * -ENOENT when unknown or deleted. */
typedef struct live_row {
    cl_vm_state vm;
    cl_task_state task;
    int64_t launched_ms;
    cl_flavor flavor;
} live_row;

static int live_get(cl_db *db, const char *uuid, live_row *out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db,
                          "SELECT vm_state, task_state, launched_ms, vcpus, ram_mb, disk_gb,"
                          " ephemeral_gb, swap_mb FROM instances WHERE uuid = ?",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    r = cl_db_step_row(s);
    if (r <= 0)
        return r == 0 ? -ENOENT : r;
    live_row l;
    memset(&l, 0, sizeof(l));
    const char *vm = (const char *)sqlite3_column_text(s, 0);
    const char *task = (const char *)sqlite3_column_text(s, 1);
    if (cl_vm_state_parse(vm ? vm : "", &l.vm) < 0 ||
        cl_task_state_parse(task ? task : "", &l.task) < 0)
        return -EIO;
    if (l.vm == CL_VM_DELETED)
        return -ENOENT;
    l.launched_ms = sqlite3_column_int64(s, 2);
    l.flavor.vcpus = sqlite3_column_int64(s, 3);
    l.flavor.ram_mb = sqlite3_column_int64(s, 4);
    l.flavor.disk_gb = sqlite3_column_int64(s, 5);
    l.flavor.ephemeral_gb = sqlite3_column_int64(s, 6);
    l.flavor.swap_mb = sqlite3_column_int64(s, 7);
    *out = l;
    return 0;
}

/* The part of mark_deleted that runs inside the caller's transaction. */
static int delete_locked(cl_db *db, const char *uuid, int64_t now)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db,
                          "UPDATE instances SET vm_state = ?, task_state = ?, deleted_ms = ?,"
                          " updated_ms = ? WHERE uuid = ?",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, cl_vm_state_name(CL_VM_DELETED));
    cl_db_bind_text(s, 2, cl_task_state_name(CL_TASK_NONE));
    cl_db_bind_int64(s, 3, now);
    cl_db_bind_int64(s, 4, now);
    cl_db_bind_text(s, 5, uuid);
    r = cl_db_step_done(s);
    if (r == 0)
        r = alloc_delete(db, uuid);
    /* An action still open (a build that never finished) ends with the deletion. */
    if (r == 0)
        r = actions_finish(db, uuid, now, "Deleted");
    if (r == 0)
        r = action_add(db, uuid, "delete", NULL, now, now, "Success");
    return r;
}

static int set_state_locked(cl_db *db, const char *uuid, int vm_state, int task_state,
                            int power_state, const char *fault, int fault_code, int64_t now)
{
    live_row cur;
    int r = live_get(db, uuid, &cur);
    if (r < 0)
        return r;

    bool first_launch = vm_state == CL_VM_ACTIVE && cur.launched_ms == 0;
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    /* NULL parameters keep the column (COALESCE), so one statement serves every mix. */
    r = cl_db_prepare(db,
                      "UPDATE instances SET vm_state = COALESCE(?1, vm_state),"
                      " task_state = COALESCE(?2, task_state),"
                      " power_state = COALESCE(?3, power_state),"
                      " fault = COALESCE(?4, fault), fault_code = COALESCE(?5, fault_code),"
                      " fault_at_ms = COALESCE(?6, fault_at_ms),"
                      " launched_ms = COALESCE(?7, launched_ms), updated_ms = ?8"
                      " WHERE uuid = ?9",
                      &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, vm_state >= 0 ? cl_vm_state_name(vm_state) : NULL);
    cl_db_bind_text(s, 2, task_state >= 0 ? cl_task_state_name(task_state) : NULL);
    cl_db_bind_text(s, 3, power_state >= 0 ? cl_power_state_name(power_state) : NULL);
    if (fault) {
        cl_db_bind_text(s, 4, fault);
        cl_db_bind_int64(s, 5, fault[0] ? fault_code : 0);
        cl_db_bind_int64(s, 6, fault[0] ? now : 0);
    }
    if (first_launch)
        cl_db_bind_int64(s, 7, now);
    cl_db_bind_int64(s, 8, now);
    cl_db_bind_text(s, 9, uuid);
    r = cl_db_step_done(s);
    if (r == 0 && first_launch)
        r = actions_finish(db, uuid, now, "Success");
    return r;
}

int cl_store_instance_set_state(cl_store *st, const char *uuid, int vm_state, int task_state,
                                int power_state, const char *fault, int fault_code)
{
    if (!uuid || (vm_state >= 0 && !vm_ok(vm_state)) || (task_state >= 0 && !task_ok(task_state)) ||
        (power_state >= 0 && !power_ok(power_state)))
        return -EINVAL;

    int64_t now = cl_now_ms();
    int r = cl_db_begin_immediate(st->db);
    if (r < 0)
        return r;
    r = set_state_locked(st->db, uuid, vm_state, task_state, power_state, fault, fault_code, now);
    /* Reaching DELETED by any path releases the resources, keeping the invariant that an
     * allocation exists only while its instance holds them. */
    if (r == 0 && vm_state == CL_VM_DELETED)
        r = delete_locked(st->db, uuid, now);
    return finish_tx(st->db, r);
}

int cl_store_instance_begin_task(cl_store *st, const char *uuid, cl_task_state new_task)
{
    if (!uuid || !task_ok(new_task))
        return -EINVAL;
    int r = cl_db_begin_immediate(st->db);
    if (r < 0)
        return r;
    live_row cur;
    r = live_get(st->db, uuid, &cur);
    if (r == 0 && cur.task == CL_TASK_DELETING)
        r = -EBUSY;
    if (r == 0) {
        _cleanup_stmt_ sqlite3_stmt *s = NULL;
        r = cl_db_prepare(st->db,
                          "UPDATE instances SET task_state = ?, updated_ms = ? WHERE uuid = ?",
                          &s);
        if (r == 0) {
            cl_db_bind_text(s, 1, cl_task_state_name(new_task));
            cl_db_bind_int64(s, 2, cl_now_ms());
            cl_db_bind_text(s, 3, uuid);
            r = cl_db_step_done(s);
        }
    }
    return finish_tx(st->db, r);
}

int cl_store_instance_fail(cl_store *st, const char *uuid, const char *fault, int fault_code)
{
    if (!uuid)
        return -EINVAL;
    int64_t now = cl_now_ms();
    int r = cl_db_begin_immediate(st->db);
    if (r < 0)
        return r;
    /* A delete requested meanwhile keeps its DELETING task: delete requests win, and
     * the delete path finishes the job. */
    live_row cur;
    r = live_get(st->db, uuid, &cur);
    if (r == 0)
        r = set_state_locked(st->db, uuid, CL_VM_ERROR,
                             cur.task == CL_TASK_DELETING ? -1 : (int)CL_TASK_NONE, -1,
                             fault ? fault : "", fault_code, now);
    if (r == 0)
        r = alloc_delete(st->db, uuid);
    if (r == 0)
        r = actions_finish(st->db, uuid, now, "Error");
    return finish_tx(st->db, r);
}

int cl_store_instance_mark_deleted(cl_store *st, const char *uuid)
{
    if (!uuid)
        return -EINVAL;
    int64_t now = cl_now_ms();
    int r = cl_db_begin_immediate(st->db);
    if (r < 0)
        return r;
    live_row cur;
    r = live_get(st->db, uuid, &cur);
    if (r == -ENOENT) {
        /* Already deleted is success (a repeated report); unknown stays -ENOENT. */
        cl_instance tmp;
        if (cl_store_instance_get(st, uuid, &tmp) == 0)
            r = 1;
    }
    if (r == 0)
        r = delete_locked(st->db, uuid, now);
    r = finish_tx(st->db, r);
    return r > 0 ? 0 : r;
}

int cl_store_instance_count(cl_store *st, const char *project_id, int64_t *out)
{
    if (!project_id)
        return -EINVAL;
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(st->db,
                          "SELECT count(*) FROM instances WHERE project_id = ?"
                          " AND vm_state <> ?",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, project_id);
    cl_db_bind_text(s, 2, cl_vm_state_name(CL_VM_DELETED));
    r = cl_db_step_row(s);
    if (r <= 0)
        return r == 0 ? -EIO : r;
    *out = sqlite3_column_int64(s, 0);
    return 0;
}

/* ---------------------------------------------------------------------------------- */
/* hosts                                                                               */

/* The source half of moves in flight (store_placement.c) counts against its host too. */
#define MIG_SUM(col)                                                                       \
    "(SELECT COALESCE(SUM(m." col "), 0) FROM migration_allocations m WHERE m.host = h.name)"

/* Hosts with their usage summed from allocations in one pass. The LEFT JOIN keeps hosts
 * without allocations (COUNT of the NULL side is 0). */
#define HOST_SELECT                                                                        \
    "SELECT h.id, h.name, h.hypervisor_type, h.libvirt_uri, h.vcpus, h.ram_mb, h.disk_gb," \
    " h.cpu_ratio, h.ram_ratio, h.disk_ratio, h.reserved_vcpus, h.reserved_ram_mb,"        \
    " h.reserved_disk_gb, h.up, h.enabled, h.last_seen_ms, h.created_ms,"                  \
    " COALESCE(SUM(a.vcpus), 0) + " MIG_SUM("vcpus") ","                                   \
    " COALESCE(SUM(a.ram_mb), 0) + " MIG_SUM("ram_mb") ","                                 \
    " COALESCE(SUM(a.disk_gb), 0) + " MIG_SUM("disk_gb") ","                               \
    " COUNT(a.instance_uuid)"                                                              \
    " FROM hosts h LEFT JOIN allocations a ON a.host = h.name"

/* A cl_db_row_fn: decode one HOST_SELECT row into elem (a cl_host). */
static int host_read(sqlite3_stmt *s, void *elem, void *ctx)
{
    cl_host *h = elem;

    (void)ctx;
    memset(h, 0, sizeof(*h));
    h->id = sqlite3_column_int64(s, 0);
    cl_db_column_text(s, 1, h->name, sizeof(h->name));
    cl_db_column_text(s, 2, h->hypervisor_type, sizeof(h->hypervisor_type));
    cl_db_column_text(s, 3, h->libvirt_uri, sizeof(h->libvirt_uri));
    h->vcpus = sqlite3_column_int64(s, 4);
    h->ram_mb = sqlite3_column_int64(s, 5);
    h->disk_gb = sqlite3_column_int64(s, 6);
    h->cpu_ratio = sqlite3_column_double(s, 7);
    h->ram_ratio = sqlite3_column_double(s, 8);
    h->disk_ratio = sqlite3_column_double(s, 9);
    h->reserved_vcpus = sqlite3_column_int64(s, 10);
    h->reserved_ram_mb = sqlite3_column_int64(s, 11);
    h->reserved_disk_gb = sqlite3_column_int64(s, 12);
    h->up = sqlite3_column_int(s, 13) != 0;
    h->enabled = sqlite3_column_int(s, 14) != 0;
    h->last_seen_ms = sqlite3_column_int64(s, 15);
    h->created_ms = sqlite3_column_int64(s, 16);
    h->used_vcpus = sqlite3_column_int64(s, 17);
    h->used_ram_mb = sqlite3_column_int64(s, 18);
    h->used_disk_gb = sqlite3_column_int64(s, 19);
    h->running_vms = sqlite3_column_int64(s, 20);
    return 0;
}

/* A ratio of 0 (an unset field) would make a host unusable; treat it as 1.0. */
static double ratio_or_one(double r) { return (r > 0 && isfinite(r)) ? r : 1.0; }

int cl_store_host_register(cl_store *st, const cl_host *h)
{
    if (!h || !h->name[0] || h->vcpus < 0 || h->ram_mb < 0 || h->disk_gb < 0)
        return -EINVAL;
    int64_t now = cl_now_ms();
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    /* Upsert: a re-registering agent refreshes what it reports; the operator's settings
     * (ratios, reserved, enabled) on an existing row stay as they are. */
    int r = cl_db_prepare(st->db,
                          "INSERT INTO hosts (name, hypervisor_type, libvirt_uri, vcpus, ram_mb,"
                          " disk_gb, cpu_ratio, ram_ratio, disk_ratio, reserved_vcpus,"
                          " reserved_ram_mb, reserved_disk_gb, up, enabled, last_seen_ms,"
                          " created_ms) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,1,1,?13,?13)"
                          " ON CONFLICT (name) DO UPDATE SET"
                          " hypervisor_type = excluded.hypervisor_type,"
                          " libvirt_uri = excluded.libvirt_uri, vcpus = excluded.vcpus,"
                          " ram_mb = excluded.ram_mb, disk_gb = excluded.disk_gb, up = 1,"
                          " last_seen_ms = excluded.last_seen_ms",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, h->name);
    cl_db_bind_text(s, 2, h->hypervisor_type);
    cl_db_bind_text(s, 3, h->libvirt_uri);
    cl_db_bind_int64(s, 4, h->vcpus);
    cl_db_bind_int64(s, 5, h->ram_mb);
    cl_db_bind_int64(s, 6, h->disk_gb);
    sqlite3_bind_double(s, 7, ratio_or_one(h->cpu_ratio));
    sqlite3_bind_double(s, 8, ratio_or_one(h->ram_ratio));
    sqlite3_bind_double(s, 9, ratio_or_one(h->disk_ratio));
    cl_db_bind_int64(s, 10, h->reserved_vcpus);
    cl_db_bind_int64(s, 11, h->reserved_ram_mb);
    cl_db_bind_int64(s, 12, h->reserved_disk_gb);
    cl_db_bind_int64(s, 13, now);
    return cl_db_step_done(s);
}

int cl_store_host_heartbeat(cl_store *st, const char *name, int64_t vcpus, int64_t ram_mb,
                            int64_t disk_gb)
{
    if (!name)
        return -EINVAL;
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(st->db,
                          "UPDATE hosts SET up = 1, last_seen_ms = ?1,"
                          " vcpus = CASE WHEN ?2 > 0 THEN ?2 ELSE vcpus END,"
                          " ram_mb = CASE WHEN ?2 > 0 THEN ?3 ELSE ram_mb END,"
                          " disk_gb = CASE WHEN ?2 > 0 THEN ?4 ELSE disk_gb END"
                          " WHERE name = ?5",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_int64(s, 1, cl_now_ms());
    cl_db_bind_int64(s, 2, vcpus);
    cl_db_bind_int64(s, 3, ram_mb);
    cl_db_bind_int64(s, 4, disk_gb);
    cl_db_bind_text(s, 5, name);
    r = cl_db_step_done(s);
    if (r < 0)
        return r;
    return cl_db_changes(st->db) > 0 ? 0 : -ENOENT;
}

int cl_store_host_mark_stale_down(cl_store *st, int64_t cutoff_ms, int *out_n)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(st->db, "UPDATE hosts SET up = 0 WHERE up = 1 AND last_seen_ms < ?",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_int64(s, 1, cutoff_ms);
    r = cl_db_step_done(s);
    if (r < 0)
        return r;
    if (out_n)
        *out_n = cl_db_changes(st->db);
    return 0;
}

int cl_store_host_set_enabled(cl_store *st, const char *name, bool enabled)
{
    if (!name)
        return -EINVAL;
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(st->db, "UPDATE hosts SET enabled = ? WHERE name = ?", &s);
    if (r < 0)
        return r;
    cl_db_bind_int64(s, 1, enabled ? 1 : 0);
    cl_db_bind_text(s, 2, name);
    r = cl_db_step_done(s);
    if (r < 0)
        return r;
    return cl_db_changes(st->db) > 0 ? 0 : -ENOENT;
}

int cl_store_host_list(cl_store *st, cl_host **out, size_t *out_n)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(st->db, HOST_SELECT " GROUP BY h.id ORDER BY h.name", &s);
    if (r < 0)
        return r;
    return cl_db_collect(s, sizeof(**out), host_read, NULL, NULL, (void **)out, out_n);
}

static int host_get_db(cl_db *db, const char *name, cl_host *out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db, HOST_SELECT " WHERE h.name = ? GROUP BY h.id", &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, name);
    r = cl_db_step_row(s);
    if (r <= 0)
        return r == 0 ? -ENOENT : r;
    return host_read(s, out, NULL);
}

int cl_store_host_get(cl_store *st, const char *name, cl_host *out)
{
    if (!name)
        return -EINVAL;
    return host_get_db(st->db, name, out);
}

/* ---------------------------------------------------------------------------------- */
/* claims                                                                              */

/* Host of the instance's allocation into out (CL_HOST_MAX); 1 found, 0 none, <0 errno. */
static int alloc_host(cl_db *db, const char *uuid, char *out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db, "SELECT host FROM allocations WHERE instance_uuid = ?", &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    r = cl_db_step_row(s);
    if (r == 1)
        cl_db_column_text(s, 0, out, CL_HOST_MAX);
    return r;
}

static int alloc_insert(cl_db *db, const char *uuid, const char *host, const cl_flavor *f,
                        int64_t now)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db,
                          "INSERT INTO allocations (instance_uuid, host, vcpus, ram_mb, disk_gb,"
                          " created_ms) VALUES (?, ?, ?, ?, ?, ?)",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    cl_db_bind_text(s, 2, host);
    cl_db_bind_int64(s, 3, f->vcpus);
    cl_db_bind_int64(s, 4, f->ram_mb);
    cl_db_bind_int64(s, 5, flavor_disk_gb(f));
    cl_db_bind_int64(s, 6, now);
    return cl_db_step_done(s);
}

static int instance_set_host(cl_db *db, const char *uuid, const char *host, int task,
                             int64_t now)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db,
                          "UPDATE instances SET host = ?, task_state = COALESCE(?, task_state),"
                          " updated_ms = ? WHERE uuid = ?",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, host);
    cl_db_bind_text(s, 2, task >= 0 ? cl_task_state_name(task) : NULL);
    cl_db_bind_int64(s, 3, now);
    cl_db_bind_text(s, 4, uuid);
    return cl_db_step_done(s);
}

static bool host_fits(const cl_host *h, const cl_flavor *f)
{
    return cl_host_free_vcpus(h) >= f->vcpus && cl_host_free_ram_mb(h) >= f->ram_mb &&
           cl_host_free_disk_gb(h) >= flavor_disk_gb(f);
}

/* The instance's hard group policy, read once per claim. */
typedef struct claim_group {
    char uuid[CL_UUID_LEN];
    char policy[32];
    int64_t max_per_host;
} claim_group;

/* 1 with *g filled when the instance is in a server group, 0 when not, <0 errno. */
static int claim_group_get(cl_db *db, const char *uuid, claim_group *g)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db,
                          "SELECT g.uuid, g.policy, g.max_server_per_host FROM"
                          " instance_group_members m JOIN instance_groups g"
                          " ON g.uuid = m.group_uuid WHERE m.instance_uuid = ?",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    r = cl_db_step_row(s);
    if (r == 1) {
        cl_db_column_text(s, 0, g->uuid, sizeof(g->uuid));
        cl_db_column_text(s, 1, g->policy, sizeof(g->policy));
        g->max_per_host = sqlite3_column_int64(s, 2);
    }
    return r;
}

/* Whether the hard group policy allows host: 1 yes, 0 no, <0 errno. Members count while
 * they hold an allocation, so the check sees every claim committed before this one. */
static int claim_group_allows(cl_db *db, const claim_group *g, const char *uuid,
                              const char *host)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r;

    if (strcmp(g->policy, "affinity") == 0) {
        r = cl_db_prepare(db,
                          "SELECT 1 FROM allocations a JOIN instance_group_members m"
                          " ON m.instance_uuid = a.instance_uuid WHERE m.group_uuid = ?"
                          " AND a.instance_uuid <> ? AND a.host <> ? LIMIT 1",
                          &s);
        if (r < 0)
            return r;
        cl_db_bind_text(s, 1, g->uuid);
        cl_db_bind_text(s, 2, uuid);
        cl_db_bind_text(s, 3, host);
        r = cl_db_step_row(s);
        return r < 0 ? r : !r;
    }
    if (strcmp(g->policy, "anti-affinity") == 0) {
        int64_t max = g->max_per_host > 0 ? g->max_per_host : 1;

        r = cl_db_prepare(db,
                          "SELECT count(*) FROM allocations a JOIN instance_group_members m"
                          " ON m.instance_uuid = a.instance_uuid WHERE m.group_uuid = ?"
                          " AND a.instance_uuid <> ? AND a.host = ?",
                          &s);
        if (r < 0)
            return r;
        cl_db_bind_text(s, 1, g->uuid);
        cl_db_bind_text(s, 2, uuid);
        cl_db_bind_text(s, 3, host);
        r = cl_db_step_row(s);
        if (r <= 0)
            return r == 0 ? -EIO : r;
        return sqlite3_column_int64(s, 0) < max;
    }
    return 1; /* soft policies are preferences: the weighers handle them */
}

/* Generation, maintenance flag and instance cap of a host, under the lock. */
static int host_gen_get(cl_db *db, const char *name, int64_t *gen, bool *maint, int64_t *max)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db,
                          "SELECT generation, maintenance, max_instances FROM hosts"
                          " WHERE name = ?",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, name);
    r = cl_db_step_row(s);
    if (r <= 0)
        return r == 0 ? -ENOENT : r;
    *gen = sqlite3_column_int64(s, 0);
    *maint = sqlite3_column_int(s, 1) != 0;
    *max = sqlite3_column_int64(s, 2);
    return 0;
}

/* Compare-and-swap of the host generation: -EAGAIN when another writer moved it. */
static int host_gen_cas(cl_db *db, const char *name, int64_t expect)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db,
                          "UPDATE hosts SET generation = generation + 1 WHERE name = ?"
                          " AND generation = ?",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, name);
    cl_db_bind_int64(s, 2, expect);
    r = cl_db_step_done(s);
    if (r < 0)
        return r;
    return cl_db_changes(db) == 1 ? 0 : -EAGAIN;
}

/* The claim body, run under the write lock. 0 with res->host, or -ENOSPC etc. */
static int claim_locked(cl_db *db, const cl_claim_req *req, cl_claim_result *res)
{
    const char *uuid = req->instance_uuid;
    live_row cur;
    claim_group grp;
    int r = live_get(db, uuid, &cur);
    if (r < 0)
        return r;
    if (cur.task == CL_TASK_DELETING)
        return -EBUSY;

    /* Idempotent: a retried claim (the scheduler resending after a crash or a lost
     * reply) gets the host it already has instead of a second allocation. */
    char have[CL_HOST_MAX];
    r = alloc_host(db, uuid, have);
    if (r < 0)
        return r;
    if (r == 1) {
        cl_strlcpy(res->host, have, CL_HOST_MAX);
        return 0;
    }
    /* Only a server being built is placed. A resent schedule request for one that has
     * already failed (ERROR) must not resurrect it on a host. */
    if (cur.vm != CL_VM_BUILDING)
        return -ENOENT;

    int has_group = claim_group_get(db, uuid, &grp);
    if (has_group < 0)
        return has_group;
    if (has_group)
        cl_strlcpy(res->group_policy, grp.policy, sizeof(res->group_policy));

    int64_t now = cl_now_ms();
    for (size_t i = 0; i < req->ncandidates; i++) {
        const char *name = req->candidates[i];
        int64_t gen, max;
        bool maint;
        cl_host h;

        if (!name)
            continue;
        r = host_get_db(db, name, &h);
        if (r == -ENOENT)
            continue; /* vanished since the scheduler's snapshot */
        if (r < 0)
            return r;
        r = host_gen_get(db, name, &gen, &maint, &max);
        if (r == -ENOENT)
            continue;
        if (r < 0)
            return r;
        if (req->generations && req->generations[i] != gen)
            res->generation_conflicts++; /* the snapshot is stale: the checks below decide */
        if (!h.up || !h.enabled || maint) {
            res->rejected_down++;
            continue;
        }
        if (!host_fits(&h, &cur.flavor)) {
            cl_debug(ST_LOG, "claim %s: %s has no room (free %" PRId64 " vcpus, %" PRId64
                             " MB, %" PRId64 " GB)",
                     uuid, h.name, cl_host_free_vcpus(&h), cl_host_free_ram_mb(&h),
                     cl_host_free_disk_gb(&h));
            res->rejected_capacity++;
            continue;
        }
        if (max <= 0)
            max = req->max_instances_per_host;
        if (max > 0 && h.running_vms >= max) {
            res->rejected_max_instances++;
            continue;
        }
        if (has_group) {
            r = claim_group_allows(db, &grp, uuid, h.name);
            if (r < 0)
                return r;
            if (r == 0) {
                res->rejected_group++;
                continue;
            }
        }
        r = host_gen_cas(db, h.name, gen);
        if (r == 0)
            r = alloc_insert(db, uuid, h.name, &cur.flavor, now);
        if (r == 0)
            r = instance_set_host(db, uuid, h.name, CL_TASK_SPAWNING, now);
        if (r < 0)
            return r;
        cl_strlcpy(res->host, h.name, CL_HOST_MAX);
        res->index = i;
        res->generation = gen + 2; /* the swap above, and the allocation trigger */
        return 0;
    }
    return -ENOSPC;
}

int cl_store_claim_ex(cl_store *st, const cl_claim_req *req, cl_claim_result *res)
{
    if (!req || !res || !req->instance_uuid || (req->ncandidates && !req->candidates))
        return -EINVAL;
    memset(res, 0, sizeof(*res));
    int r = cl_db_begin_immediate(st->db);
    if (r < 0)
        return r;
    cl_claim_result tmp;
    memset(&tmp, 0, sizeof(tmp));
    r = claim_locked(st->db, req, &tmp);
    r = finish_tx(st->db, r);
    *res = tmp;
    if (r < 0)
        res->host[0] = '\0';
    cl_debug(ST_LOG, "claim %s: %s", req->instance_uuid, r == 0 ? res->host : strerror(-r));
    return r;
}

int cl_store_claim(cl_store *st, const char *instance_uuid, const char *const *candidates,
                   size_t ncandidates, char out_host[CL_HOST_MAX])
{
    if (!instance_uuid || !out_host || (ncandidates && !candidates))
        return -EINVAL;
    cl_claim_req req = {.instance_uuid = instance_uuid, .candidates = candidates,
                        .ncandidates = ncandidates};
    cl_claim_result res;
    int r = cl_store_claim_ex(st, &req, &res);
    if (r == 0)
        cl_strlcpy(out_host, res.host, CL_HOST_MAX);
    return r;
}

int cl_store_allocation_release(cl_store *st, const char *instance_uuid)
{
    if (!instance_uuid)
        return -EINVAL;
    return alloc_delete(st->db, instance_uuid);
}

int cl_store_allocation_ensure(cl_store *st, const char *instance_uuid, const char *host)
{
    if (!instance_uuid || !host || !host[0])
        return -EINVAL;
    int r = cl_db_begin_immediate(st->db);
    if (r < 0)
        return r;
    live_row cur;
    char have[CL_HOST_MAX];
    cl_host h;
    int64_t now = cl_now_ms();
    bool need_insert = false;
    r = live_get(st->db, instance_uuid, &cur);
    if (r == 0)
        r = host_get_db(st->db, host, &h); /* unknown host: -ENOENT, not an FK error */
    if (r == 0)
        r = alloc_host(st->db, instance_uuid, have);
    if (r >= 0) {
        /* Missing, or recorded elsewhere: the agent reports where the domain really
         * runs, and the record follows it. */
        need_insert = r == 0 || strcmp(have, host) != 0;
        r = 0;
    }
    if (r == 0 && need_insert)
        r = alloc_delete(st->db, instance_uuid);
    if (r == 0 && need_insert)
        r = alloc_insert(st->db, instance_uuid, host, &cur.flavor, now);
    if (r == 0)
        r = instance_set_host(st->db, instance_uuid, host, -1, now);
    return finish_tx(st->db, r);
}
