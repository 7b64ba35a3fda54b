/*
 * test_db.c - libcloud/db.c against real SQLite files in a private temporary directory:
 * pragmas, migrations (once, idempotent re-open, newer files refused, failed steps rolled
 * back), errno mapping, transactions, two connections contending for the write lock, and
 * cl_db_collect (growth, skipped rows, the reader's and the step's errors).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "libcloud/db.h"
#include "libcloud/util.h"

typedef struct fixture {
    char dir[64];
    char path[128];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/nube-test-db-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/test.db", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < CL_ARRAY_SIZE(suffixes); i++) {
        char p[160];
        snprintf(p, sizeof(p), "%s%s", f->path, suffixes[i]);
        unlink(p);
    }
    assert_int_equal(rmdir(f->dir), 0);
    free(f);
    return 0;
}

static const cl_db_migration migs[] = {
    {1, "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);"},
    /* A data step: re-applying it would insert a second row. */
    {2, "CREATE TABLE log (msg TEXT); INSERT INTO log VALUES ('v2');"},
    {3, "ALTER TABLE t ADD COLUMN extra INTEGER DEFAULT 7;"},
};

static int64_t count_rows(cl_db *db, const char *sql)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    assert_int_equal(cl_db_prepare(db, sql, &s), 0);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    return sqlite3_column_int64(s, 0);
}

static void test_errno_mapping(void **state)
{
    (void)state;
    assert_int_equal(cl_db_errno(SQLITE_OK), 0);
    assert_int_equal(cl_db_errno(SQLITE_DONE), 0);
    assert_int_equal(cl_db_errno(SQLITE_BUSY), -EBUSY);
    assert_int_equal(cl_db_errno(SQLITE_LOCKED), -EBUSY);
    assert_int_equal(cl_db_errno(SQLITE_BUSY_SNAPSHOT), -EBUSY);
    assert_int_equal(cl_db_errno(SQLITE_CONSTRAINT), -EEXIST);
    assert_int_equal(cl_db_errno(SQLITE_CONSTRAINT_UNIQUE), -EEXIST);
    assert_int_equal(cl_db_errno(SQLITE_FULL), -ENOSPC);
    assert_int_equal(cl_db_errno(SQLITE_CORRUPT), -EIO);
    assert_int_equal(cl_db_errno(SQLITE_ERROR), -EIO);
}

static void test_pragmas(void **state)
{
    fixture *f = *state;
    cl_error err = {0};
    _cleanup_db_ cl_db *db = NULL;
    assert_int_equal(cl_db_open(f->path, migs, 1, 1234, &db, &err), 0);

    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    assert_int_equal(cl_db_prepare(db, "PRAGMA journal_mode", &s), 0);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(s, 0), "wal");
    assert_int_equal(count_rows(db, "PRAGMA foreign_keys"), 1);
    assert_int_equal(count_rows(db, "PRAGMA synchronous"), 1); /* NORMAL */
    assert_int_equal(count_rows(db, "PRAGMA busy_timeout"), 1234);
}

static void test_memory_db(void **state)
{
    (void)state;
    cl_error err = {0};
    _cleanup_db_ cl_db *db = NULL;
    assert_int_equal(cl_db_open(":memory:", migs, CL_ARRAY_SIZE(migs), 100, &db, &err), 0);
    int v = -1;
    assert_int_equal(cl_db_user_version(db, &v), 0);
    assert_int_equal(v, 3);
    assert_non_null(cl_db_handle(db));
    cl_db_close(NULL); /* accepted */
}

