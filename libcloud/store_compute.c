/*
 * store_compute.c - controller-store tables and functions of the compute API concern
 * (schema step v3, see store_schema.h and store_compute.h).
 *
 * Quotas are never stored as counters: a project's usage is counted from its instance
 * rows inside the same BEGIN IMMEDIATE transaction that inserts the new ones
 * (cl_store_instances_create_quota). SQLite's single write lock makes the count and the
 * insert one step, so two parallel creates cannot both see the last free slot: the second
 * waits for the lock and then counts the first one's row. Only the overrides of the
 * defaults are stored (table quotas); the defaults come from nube-api.conf.
 *
 * The instance insert here duplicates store.c's column list on purpose: store.c's insert
 * runs in its own transaction, and the quota check must share one with it.
 *
 * Extras the instances table lacks (key name, user data, metadata) live in side tables
 * that cascade with the instance row. The operator's view of a host's service (reason
 * for disabling, forced down) is two columns added to hosts.
 */
#include "store_compute.h"
#include "store_schema.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "util.h"

#define ST_LOG "store.compute"

const char cl_store_schema_compute[] =
    "CREATE TABLE key_pairs ("
    "  id INTEGER PRIMARY KEY,"
    "  user_id TEXT NOT NULL,"
    "  name TEXT NOT NULL,"
    "  type TEXT NOT NULL DEFAULT 'ssh',"
    "  public_key TEXT NOT NULL,"
    "  fingerprint TEXT NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  UNIQUE (user_id, name)"
    ");"
    /* Only overrides; absent rows mean the configured default. */
    "CREATE TABLE quotas ("
    "  project_id TEXT NOT NULL,"
    "  resource TEXT NOT NULL,"
    "  hard_limit INTEGER NOT NULL,"
    "  PRIMARY KEY (project_id, resource)"
    ");"
    "CREATE TABLE instance_extra ("
    "  instance_uuid TEXT PRIMARY KEY REFERENCES instances (uuid) ON DELETE CASCADE,"
    "  key_name TEXT,"
    "  user_data TEXT"
    ");"
    "CREATE TABLE instance_metadata ("
    "  instance_uuid TEXT NOT NULL REFERENCES instances (uuid) ON DELETE CASCADE,"
    "  meta_key TEXT NOT NULL,"
    "  meta_value TEXT NOT NULL,"
    "  PRIMARY KEY (instance_uuid, meta_key)"
    ");"
    "CREATE TABLE flavor_extra_specs ("
    "  flavor_id TEXT NOT NULL REFERENCES flavors (id) ON DELETE CASCADE,"
    "  spec_key TEXT NOT NULL,"
    "  spec_value TEXT NOT NULL,"
    "  PRIMARY KEY (flavor_id, spec_key)"
    ");"
    "CREATE TABLE flavor_projects ("
    "  flavor_id TEXT NOT NULL REFERENCES flavors (id) ON DELETE CASCADE,"
    "  project_id TEXT NOT NULL,"
    "  PRIMARY KEY (flavor_id, project_id)"
    ");"
    "ALTER TABLE flavors ADD COLUMN description TEXT;"
    "ALTER TABLE hosts ADD COLUMN disabled_reason TEXT;"
    "ALTER TABLE hosts ADD COLUMN forced_down INTEGER NOT NULL DEFAULT 0;"
    /* A forced-down service stays down whatever its heartbeats say (Nova's fencing before
     * evacuation): the scheduler, which only places on hosts that are up, then leaves it
     * alone without knowing about the flag. */
    "CREATE TRIGGER hosts_forced_down AFTER UPDATE OF up ON hosts"
    "  WHEN NEW.forced_down = 1 AND NEW.up = 1"
    "  BEGIN UPDATE hosts SET up = 0 WHERE id = NEW.id; END;";

/* ---- small helpers (as in store.c, which keeps its own static) ---- */

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

/* Run one statement with up to three text parameters (NULL binds SQL NULL); returns
 * the number of changed rows or a negative errno. */
static int exec3(cl_db *db, const char *sql, const char *a, const char *b, const char *c)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db, sql, &s);

    if (r < 0)
        return r;
    if (sqlite3_bind_parameter_count(s) >= 1)
        cl_db_bind_text(s, 1, a);
    if (sqlite3_bind_parameter_count(s) >= 2)
        cl_db_bind_text(s, 2, b);
    if (sqlite3_bind_parameter_count(s) >= 3)
        cl_db_bind_text(s, 3, c);
    r = cl_db_step_done(s);
    return r < 0 ? r : cl_db_changes(db);
}

/* ---- quotas ---- */

