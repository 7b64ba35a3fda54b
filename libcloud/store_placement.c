/*
 * store_placement.c - controller-store tables and functions for the placement concern
 * (schema step v4, see store_schema.h and store_placement.h).
 *
 * Design notes:
 *  - Host generation: triggers bump hosts.generation on every change of an allocation or
 *    migration allocation, whichever code path made it (claims, deletes, failures, the
 *    audit). The claim compares and swaps it (store.c), so a writer that ever bypassed
 *    the write lock (a future PostgreSQL backend with row locks) still could not place
 *    two instances on one free slot.
 *  - Server groups use Nova's own table names (instance_groups, instance_group_members)
 *    so they do not collide with anything the compute API keeps; a member is counted on
 *    a host while it holds an allocation there, so an ERROR or deleted member frees its
 *    slot in an anti-affinity group at once.
 *  - instance_placement keeps what the scheduler must know beyond the instance row: the
 *    hints of the create request and the log of failed build attempts (for retries and
 *    for the final fault). It has no foreign key to instances because nube-api writes it
 *    just before the instance row.
 *  - Migrations hold the source half of a move in migration_allocations (consumer = the
 *    migration uuid), the instance holds the destination half, so an aborted move can
 *    always give the source back without re-checking capacity.
 */
#include "store_placement.h"
#include "store_schema.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "db.h"
#include "log.h"
#include "util.h"

#define SP_LOG "store"

#define GEN_TRIGGER(tbl, ev, col)                                                          \
    "CREATE TRIGGER " tbl "_gen_" ev " AFTER " ev " ON " tbl " BEGIN"                      \
    " UPDATE hosts SET generation = generation + 1 WHERE name = " col ".host; END;"

#define PV_TRIGGER(tbl, ev)                                                                \
    "CREATE TRIGGER " tbl "_pv_" ev " AFTER " ev " ON " tbl " BEGIN"                       \
    " UPDATE placement_version SET version = version + 1; END;"

const char cl_store_schema_placement[] =
    "ALTER TABLE hosts ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE hosts ADD COLUMN hypervisor_version INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE hosts ADD COLUMN cpu_arch TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE hosts ADD COLUMN cpu_model TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE hosts ADD COLUMN maintenance INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE hosts ADD COLUMN max_instances INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE hosts ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE hosts ADD COLUMN last_failure_ms INTEGER NOT NULL DEFAULT 0;"
    GEN_TRIGGER("allocations", "INSERT", "NEW")
    GEN_TRIGGER("allocations", "DELETE", "OLD")
    "CREATE TRIGGER allocations_gen_UPDATE AFTER UPDATE ON allocations BEGIN"
    " UPDATE hosts SET generation = generation + 1 WHERE name IN (OLD.host, NEW.host); END;"
    "CREATE TABLE aggregates ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  uuid TEXT NOT NULL UNIQUE,"
    "  name TEXT NOT NULL UNIQUE,"
    "  availability_zone TEXT NOT NULL DEFAULT '',"
    "  created_ms INTEGER NOT NULL,"
    "  updated_ms INTEGER NOT NULL"
    ");"
    "CREATE TABLE aggregate_hosts ("
    "  aggregate_id INTEGER NOT NULL REFERENCES aggregates (id) ON DELETE CASCADE,"
    "  host TEXT NOT NULL,"
    "  PRIMARY KEY (aggregate_id, host)"
    ");"
    "CREATE INDEX aggregate_hosts_by_host ON aggregate_hosts (host);"
    "CREATE TABLE aggregate_metadata ("
    "  aggregate_id INTEGER NOT NULL REFERENCES aggregates (id) ON DELETE CASCADE,"
    "  key TEXT NOT NULL,"
    "  value TEXT NOT NULL,"
    "  PRIMARY KEY (aggregate_id, key)"
    ");"
    "CREATE TABLE instance_groups ("
    "  uuid TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  project_id TEXT NOT NULL,"
    "  user_id TEXT NOT NULL,"
    "  policy TEXT NOT NULL,"
    "  max_server_per_host INTEGER NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL"
    ");"
    "CREATE TABLE instance_group_members ("
    "  group_uuid TEXT NOT NULL REFERENCES instance_groups (uuid) ON DELETE CASCADE,"
    "  instance_uuid TEXT NOT NULL UNIQUE,"
    "  created_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (group_uuid, instance_uuid)"
    ");"
    "CREATE TABLE instance_placement ("
    "  instance_uuid TEXT PRIMARY KEY,"
    "  availability_zone TEXT NOT NULL DEFAULT '',"
    "  group_uuid TEXT NOT NULL DEFAULT '',"
    "  same_host TEXT NOT NULL DEFAULT '',"
    "  different_host TEXT NOT NULL DEFAULT '',"
    "  hypervisor_type TEXT NOT NULL DEFAULT '',"
    "  architecture TEXT NOT NULL DEFAULT '',"
    "  vm_mode TEXT NOT NULL DEFAULT '',"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  tried_hosts TEXT NOT NULL DEFAULT '',"
    "  attempt_faults TEXT NOT NULL DEFAULT ''"
    ");"
    "CREATE TABLE migrations ("
    "  uuid TEXT PRIMARY KEY,"
    "  instance_uuid TEXT NOT NULL,"
    "  source_host TEXT NOT NULL,"
    "  dest_host TEXT NOT NULL,"
    "  migration_type TEXT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  updated_ms INTEGER NOT NULL"
    ");"
    "CREATE INDEX migrations_by_instance ON migrations (instance_uuid, created_ms);"
    "CREATE TABLE migration_allocations ("
    "  migration_uuid TEXT PRIMARY KEY REFERENCES migrations (uuid) ON DELETE CASCADE,"
    "  host TEXT NOT NULL,"
    "  vcpus INTEGER NOT NULL,"
    "  ram_mb INTEGER NOT NULL,"
    "  disk_gb INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL"
    ");"
    "CREATE INDEX migration_allocations_by_host ON migration_allocations (host);"
    GEN_TRIGGER("migration_allocations", "INSERT", "NEW")
    GEN_TRIGGER("migration_allocations", "DELETE", "OLD")
    /* Bumped by every change the scheduler's host snapshot depends on but does not make
     * itself (aggregates, zones, operator settings), so it re-reads exactly then. */
    "CREATE TABLE placement_version (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " version INTEGER NOT NULL);"
    "INSERT INTO placement_version VALUES (1, 0);"
    PV_TRIGGER("aggregates", "INSERT") PV_TRIGGER("aggregates", "UPDATE")
    PV_TRIGGER("aggregates", "DELETE") PV_TRIGGER("aggregate_hosts", "INSERT")
    PV_TRIGGER("aggregate_hosts", "DELETE") PV_TRIGGER("aggregate_metadata", "INSERT")
    PV_TRIGGER("aggregate_metadata", "UPDATE") PV_TRIGGER("aggregate_metadata", "DELETE")
    "CREATE TRIGGER hosts_pv AFTER UPDATE OF enabled, maintenance, cpu_ratio, ram_ratio,"
    " disk_ratio, reserved_vcpus, reserved_ram_mb, reserved_disk_gb, max_instances, cpu_arch,"
    " hypervisor_type, hypervisor_version ON hosts BEGIN"
    " UPDATE placement_version SET version = version + 1; END;";

/* ---------------------------------------------------------------------------------- */
/* helpers                                                                             */

static int row(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);

    if (rc == SQLITE_ROW)
        return 1;
    if (rc == SQLITE_DONE)
        return 0;
    cl_debug(SP_LOG, "query failed (%d): %s", rc, sqlite3_errmsg(sqlite3_db_handle(s)));
    return cl_db_errno(rc) ? cl_db_errno(rc) : -EIO;
}

static int end_tx(cl_db *db, int r)
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

/* Run one statement with up to 4 text and 2 int parameters bound in order (NULL text
 * pointers after the used ones are ignored by passing n). Returns rows changed or <0. */
static int exec_bound(cl_db *db, const char *sql, const char *const *texts, size_t nt,
                      const int64_t *ints, size_t ni)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db, sql, &s);

    if (r < 0)
        return r;
    for (size_t i = 0; i < nt; i++)
        cl_db_bind_text(s, (int)i + 1, texts[i]);
    for (size_t i = 0; i < ni; i++)
        cl_db_bind_int64(s, (int)(nt + i) + 1, ints[i]);
    r = cl_db_step_done(s);
    return r < 0 ? r : cl_db_changes(db);
}

