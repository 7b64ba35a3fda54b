/*
 * test_driver.c - the libvirt driver against libvirt's test driver.
 *
 * test:///default is a built-in fake host (16 CPUs, one running domain "test") whose
 * state is shared by every connection of this process while one is open, which lets the
 * tests poke at domains behind the driver's back with a connection of their own.
 * test:///<tmp>/host.xml is a fake host described by a file this test writes
 * (8 CPUs / 16 GiB): capacity must report exactly that.
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
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "driver.h"
#include "util.h"

#define UUID1 "11111111-2222-4333-8444-555555555555"
#define UUID2 "99999999-2222-4333-8444-555555555555"

typedef struct fixture {
    char dir[64];
    agent_driver *drv;
    virConnectPtr raw;      /* the test's own view of test:///default */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    char ev_uuid[CL_UUID_LEN];
    cl_power_state ev_power;
    int nevents;
} fixture;

static void quiet(void *ud, virErrorPtr e)
{
    (void)ud;
    (void)e;
}

static void on_event(const char *uuid, cl_power_state power, void *ud)
{
    fixture *fx = ud;
    pthread_mutex_lock(&fx->lock);
    cl_strlcpy(fx->ev_uuid, uuid, sizeof(fx->ev_uuid));
    fx->ev_power = power;
    fx->nevents++;
    pthread_cond_broadcast(&fx->cond);
    pthread_mutex_unlock(&fx->lock);
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof(*fx));
    cl_error err = {0};
    snprintf(fx->dir, sizeof(fx->dir), "/tmp/nube-driver-XXXXXX");
    if (!mkdtemp(fx->dir))
        return -1;
    pthread_mutex_init(&fx->lock, NULL);
    pthread_cond_init(&fx->cond, NULL);
    agent_driver_opts o = {.uri = "test:///default", .virt_type = AGENT_VIRT_AUTO,
                           .instances_dir = fx->dir, .on_event = on_event, .ud = fx};
    if (agent_driver_open(&o, &fx->drv, &err) < 0) {
        fprintf(stderr, "open: %s\n", err.message);
        return -1;
    }
    virSetErrorFunc(NULL, quiet); /* after the driver's own (the test's raw calls) */
    fx->raw = virConnectOpen("test:///default");
    if (!fx->raw)
        return -1;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    /* Leave test:///default as found, whatever a failed test left behind. */
    agent_driver_destroy(fx->drv, UUID1, NULL);
    agent_driver_destroy(fx->drv, UUID2, NULL);
    virConnectClose(fx->raw);
    agent_driver_free(fx->drv);
    char path[128];
    snprintf(path, sizeof(path), "%s/host.xml", fx->dir); /* left by a failed test */
    unlink(path);
    pthread_mutex_destroy(&fx->lock);
    pthread_cond_destroy(&fx->cond);
    rmdir(fx->dir);
    free(fx);
    return 0;
}

static void make_spec(cl_msg_instance *m, const char *uuid, const char *name)
{
    memset(m, 0, sizeof(*m));
    cl_strlcpy(m->uuid, uuid, sizeof(m->uuid));
    cl_strlcpy(m->name, name, sizeof(m->name));
    cl_strlcpy(m->project_id, "p1", sizeof(m->project_id));
    cl_strlcpy(m->user_id, "u1", sizeof(m->user_id));
    cl_strlcpy(m->image_ref, "img-1", sizeof(m->image_ref));
    cl_strlcpy(m->flavor.id, "1", sizeof(m->flavor.id));
    cl_strlcpy(m->flavor.name, "m1.tiny", sizeof(m->flavor.name));
    m->flavor.vcpus = 1;
    m->flavor.ram_mb = 256;
    m->flavor.disk_gb = 1;
}

static size_t count_nube(agent_driver *drv, const char *uuid, cl_power_state *power)
{
    agent_domain_info *v = NULL;
    size_t n = 0, hits = 0;
    cl_error err = {0};
    assert_int_equal(agent_driver_list(drv, true, &v, &n, &err), 0);
    for (size_t i = 0; i < n; i++) {
        assert_true(v[i].nube);
        if (strcmp(v[i].uuid, uuid) == 0) {
            hits++;
            if (power)
                *power = v[i].power;
        }
    }
    free(v);
    return hits;
}

