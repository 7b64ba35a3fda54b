/*
 * store.h - the controller database (projects, flavors, instances, hosts, allocations),
 * shared by nube-api and nube-scheduler. This header is the store interface; the one
 * implementation today is SQLite (store.c). A PostgreSQL backend would implement the same
 * functions.
 *
 * Thread model: a cl_store wraps one cl_db connection: one thread at a time. Threads
 * (the API's HTTP workers) open their own cl_store on the same file.
 *
 * Invariants kept by the transactions here:
 *  - an allocation exists exactly while its instance holds resources on a host;
 *  - cl_store_claim() checks capacity and writes the allocation under one write lock
 *    (BEGIN IMMEDIATE), so concurrent claims can never overcommit a host;
 *  - failing or deleting an instance releases its allocation in the same transaction.
 * All functions return 0 or a negative errno (-ENOENT not found, -EEXIST duplicate,
 * -EBUSY locked past the timeout, -ENOSPC no host had room, -EIO other).
 */
#ifndef CL_STORE_H
#define CL_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "errors.h"
#include "model.h"

typedef struct cl_store cl_store;

/* Open/create the controller DB at path, apply migrations, seed the default flavors
 * (m1.tiny 1/512/1, m1.small 1/2048/20, m1.medium 2/4096/40, m1.large 4/8192/80,
 * m1.xlarge 8/16384/160; ids "1".."5" as Nova's defaults) on first creation. */
int cl_store_open(const char *path, cl_store **out, cl_error *err);
void cl_store_free(cl_store *st);
static inline void cl_store_freep(cl_store **s) { cl_store_free(*s); }
#define _cleanup_store_ _cleanup_(cl_store_freep)

cl_db *cl_store_db(cl_store *st);

/* ---- flavors ---- */
/* By id first, then by name. -ENOENT when neither matches. */
int cl_store_flavor_get(cl_store *st, const char *id_or_name, cl_flavor *out);
/* All flavors sorted by id as Nova does (string order of ids by numeric when numeric).
 * *out is malloc'd (caller frees); *out_n may be 0 with *out NULL. */
int cl_store_flavor_list(cl_store *st, cl_flavor **out, size_t *out_n);
/* -EEXIST when id or name is taken. */
int cl_store_flavor_create(cl_store *st, const cl_flavor *f);

/* ---- instances ---- */
/* Insert a new instance row (created_ms/updated_ms set here). -EEXIST on duplicate uuid. */
int cl_store_instance_create(cl_store *st, const cl_instance *inst);
/* Deleted instances are returned too (vm_state DELETED); callers decide. */
int cl_store_instance_get(cl_store *st, const char *uuid, cl_instance *out);

typedef struct cl_instance_filter {
    const char *project_id;  /* NULL = all projects */
    const char *host;        /* NULL = any */
    bool include_deleted;
    const char *marker;      /* uuid: list starts after it (-ENOENT if unknown) */
    int64_t limit;           /* <= 0: no limit */
} cl_instance_filter;
/* Newest first (created desc, uuid desc), as Nova lists. *out malloc'd, caller frees. */
int cl_store_instance_list(cl_store *st, const cl_instance_filter *f, cl_instance **out,
                           size_t *out_n);

/* Update states; pass -1 (cast) to keep a field. fault: NULL keeps, "" clears.
 * Sets launched_ms when vm_state becomes ACTIVE the first time. -ENOENT if unknown
 * or already deleted. */
int cl_store_instance_set_state(cl_store *st, const char *uuid, int vm_state, int task_state,
                                int power_state, const char *fault, int fault_code);

/* Move task_state to new_task only if the instance is not deleted and its task_state is
 * not DELETING (delete requests win). -ENOENT unknown/deleted, -EBUSY when deleting. */
int cl_store_instance_begin_task(cl_store *st, const char *uuid, cl_task_state new_task);

/* vm_state ERROR, task NONE, fault recorded, allocation released: one transaction. */
int cl_store_instance_fail(cl_store *st, const char *uuid, const char *fault, int fault_code);

