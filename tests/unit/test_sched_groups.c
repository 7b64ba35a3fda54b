/*
 * test_sched_groups.c - placement at the store and policy level (issue 4), on a real
 * SQLite file in a private temporary directory:
 *  - hard anti-affinity and affinity hold under parallel claims from separate
 *    connections (the policy is checked inside the claim's write transaction);
 *  - max_server_per_host and the per-host instance cap;
 *  - host generations move with every allocation change and stale ones are re-checked;
 *  - the filter pipeline's per-stage explanation and the weighers (spread, pack);
 *  - scheduler hints and group membership from a create body;
 *  - migrations holding the source half, finished either way;
 *  - the audit finding and repairing planted inconsistencies.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "libcloud/store.h"
#include "libcloud/store_placement.h"
#include "libcloud/util.h"
#include "scheduler/placement.h"

typedef struct fixture {
    char dir[64];
    char path[128];
    cl_store *st;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    cl_error err = {0};

    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/nube-test-groups-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/controller.db", f->dir);
    assert_int_equal(cl_store_open(f->path, &f->st, &err), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    char p[200];

    cl_store_free(f->st);
    for (const char *const *sfx = (const char *const[]){"", "-wal", "-shm", NULL}; *sfx; sfx++) {
        snprintf(p, sizeof(p), "%s%s", f->path, *sfx);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

static void add_host(cl_store *st, const char *name, int64_t vcpus, int64_t ram_mb)
{
    cl_host h;

    memset(&h, 0, sizeof(h));
    cl_strlcpy(h.name, name, sizeof(h.name));
    cl_strlcpy(h.hypervisor_type, "QEMU", sizeof(h.hypervisor_type));
    h.vcpus = vcpus;
    h.ram_mb = ram_mb;
    h.disk_gb = 1000;
    h.cpu_ratio = h.ram_ratio = h.disk_ratio = 1.0;
    assert_int_equal(cl_store_host_register(st, &h), 0);
}

static void add_instance(cl_store *st, char uuid[CL_UUID_LEN])
{
    cl_instance inst;

    memset(&inst, 0, sizeof(inst));
    cl_uuid_new(inst.uuid);
    cl_strlcpy(inst.name, "vm", sizeof(inst.name));
    cl_strlcpy(inst.project_id, "p", sizeof(inst.project_id));
    cl_strlcpy(inst.user_id, "u", sizeof(inst.user_id));
    assert_int_equal(cl_store_flavor_get(st, "1", &inst.flavor), 0); /* m1.tiny */
    inst.vm_state = CL_VM_BUILDING;
    inst.task_state = CL_TASK_SCHEDULING;
    assert_int_equal(cl_store_instance_create(st, &inst), 0);
    cl_strlcpy(uuid, inst.uuid, CL_UUID_LEN);
}

static void add_group(cl_store *st, cl_group_policy pol, int64_t max, char uuid[CL_UUID_LEN])
{
    cl_server_group g;

    memset(&g, 0, sizeof(g));
    cl_uuid_new(g.uuid);
    cl_strlcpy(g.name, "g", sizeof(g.name));
    cl_strlcpy(g.project_id, "p", sizeof(g.project_id));
    g.policy = pol;
    g.max_server_per_host = max;
    assert_int_equal(cl_store_group_create(st, &g), 0);
    cl_strlcpy(uuid, g.uuid, CL_UUID_LEN);
}

static int64_t query_int(cl_store *st, const char *sql)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;

    assert_int_equal(cl_db_prepare(cl_store_db(st), sql, &s), 0);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    return sqlite3_column_int64(s, 0);
}

static const char *const HOSTS10[] = {"h0", "h1", "h2", "h3", "h4",
                                      "h5", "h6", "h7", "h8", "h9"};

/* ---- parallel claims of one group ---- */

#define NCLAIM 11

