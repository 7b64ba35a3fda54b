/*
 * test_store.c - the controller store (libcloud/store.c) on a real SQLite file in a
 * private temporary directory: seeded flavors, instance records and their states, the
 * audit trail, hosts and liveness, claims (placement order, skipping unusable hosts,
 * idempotence) and, above all, that concurrent claimers on separate connections never
 * overcommit a host.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "libcloud/store.h"
#include "libcloud/util.h"

typedef struct fixture {
    char dir[64];
    char path[128];
    cl_store *st;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/nube-test-store-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/controller.db", f->dir);
    cl_error err = {0};
    assert_int_equal(cl_store_open(f->path, &f->st, &err), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    cl_store_free(f->st);
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < CL_ARRAY_SIZE(suffixes); i++) {
        char p[160];
        snprintf(p, sizeof(p), "%s%s", f->path, suffixes[i]);
        unlink(p);
    }
    assert_int_equal(rmdir(f->dir), 0);
    free(f);
    return 0;
}

/* A new instance record as nube-api writes it: building/scheduling, flavor copied. */
static void make_instance(cl_store *st, cl_instance *inst, const char *project,
                          const char *flavor)
{
    memset(inst, 0, sizeof(*inst));
    cl_uuid_new(inst->uuid);
    snprintf(inst->name, sizeof(inst->name), "vm-%.8s", inst->uuid);
    cl_strlcpy(inst->project_id, project, sizeof(inst->project_id));
    cl_strlcpy(inst->user_id, "user1", sizeof(inst->user_id));
    cl_strlcpy(inst->image_ref, "img-cirros", sizeof(inst->image_ref));
    assert_int_equal(cl_store_flavor_get(st, flavor, &inst->flavor), 0);
    inst->vm_state = CL_VM_BUILDING;
    inst->task_state = CL_TASK_SCHEDULING;
    inst->power_state = CL_POWER_NOSTATE;
    snprintf(inst->request_id, sizeof(inst->request_id), "req-%s", inst->uuid);
}

static void add_instance(cl_store *st, cl_instance *inst, const char *project,
                         const char *flavor)
{
    make_instance(st, inst, project, flavor);
    assert_int_equal(cl_store_instance_create(st, inst), 0);
}

static void add_host(cl_store *st, const char *name, int64_t vcpus, int64_t ram_mb,
                     int64_t disk_gb, double cpu_ratio)
{
    cl_host h;
    memset(&h, 0, sizeof(h));
    cl_strlcpy(h.name, name, sizeof(h.name));
    cl_strlcpy(h.hypervisor_type, "QEMU", sizeof(h.hypervisor_type));
    cl_strlcpy(h.libvirt_uri, "qemu:///system", sizeof(h.libvirt_uri));
    h.vcpus = vcpus;
    h.ram_mb = ram_mb;
    h.disk_gb = disk_gb;
    h.cpu_ratio = cpu_ratio;
    h.ram_ratio = 1.0;
    h.disk_ratio = 1.0;
    assert_int_equal(cl_store_host_register(st, &h), 0);
}

static int64_t query_int(cl_store *st, const char *sql, const char *arg)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    assert_int_equal(cl_db_prepare(cl_store_db(st), sql, &s), 0);
    if (arg)
        assert_int_equal(cl_db_bind_text(s, 1, arg), 0);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    return sqlite3_column_int64(s, 0);
}

/* ---------------------------------------------------------------------------------- */

