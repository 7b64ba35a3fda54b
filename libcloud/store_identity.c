/*
 * store_identity.c - controller-store tables and functions for the identity concern
 * (schema step v2, see store_schema.h and store_identity.h).
 *
 * The tables follow Keystone's model closely enough that its API maps one to one:
 * domains, projects and users (names unique per domain), global roles, and role
 * assignments of a user on a project. The three default roles are seeded by the schema
 * step with fixed ids (the same stable ids the first, static Identity reported), so a
 * role id never changes for a client that cached it.
 *
 * revoked_tokens holds the audit ids of tokens revoked before their expiry. Rows are only
 * useful until the token would have expired anyway, so every revocation also deletes
 * the rows whose expiry has passed: the table stays as small as the set of live revoked
 * tokens.
 *
 * Foreign keys (ON DELETE CASCADE) remove a user's or project's role assignments with
 * it, in the same statement.
 */
#include "store_identity.h"
#include "store_schema.h"

#include <errno.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

#define SI_LOG "store.identity"

const char cl_store_schema_identity[] =
    "CREATE TABLE domains ("
    "  id TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL UNIQUE,"
    "  description TEXT NOT NULL DEFAULT '',"
    "  enabled INTEGER NOT NULL DEFAULT 1"
    ");"
    "INSERT INTO domains (id, name, description) VALUES"
    "  ('default', 'Default', 'The default domain');"
    "CREATE TABLE projects ("
    "  id TEXT PRIMARY KEY,"
    "  domain_id TEXT NOT NULL REFERENCES domains (id),"
    "  name TEXT NOT NULL,"
    "  description TEXT NOT NULL DEFAULT '',"
    "  enabled INTEGER NOT NULL DEFAULT 1,"
    "  created_ms INTEGER NOT NULL DEFAULT 0,"
    "  UNIQUE (domain_id, name)"
    ");"
    "CREATE TABLE users ("
    "  id TEXT PRIMARY KEY,"
    "  domain_id TEXT NOT NULL REFERENCES domains (id),"
    "  name TEXT NOT NULL,"
    "  password_hash TEXT NOT NULL DEFAULT '',"
    "  enabled INTEGER NOT NULL DEFAULT 1,"
    /* Not a foreign key: Keystone keeps a user's default project even when it is gone. */
    "  default_project_id TEXT NOT NULL DEFAULT '',"
    "  email TEXT NOT NULL DEFAULT '',"
    "  description TEXT NOT NULL DEFAULT '',"
    "  created_ms INTEGER NOT NULL DEFAULT 0,"
    "  UNIQUE (domain_id, name)"
    ");"
    "CREATE TABLE roles ("
    "  id TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL UNIQUE"
    ");"
    "INSERT INTO roles (id, name) VALUES"
    "  ('34871f108738eac45ba757acfb80e70e', 'admin'),"
    "  ('78e4d6b37a617780a061ad62dea12ebb', 'member'),"
    "  ('47544296177a651fcd3b5887ec54239c', 'reader');"
    "CREATE TABLE role_assignments ("
    "  user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,"
    "  project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,"
    "  role_id TEXT NOT NULL REFERENCES roles (id) ON DELETE CASCADE,"
    "  PRIMARY KEY (user_id, project_id, role_id)"
    ");"
    "CREATE INDEX role_assignments_by_project ON role_assignments (project_id);"
    "CREATE INDEX role_assignments_by_role ON role_assignments (role_id);"
    "CREATE TABLE revoked_tokens ("
    "  audit_id TEXT PRIMARY KEY,"
    "  expires_ms INTEGER NOT NULL"
    ");"
    "CREATE INDEX revoked_tokens_by_expiry ON revoked_tokens (expires_ms);";

/* ---- helpers ---- */

/* One bound value: text (NULL binds SQL NULL), or an integer when is_int. */
typedef struct bind_val {
    const char *text;
    int64_t num;
    bool is_int;
} bind_val;
#define TXT(s) {.text = (s)}
#define INT(v) {.num = (v), .is_int = true}

/* Run a statement with these binds and no rows. With must_change, -ENOENT when it changed
 * no row (an UPDATE or DELETE of an unknown id). */