static const char *const quota_names[CL_QUOTA_MAX] = {
    [CL_QUOTA_INSTANCES] = "instances",
    [CL_QUOTA_CORES] = "cores",
    [CL_QUOTA_RAM] = "ram",
    [CL_QUOTA_KEY_PAIRS] = "key_pairs",
    [CL_QUOTA_SERVER_GROUPS] = "server_groups",
    [CL_QUOTA_SERVER_GROUP_MEMBERS] = "server_group_members",
    [CL_QUOTA_METADATA_ITEMS] = "metadata_items",
};

const char *cl_quota_res_name(cl_quota_res r)
{
    return (r >= 0 && r < CL_QUOTA_MAX) ? quota_names[r] : "?";
}

int cl_quota_res_parse(const char *name, cl_quota_res *out)
{
    for (int i = 0; i < CL_QUOTA_MAX; i++) {
        if (name && strcmp(name, quota_names[i]) == 0) {
            *out = (cl_quota_res)i;
            return 0;
        }
    }
    return -EINVAL;
}

static int quota_get_db(cl_db *db, const char *project_id, cl_quota_set *inout)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db, "SELECT resource, hard_limit FROM quotas WHERE project_id = ?",
                          &s);

    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, project_id);
    while ((r = cl_db_step_row(s)) == 1) {
        cl_quota_res res;

        if (cl_quota_res_parse((const char *)sqlite3_column_text(s, 0), &res) == 0)
            inout->limit[res] = sqlite3_column_int64(s, 1);
    }
    return r;
}

int cl_store_quota_get(cl_store *st, const char *project_id, cl_quota_set *inout)
{
    if (!project_id || !inout)
        return -EINVAL;
    return quota_get_db(cl_store_db(st), project_id, inout);
}

int cl_store_quota_set(cl_store *st, const char *project_id, cl_quota_res r, int64_t limit)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int rc;

    if (!project_id || r < 0 || r >= CL_QUOTA_MAX || limit < -1)
        return -EINVAL;
    rc = cl_db_prepare(cl_store_db(st),
                       "INSERT INTO quotas (project_id, resource, hard_limit) VALUES (?, ?, ?)"
                       " ON CONFLICT (project_id, resource) DO UPDATE SET"
                       " hard_limit = excluded.hard_limit", &s);
    if (rc < 0)
        return rc;
    cl_db_bind_text(s, 1, project_id);
    cl_db_bind_text(s, 2, quota_names[r]);
    cl_db_bind_int64(s, 3, limit);
    return cl_db_step_done(s);
}

int cl_store_quota_delete(cl_store *st, const char *project_id)
{
    int r = exec3(cl_store_db(st), "DELETE FROM quotas WHERE project_id = ?", project_id, NULL,
                  NULL);

    return r < 0 ? r : 0;
}

/* Instances, cores and RAM of a project's live instances. */
static int instance_usage(cl_db *db, const char *project_id, cl_project_usage *out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db,
                          "SELECT count(*), coalesce(sum(vcpus), 0), coalesce(sum(ram_mb), 0)"
                          " FROM instances WHERE project_id = ? AND vm_state != ?", &s);

    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, project_id);
    cl_db_bind_text(s, 2, cl_vm_state_name(CL_VM_DELETED));
    r = cl_db_step_row(s);
    if (r <= 0)
        return r == 0 ? -EIO : r;
    out->instances = sqlite3_column_int64(s, 0);
    out->cores = sqlite3_column_int64(s, 1);
    out->ram_mb = sqlite3_column_int64(s, 2);
    return 0;
}

/* count(*) of a query with one text parameter; 0 when the table does not exist (server
 * groups, instance_groups, belong to the placement schema step). */
static int64_t count_or_zero(cl_db *db, const char *sql, const char *arg)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;

    if (sqlite3_prepare_v2(cl_db_handle(db), sql, -1, &s, NULL) != SQLITE_OK)
        return 0;
    cl_db_bind_text(s, 1, arg);
    if (sqlite3_step(s) != SQLITE_ROW)
        return 0;
    return sqlite3_column_int64(s, 0);
}

