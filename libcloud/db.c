/*
 * db.c - the one way nube talks to SQLite.
 *
 * Every database of every daemon (the controller DB shared by nube-api and nube-scheduler,
 * the agent's state and outbox files, the image and billing metadata) is opened here, so
 * all of them get the same settings:
 *
 *  - WAL journal: readers never block the writer and the writer never blocks readers,
 *    which is what lets the API's HTTP workers list servers while the scheduler claims.
 *  - busy_timeout: writers queue behind each other inside SQLite for up to busy_ms
 *    instead of failing at once with SQLITE_BUSY.
 *  - foreign_keys=ON: SQLite ships with them off for backwards compatibility; nube's
 *    schemas rely on them (an allocation cannot point at a missing instance).
 *  - synchronous=NORMAL: in WAL mode this still keeps the database consistent after a
 *    power loss (only the last commits may be lost), at a fraction of FULL's fsyncs.
 *
 * Schema changes are versioned migrations keyed by PRAGMA user_version. Each migration
 * runs in its own BEGIN IMMEDIATE transaction and re-reads user_version under that write
 * lock, so two processes starting at once against a fresh file cannot both apply the
 * same step. A file whose version is newer than this binary knows is refused rather than
 * half-understood.
 *
 * Result codes are mapped to negative errnos in one place (cl_db_errno) so callers across
 * nube handle "locked" (-EBUSY), "duplicate" (-EEXIST) and "disk full" (-ENOSPC) without
 * knowing SQLite. File descriptors: SQLite's unix VFS opens the database, journal and WAL
 * files with O_CLOEXEC itself, so nothing leaks into posix_spawn'ed children.
 */
#include "db.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

#define DB_LOG "db"

struct cl_db {
    sqlite3 *handle;
};

int cl_db_errno(int sqlite_rc)
{
    /* Extended codes (SQLITE_BUSY_SNAPSHOT, SQLITE_CONSTRAINT_UNIQUE, ...) carry their
     * primary code in the low byte. */
    switch (sqlite_rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW:
        return 0;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return -EBUSY;
    case SQLITE_CONSTRAINT:
        return -EEXIST;
    case SQLITE_FULL:
        return -ENOSPC;
    default:
        return -EIO;
    }
}

sqlite3 *cl_db_handle(cl_db *db) { return db ? db->handle : NULL; }

const char *cl_db_errmsg(cl_db *db)
{
    if (!db || !db->handle)
        return "no database";
    return sqlite3_errmsg(db->handle);
}

int cl_db_exec(cl_db *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db->handle, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        cl_debug(DB_LOG, "exec failed (%d): %s", rc, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return cl_db_errno(rc);
    }
    return 0;
}

int cl_db_prepare(cl_db *db, const char *sql, sqlite3_stmt **out)
{
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v2(db->handle, sql, -1, &stmt, NULL);
    if (rc != SQLITE_OK) {
        cl_debug(DB_LOG, "prepare failed (%d): %s", rc, sqlite3_errmsg(db->handle));
        sqlite3_finalize(stmt);
        /* Preparing reads the schema, which can meet a lock; everything else is a bug in
         * the SQL text. */
        return cl_db_errno(rc) == -EBUSY ? -EBUSY : -EINVAL;
    }
    *out = stmt;
    return 0;
}

int cl_db_step_done(sqlite3_stmt *stmt)
{
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE)
        return 0;
    if (rc == SQLITE_ROW) {
        /* A statement that yields rows is not what the caller said it was. */
        cl_debug(DB_LOG, "step_done: statement returned a row: %s", sqlite3_sql(stmt));
        return -EINVAL;
    }
    cl_debug(DB_LOG, "step failed (%d): %s", rc, sqlite3_errmsg(sqlite3_db_handle(stmt)));
    return cl_db_errno(rc);
}

static int bind_rc(int rc)
{
    if (rc == SQLITE_OK)
        return 0;
    /* SQLITE_RANGE (bad index) and SQLITE_MISUSE are programmer errors. */
    return (rc == SQLITE_NOMEM) ? -ENOMEM : -EINVAL;
}

