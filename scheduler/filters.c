/*
 * filters.c - the scheduler's filter pipeline and weighers (Nova's filter scheduler,
 * explained).
 *
 * A filter is a predicate on (host, request). They run in the configured order, cheap
 * ones first: a host leaves at the first filter that rejects it and that filter's
 * counter goes up. The counters are what make "no valid host" explainable: "0 of 120
 * hosts passed: 80 removed by RAM (need 8192 MB), 40 by AvailabilityZone(az2)".
 *
 * The weighers follow Nova: each one's raw value (free RAM, free vCPUs, free disk,
 * instance count, recent build failures, group members on the host) is normalised to
 * 0..1 over the surviving hosts, multiplied by its multiplier and summed. Positive
 * resource multipliers spread, negative ones pack. Ties fall to fewer instances and then
 * the host name, so a run is deterministic unless host_subset_size > 1 asks for a random
 * pick among the best N (which spreads concurrent schedulers apart).
 *
 * Hard group policies are filtered here on the snapshot and enforced again inside the
 * claim (store.c) under the write lock, which is what holds them under parallel boots.
 */
#include "placement.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "store_placement.h"

static const char *const filter_names[SCHED_F_MAX] = {
    [SCHED_F_COMPUTE] = "ComputeFilter",
    [SCHED_F_RETRY] = "RetryFilter",
    [SCHED_F_AZ] = "AvailabilityZoneFilter",
    [SCHED_F_IMAGE] = "ImagePropertiesFilter",
    [SCHED_F_AGG_SPECS] = "AggregateInstanceExtraSpecsFilter",
    [SCHED_F_SAME_HOST] = "SameHostFilter",
    [SCHED_F_DIFFERENT_HOST] = "DifferentHostFilter",
    [SCHED_F_GROUP] = "ServerGroupFilter",
    [SCHED_F_NUM_INSTANCES] = "NumInstancesFilter",
    [SCHED_F_VCPU] = "VCPUFilter",
    [SCHED_F_RAM] = "RamFilter",
    [SCHED_F_DISK] = "DiskFilter",
};

const char *sched_filter_name(sched_filter_id f)
{
    return (unsigned)f < SCHED_F_MAX ? filter_names[f] : "unknown";
}

void sched_policy_default(sched_policy *p)
{
    memset(p, 0, sizeof(*p));
    for (int i = 0; i < SCHED_F_MAX; i++)
        p->filters[p->nfilters++] = (sched_filter_id)i;
    p->ram_weight = 1.0;
    p->cpu_weight = 1.0;
    p->disk_weight = 1.0;
    p->instances_weight = 0.0;
    p->failure_weight = -1000.0;
    p->soft_affinity_weight = 1.0;
    p->soft_anti_affinity_weight = 1.0;
    p->host_subset_size = 1;
}

/* Nova's names that map onto ours. */
static const struct {
    const char *name;
    sched_filter_id id;
} filter_aliases[] = {
    {"ServerGroupAffinityFilter", SCHED_F_GROUP},
    {"ServerGroupAntiAffinityFilter", SCHED_F_GROUP},
    {"CoreFilter", SCHED_F_VCPU},
    {"AvailabilityZone", SCHED_F_AZ},
};

int sched_policy_set_filters(sched_policy *p, const char *list, cl_error *err)
{
    bool seen[SCHED_F_MAX] = {false};
    size_t n = 0;
    const char *s = list ? list : "";

    while (*s) {
        char name[64];
        size_t len;
        int id = -1;

        while (*s == ',' || isspace((unsigned char)*s))
            s++;
        len = strcspn(s, ", \t");
        if (len == 0)
            break;
        if (len >= sizeof(name))
            return cl_error_set(err, CL_E_BAD_REQUEST, "[scheduler] enabled_filters: name "
                                "too long"), -EINVAL;
        memcpy(name, s, len);
        name[len] = '\0';
        s += len;
        for (int i = 0; i < SCHED_F_MAX && id < 0; i++)
            if (strcmp(name, filter_names[i]) == 0)
                id = i;
        for (size_t i = 0; i < CL_ARRAY_SIZE(filter_aliases) && id < 0; i++)
            if (strcmp(name, filter_aliases[i].name) == 0)
                id = (int)filter_aliases[i].id;
        if (id < 0)
            return cl_error_set(err, CL_E_BAD_REQUEST,
                                "[scheduler] enabled_filters: unknown filter '%s'", name),
                   -EINVAL;
        if (!seen[id]) {
            seen[id] = true;
            p->filters[n++] = (sched_filter_id)id;
        }
    }
    p->nfilters = n;
    return 0;
}