static void test_flavors(void **state)
{
    fixture *f = *state;
    cl_flavor *list = NULL;
    size_t n = 0;
    assert_int_equal(cl_store_flavor_list(f->st, &list, &n), 0);
    assert_int_equal(n, 5);
    static const struct {
        const char *id, *name;
        int64_t vcpus, ram, disk;
    } want[] = {{"1", "m1.tiny", 1, 512, 1},      {"2", "m1.small", 1, 2048, 20},
                {"3", "m1.medium", 2, 4096, 40},  {"4", "m1.large", 4, 8192, 80},
                {"5", "m1.xlarge", 8, 16384, 160}};
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(list[i].id, want[i].id);
        assert_string_equal(list[i].name, want[i].name);
        assert_int_equal(list[i].vcpus, want[i].vcpus);
        assert_int_equal(list[i].ram_mb, want[i].ram);
        assert_int_equal(list[i].disk_gb, want[i].disk);
        assert_true(list[i].is_public);
        assert_false(list[i].disabled);
    }
    free(list);

    cl_flavor fl;
    assert_int_equal(cl_store_flavor_get(f->st, "3", &fl), 0);
    assert_string_equal(fl.name, "m1.medium");
    assert_int_equal(cl_store_flavor_get(f->st, "m1.large", &fl), 0);
    assert_string_equal(fl.id, "4");
    assert_int_equal(cl_store_flavor_get(f->st, "m1.huge", &fl), -ENOENT);
    assert_string_equal(fl.id, "4"); /* untouched on failure */

    cl_flavor c = {.id = "10", .name = "c1.big", .vcpus = 16, .ram_mb = 1024, .disk_gb = 0,
                   .swap_mb = 512, .is_public = false};
    assert_int_equal(cl_store_flavor_create(f->st, &c), 0);
    assert_int_equal(cl_store_flavor_create(f->st, &c), -EEXIST);
    cl_flavor same_name = c;
    cl_strlcpy(same_name.id, "11", sizeof(same_name.id));
    assert_int_equal(cl_store_flavor_create(f->st, &same_name), -EEXIST);
    /* A flavor whose name is another flavor's id: lookups by id win. */
    cl_flavor tricky = {.id = "abc", .name = "2", .vcpus = 1, .ram_mb = 64, .disk_gb = 1};
    assert_int_equal(cl_store_flavor_create(f->st, &tricky), 0);
    assert_int_equal(cl_store_flavor_get(f->st, "2", &fl), 0);
    assert_string_equal(fl.name, "m1.small");
    cl_flavor bad = {.id = "x", .name = "bad", .vcpus = 0, .ram_mb = 64};
    assert_int_equal(cl_store_flavor_create(f->st, &bad), -EINVAL);

    assert_int_equal(cl_store_flavor_list(f->st, &list, &n), 0);
    assert_int_equal(n, 7);
    assert_string_equal(list[4].id, "5");
    assert_string_equal(list[5].id, "10"); /* numeric order, not "1" < "10" < "2" */
    assert_string_equal(list[6].id, "abc");
    assert_false(list[5].is_public);
    assert_int_equal(list[5].swap_mb, 512);
    free(list);

    /* Re-opening neither re-seeds nor loses anything. */
    cl_store_free(f->st);
    cl_error err = {0};
    assert_int_equal(cl_store_open(f->path, &f->st, &err), 0);
    assert_int_equal(query_int(f->st, "SELECT count(*) FROM flavors", NULL), 7);
    int v = 0;
    assert_int_equal(cl_db_user_version(cl_store_db(f->st), &v), 0);
    assert_int_equal(v, 5); /* every schema step of store_schema.h applied */
}

/* Position of uuid in the creation order made[0..n). */
static size_t created_index(const cl_instance *made, size_t n, const char *uuid)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(made[i].uuid, uuid) == 0)
            return i;
    fail_msg("instance %s was never created", uuid);
    return n;
}

/* True when a comes strictly before b in "newest first" order: later creation time,
 * and for the same millisecond the later insertion (made[] is in creation order). */
static bool newer_first(const cl_instance *made, size_t n, const cl_instance *a,
                        const cl_instance *b)
{
    if (a->created_ms != b->created_ms)
        return a->created_ms > b->created_ms;
    return created_index(made, n, a->uuid) > created_index(made, n, b->uuid);
}

