/*
 * store_compute.h - the controller-store functions of the compute API concern (schema
 * step v3, store_compute.c): key pairs, per-project quota overrides, instance extras
 * (key name, user data, metadata), flavor extra specs / access / description, the
 * operator's service state of hosts (disabled reason, forced down), the instance action
 * log as read by os-instance-actions, and the quota-checked instance create.
 *
 * Same conventions as store.h: 0 or a negative errno (-ENOENT, -EEXIST, -EBUSY, -EIO);
 * -EDQUOT when a quota would be exceeded (nothing written). Arrays are malloc'd and
 * owned by the caller.
 */
#ifndef CL_STORE_COMPUTE_H
#define CL_STORE_COMPUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "store.h"

/* A key/value item (instance metadata, flavor extra specs). */
typedef struct cl_kv {
    char key[256];
    char value[256];
} cl_kv;

/* ---- quotas ---- */

/* Nova's compute quota resources handled by nube (-1 = unlimited). */
typedef enum {
    CL_QUOTA_INSTANCES, CL_QUOTA_CORES, CL_QUOTA_RAM, CL_QUOTA_KEY_PAIRS,
    CL_QUOTA_SERVER_GROUPS, CL_QUOTA_SERVER_GROUP_MEMBERS, CL_QUOTA_METADATA_ITEMS,
    CL_QUOTA_MAX
} cl_quota_res;

/* Nova's names ("instances", "cores", "ram", "key_pairs", ...). */
const char *cl_quota_res_name(cl_quota_res r);
/* -EINVAL for an unknown name. */
int cl_quota_res_parse(const char *name, cl_quota_res *out);

typedef struct cl_quota_set {
    int64_t limit[CL_QUOTA_MAX];
} cl_quota_set;

/* Apply the project's stored overrides onto *inout (which holds the defaults). */
int cl_store_quota_get(cl_store *st, const char *project_id, cl_quota_set *inout);
/* Store one override for a project. */
int cl_store_quota_set(cl_store *st, const char *project_id, cl_quota_res r, int64_t limit);
/* Drop every override of a project (back to the defaults). */
int cl_store_quota_delete(cl_store *st, const char *project_id);

/* What a project uses now: instances, cores, ram of its non-deleted instances, server
 * groups (0 when that table does not exist yet). key_pairs counts the given user's. */
typedef struct cl_project_usage {
    int64_t instances, cores, ram_mb, server_groups, key_pairs;
} cl_project_usage;
int cl_store_project_usage(cl_store *st, const char *project_id, const char *user_id,
                           cl_project_usage *out);

/* The resource that would be exceeded, for Nova's overLimit message. */
typedef struct cl_quota_excess {
    cl_quota_res res;
    int64_t requested, used, limit;
} cl_quota_excess;

/* ---- instances with extras, quota-checked ---- */

typedef struct cl_instance_extra {
    const char *key_name;   /* NULL = none */
    const char *user_data;  /* base64 as given, NULL = none */
    const cl_kv *metadata; /* n_metadata items */
    size_t n_metadata;
} cl_instance_extra;

/* Create between min_n and n instances of one project (all with the same flavor and
 * extras) in one BEGIN IMMEDIATE transaction that first counts the project's usage and
 * checks instances/cores/ram against q: as many as fit up to n are created, and none
 * with -EDQUOT (and *over filled) when fewer than min_n fit. *out_created receives the
 * count created (the first *out_created entries of insts). A "create" action is logged
 * for each. */
int cl_store_instances_create_quota(cl_store *st, const cl_instance *insts, size_t n,
                                    size_t min_n, const cl_instance_extra *ex,
                                    const cl_quota_set *q, size_t *out_created,
                                    cl_quota_excess *over);

/* key_name (out_key "" and *has_key false when none) and user_data (malloc'd or NULL). */
int cl_store_instance_extra_get(cl_store *st, const char *uuid, char *out_key, size_t keylen,
                                bool *has_key, char **out_user_data);

/* One metadata item of the idx-th instance of a batch. */
typedef struct cl_indexed_kv {
    size_t idx;
    cl_kv kv;
} cl_indexed_kv;

/* Extras of a page of instances in two queries (lists must not cost a query per row):
 * for each uuids[i], keys[i]/has_key[i] (caller's arrays of n), and every metadata item
 * as *md entries (malloc'd, caller frees) ordered by idx then key. */
int cl_store_instance_extras_many(cl_store *st, const char *const *uuids, size_t n,
                                  char (*keys)[256], bool *has_key, cl_indexed_kv **md,
                                  size_t *n_md);

/* Rename a live instance. -ENOENT when unknown or deleted. */
int cl_store_instance_rename(cl_store *st, const char *uuid, const char *name);

/* ---- instance metadata ---- */

int cl_store_metadata_list(cl_store *st, const char *uuid, cl_kv **out, size_t *out_n);
/* replace=true drops every other key first. -EDQUOT when the result would hold more
 * than max_items keys (nothing written). */