typedef struct claimer {
    const char *path;
    char uuid[CL_UUID_LEN];
    const char *const *cands;
    size_t ncands;
    int rc;
    cl_claim_result res;
} claimer;

static void *claim_thread(void *arg)
{
    claimer *c = arg;
    cl_store *st = NULL;
    cl_error err = {0};

    c->rc = cl_store_open(c->path, &st, &err);
    if (c->rc == 0) {
        cl_claim_req req = {.instance_uuid = c->uuid, .candidates = c->cands,
                            .ncandidates = c->ncands};
        c->rc = cl_store_claim_ex(st, &req, &c->res);
    }
    cl_store_free(st);
    return NULL;
}

static void run_claims(claimer *c, size_t n)
{
    pthread_t th[NCLAIM];

    for (size_t i = 0; i < n; i++)
        assert_int_equal(pthread_create(&th[i], NULL, claim_thread, &c[i]), 0);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
}

static void test_anti_affinity_parallel(void **state)
{
    fixture *f = *state;
    claimer c[NCLAIM];
    char g[CL_UUID_LEN];
    int ok = 0, nospc = 0;

    for (size_t i = 0; i < 10; i++)
        add_host(f->st, HOSTS10[i], 16, 16384);
    add_group(f->st, CL_GROUP_ANTI_AFFINITY, 0, g);
    memset(c, 0, sizeof(c));
    for (size_t i = 0; i < NCLAIM; i++) {
        c[i].path = f->path;
        add_instance(f->st, c[i].uuid);
        assert_int_equal(cl_store_group_add_member(f->st, g, c[i].uuid), 0);
        /* Worst case: every claimer prefers the same host first. */
        c[i].cands = HOSTS10;
        c[i].ncands = 10;
    }
    run_claims(c, NCLAIM);
    for (size_t i = 0; i < NCLAIM; i++) {
        if (c[i].rc == 0)
            ok++;
        else if (c[i].rc == -ENOSPC) {
            nospc++;
            assert_int_equal(c[i].res.rejected_group, 10);
            assert_string_equal(c[i].res.group_policy, "anti-affinity");
        }
    }
    assert_int_equal(ok, 10);
    assert_int_equal(nospc, 1);
    assert_int_equal(query_int(f->st, "SELECT count(DISTINCT host) FROM allocations"), 10);
    assert_int_equal(query_int(f->st, "SELECT max(n) FROM (SELECT count(*) AS n FROM"
                                      " allocations GROUP BY host)"), 1);
}

static void test_affinity_parallel(void **state)
{
    fixture *f = *state;
    static const char *const rev[] = {"h2", "h1", "h0"};
    static const char *const fwd[] = {"h0", "h1", "h2"};
    claimer c[6];
    char g[CL_UUID_LEN];
    char first[CL_HOST_MAX];

    for (size_t i = 0; i < 3; i++)
        add_host(f->st, HOSTS10[i], 64, 65536);
    add_group(f->st, CL_GROUP_AFFINITY, 0, g);
    memset(c, 0, sizeof(c));
    for (size_t i = 0; i < 6; i++) {
        c[i].path = f->path;
        add_instance(f->st, c[i].uuid);
        assert_int_equal(cl_store_group_add_member(f->st, g, c[i].uuid), 0);
        c[i].cands = i % 2 ? rev : fwd;
        c[i].ncands = 3;
    }
    run_claims(c, 6);
    cl_strlcpy(first, c[0].res.host, sizeof(first));
    for (size_t i = 0; i < 6; i++) {
        assert_int_equal(c[i].rc, 0);
        assert_string_equal(c[i].res.host, first);
    }
}

