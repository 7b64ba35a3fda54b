/*
 * store_actions.c - schema step v5 and the store functions of server actions
 * (store_actions.h).
 *
 * Tables:
 *   instance_resizes     one row per instance whose resize waits for confirm/revert: the
 *                        old flavor (the instance row already carries the new one, so
 *                        every reader — quotas, placement, the API — sees what the
 *                        allocation holds) and the vm_state it had before.
 *   host_agents          the HTTP endpoint each agent announced (console reads).
 *   instance_addresses   the guest's fixed addresses, space separated, as reported.
 *
 * The functions work on the instances and allocations tables of schema v1 directly with
 * SQL of their own: store.c's helpers are private to it, and these few statements are
 * simpler to read here than behind a wider store.h.
 */
#include "store_actions.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cleanup.h"
#include "db.h"
#include "log.h"
#include "store_schema.h"
#include "util.h"

#define LOG_MOD "store.actions"

const char cl_store_schema_actions[] =
    "CREATE TABLE instance_resizes ("
    "  instance_uuid TEXT PRIMARY KEY REFERENCES instances (uuid) ON DELETE CASCADE,"
    "  old_flavor_id TEXT NOT NULL,"
    "  old_flavor_name TEXT NOT NULL,"
    "  old_vcpus INTEGER NOT NULL,"
    "  old_ram_mb INTEGER NOT NULL,"
    "  old_disk_gb INTEGER NOT NULL,"
    "  old_ephemeral_gb INTEGER NOT NULL DEFAULT 0,"
    "  old_swap_mb INTEGER NOT NULL DEFAULT 0,"
    "  prev_vm_state TEXT NOT NULL,"
    "  created_ms INTEGER NOT NULL"
    ");"
    "CREATE TABLE host_agents ("
    "  host TEXT PRIMARY KEY,"
    "  agent_url TEXT NOT NULL,"
    "  updated_ms INTEGER NOT NULL"
    ");"
    "CREATE TABLE instance_addresses ("
    "  instance_uuid TEXT PRIMARY KEY REFERENCES instances (uuid) ON DELETE CASCADE,"
    "  addresses TEXT NOT NULL,"
    "  updated_ms INTEGER NOT NULL"
    ");";

static int finish(cl_db *db, int r)
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

/* Read the instance and check it: live, no task, vm_state allowed. */
static int check_locked(cl_store *st, const char *uuid, unsigned allowed_vm, cl_instance *out)
{
    int r = cl_store_instance_get(st, uuid, out);
    if (r < 0)
        return r;
    if (out->vm_state == CL_VM_DELETED)
        return -ENOENT;
    if (out->task_state != CL_TASK_NONE)
        return -EBUSY;
    if (!(allowed_vm & CL_VM_BIT(out->vm_state)))
        return -EPERM;
    return 0;
}

static int set_task_locked(cl_db *db, const char *uuid, cl_task_state task)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db, "UPDATE instances SET task_state = ?, updated_ms = ? "
                              "WHERE uuid = ?", &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, cl_task_state_name(task));
    cl_db_bind_int64(s, 2, cl_now_ms());
    cl_db_bind_text(s, 3, uuid);
    return cl_db_step_done(s);
}

int cl_store_action_begin(cl_store *st, const char *uuid, unsigned allowed_vm,
                          cl_task_state new_task, cl_instance *out)
{
    if (!uuid || !out)
        return -EINVAL;
    cl_db *db = cl_store_db(st);
    int r = cl_db_begin_immediate(db);
    if (r < 0)
        return r;
    r = check_locked(st, uuid, allowed_vm, out);
    if (r == 0 && new_task != CL_TASK_NONE) {
        r = set_task_locked(db, uuid, new_task);
        if (r == 0)
            out->task_state = new_task;
    }
    return finish(db, r);
}

/* Does host have room for `want` when the instance gives back `have`? The host's used_*
 * sums include the instance's current allocation. */
static int room_locked(cl_store *st, const char *host, const cl_flavor *have,
                       const cl_flavor *want)
{
    cl_host h;
    int r = cl_store_host_get(st, host, &h);
    if (r < 0)
        return r;
    if (cl_host_free_vcpus(&h) + have->vcpus < want->vcpus ||
        cl_host_free_ram_mb(&h) + have->ram_mb < want->ram_mb ||
        cl_host_free_disk_gb(&h) + have->disk_gb < want->disk_gb)
        return -ENOSPC;
    return 0;
}

/* Instance flavor columns and allocation amounts := f. */
static int apply_flavor_locked(cl_db *db, const char *uuid, const cl_flavor *f)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    _cleanup_stmt_ sqlite3_stmt *a = NULL;
    int r = cl_db_prepare(db, "UPDATE instances SET flavor_id = ?, flavor_name = ?, vcpus = ?,"
                              " ram_mb = ?, disk_gb = ?, ephemeral_gb = ?, swap_mb = ?,"
                              " updated_ms = ? WHERE uuid = ?", &s);
    if (r < 0)
        return r;
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
    if (r < 0)
        return r;
    r = cl_db_prepare(db, "UPDATE allocations SET vcpus = ?, ram_mb = ?, disk_gb = ? "
                          "WHERE instance_uuid = ?", &a);
    if (r < 0)
        return r;
    cl_db_bind_int64(a, 1, f->vcpus);
    cl_db_bind_int64(a, 2, f->ram_mb);
    cl_db_bind_int64(a, 3, f->disk_gb);
    cl_db_bind_text(a, 4, uuid);
    return cl_db_step_done(a);
}