int cl_store_project_usage(cl_store *st, const char *project_id, const char *user_id,
                           cl_project_usage *out)
{
    cl_db *db = cl_store_db(st);
    int r;

    if (!project_id || !out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    r = instance_usage(db, project_id, out);
    if (r < 0)
        return r;
    out->server_groups =
        count_or_zero(db, "SELECT count(*) FROM instance_groups WHERE project_id = ?",
                      project_id);
    if (user_id)
        out->key_pairs =
            count_or_zero(db, "SELECT count(*) FROM key_pairs WHERE user_id = ?", user_id);
    return 0;
}

/* ---- instances ---- */

#define INSTANCE_COLS                                                                      \
    "uuid, name, project_id, user_id, image_ref, flavor_id, flavor_name, vcpus, ram_mb,"   \
    " disk_gb, ephemeral_gb, swap_mb, flavor_is_public, flavor_disabled, host, vm_state,"  \
    " task_state, power_state, fault, fault_code, fault_at_ms, request_id, created_ms,"    \
    " updated_ms, launched_ms, deleted_ms"

static int instance_insert(cl_db *db, const cl_instance *inst, int64_t now)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    const cl_flavor *f = &inst->flavor;
    int r = cl_db_prepare(db,
                          "INSERT INTO instances (" INSTANCE_COLS ") VALUES (?,?,?,?,?,?,?,?,?,?,"
                          "?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", &s);

    if (r < 0)
        return r;
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
    cl_db_bind_text(s, 19, "");
    cl_db_bind_int64(s, 20, 0);
    cl_db_bind_int64(s, 21, 0);
    cl_db_bind_text(s, 22, inst->request_id);
    cl_db_bind_int64(s, 23, now);
    cl_db_bind_int64(s, 24, now);
    cl_db_bind_int64(s, 25, 0);
    cl_db_bind_int64(s, 26, 0);
    return cl_db_step_done(s);
}

static int action_insert(cl_db *db, const char *uuid, const char *request_id, int64_t now)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db,
                          "INSERT INTO instance_actions (instance_uuid, action, request_id,"
                          " start_ms, finish_ms, result) VALUES (?, 'create', ?, ?, 0, '')",
                          &s);

    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    cl_db_bind_text(s, 2, request_id ? request_id : "");
    cl_db_bind_int64(s, 3, now);
    return cl_db_step_done(s);
}

static int extra_insert(cl_db *db, const char *uuid, const cl_instance_extra *ex)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r;

    if (!ex)
        return 0;
    r = exec3(db, "INSERT INTO instance_extra (instance_uuid, key_name, user_data)"
                  " VALUES (?, ?, ?)", uuid, ex->key_name, ex->user_data);
    if (r < 0 || ex->n_metadata == 0)
        return r < 0 ? r : 0;
    r = cl_db_prepare(db, "INSERT OR REPLACE INTO instance_metadata (instance_uuid, meta_key,"
                          " meta_value) VALUES (?, ?, ?)", &s);
    if (r < 0)
        return r;
    for (size_t i = 0; i < ex->n_metadata; i++) {
        sqlite3_reset(s);
        cl_db_bind_text(s, 1, uuid);
        cl_db_bind_text(s, 2, ex->metadata[i].key);
        cl_db_bind_text(s, 3, ex->metadata[i].value);
        r = cl_db_step_done(s);
        if (r < 0)
            return r;
    }
    return 0;
}

/* How many of n instances of flavor f fit in q given usage u; the first resource that
 * limits below min_n is described in *over. */
static size_t quota_fit(const cl_quota_set *q, const cl_project_usage *u, const cl_flavor *f,
                        size_t n, size_t min_n, cl_quota_excess *over)
{
    const struct {
        cl_quota_res res;
        int64_t per, used;
    } rs[] = {
        {CL_QUOTA_INSTANCES, 1, u->instances},
        {CL_QUOTA_CORES, f->vcpus, u->cores},
        {CL_QUOTA_RAM, f->ram_mb, u->ram_mb},
    };
    size_t fit = n;

    for (size_t i = 0; i < CL_ARRAY_SIZE(rs); i++) {
        int64_t limit = q->limit[rs[i].res];
        int64_t avail, k;

        if (limit < 0 || rs[i].per <= 0)
            continue;
        avail = limit - rs[i].used;
        k = avail <= 0 ? 0 : avail / rs[i].per;
        if ((size_t)k < min_n && fit >= min_n && over) {
            over->res = rs[i].res;
            over->requested = rs[i].per * (int64_t)n;
            over->used = rs[i].used;
            over->limit = limit;
        }
        if ((size_t)k < fit)
            fit = (size_t)k;
    }
    return fit;
}