static void test_max_server_per_host_and_cap(void **state)
{
    fixture *f = *state;
    char g[CL_UUID_LEN], u[CL_UUID_LEN];
    cl_claim_result res;
    int ok = 0;

    for (size_t i = 0; i < 3; i++)
        add_host(f->st, HOSTS10[i], 64, 65536);
    add_group(f->st, CL_GROUP_ANTI_AFFINITY, 2, g);
    for (int i = 0; i < 7; i++) {
        add_instance(f->st, u);
        assert_int_equal(cl_store_group_add_member(f->st, g, u), 0);
        cl_claim_req req = {.instance_uuid = u, .candidates = HOSTS10, .ncandidates = 3};
        int r = cl_store_claim_ex(f->st, &req, &res);
        if (r == 0)
            ok++;
        else
            assert_int_equal(r, -ENOSPC);
    }
    assert_int_equal(ok, 6);

    /* Per-host cap: h0 already holds 2; its own max_instances = 2 refuses a third even
     * for an instance outside the group, the request default does not matter. */
    assert_int_equal(cl_store_host_set_max_instances(f->st, "h0", 2), 0);
    add_instance(f->st, u);
    cl_claim_req req = {.instance_uuid = u, .candidates = HOSTS10, .ncandidates = 1,
                        .max_instances_per_host = 100};
    assert_int_equal(cl_store_claim_ex(f->st, &req, &res), -ENOSPC);
    assert_int_equal(res.rejected_max_instances, 1);
    assert_int_equal(cl_store_host_set_max_instances(f->st, "h0", 0), 0);
    req.max_instances_per_host = 3;
    assert_int_equal(cl_store_claim_ex(f->st, &req, &res), 0);
    assert_string_equal(res.host, "h0");
}

static void test_generation(void **state)
{
    fixture *f = *state;
    cl_host *hosts = NULL;
    cl_host_ext *ext = NULL;
    size_t n = 0;
    char u[CL_UUID_LEN];
    cl_claim_result res;

    add_host(f->st, "h0", 4, 4096);
    assert_int_equal(cl_store_host_snapshot(f->st, &hosts, &ext, &n), 0);
    assert_int_equal(n, 1);
    int64_t g0 = ext[0].generation;
    assert_string_equal(ext[0].az, CL_DEFAULT_AZ);
    free(hosts);
    free(ext);

    add_instance(f->st, u);
    int64_t stale = g0 - 1;
    cl_claim_req req = {.instance_uuid = u, .candidates = HOSTS10, .ncandidates = 1,
                        .generations = &stale};
    assert_int_equal(cl_store_claim_ex(f->st, &req, &res), 0);
    assert_int_equal(res.generation_conflicts, 1); /* re-checked, then claimed */
    assert_true(res.generation > g0);
    assert_int_equal(query_int(f->st, "SELECT generation FROM hosts WHERE name = 'h0'"),
                     res.generation);
    /* A release from any path (here: failing the instance) moves it again. */
    assert_int_equal(cl_store_instance_fail(f->st, u, "boom", 500), 0);
    assert_true(query_int(f->st, "SELECT generation FROM hosts WHERE name = 'h0'") >
                res.generation);
}

/* ---- filters, explanation and weighers (pure) ---- */

static cl_host mkhost(const char *name, int64_t ram)
{
    cl_host h;

    memset(&h, 0, sizeof(h));
    cl_strlcpy(h.name, name, sizeof(h.name));
    cl_strlcpy(h.hypervisor_type, "QEMU", sizeof(h.hypervisor_type));
    h.vcpus = 16;
    h.ram_mb = ram;
    h.disk_gb = 500;
    h.cpu_ratio = h.ram_ratio = h.disk_ratio = 1.0;
    h.up = h.enabled = true;
    return h;
}

