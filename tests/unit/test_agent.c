/*
 * test_agent.c - nube-agent end to end on libvirt's test driver: a real agent (agent.h)
 * talks over a real ZeroMQ bus to this test, which plays the scheduler with a ROUTER of
 * its own, and serves its console over real HTTP on loopback.
 *
 * What is checked: host.register announces the agent's HTTP URL; a spawn ends in an
 * instance.state active; every server action (stop, start, pause, unpause, suspend,
 * resume, hard and soft reboot, resize, revert) changes the test driver's domain and is
 * reported with the vm_state Nova would show; a resize redefines the domain with the new
 * flavor; the console endpoint returns the tail of console.log by lines; an action for an
 * unknown instance is ignored.
 */
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
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <libvirt/libvirt.h>
#include <sqlite3.h>

#include "agent.h"
#include "domain_xml.h"
#include "log.h"
#include "bus.h"
#include "http.h"
#include "json.h"
#include "messages.h"
#include "usage_msg.h"
#include "util.h"

#define UUID1 "6a1e4b0c-2f3d-4e5f-8a9b-0c1d2e3f4a5b"
#define MAXMSG 256

typedef struct seen {
    char type[64];
    json_object *body;
} seen;

typedef struct fixture {
    char dir[64];
    char inst[128];
    char endpoint[64];
    char billing_ep[64];
    cl_bus *sched;
    cl_bus *billing;
    agent *a;
    agent_cfg cfg;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    seen msgs[MAXMSG];
    size_t n;
} fixture;

static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
        return -1;
    close(fd);
    return ntohs(sa.sin_port);
}

static void on_msg(cl_bus *bus, const cl_bus_msg *msg, void *ud)
{
    fixture *fx = ud;
    (void)bus;
    pthread_mutex_lock(&fx->lock);
    if (fx->n < MAXMSG) {
        cl_strlcpy(fx->msgs[fx->n].type, msg->type, sizeof(fx->msgs[fx->n].type));
        fx->msgs[fx->n].body = json_object_get(msg->body);
        fx->n++;
    }
    pthread_cond_broadcast(&fx->cond);
    pthread_mutex_unlock(&fx->lock);
}

/* Wait (5 s deadline) for a message of type after index *from; returns its body (owned by
 * the fixture) and moves *from past it. For instance.state, vm (if not NULL) must match. */