int cl_store_metadata_set(cl_store *st, const char *uuid, const cl_kv *items, size_t n,
                          bool replace, int64_t max_items);
/* -ENOENT when the key is not set. */
int cl_store_metadata_delete(cl_store *st, const char *uuid, const char *key);

/* ---- key pairs (per user, as Nova) ---- */

#define CL_PUBKEY_MAX 16384

typedef struct cl_keypair {
    char user_id[CL_ID_MAX];
    char name[CL_NAME_MAX];
    char type[16];          /* "ssh" or "x509" */
    char fingerprint[128];
    char *public_key;       /* malloc'd; free with cl_keypair_clear */
    int64_t created_ms;
    int64_t id;
} cl_keypair;

void cl_keypair_clear(cl_keypair *kp);
void cl_keypairs_free(cl_keypair *arr, size_t n);

/* Insert; -EEXIST on a duplicate name for the user, -EDQUOT when the user already has
 * max_keys (-1 = unlimited) key pairs. One BEGIN IMMEDIATE transaction. */
int cl_store_keypair_create(cl_store *st, const cl_keypair *kp, int64_t max_keys);
int cl_store_keypair_get(cl_store *st, const char *user_id, const char *name, cl_keypair *out);
/* Sorted by name. */
int cl_store_keypair_list(cl_store *st, const char *user_id, cl_keypair **out, size_t *out_n);
int cl_store_keypair_delete(cl_store *st, const char *user_id, const char *name);

/* ---- flavors: delete, description, extra specs, access ---- */

/* Delete a flavor with its extra specs and access list. -ENOENT when unknown. */
int cl_store_flavor_delete(cl_store *st, const char *id);
/* The stored description (malloc'd, NULL when none). */
int cl_store_flavor_description(cl_store *st, const char *id, char **out);
int cl_store_flavor_set_description(cl_store *st, const char *id, const char *desc);
int cl_store_flavor_specs(cl_store *st, const char *id, cl_kv **out, size_t *out_n);
int cl_store_flavor_specs_set(cl_store *st, const char *id, const cl_kv *items, size_t n);
int cl_store_flavor_spec_delete(cl_store *st, const char *id, const char *key);
/* Project ids allowed to use a private flavor. */
int cl_store_flavor_access_list(cl_store *st, const char *id, char (**out)[CL_ID_MAX],
                                size_t *out_n);
/* -EEXIST when already there. */
int cl_store_flavor_access_add(cl_store *st, const char *id, const char *project_id);
/* -ENOENT when not there. */
int cl_store_flavor_access_remove(cl_store *st, const char *id, const char *project_id);
/* Whether project_id may use the flavor: public, or in its access list. */
int cl_store_flavor_access_allowed(cl_store *st, const cl_flavor *f, const char *project_id,
                                   bool *out);

/* ---- services (the nova-compute service of each host) ---- */

typedef struct cl_service_state {
    char disabled_reason[256]; /* "" = none */
    bool has_reason;
    bool forced_down;
} cl_service_state;

/* -ENOENT when the host is unknown. */
int cl_store_service_get(cl_store *st, const char *host, cl_service_state *out);
/* Enable/disable the host for scheduling and record the reason (NULL clears it) in one
 * transaction. */
int cl_store_service_set_status(cl_store *st, const char *host, bool enabled,
                                const char *reason);
/* Force a host's service down (true): it is marked down at once and stays down across
 * heartbeats (a trigger of the v3 schema), so nothing is scheduled there; false lets the
 * next heartbeat bring it up. */
int cl_store_service_set_forced_down(cl_store *st, const char *host, bool down);

/* ---- instance actions (read side of the audit trail) ---- */

typedef struct cl_instance_action {
    char action[64];
    char request_id[80];
    int64_t start_ms, finish_ms;
    char result[64];
} cl_instance_action;

/* Newest first. */
int cl_store_instance_actions(cl_store *st, const char *uuid, cl_instance_action **out,
                              size_t *out_n);

/* ---- migrations (read side of the placement schema's migrations table) ---- */

typedef struct cl_migration_row {
    int64_t id;                  /* rowid: Nova's integer migration id */
    char uuid[CL_UUID_LEN];
    char instance_uuid[CL_UUID_LEN];
    char source_host[CL_HOST_MAX];
    char dest_host[CL_HOST_MAX];
    char type[32];               /* migration, live-migration, resize, evacuation */
    char status[32];
    char project_id[CL_ID_MAX];  /* of the instance ("" when it is gone) */
    char user_id[CL_ID_MAX];
    int64_t created_ms, updated_ms;
} cl_migration_row;

/* Newest first; NULL filters match everything (host matches source or destination).
 * An empty list when the migrations table does not exist. */
int cl_store_migrations_list(cl_store *st, const char *host, const char *status,
                             const char *instance_uuid, const char *type,
                             cl_migration_row **out, size_t *out_n);

#endif