/* Append "\nk=v\n" style pair to a meta buffer (the buffer always starts with '\n'). */
static void meta_add(char *meta, const char *k, const char *v)
{
    size_t len = strlen(meta);
    size_t need = strlen(k) + strlen(v) + 2;

    if (len == 0) {
        meta[0] = '\n';
        meta[1] = '\0';
        len = 1;
    }
    if (len + need + 1 > CL_HOST_META_MAX)
        return; /* capped, documented in the header */
    snprintf(meta + len, CL_HOST_META_MAX - len, "%s=%s\n", k, v);
}

/* ---------------------------------------------------------------------------------- */
/* hosts                                                                               */

static int host_by_name(const void *key, const void *elem)
{
    return strcmp(key, ((const cl_host_ext *)elem)->name);
}

int cl_store_host_snapshot(cl_store *st, cl_host **hosts_out, cl_host_ext **ext_out,
                           size_t *n_out)
{
    cl_db *db = cl_store_db(st);
    _cleanup_free_ cl_host *hosts = NULL;
    _cleanup_free_ cl_host_ext *ext = NULL;
    size_t n = 0;
    int r;

    /* One read transaction: the host list and the extensions see the same state. */
    r = cl_db_begin(db);
    if (r < 0)
        return r;
    r = cl_store_host_list(st, &hosts, &n);
    if (r < 0)
        goto out;
    if (n > 0) {
        ext = calloc(n, sizeof(*ext));
        if (!ext) {
            r = -ENOMEM;
            goto out;
        }
    }
    {
        _cleanup_stmt_ sqlite3_stmt *s = NULL;
        size_t i = 0;

        r = cl_db_prepare(db,
                          "SELECT name, generation, hypervisor_type, hypervisor_version,"
                          " cpu_arch, cpu_model, disabled_reason, maintenance, max_instances,"
                          " failures, last_failure_ms FROM hosts ORDER BY name",
                          &s);
        if (r < 0)
            goto out;
        while ((r = row(s)) == 1 && i < n) {
            cl_host_ext *x = &ext[i++];

            cl_db_column_text(s, 0, x->name, sizeof(x->name));
            x->generation = sqlite3_column_int64(s, 1);
            cl_db_column_text(s, 2, x->hypervisor_type, sizeof(x->hypervisor_type));
            x->hypervisor_version = sqlite3_column_int64(s, 3);
            cl_db_column_text(s, 4, x->cpu_arch, sizeof(x->cpu_arch));
            cl_db_column_text(s, 5, x->cpu_model, sizeof(x->cpu_model));
            cl_db_column_text(s, 6, x->disabled_reason, sizeof(x->disabled_reason));
            x->maintenance = sqlite3_column_int(s, 7) != 0;
            x->max_instances = sqlite3_column_int64(s, 8);
            x->failures = sqlite3_column_int64(s, 9);
            x->last_failure_ms = sqlite3_column_int64(s, 10);
            cl_strlcpy(x->az, CL_DEFAULT_AZ, sizeof(x->az));
        }
        if (r < 0)
            goto out;
    }
    {
        /* Aggregate AZ and metadata of each member host. */
        _cleanup_stmt_ sqlite3_stmt *s = NULL;

        r = cl_db_prepare(db,
                          "SELECT ah.host, a.availability_zone, m.key, m.value"
                          " FROM aggregate_hosts ah JOIN aggregates a ON a.id = ah.aggregate_id"
                          " LEFT JOIN aggregate_metadata m ON m.aggregate_id = a.id"
                          " ORDER BY ah.host, a.id",
                          &s);
        if (r < 0)
            goto out;
        while ((r = row(s)) == 1) {
            const char *h = (const char *)sqlite3_column_text(s, 0);
            const char *az = (const char *)sqlite3_column_text(s, 1);
            const char *k = (const char *)sqlite3_column_text(s, 2);
            const char *v = (const char *)sqlite3_column_text(s, 3);
            cl_host_ext *x = h && n ? bsearch(h, ext, n, sizeof(*ext), host_by_name) : NULL;

            if (!x)
                continue;
            if (az && az[0])
                cl_strlcpy(x->az, az, sizeof(x->az));
            if (k && v)
                meta_add(x->meta, k, v);
        }
        if (r < 0)
            goto out;
    }
    r = 0;
out:
    cl_db_rollback(db); /* read-only: ends the snapshot */
    if (r < 0)
        return r;
    *hosts_out = TAKE_PTR(hosts);
    *ext_out = TAKE_PTR(ext);
    *n_out = n;
    return 0;
}

int cl_store_placement_version(cl_store *st, int64_t *out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st), "SELECT version FROM placement_version", &s);

    if (r < 0)
        return r;
    r = row(s);
    if (r <= 0)
        return r == 0 ? -EIO : r;
    *out = sqlite3_column_int64(s, 0);
    return 0;
}

static int host_update(cl_store *st, const char *sql, const char *const *t, size_t nt,
                       const int64_t *iv, size_t ni)
{
    int r = exec_bound(cl_store_db(st), sql, t, nt, iv, ni);

    if (r < 0)
        return r;
    return r > 0 ? 0 : -ENOENT;
}

int cl_store_host_set_caps(cl_store *st, const char *name, const char *hv_type,
                           int64_t hv_version, const char *arch, const char *cpu_model)
{
    if (!name)
        return -EINVAL;
    const char *t[] = {name, hv_type ? hv_type : "", arch ? arch : "",
                       cpu_model ? cpu_model : ""};
    int64_t iv[] = {hv_version};

    return host_update(st,
                       "UPDATE hosts SET hypervisor_type = CASE WHEN ?2 <> '' THEN ?2 ELSE"
                       " hypervisor_type END, cpu_arch = ?3, cpu_model = ?4,"
                       " hypervisor_version = ?5 WHERE name = ?1",
                       t, 4, iv, 1);
}

int cl_store_host_set_allocation(cl_store *st, const char *name, double cpu_ratio,
                                 double ram_ratio, double disk_ratio, int64_t res_vcpus,
                                 int64_t res_ram_mb, int64_t res_disk_gb)
{
    if (!name)
        return -EINVAL;
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    cl_db *db = cl_store_db(st);
    int r = cl_db_prepare(db,
                          "UPDATE hosts SET"
                          " cpu_ratio = CASE WHEN ?1 > 0 THEN ?1 ELSE cpu_ratio END,"
                          " ram_ratio = CASE WHEN ?2 > 0 THEN ?2 ELSE ram_ratio END,"
                          " disk_ratio = CASE WHEN ?3 > 0 THEN ?3 ELSE disk_ratio END,"
                          " reserved_vcpus = CASE WHEN ?4 >= 0 THEN ?4 ELSE reserved_vcpus END,"
                          " reserved_ram_mb = CASE WHEN ?5 >= 0 THEN ?5 ELSE reserved_ram_mb END,"
                          " reserved_disk_gb = CASE WHEN ?6 >= 0 THEN ?6 ELSE reserved_disk_gb END,"
                          " generation = generation + 1 WHERE name = ?7",
                          &s);
    if (r < 0)
        return r;
    sqlite3_bind_double(s, 1, isfinite(cpu_ratio) ? cpu_ratio : -1);
    sqlite3_bind_double(s, 2, isfinite(ram_ratio) ? ram_ratio : -1);
    sqlite3_bind_double(s, 3, isfinite(disk_ratio) ? disk_ratio : -1);
    cl_db_bind_int64(s, 4, res_vcpus);
    cl_db_bind_int64(s, 5, res_ram_mb);
    cl_db_bind_int64(s, 6, res_disk_gb);
    cl_db_bind_text(s, 7, name);
    r = cl_db_step_done(s);
    if (r < 0)
        return r;
    return cl_db_changes(db) > 0 ? 0 : -ENOENT;
}

int cl_store_host_set_status(cl_store *st, const char *name, bool enabled, const char *reason,
                             bool maintenance)
{
    if (!name)
        return -EINVAL;
    const char *t[] = {name, reason ? reason : ""};
    int64_t iv[] = {enabled ? 1 : 0, maintenance ? 1 : 0};

    return host_update(st,
                       "UPDATE hosts SET disabled_reason = ?2, enabled = ?3, maintenance = ?4"
                       " WHERE name = ?1",
                       t, 2, iv, 2);
}

int cl_store_host_set_max_instances(cl_store *st, const char *name, int64_t max)
{
    if (!name || max < 0)
        return -EINVAL;
    const char *t[] = {name};
    int64_t iv[] = {max};

    return host_update(st, "UPDATE hosts SET max_instances = ?2 WHERE name = ?1", t, 1, iv, 1);
}

