/*
 * placement.c - the scheduler's filters, weigher and "no valid host" explanation.
 *
 * The filters are Nova's core ones in miniature: ComputeFilter (host up and enabled),
 * then the capacity checks Placement does for VCPU, MEMORY_MB and DISK_GB inventories:
 * free = total * allocation_ratio - reserved - used (cl_host_free_*), and the flavor must
 * fit in what is free. The weigher is Nova's RAMWeigher with its default positive
 * multiplier: the host with the most free RAM wins, which spreads servers across hosts.
 * Ties go to the host with fewer instances and finally to the host name, so two runs on
 * the same snapshot always give the same order (tests and operators both rely on that).
 *
 * When nothing fits, the user sees the instance in ERROR with a fault; Nova only says
 * "No valid host was found." which leaves the user guessing, so the explanation here
 * adds what the flavor needs and what the best host actually has free.
 */
#include "placement.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const verdict_names[SCHED_HOST_VERDICT_MAX] = {
    [SCHED_HOST_OK] = "ok",          [SCHED_HOST_DOWN] = "down",
    [SCHED_HOST_DISABLED] = "disabled", [SCHED_HOST_NO_VCPUS] = "vcpus",
    [SCHED_HOST_NO_RAM] = "ram",     [SCHED_HOST_NO_DISK] = "disk",
};

const char *sched_host_verdict_name(sched_host_verdict v)
{
    if ((unsigned)v >= SCHED_HOST_VERDICT_MAX)
        return "unknown";
    return verdict_names[v];
}

sched_need sched_need_of(const cl_flavor *f)
{
    /* The same sum cl_store_claim() checks (Nova's DISK_GB request): root + ephemeral +
     * swap rounded up to whole GB, since all three are files in the host's instance
     * directory. Filtering on less would only send doomed candidates to the claim. */
    sched_need n = {
        .vcpus = f->vcpus,
        .ram_mb = f->ram_mb,
        .disk_gb = f->disk_gb + f->ephemeral_gb + (f->swap_mb + 1023) / 1024,
    };
    return n;
}

sched_host_verdict sched_host_check(const cl_host *h, const sched_need *need)
{
    /* Liveness before capacity, so the verdict names the reason an operator fixes first. */
    if (!h->up)
        return SCHED_HOST_DOWN;
    if (!h->enabled)
        return SCHED_HOST_DISABLED;
    if (cl_host_free_vcpus(h) < need->vcpus)
        return SCHED_HOST_NO_VCPUS;
    if (cl_host_free_ram_mb(h) < need->ram_mb)
        return SCHED_HOST_NO_RAM;
    if (cl_host_free_disk_gb(h) < need->disk_gb)
        return SCHED_HOST_NO_DISK;
    return SCHED_HOST_OK;
}

int sched_host_compare(const cl_host *a, const cl_host *b)
{
    int64_t fa = cl_host_free_ram_mb(a), fb = cl_host_free_ram_mb(b);

    if (fa != fb)
        return fa > fb ? -1 : 1;
    if (a->running_vms != b->running_vms)
        return a->running_vms < b->running_vms ? -1 : 1;
    return strcmp(a->name, b->name);
}

static int compare_host_ptrs(const void *pa, const void *pb)
{
    const cl_host *const *a = pa;
    const cl_host *const *b = pb;

    return sched_host_compare(*a, *b);
}

size_t sched_placement_candidates(const cl_host *hosts, size_t nhosts, const cl_flavor *flavor,
                                  const cl_host **out)
{
    sched_need need = sched_need_of(flavor);
    size_t n = 0;

    for (size_t i = 0; i < nhosts; i++)
        if (sched_host_check(&hosts[i], &need) == SCHED_HOST_OK)
            out[n++] = &hosts[i];
    if (n > 1)
        qsort(out, n, sizeof(*out), compare_host_ptrs);
    return n;
}

/* A bounded string builder: appends stop (silently) at the end of the buffer, which is
 * fine for a message whose head carries the essential part. */