static void test_filters_explain(void **state)
{
    (void)state;
    cl_host hosts[4] = {mkhost("a", 4096), mkhost("b", 4096), mkhost("c", 65536),
                        mkhost("d", 65536)};
    cl_host_ext ext[4];
    cl_flavor fl = {.id = "4", .name = "m1.large", .vcpus = 4, .ram_mb = 8192, .disk_gb = 80};
    sched_policy p;
    sched_request rq = {.flavor = &fl, .az = "az2"};
    sched_outcome oc;
    size_t idx[4];
    double scratch[32];
    char text[512];

    memset(ext, 0, sizeof(ext));
    for (int i = 0; i < 4; i++)
        cl_strlcpy(ext[i].az, i == 3 ? "az2" : "nova", sizeof(ext[i].az));
    hosts[3].enabled = false;
    sched_policy_default(&p);
    assert_int_equal(sched_select(&p, &rq, hosts, ext, 4, idx, scratch, NULL, &oc), 0);
    sched_outcome_explain(&oc, &rq, text, sizeof(text));
    /* d is disabled (ComputeFilter first), c is in nova; a and b are out of zone too:
     * the AZ filter runs before RAM in the default order. */
    assert_string_equal(text, "0 of 4 hosts passed: 3 removed by AvailabilityZone(az2), 1 by "
                              "ComputeFilter (host down, disabled or in maintenance)");

    /* RAM before AZ when configured so: the explanation follows the order. */
    cl_error err = {0};
    assert_int_equal(sched_policy_set_filters(&p, "ComputeFilter, RamFilter, "
                                                  "AvailabilityZoneFilter", &err), 0);
    assert_int_equal(sched_select(&p, &rq, hosts, ext, 4, idx, scratch, NULL, &oc), 0);
    sched_outcome_explain(&oc, &rq, text, sizeof(text));
    assert_string_equal(text, "0 of 4 hosts passed: 2 removed by RAM (need 8192 MB), "
                              "1 by ComputeFilter (host down, disabled or in maintenance), "
                              "1 by AvailabilityZone(az2)");
    assert_int_equal(sched_policy_set_filters(&p, "NoSuchFilter", &err), -EINVAL);
    assert_non_null(strstr(err.message, "NoSuchFilter"));

    /* Image properties: Xen PV never lands on QEMU, hvm does. */
    sched_policy_default(&p);
    sched_request img = {.flavor = &fl, .hypervisor_type = "xen", .vm_mode = "xen"};
    hosts[3].enabled = true;
    assert_int_equal(sched_select(&p, &img, hosts, ext, 4, idx, scratch, NULL, &oc), 0);
    assert_int_equal(oc.removed[SCHED_F_IMAGE], 4);
    sched_request hvm = {.flavor = &fl, .hypervisor_type = "kvm", .vm_mode = "hvm"};
    assert_int_equal(sched_select(&p, &hvm, hosts, ext, 4, idx, scratch, NULL, &oc), 2);

    /* Aggregate extra specs: only hosts whose aggregate metadata has ssd=true. */
    static const char keys[1][256] = {"ssd"}, vals[1][256] = {"true"};
    sched_request spec = {.flavor = &fl, .spec_keys = keys, .spec_values = vals, .nspecs = 1};
    cl_strlcpy(ext[2].meta, "\nssd=true\n", sizeof(ext[2].meta));
    assert_int_equal(sched_select(&p, &spec, hosts, ext, 4, idx, scratch, NULL, &oc), 1);
    assert_string_equal(hosts[idx[0]].name, "c");
}

