/*
 * test_placement.c - the scheduler: placement policy (pure, on arrays of cl_host) and
 * one run of the real scheduler through sched_start().
 *
 * The pure tests pin the filters (state, each resource, ratios, reserved, usage), the
 * weigher's order (spread by free RAM, then fewest instances, then name) and the text a
 * user reads when nothing fits. The end-to-end test starts the scheduler on a temporary
 * controller DB and a free loopback port, plays an agent ("hostA") and nube-api with two
 * real DEALER sockets, and follows a server from schedule to ACTIVE to DELETED, plus a
 * server too large for any host to ERROR with its fault.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "bus.h"
#include "http.h"
#include "log.h"
#include "messages.h"
#include "model.h"
#include "scheduler/placement.h"
#include "scheduler/sched.h"
#include "store.h"
#include "util.h"

/* ---- pure placement ---- */

static cl_host mkhost(const char *name, int64_t vcpus, int64_t ram_mb, int64_t disk_gb)
{
    cl_host h = {0};

    cl_strlcpy(h.name, name, sizeof(h.name));
    cl_strlcpy(h.hypervisor_type, "QEMU", sizeof(h.hypervisor_type));
    h.vcpus = vcpus;
    h.ram_mb = ram_mb;
    h.disk_gb = disk_gb;
    h.cpu_ratio = h.ram_ratio = h.disk_ratio = 1.0;
    h.up = true;
    h.enabled = true;
    return h;
}

static cl_flavor mkflavor(const char *name, int64_t vcpus, int64_t ram_mb, int64_t disk_gb)
{
    cl_flavor f = {0};

    cl_strlcpy(f.id, "42", sizeof(f.id));
    cl_strlcpy(f.name, name, sizeof(f.name));
    f.vcpus = vcpus;
    f.ram_mb = ram_mb;
    f.disk_gb = disk_gb;
    f.is_public = true;
    return f;
}

static void test_filter_state(void **state)
{
    cl_flavor f = mkflavor("m1.tiny", 1, 512, 1);
    sched_need need = sched_need_of(&f);
    cl_host h = mkhost("a", 4, 4096, 40);

    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_OK);
    h.up = false;
    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_DOWN);
    h.up = true;
    h.enabled = false;
    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_DISABLED);
    assert_string_equal(sched_host_verdict_name(SCHED_HOST_DISABLED), "disabled");
}

static void test_filter_each_resource(void **state)
{
    cl_flavor f = mkflavor("m1.small", 2, 2048, 20);
    sched_need need = sched_need_of(&f);
    cl_host h;

    h = mkhost("a", 1, 4096, 40);
    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_NO_VCPUS);
    h = mkhost("a", 2, 2047, 40);
    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_NO_RAM);
    h = mkhost("a", 2, 2048, 19);
    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_NO_DISK);
    /* Exactly enough of everything fits. */
    h = mkhost("a", 2, 2048, 20);
    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_OK);

    /* Ephemeral disk counts against the host's disk too. */
    f.ephemeral_gb = 1;
    need = sched_need_of(&f);
    assert_int_equal(need.disk_gb, 21);
    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_NO_DISK);
    /* So does swap, rounded up to whole GB. */
    f.ephemeral_gb = 0;
    f.swap_mb = 1;
    assert_int_equal(sched_need_of(&f).disk_gb, 21);
    f.swap_mb = 2048;
    assert_int_equal(sched_need_of(&f).disk_gb, 22);
}

static void test_filter_usage_ratios_reserved(void **state)
{
    cl_flavor f = mkflavor("big", 8, 1024, 10);
    sched_need need = sched_need_of(&f);
    cl_host h = mkhost("a", 2, 2048, 100);

    /* 2 physical CPUs * 4.0 = 8 vCPUs. */
    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_NO_VCPUS);
    h.cpu_ratio = 4.0;
    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_OK);
    h.reserved_vcpus = 1;
    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_NO_VCPUS);
    h.reserved_vcpus = 0;

    /* Reserved RAM and used RAM both come off the top. */
    h.reserved_ram_mb = 512;
    h.used_ram_mb = 512;
    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_OK); /* 1024 left */
    h.used_ram_mb = 513;
    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_NO_RAM);
    h.ram_ratio = 1.5; /* 3072 - 512 - 513 */
    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_OK);

    h.used_disk_gb = 85;
    h.reserved_disk_gb = 5;
    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_OK); /* exactly 10 */
    h.reserved_disk_gb = 6;
    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_NO_DISK);
    h.disk_ratio = 2.0;
    assert_int_equal(sched_host_check(&h, &need), SCHED_HOST_OK);
}