/* ---- the filters ---- */

/* name appears in a comma separated list. */
static bool in_csv(const char *csv, const char *name)
{
    size_t nl = strlen(name);

    for (const char *s = csv; s && *s;) {
        size_t len = strcspn(s, ",");

        if (len == nl && strncmp(s, name, nl) == 0)
            return true;
        s += len;
        if (*s == ',')
            s++;
    }
    return false;
}

static size_t count_in(const char (*list)[CL_HOST_MAX], size_t n, const char *name)
{
    size_t c = 0;

    for (size_t i = 0; i < n; i++)
        c += strcmp(list[i], name) == 0;
    return c;
}

/* Image hypervisor_type against what the host runs: KVM hosts also run "qemu" images
 * and the other way round, as libvirt reports both for one QEMU driver. */
static bool hv_matches(const char *want, const char *have)
{
    bool want_q = strcasecmp(want, "qemu") == 0 || strcasecmp(want, "kvm") == 0;
    bool have_q = strcasecmp(have, "qemu") == 0 || strcasecmp(have, "kvm") == 0;

    if (want_q && have_q)
        return true;
    return strcasecmp(want, have) == 0;
}

/* vm_mode a hypervisor can run: hvm everywhere but LXC, xen (PV) only on Xen, exe only
 * on LXC. */
static bool vm_mode_ok(const char *mode, const char *hv)
{
    if (strcasecmp(mode, "hvm") == 0)
        return strcasecmp(hv, "lxc") != 0;
    if (strcasecmp(mode, "xen") == 0)
        return strcasecmp(hv, "xen") == 0;
    if (strcasecmp(mode, "exe") == 0)
        return strcasecmp(hv, "lxc") == 0;
    return false;
}

static bool filter_pass(sched_filter_id f, const sched_request *rq, const sched_need *need,
                        const cl_host *h, const cl_host_ext *x)
{
    switch (f) {
    case SCHED_F_COMPUTE:
        return h->up && h->enabled && !(x && x->maintenance);
    case SCHED_F_RETRY:
        return !rq->tried_hosts || !rq->tried_hosts[0] || !in_csv(rq->tried_hosts, h->name);
    case SCHED_F_AZ:
        if (!rq->az || !rq->az[0])
            return true;
        return strcmp(rq->az, x && x->az[0] ? x->az : CL_DEFAULT_AZ) == 0;
    case SCHED_F_IMAGE: {
        const char *hv = x && x->hypervisor_type[0] ? x->hypervisor_type : h->hypervisor_type;

        if (rq->hypervisor_type && rq->hypervisor_type[0] && !hv_matches(rq->hypervisor_type, hv))
            return false;
        /* A host that has not reported its architecture is not excluded by it. */
        if (rq->architecture && rq->architecture[0] && x && x->cpu_arch[0] &&
            strcasecmp(rq->architecture, x->cpu_arch) != 0)
            return false;
        if (rq->vm_mode && rq->vm_mode[0] && !vm_mode_ok(rq->vm_mode, hv))
            return false;
        return true;
    }
    case SCHED_F_AGG_SPECS:
        for (size_t i = 0; i < rq->nspecs; i++) {
            char pair[600];

            snprintf(pair, sizeof(pair), "\n%s=%s\n", rq->spec_keys[i], rq->spec_values[i]);
            if (!x || !strstr(x->meta, pair))
                return false;
        }
        return true;
    case SCHED_F_SAME_HOST:
        if (rq->nsame == 0)
            return true;
        for (size_t i = 0; i < rq->nsame; i++)
            if (strcmp(rq->same_hosts[i], h->name) != 0)
                return false;
        return true;
    case SCHED_F_DIFFERENT_HOST:
        return count_in(rq->different_hosts, rq->ndifferent, h->name) == 0;
    case SCHED_F_GROUP:
        if (!rq->has_group)
            return true;
        if (rq->group_policy == CL_GROUP_AFFINITY)
            return rq->ngroup_hosts == 0 ||
                   count_in(rq->group_hosts, rq->ngroup_hosts, h->name) == rq->ngroup_hosts;
        if (rq->group_policy == CL_GROUP_ANTI_AFFINITY) {
            int64_t max = rq->group_max_per_host > 0 ? rq->group_max_per_host : 1;

            return (int64_t)count_in(rq->group_hosts, rq->ngroup_hosts, h->name) < max;
        }
        return true;
    case SCHED_F_NUM_INSTANCES: {
        int64_t max = x && x->max_instances > 0 ? x->max_instances : rq->max_instances_per_host;

        return max <= 0 || h->running_vms < max;
    }
    case SCHED_F_VCPU:
        return cl_host_free_vcpus(h) >= need->vcpus;
    case SCHED_F_RAM:
        return cl_host_free_ram_mb(h) >= need->ram_mb;
    case SCHED_F_DISK:
        return cl_host_free_disk_gb(h) >= need->disk_gb;
    default:
        return true;
    }
}