static void test_weighers(void **state)
{
    (void)state;
    cl_host hosts[3] = {mkhost("a", 8192), mkhost("b", 32768), mkhost("c", 16384)};
    cl_flavor fl = {.id = "1", .name = "m1.tiny", .vcpus = 1, .ram_mb = 512, .disk_gb = 1};
    sched_policy p;
    sched_request rq = {.flavor = &fl};
    sched_outcome oc;
    size_t idx[3];
    double scratch[24];

    sched_policy_default(&p);
    assert_int_equal(sched_select(&p, &rq, hosts, NULL, 3, idx, scratch, NULL, &oc), 3);
    assert_string_equal(hosts[idx[0]].name, "b"); /* spread: most free RAM */
    assert_string_equal(hosts[idx[2]].name, "a");
    p.ram_weight = -1.0; /* pack */
    assert_int_equal(sched_select(&p, &rq, hosts, NULL, 3, idx, scratch, NULL, &oc), 3);
    assert_string_equal(hosts[idx[0]].name, "a");

    /* Build failures outweigh free RAM. */
    cl_host_ext ext[3];
    memset(ext, 0, sizeof(ext));
    ext[1].failures = 2;
    sched_policy_default(&p);
    assert_int_equal(sched_select(&p, &rq, hosts, ext, 3, idx, scratch, NULL, &oc), 3);
    assert_string_equal(hosts[idx[0]].name, "c");

    /* Random pick among the best 2 never picks the worst. */
    unsigned seed = 42;
    p.host_subset_size = 2;
    for (int i = 0; i < 20; i++) {
        assert_int_equal(sched_select(&p, &rq, hosts, ext, 3, idx, scratch, &seed, &oc), 3);
        assert_string_not_equal(hosts[idx[0]].name, "b");
    }
}

/* ---- hints, migrations, audit ---- */

static void test_hints_record(void **state)
{
    fixture *f = *state;
    char g[CL_UUID_LEN], u[CL_UUID_LEN], body[512];
    cl_error err = {0};
    cl_sched_hints h;
    cl_server_group got;
    json_object *root;

    add_group(f->st, CL_GROUP_SOFT_ANTI_AFFINITY, 0, g);
    cl_uuid_new(u);
    snprintf(body, sizeof(body),
             "{\"server\": {\"name\": \"x\", \"availability_zone\": \"az2:h1\","
             " \"metadata\": {\"hw_architecture\": \"aarch64\"}},"
             " \"os:scheduler_hints\": {\"group\": \"%s\", \"different_host\": [\"a\", \"b\"],"
             " \"hypervisor_type\": \"xen\"}}", g);
    root = json_tokener_parse(body);
    assert_non_null(root);
    assert_int_equal(cl_store_placement_hints_record(f->st, u, root, &err), 0);
    json_object_put(root);
    assert_int_equal(cl_store_placement_hints_get(f->st, u, &h), 0);
    assert_string_equal(h.az, "az2");
    assert_string_equal(h.group, g);
    assert_string_equal(h.different_host, "a,b");
    assert_string_equal(h.hypervisor_type, "xen");
    assert_string_equal(h.architecture, "aarch64");
    assert_int_equal(cl_store_group_of(f->st, u, &got), 0);
    assert_int_equal(got.policy, CL_GROUP_SOFT_ANTI_AFFINITY);

    root = json_tokener_parse("{\"server\": {}, \"os:scheduler_hints\": {\"group\":"
                              " \"00000000-0000-4000-8000-000000000000\"}}");
    cl_uuid_new(u);
    assert_int_equal(cl_store_placement_hints_record(f->st, u, root, &err), -ENOENT);
    assert_non_null(strstr(err.message, "Invalid server group"));
    json_object_put(root);
}

