/*
 * placement.h - where a new instance may go, decided from a snapshot of the hosts.
 *
 * Placement is split as Nova's filter scheduler is: filters drop hosts that cannot take
 * the instance (down, disabled, not enough free vCPUs, RAM or disk once allocation
 * ratios and reserved amounts are applied), then a weigher orders the survivors. The
 * result is only a preference list: cl_store_claim() re-checks every candidate under the
 * database write lock, so a stale snapshot can cost a retry but never an overcommit.
 *
 * Everything here is pure (no I/O, no globals, no allocation) so the policy is unit
 * tested on plain arrays of cl_host.
 */
#ifndef SCHED_PLACEMENT_H
#define SCHED_PLACEMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "errors.h"
#include "model.h"

/* Resources a flavor needs on one host. */
typedef struct sched_need {
    int64_t vcpus;
    int64_t ram_mb;
    int64_t disk_gb; /* root + ephemeral + swap (rounded up to GB), as the claim counts */
} sched_need;

/* The resources flavor f asks of a host. */
sched_need sched_need_of(const cl_flavor *f);

/* Why a host was filtered out (the first filter that rejected it). */
typedef enum {
    SCHED_HOST_OK,
    SCHED_HOST_DOWN,
    SCHED_HOST_DISABLED,
    SCHED_HOST_NO_VCPUS,
    SCHED_HOST_NO_RAM,
    SCHED_HOST_NO_DISK,
    SCHED_HOST_VERDICT_MAX
} sched_host_verdict;

/* Short name of a verdict ("ok", "down", "disabled", "vcpus", "ram", "disk"). */
const char *sched_host_verdict_name(sched_host_verdict v);

/* Run every filter on one host for need. */
sched_host_verdict sched_host_check(const cl_host *h, const sched_need *need);

/* Weigher order: negative when a should be tried before b. Most free RAM first (this
 * spreads instances over hosts, like Nova's default RAMWeigher), then fewest instances,
 * then host name so the order is deterministic. */
int sched_host_compare(const cl_host *a, const cl_host *b);

/* Filter hosts[0..nhosts) for flavor and write pointers to the survivors, best first,
 * into out (which must hold nhosts entries; the pointers borrow from hosts).
 * Returns the number of candidates (0 = no valid host). */
size_t sched_placement_candidates(const cl_host *hosts, size_t nhosts, const cl_flavor *flavor,
                                  const cl_host **out);

/* Write the user-facing "No valid host was found" fault for flavor into out (always
 * NUL-terminated, truncated to outlen), naming what the flavor needs, how many hosts
 * are up, the most free RAM (and vCPUs/disk when those are the shortfall), and how many
 * hosts are down or disabled when any are. */
void sched_placement_explain(const cl_host *hosts, size_t nhosts, const cl_flavor *flavor,
                             char *out, size_t outlen);

/* ---- the filter pipeline and weighers (issue 4) ----
 *
 * sched_select() runs the enabled filters in the configured order over a snapshot
 * (cl_host + cl_host_ext, index-aligned), counting per filter how many hosts it
 * removed, then weighs the survivors (each weigher normalised to 0..1 over the
 * survivors, times its multiplier), sorts them best first and swaps a random one of the
 * best host_subset_size to the front. Still pure: no I/O, no allocation beyond what the
 * caller passes in. */

typedef enum {
    SCHED_F_COMPUTE,          /* up, enabled, not in maintenance */
    SCHED_F_RETRY,            /* not a host this instance already failed on */
    SCHED_F_AZ,               /* availability zone of the request */
    SCHED_F_IMAGE,            /* hypervisor_type / architecture / vm_mode */
    SCHED_F_AGG_SPECS,        /* aggregate_instance_extra_specs:* vs aggregate metadata */
    SCHED_F_SAME_HOST,
    SCHED_F_DIFFERENT_HOST,
    SCHED_F_GROUP,            /* hard affinity / anti-affinity */
    SCHED_F_NUM_INSTANCES,
    SCHED_F_VCPU,
    SCHED_F_RAM,
    SCHED_F_DISK,
    SCHED_F_MAX
} sched_filter_id;

/* Config name of a filter ("ComputeFilter", "RamFilter", ...). */
const char *sched_filter_name(sched_filter_id f);

typedef struct sched_policy {
    sched_filter_id filters[SCHED_F_MAX];
    size_t nfilters;
    double ram_weight, cpu_weight, disk_weight;  /* > 0 spreads, < 0 packs */
    double instances_weight;                      /* < 0 prefers fewer instances */
    double failure_weight;                        /* < 0 avoids hosts that failed builds */
    double soft_affinity_weight, soft_anti_affinity_weight;
    size_t host_subset_size;                      /* random pick among the best N */
} sched_policy;

/* Defaults: every filter, cheap first; RAM/CPU/disk 1.0, instances 0, failures -1000,
 * soft group weighers 1.0, subset 1. */
void sched_policy_default(sched_policy *p);
/* Parse "ComputeFilter, RamFilter, ..." (order kept; unknown names are an error with
 * err naming them). Also accepts Nova's ServerGroup(Anti)AffinityFilter, CoreFilter. */
int sched_policy_set_filters(sched_policy *p, const char *list, cl_error *err);

/* What is asked for one instance. Host lists borrow the caller's strings. */
typedef struct sched_request {
    const cl_flavor *flavor;
    const char *az;                    /* NULL/"" = any */
    const char *hypervisor_type;       /* image properties; NULL/"" = any */
    const char *architecture;
    const char *vm_mode;
    const char (*spec_keys)[256];      /* aggregate extra specs (prefix stripped) */
    const char (*spec_values)[256];
    size_t nspecs;
    bool has_group;
    int group_policy;                  /* cl_group_policy */
    int64_t group_max_per_host;        /* 0 = 1 for anti-affinity */
    const char *group_name;
    const char (*group_hosts)[CL_HOST_MAX]; /* one entry per placed member */
    size_t ngroup_hosts;
    const char (*same_hosts)[CL_HOST_MAX];
    size_t nsame;
    const char (*different_hosts)[CL_HOST_MAX];
    size_t ndifferent;
    const char *tried_hosts;           /* comma separated, NULL/"" = none */
    int64_t max_instances_per_host;    /* 0 = no cap (a host's own cap wins) */
} sched_request;

typedef struct sched_outcome {
    size_t nhosts;
    size_t npassed;
    size_t removed[SCHED_F_MAX];
} sched_outcome;

struct cl_host_ext;

/* Filter and weigh. out_idx receives the indices of the passing hosts, best first;
 * scratch must hold 8 * nhosts doubles. rng: a rand_r seed (NULL = no random pick).
 * Returns the number of passing hosts. */
size_t sched_select(const sched_policy *p, const sched_request *rq, const cl_host *hosts,
                    const struct cl_host_ext *ext, size_t nhosts, size_t *out_idx,
                    double *scratch, unsigned *rng, sched_outcome *oc);

/* "0 of 120 hosts passed: 80 removed by RAM (need 8192 MB), 40 by AvailabilityZone(az2)"
 * (admin detail) into out. */
void sched_outcome_explain(const sched_outcome *oc, const sched_request *rq, char *out,
                           size_t outlen);

#endif