int cl_store_instances_create_quota(cl_store *st, const cl_instance *insts, size_t n,
                                    size_t min_n, const cl_instance_extra *ex,
                                    const cl_quota_set *q, size_t *out_created,
                                    cl_quota_excess *over)
{
    cl_db *db = cl_store_db(st);
    cl_project_usage u = {0};
    cl_quota_set lim;
    size_t fit;
    int64_t now = cl_now_ms();
    int r;

    if (!insts || n == 0 || min_n == 0 || min_n > n || !q || !out_created)
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!cl_uuid_valid(insts[i].uuid) || strcmp(insts[i].project_id, insts[0].project_id))
            return -EINVAL;
    *out_created = 0;
    r = cl_db_begin_immediate(db);
    if (r < 0)
        return r;
    /* The limits are read under the same lock, so a quota lowered a moment ago counts. */
    lim = *q;
    r = quota_get_db(db, insts[0].project_id, &lim);
    if (r == 0)
        r = instance_usage(db, insts[0].project_id, &u);
    if (r < 0)
        return finish_tx(db, r);
    fit = quota_fit(&lim, &u, &insts[0].flavor, n, min_n, over);
    if (fit < min_n) {
        cl_db_rollback(db);
        return -EDQUOT;
    }
    for (size_t i = 0; i < fit && r == 0; i++) {
        r = instance_insert(db, &insts[i], now);
        if (r == 0)
            r = extra_insert(db, insts[i].uuid, ex);
        if (r == 0)
            r = action_insert(db, insts[i].uuid, insts[i].request_id, now);
    }
    r = finish_tx(db, r);
    if (r == 0)
        *out_created = fit;
    return r;
}

int cl_store_instance_extra_get(cl_store *st, const char *uuid, char *out_key, size_t keylen,
                                bool *has_key, char **out_user_data)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r;

    if (out_key && keylen)
        out_key[0] = '\0';
    if (has_key)
        *has_key = false;
    if (out_user_data)
        *out_user_data = NULL;
    r = cl_db_prepare(cl_store_db(st),
                      "SELECT key_name, user_data FROM instance_extra WHERE instance_uuid = ?",
                      &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    r = cl_db_step_row(s);
    if (r <= 0)
        return r; /* no row: no key, no user data */
    if (sqlite3_column_type(s, 0) != SQLITE_NULL) {
        if (out_key)
            cl_db_column_text(s, 0, out_key, keylen);
        if (has_key)
            *has_key = true;
    }
    if (out_user_data && sqlite3_column_type(s, 1) != SQLITE_NULL) {
        *out_user_data = strdup((const char *)sqlite3_column_text(s, 1));
        if (!*out_user_data)
            return -ENOMEM;
    }
    return 0;
}

/* A cl_db_row_fn for (index, key, value) rows; rows whose index is not below *ctx (the
 * number of uuids asked about) are skipped. */
static int indexed_kv_read(sqlite3_stmt *s, void *elem, void *ctx)
{
    cl_indexed_kv *it = elem;
    int64_t idx = sqlite3_column_int64(s, 0);

    if (idx < 0 || (size_t)idx >= *(const size_t *)ctx)
        return 1;
    it->idx = (size_t)idx;
    cl_db_column_text(s, 1, it->kv.key, sizeof(it->kv.key));
    cl_db_column_text(s, 2, it->kv.value, sizeof(it->kv.value));
    return 0;
}

int cl_store_instance_extras_many(cl_store *st, const char *const *uuids, size_t n,
                                  char (*keys)[256], bool *has_key, cl_indexed_kv **md,
                                  size_t *n_md)
{
    cl_db *db = cl_store_db(st);
    _cleanup_json_ json_object *arr = json_object_new_array();
    _cleanup_stmt_ sqlite3_stmt *k = NULL;
    _cleanup_stmt_ sqlite3_stmt *m = NULL;
    const char *json;
    int r;

    *md = NULL;
    *n_md = 0;
    for (size_t i = 0; i < n; i++) {
        keys[i][0] = '\0';
        has_key[i] = false;
    }
    if (n == 0)
        return 0;
    if (!arr)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        json_object_array_add(arr, json_object_new_string(uuids[i]));
    json = json_object_to_json_string_ext(arr, JSON_C_TO_STRING_PLAIN);
    /* json_each's key is the array index: results map back without a lookup. */
    r = cl_db_prepare(db, "SELECT j.key, e.key_name FROM json_each(?1) j"
                          " JOIN instance_extra e ON e.instance_uuid = j.value"
                          " WHERE e.key_name IS NOT NULL", &k);
    if (r < 0)
        return r;
    cl_db_bind_text(k, 1, json);
    while ((r = cl_db_step_row(k)) == 1) {
        int64_t idx = sqlite3_column_int64(k, 0);

        if (idx < 0 || (size_t)idx >= n)
            continue;
        cl_db_column_text(k, 1, keys[idx], sizeof(keys[idx]));
        has_key[idx] = true;
    }
    if (r < 0)
        return r;
    r = cl_db_prepare(db, "SELECT j.key, m.meta_key, m.meta_value FROM json_each(?1) j"
                          " JOIN instance_metadata m ON m.instance_uuid = j.value"
                          " ORDER BY j.key, m.meta_key", &m);
    if (r < 0)
        return r;
    cl_db_bind_text(m, 1, json);
    return cl_db_collect(m, sizeof(**md), indexed_kv_read, &n, NULL, (void **)md, n_md);
}