static void test_instances(void **state)
{
    fixture *f = *state;
    cl_instance made[9];
    for (size_t i = 0; i < CL_ARRAY_SIZE(made); i++)
        add_instance(f->st, &made[i], i % 3 == 0 ? "projB" : "projA", "m1.small");

    cl_instance got;
    assert_int_equal(cl_store_instance_get(f->st, made[4].uuid, &got), 0);
    assert_string_equal(got.uuid, made[4].uuid);
    assert_string_equal(got.name, made[4].name);
    assert_string_equal(got.project_id, "projA");
    assert_string_equal(got.user_id, "user1");
    assert_string_equal(got.image_ref, "img-cirros");
    assert_string_equal(got.flavor.id, "2");
    assert_string_equal(got.flavor.name, "m1.small");
    assert_int_equal(got.flavor.ram_mb, 2048);
    assert_string_equal(got.host, "");
    assert_int_equal(got.vm_state, CL_VM_BUILDING);
    assert_int_equal(got.task_state, CL_TASK_SCHEDULING);
    assert_int_equal(got.power_state, CL_POWER_NOSTATE);
    assert_string_equal(got.request_id, made[4].request_id);
    assert_true(got.created_ms > 0);
    assert_int_equal(got.updated_ms, got.created_ms);
    assert_int_equal(got.launched_ms, 0);
    assert_int_equal(got.deleted_ms, 0);

    /* Audit trail: one open "create" action carrying the request id. */
    assert_int_equal(query_int(f->st,
                               "SELECT count(*) FROM instance_actions WHERE instance_uuid = ?"
                               " AND action = 'create' AND finish_ms = 0",
                               made[4].uuid),
                     1);

    assert_int_equal(cl_store_instance_create(f->st, &made[4]), -EEXIST);
    cl_instance bad = made[0];
    cl_strlcpy(bad.uuid, "not-a-uuid", sizeof(bad.uuid));
    assert_int_equal(cl_store_instance_create(f->st, &bad), -EINVAL);
    char unknown[CL_UUID_LEN];
    cl_uuid_new(unknown);
    assert_int_equal(cl_store_instance_get(f->st, unknown, &got), -ENOENT);

    /* Full list, newest first. */
    cl_instance *all = NULL;
    size_t nall = 0;
    assert_int_equal(cl_store_instance_list(f->st, NULL, &all, &nall), 0);
    assert_int_equal(nall, 9);
    for (size_t i = 1; i < nall; i++)
        assert_true(newer_first(made, CL_ARRAY_SIZE(made), &all[i - 1], &all[i]));

    /* Pages of 4 with markers reassemble the full list exactly. */
    size_t seen = 0, pages = 0;
    char marker[CL_UUID_LEN] = "";
    for (;;) {
        cl_instance_filter flt = {.limit = 4, .marker = marker[0] ? marker : NULL};
        cl_instance *page = NULL;
        size_t np = 0;
        assert_int_equal(cl_store_instance_list(f->st, &flt, &page, &np), 0);
        pages++;
        for (size_t i = 0; i < np; i++)
            assert_string_equal(page[i].uuid, all[seen + i].uuid);
        seen += np;
        if (np > 0)
            cl_strlcpy(marker, page[np - 1].uuid, sizeof(marker));
        free(page);
        if (np < 4)
            break;
    }
    assert_int_equal(seen, 9);
    assert_int_equal(pages, 3);

    cl_instance_filter bad_marker = {.marker = unknown};
    cl_instance *out = NULL;
    size_t nout = 0;
    assert_int_equal(cl_store_instance_list(f->st, &bad_marker, &out, &nout), -ENOENT);

    /* Project filter, with a limit. */
    cl_instance_filter pb = {.project_id = "projB"};
    assert_int_equal(cl_store_instance_list(f->st, &pb, &out, &nout), 0);
    assert_int_equal(nout, 3);
    for (size_t i = 0; i < nout; i++)
        assert_string_equal(out[i].project_id, "projB");
    free(out);
    pb.limit = 2;
    assert_int_equal(cl_store_instance_list(f->st, &pb, &out, &nout), 0);
    assert_int_equal(nout, 2);
    free(out);
    cl_instance_filter none = {.project_id = "nobody"};
    out = NULL;
    assert_int_equal(cl_store_instance_list(f->st, &none, &out, &nout), 0);
    assert_int_equal(nout, 0);
    free(out);

    int64_t cnt = -1;
    assert_int_equal(cl_store_instance_count(f->st, "projA", &cnt), 0);
    assert_int_equal(cnt, 6);

    /* Host filter and deleted instances. */
    add_host(f->st, "node1", 8, 16384, 200, 1.0);
    const char *cands[] = {"node1"};
    char host[CL_HOST_MAX];
    assert_int_equal(cl_store_claim(f->st, made[1].uuid, cands, 1, host), 0);
    cl_instance_filter byhost = {.host = "node1"};
    assert_int_equal(cl_store_instance_list(f->st, &byhost, &out, &nout), 0);
    assert_int_equal(nout, 1);
    assert_string_equal(out[0].uuid, made[1].uuid);
    free(out);

    assert_int_equal(cl_store_instance_mark_deleted(f->st, made[2].uuid), 0);
    assert_int_equal(cl_store_instance_list(f->st, NULL, &out, &nout), 0);
    assert_int_equal(nout, 8);
    free(out);
    cl_instance_filter incl = {.include_deleted = true};
    assert_int_equal(cl_store_instance_list(f->st, &incl, &out, &nout), 0);
    assert_int_equal(nout, 9);
    free(out);
    assert_int_equal(cl_store_instance_count(f->st, "projA", &cnt), 0);
    assert_int_equal(cnt, 5);
    /* Deleted instances are still readable. */
    assert_int_equal(cl_store_instance_get(f->st, made[2].uuid, &got), 0);
    assert_int_equal(got.vm_state, CL_VM_DELETED);
    assert_true(got.deleted_ms > 0);
    free(all);
}

