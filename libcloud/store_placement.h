/*
 * store_placement.h - the placement concern of the controller store (schema step v4):
 * host generations and capabilities, availability zones and aggregates with metadata,
 * server groups and their members, the scheduler hints of each instance (with its build
 * attempts), migrations holding their own allocation, and the audit of allocations.
 *
 * The claim itself (cl_store_claim_ex) lives in store.c next to the allocation helpers;
 * it reads the tables declared here inside its write transaction, so a server-group
 * policy or a per-host instance cap is checked under the same lock as capacity.
 *
 * All functions return 0 or a negative errno (-ENOENT, -EEXIST, -EINVAL, -EBUSY, -EIO);
 * those taking a cl_error describe user-facing failures in it.
 */
#ifndef CL_STORE_PLACEMENT_H
#define CL_STORE_PLACEMENT_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "errors.h"
#include "model.h"
#include "store.h"

#define CL_AZ_MAX 64
#define CL_DEFAULT_AZ "nova"
/* Aggregate metadata of one host as "\nkey=value\n..." (matched with strstr); pairs
 * that do not fit are dropped, so this caps what a host can advertise. */
#define CL_HOST_META_MAX 1024
#define CL_HINT_LIST_MAX 1024

/* What the scheduler knows about a host beyond cl_host. */
typedef struct cl_host_ext {
    char name[CL_HOST_MAX];
    int64_t generation;          /* bumped by every allocation change on the host */
    char az[CL_AZ_MAX];          /* from its aggregates; CL_DEFAULT_AZ when none */
    char hypervisor_type[32];
    int64_t hypervisor_version;
    char cpu_arch[32];
    char cpu_model[64];
    char disabled_reason[256];
    bool maintenance;
    int64_t max_instances;       /* 0 = the scheduler's default */
    int64_t failures;            /* spawn failures since the last success */
    int64_t last_failure_ms;
    char meta[CL_HOST_META_MAX]; /* aggregate metadata, "\nk=v\n" */
} cl_host_ext;

/* Hosts and their extensions in one read snapshot, both sorted by name and index-aligned
 * (hosts[i] and ext[i] describe the same host). Caller frees both arrays. */
int cl_store_host_snapshot(cl_store *st, cl_host **hosts, cl_host_ext **ext, size_t *n);

/* A counter bumped by every change of aggregates, zones and operator host settings
 * (triggers): a cached snapshot older than it must be re-read. */
int cl_store_placement_version(cl_store *st, int64_t *out);

/* Capabilities an agent reports (hypervisor type/version, architecture, CPU model). */
int cl_store_host_set_caps(cl_store *st, const char *name, const char *hv_type,
                           int64_t hv_version, const char *arch, const char *cpu_model);
/* Operator settings: per-host allocation ratios and reserved amounts (negative keeps). */
int cl_store_host_set_allocation(cl_store *st, const char *name, double cpu_ratio,
                                 double ram_ratio, double disk_ratio, int64_t res_vcpus,
                                 int64_t res_ram_mb, int64_t res_disk_gb);
/* Disable (with a reason) or enable, maintenance on/off, per-host instance cap. */
int cl_store_host_set_status(cl_store *st, const char *name, bool enabled, const char *reason,
                             bool maintenance);
int cl_store_host_set_max_instances(cl_store *st, const char *name, int64_t max);
/* A spawn failed on (ok=false) or succeeded on (ok=true: failures reset) the host. */
int cl_store_host_record_build(cl_store *st, const char *name, bool ok);

/* ---- aggregates and availability zones ---- */
typedef struct cl_aggregate {
    int64_t id;
    char uuid[CL_UUID_LEN];
    char name[CL_NAME_MAX];
    char az[CL_AZ_MAX];          /* "" = none */
    int64_t created_ms, updated_ms;
    json_object *metadata;       /* owned: {"k": "v"} */
    json_object *hosts;          /* owned: ["h1", ...] */
} cl_aggregate;
void cl_aggregate_clear(cl_aggregate *a);

/* -EEXIST on a duplicate name. az may be NULL or "". */
int cl_store_aggregate_create(cl_store *st, const char *name, const char *az,
                              cl_aggregate *out);
int cl_store_aggregate_get(cl_store *st, int64_t id, cl_aggregate *out);
/* Array of cl_aggregate (caller: cl_aggregate_clear each, free). */
int cl_store_aggregate_list(cl_store *st, cl_aggregate **out, size_t *n);
/* name/az NULL keep; az "" clears. -EEXIST duplicate name. */
int cl_store_aggregate_update(cl_store *st, int64_t id, const char *name, const char *az);
/* -EBUSY when it still has hosts (Nova refuses too). */
int cl_store_aggregate_delete(cl_store *st, int64_t id);
/* -ENOENT unknown aggregate or host, -EEXIST already a member / -ENOENT not a member;
 * adding a host to a second aggregate with a different AZ is -EINVAL with err. */