static void test_capacity_host_file(void **state)
{
    fixture *fx = *state;
    char path[128], uri[160];
    cl_error err = {0};
    agent_capacity cap;
    agent_driver *drv = NULL;

    snprintf(path, sizeof(path), "%s/host.xml", fx->dir);
    FILE *f = fopen(path, "we");
    assert_non_null(f);
    fputs("<node>\n  <cpu>\n    <mhz>2600</mhz><model>x86_64</model>\n"
          "    <nodes>1</nodes><sockets>1</sockets><cores>8</cores><threads>1</threads>"
          "<active>8</active>\n  </cpu>\n  <memory>16777216</memory>\n</node>\n", f);
    assert_int_equal(fclose(f), 0);
    snprintf(uri, sizeof(uri), "test://%s", path);

    agent_driver_opts o = {.uri = uri, .instances_dir = fx->dir};
    assert_int_equal(agent_driver_open(&o, &drv, &err), 0);
    assert_int_equal(agent_driver_hv(drv), AGENT_HV_TEST);
    assert_string_equal(agent_driver_hv_name(drv), "Test");
    assert_string_equal(agent_driver_uri(drv), uri);
    assert_true(agent_driver_alive(drv));
    assert_int_equal(agent_driver_capacity(drv, &cap, &err), 0);
    assert_int_equal(cap.vcpus, 8);
    assert_int_equal(cap.ram_mb, 16384);
    assert_true(cap.disk_gb > 0);

    /* A fresh fake host has no domains at all. */
    agent_domain_info *v = NULL;
    size_t n = 7;
    assert_int_equal(agent_driver_list(drv, false, &v, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_null(v);
    agent_driver_free(drv);
    assert_int_equal(unlink(path), 0);

    /* test:///default: 16 CPUs; instances_dir that does not exist yet still measures
     * the filesystem it will be on. */
    char missing[128];
    snprintf(missing, sizeof(missing), "%s/not/yet", fx->dir);
    agent_driver_opts o2 = {.uri = "test:///default", .instances_dir = missing};
    assert_int_equal(agent_driver_open(&o2, &drv, &err), 0);
    assert_int_equal(agent_driver_capacity(drv, &cap, &err), 0);
    assert_int_equal(cap.vcpus, 16);
    assert_true(cap.disk_gb > 0);
    agent_driver_free(drv);
}

static void test_open_bad_uri(void **state)
{
    (void)state;
    agent_driver *drv = NULL;
    cl_error err = {0};
    agent_driver_opts o = {.uri = "test:///nonexistent/host.xml", .instances_dir = "/tmp"};
    assert_true(agent_driver_open(&o, &drv, &err) < 0);
    assert_null(drv);
    assert_true(strlen(err.message) > 0);
}

static void test_spawn_idempotent(void **state)
{
    fixture *fx = *state;
    cl_msg_instance m;
    cl_error err = {0};
    cl_power_state p = CL_POWER_NOSTATE;

    make_spec(&m, UUID1, "vm1");
    assert_int_equal(agent_driver_state(fx->drv, UUID1, &p, &err), -ENOENT);
    assert_int_equal(agent_driver_spawn(fx->drv, &m, &err), 0);
    assert_int_equal(agent_driver_state(fx->drv, UUID1, &p, &err), 0);
    assert_int_equal(p, CL_POWER_RUNNING);

    /* The domain is really in libvirt, named after the uuid, with our metadata. */
    virDomainPtr d = virDomainLookupByUUIDString(fx->raw, UUID1);
    assert_non_null(d);
    assert_string_equal(virDomainGetName(d), "instance-" UUID1);
    assert_int_equal(virDomainIsActive(d), 1);
    assert_int_equal(virDomainIsPersistent(d), 1);
    char *md = virDomainGetMetadata(d, VIR_DOMAIN_METADATA_ELEMENT, NUBE_XMLNS, 0);
    assert_non_null(md);
    assert_non_null(strstr(md, UUID1));
    free(md);

    /* Twice: still one domain, still running. */
    assert_int_equal(agent_driver_spawn(fx->drv, &m, &err), 0);
    assert_int_equal(count_nube(fx->drv, UUID1, &p), 1);
    assert_int_equal(p, CL_POWER_RUNNING);

    /* Stopped behind our back: spawn starts it again; paused: spawn resumes it. */
    assert_int_equal(virDomainDestroy(d), 0);
    assert_int_equal(agent_driver_state(fx->drv, UUID1, &p, &err), 0);
    assert_int_equal(p, CL_POWER_SHUTDOWN);
    assert_int_equal(agent_driver_spawn(fx->drv, &m, &err), 0);
    assert_int_equal(virDomainIsActive(d), 1);
    assert_int_equal(virDomainSuspend(d), 0);
    assert_int_equal(agent_driver_state(fx->drv, UUID1, &p, &err), 0);
    assert_int_equal(p, CL_POWER_PAUSED);
    assert_int_equal(agent_driver_spawn(fx->drv, &m, &err), 0);
    assert_int_equal(agent_driver_state(fx->drv, UUID1, &p, &err), 0);
    assert_int_equal(p, CL_POWER_RUNNING);
    virDomainFree(d);
}

static void test_list_only_nube(void **state)
{
    fixture *fx = *state;
    cl_msg_instance m;
    cl_error err = {0};
    agent_domain_info *v = NULL;
    size_t n = 0;
    bool saw_test = false, saw_ours = false;

    make_spec(&m, UUID2, "vm2");
    assert_int_equal(agent_driver_spawn(fx->drv, &m, &err), 0);

    assert_int_equal(agent_driver_list(fx->drv, false, &v, &n, &err), 0);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(v[i].name, "test") == 0) {
            saw_test = true;
            assert_false(v[i].nube);
            assert_int_equal(v[i].power, CL_POWER_RUNNING);
        }
        if (strcmp(v[i].uuid, UUID2) == 0) {
            saw_ours = true;
            assert_true(v[i].nube);
            assert_string_equal(v[i].name, "instance-" UUID2);
        }
    }
    free(v);
    assert_true(saw_test);
    assert_true(saw_ours);

    assert_int_equal(agent_driver_list(fx->drv, true, &v, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].uuid, UUID2);
    free(v);

    /* The pre-existing domain is not ours: destroy refuses to touch it. */
    virDomainPtr t = virDomainLookupByName(fx->raw, "test");
    assert_non_null(t);
    char tuuid[VIR_UUID_STRING_BUFLEN];
    assert_int_equal(virDomainGetUUIDString(t, tuuid), 0);
    assert_int_equal(agent_driver_destroy(fx->drv, tuuid, &err), -EPERM);
    assert_int_equal(virDomainIsActive(t), 1);
    assert_int_equal(agent_driver_metadata(fx->drv, tuuid, &m, &err), -ENOENT);
    virDomainFree(t);
}