static void test_migrations_once(void **state)
{
    fixture *f = *state;
    cl_error err = {0};
    int v = -1;

    cl_db *db = NULL;
    assert_int_equal(cl_db_open(f->path, migs, 2, 100, &db, &err), 0);
    assert_int_equal(cl_db_user_version(db, &v), 0);
    assert_int_equal(v, 2);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM log"), 1);
    cl_db_close(db);

    /* Re-open with the same list: a no-op. */
    db = NULL;
    assert_int_equal(cl_db_open(f->path, migs, 2, 100, &db, &err), 0);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM log"), 1);
    cl_db_close(db);

    /* A newer binary applies only the new step. */
    db = NULL;
    assert_int_equal(cl_db_open(f->path, migs, 3, 100, &db, &err), 0);
    assert_int_equal(cl_db_user_version(db, &v), 0);
    assert_int_equal(v, 3);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM log"), 1);
    assert_int_equal(cl_db_exec(db, "INSERT INTO t (name) VALUES ('a')"), 0);
    assert_int_equal(count_rows(db, "SELECT extra FROM t"), 7);
    cl_db_close(db);

    /* An older binary refuses the file instead of misreading it. */
    db = NULL;
    memset(&err, 0, sizeof(err));
    assert_int_equal(cl_db_open(f->path, migs, 2, 100, &db, &err), -EPROTO);
    assert_null(db);
    assert_int_equal(err.code, CL_E_INTERNAL);
    assert_non_null(strstr(err.message, "version 3"));
}

static void test_failed_migration_rolls_back(void **state)
{
    fixture *f = *state;
    static const cl_db_migration bad[] = {
        {1, "CREATE TABLE a (x INTEGER);"},
        {2, "CREATE TABLE b (y INTEGER); THIS IS NOT SQL;"},
    };
    cl_error err = {0};
    cl_db *db = NULL;
    assert_int_equal(cl_db_open(f->path, bad, 2, 100, &db, &err), -EIO);
    assert_null(db);
    assert_int_not_equal(err.message[0], '\0');

    /* Step 1 committed, step 2 left nothing behind (table b absent, version 1). */
    assert_int_equal(cl_db_open(f->path, bad, 1, 100, &db, &err), 0);
    int v = -1;
    assert_int_equal(cl_db_user_version(db, &v), 0);
    assert_int_equal(v, 1);
    assert_int_equal(
        count_rows(db, "SELECT count(*) FROM sqlite_master WHERE name IN ('a','b')"), 1);
    cl_db_close(db);
}

static void test_constraint_and_binds(void **state)
{
    fixture *f = *state;
    cl_error err = {0};
    _cleanup_db_ cl_db *db = NULL;
    assert_int_equal(cl_db_open(f->path, migs, 1, 100, &db, &err), 0);

    {
        _cleanup_stmt_ sqlite3_stmt *s = NULL;
        assert_int_equal(cl_db_prepare(db, "INSERT INTO t (id, name) VALUES (?, ?)", &s), 0);
        assert_int_equal(cl_db_bind_int64(s, 1, 1), 0);
        assert_int_equal(cl_db_bind_text(s, 2, "alpha"), 0);
        assert_int_equal(cl_db_step_done(s), 0);
        assert_int_equal(cl_db_changes(db), 1);
        /* Same name again: UNIQUE violation. */
        sqlite3_reset(s);
        assert_int_equal(cl_db_bind_int64(s, 1, 2), 0);
        assert_int_equal(cl_db_step_done(s), -EEXIST);
        assert_non_null(strstr(cl_db_errmsg(db), "UNIQUE"));
        /* NULL binds SQL NULL: NOT NULL violation is a constraint too. */
        sqlite3_reset(s);
        assert_int_equal(cl_db_bind_int64(s, 1, 3), 0);
        assert_int_equal(cl_db_bind_text(s, 2, NULL), 0);
        assert_int_equal(cl_db_step_done(s), -EEXIST);
        /* Out-of-range index is a caller bug. */
        assert_int_equal(cl_db_bind_int64(s, 9, 1), -EINVAL);
    }
    assert_int_equal(cl_db_exec(db, "INSERT INTO t (id, name) VALUES (1, 'dup')"), -EEXIST);
    assert_int_equal(cl_db_exec(db, "SELEC nonsense"), -EIO);
    {
        _cleanup_stmt_ sqlite3_stmt *s = NULL;
        assert_int_equal(cl_db_prepare(db, "SELEC nonsense", &s), -EINVAL);
        assert_null(s);
    }
    {
        /* step_done on a query is refused. */
        _cleanup_stmt_ sqlite3_stmt *s = NULL;
        assert_int_equal(cl_db_prepare(db, "SELECT 1", &s), 0);
        assert_int_equal(cl_db_step_done(s), -EINVAL);
    }
    {
        _cleanup_stmt_ sqlite3_stmt *s = NULL;
        assert_int_equal(cl_db_prepare(db, "SELECT name, NULL FROM t WHERE id = 1", &s), 0);
        assert_int_equal(sqlite3_step(s), SQLITE_ROW);
        char small[4];
        cl_db_column_text(s, 0, small, sizeof(small));
        assert_string_equal(small, "alp"); /* truncated, terminated */
        char buf[16] = "junk";
        cl_db_column_text(s, 1, buf, sizeof(buf));
        assert_string_equal(buf, "");
    }
}