int cl_store_host_record_build(cl_store *st, const char *name, bool ok)
{
    if (!name)
        return -EINVAL;
    const char *t[] = {name};
    int64_t iv[] = {cl_now_ms()};

    if (ok)
        return host_update(st, "UPDATE hosts SET failures = 0 WHERE name = ?1 AND ?2 > 0", t, 1,
                           iv, 1);
    return host_update(st,
                       "UPDATE hosts SET failures = failures + 1, last_failure_ms = ?2"
                       " WHERE name = ?1",
                       t, 1, iv, 1);
}

/* ---------------------------------------------------------------------------------- */
/* aggregates                                                                          */

void cl_aggregate_clear(cl_aggregate *a)
{
    if (!a)
        return;
    json_object_put(a->metadata);
    json_object_put(a->hosts);
    a->metadata = NULL;
    a->hosts = NULL;
}

static int aggregate_fill(cl_db *db, cl_aggregate *a)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r;

    a->metadata = json_object_new_object();
    a->hosts = json_object_new_array();
    if (!a->metadata || !a->hosts)
        return -ENOMEM;
    r = cl_db_prepare(db, "SELECT key, value FROM aggregate_metadata WHERE aggregate_id = ?"
                          " ORDER BY key", &s);
    if (r < 0)
        return r;
    cl_db_bind_int64(s, 1, a->id);
    while ((r = row(s)) == 1)
        json_object_object_add(a->metadata, (const char *)sqlite3_column_text(s, 0),
                               json_object_new_string((const char *)sqlite3_column_text(s, 1)));
    if (r < 0)
        return r;
    _cleanup_stmt_ sqlite3_stmt *h = NULL;
    r = cl_db_prepare(db, "SELECT host FROM aggregate_hosts WHERE aggregate_id = ? ORDER BY host",
                      &h);
    if (r < 0)
        return r;
    cl_db_bind_int64(h, 1, a->id);
    while ((r = row(h)) == 1)
        json_object_array_add(a->hosts,
                              json_object_new_string((const char *)sqlite3_column_text(h, 0)));
    return r < 0 ? r : 0;
}

#define AGG_COLS "id, uuid, name, availability_zone, created_ms, updated_ms"

static void aggregate_read(sqlite3_stmt *s, cl_aggregate *a)
{
    memset(a, 0, sizeof(*a));
    a->id = sqlite3_column_int64(s, 0);
    cl_db_column_text(s, 1, a->uuid, sizeof(a->uuid));
    cl_db_column_text(s, 2, a->name, sizeof(a->name));
    cl_db_column_text(s, 3, a->az, sizeof(a->az));
    a->created_ms = sqlite3_column_int64(s, 4);
    a->updated_ms = sqlite3_column_int64(s, 5);
}

int cl_store_aggregate_get(cl_store *st, int64_t id, cl_aggregate *out)
{
    cl_db *db = cl_store_db(st);
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db, "SELECT " AGG_COLS " FROM aggregates WHERE id = ?", &s);

    if (r < 0)
        return r;
    cl_db_bind_int64(s, 1, id);
    r = row(s);
    if (r <= 0)
        return r == 0 ? -ENOENT : r;
    aggregate_read(s, out);
    r = aggregate_fill(db, out);
    if (r < 0)
        cl_aggregate_clear(out);
    return r;
}

/* A cl_db_row_fn: one aggregate with its metadata and hosts (ctx is the cl_db). */
static int aggregate_row(sqlite3_stmt *s, void *elem, void *ctx)
{
    aggregate_read(s, elem);
    return aggregate_fill(ctx, elem);
}

/* A cl_db_clear_fn for the collector. */
static void aggregate_clear_elem(void *elem) { cl_aggregate_clear(elem); }

int cl_store_aggregate_list(cl_store *st, cl_aggregate **out, size_t *n_out)
{
    cl_db *db = cl_store_db(st);
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db, "SELECT " AGG_COLS " FROM aggregates ORDER BY id", &s);

    if (r < 0)
        return r;
    return cl_db_collect(s, sizeof(**out), aggregate_row, db, aggregate_clear_elem, (void **)out,
                         n_out);
}