static void test_destroy(void **state)
{
    fixture *fx = *state;
    cl_msg_instance m;
    cl_error err = {0};
    cl_power_state p;

    make_spec(&m, UUID1, "vm1");
    assert_int_equal(agent_driver_spawn(fx->drv, &m, &err), 0);
    assert_int_equal(agent_driver_destroy(fx->drv, UUID1, &err), 0);
    assert_int_equal(agent_driver_state(fx->drv, UUID1, &p, &err), -ENOENT);
    assert_int_equal(count_nube(fx->drv, UUID1, NULL), 0);
    /* Really gone from libvirt, not just stopped. */
    assert_null(virDomainLookupByUUIDString(fx->raw, UUID1));

    /* Absent: fine, twice. A stopped (defined, inactive) domain: undefined too. */
    assert_int_equal(agent_driver_destroy(fx->drv, UUID1, &err), 0);
    assert_int_equal(agent_driver_destroy(fx->drv, UUID2, &err), 0);
    assert_int_equal(agent_driver_spawn(fx->drv, &m, &err), 0);
    virDomainPtr d = virDomainLookupByUUIDString(fx->raw, UUID1);
    assert_int_equal(virDomainDestroy(d), 0);
    virDomainFree(d);
    assert_int_equal(agent_driver_destroy(fx->drv, UUID1, &err), 0);
    assert_null(virDomainLookupByUUIDString(fx->raw, UUID1));

    /* Garbage uuid is refused before libvirt sees it. */
    assert_int_equal(agent_driver_destroy(fx->drv, "../../etc", &err), -EINVAL);
}