static int exec_vals(cl_store *st, const char *sql, int n, const bind_val *v, bool must_change)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int rc = cl_db_prepare(cl_store_db(st), sql, &s);

    if (rc < 0)
        return rc;
    for (int i = 0; i < n; i++) {
        if (v[i].is_int)
            cl_db_bind_int64(s, i + 1, v[i].num);
        else
            cl_db_bind_text(s, i + 1, v[i].text);
    }
    rc = cl_db_step_done(s);
    if (rc < 0 || !must_change)
        return rc;
    return cl_db_changes(cl_store_db(st)) > 0 ? 0 : -ENOENT;
}

/* The same with text binds only (at most 4). */
static int exec_binds(cl_store *st, const char *sql, int n, const char *const *binds,
                      bool must_change)
{
    bind_val v[4] = {0};

    for (int i = 0; i < n && i < 4; i++)
        v[i].text = binds[i];
    return exec_vals(st, sql, n < 4 ? n : 4, v, must_change);
}

/* Insert a row that belongs to a domain: -ENOENT when the domain does not exist. */
static int create_in_domain(cl_store *st, const char *domain_id, const char *sql, int n,
                            const bind_val *v)
{
    cl_domain d;
    int rc = cl_store_domain_get(st, domain_id, &d);

    return rc < 0 ? rc : exec_vals(st, sql, n, v, false);
}

/* Row readers are cl_db_row_fn: fill one element from the current row, return 0. */
typedef cl_db_row_fn row_fn;

/* Prepare sql, bind the texts, read at most one row through fn. -ENOENT when none. */
static int query_one(cl_store *st, const char *sql, int n, const char *const *binds, row_fn fn,
                     void *out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int rc = cl_db_prepare(cl_store_db(st), sql, &s);

    if (rc < 0)
        return rc;
    for (int i = 0; i < n; i++)
        cl_db_bind_text(s, i + 1, binds[i]);
    rc = cl_db_step_row(s);
    if (rc < 0)
        return rc;
    if (rc == 0)
        return -ENOENT;
    return fn(s, out, NULL);
}

/* Same, reading every row into a malloc'd array of elem-sized items. */
static int query_all(cl_store *st, const char *sql, int n, const char *const *binds, row_fn fn,
                     size_t elem, void **out, size_t *out_n)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int rc = cl_db_prepare(cl_store_db(st), sql, &s);

    if (rc < 0)
        return rc;
    for (int i = 0; i < n; i++)
        cl_db_bind_text(s, i + 1, binds[i]);
    return cl_db_collect(s, elem, fn, NULL, NULL, out, out_n);
}

#define COL(s, i, f) cl_db_column_text(s, i, f, sizeof(f))

unsigned cl_identity_role_bits(const char *role_name)
{
    if (!role_name)
        return 0;
    if (strcmp(role_name, "admin") == 0)
        return CL_ROLE_BIT(CL_ROLE_ADMIN) | CL_ROLE_BIT(CL_ROLE_MEMBER) |
               CL_ROLE_BIT(CL_ROLE_READER);
    if (strcmp(role_name, "member") == 0)
        return CL_ROLE_BIT(CL_ROLE_MEMBER) | CL_ROLE_BIT(CL_ROLE_READER);
    if (strcmp(role_name, "reader") == 0)
        return CL_ROLE_BIT(CL_ROLE_READER);
    return 0;
}

void cl_identity_new_id(char out[33])
{
    char u[CL_UUID_LEN];
    size_t o = 0;

    cl_uuid_new(u);
    for (size_t i = 0; u[i] && o < 32; i++)
        if (u[i] != '-')
            out[o++] = u[i];
    out[o] = '\0';
}

/* ---- domains ---- */

static int domain_row(sqlite3_stmt *s, void *o, void *ctx)
{
    cl_domain *d = o;

    (void)ctx;
    COL(s, 0, d->id);
    COL(s, 1, d->name);
    COL(s, 2, d->description);
    d->enabled = sqlite3_column_int(s, 3) != 0;
    return 0;
}

#define DOMAIN_COLS "SELECT id, name, description, enabled FROM domains "