int cl_store_instance_rename(cl_store *st, const char *uuid, const char *name)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r;

    if (!uuid || !name || !*name)
        return -EINVAL;
    r = cl_db_prepare(cl_store_db(st),
                      "UPDATE instances SET name = ?, updated_ms = ? WHERE uuid = ?"
                      " AND vm_state != ?", &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, name);
    cl_db_bind_int64(s, 2, cl_now_ms());
    cl_db_bind_text(s, 3, uuid);
    cl_db_bind_text(s, 4, cl_vm_state_name(CL_VM_DELETED));
    r = cl_db_step_done(s);
    if (r < 0)
        return r;
    return cl_db_changes(cl_store_db(st)) > 0 ? 0 : -ENOENT;
}

/* ---- key/value lists (metadata, extra specs) ---- */

/* A cl_db_row_fn for (key, value) rows. */
static int kv_read(sqlite3_stmt *s, void *elem, void *ctx)
{
    cl_kv *kv = elem;

    (void)ctx;
    cl_db_column_text(s, 0, kv->key, sizeof(kv->key));
    cl_db_column_text(s, 1, kv->value, sizeof(kv->value));
    return 0;
}

static int kv_list(cl_db *db, const char *sql, const char *id, cl_kv **out, size_t *out_n)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db, sql, &s);

    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, id);
    return cl_db_collect(s, sizeof(**out), kv_read, NULL, NULL, (void **)out, out_n);
}

int cl_store_metadata_list(cl_store *st, const char *uuid, cl_kv **out, size_t *out_n)
{
    *out = NULL;
    *out_n = 0;
    return kv_list(cl_store_db(st),
                   "SELECT meta_key, meta_value FROM instance_metadata WHERE instance_uuid = ?"
                   " ORDER BY meta_key", uuid, out, out_n);
}

int cl_store_metadata_set(cl_store *st, const char *uuid, const cl_kv *items, size_t n,
                          bool replace, int64_t max_items)
{
    cl_db *db = cl_store_db(st);
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int64_t count;
    int r;

    r = cl_db_begin_immediate(db);
    if (r < 0)
        return r;
    if (replace)
        r = exec3(db, "DELETE FROM instance_metadata WHERE instance_uuid = ?", uuid, NULL, NULL);
    if (r >= 0)
        r = cl_db_prepare(db, "INSERT OR REPLACE INTO instance_metadata (instance_uuid,"
                              " meta_key, meta_value) VALUES (?, ?, ?)", &s);
    for (size_t i = 0; r >= 0 && i < n; i++) {
        sqlite3_reset(s);
        cl_db_bind_text(s, 1, uuid);
        cl_db_bind_text(s, 2, items[i].key);
        cl_db_bind_text(s, 3, items[i].value);
        r = cl_db_step_done(s);
    }
    if (r >= 0 && max_items >= 0) {
        count = count_or_zero(db, "SELECT count(*) FROM instance_metadata"
                                  " WHERE instance_uuid = ?", uuid);
        if (count > max_items)
            r = -EDQUOT;
    }
    return finish_tx(db, r < 0 ? r : 0);
}

int cl_store_metadata_delete(cl_store *st, const char *uuid, const char *key)
{
    int r = exec3(cl_store_db(st), "DELETE FROM instance_metadata WHERE instance_uuid = ?"
                                   " AND meta_key = ?", uuid, key, NULL);

    if (r < 0)
        return r;
    return r > 0 ? 0 : -ENOENT;
}

/* ---- key pairs ---- */

void cl_keypair_clear(cl_keypair *kp)
{
    if (!kp)
        return;
    free(kp->public_key);
    kp->public_key = NULL;
}

void cl_keypairs_free(cl_keypair *arr, size_t n)
{
    for (size_t i = 0; arr && i < n; i++)
        cl_keypair_clear(&arr[i]);
    free(arr);
}

/* A cl_db_clear_fn for the collector. */
static void keypair_clear_elem(void *elem) { cl_keypair_clear(elem); }

#define KP_COLS "id, user_id, name, type, public_key, fingerprint, created_ms"

/* A cl_db_row_fn: decode one KP_COLS row into elem (a cl_keypair; -ENOMEM leaves its
 * public_key NULL). */