static json_object *wait_msg(fixture *fx, size_t *from, const char *type, const char *vm)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 5;
    json_object *found = NULL;
    pthread_mutex_lock(&fx->lock);
    for (;;) {
        for (; *from < fx->n && !found; (*from)++) {
            seen *m = &fx->msgs[*from];
            if (strcmp(m->type, type) != 0)
                continue;
            const char *s = NULL;
            if (vm && (cl_json_get_str(m->body, "vm_state", false, &s, NULL) < 0 || !s ||
                       strcmp(s, vm) != 0))
                continue;
            found = m->body;
        }
        if (found || pthread_cond_timedwait(&fx->cond, &fx->lock, &dl) != 0)
            break;
    }
    pthread_mutex_unlock(&fx->lock);
    if (!found)
        fprintf(stderr, "timed out waiting for %s %s\n", type, vm ? vm : "");
    return found;
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof(*fx));
    cl_error err = {0};
    if (!fx)
        return -1;
    cl_log_init("test_agent", CL_LOG_WARN, false);
    snprintf(fx->dir, sizeof(fx->dir), "/tmp/nube-agent-XXXXXX");
    if (!mkdtemp(fx->dir))
        return -1;
    snprintf(fx->inst, sizeof(fx->inst), "%s/inst", fx->dir);
    mkdir(fx->inst, 0755);
    pthread_mutex_init(&fx->lock, NULL);
    pthread_cond_init(&fx->cond, NULL);
    snprintf(fx->endpoint, sizeof(fx->endpoint), "tcp://127.0.0.1:%d", free_port());
    cl_bus_opts bo = {.role = CL_BUS_ROUTER, .endpoint = fx->endpoint, .name = "sched",
                      .resend_ms = 200, .on_msg = on_msg, .ud = fx};
    if (cl_bus_new(&bo, &fx->sched, &err) < 0) {
        fprintf(stderr, "bus: %s\n", err.message);
        return -1;
    }
    snprintf(fx->billing_ep, sizeof(fx->billing_ep), "tcp://127.0.0.1:%d", free_port());
    bo.endpoint = fx->billing_ep;
    bo.name = "billing";
    if (cl_bus_new(&bo, &fx->billing, &err) < 0) {
        fprintf(stderr, "billing bus: %s\n", err.message);
        return -1;
    }
    agent_cfg *c = &fx->cfg;
    c->common.log_level = "error";
    c->common.state_dir = fx->dir;
    c->host = "h1";
    c->libvirt_uri = "test:///default";
    c->heartbeat_interval_ms = 100;
    c->instances_dir = fx->inst;
    c->virt_type = "auto";
    c->image_dir = "";
    c->network = "nube";
    c->shutdown_timeout_s = 2;
    c->scheduler_endpoint = fx->endpoint;
    c->resend_ms = 200;
    c->http_listen = "127.0.0.1";
    c->http_port = free_port();
    c->billing_endpoint = fx->billing_ep;
    c->sample_interval_s = 1;
    if (agent_start(c, &fx->a, &err) < 0) {
        fprintf(stderr, "agent: %s\n", err.message);
        return -1;
    }
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    agent_stop(fx->a);
    cl_bus_free(fx->sched);
    cl_bus_free(fx->billing);
    for (size_t i = 0; i < fx->n; i++)
        json_object_put(fx->msgs[i].body);
    char path[256];
    snprintf(path, sizeof(path), "%s/agent-h1.db", fx->dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/agent-h1-outbox.db", fx->dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/agent-h1-usage-outbox.db", fx->dir);
    unlink(path);
    const char *suffixes[] = {"-wal", "-shm"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof(path), "%s/agent-h1-usage-outbox.db%s", fx->dir, suffixes[i]);
        unlink(path);
        snprintf(path, sizeof(path), "%s/agent-h1.db%s", fx->dir, suffixes[i]);
        unlink(path);
        snprintf(path, sizeof(path), "%s/agent-h1-outbox.db%s", fx->dir, suffixes[i]);
        unlink(path);
    }
    snprintf(path, sizeof(path), "%s/%s/console.log", fx->inst, UUID1);
    unlink(path);
    snprintf(path, sizeof(path), "%s/%s", fx->inst, UUID1);
    rmdir(path);
    rmdir(fx->inst);
    rmdir(fx->dir);
    pthread_cond_destroy(&fx->cond);
    pthread_mutex_destroy(&fx->lock);
    free(fx);
    return 0;
}

static cl_msg_instance spec(const char *flavor_id, int64_t vcpus, int64_t ram)
{
    cl_msg_instance m;
    memset(&m, 0, sizeof(m));
    cl_strlcpy(m.uuid, UUID1, sizeof(m.uuid));
    cl_strlcpy(m.name, "vm1", sizeof(m.name));
    cl_strlcpy(m.project_id, "p1", sizeof(m.project_id));
    cl_strlcpy(m.user_id, "u1", sizeof(m.user_id));
    cl_strlcpy(m.image_ref, "img", sizeof(m.image_ref));
    cl_strlcpy(m.flavor.id, flavor_id, sizeof(m.flavor.id));
    cl_strlcpy(m.flavor.name, flavor_id, sizeof(m.flavor.name));
    m.flavor.vcpus = vcpus;
    m.flavor.ram_mb = ram;
    m.flavor.disk_gb = 1;
    m.flavor.is_public = true;
    return m;
}

static void send_action(fixture *fx, cl_action act, const cl_msg_instance *inst)
{
    json_object *b = cl_msg_action_encode(UUID1, act, inst);
    assert_non_null(b);
    assert_int_equal(cl_bus_send(fx->sched, "h1", CL_MSG_INSTANCE_ACTION, NULL, b, true, NULL),
                     0);
}

static void expect_state(fixture *fx, size_t *from, const char *vm, const char *power)
{
    json_object *b = wait_msg(fx, from, CL_MSG_INSTANCE_STATE, vm);
    assert_non_null(b);
    const char *p = NULL;
    assert_int_equal(cl_json_get_str(b, "power_state", true, &p, NULL), 0);
    assert_string_equal(p, power);
}