int cl_store_domain_get(cl_store *st, const char *id, cl_domain *out)
{
    return query_one(st, DOMAIN_COLS "WHERE id = ?1", 1, (const char *[]){id}, domain_row, out);
}

int cl_store_domain_get_by_name(cl_store *st, const char *name, cl_domain *out)
{
    return query_one(st, DOMAIN_COLS "WHERE name = ?1", 1, (const char *[]){name}, domain_row,
                     out);
}

int cl_store_domain_list(cl_store *st, const char *name, cl_domain **out, size_t *out_n)
{
    return query_all(st, DOMAIN_COLS "WHERE ?1 IS NULL OR name = ?1 ORDER BY name", 1,
                     (const char *[]){name}, domain_row, sizeof(cl_domain), (void **)out,
                     out_n);
}

/* ---- projects ---- */

static int project_row(sqlite3_stmt *s, void *o, void *ctx)
{
    cl_project *p = o;

    (void)ctx;
    COL(s, 0, p->id);
    COL(s, 1, p->name);
    COL(s, 2, p->domain_id);
    COL(s, 3, p->description);
    p->enabled = sqlite3_column_int(s, 4) != 0;
    return 0;
}

#define PROJECT_COLS "SELECT id, name, domain_id, description, enabled FROM projects "

int cl_store_project_create(cl_store *st, const cl_project *p)
{
    return create_in_domain(st, p->domain_id,
                            "INSERT INTO projects (id, name, domain_id, description, enabled, "
                            "created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)", 6,
                            (const bind_val[]){TXT(p->id), TXT(p->name), TXT(p->domain_id),
                                               TXT(p->description), INT(p->enabled),
                                               INT(cl_now_ms())});
}

int cl_store_project_get(cl_store *st, const char *id, cl_project *out)
{
    return query_one(st, PROJECT_COLS "WHERE id = ?1", 1, (const char *[]){id}, project_row,
                     out);
}

int cl_store_project_get_by_name(cl_store *st, const char *domain_id, const char *name,
                                 cl_project *out)
{
    return query_one(st, PROJECT_COLS "WHERE domain_id = ?1 AND name = ?2", 2,
                     (const char *[]){domain_id, name}, project_row, out);
}

int cl_store_project_list(cl_store *st, const char *domain_id, const char *name,
                          cl_project **out, size_t *out_n)
{
    return query_all(st,
                     PROJECT_COLS "WHERE (?1 IS NULL OR domain_id = ?1) AND "
                                  "(?2 IS NULL OR name = ?2) ORDER BY name, id",
                     2, (const char *[]){domain_id, name}, project_row, sizeof(cl_project),
                     (void **)out, out_n);
}

int cl_store_project_update(cl_store *st, const cl_project *p)
{
    return exec_vals(st, "UPDATE projects SET name = ?2, description = ?3, enabled = ?4 "
                         "WHERE id = ?1", 4,
                     (const bind_val[]){TXT(p->id), TXT(p->name), TXT(p->description),
                                        INT(p->enabled)}, true);
}

int cl_store_project_delete(cl_store *st, const char *id)
{
    return exec_binds(st, "DELETE FROM projects WHERE id = ?1", 1, (const char *[]){id}, true);
}

/* ---- users ---- */

static int user_row(sqlite3_stmt *s, void *o, void *ctx)
{
    cl_user *u = o;

    (void)ctx;
    COL(s, 0, u->id);
    COL(s, 1, u->name);
    COL(s, 2, u->domain_id);
    COL(s, 3, u->password_hash);
    u->enabled = sqlite3_column_int(s, 4) != 0;
    COL(s, 5, u->default_project_id);
    COL(s, 6, u->email);
    COL(s, 7, u->description);
    return 0;
}

#define USER_COLS                                                                          \
    "SELECT id, name, domain_id, password_hash, enabled, default_project_id, email, "      \
    "description FROM users "