static int keypair_read(sqlite3_stmt *s, void *elem, void *ctx)
{
    cl_keypair *kp = elem;
    const char *pk = (const char *)sqlite3_column_text(s, 4);

    (void)ctx;
    memset(kp, 0, sizeof(*kp));
    kp->id = sqlite3_column_int64(s, 0);
    cl_db_column_text(s, 1, kp->user_id, sizeof(kp->user_id));
    cl_db_column_text(s, 2, kp->name, sizeof(kp->name));
    cl_db_column_text(s, 3, kp->type, sizeof(kp->type));
    cl_db_column_text(s, 5, kp->fingerprint, sizeof(kp->fingerprint));
    kp->created_ms = sqlite3_column_int64(s, 6);
    kp->public_key = strdup(pk ? pk : "");
    return kp->public_key ? 0 : -ENOMEM;
}

int cl_store_keypair_create(cl_store *st, const cl_keypair *kp, int64_t max_keys)
{
    cl_db *db = cl_store_db(st);
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r;

    if (!kp || !kp->user_id[0] || !kp->name[0] || !kp->public_key)
        return -EINVAL;
    r = cl_db_begin_immediate(db);
    if (r < 0)
        return r;
    if (max_keys >= 0 &&
        count_or_zero(db, "SELECT count(*) FROM key_pairs WHERE user_id = ?", kp->user_id) >=
            max_keys) {
        cl_db_rollback(db);
        return -EDQUOT;
    }
    r = cl_db_prepare(db, "INSERT INTO key_pairs (user_id, name, type, public_key, fingerprint,"
                          " created_ms) VALUES (?, ?, ?, ?, ?, ?)", &s);
    if (r == 0) {
        cl_db_bind_text(s, 1, kp->user_id);
        cl_db_bind_text(s, 2, kp->name);
        cl_db_bind_text(s, 3, kp->type[0] ? kp->type : "ssh");
        cl_db_bind_text(s, 4, kp->public_key);
        cl_db_bind_text(s, 5, kp->fingerprint);
        cl_db_bind_int64(s, 6, kp->created_ms ? kp->created_ms : cl_now_ms());
        r = cl_db_step_done(s);
    }
    return finish_tx(db, r);
}

int cl_store_keypair_get(cl_store *st, const char *user_id, const char *name, cl_keypair *out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st),
                          "SELECT " KP_COLS " FROM key_pairs WHERE user_id = ? AND name = ?", &s);

    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, user_id);
    cl_db_bind_text(s, 2, name);
    r = cl_db_step_row(s);
    if (r <= 0)
        return r == 0 ? -ENOENT : r;
    return keypair_read(s, out, NULL);
}

int cl_store_keypair_list(cl_store *st, const char *user_id, cl_keypair **out, size_t *out_n)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st),
                          "SELECT " KP_COLS " FROM key_pairs WHERE user_id = ? ORDER BY name", &s);

    *out = NULL;
    *out_n = 0;
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, user_id);
    return cl_db_collect(s, sizeof(**out), keypair_read, NULL, keypair_clear_elem, (void **)out,
                         out_n);
}

int cl_store_keypair_delete(cl_store *st, const char *user_id, const char *name)
{
    int r = exec3(cl_store_db(st), "DELETE FROM key_pairs WHERE user_id = ? AND name = ?",
                  user_id, name, NULL);

    if (r < 0)
        return r;
    return r > 0 ? 0 : -ENOENT;
}

/* ---- flavors ---- */

int cl_store_flavor_delete(cl_store *st, const char *id)
{
    int r = exec3(cl_store_db(st), "DELETE FROM flavors WHERE id = ?", id, NULL, NULL);

    if (r < 0)
        return r;
    return r > 0 ? 0 : -ENOENT;
}

int cl_store_flavor_description(cl_store *st, const char *id, char **out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st), "SELECT description FROM flavors WHERE id = ?", &s);

    *out = NULL;
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, id);
    r = cl_db_step_row(s);
    if (r <= 0)
        return r == 0 ? -ENOENT : r;
    if (sqlite3_column_type(s, 0) == SQLITE_NULL)
        return 0;
    *out = strdup((const char *)sqlite3_column_text(s, 0));
    return *out ? 0 : -ENOMEM;
}

int cl_store_flavor_set_description(cl_store *st, const char *id, const char *desc)
{
    int r = exec3(cl_store_db(st), "UPDATE flavors SET description = ? WHERE id = ?", desc, id,
                  NULL);

    if (r < 0)
        return r;
    return r > 0 ? 0 : -ENOENT;
}