/* Wait for a usage.samples batch holding a sample with event ev (or, ev NONE, a counter
 * sample) and copy that sample to *out. Decoded with billing's own codec, so the test
 * does not depend on the wire layout. false when none came in time. */
static bool wait_usage(fixture *fx, size_t *from, cl_usage_event ev, cl_usage_sample *out)
{
    for (;;) {
        json_object *b = wait_msg(fx, from, "usage.samples", NULL);
        if (!b)
            return false;
        cl_usage_sample *smp = NULL;
        size_t n = 0, rejected = 0;
        assert_int_equal(cl_usage_batch_decode(b, &smp, &n, &rejected, NULL), 0);
        assert_int_equal(rejected, 0);
        for (size_t i = 0; i < n; i++) {
            if ((ev != CL_USAGE_EV_NONE && smp[i].kind == CL_USAGE_EVENT &&
                 smp[i].event == ev) ||
                (ev == CL_USAGE_EV_NONE && smp[i].kind == CL_USAGE_COUNTER)) {
                *out = smp[i];
                free(smp);
                return true;
            }
        }
        free(smp);
    }
}

/* The test driver's view of the domain, through a connection of our own (its state is
 * shared within the process while the agent's connection is open). */
static unsigned long dom_mem_kib(void)
{
    virConnectPtr c = virConnectOpen("test:///default");
    assert_non_null(c);
    virDomainPtr d = virDomainLookupByUUIDString(c, UUID1);
    assert_non_null(d);
    unsigned long m = virDomainGetMaxMemory(d);
    virDomainFree(d);
    virConnectClose(c);
    return m;
}

static void test_actions(void **state)
{
    fixture *fx = *state;
    size_t at = 0;
    char url[256];

    /* host.register names the agent's HTTP endpoint. */
    json_object *reg = wait_msg(fx, &at, CL_MSG_HOST_REGISTER, NULL);
    assert_non_null(reg);
    assert_int_equal(cl_msg_host_get_agent_url(reg, url, sizeof(url), NULL), 0);
    char want[64];
    snprintf(want, sizeof(want), "http://127.0.0.1:%u", agent_http_port(fx->a));
    assert_string_equal(url, want);

    cl_msg_instance s1 = spec("1", 1, 512);
    assert_int_equal(cl_bus_send(fx->sched, "h1", CL_MSG_INSTANCE_SPAWN, NULL,
                                 cl_msg_spawn_encode(&s1), true, NULL), 0);
    expect_state(fx, &at, "active", "running");
    size_t uat = 0;
    cl_usage_sample us;
    assert_true(wait_usage(fx, &uat, CL_USAGE_EV_CREATED, &us));
    assert_true(wait_usage(fx, &uat, CL_USAGE_EV_STARTED, &us));
    /* a counter sample within sample_interval_s = 1 */
    assert_true(wait_usage(fx, &uat, CL_USAGE_EV_NONE, &us));
    assert_non_null(strstr(us.boot_id, UUID1));

    send_action(fx, CL_ACTION_STOP, NULL);
    expect_state(fx, &at, "stopped", "shutdown");
    assert_true(wait_usage(fx, &uat, CL_USAGE_EV_STOPPED, &us));
    send_action(fx, CL_ACTION_START, NULL);
    expect_state(fx, &at, "active", "running");
    send_action(fx, CL_ACTION_PAUSE, NULL);
    expect_state(fx, &at, "paused", "paused");
    send_action(fx, CL_ACTION_UNPAUSE, NULL);
    expect_state(fx, &at, "active", "running");
    send_action(fx, CL_ACTION_SUSPEND, NULL);
    expect_state(fx, &at, "suspended", "shutdown");
    send_action(fx, CL_ACTION_RESUME, NULL);
    expect_state(fx, &at, "active", "running");
    send_action(fx, CL_ACTION_REBOOT_HARD, NULL);
    expect_state(fx, &at, "active", "running");
    send_action(fx, CL_ACTION_REBOOT_SOFT, NULL);
    expect_state(fx, &at, "active", "running");

    /* Cold resize: redefined with the new flavor, running again, VERIFY_RESIZE. */
    assert_int_equal(dom_mem_kib(), 512 * 1024);
    cl_msg_instance s2 = spec("2", 2, 1024);
    send_action(fx, CL_ACTION_RESIZE, &s2);
    expect_state(fx, &at, "resized", "running");
    assert_int_equal(dom_mem_kib(), 1024 * 1024);
    assert_true(wait_usage(fx, &uat, CL_USAGE_EV_RESIZED, &us));
    assert_string_equal(us.flavor_id, "2");
    send_action(fx, CL_ACTION_REVERT_RESIZE, &s1);
    expect_state(fx, &at, "active", "running");
    assert_int_equal(dom_mem_kib(), 512 * 1024);

    /* Stopping a stopped domain is a no-op that still reports (clears the task). */
    send_action(fx, CL_ACTION_STOP, NULL);
    expect_state(fx, &at, "stopped", "shutdown");
    send_action(fx, CL_ACTION_STOP, NULL);
    expect_state(fx, &at, "stopped", "shutdown");

    /* Delete: the domain goes, the instance is reported deleted. */
    assert_int_equal(cl_bus_send(fx->sched, "h1", CL_MSG_INSTANCE_DESTROY, NULL,
                                 cl_msg_uuid_encode(UUID1), true, NULL), 0);
    expect_state(fx, &at, "deleted", "nostate");
    assert_true(wait_usage(fx, &uat, CL_USAGE_EV_DELETED, &us));
}