static void test_candidates_order_spread(void **state)
{
    cl_flavor f = mkflavor("m1.tiny", 1, 512, 1);
    cl_host hosts[6];
    const cl_host *out[6];
    size_t n;

    hosts[0] = mkhost("small", 4, 4096, 100);
    hosts[1] = mkhost("busy", 8, 8192, 100);
    hosts[1].running_vms = 3;
    hosts[2] = mkhost("zeta", 8, 8192, 100);
    hosts[2].running_vms = 1;
    hosts[3] = mkhost("alpha", 8, 8192, 100);
    hosts[3].running_vms = 1;
    hosts[4] = mkhost("down", 64, 65536, 100);
    hosts[4].up = false;
    hosts[5] = mkhost("full", 64, 65536, 100);
    hosts[5].used_ram_mb = 65536;

    n = sched_placement_candidates(hosts, 6, &f, out);
    assert_int_equal(n, 4);
    /* Most free RAM first; equal RAM -> fewer instances; then name. */
    assert_string_equal(out[0]->name, "alpha");
    assert_string_equal(out[1]->name, "zeta");
    assert_string_equal(out[2]->name, "busy");
    assert_string_equal(out[3]->name, "small");
    /* Pointers borrow from the input array. */
    assert_ptr_equal(out[0], &hosts[3]);

    /* Spread: once alpha holds 4 GB more it drops behind the others. */
    hosts[3].used_ram_mb = 4096;
    n = sched_placement_candidates(hosts, 6, &f, out);
    assert_int_equal(n, 4);
    assert_string_equal(out[0]->name, "zeta");
    assert_string_equal(out[1]->name, "busy");
    assert_string_equal(out[2]->name, "small"); /* 4096 free, 0 vms beats alpha's 1 vm */
    assert_string_equal(out[3]->name, "alpha");

    assert_true(sched_host_compare(&hosts[2], &hosts[1]) < 0);
    assert_true(sched_host_compare(&hosts[1], &hosts[2]) > 0);
    assert_int_equal(sched_host_compare(&hosts[2], &hosts[2]), 0);

    assert_int_equal(sched_placement_candidates(NULL, 0, &f, out), 0);
}

static void test_explain_ram(void **state)
{
    cl_flavor f = mkflavor("m1.tiny", 1, 512, 1);
    cl_host hosts[2];
    char text[CL_FAULT_MAX];

    hosts[0] = mkhost("host1", 4, 2048, 100);
    hosts[0].used_ram_mb = 2048;
    hosts[1] = mkhost("host2", 4, 2048, 100);
    hosts[1].used_ram_mb = 2048;
    sched_placement_explain(hosts, 2, &f, text, sizeof(text));
    assert_string_equal(text, "No valid host was found. Flavor 'm1.tiny' needs 1 vCPU, 512 MB "
                              "RAM, 1 GB disk; 2 hosts up, the most free RAM is 0 MB on host1");

    /* 300 MB free on host2 is the best, and is named. */
    hosts[1].used_ram_mb = 1748;
    sched_placement_explain(hosts, 2, &f, text, sizeof(text));
    assert_non_null(strstr(text, "the most free RAM is 300 MB on host2"));
}