int cl_store_flavor_specs(cl_store *st, const char *id, cl_kv **out, size_t *out_n)
{
    *out = NULL;
    *out_n = 0;
    return kv_list(cl_store_db(st),
                   "SELECT spec_key, spec_value FROM flavor_extra_specs WHERE flavor_id = ?"
                   " ORDER BY spec_key", id, out, out_n);
}

int cl_store_flavor_specs_set(cl_store *st, const char *id, const cl_kv *items, size_t n)
{
    cl_db *db = cl_store_db(st);
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_begin_immediate(db);

    if (r < 0)
        return r;
    r = cl_db_prepare(db, "INSERT OR REPLACE INTO flavor_extra_specs (flavor_id, spec_key,"
                          " spec_value) VALUES (?, ?, ?)", &s);
    for (size_t i = 0; r >= 0 && i < n; i++) {
        sqlite3_reset(s);
        cl_db_bind_text(s, 1, id);
        cl_db_bind_text(s, 2, items[i].key);
        cl_db_bind_text(s, 3, items[i].value);
        r = cl_db_step_done(s);
    }
    /* A missing flavor fails the foreign key: -EEXIST from the constraint. */
    return finish_tx(db, r);
}

int cl_store_flavor_spec_delete(cl_store *st, const char *id, const char *key)
{
    int r = exec3(cl_store_db(st), "DELETE FROM flavor_extra_specs WHERE flavor_id = ?"
                                   " AND spec_key = ?", id, key, NULL);

    if (r < 0)
        return r;
    return r > 0 ? 0 : -ENOENT;
}

/* A cl_db_row_fn for one-column rows of ids (elem is a char[CL_ID_MAX]). */
static int id_read(sqlite3_stmt *s, void *elem, void *ctx)
{
    (void)ctx;
    cl_db_column_text(s, 0, elem, CL_ID_MAX);
    return 0;
}

int cl_store_flavor_access_list(cl_store *st, const char *id, char (**out)[CL_ID_MAX],
                                size_t *out_n)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st), "SELECT project_id FROM flavor_projects"
                                           " WHERE flavor_id = ? ORDER BY project_id", &s);

    *out = NULL;
    *out_n = 0;
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, id);
    return cl_db_collect(s, sizeof(**out), id_read, NULL, NULL, (void **)out, out_n);
}

int cl_store_flavor_access_add(cl_store *st, const char *id, const char *project_id)
{
    int r = exec3(cl_store_db(st), "INSERT INTO flavor_projects (flavor_id, project_id)"
                                   " VALUES (?, ?)", id, project_id, NULL);

    return r < 0 ? r : 0;
}

int cl_store_flavor_access_remove(cl_store *st, const char *id, const char *project_id)
{
    int r = exec3(cl_store_db(st), "DELETE FROM flavor_projects WHERE flavor_id = ?"
                                   " AND project_id = ?", id, project_id, NULL);

    if (r < 0)
        return r;
    return r > 0 ? 0 : -ENOENT;
}

int cl_store_flavor_access_allowed(cl_store *st, const cl_flavor *f, const char *project_id,
                                   bool *out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r;

    *out = f->is_public;
    if (f->is_public || !project_id)
        return 0;
    r = cl_db_prepare(cl_store_db(st), "SELECT 1 FROM flavor_projects WHERE flavor_id = ?"
                                       " AND project_id = ?", &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, f->id);
    cl_db_bind_text(s, 2, project_id);
    r = cl_db_step_row(s);
    if (r < 0)
        return r;
    *out = r == 1;
    return 0;
}

/* ---- services ---- */

int cl_store_service_get(cl_store *st, const char *host, cl_service_state *out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st),
                          "SELECT disabled_reason, forced_down FROM hosts WHERE name = ?", &s);

    memset(out, 0, sizeof(*out));
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, host);
    r = cl_db_step_row(s);
    if (r <= 0)
        return r == 0 ? -ENOENT : r;
    if (sqlite3_column_type(s, 0) != SQLITE_NULL) {
        cl_db_column_text(s, 0, out->disabled_reason, sizeof(out->disabled_reason));
        out->has_reason = true;
    }
    out->forced_down = sqlite3_column_int(s, 1) != 0;
    return 0;
}

int cl_store_service_set_status(cl_store *st, const char *host, bool enabled,
                                const char *reason)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st),
                          "UPDATE hosts SET enabled = ?, disabled_reason = ? WHERE name = ?", &s);

    if (r < 0)
        return r;
    cl_db_bind_int64(s, 1, enabled ? 1 : 0);
    cl_db_bind_text(s, 2, enabled ? NULL : reason);
    cl_db_bind_text(s, 3, host);
    r = cl_db_step_done(s);
    if (r < 0)
        return r;
    return cl_db_changes(cl_store_db(st)) > 0 ? 0 : -ENOENT;
}