/* ---- weighers ---- */

enum { W_RAM, W_CPU, W_DISK, W_INST, W_FAIL, W_SOFT_AFF, W_SOFT_ANTI, W_N };

typedef struct sort_ctx {
    const cl_host *hosts;
    const double *score;
} sort_ctx;

/* qsort_r comparator: higher score first, then fewer instances, then name. */
static int cmp_scored(const void *pa, const void *pb, void *ud)
{
    const sort_ctx *c = ud;
    size_t a = *(const size_t *)pa, b = *(const size_t *)pb;

    if (c->score[a] != c->score[b])
        return c->score[a] > c->score[b] ? -1 : 1;
    if (c->hosts[a].running_vms != c->hosts[b].running_vms)
        return c->hosts[a].running_vms < c->hosts[b].running_vms ? -1 : 1;
    return strcmp(c->hosts[a].name, c->hosts[b].name);
}

size_t sched_select(const sched_policy *p, const sched_request *rq, const cl_host *hosts,
                    const cl_host_ext *ext, size_t nhosts, size_t *out_idx, double *scratch,
                    unsigned *rng, sched_outcome *oc)
{
    sched_need need = sched_need_of(rq->flavor);
    size_t n = 0;

    memset(oc, 0, sizeof(*oc));
    oc->nhosts = nhosts;
    for (size_t i = 0; i < nhosts; i++) {
        bool ok = true;

        for (size_t f = 0; f < p->nfilters && ok; f++) {
            if (!filter_pass(p->filters[f], rq, &need, &hosts[i], ext ? &ext[i] : NULL)) {
                oc->removed[p->filters[f]]++;
                ok = false;
            }
        }
        if (ok)
            out_idx[n++] = i;
    }
    oc->npassed = n;
    if (n <= 1)
        return n;

    /* Raw weigher values per passing host, then min-max normalisation. */
    double *raw = scratch;          /* W_N * nhosts */
    double *score = scratch + (size_t)W_N * nhosts;
    double lo[W_N], hi[W_N];
    const double mult[W_N] = {p->ram_weight, p->cpu_weight, p->disk_weight,
                              p->instances_weight, p->failure_weight,
                              p->soft_affinity_weight, p->soft_anti_affinity_weight};

    for (int w = 0; w < W_N; w++) {
        lo[w] = 1e300;
        hi[w] = -1e300;
    }
    for (size_t k = 0; k < n; k++) {
        size_t i = out_idx[k];
        const cl_host *h = &hosts[i];
        double *v = &raw[i * W_N];
        double members = rq->has_group ? (double)count_in(rq->group_hosts, rq->ngroup_hosts,
                                                          h->name) : 0;

        v[W_RAM] = (double)cl_host_free_ram_mb(h);
        v[W_CPU] = (double)cl_host_free_vcpus(h);
        v[W_DISK] = (double)cl_host_free_disk_gb(h);
        v[W_INST] = (double)h->running_vms;
        v[W_FAIL] = ext ? (double)ext[i].failures : 0;
        v[W_SOFT_AFF] = rq->has_group && rq->group_policy == CL_GROUP_SOFT_AFFINITY ? members : 0;
        v[W_SOFT_ANTI] =
            rq->has_group && rq->group_policy == CL_GROUP_SOFT_ANTI_AFFINITY ? -members : 0;
        for (int w = 0; w < W_N; w++) {
            if (v[w] < lo[w])
                lo[w] = v[w];
            if (v[w] > hi[w])
                hi[w] = v[w];
        }
    }
    for (size_t k = 0; k < n; k++) {
        size_t i = out_idx[k];
        double s = 0;

        for (int w = 0; w < W_N; w++) {
            double span = hi[w] - lo[w];

            if (mult[w] != 0 && span > 0)
                s += mult[w] * (raw[i * W_N + w] - lo[w]) / span;
        }
        score[i] = s;
    }
    sort_ctx c = {hosts, score};
    qsort_r(out_idx, n, sizeof(*out_idx), cmp_scored, &c);

    if (rng && p->host_subset_size > 1) {
        size_t top = p->host_subset_size < n ? p->host_subset_size : n;
        size_t pick = (size_t)rand_r(rng) % top;
        size_t t = out_idx[0];

        out_idx[0] = out_idx[pick];
        out_idx[pick] = t;
    }
    return n;
}

