/*
 * db.h - SQLite done the same way everywhere: WAL, busy timeout, foreign keys, versioned
 * migrations (PRAGMA user_version), prepared statements and explicit transactions.
 *
 * A cl_db is one connection and must be used by one thread at a time; threads that need
 * the database concurrently open their own connection to the same file (WAL lets readers
 * run beside one writer; the busy timeout serialises writers).
 * Claims use cl_db_begin_immediate() so the capacity check and the write happen under
 * the database's write lock: two schedulers or two threads can never both see room.
 */
#ifndef CL_DB_H
#define CL_DB_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cleanup.h"
#include "errors.h"

typedef struct cl_db cl_db;

static inline void cl_db_finalizep(sqlite3_stmt **s)
{
    if (*s)
        sqlite3_finalize(*s);
}
#define _cleanup_stmt_ _cleanup_(cl_db_finalizep)

/* One schema step: applied in order to databases whose user_version < version. */
typedef struct cl_db_migration {
    int version;
    const char *sql; /* one or more statements */
} cl_db_migration;

/* Open (creating if needed) the database at path (":memory:" allowed), set WAL,
 * busy_timeout (busy_ms), foreign_keys=ON, synchronous=NORMAL, then apply migrations
 * newer than the file's user_version, each in its own transaction. A file whose version
 * is newer than the last migration is refused (-EPROTO: written by a newer nube).
 * Returns 0 and *out (free with cl_db_close), or negative errno with err filled. */
int cl_db_open(const char *path, const cl_db_migration *migrations, size_t nmigrations,
               int busy_ms, cl_db **out, cl_error *err);

/* Close; accepts NULL. */
void cl_db_close(cl_db *db);

static inline void cl_db_closep(cl_db **db) { cl_db_close(*db); }
#define _cleanup_db_ _cleanup_(cl_db_closep)

sqlite3 *cl_db_handle(cl_db *db);

/* Run SQL without results. Returns 0 or a negative errno (-EBUSY when locked past the
 * timeout, -ENOSPC when the disk is full, -EIO otherwise); the SQLite message is logged
 * at debug level and available through cl_db_errmsg(). */
int cl_db_exec(cl_db *db, const char *sql);

/* Prepare a statement (caller finalizes, use _cleanup_stmt_). 0 or -EINVAL. */
int cl_db_prepare(cl_db *db, const char *sql, sqlite3_stmt **out);

/* Step a statement that returns no rows (INSERT/UPDATE/DELETE). 0, -EEXIST on a
 * constraint violation, -EBUSY, -EIO. */
int cl_db_step_done(sqlite3_stmt *stmt);

/* Step a query statement: 1 when a row is ready, 0 when done, or a negative errno
 * (as cl_db_errno) with the SQLite message logged at debug level. */
int cl_db_step_row(sqlite3_stmt *stmt);

/* Reads the statement's current row into elem, zeroed by cl_db_collect. Returns 0 to keep
 * the element, a positive value to skip the row (the element is reused), or a negative
 * errno to stop (the element is then kept so the clear function can release it). */
typedef int (*cl_db_row_fn)(sqlite3_stmt *stmt, void *elem, void *ctx);

/* Releases what a row reader allocated inside one element (not the element itself). */
typedef void (*cl_db_clear_fn)(void *elem);

/* Step stmt to its end, collecting one elem_size element a row through read_row (ctx is
 * passed along) into a malloc'd array that doubles as it grows. Returns 0 with *out (free
 * it; NULL when there were no rows) and *out_n, or a negative errno (-ENOMEM, the step's
 * error, or read_row's) after calling clear (may be NULL) on every collected element and
 * freeing the array; *out and *out_n are left as they were on failure. */
int cl_db_collect(sqlite3_stmt *stmt, size_t elem_size, cl_db_row_fn read_row, void *ctx,
                  cl_db_clear_fn clear, void **out, size_t *out_n);

/* Bind helpers: NULL text binds SQL NULL. Index is 1-based as in SQLite. */
int cl_db_bind_text(sqlite3_stmt *stmt, int idx, const char *s);
int cl_db_bind_int64(sqlite3_stmt *stmt, int idx, int64_t v);

/* Copy a text column into a fixed buffer (NULL -> ""), truncating safely. */
void cl_db_column_text(sqlite3_stmt *stmt, int col, char *out, size_t outlen);

/* Transactions. begin_immediate takes the write lock at once (for claims). */
int cl_db_begin(cl_db *db);
int cl_db_begin_immediate(cl_db *db);
int cl_db_commit(cl_db *db);
int cl_db_rollback(cl_db *db); /* safe to call when no transaction is open */

/* Number of rows changed by the last statement. */
int cl_db_changes(cl_db *db);

int cl_db_user_version(cl_db *db, int *out);
const char *cl_db_errmsg(cl_db *db);

/* Map an SQLite result code to a negative errno as described above. */
int cl_db_errno(int sqlite_rc);

#endif