int cl_store_aggregate_create(cl_store *st, const char *name, const char *az,
                              cl_aggregate *out)
{
    if (!name || !name[0])
        return -EINVAL;
    cl_db *db = cl_store_db(st);
    char uuid[CL_UUID_LEN];
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int64_t now = cl_now_ms();
    int r;

    cl_uuid_new(uuid);
    r = cl_db_prepare(db,
                      "INSERT INTO aggregates (uuid, name, availability_zone, created_ms,"
                      " updated_ms) VALUES (?, ?, ?, ?, ?)",
                      &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    cl_db_bind_text(s, 2, name);
    cl_db_bind_text(s, 3, az ? az : "");
    cl_db_bind_int64(s, 4, now);
    cl_db_bind_int64(s, 5, now);
    r = cl_db_step_done(s);
    if (r < 0)
        return r;
    int64_t id = sqlite3_last_insert_rowid(cl_db_handle(db));

    if (az && az[0]) {
        const char *t[] = {az};
        int64_t iv[] = {id};

        r = exec_bound(db, "INSERT OR REPLACE INTO aggregate_metadata (value, aggregate_id, key)"
                           " VALUES (?, ?, 'availability_zone')", t, 1, iv, 1);
        if (r < 0)
            return r;
    }
    return out ? cl_store_aggregate_get(st, id, out) : 0;
}

int cl_store_aggregate_update(cl_store *st, int64_t id, const char *name, const char *az)
{
    cl_db *db = cl_store_db(st);
    int r = cl_db_begin_immediate(db);

    if (r < 0)
        return r;
    const char *t[] = {name, az};
    int64_t iv[] = {cl_now_ms(), id};

    r = exec_bound(db,
                   "UPDATE aggregates SET name = COALESCE(?1, name),"
                   " availability_zone = COALESCE(?2, availability_zone), updated_ms = ?3"
                   " WHERE id = ?4",
                   t, 2, iv, 2);
    if (r == 0)
        r = -ENOENT;
    if (r > 0 && az) {
        const char *t2[] = {az};
        int64_t iv2[] = {id};

        r = exec_bound(db, az[0] ? "INSERT OR REPLACE INTO aggregate_metadata (value,"
                                   " aggregate_id, key) VALUES (?, ?, 'availability_zone')"
                                 : "DELETE FROM aggregate_metadata WHERE ? = '' AND"
                                   " aggregate_id = ? AND key = 'availability_zone'",
                       t2, 1, iv2, 1);
    }
    return end_tx(db, r < 0 ? r : 0);
}

int cl_store_aggregate_delete(cl_store *st, int64_t id)
{
    cl_db *db = cl_store_db(st);
    int r = cl_db_begin_immediate(db);

    if (r < 0)
        return r;
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    r = cl_db_prepare(db, "SELECT count(*) FROM aggregate_hosts WHERE aggregate_id = ?", &s);
    if (r == 0) {
        cl_db_bind_int64(s, 1, id);
        r = row(s);
        if (r == 1)
            r = sqlite3_column_int64(s, 0) > 0 ? -EBUSY : 0;
    }
    if (r == 0) {
        int64_t iv[] = {id};

        r = exec_bound(db, "DELETE FROM aggregates WHERE id = ?", NULL, 0, iv, 1);
        if (r == 0)
            r = -ENOENT;
    }
    return end_tx(db, r < 0 ? r : 0);
}

int cl_store_aggregate_add_host(cl_store *st, int64_t id, const char *host, cl_error *err)
{
    if (!host || !host[0])
        return -EINVAL;
    cl_db *db = cl_store_db(st);
    cl_aggregate a;
    cl_host h;
    int r = cl_db_begin_immediate(db);

    if (r < 0)
        return r;
    r = cl_store_aggregate_get(st, id, &a);
    if (r < 0)
        return end_tx(db, r);
    cl_aggregate_clear(&a);
    r = cl_store_host_get(st, host, &h);
    if (r == -ENOENT)
        cl_error_set(err, CL_E_NOT_FOUND, "Compute host %s could not be found.", host);
    if (r == 0 && a.az[0]) {
        /* Nova refuses a host in two AZs: it would be in neither reliably. */
        _cleanup_stmt_ sqlite3_stmt *s = NULL;

        r = cl_db_prepare(db,
                          "SELECT a.availability_zone FROM aggregate_hosts ah JOIN aggregates a"
                          " ON a.id = ah.aggregate_id WHERE ah.host = ? AND a.id <> ?"
                          " AND a.availability_zone <> '' AND a.availability_zone <> ?",
                          &s);
        if (r == 0) {
            cl_db_bind_text(s, 1, host);
            cl_db_bind_int64(s, 2, id);
            cl_db_bind_text(s, 3, a.az);
            r = row(s);
            if (r == 1) {
                cl_error_set(err, CL_E_CONFLICT,
                             "Cannot add host %s to aggregate %" PRId64 ": it is already in "
                             "availability zone %s", host, id, sqlite3_column_text(s, 0));
                r = -EINVAL;
            }
        }
    }
    if (r == 0) {
        const char *t[] = {host};
        int64_t iv[] = {id};

        r = exec_bound(db, "INSERT INTO aggregate_hosts (host, aggregate_id) VALUES (?, ?)", t,
                       1, iv, 1);
        if (r == -EEXIST)
            cl_error_set(err, CL_E_CONFLICT, "Host %s is already in aggregate %" PRId64, host,
                         id);
    }
    return end_tx(db, r < 0 ? r : 0);
}

int cl_store_aggregate_remove_host(cl_store *st, int64_t id, const char *host)
{
    if (!host)
        return -EINVAL;
    const char *t[] = {host};
    int64_t iv[] = {id};
    int r = exec_bound(cl_store_db(st),
                       "DELETE FROM aggregate_hosts WHERE host = ? AND aggregate_id = ?", t, 1,
                       iv, 1);

    if (r < 0)
        return r;
    return r > 0 ? 0 : -ENOENT;
}

int cl_store_aggregate_set_metadata(cl_store *st, int64_t id, json_object *meta)
{
    if (!meta || !json_object_is_type(meta, json_type_object))
        return -EINVAL;
    cl_db *db = cl_store_db(st);
    int r = cl_db_begin_immediate(db);

    if (r < 0)
        return r;
    {
        int64_t iv[] = {cl_now_ms(), id};

        r = exec_bound(db, "UPDATE aggregates SET updated_ms = ? WHERE id = ?", NULL, 0, iv, 2);
        if (r == 0)
            r = -ENOENT;
    }
    json_object_object_foreach(meta, k, v) {
        if (r < 0)
            break;
        int64_t iv[] = {id};
        bool del = !v || json_object_is_type(v, json_type_null);
        const char *val = del ? "" : json_object_get_string(v);
        const char *t[] = {k, val};

        if (strlen(k) > 255 || strlen(val) > 255) {
            r = -EINVAL;
            break;
        }
        r = exec_bound(db, del ? "DELETE FROM aggregate_metadata WHERE key = ?1 AND"
                                 " ?2 = ?2 AND aggregate_id = ?3"
                               : "INSERT OR REPLACE INTO aggregate_metadata (key, value,"
                                 " aggregate_id) VALUES (?, ?, ?)",
                       t, 2, iv, 1);
        if (r >= 0 && strcmp(k, "availability_zone") == 0) {
            const char *t2[] = {val};

            r = exec_bound(db, "UPDATE aggregates SET availability_zone = ? WHERE id = ?", t2,
                           1, iv, 1);
        }
    }
    return end_tx(db, r < 0 ? r : 0);
}

/* ---------------------------------------------------------------------------------- */
/* server groups                                                                       */

static const char *const policy_names[CL_GROUP_POLICY_MAX] = {
    "affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"};

const char *cl_group_policy_name(cl_group_policy p)
{
    return (unsigned)p < CL_GROUP_POLICY_MAX ? policy_names[p] : "unknown";
}

int cl_group_policy_parse(const char *s, cl_group_policy *out)
{
    for (int i = 0; s && i < CL_GROUP_POLICY_MAX; i++) {
        if (strcmp(s, policy_names[i]) == 0) {
            *out = (cl_group_policy)i;
            return 0;
        }
    }
    return -EINVAL;
}

#define GROUP_COLS "uuid, name, project_id, user_id, policy, max_server_per_host, created_ms"

/* A cl_db_row_fn: decode one GROUP_COLS row into elem (a cl_server_group). */
static int group_read(sqlite3_stmt *s, void *elem, void *ctx)
{
    cl_server_group *g = elem;

    (void)ctx;
    memset(g, 0, sizeof(*g));
    cl_db_column_text(s, 0, g->uuid, sizeof(g->uuid));
    cl_db_column_text(s, 1, g->name, sizeof(g->name));
    cl_db_column_text(s, 2, g->project_id, sizeof(g->project_id));
    cl_db_column_text(s, 3, g->user_id, sizeof(g->user_id));
    if (cl_group_policy_parse((const char *)sqlite3_column_text(s, 4), &g->policy) < 0)
        return -EIO;
    g->max_server_per_host = sqlite3_column_int64(s, 5);
    g->created_ms = sqlite3_column_int64(s, 6);
    return 0;
}

int cl_store_group_create(cl_store *st, const cl_server_group *g)
{
    if (!g || !cl_uuid_valid(g->uuid) || (unsigned)g->policy >= CL_GROUP_POLICY_MAX ||
        g->max_server_per_host < 0)
        return -EINVAL;
    const char *t[] = {g->uuid, g->name, g->project_id, g->user_id,
                       cl_group_policy_name(g->policy)};
    int64_t iv[] = {g->max_server_per_host, cl_now_ms()};
    int r = exec_bound(cl_store_db(st),
                       "INSERT INTO instance_groups (" GROUP_COLS ") VALUES (?,?,?,?,?,?,?)", t,
                       5, iv, 2);

    return r < 0 ? r : 0;
}

int cl_store_group_get(cl_store *st, const char *uuid, cl_server_group *out)
{
    if (!uuid)
        return -EINVAL;
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st),
                          "SELECT " GROUP_COLS " FROM instance_groups WHERE uuid = ?", &s);

    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    r = row(s);
    if (r <= 0)
        return r == 0 ? -ENOENT : r;
    return group_read(s, out, NULL);
}

int cl_store_group_list(cl_store *st, const char *project_id, cl_server_group **out,
                        size_t *n_out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st),
                          "SELECT " GROUP_COLS " FROM instance_groups WHERE ?1 IS NULL OR"
                          " project_id = ?1 ORDER BY created_ms, uuid",
                          &s);

    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, project_id);
    return cl_db_collect(s, sizeof(**out), group_read, NULL, NULL, (void **)out, n_out);
}

int cl_store_group_delete(cl_store *st, const char *uuid)
{
    if (!uuid)
        return -EINVAL;
    const char *t[] = {uuid};
    int r = exec_bound(cl_store_db(st), "DELETE FROM instance_groups WHERE uuid = ?", t, 1,
                       NULL, 0);

    if (r < 0)
        return r;
    return r > 0 ? 0 : -ENOENT;
}

/* cl_db_row_fns for one-column rows of uuids (elem: char[CL_UUID_LEN]) and of host names
 * (elem: char[CL_HOST_MAX]). */
static int uuid_read(sqlite3_stmt *s, void *elem, void *ctx)
{
    (void)ctx;
    cl_db_column_text(s, 0, elem, CL_UUID_LEN);
    return 0;
}

static int host_name_read(sqlite3_stmt *s, void *elem, void *ctx)
{
    (void)ctx;
    cl_db_column_text(s, 0, elem, CL_HOST_MAX);
    return 0;
}

int cl_store_group_members(cl_store *st, const char *uuid, char (**out)[CL_UUID_LEN],
                           size_t *n_out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st),
                          "SELECT m.instance_uuid FROM instance_group_members m JOIN instances i"
                          " ON i.uuid = m.instance_uuid WHERE m.group_uuid = ? AND"
                          " i.vm_state <> 'deleted' ORDER BY m.created_ms, m.instance_uuid",
                          &s);

    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    return cl_db_collect(s, sizeof(**out), uuid_read, NULL, NULL, (void **)out, n_out);
}

static int member_add(cl_db *db, const char *group, const char *inst)
{
    const char *t[] = {group, inst};
    int64_t iv[] = {cl_now_ms()};
    int r = exec_bound(db,
                       "INSERT INTO instance_group_members (group_uuid, instance_uuid,"
                       " created_ms) VALUES (?, ?, ?)",
                       t, 2, iv, 1);

    return r < 0 ? r : 0;
}

int cl_store_group_add_member(cl_store *st, const char *group_uuid, const char *instance_uuid)
{
    cl_server_group g;
    int r;

    if (!group_uuid || !instance_uuid)
        return -EINVAL;
    r = cl_store_group_get(st, group_uuid, &g);
    if (r < 0)
        return r;
    return member_add(cl_store_db(st), group_uuid, instance_uuid);
}