int cl_db_bind_text(sqlite3_stmt *stmt, int idx, const char *s)
{
    if (!s)
        return bind_rc(sqlite3_bind_null(stmt, idx));
    /* TRANSIENT: SQLite copies, so callers may bind stack buffers. */
    return bind_rc(sqlite3_bind_text(stmt, idx, s, -1, SQLITE_TRANSIENT));
}

int cl_db_bind_int64(sqlite3_stmt *stmt, int idx, int64_t v)
{
    return bind_rc(sqlite3_bind_int64(stmt, idx, (sqlite3_int64)v));
}

void cl_db_column_text(sqlite3_stmt *stmt, int col, char *out, size_t outlen)
{
    if (!out || outlen == 0)
        return;
    const unsigned char *t = sqlite3_column_text(stmt, col);
    cl_strlcpy(out, t ? (const char *)t : "", outlen);
}

int cl_db_begin(cl_db *db) { return cl_db_exec(db, "BEGIN"); }

int cl_db_begin_immediate(cl_db *db)
{
    /* Takes the write lock now, waiting up to busy_timeout for another writer. A deferred
     * transaction that first reads and then writes cannot wait in WAL mode (it gets
     * SQLITE_BUSY_SNAPSHOT at once), hence IMMEDIATE for every read-check-write. */
    return cl_db_exec(db, "BEGIN IMMEDIATE");
}

int cl_db_commit(cl_db *db) { return cl_db_exec(db, "COMMIT"); }

int cl_db_rollback(cl_db *db)
{
    /* Autocommit on means no transaction is open (or SQLite already rolled it back
     * after an error such as SQLITE_FULL): nothing to do. */
    if (sqlite3_get_autocommit(db->handle))
        return 0;
    return cl_db_exec(db, "ROLLBACK");
}

int cl_db_changes(cl_db *db) { return sqlite3_changes(db->handle); }

int cl_db_user_version(cl_db *db, int *out)
{
    _cleanup_stmt_ sqlite3_stmt *stmt = NULL;
    int r = cl_db_prepare(db, "PRAGMA user_version", &stmt);
    if (r < 0)
        return r;
    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_ROW)
        return rc == SQLITE_DONE ? -EIO : cl_db_errno(rc);
    *out = sqlite3_column_int(stmt, 0);
    return 0;
}

/* Apply one migration unless another connection did it while we waited for the lock. */
static int apply_migration(cl_db *db, const cl_db_migration *m, cl_error *err)
{
    int r = cl_db_begin_immediate(db);
    if (r < 0) {
        cl_error_set(err, CL_E_INTERNAL, "database migration %d: cannot lock: %s", m->version,
                     cl_db_errmsg(db));
        return r;
    }

    int cur = 0;
    r = cl_db_user_version(db, &cur);
    if (r < 0)
        goto fail;
    if (cur >= m->version) {
        cl_db_rollback(db);
        return 0;
    }

    r = cl_db_exec(db, m->sql);
    if (r < 0)
        goto fail;

    /* PRAGMA takes no bound parameters; the version is an int from our own table. */
    char pragma[64];
    snprintf(pragma, sizeof(pragma), "PRAGMA user_version = %d", m->version);
    r = cl_db_exec(db, pragma);
    if (r < 0)
        goto fail;

    r = cl_db_commit(db);
    if (r < 0)
        goto fail;
    cl_debug(DB_LOG, "applied migration %d", m->version);
    return 0;

fail:
    cl_error_set(err, CL_E_INTERNAL, "database migration %d failed: %s", m->version,
                 cl_db_errmsg(db));
    cl_db_rollback(db);
    return r;
}

/* Report what journal mode we actually got: a filesystem without shared memory support
 * silently stays in rollback mode, which is correct but slower and more lock-prone. */
static int set_wal(cl_db *db)
{
    _cleanup_stmt_ sqlite3_stmt *stmt = NULL;
    int r = cl_db_prepare(db, "PRAGMA journal_mode=WAL", &stmt);
    if (r < 0)
        return r;
    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_ROW)
        return cl_db_errno(rc) ? cl_db_errno(rc) : -EIO;
    const unsigned char *mode = sqlite3_column_text(stmt, 0);
    if (!mode || strcmp((const char *)mode, "wal") != 0)
        cl_debug(DB_LOG, "journal_mode is %s, not wal", mode ? (const char *)mode : "?");
    return 0;
}

