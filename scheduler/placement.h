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

#endif
