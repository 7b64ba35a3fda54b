/*
 * sched_bench.c - placement decision latency and claim throughput at 10..5000 hosts.
 *
 * For each host count it builds a controller DB in a temporary directory (hosts of 64
 * vCPUs / 256 GB / 10 TB, a tenth of them in an "az2" aggregate), creates the instances,
 * loads one host snapshot as nube-scheduler does, then places every instance exactly as
 * the scheduler's loop does: read the request (hints, group, flavor specs), run the
 * filters and weighers over the snapshot (sched_select), claim in the database
 * (cl_store_claim_ex: BEGIN IMMEDIATE, re-check, generation compare-and-swap, insert),
 * update the snapshot. It prints p50/p99 of the whole decision and of filter+weigh
 * alone, claims per second, the snapshot load time, and each figure's ratio to the
 * 10-host run of the same invocation.
 *
 * Usage: sched_bench [instances-per-run] [host counts...]   (default 2000; 10 100 1000 5000)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "libcloud/store.h"
#include "libcloud/store_placement.h"
#include "libcloud/util.h"
#include "scheduler/placement.h"

static double now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p)
{
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);

    return v[i < n ? i : n - 1];
}

typedef struct result {
    size_t hosts;
    double p50, p99, sel_p50, sel_p99, claims_s, snap_ms;
} result;

static int run(size_t nhosts, size_t ninst, result *out)
{
    char dir[] = "/tmp/nube-sched-bench-XXXXXX", path[128];
    cl_store *st = NULL;
    cl_error err = {0};
    cl_host *hosts = NULL;
    cl_host_ext *ext = NULL;
    size_t n = 0;
    char (*uuids)[CL_UUID_LEN] = calloc(ninst, CL_UUID_LEN);
    double *lat = calloc(ninst, sizeof(double)), *sel = calloc(ninst, sizeof(double));
    int r;

    if (!uuids || !lat || !sel || !mkdtemp(dir))
        return -ENOMEM;
    snprintf(path, sizeof(path), "%s/controller.db", dir);
    r = cl_store_open(path, &st, &err);
    if (r < 0) {
        fprintf(stderr, "open: %s\n", err.message);
        return r;
    }
    cl_db_exec(cl_store_db(st), "BEGIN");
    for (size_t i = 0; i < nhosts; i++) {
        cl_host h;

        memset(&h, 0, sizeof(h));
        snprintf(h.name, sizeof(h.name), "host-%05zu", i);
        cl_strlcpy(h.hypervisor_type, "QEMU", sizeof(h.hypervisor_type));
        h.vcpus = 64;
        h.ram_mb = 262144;
        h.disk_gb = 10000;
        h.cpu_ratio = 4.0;
        h.ram_ratio = h.disk_ratio = 1.0;
        cl_store_host_register(st, &h);
    }
    cl_db_exec(cl_store_db(st), "COMMIT");
    cl_aggregate agg;
    if (cl_store_aggregate_create(st, "rack2", "az2", &agg) == 0) {
        for (size_t i = 0; i < nhosts; i += 10) {
            char name[32];

            snprintf(name, sizeof(name), "host-%05zu", i);
            cl_store_aggregate_add_host(st, agg.id, name, &err);
        }
        cl_aggregate_clear(&agg);
    }
    for (size_t i = 0; i < ninst; i++) {
        cl_instance inst;

        memset(&inst, 0, sizeof(inst));
        cl_uuid_new(inst.uuid);
        cl_strlcpy(inst.name, "bench", sizeof(inst.name));
        cl_strlcpy(inst.project_id, "p", sizeof(inst.project_id));
        cl_strlcpy(inst.user_id, "u", sizeof(inst.user_id));
        cl_store_flavor_get(st, "1", &inst.flavor); /* m1.tiny: 1 vCPU, 512 MB, 1 GB */
        inst.vm_state = CL_VM_BUILDING;
        inst.task_state = CL_TASK_SCHEDULING;
        if (cl_store_instance_create(st, &inst) < 0)
            return -EIO;
        memcpy(uuids[i], inst.uuid, CL_UUID_LEN);
    }

    double t0 = now_us();
    r = cl_store_host_snapshot(st, &hosts, &ext, &n);
    out->snap_ms = (now_us() - t0) / 1000.0;
    if (r < 0)
        return r;
    sched_policy pol;
    sched_policy_default(&pol);
    size_t *idx = calloc(n, sizeof(*idx));
    double *scratch = calloc(n * 8, sizeof(double));
    unsigned seed = 1;
    double start = now_us();
    size_t placed = 0;

    for (size_t i = 0; i < ninst; i++) {
        cl_instance inst;
        cl_sched_hints hints;
        cl_server_group g;
        char (*k)[256] = NULL, (*v)[256] = NULL;
        size_t nspec = 0;
        sched_outcome oc;
        const char *names[64];
        int64_t gens[64];
        cl_claim_result res;
        double a = now_us();

        /* What sched.c reads per request. */
        cl_store_instance_get(st, uuids[i], &inst);
        cl_store_placement_hints_get(st, uuids[i], &hints);
        cl_store_group_of(st, uuids[i], &g);
        cl_store_placement_flavor_specs(st, inst.flavor.id, "aggregate_instance_extra_specs:",
                                        &k, &v, &nspec);
        sched_request rq = {.flavor = &inst.flavor};
        if (i % 10 == 0)
            rq.az = "az2"; /* a tenth ask for the small zone */
        double b = now_us();
        size_t np = sched_select(&pol, &rq, hosts, ext, n, idx, scratch, &seed, &oc);
        sel[i] = now_us() - b;
        size_t nc = np < 64 ? np : 64;
        for (size_t j = 0; j < nc; j++) {
            names[j] = hosts[idx[j]].name;
            gens[j] = ext[idx[j]].generation;
        }
        cl_claim_req req = {.instance_uuid = uuids[i], .candidates = names, .ncandidates = nc,
                            .generations = gens};
        if (nc > 0 && cl_store_claim_ex(st, &req, &res) == 0) {
            placed++;
            sched_need need = sched_need_of(&inst.flavor);
            hosts[idx[res.index]].used_vcpus += need.vcpus;
            hosts[idx[res.index]].used_ram_mb += need.ram_mb;
            hosts[idx[res.index]].used_disk_gb += need.disk_gb;
            hosts[idx[res.index]].running_vms++;
            ext[idx[res.index]].generation = res.generation;
        }
        free(k);
        free(v);
        lat[i] = now_us() - a;
    }
    double total_s = (now_us() - start) / 1e6;

    qsort(lat, ninst, sizeof(double), cmp_d);
    qsort(sel, ninst, sizeof(double), cmp_d);
    out->hosts = nhosts;
    out->p50 = pct(lat, ninst, 0.50) / 1000.0;
    out->p99 = pct(lat, ninst, 0.99) / 1000.0;
    out->sel_p50 = pct(sel, ninst, 0.50) / 1000.0;
    out->sel_p99 = pct(sel, ninst, 0.99) / 1000.0;
    out->claims_s = (double)placed / total_s;
    if (placed != ninst)
        fprintf(stderr, "warning: %zu of %zu placed at %zu hosts\n", placed, ninst, nhosts);

    free(idx);
    free(scratch);
    free(hosts);
    free(ext);
    free(uuids);
    free(lat);
    free(sel);
    cl_store_free(st);
    char p[200];
    for (const char *const *sfx = (const char *const[]){"", "-wal", "-shm", NULL}; *sfx; sfx++) {
        snprintf(p, sizeof(p), "%s%s", path, *sfx);
        unlink(p);
    }
    rmdir(dir);
    return 0;
}