static void test_special_names(void **state)
{
    fixture *fx = *state;
    cl_msg_instance m, back;
    cl_error err = {0};

    make_spec(&m, UUID1, "a <b> & \"c\" 'd' </nube:name>");
    cl_strlcpy(m.project_id, "p&q", sizeof(m.project_id));
    cl_strlcpy(m.flavor.name, "fl'\"<>", sizeof(m.flavor.name));
    assert_int_equal(agent_driver_spawn(fx->drv, &m, &err), 0);
    assert_int_equal(agent_driver_metadata(fx->drv, UUID1, &back, &err), 0);
    assert_string_equal(back.uuid, UUID1);
    assert_string_equal(back.name, m.name);
    assert_string_equal(back.project_id, "p&q");
    assert_string_equal(back.user_id, "u1");
    assert_string_equal(back.image_ref, "img-1");
    assert_string_equal(back.flavor.name, "fl'\"<>");
    assert_int_equal(back.flavor.vcpus, 1);
    assert_int_equal(back.flavor.ram_mb, 256);
    assert_int_equal(agent_driver_metadata(fx->drv, UUID2, &back, &err), -ENOENT);
}

static void test_spawn_bad_spec(void **state)
{
    fixture *fx = *state;
    cl_msg_instance m;
    cl_error err = {0};
    make_spec(&m, UUID1, "vm1");
    m.flavor.ram_mb = 0;
    assert_int_equal(agent_driver_spawn(fx->drv, &m, &err), -EINVAL);
    assert_null(virDomainLookupByUUIDString(fx->raw, UUID1));
}

/* Wait (deadline 5 s) until an event for uuid with power p arrived. */
static bool wait_event(fixture *fx, const char *uuid, cl_power_state p)
{
    struct timespec ts;
    bool ok = false;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 5;
    pthread_mutex_lock(&fx->lock);
    for (;;) {
        if (fx->nevents > 0 && strcmp(fx->ev_uuid, uuid) == 0 && fx->ev_power == p) {
            ok = true;
            break;
        }
        if (pthread_cond_timedwait(&fx->cond, &fx->lock, &ts) != 0)
            break;
    }
    pthread_mutex_unlock(&fx->lock);
    return ok;
}

static void test_lifecycle_events(void **state)
{
    fixture *fx = *state;
    cl_msg_instance m;
    cl_error err = {0};

    make_spec(&m, UUID1, "vm1");
    assert_int_equal(agent_driver_spawn(fx->drv, &m, &err), 0);
    assert_true(wait_event(fx, UUID1, CL_POWER_RUNNING));

    virDomainPtr d = virDomainLookupByUUIDString(fx->raw, UUID1);
    assert_non_null(d);
    assert_int_equal(virDomainSuspend(d), 0);
    assert_true(wait_event(fx, UUID1, CL_POWER_PAUSED));
    assert_int_equal(virDomainDestroy(d), 0);
    assert_true(wait_event(fx, UUID1, CL_POWER_SHUTDOWN));
    virDomainFree(d);

    /* The foreign "test" domain produces no callback. */
    pthread_mutex_lock(&fx->lock);
    fx->nevents = 0;
    pthread_mutex_unlock(&fx->lock);
    virDomainPtr t = virDomainLookupByName(fx->raw, "test");
    assert_int_equal(virDomainSuspend(t), 0);
    assert_int_equal(virDomainResume(t), 0);
    /* Our own domain's event comes after the foreign ones (one event queue). */
    assert_int_equal(agent_driver_spawn(fx->drv, &m, &err), 0);
    assert_true(wait_event(fx, UUID1, CL_POWER_RUNNING));
    pthread_mutex_lock(&fx->lock);
    assert_int_equal(fx->nevents, 1);
    pthread_mutex_unlock(&fx->lock);
    virDomainFree(t);
}