int cl_store_user_create(cl_store *st, const cl_user *u)
{
    return create_in_domain(st, u->domain_id,
                            "INSERT INTO users (id, name, domain_id, password_hash, enabled, "
                            "default_project_id, email, description, created_ms) "
                            "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)", 9,
                            (const bind_val[]){TXT(u->id), TXT(u->name), TXT(u->domain_id),
                                               TXT(u->password_hash), INT(u->enabled),
                                               TXT(u->default_project_id), TXT(u->email),
                                               TXT(u->description), INT(cl_now_ms())});
}

int cl_store_user_get(cl_store *st, const char *id, cl_user *out)
{
    return query_one(st, USER_COLS "WHERE id = ?1", 1, (const char *[]){id}, user_row, out);
}

int cl_store_user_get_by_name(cl_store *st, const char *domain_id, const char *name,
                              cl_user *out)
{
    return query_one(st, USER_COLS "WHERE domain_id = ?1 AND name = ?2", 2,
                     (const char *[]){domain_id, name}, user_row, out);
}

int cl_store_user_list(cl_store *st, const char *domain_id, const char *name, cl_user **out,
                       size_t *out_n)
{
    return query_all(st,
                     USER_COLS "WHERE (?1 IS NULL OR domain_id = ?1) AND "
                               "(?2 IS NULL OR name = ?2) ORDER BY name, id",
                     2, (const char *[]){domain_id, name}, user_row, sizeof(cl_user),
                     (void **)out, out_n);
}

int cl_store_user_update(cl_store *st, const cl_user *u)
{
    return exec_vals(st, "UPDATE users SET name = ?2, password_hash = ?3, enabled = ?4, "
                         "default_project_id = ?5, email = ?6, description = ?7 WHERE id = ?1",
                     7, (const bind_val[]){TXT(u->id), TXT(u->name), TXT(u->password_hash),
                                           INT(u->enabled), TXT(u->default_project_id),
                                           TXT(u->email), TXT(u->description)}, true);
}

int cl_store_user_delete(cl_store *st, const char *id)
{
    return exec_binds(st, "DELETE FROM users WHERE id = ?1", 1, (const char *[]){id}, true);
}

/* ---- roles ---- */

static int role_row(sqlite3_stmt *s, void *o, void *ctx)
{
    cl_role_rec *r = o;

    (void)ctx;
    COL(s, 0, r->id);
    COL(s, 1, r->name);
    return 0;
}

int cl_store_role_create(cl_store *st, const cl_role_rec *r)
{
    return exec_binds(st, "INSERT INTO roles (id, name) VALUES (?1, ?2)", 2,
                      (const char *[]){r->id, r->name}, false);
}

int cl_store_role_get(cl_store *st, const char *id, cl_role_rec *out)
{
    return query_one(st, "SELECT id, name FROM roles WHERE id = ?1", 1, (const char *[]){id},
                     role_row, out);
}

int cl_store_role_get_by_name(cl_store *st, const char *name, cl_role_rec *out)
{
    return query_one(st, "SELECT id, name FROM roles WHERE name = ?1", 1,
                     (const char *[]){name}, role_row, out);
}

int cl_store_role_list(cl_store *st, const char *name, cl_role_rec **out, size_t *out_n)
{
    return query_all(st, "SELECT id, name FROM roles WHERE ?1 IS NULL OR name = ?1 "
                         "ORDER BY name", 1, (const char *[]){name}, role_row,
                     sizeof(cl_role_rec), (void **)out, out_n);
}

int cl_store_role_delete(cl_store *st, const char *id)
{
    cl_role_rec r;
    int rc = cl_store_role_get(st, id, &r);

    if (rc < 0)
        return rc;
    if (cl_identity_role_bits(r.name))
        return -EBUSY;
    return exec_binds(st, "DELETE FROM roles WHERE id = ?1", 1, (const char *[]){id}, true);
}

/* ---- role assignments ---- */

int cl_store_assignment_add(cl_store *st, const char *user_id, const char *project_id,
                            const char *role_id)
{
    cl_user u;
    cl_project p;
    cl_role_rec r;
    int rc;

    if ((rc = cl_store_user_get(st, user_id, &u)) < 0 ||
        (rc = cl_store_project_get(st, project_id, &p)) < 0 ||
        (rc = cl_store_role_get(st, role_id, &r)) < 0)
        return rc;
    return exec_binds(st,
                      "INSERT OR IGNORE INTO role_assignments (user_id, project_id, role_id) "
                      "VALUES (?1, ?2, ?3)", 3, (const char *[]){user_id, project_id, role_id},
                      false);
}