static void test_transactions(void **state)
{
    fixture *f = *state;
    cl_error err = {0};
    _cleanup_db_ cl_db *a = NULL;
    _cleanup_db_ cl_db *b = NULL;
    assert_int_equal(cl_db_open(f->path, migs, 1, 100, &a, &err), 0);
    assert_int_equal(cl_db_open(f->path, migs, 1, 100, &b, &err), 0);

    assert_int_equal(cl_db_rollback(a), 0); /* none open: harmless */

    assert_int_equal(cl_db_begin(a), 0);
    assert_int_equal(cl_db_exec(a, "INSERT INTO t (name) VALUES ('gone')"), 0);
    assert_int_equal(cl_db_rollback(a), 0);
    assert_int_equal(count_rows(a, "SELECT count(*) FROM t"), 0);

    assert_int_equal(cl_db_begin_immediate(a), 0);
    assert_int_equal(cl_db_exec(a, "INSERT INTO t (name) VALUES ('kept')"), 0);
    /* WAL: the other connection reads the last committed state meanwhile. */
    assert_int_equal(count_rows(b, "SELECT count(*) FROM t"), 0);
    assert_int_equal(cl_db_commit(a), 0);
    assert_int_equal(count_rows(b, "SELECT count(*) FROM t WHERE name = 'kept'"), 1);
    assert_int_equal(count_rows(a, "SELECT count(*) FROM t"), 1);

    /* Commit without a transaction is an error, not a crash. */
    assert_int_equal(cl_db_commit(a), -EIO);
}

static void test_write_lock_contention(void **state)
{
    fixture *f = *state;
    cl_error err = {0};
    _cleanup_db_ cl_db *a = NULL;
    _cleanup_db_ cl_db *b = NULL;
    assert_int_equal(cl_db_open(f->path, migs, 1, 100, &a, &err), 0);
    assert_int_equal(cl_db_open(f->path, migs, 1, 150, &b, &err), 0);

    assert_int_equal(cl_db_begin_immediate(a), 0);
    int64_t t0 = cl_mono_ms();
    assert_int_equal(cl_db_begin_immediate(b), -EBUSY);
    int64_t waited = cl_mono_ms() - t0;
    /* It waited for the busy timeout instead of failing at once. */
    assert_true(waited >= 100);
    assert_true(waited < 3000);
    /* A plain write on b outside a transaction meets the same lock. */
    assert_int_equal(cl_db_exec(b, "INSERT INTO t (name) VALUES ('b')"), -EBUSY);
    assert_int_equal(cl_db_rollback(b), 0);

    assert_int_equal(cl_db_commit(a), 0);
    assert_int_equal(cl_db_begin_immediate(b), 0);
    assert_int_equal(cl_db_exec(b, "INSERT INTO t (name) VALUES ('b')"), 0);
    assert_int_equal(cl_db_commit(b), 0);
    assert_int_equal(count_rows(a, "SELECT count(*) FROM t"), 1);
}

static void test_open_errors(void **state)
{
    fixture *f = *state;
    cl_error err = {0};
    cl_db *db = NULL;
    char p[200];
    snprintf(p, sizeof(p), "%s/no/such/dir/x.db", f->dir);
    assert_int_equal(cl_db_open(p, migs, 1, 100, &db, &err), -EIO);
    assert_null(db);
    assert_non_null(strstr(err.message, "cannot open"));
}

/* ---- cl_db_collect ---- */

typedef struct row_item {
    int64_t id;
    char *name; /* strdup'ed: what the clear function must free */
} row_item;