int cl_store_service_set_forced_down(cl_store *st, const char *host, bool down)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    /* Down at once; back up with the next heartbeat once the flag is cleared. */
    int r = cl_db_prepare(cl_store_db(st),
                          "UPDATE hosts SET forced_down = ?1,"
                          " up = CASE WHEN ?1 THEN 0 ELSE up END WHERE name = ?2", &s);

    if (r < 0)
        return r;
    cl_db_bind_int64(s, 1, down ? 1 : 0);
    cl_db_bind_text(s, 2, host);
    r = cl_db_step_done(s);
    if (r < 0)
        return r;
    return cl_db_changes(cl_store_db(st)) > 0 ? 0 : -ENOENT;
}

/* ---- instance actions ---- */

/* A cl_db_row_fn for instance_actions rows (elem is a cl_instance_action). */
static int action_read(sqlite3_stmt *s, void *elem, void *ctx)
{
    cl_instance_action *a = elem;

    (void)ctx;
    cl_db_column_text(s, 0, a->action, sizeof(a->action));
    cl_db_column_text(s, 1, a->request_id, sizeof(a->request_id));
    a->start_ms = sqlite3_column_int64(s, 2);
    a->finish_ms = sqlite3_column_int64(s, 3);
    cl_db_column_text(s, 4, a->result, sizeof(a->result));
    return 0;
}

int cl_store_instance_actions(cl_store *st, const char *uuid, cl_instance_action **out,
                              size_t *out_n)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(cl_store_db(st),
                          "SELECT action, request_id, start_ms, finish_ms, result"
                          " FROM instance_actions WHERE instance_uuid = ?"
                          " ORDER BY start_ms DESC, id DESC", &s);

    *out = NULL;
    *out_n = 0;
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    return cl_db_collect(s, sizeof(**out), action_read, NULL, NULL, (void **)out, out_n);
}

/* ---- migrations ---- */

/* A cl_db_row_fn for the migrations list query (elem is a cl_migration_row). */
static int migration_read(sqlite3_stmt *s, void *elem, void *ctx)
{
    cl_migration_row *m = elem;

    (void)ctx;
    m->id = sqlite3_column_int64(s, 0);
    cl_db_column_text(s, 1, m->uuid, sizeof(m->uuid));
    cl_db_column_text(s, 2, m->instance_uuid, sizeof(m->instance_uuid));
    cl_db_column_text(s, 3, m->source_host, sizeof(m->source_host));
    cl_db_column_text(s, 4, m->dest_host, sizeof(m->dest_host));
    cl_db_column_text(s, 5, m->type, sizeof(m->type));
    cl_db_column_text(s, 6, m->status, sizeof(m->status));
    cl_db_column_text(s, 7, m->project_id, sizeof(m->project_id));
    cl_db_column_text(s, 8, m->user_id, sizeof(m->user_id));
    m->created_ms = sqlite3_column_int64(s, 9);
    m->updated_ms = sqlite3_column_int64(s, 10);
    return 0;
}

int cl_store_migrations_list(cl_store *st, const char *host, const char *status,
                             const char *instance_uuid, const char *type,
                             cl_migration_row **out, size_t *out_n)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;

    *out = NULL;
    *out_n = 0;
    /* The table belongs to the placement step; before it exists there is nothing. */
    if (sqlite3_prepare_v2(cl_db_handle(cl_store_db(st)),
                           "SELECT m.rowid, m.uuid, m.instance_uuid, m.source_host, m.dest_host,"
                           " m.migration_type, m.status, coalesce(i.project_id, ''),"
                           " coalesce(i.user_id, ''), m.created_ms, m.updated_ms"
                           " FROM migrations m LEFT JOIN instances i ON i.uuid = m.instance_uuid"
                           " WHERE (?1 IS NULL OR m.source_host = ?1 OR m.dest_host = ?1)"
                           " AND (?2 IS NULL OR m.status = ?2)"
                           " AND (?3 IS NULL OR m.instance_uuid = ?3)"
                           " AND (?4 IS NULL OR m.migration_type = ?4)"
                           " ORDER BY m.created_ms DESC, m.rowid DESC",
                           -1, &s, NULL) != SQLITE_OK)
        return 0;
    cl_db_bind_text(s, 1, host);
    cl_db_bind_text(s, 2, status);
    cl_db_bind_text(s, 3, instance_uuid);
    cl_db_bind_text(s, 4, type);
    return cl_db_collect(s, sizeof(**out), migration_read, NULL, NULL, (void **)out, out_n);
}