static void test_migration_allocations(void **state)
{
    fixture *f = *state;
    char u[CL_UUID_LEN];
    cl_claim_result res;
    cl_migration m;
    cl_host h;

    add_host(f->st, "h0", 4, 1024);
    add_host(f->st, "h1", 4, 1024);
    add_instance(f->st, u);
    cl_claim_req req = {.instance_uuid = u, .candidates = HOSTS10, .ncandidates = 1};
    assert_int_equal(cl_store_claim_ex(f->st, &req, &res), 0);
    assert_int_equal(cl_store_migration_begin(f->st, u, "h1", "live-migration", &m), 0);
    /* Both halves held: the source by the migration, the destination by the instance. */
    assert_int_equal(cl_store_host_get(f->st, "h0", &h), 0);
    assert_int_equal(h.used_ram_mb, 512);
    assert_int_equal(cl_store_host_get(f->st, "h1", &h), 0);
    assert_int_equal(h.used_ram_mb, 512);
    assert_int_equal(cl_store_migration_begin(f->st, u, "h1", NULL, NULL), -EBUSY);
    assert_int_equal(cl_store_migration_finish(f->st, m.uuid, false), 0);
    assert_int_equal(cl_store_host_get(f->st, "h1", &h), 0);
    assert_int_equal(h.used_ram_mb, 0);
    assert_int_equal(cl_store_host_get(f->st, "h0", &h), 0);
    assert_int_equal(h.used_ram_mb, 512);

    assert_int_equal(cl_store_migration_begin(f->st, u, "h1", NULL, &m), 0);
    assert_int_equal(cl_store_migration_finish(f->st, m.uuid, true), 0);
    assert_int_equal(cl_store_host_get(f->st, "h0", &h), 0);
    assert_int_equal(h.used_ram_mb, 0);
    cl_instance inst;
    assert_int_equal(cl_store_instance_get(f->st, u, &inst), 0);
    assert_string_equal(inst.host, "h1");
}

static void test_audit(void **state)
{
    fixture *f = *state;
    char a[CL_UUID_LEN], b[CL_UUID_LEN], c[CL_UUID_LEN], sql[256];
    cl_claim_result res;
    cl_audit_item *items = NULL;
    size_t n = 0;

    add_host(f->st, "h0", 16, 16384);
    char *ids[] = {a, b, c};
    for (int i = 0; i < 3; i++) {
        add_instance(f->st, ids[i]);
        cl_claim_req req = {.instance_uuid = ids[i], .candidates = HOSTS10, .ncandidates = 1};
        assert_int_equal(cl_store_claim_ex(f->st, &req, &res), 0);
    }
    assert_int_equal(cl_store_placement_audit(f->st, false, &items, &n), 0);
    assert_int_equal(n, 0);
    free(items);
    items = NULL;

    /* Plant: a's allocation gone, b's resized, c deleted but its allocation kept. */
    snprintf(sql, sizeof(sql), "DELETE FROM allocations WHERE instance_uuid = '%s'", a);
    assert_int_equal(cl_db_exec(cl_store_db(f->st), sql), 0);
    snprintf(sql, sizeof(sql), "UPDATE allocations SET ram_mb = 9 WHERE instance_uuid = '%s'", b);
    assert_int_equal(cl_db_exec(cl_store_db(f->st), sql), 0);
    snprintf(sql, sizeof(sql), "UPDATE instances SET vm_state = 'deleted' WHERE uuid = '%s'", c);
    assert_int_equal(cl_db_exec(cl_store_db(f->st), sql), 0);

    assert_int_equal(cl_store_placement_audit(f->st, false, &items, &n), 0);
    assert_int_equal(n, 3);
    bool seen[CL_AUDIT_KIND_MAX] = {false};
    for (size_t i = 0; i < n; i++)
        seen[items[i].kind] = true;
    assert_true(seen[CL_AUDIT_MISSING_ALLOCATION] && seen[CL_AUDIT_WRONG_SIZE] &&
                seen[CL_AUDIT_ORPHAN_ALLOCATION]);
    free(items);
    items = NULL;
    assert_int_equal(cl_store_placement_audit(f->st, true, &items, &n), 0);
    assert_int_equal(n, 3);
    free(items);
    items = NULL;
    assert_int_equal(cl_store_placement_audit(f->st, false, &items, &n), 0);
    assert_int_equal(n, 0);
    free(items);
    assert_int_equal(query_int(f->st, "SELECT sum(ram_mb) FROM allocations"), 1024);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
        T(test_anti_affinity_parallel),
        T(test_affinity_parallel),
        T(test_max_server_per_host_and_cap),
        T(test_generation),
        cmocka_unit_test(test_filters_explain),
        cmocka_unit_test(test_weighers),
        T(test_hints_record),
        T(test_migration_allocations),
        T(test_audit),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