static void get_console(fixture *fx, const char *query, long want_status, const char *want)
{
    char url[256];
    cl_http_result res = {0};
    cl_error err = {0};
    _cleanup_json_ json_object *o = NULL;
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/v1/instances/%s/console%s",
             agent_http_port(fx->a), UUID1, query);
    assert_int_equal(cl_http_request("GET", url, NULL, NULL, 0, 5000, &res, &err), 0);
    assert_int_equal(res.status, want_status);
    if (want) {
        assert_int_equal(cl_json_parse_object(res.body, res.body_len, &o, &err), 0);
        const char *out = NULL;
        assert_int_equal(cl_json_get_str(o, "output", true, &out, NULL), 0);
        assert_string_equal(out, want);
    }
    cl_http_result_free(&res);
}

static void test_console(void **state)
{
    fixture *fx = *state;
    size_t at = 0;
    char path[256];

    get_console(fx, "", 404, NULL); /* not on this host (yet) */
    cl_msg_instance s1 = spec("1", 1, 512);
    assert_int_equal(cl_bus_send(fx->sched, "h1", CL_MSG_INSTANCE_SPAWN, NULL,
                                 cl_msg_spawn_encode(&s1), true, NULL), 0);
    expect_state(fx, &at, "active", "running");
    get_console(fx, "", 200, ""); /* the test driver writes no log */

    snprintf(path, sizeof(path), "%s/%s", fx->inst, UUID1);
    mkdir(path, 0755);
    snprintf(path, sizeof(path), "%s/%s/console.log", fx->inst, UUID1);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("\x1b[2JSeaBIOS\r\nNUBE-GUEST-BOOTED\r\nCOUNTER 1\r\nCOUNTER 2\r\n", f);
    fclose(f);
    get_console(fx, "?length=2", 200, "COUNTER 1\nCOUNTER 2\n");
    get_console(fx, "?length=-1", 200, "?[2JSeaBIOS\nNUBE-GUEST-BOOTED\nCOUNTER 1\nCOUNTER 2\n");
    get_console(fx, "?length=0", 200, "");
    get_console(fx, "?length=x", 400, NULL);

    assert_int_equal(cl_bus_send(fx->sched, "h1", CL_MSG_INSTANCE_DESTROY, NULL,
                                 cl_msg_uuid_encode(UUID1), true, NULL), 0);
    expect_state(fx, &at, "deleted", "nostate");
}

/* QEMU XML with the host extras: direct kernel boot, the NAT network or a user NIC;
 * without extras it is the plain document (the golden files cover that one). */