static bool same_flavor(const cl_flavor *a, const cl_flavor *b)
{
    return strcmp(a->id, b->id) == 0 && a->vcpus == b->vcpus && a->ram_mb == b->ram_mb &&
           a->disk_gb == b->disk_gb;
}

int cl_store_resize_begin(cl_store *st, const char *uuid, const cl_flavor *new_flavor,
                          cl_instance *out)
{
    if (!uuid || !new_flavor || !out)
        return -EINVAL;
    cl_db *db = cl_store_db(st);
    int r = cl_db_begin_immediate(db);
    if (r < 0)
        return r;
    r = check_locked(st, uuid, CL_VM_BIT(CL_VM_ACTIVE) | CL_VM_BIT(CL_VM_STOPPED), out);
    if (r == 0 && !out->host[0])
        r = -EPERM;
    if (r == 0 && same_flavor(&out->flavor, new_flavor))
        r = -EINVAL;
    if (r == 0)
        r = room_locked(st, out->host, &out->flavor, new_flavor);
    if (r == 0) {
        _cleanup_stmt_ sqlite3_stmt *s = NULL;
        r = cl_db_prepare(db, "INSERT OR REPLACE INTO instance_resizes (instance_uuid,"
                              " old_flavor_id, old_flavor_name, old_vcpus, old_ram_mb,"
                              " old_disk_gb, old_ephemeral_gb, old_swap_mb, prev_vm_state,"
                              " created_ms) VALUES (?,?,?,?,?,?,?,?,?,?)", &s);
        if (r == 0) {
            const cl_flavor *f = &out->flavor;
            cl_db_bind_text(s, 1, uuid);
            cl_db_bind_text(s, 2, f->id);
            cl_db_bind_text(s, 3, f->name);
            cl_db_bind_int64(s, 4, f->vcpus);
            cl_db_bind_int64(s, 5, f->ram_mb);
            cl_db_bind_int64(s, 6, f->disk_gb);
            cl_db_bind_int64(s, 7, f->ephemeral_gb);
            cl_db_bind_int64(s, 8, f->swap_mb);
            cl_db_bind_text(s, 9, cl_vm_state_name(out->vm_state));
            cl_db_bind_int64(s, 10, cl_now_ms());
            r = cl_db_step_done(s);
        }
    }
    if (r == 0)
        r = apply_flavor_locked(db, uuid, new_flavor);
    if (r == 0)
        r = set_task_locked(db, uuid, CL_TASK_RESIZE_PREP);
    if (r == 0) {
        out->flavor = *new_flavor;
        out->task_state = CL_TASK_RESIZE_PREP;
    }
    return finish(db, r);
}

static int pending_locked(cl_db *db, const char *uuid, cl_flavor *old)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db, "SELECT old_flavor_id, old_flavor_name, old_vcpus, old_ram_mb,"
                              " old_disk_gb, old_ephemeral_gb, old_swap_mb"
                              " FROM instance_resizes WHERE instance_uuid = ?", &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE)
        return 0;
    if (rc != SQLITE_ROW)
        return -EIO;
    if (old) {
        memset(old, 0, sizeof(*old));
        cl_db_column_text(s, 0, old->id, sizeof(old->id));
        cl_db_column_text(s, 1, old->name, sizeof(old->name));
        old->vcpus = sqlite3_column_int64(s, 2);
        old->ram_mb = sqlite3_column_int64(s, 3);
        old->disk_gb = sqlite3_column_int64(s, 4);
        old->ephemeral_gb = sqlite3_column_int64(s, 5);
        old->swap_mb = sqlite3_column_int64(s, 6);
        old->is_public = true;
    }
    return 1;
}

static int drop_pending_locked(cl_db *db, const char *uuid)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int r = cl_db_prepare(db, "DELETE FROM instance_resizes WHERE instance_uuid = ?", &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    return cl_db_step_done(s);
}

int cl_store_resize_pending(cl_store *st, const char *uuid, cl_flavor *old)
{
    if (!uuid)
        return -EINVAL;
    return pending_locked(cl_store_db(st), uuid, old);
}

int cl_store_resize_confirm(cl_store *st, const char *uuid, cl_instance *out)
{
    if (!uuid || !out)
        return -EINVAL;
    cl_db *db = cl_store_db(st);
    int r = cl_db_begin_immediate(db);
    if (r < 0)
        return r;
    r = check_locked(st, uuid, CL_VM_BIT(CL_VM_RESIZED), out);
    if (r == 0)
        r = drop_pending_locked(db, uuid);
    if (r == 0) {
        _cleanup_stmt_ sqlite3_stmt *s = NULL;
        cl_vm_state vm = out->power_state == CL_POWER_SHUTDOWN ? CL_VM_STOPPED : CL_VM_ACTIVE;
        r = cl_db_prepare(db, "UPDATE instances SET vm_state = ?, updated_ms = ? "
                              "WHERE uuid = ?", &s);
        if (r == 0) {
            cl_db_bind_text(s, 1, cl_vm_state_name(vm));
            cl_db_bind_int64(s, 2, cl_now_ms());
            cl_db_bind_text(s, 3, uuid);
            r = cl_db_step_done(s);
        }
        if (r == 0)
            out->vm_state = vm;
    }
    return finish(db, r);
}