int cl_store_assignment_remove(cl_store *st, const char *user_id, const char *project_id,
                               const char *role_id)
{
    return exec_binds(st,
                      "DELETE FROM role_assignments WHERE user_id = ?1 AND project_id = ?2 "
                      "AND role_id = ?3", 3, (const char *[]){user_id, project_id, role_id},
                      true);
}

static int one_row(sqlite3_stmt *s, void *o, void *ctx)
{
    (void)s;
    (void)ctx;
    *(int *)o = 1;
    return 0;
}

int cl_store_assignment_check(cl_store *st, const char *user_id, const char *project_id,
                              const char *role_id)
{
    int found = 0;

    return query_one(st, "SELECT 1 FROM role_assignments WHERE user_id = ?1 AND "
                         "project_id = ?2 AND role_id = ?3", 3,
                     (const char *[]){user_id, project_id, role_id}, one_row, &found);
}

static int assignment_row(sqlite3_stmt *s, void *o, void *ctx)
{
    cl_role_assignment *a = o;

    (void)ctx;
    COL(s, 0, a->user_id);
    COL(s, 1, a->user_name);
    COL(s, 2, a->user_domain_id);
    COL(s, 3, a->project_id);
    COL(s, 4, a->project_name);
    COL(s, 5, a->project_domain_id);
    COL(s, 6, a->role_id);
    COL(s, 7, a->role_name);
    return 0;
}

int cl_store_assignment_list(cl_store *st, const char *user_id, const char *project_id,
                             const char *role_id, cl_role_assignment **out, size_t *out_n)
{
    return query_all(st,
                     "SELECT u.id, u.name, u.domain_id, p.id, p.name, p.domain_id, r.id, "
                     "r.name FROM role_assignments a JOIN users u ON u.id = a.user_id "
                     "JOIN projects p ON p.id = a.project_id JOIN roles r ON r.id = a.role_id "
                     "WHERE (?1 IS NULL OR a.user_id = ?1) AND (?2 IS NULL OR "
                     "a.project_id = ?2) AND (?3 IS NULL OR a.role_id = ?3) "
                     "ORDER BY p.name, u.name, r.name",
                     3, (const char *[]){user_id, project_id, role_id}, assignment_row,
                     sizeof(cl_role_assignment), (void **)out, out_n);
}

int cl_store_user_project_roles(cl_store *st, const char *user_id, const char *project_id,
                                unsigned *out_bits, cl_role_rec **out, size_t *out_n)
{
    _cleanup_free_ cl_role_rec *assigned = NULL;
    _cleanup_free_ cl_role_rec *all = NULL;
    cl_role_rec *eff = NULL;
    size_t na = 0, nall = 0, ne = 0;
    unsigned bits = 0;
    int rc;

    rc = query_all(st,
                   "SELECT r.id, r.name FROM role_assignments a JOIN roles r ON "
                   "r.id = a.role_id WHERE a.user_id = ?1 AND a.project_id = ?2 "
                   "ORDER BY r.name", 2, (const char *[]){user_id, project_id}, role_row,
                   sizeof(cl_role_rec), (void **)&assigned, &na);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < na; i++)
        bits |= cl_identity_role_bits(assigned[i].name);
    if (out) {
        /* The effective list: every assigned role, plus the default roles implied by
         * the bits (admin brings member and reader), each once. */
        rc = cl_store_role_list(st, NULL, &all, &nall);
        if (rc < 0)
            return rc;
        eff = calloc(nall ? nall : 1, sizeof(*eff));
        if (!eff)
            return -ENOMEM;
        for (size_t i = 0; i < nall; i++) {
            bool take = false;
            unsigned rb = cl_identity_role_bits(all[i].name);

            for (size_t j = 0; j < na && !take; j++)
                take = strcmp(assigned[j].id, all[i].id) == 0;
            /* The named role's own bit (not its implications) must be in bits. */
            if (!take && rb) {
                unsigned own = strcmp(all[i].name, "admin") == 0    ? CL_ROLE_BIT(CL_ROLE_ADMIN)
                               : strcmp(all[i].name, "member") == 0 ? CL_ROLE_BIT(CL_ROLE_MEMBER)
                                                                    : CL_ROLE_BIT(CL_ROLE_READER);
                take = (bits & own) != 0;
            }
            if (take)
                eff[ne++] = all[i];
        }
        *out = eff;
        *out_n = ne;
    }
    *out_bits = bits;
    return 0;
}