int cl_store_group_member_hosts(cl_store *st, const char *group_uuid, const char *except_uuid,
                                char (**out)[CL_HOST_MAX], size_t *n_out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st),
                          "SELECT a.host FROM allocations a JOIN instance_group_members m"
                          " ON m.instance_uuid = a.instance_uuid WHERE m.group_uuid = ?1"
                          " AND (?2 IS NULL OR a.instance_uuid <> ?2) ORDER BY a.host",
                          &s);

    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, group_uuid);
    cl_db_bind_text(s, 2, except_uuid);
    return cl_db_collect(s, sizeof(**out), host_name_read, NULL, NULL, (void **)out, n_out);
}

int cl_store_placement_flavor_specs(cl_store *st, const char *flavor_id, const char *prefix,
                          char (**keys)[256], char (**values)[256], size_t *n_out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    _cleanup_free_ char(*k)[256] = NULL;
    _cleanup_free_ char(*v)[256] = NULL;
    size_t n = 0, cap = 0, plen = prefix ? strlen(prefix) : 0;
    int r;

    *keys = NULL;
    *values = NULL;
    *n_out = 0;
    /* The table belongs to the compute concern (v3); without it there are no specs. */
    if (sqlite3_prepare_v2(cl_db_handle(cl_store_db(st)),
                           "SELECT spec_key, spec_value FROM flavor_extra_specs"
                           " WHERE flavor_id = ? ORDER BY spec_key",
                           -1, &s, NULL) != SQLITE_OK)
        return 0;
    cl_db_bind_text(s, 1, flavor_id);
    while ((r = row(s)) == 1) {
        const char *key = (const char *)sqlite3_column_text(s, 0);

        if (!key || strncmp(key, prefix ? prefix : "", plen) != 0)
            continue;
        size_t c2 = cap;
        if (cl_grow_array((void **)&k, &cap, n, sizeof(*k)) < 0 ||
            cl_grow_array((void **)&v, &c2, n, sizeof(*v)) < 0)
            return -ENOMEM;
        cl_strlcpy(k[n], key + plen, sizeof(k[n]));
        cl_db_column_text(s, 1, v[n], sizeof(v[n]));
        n++;
    }
    if (r < 0)
        return r;
    *keys = TAKE_PTR(k);
    *values = TAKE_PTR(v);
    *n_out = n;
    return 0;
}

int cl_store_group_of(cl_store *st, const char *instance_uuid, cl_server_group *out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st),
                          "SELECT g.uuid, g.name, g.project_id, g.user_id, g.policy,"
                          " g.max_server_per_host, g.created_ms FROM instance_group_members m"
                          " JOIN instance_groups g ON g.uuid = m.group_uuid"
                          " WHERE m.instance_uuid = ?",
                          &s);

    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, instance_uuid);
    r = row(s);
    if (r <= 0)
        return r == 0 ? -ENOENT : r;
    return group_read(s, out, NULL);
}

/* ---------------------------------------------------------------------------------- */
/* scheduler hints                                                                     */

/* A hint that is a string or a list of strings, joined with commas into out. */
static int hint_list(json_object *v, char *out, size_t outlen, const char *what, cl_error *err)
{
    out[0] = '\0';
    if (!v)
        return 0;
    if (json_object_is_type(v, json_type_string)) {
        if (strlen(json_object_get_string(v)) >= outlen)
            return cl_error_set(err, CL_E_BAD_REQUEST, "Scheduler hint %s is too long", what),
                   -EINVAL;
        cl_strlcpy(out, json_object_get_string(v), outlen);
        return 0;
    }
    if (!json_object_is_type(v, json_type_array))
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for scheduler hint %s: expected a string or a list",
                            what), -EINVAL;
    size_t len = 0;

    for (size_t i = 0; i < json_object_array_length(v); i++) {
        json_object *e = json_object_array_get_idx(v, i);

        if (!json_object_is_type(e, json_type_string))
            return cl_error_set(err, CL_E_BAD_REQUEST,
                                "Invalid input for scheduler hint %s: expected strings", what),
                   -EINVAL;
        int n = snprintf(out + len, outlen - len, "%s%s", len ? "," : "",
                         json_object_get_string(e));
        if (n < 0 || (size_t)n >= outlen - len)
            return cl_error_set(err, CL_E_BAD_REQUEST, "Scheduler hint %s is too long", what),
                   -EINVAL;
        len += (size_t)n;
    }
    return 0;
}

/* A string from hints, else from server metadata under one of the names. */
static void hint_str(json_object *hints, json_object *meta, const char *const *names,
                     size_t nn, char *out, size_t outlen)
{
    json_object *v;

    out[0] = '\0';
    for (size_t i = 0; i < nn; i++) {
        if (hints && json_object_object_get_ex(hints, names[i], &v) &&
            json_object_is_type(v, json_type_string)) {
            cl_strlcpy(out, json_object_get_string(v), outlen);
            return;
        }
        if (meta && json_object_object_get_ex(meta, names[i], &v) &&
            json_object_is_type(v, json_type_string)) {
            cl_strlcpy(out, json_object_get_string(v), outlen);
            return;
        }
    }
}

int cl_store_placement_hints_record(cl_store *st, const char *instance_uuid, json_object *root,
                                    cl_error *err)
{
    static const char *const hv_names[] = {"hypervisor_type", "img_hv_type"};
    static const char *const arch_names[] = {"architecture", "hw_architecture"};
    static const char *const mode_names[] = {"vm_mode", "hw_vm_mode"};
    json_object *srv = NULL, *hints = NULL, *meta = NULL, *v;
    cl_sched_hints h;
    cl_db *db = cl_store_db(st);
    int r;

    if (!instance_uuid || !root)
        return -EINVAL;
    memset(&h, 0, sizeof(h));
    json_object_object_get_ex(root, "server", &srv);
    if (!json_object_object_get_ex(root, "os:scheduler_hints", &hints))
        json_object_object_get_ex(root, "OS-SCH-HNT:scheduler_hints", &hints);
    if (hints && !json_object_is_type(hints, json_type_object))
        return cl_error_set(err, CL_E_BAD_REQUEST, "os:scheduler_hints must be an object"),
               -EINVAL;
    if (srv)
        json_object_object_get_ex(srv, "metadata", &meta);
    if (meta && !json_object_is_type(meta, json_type_object))
        meta = NULL;

    if (srv && json_object_object_get_ex(srv, "availability_zone", &v) &&
        json_object_is_type(v, json_type_string)) {
        /* Nova's "az:host[:node]" forces a host; only the zone part is honoured here. */
        const char *az = json_object_get_string(v);
        size_t len = strcspn(az, ":");

        if (len >= sizeof(h.az))
            return cl_error_set(err, CL_E_BAD_REQUEST, "availability_zone is too long"),
                   -EINVAL;
        memcpy(h.az, az, len);
        h.az[len] = '\0';
    }
    if (hints && json_object_object_get_ex(hints, "group", &v)) {
        if (!json_object_is_type(v, json_type_string) ||
            !cl_uuid_valid(json_object_get_string(v)))
            return cl_error_set(err, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute group: expected a uuid"),
                   -EINVAL;
        cl_strlcpy(h.group, json_object_get_string(v), sizeof(h.group));
    }
    r = hint_list(hints ? json_object_object_get(hints, "same_host") : NULL, h.same_host,
                  sizeof(h.same_host), "same_host", err);
    if (r == 0)
        r = hint_list(hints ? json_object_object_get(hints, "different_host") : NULL,
                      h.different_host, sizeof(h.different_host), "different_host", err);
    if (r < 0)
        return r;
    hint_str(hints, meta, hv_names, CL_ARRAY_SIZE(hv_names), h.hypervisor_type,
             sizeof(h.hypervisor_type));
    hint_str(hints, meta, arch_names, CL_ARRAY_SIZE(arch_names), h.architecture,
             sizeof(h.architecture));
    hint_str(hints, meta, mode_names, CL_ARRAY_SIZE(mode_names), h.vm_mode, sizeof(h.vm_mode));
    /* Most requests carry none: no row, no write transaction (a missing row reads as
     * "no hints", and a retry creates it). */
    if (!h.az[0] && !h.group[0] && !h.same_host[0] && !h.different_host[0] &&
        !h.hypervisor_type[0] && !h.architecture[0] && !h.vm_mode[0])
        return 0;

    r = cl_db_begin_immediate(db);
    if (r < 0)
        return r;
    if (h.group[0]) {
        cl_server_group g;

        r = cl_store_group_get(st, h.group, &g);
        if (r == -ENOENT)
            cl_error_set(err, CL_E_BAD_REQUEST, "Invalid server group %s: not found", h.group);
        if (r == 0)
            r = member_add(db, h.group, instance_uuid);
    }
    if (r == 0) {
        const char *t[] = {instance_uuid, h.az, h.group, h.same_host, h.different_host,
                           h.hypervisor_type, h.architecture, h.vm_mode};

        r = exec_bound(db,
                       "INSERT OR REPLACE INTO instance_placement (instance_uuid,"
                       " availability_zone, group_uuid, same_host, different_host,"
                       " hypervisor_type, architecture, vm_mode) VALUES (?,?,?,?,?,?,?,?)",
                       t, 8, NULL, 0);
        r = r < 0 ? r : 0;
    }
    if (r < 0 && r != -ENOENT)
        cl_error_set(err, r == -EBUSY ? CL_E_UNAVAILABLE : CL_E_INTERNAL,
                     "Cannot record the scheduler hints (%s)", strerror(-r));
    return end_tx(db, r);
}

int cl_store_placement_hints_get(cl_store *st, const char *instance_uuid, cl_sched_hints *out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st),
                          "SELECT availability_zone, group_uuid, same_host, different_host,"
                          " hypervisor_type, architecture, vm_mode, attempts, tried_hosts,"
                          " attempt_faults FROM instance_placement WHERE instance_uuid = ?",
                          &s);

    memset(out, 0, sizeof(*out));
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, instance_uuid);
    r = row(s);
    if (r <= 0)
        return r == 0 ? -ENOENT : r;
    cl_db_column_text(s, 0, out->az, sizeof(out->az));
    cl_db_column_text(s, 1, out->group, sizeof(out->group));
    cl_db_column_text(s, 2, out->same_host, sizeof(out->same_host));
    cl_db_column_text(s, 3, out->different_host, sizeof(out->different_host));
    cl_db_column_text(s, 4, out->hypervisor_type, sizeof(out->hypervisor_type));
    cl_db_column_text(s, 5, out->architecture, sizeof(out->architecture));
    cl_db_column_text(s, 6, out->vm_mode, sizeof(out->vm_mode));
    out->attempts = sqlite3_column_int64(s, 7);
    cl_db_column_text(s, 8, out->tried_hosts, sizeof(out->tried_hosts));
    cl_db_column_text(s, 9, out->attempt_faults, sizeof(out->attempt_faults));
    return 0;
}