int cl_store_aggregate_add_host(cl_store *st, int64_t id, const char *host, cl_error *err);
int cl_store_aggregate_remove_host(cl_store *st, int64_t id, const char *host);
/* Set keys (JSON null value deletes the key); "availability_zone" also sets the AZ. */
int cl_store_aggregate_set_metadata(cl_store *st, int64_t id, json_object *meta);

/* ---- server groups ---- */
typedef enum {
    CL_GROUP_AFFINITY,
    CL_GROUP_ANTI_AFFINITY,
    CL_GROUP_SOFT_AFFINITY,
    CL_GROUP_SOFT_ANTI_AFFINITY,
    CL_GROUP_POLICY_MAX
} cl_group_policy;
const char *cl_group_policy_name(cl_group_policy p);
int cl_group_policy_parse(const char *s, cl_group_policy *out);

typedef struct cl_server_group {
    char uuid[CL_UUID_LEN];
    char name[CL_NAME_MAX];
    char project_id[CL_ID_MAX];
    char user_id[CL_ID_MAX];
    cl_group_policy policy;
    int64_t max_server_per_host; /* 0 = no rule (anti-affinity then means 1) */
    int64_t created_ms;
} cl_server_group;

int cl_store_group_create(cl_store *st, const cl_server_group *g);
int cl_store_group_get(cl_store *st, const char *uuid, cl_server_group *out);
/* project_id NULL = all. Caller frees. */
int cl_store_group_list(cl_store *st, const char *project_id, cl_server_group **out,
                        size_t *n);
int cl_store_group_delete(cl_store *st, const char *uuid);
/* Members of a group that are not deleted (uuids, caller frees). */
int cl_store_group_members(cl_store *st, const char *uuid, char (**out)[CL_UUID_LEN],
                           size_t *n);
/* Hosts of the group's members that hold an allocation (one entry per member, so a
 * host appears as often as it holds members), except instance except_uuid (may be NULL).
 * Caller frees. */
int cl_store_group_member_hosts(cl_store *st, const char *group_uuid, const char *except_uuid,
                                char (**out)[CL_HOST_MAX], size_t *n);
/* Flavor extra specs whose key starts with prefix, as parallel "key"/"value" arrays of
 * fixed strings with the prefix stripped (caller frees both). None when the compute
 * concern's flavor_extra_specs table is absent. */
int cl_store_placement_flavor_specs(cl_store *st, const char *flavor_id, const char *prefix,
                          char (**keys)[256], char (**values)[256], size_t *n);
/* -ENOENT unknown group, -EEXIST the instance is in a group already. */
int cl_store_group_add_member(cl_store *st, const char *group_uuid, const char *instance_uuid);
/* The instance's group; -ENOENT when it has none. */
int cl_store_group_of(cl_store *st, const char *instance_uuid, cl_server_group *out);

/* ---- per-instance scheduling request ---- */
typedef struct cl_sched_hints {
    char az[CL_AZ_MAX];               /* "" = any */
    char group[CL_UUID_LEN];          /* "" = none */
    char same_host[CL_HINT_LIST_MAX]; /* instance uuids, comma separated */
    char different_host[CL_HINT_LIST_MAX];
    char hypervisor_type[32];         /* image properties (from hints/metadata for now) */
    char architecture[32];
    char vm_mode[16];
    int64_t attempts;                 /* spawn attempts that failed so far */
    char tried_hosts[CL_HINT_LIST_MAX]; /* comma separated */
    char attempt_faults[CL_FAULT_MAX];  /* "host: fault; host: fault" */
} cl_sched_hints;

/* Read the create request body (root: {"server": {...}, "os:scheduler_hints": {...}})
 * and record availability_zone, the group hint (adding the member), same_host /
 * different_host, and the image properties hypervisor_type / architecture / vm_mode
 * (hints or server metadata, also hw_architecture / img_hv_type). Called by nube-api
 * before the instance row is inserted. -EINVAL/-ENOENT with err (400) on bad hints. */
int cl_store_placement_hints_record(cl_store *st, const char *instance_uuid, json_object *root,
                                    cl_error *err);
/* -ENOENT when the instance has no row (then all fields are ""). */
int cl_store_placement_hints_get(cl_store *st, const char *instance_uuid, cl_sched_hints *out);