/* ---- explanation ---- */

static void detail(sched_filter_id f, const sched_request *rq, char *out, size_t len)
{
    sched_need need = sched_need_of(rq->flavor);

    switch (f) {
    case SCHED_F_COMPUTE:
        snprintf(out, len, "ComputeFilter (host down, disabled or in maintenance)");
        break;
    case SCHED_F_RETRY:
        snprintf(out, len, "Retry (failed this build before)");
        break;
    case SCHED_F_AZ:
        snprintf(out, len, "AvailabilityZone(%s)", rq->az ? rq->az : "");
        break;
    case SCHED_F_IMAGE:
        snprintf(out, len, "ImageProperties(%s%s%s%s%s%s)",
                 rq->hypervisor_type && rq->hypervisor_type[0] ? "hypervisor_type=" : "",
                 rq->hypervisor_type ? rq->hypervisor_type : "",
                 rq->architecture && rq->architecture[0] ? " architecture=" : "",
                 rq->architecture ? rq->architecture : "",
                 rq->vm_mode && rq->vm_mode[0] ? " vm_mode=" : "", rq->vm_mode ? rq->vm_mode : "");
        break;
    case SCHED_F_AGG_SPECS:
        snprintf(out, len, "AggregateInstanceExtraSpecs(%s=%s%s)",
                 rq->nspecs ? rq->spec_keys[0] : "", rq->nspecs ? rq->spec_values[0] : "",
                 rq->nspecs > 1 ? ", ..." : "");
        break;
    case SCHED_F_SAME_HOST:
        snprintf(out, len, "SameHost");
        break;
    case SCHED_F_DIFFERENT_HOST:
        snprintf(out, len, "DifferentHost");
        break;
    case SCHED_F_GROUP:
        if (rq->group_policy == CL_GROUP_ANTI_AFFINITY && rq->group_max_per_host > 1)
            snprintf(out, len, "ServerGroupAntiAffinity(%s, max_server_per_host=%lld)",
                     rq->group_name ? rq->group_name : "", (long long)rq->group_max_per_host);
        else
            snprintf(out, len, "ServerGroup%s(%s)",
                     rq->group_policy == CL_GROUP_AFFINITY ? "Affinity" : "AntiAffinity",
                     rq->group_name ? rq->group_name : "");
        break;
    case SCHED_F_NUM_INSTANCES:
        snprintf(out, len, "NumInstances(max %lld)", (long long)rq->max_instances_per_host);
        break;
    case SCHED_F_VCPU:
        snprintf(out, len, "VCPU (need %lld)", (long long)need.vcpus);
        break;
    case SCHED_F_RAM:
        snprintf(out, len, "RAM (need %lld MB)", (long long)need.ram_mb);
        break;
    case SCHED_F_DISK:
        snprintf(out, len, "Disk (need %lld GB)", (long long)need.disk_gb);
        break;
    default:
        snprintf(out, len, "?");
    }
}

void sched_outcome_explain(const sched_outcome *oc, const sched_request *rq, char *out,
                           size_t outlen)
{
    size_t len;
    bool first = true;

    if (outlen == 0)
        return;
    snprintf(out, outlen, "%zu of %zu hosts passed", oc->npassed, oc->nhosts);
    /* Largest removal first: it is what the user most likely needs to change. */
    bool done[SCHED_F_MAX] = {false};

    for (;;) {
        int best = -1;

        for (int f = 0; f < SCHED_F_MAX; f++)
            if (!done[f] && oc->removed[f] > 0 &&
                (best < 0 || oc->removed[f] > oc->removed[best]))
                best = f;
        if (best < 0)
            break;
        done[best] = true;
        char d[300];

        detail((sched_filter_id)best, rq, d, sizeof(d));
        len = strlen(out);
        if (len + 1 >= outlen)
            break;
        snprintf(out + len, outlen - len, "%s%zu %s%s", first ? ": " : ", ", oc->removed[best],
                 first ? "removed by " : "by ", d);
        first = false;
    }
}