typedef struct collect_ctx {
    bool skip_odd; /* skip rows with odd ids (positive return) */
    int64_t fail_at; /* fail with -EIO on this id after filling the element, 0 = never */
    int cleared;
} collect_ctx;

static int read_item(sqlite3_stmt *s, void *elem, void *ctx)
{
    row_item *it = elem;
    collect_ctx *c = ctx;

    assert_null(it->name); /* handed over zeroed, also when a skipped row reuses it */
    it->id = sqlite3_column_int64(s, 0);
    if (c->skip_odd && it->id % 2)
        return 1;
    it->name = strdup((const char *)sqlite3_column_text(s, 1));
    assert_non_null(it->name);
    return it->id == c->fail_at ? -EIO : 0;
}

static collect_ctx *clear_ctx; /* the clear function has no context argument */

static void clear_item(void *elem)
{
    row_item *it = elem;

    free(it->name);
    it->name = NULL;
    clear_ctx->cleared++;
}

static int collect_items(cl_db *db, const char *sql, collect_ctx *c, row_item **out,
                         size_t *n)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;

    assert_int_equal(cl_db_prepare(db, sql, &s), 0);
    clear_ctx = c;
    return cl_db_collect(s, sizeof(**out), read_item, c, clear_item, (void **)out, n);
}

static void test_collect(void **state)
{
    (void)state;
    cl_error err = {0};
    _cleanup_db_ cl_db *db = NULL;
    row_item *items = NULL, sentinel = {0};
    size_t n = 99;
    collect_ctx c = {0};

    assert_int_equal(cl_db_open(":memory:", migs, CL_ARRAY_SIZE(migs), 100, &db, &err), 0);
    /* 40 rows: more than the first allocation, so the array grows. */
    assert_int_equal(cl_db_exec(db, "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1"
                                    " FROM k WHERE i < 40) INSERT INTO t (id, name)"
                                    " SELECT i, 'n' || i FROM k"), 0);

    /* No rows: success, NULL array, count 0. */
    items = &sentinel;
    assert_int_equal(collect_items(db, "SELECT id, name FROM t WHERE id < 0", &c, &items, &n),
                     0);
    assert_null(items);
    assert_int_equal(n, 0);

    /* Every row, in order. */
    assert_int_equal(collect_items(db, "SELECT id, name FROM t ORDER BY id", &c, &items, &n),
                     0);
    assert_int_equal(n, 40);
    for (size_t i = 0; i < n; i++) {
        char want[32];

        snprintf(want, sizeof(want), "n%zu", i + 1);
        assert_int_equal(items[i].id, (int64_t)i + 1);
        assert_string_equal(items[i].name, want);
        free(items[i].name);
    }
    free(items);

    /* Skipped rows leave no element behind. */
    c.skip_odd = true;
    assert_int_equal(collect_items(db, "SELECT id, name FROM t ORDER BY id", &c, &items, &n),
                     0);
    assert_int_equal(n, 20);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(items[i].id, 2 * ((int64_t)i + 1));
        free(items[i].name);
    }
    free(items);

    /* The reader's error stops the collection: every element so far, the failing one
     * included, is cleared, the array freed, the outputs untouched. */
    c = (collect_ctx){.fail_at = 25};
    items = &sentinel;
    n = 99;
    assert_int_equal(collect_items(db, "SELECT id, name FROM t ORDER BY id", &c, &items, &n),
                     -EIO);
    assert_int_equal(c.cleared, 25);
    assert_ptr_equal(items, &sentinel);
    assert_int_equal(n, 99);

    /* A step error (abs() overflowing on row 30) is returned the same way. */
    c = (collect_ctx){0};
    assert_int_equal(collect_items(db, "SELECT id, CASE WHEN id = 30 THEN"
                                       " abs(-9223372036854775807 - 1) ELSE name END"
                                       " FROM t ORDER BY id", &c, &items, &n),
                     -EIO);
    assert_int_equal(c.cleared, 29);
    assert_ptr_equal(items, &sentinel);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errno_mapping),
        cmocka_unit_test(test_memory_db),
        cmocka_unit_test_setup_teardown(test_pragmas, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrations_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_migration_rolls_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_constraint_and_binds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transactions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_lock_contention, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
        cmocka_unit_test(test_collect),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