static void test_explain_other_resources_and_states(void **state)
{
    cl_flavor f = mkflavor("m1.large", 4, 8192, 80);
    cl_host hosts[4];
    char text[CL_FAULT_MAX];

    hosts[0] = mkhost("h1", 2, 16384, 40);
    hosts[1] = mkhost("h2", 64, 65536, 1000);
    hosts[1].up = false;
    hosts[2] = mkhost("h3", 64, 65536, 1000);
    hosts[2].enabled = false;
    hosts[3] = mkhost("h4", 64, 65536, 1000);
    hosts[3].up = false;
    sched_placement_explain(hosts, 4, &f, text, sizeof(text));
    assert_non_null(strstr(text, "needs 4 vCPUs, 8192 MB RAM, 80 GB disk"));
    assert_non_null(strstr(text, "; 1 host up, the most free RAM is 16384 MB on h1"));
    assert_non_null(strstr(text, "the most free vCPUs are 2 on h1"));
    assert_non_null(strstr(text, "the most free disk is 40 GB on h1"));
    assert_non_null(strstr(text, "; 2 hosts down, 1 host disabled"));

    /* No host up at all. */
    hosts[0].up = false;
    sched_placement_explain(hosts, 4, &f, text, sizeof(text));
    assert_non_null(strstr(text, "; 0 hosts up; 3 hosts down, 1 host disabled"));
    assert_null(strstr(text, "most free"));

    /* Nothing registered. */
    sched_placement_explain(NULL, 0, &f, text, sizeof(text));
    assert_non_null(strstr(text, "no compute host has registered"));

    /* Negative free RAM (ratio lowered under allocations) is shown as 0. */
    hosts[0] = mkhost("h1", 8, 1024, 100);
    hosts[0].used_ram_mb = 2048;
    sched_placement_explain(hosts, 1, &f, text, sizeof(text));
    assert_non_null(strstr(text, "the most free RAM is 0 MB on h1"));
    assert_null(strstr(text, "vCPUs are"));
}

static void test_explain_truncates(void **state)
{
    cl_flavor f = mkflavor("m1.tiny", 1, 512, 1);
    cl_host h = mkhost("host1", 0, 0, 0);
    char text[24];

    memset(text, 'x', sizeof(text));
    sched_placement_explain(&h, 1, &f, text, sizeof(text));
    assert_int_equal(strlen(text), sizeof(text) - 1);
    assert_memory_equal(text, "No valid host was found", 23);
    /* A name without a name uses the flavor id. */
    f.name[0] = '\0';
    char big[CL_FAULT_MAX];
    sched_placement_explain(&h, 1, &f, big, sizeof(big));
    assert_non_null(strstr(big, "Flavor '42' needs"));
}

/* ---- the real scheduler ---- */

#define WAIT_MS 8000

/* What the fake agent received, filled on its bus thread. */
typedef struct agent_inbox {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int spawns, destroys;
    cl_msg_instance spawned;
    char spawn_req[80];
    char destroyed[CL_UUID_LEN];
} agent_inbox;

static void agent_on_msg(cl_bus *bus, const cl_bus_msg *msg, void *ud)
{
    agent_inbox *in = ud;
    cl_error err = {0};

    pthread_mutex_lock(&in->lock);
    if (strcmp(msg->type, CL_MSG_INSTANCE_SPAWN) == 0) {
        if (cl_msg_spawn_decode(msg->body, &in->spawned, &err) == 0) {
            in->spawns++;
            cl_strlcpy(in->spawn_req, msg->req, sizeof(in->spawn_req));
        }
    } else if (strcmp(msg->type, CL_MSG_INSTANCE_DESTROY) == 0) {
        if (cl_msg_uuid_decode(msg->body, in->destroyed, &err) == 0)
            in->destroys++;
    }
    pthread_cond_broadcast(&in->cond);
    pthread_mutex_unlock(&in->lock);
}

/* Wait until *counter >= want (under in->lock) or the deadline passes. */
static bool inbox_wait(agent_inbox *in, const int *counter, int want)
{
    struct timespec ts;
    bool ok;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&in->lock);
    while (*counter < want) {
        if (pthread_cond_timedwait(&in->cond, &in->lock, &ts) == ETIMEDOUT)
            break;
    }
    ok = *counter >= want;
    pthread_mutex_unlock(&in->lock);
    return ok;
}

static void nap(void)
{
    struct timespec ts = {0, 10 * 1000 * 1000};

    nanosleep(&ts, NULL);
}

/* Poll the store until the instance reaches vm_state want (tests may poll). */
static bool wait_vm_state(cl_store *st, const char *uuid, cl_vm_state want, cl_instance *out)
{
    int64_t deadline = cl_mono_ms() + WAIT_MS;

    do {
        if (cl_store_instance_get(st, uuid, out) == 0 && out->vm_state == want)
            return true;
        nap();
    } while (cl_mono_ms() < deadline);
    return false;
}