int cl_store_placement_release_for_retry(cl_store *st, const char *instance_uuid,
                                         const char *host, const char *fault,
                                         int64_t *out_attempts)
{
    if (!instance_uuid || !host || !host[0])
        return -EINVAL;
    cl_db *db = cl_store_db(st);
    cl_instance inst;
    cl_sched_hints h;
    int r = cl_db_begin_immediate(db);

    if (r < 0)
        return r;
    r = cl_store_instance_get(st, instance_uuid, &inst);
    if (r == 0 && (inst.vm_state != CL_VM_BUILDING || inst.task_state == CL_TASK_DELETING ||
                   strcmp(inst.host, host) != 0))
        r = -ENOENT;
    if (r == 0) {
        r = cl_store_placement_hints_get(st, instance_uuid, &h);
        if (r == -ENOENT)
            r = 0; /* created before v4 or by a test: an empty log */
    }
    if (r == 0) {
        char tried[CL_HINT_LIST_MAX], faults[CL_FAULT_MAX];

        /* Both logs are capped: a long history keeps its oldest entries. */
        if (snprintf(tried, sizeof(tried), "%s%s%s", h.tried_hosts,
                     h.tried_hosts[0] ? "," : "", host) >= (int)sizeof(tried))
            cl_debug(SP_LOG, "tried-hosts log of %s truncated", instance_uuid);
        if (snprintf(faults, sizeof(faults), "%s%sattempt %lld on %s: %s", h.attempt_faults,
                     h.attempt_faults[0] ? "; " : "", (long long)h.attempts + 1, host,
                     fault && fault[0] ? fault : "spawn failed") >= (int)sizeof(faults))
            cl_debug(SP_LOG, "attempt log of %s truncated", instance_uuid);
        const char *t[] = {instance_uuid, tried, faults};

        r = exec_bound(db,
                       "INSERT INTO instance_placement (instance_uuid, attempts, tried_hosts,"
                       " attempt_faults) VALUES (?1, 1, ?2, ?3) ON CONFLICT (instance_uuid) DO"
                       " UPDATE SET attempts = attempts + 1, tried_hosts = ?2,"
                       " attempt_faults = ?3",
                       t, 3, NULL, 0);
        if (out_attempts)
            *out_attempts = h.attempts + 1;
    }
    if (r >= 0) {
        const char *t[] = {instance_uuid};

        r = exec_bound(db, "DELETE FROM allocations WHERE instance_uuid = ?", t, 1, NULL, 0);
    }
    if (r >= 0) {
        const char *t[] = {instance_uuid};
        int64_t iv[] = {cl_now_ms()};

        r = exec_bound(db,
                       "UPDATE instances SET host = '', task_state = 'scheduling',"
                       " updated_ms = ?2 WHERE uuid = ?1",
                       t, 1, iv, 1);
    }
    if (r >= 0) {
        const char *t[] = {host};
        int64_t iv[] = {cl_now_ms()};

        r = exec_bound(db,
                       "UPDATE hosts SET failures = failures + 1, last_failure_ms = ?2"
                       " WHERE name = ?1",
                       t, 1, iv, 1);
    }
    return end_tx(db, r < 0 ? r : 0);
}

/* ---------------------------------------------------------------------------------- */
/* migrations                                                                          */

#define MIG_COLS                                                                           \
    "uuid, instance_uuid, source_host, dest_host, migration_type, status, created_ms,"     \
    " updated_ms"

int cl_store_migration_get(cl_store *st, const char *uuid, cl_migration *out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st), "SELECT " MIG_COLS " FROM migrations WHERE uuid = ?",
                          &s);

    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    r = row(s);
    if (r <= 0)
        return r == 0 ? -ENOENT : r;
    memset(out, 0, sizeof(*out));
    cl_db_column_text(s, 0, out->uuid, sizeof(out->uuid));
    cl_db_column_text(s, 1, out->instance_uuid, sizeof(out->instance_uuid));
    cl_db_column_text(s, 2, out->source_host, sizeof(out->source_host));
    cl_db_column_text(s, 3, out->dest_host, sizeof(out->dest_host));
    cl_db_column_text(s, 4, out->type, sizeof(out->type));
    cl_db_column_text(s, 5, out->status, sizeof(out->status));
    out->created_ms = sqlite3_column_int64(s, 6);
    out->updated_ms = sqlite3_column_int64(s, 7);
    return 0;
}

int cl_store_migration_begin(cl_store *st, const char *instance_uuid, const char *dest,
                             const char *type, cl_migration *out)
{
    if (!instance_uuid || !dest || !dest[0])
        return -EINVAL;
    cl_db *db = cl_store_db(st);
    cl_instance inst;
    cl_host h;
    cl_migration m;
    int64_t now = cl_now_ms();
    int r = cl_db_begin_immediate(db);

    if (r < 0)
        return r;
    memset(&m, 0, sizeof(m));
    r = cl_store_instance_get(st, instance_uuid, &inst);
    if (r == 0 && (inst.vm_state == CL_VM_DELETED || !inst.host[0]))
        r = -ENOENT;
    if (r == 0 && strcmp(inst.host, dest) == 0)
        r = -EINVAL;
    if (r == 0) {
        _cleanup_stmt_ sqlite3_stmt *s = NULL;

        r = cl_db_prepare(db,
                          "SELECT 1 FROM migrations m JOIN migration_allocations a ON"
                          " a.migration_uuid = m.uuid WHERE m.instance_uuid = ?",
                          &s);
        if (r == 0) {
            cl_db_bind_text(s, 1, instance_uuid);
            r = row(s);
            r = r == 1 ? -EBUSY : r;
        }
    }
    if (r == 0)
        r = cl_store_host_get(st, dest, &h);
    int64_t disk = inst.flavor.disk_gb + inst.flavor.ephemeral_gb +
                   (inst.flavor.swap_mb + 1023) / 1024;
    if (r == 0 && (!h.up || !h.enabled || cl_host_free_vcpus(&h) < inst.flavor.vcpus ||
                   cl_host_free_ram_mb(&h) < inst.flavor.ram_mb ||
                   cl_host_free_disk_gb(&h) < disk))
        r = -ENOSPC;
    if (r == 0) {
        cl_uuid_new(m.uuid);
        cl_strlcpy(m.instance_uuid, instance_uuid, sizeof(m.instance_uuid));
        cl_strlcpy(m.source_host, inst.host, sizeof(m.source_host));
        cl_strlcpy(m.dest_host, dest, sizeof(m.dest_host));
        cl_strlcpy(m.type, type ? type : "migration", sizeof(m.type));
        cl_strlcpy(m.status, "migrating", sizeof(m.status));
        m.created_ms = m.updated_ms = now;
        const char *t[] = {m.uuid, m.instance_uuid, m.source_host, m.dest_host, m.type,
                           m.status};
        int64_t iv[] = {now, now};

        r = exec_bound(db, "INSERT INTO migrations (" MIG_COLS ") VALUES (?,?,?,?,?,?,?,?)", t,
                       6, iv, 2);
    }
    if (r >= 0) {
        /* The source half moves from the instance to the migration ... */
        const char *t[] = {m.uuid, instance_uuid};
        int64_t iv[] = {now};

        r = exec_bound(db,
                       "INSERT INTO migration_allocations (migration_uuid, host, vcpus, ram_mb,"
                       " disk_gb, created_ms) SELECT ?1, host, vcpus, ram_mb, disk_gb, ?3 FROM"
                       " allocations WHERE instance_uuid = ?2",
                       t, 2, iv, 1);
    }
    if (r >= 0) {
        /* ... and the instance's allocation moves to the destination. */
        const char *t[] = {dest, instance_uuid};

        r = exec_bound(db, "UPDATE allocations SET host = ?1 WHERE instance_uuid = ?2", t, 2,
                       NULL, 0);
    }
    r = end_tx(db, r < 0 ? r : 0);
    if (r == 0 && out)
        *out = m;
    return r;
}