/* vm_state DELETED, task NONE, deleted_ms set, allocation released: one transaction. */
int cl_store_instance_mark_deleted(cl_store *st, const char *uuid);

/* Count of non-deleted instances of a project (quota checks). */
int cl_store_instance_count(cl_store *st, const char *project_id, int64_t *out);

/* ---- hosts ---- */
/* Insert or update a host's reported capacity (name, type, uri, vcpus, ram_mb, disk_gb),
 * mark it up, last_seen now. Ratios and reserved amounts of a new host come from the
 * given struct (the scheduler's defaults); an existing host keeps its own. */
int cl_store_host_register(cl_store *st, const cl_host *h);
/* Mark up and refresh last_seen (and totals when vcpus > 0). -ENOENT when unknown. */
int cl_store_host_heartbeat(cl_store *st, const char *name, int64_t vcpus, int64_t ram_mb,
                            int64_t disk_gb);
/* Mark down every up host not seen since before cutoff_ms; names of hosts newly marked
 * down are not returned, only the count. */
int cl_store_host_mark_stale_down(cl_store *st, int64_t cutoff_ms, int *out_n);
/* Enable/disable a host for scheduling. */
int cl_store_host_set_enabled(cl_store *st, const char *name, bool enabled);
/* Hosts with used_* and running_vms computed from allocations, sorted by name. */
int cl_store_host_list(cl_store *st, cl_host **out, size_t *out_n);
int cl_store_host_get(cl_store *st, const char *name, cl_host *out);

/* ---- claims ---- */
/* In one BEGIN IMMEDIATE transaction: for each candidate host name in order, re-read its
 * capacity and usage; the first that is up, enabled and has room for the instance's
 * flavor gets an allocation row, and the instance gets host = that name and
 * task_state = SPAWNING. out_host receives the chosen name.
 * -ENOSPC when no candidate has room (nothing written), -ENOENT unknown instance,
 * -EBUSY when the instance is being deleted (nothing written). */
int cl_store_claim(cl_store *st, const char *instance_uuid, const char *const *candidates,
                   size_t ncandidates, char out_host[CL_HOST_MAX]);

/* The claim with everything the scheduler enforces under the write lock. For each
 * candidate in order the host row is re-read; it must be up, enabled, not in
 * maintenance, have room, hold fewer instances than its cap (its own max_instances, else
 * max_instances_per_host; 0 = none), and satisfy the instance's hard server-group
 * policy (affinity: every placed member is on it; anti-affinity: fewer than
 * max_server_per_host (default 1) members on it). The first such host gets the
 * allocation; the host's generation is compared-and-swapped (a generation the caller
 * saw that moved meanwhile only forces the re-check, counted in generation_conflicts).
 * Same return values as cl_store_claim; on -ENOSPC res says why candidates failed. */
typedef struct cl_claim_req {
    const char *instance_uuid;
    const char *const *candidates;
    size_t ncandidates;
    const int64_t *generations;      /* NULL, or the generation seen per candidate */
    int64_t max_instances_per_host;  /* 0 = no cap */
} cl_claim_req;

typedef struct cl_claim_result {
    char host[CL_HOST_MAX];
    size_t index;                    /* of host in candidates */
    int64_t generation;              /* of host after the claim */
    size_t rejected_down, rejected_capacity, rejected_max_instances, rejected_group;
    size_t generation_conflicts;
    char group_policy[32];           /* "" when the instance is in no group */
} cl_claim_result;

int cl_store_claim_ex(cl_store *st, const cl_claim_req *req, cl_claim_result *res);

/* Release the allocation of an instance (no-op when none). */
int cl_store_allocation_release(cl_store *st, const char *instance_uuid);

/* Record that an instance runs on host (adoption after an agent restart): creates the
 * allocation if missing. */
int cl_store_allocation_ensure(cl_store *st, const char *instance_uuid, const char *host);

#endif