/* ---- revoked tokens ---- */

int cl_store_token_revoke(cl_store *st, const char *audit_id, int64_t expires_ms,
                          int64_t now_ms)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    cl_db *db = cl_store_db(st);
    int rc;

    rc = cl_db_begin_immediate(db);
    if (rc < 0)
        return rc;
    rc = cl_db_prepare(db, "DELETE FROM revoked_tokens WHERE expires_ms <= ?1", &s);
    if (rc == 0) {
        cl_db_bind_int64(s, 1, now_ms);
        rc = cl_db_step_done(s);
    }
    if (s) {
        sqlite3_finalize(s);
        s = NULL;
    }
    if (rc == 0)
        rc = cl_db_prepare(db, "INSERT OR REPLACE INTO revoked_tokens (audit_id, expires_ms) "
                               "VALUES (?1, ?2)", &s);
    if (rc == 0) {
        cl_db_bind_text(s, 1, audit_id);
        cl_db_bind_int64(s, 2, expires_ms);
        rc = cl_db_step_done(s);
    }
    if (rc < 0) {
        cl_db_rollback(db);
        return rc;
    }
    rc = cl_db_commit(db);
    if (rc < 0)
        cl_db_rollback(db);
    return rc;
}

static int cmp_audit(const void *a, const void *b) { return strcmp(a, b); }

/* A row_fn for one 23-byte audit id. */
static int audit_id_row(sqlite3_stmt *s, void *o, void *ctx)
{
    (void)ctx;
    cl_db_column_text(s, 0, o, 23);
    return 0;
}

int cl_store_revoked_list(cl_store *st, int64_t now_ms, size_t max, char (**out)[23],
                          size_t *out_n)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    char (*arr)[23] = NULL;
    size_t n = 0;
    int rc;

    rc = cl_db_prepare(cl_store_db(st),
                       "SELECT audit_id FROM revoked_tokens WHERE expires_ms > ?1 "
                       "ORDER BY expires_ms DESC LIMIT ?2", &s);
    if (rc < 0)
        return rc;
    cl_db_bind_int64(s, 1, now_ms);
    cl_db_bind_int64(s, 2, (int64_t)max);
    rc = cl_db_collect(s, sizeof(*arr), audit_id_row, NULL, NULL, (void **)&arr, &n);
    if (rc < 0)
        return rc;
    if (n > 1)
        qsort(arr, n, sizeof(*arr), cmp_audit);
    *out = arr;
    *out_n = n;
    return 0;
}

/* ---- bootstrap ---- */