int main(int argc, char **argv)
{
    size_t ninst = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 2000;
    size_t counts[16] = {10, 100, 1000, 5000};
    size_t nc = 4;
    result res[16];

    if (argc > 2) {
        nc = 0;
        for (int i = 2; i < argc && nc < 16; i++)
            counts[nc++] = (size_t)strtoul(argv[i], NULL, 10);
    }
    printf("placement decision = read request + filter/weigh + claim (BEGIN IMMEDIATE, CAS)"
           "; %zu m1.tiny instances per run\n", ninst);
    printf("%7s %12s %12s %14s %14s %10s %12s   %s\n", "hosts", "decide p50", "decide p99",
           "filter+weigh", "filter+weigh", "claims/s", "snapshot", "ratio to 10 hosts");
    printf("%7s %12s %12s %14s %14s %10s %12s   %s\n", "", "ms", "ms", "p50 ms", "p99 ms", "",
           "load ms", "(p99, claims/s)");
    for (size_t i = 0; i < nc; i++) {
        if (run(counts[i], ninst, &res[i]) < 0) {
            fprintf(stderr, "run at %zu hosts failed\n", counts[i]);
            return 1;
        }
        printf("%7zu %12.3f %12.3f %14.3f %14.3f %10.0f %12.2f   x%.2f, x%.2f\n", res[i].hosts,
               res[i].p50, res[i].p99, res[i].sel_p50, res[i].sel_p99, res[i].claims_s,
               res[i].snap_ms, res[i].p99 / res[0].p99, res[i].claims_s / res[0].claims_s);
        fflush(stdout);
    }
    return 0;
}