int cl_store_migration_finish(cl_store *st, const char *migration_uuid, bool success)
{
    cl_db *db = cl_store_db(st);
    cl_migration m;
    int64_t now = cl_now_ms();
    int r = cl_db_begin_immediate(db);

    if (r < 0)
        return r;
    r = cl_store_migration_get(st, migration_uuid, &m);
    if (r == 0) {
        const char *t[] = {m.uuid, success ? "finished" : "error"};
        int64_t iv[] = {now};

        r = exec_bound(db, "UPDATE migrations SET status = ?2, updated_ms = ?3 WHERE uuid = ?1",
                       t, 2, iv, 1);
    }
    if (r >= 0 && success) {
        const char *t[] = {m.instance_uuid, m.dest_host};
        int64_t iv[] = {now};

        r = exec_bound(db, "UPDATE instances SET host = ?2, updated_ms = ?3 WHERE uuid = ?1", t,
                       2, iv, 1);
    }
    if (r >= 0 && !success) {
        const char *t[] = {m.instance_uuid, m.source_host};

        r = exec_bound(db, "UPDATE allocations SET host = ?2 WHERE instance_uuid = ?1", t, 2,
                       NULL, 0);
    }
    if (r >= 0) {
        const char *t[] = {m.uuid};

        r = exec_bound(db, "DELETE FROM migration_allocations WHERE migration_uuid = ?", t, 1,
                       NULL, 0);
    }
    return end_tx(db, r < 0 ? r : 0);
}

/* ---------------------------------------------------------------------------------- */
/* audit                                                                               */

static const char *const audit_names[CL_AUDIT_KIND_MAX] = {
    "orphan-allocation", "missing-allocation",   "wrong-host",
    "wrong-size",        "unknown-host",         "orphan-migration-allocation"};

const char *cl_audit_kind_name(cl_audit_kind k)
{
    return (unsigned)k < CL_AUDIT_KIND_MAX ? audit_names[k] : "unknown";
}

/* Each check: a query returning (consumer, host, detail), and the repair for one row. */
static const struct {
    cl_audit_kind kind;
    const char *find;
    const char *repair; /* ?1 consumer, ?2 host */
} audit_checks[] = {
    {CL_AUDIT_UNKNOWN_HOST,
     "SELECT a.instance_uuid, a.host, 'allocation on a host that is not registered'"
     " FROM allocations a LEFT JOIN hosts h ON h.name = a.host WHERE h.id IS NULL",
     "DELETE FROM allocations WHERE instance_uuid = ?1 AND ?2 = ?2"},
    {CL_AUDIT_ORPHAN_ALLOCATION,
     "SELECT a.instance_uuid, a.host, 'instance is ' || COALESCE(i.vm_state, 'missing')"
     " FROM allocations a LEFT JOIN instances i ON i.uuid = a.instance_uuid"
     " WHERE i.uuid IS NULL OR i.vm_state IN ('deleted', 'error') OR i.host = ''",
     "DELETE FROM allocations WHERE instance_uuid = ?1 AND ?2 = ?2"},
    {CL_AUDIT_WRONG_HOST,
     "SELECT a.instance_uuid, a.host, 'instance row says ' || i.host FROM allocations a"
     " JOIN instances i ON i.uuid = a.instance_uuid WHERE i.host <> '' AND i.host <> a.host"
     " AND i.vm_state NOT IN ('deleted', 'error') AND NOT EXISTS (SELECT 1 FROM migrations m"
     " JOIN migration_allocations ma ON ma.migration_uuid = m.uuid"
     " WHERE m.instance_uuid = i.uuid)",
     "UPDATE allocations SET host = (SELECT host FROM instances WHERE uuid = ?1)"
     " WHERE instance_uuid = ?1 AND ?2 = ?2"},
    {CL_AUDIT_WRONG_SIZE,
     "SELECT a.instance_uuid, a.host, 'allocation ' || a.vcpus || '/' || a.ram_mb || '/' ||"
     " a.disk_gb || ' but flavor ' || i.vcpus || '/' || i.ram_mb || '/' ||"
     " (i.disk_gb + i.ephemeral_gb + (i.swap_mb + 1023) / 1024) FROM allocations a"
     " JOIN instances i ON i.uuid = a.instance_uuid WHERE i.vm_state NOT IN ('deleted',"
     " 'error') AND (a.vcpus <> i.vcpus OR a.ram_mb <> i.ram_mb OR"
     " a.disk_gb <> i.disk_gb + i.ephemeral_gb + (i.swap_mb + 1023) / 1024)",
     "UPDATE allocations SET (vcpus, ram_mb, disk_gb) = (SELECT vcpus, ram_mb,"
     " disk_gb + ephemeral_gb + (swap_mb + 1023) / 1024 FROM instances WHERE uuid = ?1)"
     " WHERE instance_uuid = ?1 AND ?2 = ?2"},
    {CL_AUDIT_MISSING_ALLOCATION,
     "SELECT i.uuid, i.host, 'instance is ' || i.vm_state || ' on its host without an"
     " allocation' FROM instances i JOIN hosts h ON h.name = i.host"
     " LEFT JOIN allocations a ON a.instance_uuid = i.uuid WHERE a.instance_uuid IS NULL"
     " AND i.vm_state NOT IN ('deleted', 'error')",
     "INSERT OR IGNORE INTO allocations (instance_uuid, host, vcpus, ram_mb, disk_gb,"
     " created_ms) SELECT uuid, ?2, vcpus, ram_mb, disk_gb + ephemeral_gb +"
     " (swap_mb + 1023) / 1024, CAST(strftime('%s', 'now') AS INTEGER) * 1000"
     " FROM instances WHERE uuid = ?1"},
    {CL_AUDIT_ORPHAN_MIGRATION,
     "SELECT ma.migration_uuid, ma.host, 'migration is ' || COALESCE(m.status, 'missing')"
     " FROM migration_allocations ma LEFT JOIN migrations m ON m.uuid = ma.migration_uuid"
     " WHERE m.uuid IS NULL OR m.status IN ('error', 'confirmed', 'reverted')"
     /* A cold move waiting in VERIFY_RESIZE holds its source half until confirm. */
     " OR (m.status = 'finished' AND NOT (m.migration_type IN ('migration', 'resize')"
     " AND m.source_host <> m.dest_host AND EXISTS (SELECT 1 FROM instances i"
     " WHERE i.uuid = m.instance_uuid AND i.vm_state = 'resized')))",
     "DELETE FROM migration_allocations WHERE migration_uuid = ?1 AND ?2 = ?2"},
};