/* A spawn failed on host: in one transaction, when the instance is still building there,
 * release its allocation, clear its host, put the task back to scheduling, bump the
 * host's failure count and append host and fault to the attempt log. *out_attempts
 * receives the number of failed attempts. -ENOENT when the instance is not building on
 * host (a stale report), nothing written. */
int cl_store_placement_release_for_retry(cl_store *st, const char *instance_uuid,
                                         const char *host, const char *fault,
                                         int64_t *out_attempts);

/* ---- migrations with their own allocation ---- */
typedef struct cl_migration {
    char uuid[CL_UUID_LEN];
    char instance_uuid[CL_UUID_LEN];
    char source_host[CL_HOST_MAX];
    char dest_host[CL_HOST_MAX];
    char type[32];               /* "migration", "live-migration", "resize" */
    char status[32];             /* "pre-migrating", "migrating", "finished", "error", ... */
    int64_t created_ms, updated_ms;
} cl_migration;

/* Start a move of instance to dest (which must have room; group policy not checked
 * here, the scheduler picked dest): in one transaction the instance's allocation on the
 * source becomes the migration's, and the instance gets a new allocation on dest.
 * -ENOSPC dest has no room, -EBUSY the instance is already moving. */
int cl_store_migration_begin(cl_store *st, const char *instance_uuid, const char *dest,
                             const char *type, cl_migration *out);
/* Finish: success drops the source half and moves the instance to dest; failure drops
 * the dest half and gives the source half back to the instance. */
int cl_store_migration_finish(cl_store *st, const char *migration_uuid, bool success);
int cl_store_migration_get(cl_store *st, const char *uuid, cl_migration *out);

/* ---- audit ---- */
typedef enum {
    CL_AUDIT_ORPHAN_ALLOCATION,   /* allocation whose instance is deleted/missing/error */
    CL_AUDIT_MISSING_ALLOCATION,  /* active/building-on-host instance without allocation */
    CL_AUDIT_WRONG_HOST,          /* allocation on another host than the instance row */
    CL_AUDIT_WRONG_SIZE,          /* allocation differs from the instance's flavor */
    CL_AUDIT_UNKNOWN_HOST,        /* allocation on a host that does not exist */
    CL_AUDIT_ORPHAN_MIGRATION,    /* migration allocation of a finished/unknown migration */
    CL_AUDIT_KIND_MAX
} cl_audit_kind;
const char *cl_audit_kind_name(cl_audit_kind k);

typedef struct cl_audit_item {
    cl_audit_kind kind;
    char consumer[CL_UUID_LEN];  /* instance or migration uuid */
    char host[CL_HOST_MAX];
    char detail[256];
} cl_audit_item;

/* Find inconsistencies; with repair, fix each in the same write transaction (orphans are
 * deleted, missing/wrong allocations rewritten from the instance row). Caller frees. */
int cl_store_placement_audit(cl_store *st, bool repair, cl_audit_item **out, size_t *n);

/* ---- appended by issue 8: cold migration and resize to another host ----
 * The scheduler's record of one cold move (scheduler/migrations.c), kept until confirm
 * or revert. */
typedef struct cl_cold_move {
    char migration_uuid[CL_UUID_LEN];
    char old_flavor_id[CL_ID_MAX]; /* "" = a migration (the flavor stays) */
    bool power_on;                 /* the guest ran before: start it where it lands */
    char phase[16];                /* the step reached: "exporting", "importing", ... */
    char token[72];                /* the disk transfer's secret (hex) */
} cl_cold_move;

/* Insert or replace the record (creating its table on first use). */
int cl_store_cold_move_put(cl_store *st, const cl_cold_move *c);
/* -ENOENT when there is none. */
int cl_store_cold_move_get(cl_store *st, const char *migration_uuid, cl_cold_move *out);
/* phase from -> to in one statement: -ESTALE when the record is not at from (a resent
 * message that was handled already). */
int cl_store_cold_move_advance(cl_store *st, const char *migration_uuid, const char *from,
                               const char *to);
/* Every record (the moves in flight: a handful), oldest first; *out malloc'd (NULL when
 * none), caller frees. */
int cl_store_cold_moves_list(cl_store *st, cl_cold_move **out, size_t *n);
/* Drop the record (and the legacy cold_resize row of the same migration). */
int cl_store_cold_move_delete(cl_store *st, const char *migration_uuid);

/* The instance's host := host. -ENOENT when there is no such instance. */
int cl_store_instance_set_host(cl_store *st, const char *uuid, const char *host);
/* The instance's flavor columns := f, and with allocation its own allocation's amounts
 * too, in one transaction (the migration's source half keeps the old amounts). */
int cl_store_instance_set_flavor(cl_store *st, const char *uuid, const cl_flavor *f,
                                 bool allocation);

#endif