static void test_states(void **state)
{
    fixture *f = *state;
    cl_instance a;
    add_instance(f->st, &a, "p", "m1.tiny");
    cl_instance got;

    /* Keep everything but the power state. */
    assert_int_equal(cl_store_instance_set_state(f->st, a.uuid, -1, -1, CL_POWER_RUNNING, NULL, 0),
                     0);
    assert_int_equal(cl_store_instance_get(f->st, a.uuid, &got), 0);
    assert_int_equal(got.vm_state, CL_VM_BUILDING);
    assert_int_equal(got.task_state, CL_TASK_SCHEDULING);
    assert_int_equal(got.power_state, CL_POWER_RUNNING);
    assert_int_equal(got.launched_ms, 0);

    assert_int_equal(cl_store_instance_set_state(f->st, a.uuid, CL_VM_ACTIVE, CL_TASK_NONE, -1,
                                                 NULL, 0),
                     0);
    assert_int_equal(cl_store_instance_get(f->st, a.uuid, &got), 0);
    assert_int_equal(got.vm_state, CL_VM_ACTIVE);
    assert_int_equal(got.task_state, CL_TASK_NONE);
    assert_true(got.launched_ms > 0);
    int64_t launched = got.launched_ms;
    /* The create action is finished once the server first becomes active. */
    assert_int_equal(query_int(f->st,
                               "SELECT count(*) FROM instance_actions WHERE instance_uuid = ?"
                               " AND action = 'create' AND result = 'Success' AND finish_ms > 0",
                               a.uuid),
                     1);

    /* Stop, start again: launched_ms stays the first launch. */
    assert_int_equal(cl_store_instance_set_state(f->st, a.uuid, CL_VM_STOPPED, -1,
                                                 CL_POWER_SHUTDOWN, NULL, 0),
                     0);
    assert_int_equal(cl_store_instance_set_state(f->st, a.uuid, CL_VM_ACTIVE, -1,
                                                 CL_POWER_RUNNING, NULL, 0),
                     0);
    assert_int_equal(cl_store_instance_get(f->st, a.uuid, &got), 0);
    assert_int_equal(got.launched_ms, launched);

    /* Fault set, kept (NULL), cleared (""). */
    assert_int_equal(cl_store_instance_set_state(f->st, a.uuid, -1, -1, -1, "disk wobble", 500),
                     0);
    assert_int_equal(cl_store_instance_get(f->st, a.uuid, &got), 0);
    assert_string_equal(got.fault, "disk wobble");
    assert_int_equal(got.fault_code, 500);
    assert_true(got.fault_at_ms > 0);
    assert_int_equal(cl_store_instance_set_state(f->st, a.uuid, -1, CL_TASK_REBOOTING, -1, NULL,
                                                 0),
                     0);
    assert_int_equal(cl_store_instance_get(f->st, a.uuid, &got), 0);
    assert_string_equal(got.fault, "disk wobble");
    assert_int_equal(got.task_state, CL_TASK_REBOOTING);
    assert_int_equal(cl_store_instance_set_state(f->st, a.uuid, -1, CL_TASK_NONE, -1, "", 0), 0);
    assert_int_equal(cl_store_instance_get(f->st, a.uuid, &got), 0);
    assert_string_equal(got.fault, "");
    assert_int_equal(got.fault_code, 0);

    assert_int_equal(cl_store_instance_set_state(f->st, a.uuid, 99, -1, -1, NULL, 0), -EINVAL);
    char unknown[CL_UUID_LEN];
    cl_uuid_new(unknown);
    assert_int_equal(cl_store_instance_set_state(f->st, unknown, CL_VM_ACTIVE, -1, -1, NULL, 0),
                     -ENOENT);

    /* Tasks: a delete in progress wins over any other task. */
    assert_int_equal(cl_store_instance_begin_task(f->st, a.uuid, CL_TASK_POWERING_OFF), 0);
    assert_int_equal(cl_store_instance_get(f->st, a.uuid, &got), 0);
    assert_int_equal(got.task_state, CL_TASK_POWERING_OFF);
    assert_int_equal(cl_store_instance_begin_task(f->st, a.uuid, CL_TASK_DELETING), 0);
    assert_int_equal(cl_store_instance_begin_task(f->st, a.uuid, CL_TASK_REBOOTING), -EBUSY);
    assert_int_equal(cl_store_instance_get(f->st, a.uuid, &got), 0);
    assert_int_equal(got.task_state, CL_TASK_DELETING);
    assert_int_equal(cl_store_instance_begin_task(f->st, unknown, CL_TASK_REBOOTING), -ENOENT);

    /* Once deleted: no more state changes or tasks; a repeated delete is harmless. */
    assert_int_equal(cl_store_instance_mark_deleted(f->st, a.uuid), 0);
    assert_int_equal(cl_store_instance_get(f->st, a.uuid, &got), 0);
    assert_int_equal(got.vm_state, CL_VM_DELETED);
    assert_int_equal(got.task_state, CL_TASK_NONE);
    int64_t deleted_ms = got.deleted_ms;
    assert_true(deleted_ms > 0);
    assert_int_equal(cl_store_instance_set_state(f->st, a.uuid, CL_VM_ACTIVE, -1, -1, NULL, 0),
                     -ENOENT);
    assert_int_equal(cl_store_instance_begin_task(f->st, a.uuid, CL_TASK_REBOOTING), -ENOENT);
    assert_int_equal(cl_store_instance_mark_deleted(f->st, a.uuid), 0);
    assert_int_equal(cl_store_instance_get(f->st, a.uuid, &got), 0);
    assert_int_equal(got.deleted_ms, deleted_ms);
    assert_int_equal(cl_store_instance_mark_deleted(f->st, unknown), -ENOENT);
    assert_int_equal(query_int(f->st,
                               "SELECT count(*) FROM instance_actions WHERE instance_uuid = ?"
                               " AND action = 'delete' AND result = 'Success'",
                               a.uuid),
                     1);
}