/* host.register capabilities: the test driver's version and architecture. */
static void test_host_caps(void **state)
{
    fixture *fx = *state;
    agent_host_caps caps;
    cl_error err = {0};
    unsigned long want = 0;

    assert_int_equal(agent_driver_host_caps(fx->drv, &caps, &err), 0);
    assert_int_equal(virConnectGetVersion(fx->raw, &want), 0);
    assert_true(caps.hypervisor_version > 0);
    assert_int_equal(caps.hypervisor_version, (int64_t)want);
    assert_string_equal(caps.cpu_arch, "i686"); /* the test driver's fake host */
}

/* Live resize within the headroom a live_resize driver defines; beyond it -ERANGE and
 * nothing changes. */
static void test_live_resize(void **state)
{
    fixture *fx = *state;
    cl_error err = {0};
    cl_msg_instance m;
    agent_driver *drv = NULL;
    agent_driver_opts o = {.uri = "test:///default", .virt_type = AGENT_VIRT_AUTO,
                           .instances_dir = fx->dir, .live_resize = true};
    assert_int_equal(agent_driver_open(&o, &drv, &err), 0);

    make_spec(&m, UUID2, "grow");
    assert_int_equal(agent_driver_spawn(drv, &m, &err), 0);
    virDomainPtr d = virDomainLookupByUUIDString(fx->raw, UUID2);
    assert_non_null(d);
    virDomainInfo info;
    assert_int_equal(virDomainGetInfo(d, &info), 0);
    assert_int_equal(info.nrVirtCpu, 1);
    assert_int_equal(info.memory, 256 * 1024);
    assert_int_equal(info.maxMem, 4 * 256 * 1024); /* headroom: 4x the flavor */

    m.flavor.vcpus = 4;
    m.flavor.ram_mb = 768;
    cl_strlcpy(m.flavor.name, "m1.bigger", sizeof(m.flavor.name));
    if (agent_driver_live_resize(drv, &m, &err) != 0)
        fail_msg("live resize: %s", err.message);
    assert_int_equal(virDomainGetInfo(d, &info), 0);
    assert_int_equal(info.state, VIR_DOMAIN_RUNNING); /* never stopped */
    assert_int_equal(info.nrVirtCpu, 4);
    assert_int_equal(info.memory, 768 * 1024);
    /* The persistent definition and the metadata follow. */
    assert_int_equal(virDomainGetVcpusFlags(d, VIR_DOMAIN_AFFECT_CONFIG), 4);
    cl_msg_instance back;
    assert_int_equal(agent_driver_metadata(drv, UUID2, &back, &err), 0);
    assert_string_equal(back.flavor.name, "m1.bigger");
    assert_int_equal(back.flavor.ram_mb, 768);

    /* Beyond the maximums: refused, unchanged. */
    m.flavor.ram_mb = 4096;
    assert_int_equal(agent_driver_live_resize(drv, &m, &err), -ERANGE);
    assert_non_null(strstr(err.message, "maximum memory"));
    m.flavor.ram_mb = 768;
    m.flavor.vcpus = 4096;
    assert_int_equal(agent_driver_live_resize(drv, &m, &err), -ERANGE);
    assert_int_equal(virDomainGetInfo(d, &info), 0);
    assert_int_equal(info.nrVirtCpu, 4);

    /* A domain defined without headroom cannot grow live. */
    cl_msg_instance plain;
    make_spec(&plain, UUID1, "plain");
    assert_int_equal(agent_driver_spawn(fx->drv, &plain, &err), 0);
    plain.flavor.vcpus = 2;
    assert_int_equal(agent_driver_live_resize(fx->drv, &plain, &err), -ERANGE);
    /* ... but can shrink memory live (balloon). */
    plain.flavor.vcpus = 1;
    plain.flavor.ram_mb = 128;
    assert_int_equal(agent_driver_live_resize(fx->drv, &plain, &err), 0);

    make_spec(&m, "aaaaaaaa-2222-4333-8444-555555555555", "none");
    assert_int_equal(agent_driver_live_resize(drv, &m, &err), -ENOENT);
    virDomainFree(d);
    assert_int_equal(agent_driver_destroy(drv, UUID2, &err), 0);
    agent_driver_free(drv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_capacity_host_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_bad_uri, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spawn_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_only_nube, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_special_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spawn_bad_spec, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_host_caps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_live_resize, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