typedef struct textbuf {
    char *buf;
    size_t len, cap;
} textbuf;

__attribute__((format(printf, 2, 3))) static void tb_printf(textbuf *tb, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (tb->len + 1 >= tb->cap)
        return;
    va_start(ap, fmt);
    n = vsnprintf(tb->buf + tb->len, tb->cap - tb->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    tb->len += (size_t)n;
    if (tb->len >= tb->cap)
        tb->len = tb->cap - 1;
}

static const char *plural(int64_t n, const char *one, const char *many)
{
    return n == 1 ? one : many;
}

/* The host among the usable ones with the most of one free resource. */
typedef int64_t (*free_fn)(const cl_host *h);

static const cl_host *best_host(const cl_host *hosts, size_t nhosts, free_fn fn)
{
    const cl_host *best = NULL;

    for (size_t i = 0; i < nhosts; i++) {
        const cl_host *h = &hosts[i];

        if (!h->up || !h->enabled)
            continue;
        if (!best || fn(h) > fn(best) ||
            (fn(h) == fn(best) && strcmp(h->name, best->name) < 0))
            best = h;
    }
    return best;
}

/* Free amounts can be negative after an operator lowered a ratio under existing
 * allocations; "-512 MB free" would only confuse a user, so show 0. */
static int64_t shown(int64_t v)
{
    return v < 0 ? 0 : v;
}

void sched_placement_explain(const cl_host *hosts, size_t nhosts, const cl_flavor *flavor,
                             char *out, size_t outlen)
{
    textbuf tb = {.buf = out, .len = 0, .cap = outlen};
    sched_need need = sched_need_of(flavor);
    size_t nup = 0, ndown = 0, ndisabled = 0;
    const cl_host *best;

    if (outlen == 0)
        return;
    out[0] = '\0';

    for (size_t i = 0; i < nhosts; i++) {
        if (!hosts[i].enabled)
            ndisabled++;
        else if (!hosts[i].up)
            ndown++;
        else
            nup++;
    }

    tb_printf(&tb, "No valid host was found. Flavor '%s' needs %lld %s, %lld MB RAM, %lld GB disk",
              flavor->name[0] ? flavor->name : flavor->id, (long long)need.vcpus,
              plural(need.vcpus, "vCPU", "vCPUs"), (long long)need.ram_mb,
              (long long)need.disk_gb);

    if (nhosts == 0) {
        tb_printf(&tb, "; no compute host has registered with the scheduler");
        return;
    }

    tb_printf(&tb, "; %zu %s up", nup, plural((int64_t)nup, "host", "hosts"));
    if (nup > 0) {
        best = best_host(hosts, nhosts, cl_host_free_ram_mb);
        tb_printf(&tb, ", the most free RAM is %lld MB on %s",
                  (long long)shown(cl_host_free_ram_mb(best)), best->name);
        /* RAM is what most flavors run out of first; name the other resources only
         * when they are the shortfall, so the message stays short. */
        best = best_host(hosts, nhosts, cl_host_free_vcpus);
        if (cl_host_free_vcpus(best) < need.vcpus)
            tb_printf(&tb, ", the most free vCPUs are %lld on %s",
                      (long long)shown(cl_host_free_vcpus(best)), best->name);
        best = best_host(hosts, nhosts, cl_host_free_disk_gb);
        if (cl_host_free_disk_gb(best) < need.disk_gb)
            tb_printf(&tb, ", the most free disk is %lld GB on %s",
                      (long long)shown(cl_host_free_disk_gb(best)), best->name);
    }
    if (ndown > 0 || ndisabled > 0) {
        tb_printf(&tb, "; ");
        if (ndown > 0)
            tb_printf(&tb, "%zu %s down%s", ndown, plural((int64_t)ndown, "host", "hosts"),
                      ndisabled > 0 ? ", " : "");
        if (ndisabled > 0)
            tb_printf(&tb, "%zu %s disabled", ndisabled,
                      plural((int64_t)ndisabled, "host", "hosts"));
    }
}