int cl_store_placement_audit(cl_store *st, bool repair, cl_audit_item **out, size_t *n_out)
{
    cl_db *db = cl_store_db(st);
    _cleanup_free_ cl_audit_item *arr = NULL;
    size_t n = 0, cap = 0;
    int r = repair ? cl_db_begin_immediate(db) : cl_db_begin(db);

    if (r < 0)
        return r;
    for (size_t c = 0; c < CL_ARRAY_SIZE(audit_checks) && r >= 0; c++) {
        size_t first = n;
        {
            _cleanup_stmt_ sqlite3_stmt *s = NULL;

            r = cl_db_prepare(db, audit_checks[c].find, &s);
            while (r >= 0 && (r = row(s)) == 1) {
                if (cl_grow_array((void **)&arr, &cap, n, sizeof(*arr)) < 0) {
                    r = -ENOMEM;
                    break;
                }
                cl_audit_item *it = &arr[n++];

                memset(it, 0, sizeof(*it));
                it->kind = audit_checks[c].kind;
                cl_db_column_text(s, 0, it->consumer, sizeof(it->consumer));
                cl_db_column_text(s, 1, it->host, sizeof(it->host));
                cl_db_column_text(s, 2, it->detail, sizeof(it->detail));
            }
        }
        /* Repair after the query finished (no statement open on the table). Checks run
         * in an order where an earlier repair never hides a later problem's cause. */
        for (size_t i = first; repair && r >= 0 && i < n; i++) {
            const char *t[] = {arr[i].consumer, arr[i].host};

            r = exec_bound(db, audit_checks[c].repair, t, 2, NULL, 0);
        }
    }
    if (repair)
        r = end_tx(db, r < 0 ? r : 0);
    else
        cl_db_rollback(db);
    if (r < 0)
        return r;
    *out = TAKE_PTR(arr);
    *n_out = n;
    return 0;
}

/* ---------------------------------------------------------------------------------- */
/* appended by issue 8: cold migration and resize to another host                     */
/*
 * The scheduler's record of a cold move lives next to its migration row: the old
 * flavor (a resize), whether the guest ran before (the power state Nova keeps), the
 * step reached and the disk transfer's secret. The table is created on first use (it
 * belongs to no schema step; a lost row only means the move cannot be reverted to the
 * old flavor), and its row goes at confirm or revert, as does the legacy cold_resize row
 * of moves recorded before this table existed.
 */

static int cold_table(cl_db *db)
{
    return cl_db_exec(db, "CREATE TABLE IF NOT EXISTS cold_moves ("
                          "  migration_uuid TEXT PRIMARY KEY,"
                          "  old_flavor_id TEXT NOT NULL DEFAULT '',"
                          "  power_on INTEGER NOT NULL DEFAULT 1,"
                          "  phase TEXT NOT NULL DEFAULT '',"
                          "  token TEXT NOT NULL DEFAULT '',"
                          "  created_ms INTEGER NOT NULL DEFAULT 0)");
}

int cl_store_cold_move_put(cl_store *st, const cl_cold_move *c)
{
    cl_db *db = cl_store_db(st);
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cold_table(db);

    if (r == 0)
        r = cl_db_prepare(db, "INSERT OR REPLACE INTO cold_moves (migration_uuid,"
                              " old_flavor_id, power_on, phase, token, created_ms)"
                              " VALUES (?, ?, ?, ?, ?, ?)", &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, c->migration_uuid);
    cl_db_bind_text(s, 2, c->old_flavor_id);
    cl_db_bind_int64(s, 3, c->power_on ? 1 : 0);
    cl_db_bind_text(s, 4, c->phase);
    cl_db_bind_text(s, 5, c->token);
    cl_db_bind_int64(s, 6, cl_now_ms());
    return cl_db_step_done(s);
}

int cl_store_cold_move_get(cl_store *st, const char *migration_uuid, cl_cold_move *out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;

    memset(out, 0, sizeof(*out));
    if (cl_db_prepare(cl_store_db(st), "SELECT old_flavor_id, power_on, phase, token FROM"
                                       " cold_moves WHERE migration_uuid = ?", &s) < 0)
        return -ENOENT; /* no table yet: no move recorded */
    cl_db_bind_text(s, 1, migration_uuid);
    int r = row(s);
    if (r <= 0)
        return r == 0 ? -ENOENT : r;
    cl_strlcpy(out->migration_uuid, migration_uuid, sizeof(out->migration_uuid));
    cl_db_column_text(s, 0, out->old_flavor_id, sizeof(out->old_flavor_id));
    out->power_on = sqlite3_column_int64(s, 1) != 0;
    cl_db_column_text(s, 2, out->phase, sizeof(out->phase));
    cl_db_column_text(s, 3, out->token, sizeof(out->token));
    return 0;
}

int cl_store_cold_moves_list(cl_store *st, cl_cold_move **out, size_t *n_out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    _cleanup_free_ cl_cold_move *arr = NULL;
    size_t n = 0, cap = 0;
    int r;

    *out = NULL;
    *n_out = 0;
    if (cl_db_prepare(cl_store_db(st), "SELECT migration_uuid, old_flavor_id, power_on, phase,"
                                       " token FROM cold_moves ORDER BY created_ms", &s) < 0)
        return 0; /* no table yet: no move */
    while ((r = row(s)) == 1) {
        if (cl_grow_array((void **)&arr, &cap, n, sizeof(*arr)) < 0)
            return -ENOMEM;
        cl_cold_move *c = &arr[n++];
        memset(c, 0, sizeof(*c));
        cl_db_column_text(s, 0, c->migration_uuid, sizeof(c->migration_uuid));
        cl_db_column_text(s, 1, c->old_flavor_id, sizeof(c->old_flavor_id));
        c->power_on = sqlite3_column_int64(s, 2) != 0;
        cl_db_column_text(s, 3, c->phase, sizeof(c->phase));
        cl_db_column_text(s, 4, c->token, sizeof(c->token));
    }
    if (r < 0)
        return r;
    *out = TAKE_PTR(arr);
    *n_out = n;
    return 0;
}

int cl_store_cold_move_advance(cl_store *st, const char *migration_uuid, const char *from,
                               const char *to)
{
    const char *t[] = {to, migration_uuid, from};
    int r = exec_bound(cl_store_db(st), "UPDATE cold_moves SET phase = ?1 WHERE"
                       " migration_uuid = ?2 AND phase = ?3", t, 3, NULL, 0);
    if (r < 0)
        return r;
    return r == 0 ? -ESTALE : 0;
}

int cl_store_cold_move_delete(cl_store *st, const char *migration_uuid)
{
    cl_db *db = cl_store_db(st);
    const char *t[] = {migration_uuid};
    int r = cold_table(db);
    if (r == 0)
        r = exec_bound(db, "DELETE FROM cold_moves WHERE migration_uuid = ?1", t, 1, NULL, 0);
    /* Moves recorded by the previous version kept their old flavor here. */
    (void)exec_bound(db, "DELETE FROM cold_resize WHERE migration_uuid = ?1", t, 1, NULL, 0);
    return r < 0 ? r : 0;
}

int cl_store_instance_set_host(cl_store *st, const char *uuid, const char *host)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st), "UPDATE instances SET host = ?2, updated_ms = ?3"
                                           " WHERE uuid = ?1", &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    cl_db_bind_text(s, 2, host);
    cl_db_bind_int64(s, 3, cl_now_ms());
    r = cl_db_step_done(s);
    return r == 0 && cl_db_changes(cl_store_db(st)) == 0 ? -ENOENT : r;
}

int cl_store_instance_set_flavor(cl_store *st, const char *uuid, const cl_flavor *f,
                                 bool allocation)
{
    cl_db *db = cl_store_db(st);
    int r = cl_db_begin_immediate(db);
    if (r < 0)
        return r;
    {
        _cleanup_stmt_ sqlite3_stmt *s = NULL;
        r = cl_db_prepare(db, "UPDATE instances SET flavor_id = ?, flavor_name = ?, vcpus = ?,"
                              " ram_mb = ?, disk_gb = ?, ephemeral_gb = ?, swap_mb = ?,"
                              " updated_ms = ? WHERE uuid = ?", &s);
        if (r == 0) {
            cl_db_bind_text(s, 1, f->id);
            cl_db_bind_text(s, 2, f->name);
            cl_db_bind_int64(s, 3, f->vcpus);
            cl_db_bind_int64(s, 4, f->ram_mb);
            cl_db_bind_int64(s, 5, f->disk_gb);
            cl_db_bind_int64(s, 6, f->ephemeral_gb);
            cl_db_bind_int64(s, 7, f->swap_mb);
            cl_db_bind_int64(s, 8, cl_now_ms());
            cl_db_bind_text(s, 9, uuid);
            r = cl_db_step_done(s);
        }
    }
    if (r == 0 && allocation) {
        _cleanup_stmt_ sqlite3_stmt *a = NULL;
        r = cl_db_prepare(db, "UPDATE allocations SET vcpus = ?, ram_mb = ?, disk_gb = ?"
                              " WHERE instance_uuid = ?", &a);
        if (r == 0) {
            cl_db_bind_int64(a, 1, f->vcpus);
            cl_db_bind_int64(a, 2, f->ram_mb);
            cl_db_bind_int64(a, 3, f->disk_gb);
            cl_db_bind_text(a, 4, uuid);
            r = cl_db_step_done(a);
        }
    }
    return end_tx(db, r);
}