static int bootstrap_body(cl_store *st, const cl_identity_bootstrap *b, bool *changed,
                          cl_error *err)
{
    static const char *const defaults[] = {"admin", "member", "reader"};
    cl_domain d;
    cl_project p;
    cl_user u;
    cl_role_rec admin;
    int rc;

    rc = cl_store_domain_get(st, CL_DEFAULT_DOMAIN_ID, &d);
    if (rc == -ENOENT) {
        rc = exec_binds(st, "INSERT INTO domains (id, name) VALUES (?1, ?2)", 2,
                        (const char *[]){CL_DEFAULT_DOMAIN_ID, CL_DEFAULT_DOMAIN_NAME}, false);
        *changed = true;
    }
    if (rc < 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot create the Default domain");

    for (size_t i = 0; i < CL_ARRAY_SIZE(defaults); i++) {
        cl_role_rec r;

        rc = cl_store_role_get_by_name(st, defaults[i], &r);
        if (rc == -ENOENT) {
            memset(&r, 0, sizeof(r));
            cl_identity_new_id(r.id);
            cl_strlcpy(r.name, defaults[i], sizeof(r.name));
            rc = cl_store_role_create(st, &r);
            *changed = true;
        }
        if (rc < 0)
            return cl_error_set(err, CL_E_INTERNAL, "cannot create role %s", defaults[i]);
    }

    rc = cl_store_project_get(st, b->project_id, &p);
    if (rc == -ENOENT) {
        memset(&p, 0, sizeof(p));
        cl_strlcpy(p.id, b->project_id, sizeof(p.id));
        cl_strlcpy(p.name, b->project_name, sizeof(p.name));
        cl_strlcpy(p.domain_id, CL_DEFAULT_DOMAIN_ID, sizeof(p.domain_id));
        cl_strlcpy(p.description, "Bootstrap project for initializing the cloud.",
                   sizeof(p.description));
        p.enabled = true;
        rc = cl_store_project_create(st, &p);
        *changed = true;
    }
    if (rc == -EEXIST)
        return cl_error_set(err, CL_E_CONFLICT,
                            "a project named '%s' exists with another id than [auth] "
                            "admin_project_id %s", b->project_name, b->project_id);
    if (rc < 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot create the admin project");

    rc = cl_store_user_get(st, b->user_id, &u);
    if (rc == -ENOENT) {
        memset(&u, 0, sizeof(u));
        cl_strlcpy(u.id, b->user_id, sizeof(u.id));
        cl_strlcpy(u.name, b->user_name, sizeof(u.name));
        cl_strlcpy(u.domain_id, CL_DEFAULT_DOMAIN_ID, sizeof(u.domain_id));
        /* No default project, as Keystone's bootstrap: an admin token without a scope
         * stays unscoped. */
        u.enabled = true;
        if (cl_password_hash(b->password, b->password_iterations, u.password_hash) < 0)
            return cl_error_set(err, CL_E_INTERNAL, "cannot hash the admin password");
        rc = cl_store_user_create(st, &u);
        *changed = true;
    } else if (rc == 0 && (!cl_password_verify(b->password, u.password_hash) || !u.enabled)) {
        /* Keystone's bootstrap resets the password (and re-enables the user): the config
         * file is the operator's way back in. */
        if (cl_password_hash(b->password, b->password_iterations, u.password_hash) < 0)
            return cl_error_set(err, CL_E_INTERNAL, "cannot hash the admin password");
        u.enabled = true;
        rc = cl_store_user_update(st, &u);
        *changed = true;
    }
    if (rc == -EEXIST)
        return cl_error_set(err, CL_E_CONFLICT,
                            "a user named '%s' exists with another id than [auth] "
                            "admin_user_id %s", b->user_name, b->user_id);
    if (rc < 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot create the admin user");

    rc = cl_store_role_get_by_name(st, "admin", &admin);
    if (rc == 0 && cl_store_assignment_check(st, b->user_id, b->project_id, admin.id) ==
                       -ENOENT) {
        rc = cl_store_assignment_add(st, b->user_id, b->project_id, admin.id);
        *changed = true;
    }
    if (rc < 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot assign the admin role");
    return 0;
}

int cl_store_identity_bootstrap(cl_store *st, const cl_identity_bootstrap *b,
                                bool *out_changed, cl_error *err)
{
    cl_db *db = cl_store_db(st);
    bool changed = false;
    int rc;

    if (!b->project_id || !*b->project_id || !b->project_name || !*b->project_name ||
        !b->user_id || !*b->user_id || !b->user_name || !*b->user_name || !b->password ||
        !*b->password)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "bootstrap needs the admin project id and name, the admin user "
                            "id and name, and a password");
    rc = cl_db_begin_immediate(db);
    if (rc < 0)
        return cl_error_set(err, CL_E_UNAVAILABLE, "the controller database is busy");
    rc = bootstrap_body(st, b, &changed, err);
    if (rc < 0) {
        cl_db_rollback(db);
        return rc;
    }
    rc = cl_db_commit(db);
    if (rc < 0) {
        cl_db_rollback(db);
        return cl_error_set(err, CL_E_INTERNAL, "cannot commit the bootstrap");
    }
    if (out_changed)
        *out_changed = changed;
    return 0;
}