int cl_store_resize_revert_begin(cl_store *st, const char *uuid, cl_instance *out)
{
    cl_flavor old;
    if (!uuid || !out)
        return -EINVAL;
    cl_db *db = cl_store_db(st);
    int r = cl_db_begin_immediate(db);
    if (r < 0)
        return r;
    r = check_locked(st, uuid, CL_VM_BIT(CL_VM_RESIZED), out);
    if (r == 0) {
        r = pending_locked(db, uuid, &old);
        if (r == 0)
            r = -EPERM; /* resized without a record: nothing to go back to */
        else if (r == 1)
            r = 0;
    }
    if (r == 0 && out->host[0])
        r = room_locked(st, out->host, &out->flavor, &old);
    if (r == 0)
        r = apply_flavor_locked(db, uuid, &old);
    if (r == 0)
        r = drop_pending_locked(db, uuid);
    if (r == 0)
        r = set_task_locked(db, uuid, CL_TASK_RESIZE_REVERTING); /* REVERT_RESIZE */
    if (r == 0) {
        out->flavor = old;
        out->task_state = CL_TASK_RESIZE_REVERTING;
    }
    return finish(db, r);
}

int cl_store_host_agent_url_set(cl_store *st, const char *host, const char *url)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    if (!host || !url)
        return -EINVAL;
    int r = cl_db_prepare(cl_store_db(st),
                          "INSERT INTO host_agents (host, agent_url, updated_ms) VALUES (?,?,?)"
                          " ON CONFLICT (host) DO UPDATE SET agent_url = excluded.agent_url,"
                          " updated_ms = excluded.updated_ms", &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, host);
    cl_db_bind_text(s, 2, url);
    cl_db_bind_int64(s, 3, cl_now_ms());
    return cl_db_step_done(s);
}

int cl_store_host_agent_url_get(cl_store *st, const char *host, char *out, size_t outlen)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    if (!host || !out || !outlen)
        return -EINVAL;
    int r = cl_db_prepare(cl_store_db(st), "SELECT agent_url FROM host_agents WHERE host = ?",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, host);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE)
        return -ENOENT;
    if (rc != SQLITE_ROW)
        return -EIO;
    cl_db_column_text(s, 0, out, outlen);
    return out[0] ? 0 : -ENOENT;
}

int cl_store_instance_addresses_set(cl_store *st, const char *uuid,
                                    const char (*addrs)[CL_MSG_ADDR_LEN], size_t n)
{
    char joined[CL_MSG_MAX_ADDRESSES * CL_MSG_ADDR_LEN] = "";
    size_t used = 0;
    _cleanup_stmt_ sqlite3_stmt *s = NULL;

    if (!uuid || n > CL_MSG_MAX_ADDRESSES || (n && !addrs))
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        int w = snprintf(joined + used, sizeof(joined) - used, "%s%s", i ? " " : "",
                         addrs[i]);
        if (w < 0 || (size_t)w >= sizeof(joined) - used)
            return -EINVAL;
        used += (size_t)w;
    }
    int r = cl_db_prepare(cl_store_db(st),
                          "INSERT INTO instance_addresses (instance_uuid, addresses, updated_ms)"
                          " VALUES (?,?,?) ON CONFLICT (instance_uuid) DO UPDATE SET"
                          " addresses = excluded.addresses, updated_ms = excluded.updated_ms",
                          &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    cl_db_bind_text(s, 2, joined);
    cl_db_bind_int64(s, 3, cl_now_ms());
    return cl_db_step_done(s);
}

int cl_store_instance_addresses_get(cl_store *st, const char *uuid,
                                    char (*out)[CL_MSG_ADDR_LEN], size_t cap, size_t *out_n)
{
    char joined[CL_MSG_MAX_ADDRESSES * CL_MSG_ADDR_LEN];
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    if (!uuid || !out_n)
        return -EINVAL;
    *out_n = 0;
    int r = cl_db_prepare(cl_store_db(st),
                          "SELECT addresses FROM instance_addresses WHERE instance_uuid = ?", &s);
    if (r < 0)
        return r;
    cl_db_bind_text(s, 1, uuid);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE)
        return 0;
    if (rc != SQLITE_ROW)
        return -EIO;
    cl_db_column_text(s, 0, joined, sizeof(joined));
    char *save = NULL;
    for (char *tok = strtok_r(joined, " ", &save); tok && *out_n < cap;
         tok = strtok_r(NULL, " ", &save))
        cl_strlcpy(out[(*out_n)++], tok, CL_MSG_ADDR_LEN);
    return 0;
}