static void test_fail_and_delete_release(void **state)
{
    fixture *f = *state;
    add_host(f->st, "node1", 4, 8192, 100, 1.0);
    const char *cands[] = {"node1"};
    char host[CL_HOST_MAX];
    cl_host h;

    cl_instance a, b, c;
    add_instance(f->st, &a, "p", "m1.small");
    add_instance(f->st, &b, "p", "m1.medium");
    add_instance(f->st, &c, "p", "m1.tiny");
    assert_int_equal(cl_store_claim(f->st, a.uuid, cands, 1, host), 0);
    assert_int_equal(cl_store_claim(f->st, b.uuid, cands, 1, host), 0);
    assert_int_equal(cl_store_host_get(f->st, "node1", &h), 0);
    assert_int_equal(h.used_vcpus, 3);
    assert_int_equal(h.used_ram_mb, 2048 + 4096);
    assert_int_equal(h.used_disk_gb, 60);
    assert_int_equal(h.running_vms, 2);

    /* Failing releases a's allocation and records the fault. */
    assert_int_equal(cl_store_instance_fail(f->st, a.uuid, "No valid host was found.", 500), 0);
    cl_instance got;
    assert_int_equal(cl_store_instance_get(f->st, a.uuid, &got), 0);
    assert_int_equal(got.vm_state, CL_VM_ERROR);
    assert_int_equal(got.task_state, CL_TASK_NONE);
    assert_string_equal(got.fault, "No valid host was found.");
    assert_int_equal(got.fault_code, 500);
    assert_int_equal(cl_store_host_get(f->st, "node1", &h), 0);
    assert_int_equal(h.used_vcpus, 2);
    assert_int_equal(h.running_vms, 1);
    assert_int_equal(query_int(f->st,
                               "SELECT count(*) FROM instance_actions WHERE instance_uuid = ?"
                               " AND result = 'Error'",
                               a.uuid),
                     1);

    /* Deleting releases b's; the host is empty again. */
    assert_int_equal(cl_store_instance_mark_deleted(f->st, b.uuid), 0);
    assert_int_equal(cl_store_host_get(f->st, "node1", &h), 0);
    assert_int_equal(h.used_vcpus, 0);
    assert_int_equal(h.used_ram_mb, 0);
    assert_int_equal(h.used_disk_gb, 0);
    assert_int_equal(h.running_vms, 0);

    /* Reaching DELETED through set_state releases too. */
    assert_int_equal(cl_store_claim(f->st, c.uuid, cands, 1, host), 0);
    assert_int_equal(cl_store_instance_set_state(f->st, c.uuid, CL_VM_DELETED, -1, -1, NULL, 0),
                     0);
    assert_int_equal(cl_store_host_get(f->st, "node1", &h), 0);
    assert_int_equal(h.running_vms, 0);
    assert_int_equal(cl_store_instance_get(f->st, c.uuid, &got), 0);
    assert_true(got.deleted_ms > 0);

    char unknown[CL_UUID_LEN];
    cl_uuid_new(unknown);
    assert_int_equal(cl_store_instance_fail(f->st, unknown, "x", 500), -ENOENT);

    /* A failed server is not placed again by a resent schedule request. */
    assert_int_equal(cl_store_claim(f->st, a.uuid, cands, 1, host), -ENOENT);
    assert_int_equal(cl_store_host_get(f->st, "node1", &h), 0);
    assert_int_equal(h.running_vms, 0);

    /* Failing while a delete is in progress keeps the DELETING task. */
    cl_instance d;
    add_instance(f->st, &d, "p", "m1.tiny");
    assert_int_equal(cl_store_instance_begin_task(f->st, d.uuid, CL_TASK_DELETING), 0);
    assert_int_equal(cl_store_instance_fail(f->st, d.uuid, "boom", 500), 0);
    assert_int_equal(cl_store_instance_get(f->st, d.uuid, &got), 0);
    assert_int_equal(got.vm_state, CL_VM_ERROR);
    assert_int_equal(got.task_state, CL_TASK_DELETING);
}