/* Wait until the instance's power state is want (reports that keep vm_state change it). */
static bool wait_power(cl_store *st, const char *uuid, cl_power_state want, cl_instance *out)
{
    int64_t deadline = cl_mono_ms() + WAIT_MS;

    do {
        if (cl_store_instance_get(st, uuid, out) == 0 && out->power_state == want)
            return true;
        nap();
    } while (cl_mono_ms() < deadline);
    return false;
}

static bool wait_host(cl_store *st, const char *name, cl_host *out)
{
    int64_t deadline = cl_mono_ms() + WAIT_MS;

    do {
        if (cl_store_host_get(st, name, out) == 0 && out->up)
            return true;
        nap();
    } while (cl_mono_ms() < deadline);
    return false;
}

static uint16_t free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    uint16_t port;

    assert_true(fd >= 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static void rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[4096];

    if (!d)
        return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static void new_instance(cl_store *st, const cl_flavor *f, const char *name, cl_instance *out)
{
    cl_instance inst = {0};

    cl_uuid_new(inst.uuid);
    cl_strlcpy(inst.name, name, sizeof(inst.name));
    cl_strlcpy(inst.project_id, "5a0c5e2b9b6f4f3e8d1c2b3a4f5e6d7c", sizeof(inst.project_id));
    cl_strlcpy(inst.user_id, "0f1e2d3c4b5a49687766554433221100", sizeof(inst.user_id));
    cl_strlcpy(inst.image_ref, "cirros", sizeof(inst.image_ref));
    inst.flavor = *f;
    inst.vm_state = CL_VM_BUILDING;
    inst.task_state = CL_TASK_SCHEDULING;
    inst.power_state = CL_POWER_NOSTATE;
    cl_strlcpy(inst.request_id, "req-test-create", sizeof(inst.request_id));
    assert_int_equal(cl_store_instance_create(st, &inst), 0);
    *out = inst;
}

static void send_state(cl_bus *agent, const char *uuid, cl_vm_state vm, cl_power_state p)
{
    cl_msg_state ms = {0};

    cl_strlcpy(ms.instance_uuid, uuid, sizeof(ms.instance_uuid));
    cl_strlcpy(ms.host, "hostA", sizeof(ms.host));
    ms.vm_state = vm;
    ms.power_state = p;
    ms.task_state = CL_TASK_NONE;
    assert_int_equal(cl_bus_send(agent, NULL, CL_MSG_INSTANCE_STATE, NULL,
                                 cl_msg_state_encode(&ms), true, NULL), 0);
}

static void test_sched_end_to_end(void **state)
{
    char dir[] = "/tmp/nube-test-sched-XXXXXX";
    char dbpath[256], endpoint[64], portstr[16], url[128];
    sched_cfg cfg;
    sched *s = NULL;
    cl_store *st = NULL;
    cl_bus *agent = NULL, *api = NULL;
    cl_error err = {0};
    agent_inbox in = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    cl_flavor tiny, huge;
    cl_instance a, b, c, d, e, got;
    int ndown = 0;
    cl_host h;

    assert_non_null(mkdtemp(dir));
    snprintf(dbpath, sizeof(dbpath), "%s/controller.db", dir);
    snprintf(endpoint, sizeof(endpoint), "tcp://127.0.0.1:%u", free_port());
    snprintf(portstr, sizeof(portstr), "%u", free_port());

    memset(&cfg, 0, sizeof(cfg));
    assert_int_equal(cl_config_defaults(sched_cfg_keys, sched_cfg_nkeys, &cfg, &err), 0);
    assert_int_equal(cl_config_set(sched_cfg_keys, sched_cfg_nkeys, &cfg, "database",
                                   "connection", dbpath, &err), 0);
    assert_int_equal(cl_config_set(sched_cfg_keys, sched_cfg_nkeys, &cfg, "bus", "listen",
                                   endpoint, &err), 0);
    assert_int_equal(cl_config_set(sched_cfg_keys, sched_cfg_nkeys, &cfg, "http", "port",
                                   portstr, &err), 0);
    assert_int_equal(cl_config_set(sched_cfg_keys, sched_cfg_nkeys, &cfg, "scheduler",
                                   "check_interval_ms", "100", &err), 0);
    assert_int_equal(cl_config_set(sched_cfg_keys, sched_cfg_nkeys, &cfg, "bus",
                                   "resend_ms", "200", &err), 0);
    assert_int_equal(cfg.host_down_after_s, 30);
    assert_true(cfg.cpu_allocation_ratio > 3.9 && cfg.cpu_allocation_ratio < 4.1);

    assert_int_equal(sched_start(&cfg, &s, &err), 0);
    assert_int_equal(cl_store_open(dbpath, &st, &err), 0);

    cl_bus_opts ao = {.role = CL_BUS_DEALER, .endpoint = endpoint, .name = "hostA",
                      .resend_ms = 200, .on_msg = agent_on_msg, .ud = &in};
    assert_int_equal(cl_bus_new(&ao, &agent, &err), 0);
    cl_bus_opts po = {.role = CL_BUS_DEALER, .endpoint = endpoint, .name = "nube-api",
                      .resend_ms = 200};
    assert_int_equal(cl_bus_new(&po, &api, &err), 0);

    /* The agent registers: 2 CPUs (8 vCPUs at ratio 4.0), 4 GB RAM, 50 GB disk. */
    cl_msg_host mh = {.host = "hostA", .hypervisor_type = "QEMU",
                      .libvirt_uri = "qemu:///system", .vcpus = 2, .ram_mb = 4096,
                      .disk_gb = 50};
    assert_int_equal(cl_bus_send(agent, NULL, CL_MSG_HOST_REGISTER, NULL,
                                 cl_msg_host_encode(&mh, NULL, 0), true, NULL), 0);
    assert_true(wait_host(st, "hostA", &h));
    assert_int_equal(h.vcpus, 2);
    assert_true(h.cpu_ratio > 3.9 && h.cpu_ratio < 4.1);

    /* nube-api created a server and asks for it to be scheduled. */
    assert_int_equal(cl_store_flavor_get(st, "m1.tiny", &tiny), 0);
    new_instance(st, &tiny, "web-1", &a);
    assert_int_equal(cl_bus_send(api, NULL, CL_MSG_INSTANCE_SCHEDULE, "req-test-1",
                                 cl_msg_uuid_encode(a.uuid), true, NULL), 0);
    assert_true(inbox_wait(&in, &in.spawns, 1));
    pthread_mutex_lock(&in.lock);
    assert_string_equal(in.spawned.uuid, a.uuid);
    assert_string_equal(in.spawned.name, "web-1");
    assert_string_equal(in.spawned.flavor.name, "m1.tiny");
    assert_int_equal(in.spawned.flavor.ram_mb, 512);
    assert_string_equal(in.spawn_req, "req-test-1");
    pthread_mutex_unlock(&in.lock);
    assert_int_equal(cl_store_instance_get(st, a.uuid, &got), 0);
    assert_string_equal(got.host, "hostA");
    assert_int_equal(got.task_state, CL_TASK_SPAWNING);
    assert_int_equal(cl_store_host_get(st, "hostA", &h), 0);
    assert_int_equal(h.used_ram_mb, 512);

    /* A resent schedule neither claims twice nor loses the spawn. */
    assert_int_equal(cl_bus_send(api, NULL, CL_MSG_INSTANCE_SCHEDULE, "req-test-1",
                                 cl_msg_uuid_encode(a.uuid), true, NULL), 0);
    assert_true(inbox_wait(&in, &in.spawns, 2));
    assert_int_equal(cl_store_host_get(st, "hostA", &h), 0);
    assert_int_equal(h.used_ram_mb, 512);

    /* The agent reports the domain running. */
    send_state(agent, a.uuid, CL_VM_ACTIVE, CL_POWER_RUNNING);
    assert_true(wait_vm_state(st, a.uuid, CL_VM_ACTIVE, &got));
    assert_int_equal(got.power_state, CL_POWER_RUNNING);
    assert_int_equal(got.task_state, CL_TASK_NONE);
    assert_string_equal(cl_instance_status(got.vm_state, got.task_state), "ACTIVE");

    /* Too large for hostA: ERROR with a fault the user can act on. */
    huge = tiny;
    cl_strlcpy(huge.name, "m1.enormous", sizeof(huge.name));
    huge.ram_mb = 65536;
    new_instance(st, &huge, "db-1", &b);
    assert_int_equal(cl_bus_send(api, NULL, CL_MSG_INSTANCE_SCHEDULE, "req-test-2",
                                 cl_msg_uuid_encode(b.uuid), true, NULL), 0);
    assert_true(wait_vm_state(st, b.uuid, CL_VM_ERROR, &got));
    assert_int_equal(got.fault_code, 500);
    assert_non_null(strstr(got.fault, "No valid host was found."));
    assert_non_null(strstr(got.fault, "Flavor 'm1.enormous' needs 1 vCPU, 65536 MB RAM"));
    assert_non_null(strstr(got.fault, "1 host up, the most free RAM is 3584 MB on hostA"));
    assert_int_equal(got.host[0], '\0');

    /* /metrics counts one good claim and one no-valid-host. */
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/metrics", sched_http_port(s));
    assert_int_not_equal(sched_http_port(s), 0);
    cl_http_result res = {0};
    assert_int_equal(cl_http_request("GET", url, NULL, NULL, 0, 5000, &res, &err), 0);
    assert_int_equal(res.status, 200);
    assert_non_null(strstr(res.body, "nube_scheduler_claims_total{result=\"ok\"} 1\n"));
    assert_non_null(strstr(res.body, "nube_scheduler_claims_total{result=\"no_valid_host\"} 1\n"));
    assert_non_null(strstr(res.body, "nube_scheduler_hosts{state=\"up\"} 1\n"));
    cl_http_result_free(&res);

    /* Delete: the destroy goes to hostA; its "deleted" report finishes the job. */
    assert_int_equal(cl_bus_send(api, NULL, CL_MSG_INSTANCE_DELETE, "req-test-3",
                                 cl_msg_uuid_encode(a.uuid), true, NULL), 0);
    assert_true(inbox_wait(&in, &in.destroys, 1));
    pthread_mutex_lock(&in.lock);
    assert_string_equal(in.destroyed, a.uuid);
    pthread_mutex_unlock(&in.lock);
    send_state(agent, a.uuid, CL_VM_DELETED, CL_POWER_NOSTATE);
    assert_true(wait_vm_state(st, a.uuid, CL_VM_DELETED, &got));
    assert_int_equal(cl_store_host_get(st, "hostA", &h), 0);
    assert_int_equal(h.used_ram_mb, 0);

    /* Another server on hostA, then hostA goes silent and is marked down. */
    new_instance(st, &tiny, "web-2", &c);
    assert_int_equal(cl_bus_send(api, NULL, CL_MSG_INSTANCE_SCHEDULE, "req-test-4",
                                 cl_msg_uuid_encode(c.uuid), true, NULL), 0);
    assert_true(inbox_wait(&in, &in.spawns, 3));
    send_state(agent, c.uuid, CL_VM_ACTIVE, CL_POWER_RUNNING);
    assert_true(wait_vm_state(st, c.uuid, CL_VM_ACTIVE, &got));
    assert_int_equal(cl_store_host_mark_stale_down(st, cl_now_ms() + 1000, &ndown), 0);
    assert_int_equal(ndown, 1);

    /* Nothing new goes to a down host, and the fault says so. */
    new_instance(st, &tiny, "web-3", &d);
    assert_int_equal(cl_bus_send(api, NULL, CL_MSG_INSTANCE_SCHEDULE, "req-test-5",
                                 cl_msg_uuid_encode(d.uuid), true, NULL), 0);
    assert_true(wait_vm_state(st, d.uuid, CL_VM_ERROR, &got));
    assert_non_null(strstr(got.fault, "; 0 hosts up; 1 host down"));

    /* Local delete: done at once in the DB, the destroy still reaches the agent. */
    assert_int_equal(cl_bus_send(api, NULL, CL_MSG_INSTANCE_DELETE, "req-test-6",
                                 cl_msg_uuid_encode(c.uuid), true, NULL), 0);
    assert_true(wait_vm_state(st, c.uuid, CL_VM_DELETED, &got));
    assert_true(inbox_wait(&in, &in.destroys, 2));
    pthread_mutex_lock(&in.lock);
    assert_string_equal(in.destroyed, c.uuid);
    pthread_mutex_unlock(&in.lock);

    /* hostA comes back and re-registers, reporting the domain of the deleted server
     * (destroyed again: it must not come back) and one the DB has without a host yet
     * (adopted: allocation recorded, ACTIVE). */
    new_instance(st, &tiny, "adopted", &e);
    cl_msg_host_instance ri[2] = {{.power_state = CL_POWER_RUNNING},
                                  {.power_state = CL_POWER_RUNNING}};
    cl_strlcpy(ri[0].uuid, c.uuid, sizeof(ri[0].uuid));
    cl_strlcpy(ri[1].uuid, e.uuid, sizeof(ri[1].uuid));
    assert_int_equal(cl_bus_send(agent, NULL, CL_MSG_HOST_REGISTER, NULL,
                                 cl_msg_host_encode(&mh, ri, 2), true, NULL), 0);
    assert_true(inbox_wait(&in, &in.destroys, 3));
    assert_true(wait_vm_state(st, e.uuid, CL_VM_ACTIVE, &got));
    assert_string_equal(got.host, "hostA");
    assert_int_equal(got.power_state, CL_POWER_RUNNING);
    assert_int_equal(cl_store_host_get(st, "hostA", &h), 0);
    assert_true(h.up);
    assert_int_equal(h.used_ram_mb, 512);
    assert_int_equal(h.running_vms, 1);

    /* A resize waiting for confirm survives an agent restart: the re-registering agent
     * only says "running", and the server stays VERIFY_RESIZE. The power state recorded
     * before is shutdown so the test can see the register was processed. */
    assert_int_equal(cl_store_instance_set_state(st, e.uuid, CL_VM_RESIZED, CL_TASK_NONE,
                                                 CL_POWER_SHUTDOWN, NULL, 0), 0);
    assert_int_equal(cl_bus_send(agent, NULL, CL_MSG_HOST_REGISTER, NULL,
                                 cl_msg_host_encode(&mh, &ri[1], 1), true, NULL), 0);
    assert_true(wait_power(st, e.uuid, CL_POWER_RUNNING, &got));
    assert_int_equal(got.vm_state, CL_VM_RESIZED);
    assert_string_equal(cl_instance_status(got.vm_state, got.task_state), "VERIFY_RESIZE");
    /* ... and so does the agent's first periodic report after the restart ... */
    assert_int_equal(cl_store_instance_set_state(st, e.uuid, -1, -1, CL_POWER_SHUTDOWN,
                                                 NULL, 0), 0);
    send_state(agent, e.uuid, CL_VM_ACTIVE, CL_POWER_RUNNING);
    assert_true(wait_power(st, e.uuid, CL_POWER_RUNNING, &got));
    assert_int_equal(got.vm_state, CL_VM_RESIZED);
    /* ... while the same report ends a revert in flight (REVERT_RESIZE -> ACTIVE). */
    assert_int_equal(cl_store_instance_set_state(st, e.uuid, -1, CL_TASK_RESIZE_REVERTING,
                                                 -1, NULL, 0), 0);
    send_state(agent, e.uuid, CL_VM_ACTIVE, CL_POWER_RUNNING);
    assert_true(wait_vm_state(st, e.uuid, CL_VM_ACTIVE, &got));
    assert_int_equal(got.task_state, CL_TASK_NONE);
    /* A paused guest found at register follows its power state. */
    ri[1].power_state = CL_POWER_PAUSED;
    assert_int_equal(cl_bus_send(agent, NULL, CL_MSG_HOST_REGISTER, NULL,
                                 cl_msg_host_encode(&mh, &ri[1], 1), true, NULL), 0);
    assert_true(wait_vm_state(st, e.uuid, CL_VM_PAUSED, &got));
    assert_int_equal(got.power_state, CL_POWER_PAUSED);

    cl_bus_free(api);
    cl_bus_free(agent);
    sched_stop(s);
    cl_store_free(st);
    cl_config_free(sched_cfg_keys, sched_cfg_nkeys, &cfg);
    rm_tree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_filter_state),
        cmocka_unit_test(test_filter_each_resource),
        cmocka_unit_test(test_filter_usage_ratios_reserved),
        cmocka_unit_test(test_candidates_order_spread),
        cmocka_unit_test(test_explain_ram),
        cmocka_unit_test(test_explain_other_resources_and_states),
        cmocka_unit_test(test_explain_truncates),
        cmocka_unit_test(test_sched_end_to_end),
    };

    cl_log_init("test_placement", CL_LOG_WARN, false);
    cl_http_client_global_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
