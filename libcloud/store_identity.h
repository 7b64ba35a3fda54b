/*
 * store_identity.h - the identity concern of the controller store (schema v2): domains,
 * projects, users, roles, role assignments and revoked tokens, in Keystone's model.
 *
 * Ids are 32 lower-case hex characters (Keystone's uuid4().hex) except the "default"
 * domain. Names are unique per domain. Roles are global; the three Keystone defaults
 * admin, member and reader are seeded by the schema step with fixed ids, and admin
 * implies member implies reader (Keystone's default implied roles) when role bits are
 * computed for a token.
 *
 * Same conventions as store.h: one thread per cl_store, 0 or negative errno (-ENOENT,
 * -EEXIST duplicate name, -EINVAL, -EBUSY, -EIO); lists are malloc'd arrays the caller
 * frees.
 */
#ifndef CL_STORE_IDENTITY_H
#define CL_STORE_IDENTITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "model.h"
#include "password.h"
#include "store.h"

#define CL_DESC_MAX 1024
#define CL_DEFAULT_DOMAIN_ID "default"
#define CL_DEFAULT_DOMAIN_NAME "Default"

typedef struct cl_domain {
    char id[CL_ID_MAX];
    char name[CL_NAME_MAX];
    char description[CL_DESC_MAX];
    bool enabled;
} cl_domain;

typedef struct cl_project {
    char id[CL_ID_MAX];
    char name[CL_NAME_MAX];
    char domain_id[CL_ID_MAX];
    char description[CL_DESC_MAX];
    bool enabled;
} cl_project;

typedef struct cl_user {
    char id[CL_ID_MAX];
    char name[CL_NAME_MAX];
    char domain_id[CL_ID_MAX];
    char password_hash[CL_PASSWORD_HASH_MAX]; /* "" = cannot log in with a password */
    char default_project_id[CL_ID_MAX];
    char email[CL_NAME_MAX];
    char description[CL_DESC_MAX];
    bool enabled;
} cl_user;

typedef struct cl_role_rec {
    char id[CL_ID_MAX];
    char name[CL_NAME_MAX];
} cl_role_rec;

typedef struct cl_role_assignment {
    char user_id[CL_ID_MAX];
    char user_name[CL_NAME_MAX];
    char user_domain_id[CL_ID_MAX];
    char project_id[CL_ID_MAX];
    char project_name[CL_NAME_MAX];
    char project_domain_id[CL_ID_MAX];
    char role_id[CL_ID_MAX];
    char role_name[CL_NAME_MAX];
} cl_role_assignment;

/* Role bits of a role name (admin/member/reader), with Keystone's implications
 * (admin -> member -> reader); 0 for other roles. */
unsigned cl_identity_role_bits(const char *role_name);

/* A fresh 32-hex id. */
void cl_identity_new_id(char out[33]);

/* ---- domains ---- */
int cl_store_domain_get(cl_store *st, const char *id, cl_domain *out);
int cl_store_domain_get_by_name(cl_store *st, const char *name, cl_domain *out);
int cl_store_domain_list(cl_store *st, const char *name, cl_domain **out, size_t *out_n);

/* ---- projects ---- */
/* id must be set by the caller. -EEXIST when (domain, name) or id is taken, -ENOENT when
 * the domain does not exist. */
int cl_store_project_create(cl_store *st, const cl_project *p);
int cl_store_project_get(cl_store *st, const char *id, cl_project *out);
int cl_store_project_get_by_name(cl_store *st, const char *domain_id, const char *name,
                                 cl_project *out);
/* name/domain_id NULL = any. Sorted by name. */
int cl_store_project_list(cl_store *st, const char *domain_id, const char *name,
                          cl_project **out, size_t *out_n);
/* Replace name, description and enabled of p->id. -ENOENT, -EEXIST (name taken). */
int cl_store_project_update(cl_store *st, const cl_project *p);
/* Deletes the project and its role assignments. -ENOENT when unknown. */
int cl_store_project_delete(cl_store *st, const char *id);

/* ---- users ---- */
int cl_store_user_create(cl_store *st, const cl_user *u);
int cl_store_user_get(cl_store *st, const char *id, cl_user *out);
int cl_store_user_get_by_name(cl_store *st, const char *domain_id, const char *name,
                              cl_user *out);
int cl_store_user_list(cl_store *st, const char *domain_id, const char *name, cl_user **out,
                       size_t *out_n);
/* Replace name, password_hash, enabled, default_project_id, email and description. */
int cl_store_user_update(cl_store *st, const cl_user *u);
int cl_store_user_delete(cl_store *st, const char *id);

/* ---- roles ---- */
int cl_store_role_create(cl_store *st, const cl_role_rec *r);
int cl_store_role_get(cl_store *st, const char *id, cl_role_rec *out);
int cl_store_role_get_by_name(cl_store *st, const char *name, cl_role_rec *out);
int cl_store_role_list(cl_store *st, const char *name, cl_role_rec **out, size_t *out_n);
/* -EBUSY for the three default roles. */
int cl_store_role_delete(cl_store *st, const char *id);

/* ---- role assignments (user on project) ---- */
/* Idempotent. -ENOENT when user, project or role does not exist. */
int cl_store_assignment_add(cl_store *st, const char *user_id, const char *project_id,
                            const char *role_id);
/* -ENOENT when the assignment does not exist. */
int cl_store_assignment_remove(cl_store *st, const char *user_id, const char *project_id,
                               const char *role_id);
/* 0 when it exists, -ENOENT otherwise. */
int cl_store_assignment_check(cl_store *st, const char *user_id, const char *project_id,
                              const char *role_id);
/* Filters may be NULL. Names are filled in (joined). */
int cl_store_assignment_list(cl_store *st, const char *user_id, const char *project_id,
                             const char *role_id, cl_role_assignment **out, size_t *out_n);
/* Roles of user on project with implications applied: *out_bits (CL_ROLE_BIT set) and,
 * when out is non-NULL, the effective role list (assigned and implied, malloc'd). */
int cl_store_user_project_roles(cl_store *st, const char *user_id, const char *project_id,
                                unsigned *out_bits, cl_role_rec **out, size_t *out_n);

/* ---- revoked tokens ---- */
/* Record a revoked token's audit id until its expiry (idempotent). Also drops entries
 * that expired before now_ms. */
int cl_store_token_revoke(cl_store *st, const char *audit_id, int64_t expires_ms,
                          int64_t now_ms);
/* Audit ids still revoked at now_ms (expires_ms > now_ms), at most max; *out is an
 * array of *out_n NUL-terminated 23-byte entries (malloc'd), sorted by strcmp. */
int cl_store_revoked_list(cl_store *st, int64_t now_ms, size_t max, char (**out)[23],
                          size_t *out_n);

/* ---- bootstrap ---- */
typedef struct cl_identity_bootstrap {
    const char *project_id, *project_name;
    const char *user_id, *user_name;
    const char *password;       /* plain; hashed here */
    int64_t password_iterations;
} cl_identity_bootstrap;

/* Keystone's `bootstrap`, idempotent: make sure the Default domain, the admin project,
 * the admin user (with this password: a changed password is re-hashed), the roles
 * admin/member/reader and the admin role assignment exist. Runs in one write
 * transaction. *out_changed (may be NULL) tells whether anything was written.
 * 0 or negative errno with err. */
int cl_store_identity_bootstrap(cl_store *st, const cl_identity_bootstrap *b,
                                bool *out_changed, cl_error *err);

#endif