int cl_db_open(const char *path, const cl_db_migration *migrations, size_t nmigrations,
               int busy_ms, cl_db **out, cl_error *err)
{
    if (!path || !out) {
        cl_error_set(err, CL_E_INTERNAL, "database path missing");
        return -EINVAL;
    }

    cl_db *db = calloc(1, sizeof(*db));
    if (!db) {
        cl_error_set(err, CL_E_INTERNAL, "out of memory");
        return -ENOMEM;
    }

    /* FULLMUTEX: a connection is used by one thread at a time, but serialised mode
     * keeps a mistake from corrupting memory. No SQLITE_OPEN_URI: a path is a path. */
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX;
    int rc = sqlite3_open_v2(path, &db->handle, flags, NULL);
    int r;
    if (rc != SQLITE_OK) {
        r = cl_db_errno(rc);
        cl_error_set(err, CL_E_INTERNAL, "cannot open database %s: %s", path,
                     db->handle ? sqlite3_errmsg(db->handle) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_busy_timeout(db->handle, busy_ms > 0 ? busy_ms : 0);

    r = set_wal(db);
    if (r < 0) {
        cl_error_set(err, CL_E_INTERNAL, "cannot enable WAL on %s: %s", path,
                     cl_db_errmsg(db));
        goto fail;
    }
    r = cl_db_exec(db, "PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL;");
    if (r < 0) {
        cl_error_set(err, CL_E_INTERNAL, "cannot configure %s: %s", path, cl_db_errmsg(db));
        goto fail;
    }

    int version = 0;
    r = cl_db_user_version(db, &version);
    if (r < 0) {
        cl_error_set(err, CL_E_INTERNAL, "cannot read schema version of %s: %s", path,
                     cl_db_errmsg(db));
        goto fail;
    }
    int newest = nmigrations ? migrations[nmigrations - 1].version : 0;
    if (version > newest) {
        r = -EPROTO;
        cl_error_set(err, CL_E_INTERNAL,
                     "database %s has schema version %d, this nube knows up to %d "
                     "(written by a newer nube?)",
                     path, version, newest);
        goto fail;
    }

    for (size_t i = 0; i < nmigrations; i++) {
        if (migrations[i].version <= version)
            continue;
        r = apply_migration(db, &migrations[i], err);
        if (r < 0)
            goto fail;
    }

    *out = db;
    return 0;

fail:
    cl_db_close(db);
    return r;
}

void cl_db_close(cl_db *db)
{
    if (!db)
        return;
    /* close_v2 defers the close until any leaked statement is finalised rather than
     * failing with SQLITE_BUSY and leaking the handle. */
    sqlite3_close_v2(db->handle);
    free(db);
}

int cl_db_step_row(sqlite3_stmt *stmt)
{
    int rc = sqlite3_step(stmt);

    if (rc == SQLITE_ROW)
        return 1;
    if (rc == SQLITE_DONE)
        return 0;
    cl_debug("db", "query failed (%d): %s", rc, sqlite3_errmsg(sqlite3_db_handle(stmt)));
    return cl_db_errno(rc) ? cl_db_errno(rc) : -EIO;
}

int cl_db_collect(sqlite3_stmt *stmt, size_t elem_size, cl_db_row_fn read_row, void *ctx,
                  cl_db_clear_fn clear, void **out, size_t *out_n)
{
    char *arr = NULL;
    size_t n = 0, cap = 0;
    int r;

    while ((r = cl_db_step_row(stmt)) == 1) {
        if (cl_grow_array((void **)&arr, &cap, n, elem_size) < 0) {
            r = -ENOMEM;
            break;
        }
        memset(arr + n * elem_size, 0, elem_size);
        r = read_row(stmt, arr + n * elem_size, ctx);
        if (r <= 0)
            n++;
        if (r < 0)
            break;
    }
    if (r < 0) {
        for (size_t i = 0; clear && i < n; i++)
            clear(arr + i * elem_size);
        free(arr);
        return r;
    }
    *out = arr;
    *out_n = n;
    return 0;
}