static void test_domain_xml_boot(void **state)
{
    (void)state;
    cl_msg_instance m = spec("1", 1, 512);
    cl_error err = {0};
    char *plain = NULL, *same = NULL, *x = NULL;
    agent_boot none = {0};
    assert_int_equal(agent_domain_xml(&m, AGENT_HV_QEMU, AGENT_VIRT_QEMU, "/i", &plain, &err),
                     0);
    assert_int_equal(agent_domain_xml_ex(&m, AGENT_HV_QEMU, AGENT_VIRT_QEMU, "/i", &none,
                                         &same, &err), 0);
    assert_string_equal(plain, same);
    agent_boot b = {.kernel = "/img/k", .ramdisk = "/img/r", .cmdline = "console=ttyS0 a<b",
                    .network = "nube"};
    assert_int_equal(agent_domain_xml_ex(&m, AGENT_HV_QEMU, AGENT_VIRT_KVM, "/i", &b, &x, &err),
                     0);
    assert_non_null(strstr(x, "<domain type='kvm'>"));
    assert_non_null(strstr(x, "<kernel>/img/k</kernel>\n    <initrd>/img/r</initrd>\n"
                              "    <cmdline>console=ttyS0 a&lt;b</cmdline>"));
    assert_null(strstr(x, "<boot dev='hd'/>"));
    assert_non_null(strstr(x, "<interface type='network'>\n      <source network='nube'/>\n"
                              "      <model type='virtio'/>"));
    free(x);
    x = NULL;
    agent_boot u = {.user_net = true};
    assert_int_equal(agent_domain_xml_ex(&m, AGENT_HV_QEMU, AGENT_VIRT_QEMU, "/i", &u, &x, &err),
                     0);
    assert_non_null(strstr(x, "<interface type='user'>"));
    assert_non_null(strstr(x, "<boot dev='hd'/>"));
    free(x);
    x = NULL;
    /* Other hypervisors ignore the extras. */
    char *t1 = NULL, *t2 = NULL;
    assert_int_equal(agent_domain_xml(&m, AGENT_HV_TEST, AGENT_VIRT_AUTO, "/i", &t1, &err), 0);
    assert_int_equal(agent_domain_xml_ex(&m, AGENT_HV_TEST, AGENT_VIRT_AUTO, "/i", &b, &t2,
                                         &err), 0);
    assert_string_equal(t1, t2);
    free(t1);
    free(t2);
    free(plain);
    free(same);
}

/* An action the agent acknowledged but did not carry out (killed in between) is done by
 * the next start: it is recorded with the instance before the ack. */
static void test_action_survives_restart(void **state)
{
    fixture *fx = *state;
    size_t at = 0;
    char db[256];
    cl_error err = {0};
    sqlite3 *h = NULL;

    cl_msg_instance s1 = spec("1", 1, 512);
    assert_int_equal(cl_bus_send(fx->sched, "h1", CL_MSG_INSTANCE_SPAWN, NULL,
                                 cl_msg_spawn_encode(&s1), true, NULL), 0);
    expect_state(fx, &at, "active", "running");
    agent_stop(fx->a);
    fx->a = NULL;

    /* What on_action writes before the bus acknowledges an instance.action. */
    json_object *body = cl_msg_action_encode(UUID1, CL_ACTION_PAUSE, NULL);
    snprintf(db, sizeof(db), "%s/agent-h1.db", fx->dir);
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(h, "UPDATE instances SET action = ? WHERE uuid = ?",
                                        -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_text(st, 1, json_object_to_json_string(body), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, UUID1, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    assert_int_equal(sqlite3_changes(h), 1);
    sqlite3_finalize(st);
    sqlite3_close(h);
    json_object_put(body);

    assert_int_equal(agent_start(&fx->cfg, &fx->a, &err), 0);
    expect_state(fx, &at, "paused", "paused");
    assert_int_equal(cl_bus_send(fx->sched, "h1", CL_MSG_INSTANCE_DESTROY, NULL,
                                 cl_msg_uuid_encode(UUID1), true, NULL), 0);
    expect_state(fx, &at, "deleted", "nostate");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_domain_xml_boot),
        cmocka_unit_test_setup_teardown(test_actions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_console, setup, teardown),
        cmocka_unit_test_setup_teardown(test_action_survives_restart, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