static void test_hosts(void **state)
{
    fixture *f = *state;
    add_host(f->st, "zeta", 4, 4096, 50, 4.0);
    add_host(f->st, "alpha", 8, 8192, 100, 2.0);

    cl_host *list = NULL;
    size_t n = 0;
    assert_int_equal(cl_store_host_list(f->st, &list, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(list[0].name, "alpha");
    assert_string_equal(list[1].name, "zeta");
    assert_true(list[0].up);
    assert_true(list[0].enabled);
    assert_string_equal(list[0].hypervisor_type, "QEMU");
    assert_string_equal(list[0].libvirt_uri, "qemu:///system");
    assert_true(list[1].last_seen_ms > 0);
    assert_true(list[1].created_ms > 0);
    assert_true(list[0].id != list[1].id);
    int64_t zeta_id = list[1].id;
    free(list);

    /* Re-registering updates what the agent reports, keeps the operator's ratio. */
    cl_host h;
    memset(&h, 0, sizeof(h));
    cl_strlcpy(h.name, "zeta", sizeof(h.name));
    h.vcpus = 6;
    h.ram_mb = 6144;
    h.disk_gb = 60;
    h.cpu_ratio = 16.0;
    assert_int_equal(cl_store_host_register(f->st, &h), 0);
    assert_int_equal(cl_store_host_get(f->st, "zeta", &h), 0);
    assert_int_equal(h.id, zeta_id);
    assert_int_equal(h.vcpus, 6);
    assert_int_equal(h.ram_mb, 6144);
    assert_true(h.cpu_ratio == 4.0);
    assert_int_equal(cl_store_host_get(f->st, "nope", &h), -ENOENT);

    /* Heartbeats: 0 keeps totals, >0 replaces them. */
    assert_int_equal(cl_store_host_heartbeat(f->st, "zeta", 0, 0, 0), 0);
    assert_int_equal(cl_store_host_get(f->st, "zeta", &h), 0);
    assert_int_equal(h.vcpus, 6);
    assert_int_equal(cl_store_host_heartbeat(f->st, "zeta", 2, 1024, 10), 0);
    assert_int_equal(cl_store_host_get(f->st, "zeta", &h), 0);
    assert_int_equal(h.vcpus, 2);
    assert_int_equal(h.ram_mb, 1024);
    assert_int_equal(h.disk_gb, 10);
    assert_int_equal(cl_store_host_heartbeat(f->st, "nope", 1, 1, 1), -ENOENT);

    /* Liveness: a cutoff in the past marks nothing, one in the future marks both. */
    int nd = -1;
    assert_int_equal(cl_store_host_mark_stale_down(f->st, cl_now_ms() - 60000, &nd), 0);
    assert_int_equal(nd, 0);
    assert_int_equal(cl_store_host_mark_stale_down(f->st, cl_now_ms() + 60000, &nd), 0);
    assert_int_equal(nd, 2);
    assert_int_equal(cl_store_host_mark_stale_down(f->st, cl_now_ms() + 60000, &nd), 0);
    assert_int_equal(nd, 0); /* only newly down hosts count */
    assert_int_equal(cl_store_host_get(f->st, "alpha", &h), 0);
    assert_false(h.up);
    assert_int_equal(cl_store_host_heartbeat(f->st, "alpha", 0, 0, 0), 0);
    assert_int_equal(cl_store_host_get(f->st, "alpha", &h), 0);
    assert_true(h.up);

    assert_int_equal(cl_store_host_set_enabled(f->st, "alpha", false), 0);
    assert_int_equal(cl_store_host_get(f->st, "alpha", &h), 0);
    assert_false(h.enabled);
    /* Re-registration does not re-enable a host the operator disabled. */
    add_host(f->st, "alpha", 8, 8192, 100, 2.0);
    assert_int_equal(cl_store_host_get(f->st, "alpha", &h), 0);
    assert_false(h.enabled);
    assert_int_equal(cl_store_host_set_enabled(f->st, "nope", true), -ENOENT);

    cl_host noname;
    memset(&noname, 0, sizeof(noname));
    assert_int_equal(cl_store_host_register(f->st, &noname), -EINVAL);
}

static void test_claim(void **state)
{
    fixture *f = *state;
    add_host(f->st, "down", 16, 32768, 500, 1.0);
    add_host(f->st, "disabled", 16, 32768, 500, 1.0);
    add_host(f->st, "full", 1, 1024, 10, 1.0);
    add_host(f->st, "good1", 4, 8192, 100, 1.0);
    add_host(f->st, "good2", 4, 8192, 100, 1.0);
    int nd = 0;
    assert_int_equal(cl_store_host_mark_stale_down(f->st, cl_now_ms() + 60000, &nd), 0);
    for (const char *const *p = (const char *const[]){"disabled", "full", "good1", "good2", NULL};
         *p; p++)
        assert_int_equal(cl_store_host_heartbeat(f->st, *p, 0, 0, 0), 0);
    assert_int_equal(cl_store_host_set_enabled(f->st, "disabled", false), 0);

    cl_instance a;
    add_instance(f->st, &a, "p", "m1.small"); /* 1 vcpu, 2048 MB, 20 GB */
    const char *cands[] = {"down", "disabled", "ghost", "full", "good1", "good2"};
    char host[CL_HOST_MAX] = "";
    assert_int_equal(cl_store_claim(f->st, a.uuid, cands, CL_ARRAY_SIZE(cands), host), 0);
    assert_string_equal(host, "good1");
    cl_instance got;
    assert_int_equal(cl_store_instance_get(f->st, a.uuid, &got), 0);
    assert_string_equal(got.host, "good1");
    assert_int_equal(got.task_state, CL_TASK_SPAWNING);

    /* Idempotent: same answer, no second allocation, even with other candidates. */
    const char *other[] = {"good2"};
    memset(host, 0, sizeof(host));
    assert_int_equal(cl_store_claim(f->st, a.uuid, other, 1, host), 0);
    assert_string_equal(host, "good1");
    cl_host h;
    assert_int_equal(cl_store_host_get(f->st, "good1", &h), 0);
    assert_int_equal(h.running_vms, 1);
    assert_int_equal(h.used_vcpus, 1);
    assert_int_equal(cl_store_host_get(f->st, "good2", &h), 0);
    assert_int_equal(h.running_vms, 0);

    /* Fill good1 with xlarge? It does not fit (8 vcpus > 4): goes nowhere -> ENOSPC,
     * nothing written. */
    cl_instance big;
    add_instance(f->st, &big, "p", "m1.xlarge");
    cl_strlcpy(host, "unchanged", sizeof(host));
    assert_int_equal(cl_store_claim(f->st, big.uuid, cands, CL_ARRAY_SIZE(cands), host),
                     -ENOSPC);
    assert_string_equal(host, "unchanged");
    assert_int_equal(cl_store_instance_get(f->st, big.uuid, &got), 0);
    assert_string_equal(got.host, "");
    assert_int_equal(got.task_state, CL_TASK_SCHEDULING);
    assert_int_equal(query_int(f->st, "SELECT count(*) FROM allocations", NULL), 1);
    assert_int_equal(cl_store_claim(f->st, big.uuid, NULL, 0, host), -ENOSPC);

    /* good1 has 4-1=3 vcpus left: three more m1.small fill it, the fourth lands on good2. */
    for (int i = 0; i < 4; i++) {
        cl_instance s;
        add_instance(f->st, &s, "p", "m1.small");
        assert_int_equal(cl_store_claim(f->st, s.uuid, cands, CL_ARRAY_SIZE(cands), host), 0);
        assert_string_equal(host, i < 3 ? "good1" : "good2");
    }
    assert_int_equal(cl_store_host_get(f->st, "good1", &h), 0);
    assert_int_equal(h.used_vcpus, 4);
    assert_int_equal(cl_host_free_vcpus(&h), 0);

    /* Reserved capacity counts: a host whose memory is all reserved takes nothing. */
    cl_host r;
    memset(&r, 0, sizeof(r));
    cl_strlcpy(r.name, "reserved", sizeof(r.name));
    r.vcpus = 8;
    r.ram_mb = 4096;
    r.disk_gb = 100;
    r.cpu_ratio = r.ram_ratio = r.disk_ratio = 1.0;
    r.reserved_ram_mb = 4096;
    assert_int_equal(cl_store_host_register(f->st, &r), 0);
    cl_instance t;
    add_instance(f->st, &t, "p", "m1.tiny");
    const char *only_reserved[] = {"reserved"};
    assert_int_equal(cl_store_claim(f->st, t.uuid, only_reserved, 1, host), -ENOSPC);

    /* Unknown, deleting and deleted instances. */
    char unknown[CL_UUID_LEN];
    cl_uuid_new(unknown);
    assert_int_equal(cl_store_claim(f->st, unknown, cands, CL_ARRAY_SIZE(cands), host), -ENOENT);
    assert_int_equal(cl_store_instance_begin_task(f->st, t.uuid, CL_TASK_DELETING), 0);
    assert_int_equal(cl_store_claim(f->st, t.uuid, other, 1, host), -EBUSY);
    assert_int_equal(cl_store_instance_mark_deleted(f->st, t.uuid), 0);
    assert_int_equal(cl_store_claim(f->st, t.uuid, other, 1, host), -ENOENT);
}

static void test_allocation_ensure_release(void **state)
{
    fixture *f = *state;
    add_host(f->st, "n1", 4, 8192, 100, 1.0);
    add_host(f->st, "n2", 4, 8192, 100, 1.0);
    cl_instance a;
    add_instance(f->st, &a, "p", "m1.medium");
    cl_host h;

    assert_int_equal(cl_store_allocation_ensure(f->st, a.uuid, "n1"), 0);
    assert_int_equal(cl_store_allocation_ensure(f->st, a.uuid, "n1"), 0);
    assert_int_equal(cl_store_host_get(f->st, "n1", &h), 0);
    assert_int_equal(h.running_vms, 1);
    assert_int_equal(h.used_vcpus, 2);
    cl_instance got;
    assert_int_equal(cl_store_instance_get(f->st, a.uuid, &got), 0);
    assert_string_equal(got.host, "n1");

    /* The agent on n2 reports the domain: the record follows it. */
    assert_int_equal(cl_store_allocation_ensure(f->st, a.uuid, "n2"), 0);
    assert_int_equal(cl_store_host_get(f->st, "n1", &h), 0);
    assert_int_equal(h.running_vms, 0);
    assert_int_equal(cl_store_host_get(f->st, "n2", &h), 0);
    assert_int_equal(h.running_vms, 1);
    assert_int_equal(cl_store_allocation_ensure(f->st, a.uuid, "ghost"), -ENOENT);

    assert_int_equal(cl_store_allocation_release(f->st, a.uuid), 0);
    assert_int_equal(cl_store_allocation_release(f->st, a.uuid), 0);
    assert_int_equal(cl_store_host_get(f->st, "n2", &h), 0);
    assert_int_equal(h.running_vms, 0);
    assert_int_equal(h.used_ram_mb, 0);
}

/* ---------------------------------------------------------------------------------- */
/* Concurrency: claimers on separate connections must never overcommit.                */

#define CONC_THREADS 5
#define CONC_PER_THREAD 10
#define HOST_RAM 7680 /* room for exactly 15 m1.tiny (512 MB) */

typedef struct conc_worker {
    const char *path;
    char uuids[CONC_PER_THREAD][CL_UUID_LEN];
    int ok, nospc, other;
} conc_worker;

typedef struct conc_monitor {
    const char *path;
    atomic_bool stop;
    int violations;
    int samples;
} conc_monitor;

static void *conc_claimer(void *arg)
{
    conc_worker *w = arg;
    cl_error err = {0};
    cl_store *st = NULL;
    if (cl_store_open(w->path, &st, &err) < 0) {
        w->other = CONC_PER_THREAD;
        return NULL;
    }
    const char *cands[] = {"hostA", "hostB"};
    for (int i = 0; i < CONC_PER_THREAD; i++) {
        char host[CL_HOST_MAX];
        int r = cl_store_claim(st, w->uuids[i], cands, 2, host);
        if (r == 0)
            w->ok++;
        else if (r == -ENOSPC)
            w->nospc++;
        else
            w->other++;
    }
    cl_store_free(st);
    return NULL;
}

/* Reads committed usage while the claimers run: no snapshot may show a host over. */
static void *conc_watch(void *arg)
{
    conc_monitor *m = arg;
    cl_error err = {0};
    cl_store *st = NULL;
    if (cl_store_open(m->path, &st, &err) < 0) {
        m->violations++;
        return NULL;
    }
    while (!atomic_load(&m->stop)) {
        cl_host *hosts = NULL;
        size_t n = 0;
        if (cl_store_host_list(st, &hosts, &n) == 0) {
            for (size_t i = 0; i < n; i++)
                if (hosts[i].used_ram_mb > HOST_RAM || cl_host_free_vcpus(&hosts[i]) < 0)
                    m->violations++;
            m->samples++;
            free(hosts);
        }
    }
    cl_store_free(st);
    return NULL;
}

static void test_concurrent_claims(void **state)
{
    fixture *f = *state;
    add_host(f->st, "hostA", 4, HOST_RAM, 100, 4.0);
    add_host(f->st, "hostB", 4, HOST_RAM, 100, 4.0);

    static conc_worker workers[CONC_THREADS];
    memset(workers, 0, sizeof(workers));
    for (int t = 0; t < CONC_THREADS; t++) {
        workers[t].path = f->path;
        for (int i = 0; i < CONC_PER_THREAD; i++) {
            cl_instance inst;
            add_instance(f->st, &inst, "p", "m1.tiny");
            cl_strlcpy(workers[t].uuids[i], inst.uuid, CL_UUID_LEN);
        }
    }

    conc_monitor mon = {.path = f->path};
    atomic_init(&mon.stop, false);
    pthread_t watcher, th[CONC_THREADS];
    assert_int_equal(pthread_create(&watcher, NULL, conc_watch, &mon), 0);
    for (int t = 0; t < CONC_THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, conc_claimer, &workers[t]), 0);
    int ok = 0, nospc = 0, other = 0;
    for (int t = 0; t < CONC_THREADS; t++) {
        assert_int_equal(pthread_join(th[t], NULL), 0);
        ok += workers[t].ok;
        nospc += workers[t].nospc;
        other += workers[t].other;
    }
    atomic_store(&mon.stop, true);
    assert_int_equal(pthread_join(watcher, NULL), 0);

    assert_int_equal(other, 0);
    assert_int_equal(ok, 30);
    assert_int_equal(nospc, 20);
    assert_int_equal(mon.violations, 0);
    assert_true(mon.samples > 0);

    cl_host h;
    for (const char *const *p = (const char *const[]){"hostA", "hostB", NULL}; *p; p++) {
        assert_int_equal(cl_store_host_get(f->st, *p, &h), 0);
        assert_int_equal(h.running_vms, 15);
        assert_int_equal(h.used_ram_mb, HOST_RAM);
        assert_int_equal(h.used_vcpus, 15);
        assert_true(cl_host_free_ram_mb(&h) == 0);
    }
    /* Cross-check the aggregate against the raw rows and the instances' hosts. */
    assert_int_equal(query_int(f->st, "SELECT count(*) FROM allocations", NULL), 30);
    assert_int_equal(query_int(f->st,
                               "SELECT count(*) FROM instances WHERE host <> ''"
                               " AND task_state = 'spawning'",
                               NULL),
                     30);
    assert_int_equal(query_int(f->st,
                               "SELECT max(s) FROM (SELECT sum(ram_mb) AS s FROM allocations"
                               " GROUP BY host)",
                               NULL),
                     HOST_RAM);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_flavors),
        T(test_instances),
        T(test_states),
        T(test_fail_and_delete_release),
        T(test_hosts),
        T(test_claim),
        T(test_allocation_ensure_release),
        T(test_concurrent_claims),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
