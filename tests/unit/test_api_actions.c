/*
 * test_api_actions.c - POST /v2.1/servers/{id}/action through real HTTP on loopback.
 *
 * One api_start() per group on a temporary controller DB; the test plays the scheduler
 * with a real cl_bus ROUTER (recording each instance.action it receives) and an agent's
 * console endpoint with a real cl_http server. Instances are put on a host directly with
 * the test's own cl_store (register, claim, active), and what an agent would report is
 * written the same way, so each answer of the API is checked against Nova's rules:
 * state conflicts (409 with Nova's message), task states, bodies (400/404), the resize
 * claim (allocation moved atomically, refused when the host is full), confirm/revert,
 * and the console read with its length parameter.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "api.h"
#include "api_fixture.h"
#include "bus.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "messages.h"
#include "store.h"
#include "store_actions.h"
#include "util.h"

#define TOKEN "test-admin-token"
#define PASSWORD "s3cret-pw"
#define WAIT_MS 5000
#define MAX_SEEN 64

typedef struct seen_msg {
    char uuid[CL_UUID_LEN];
    char action[32];
    char flavor[CL_ID_MAX];
} seen_msg;

typedef struct fixture {
    api_fx fx;
    cl_http_server *agent_http;
    pthread_mutex_t lock;
    seen_msg seen[MAX_SEEN];
    int nseen;
    char console_query[64];
} fixture;

static void on_sched_msg(cl_bus *bus, const cl_bus_msg *msg, void *ud)
{
    fixture *f = ud;
    cl_msg_action m;
    seen_msg s = {0};
    (void)bus;
    if (strcmp(msg->type, CL_MSG_INSTANCE_ACTION) != 0 ||
        cl_msg_action_decode(msg->body, &m, NULL) < 0)
        return;
    cl_strlcpy(s.uuid, m.instance_uuid, sizeof(s.uuid));
    cl_strlcpy(s.action, cl_action_name(m.action), sizeof(s.action));
    if (m.has_instance)
        cl_strlcpy(s.flavor, m.instance.flavor.id, sizeof(s.flavor));
    pthread_mutex_lock(&f->lock);
    if (f->nseen < MAX_SEEN)
        f->seen[f->nseen++] = s;
    pthread_mutex_unlock(&f->lock);
}

/* Wait for the index-th action message about uuid (5 s deadline); copies it. */
static bool got_action(fixture *f, const char *uuid, int index, seen_msg *out)
{
    int64_t deadline = cl_mono_ms() + WAIT_MS;
    for (;;) {
        int k = 0;
        bool found = false;
        pthread_mutex_lock(&f->lock);
        for (int i = 0; i < f->nseen && !found; i++)
            if (strcmp(f->seen[i].uuid, uuid) == 0 && k++ == index) {
                *out = f->seen[i];
                found = true;
            }
        pthread_mutex_unlock(&f->lock);
        if (found)
            return true;
        if (cl_mono_ms() > deadline)
            return false;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* The fake agent's console endpoint: echoes its query into the output. */
static void h_console(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    fixture *f = ud;
    const char *len = cl_http_req_query(req, "length");
    snprintf(f->console_query, sizeof(f->console_query), "%s", len ? len : "(none)");
    json_object *b = json_object_new_object();
    json_object_object_add(b, "output", json_object_new_string("NUBE-GUEST-BOOTED\n"));
    cl_http_resp_json(resp, 200, b);
}

static const cl_http_route agent_routes[] = {
    {"GET", "/v1/instances/{uuid}/console", h_console},
};

static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    cl_error err = {0};

    assert_non_null(f);
    pthread_mutex_init(&f->lock, NULL);
    api_fx_prepare(&f->fx, "test_api_actions", on_sched_msg, f, TOKEN, PASSWORD);
    api_fx_set(&f->fx, "api", "workers", "2");
    api_fx_start(&f->fx);
    cl_http_opts ho = {.service = "fakeagent", .bind_addr = "127.0.0.1", .port = 0,
                       .threads = 1, .routes = agent_routes, .nroutes = 1, .ud = f};
    if (cl_http_server_start(&ho, &f->agent_http, &err) < 0)
        fail_msg("agent http: %s", err.message);

    /* One host with room for m1.small or m1.medium but not m1.xlarge. */
    cl_host h = {0};
    cl_strlcpy(h.name, "h1", sizeof(h.name));
    cl_strlcpy(h.hypervisor_type, "Test", sizeof(h.hypervisor_type));
    h.vcpus = 4;
    h.ram_mb = 7680;
    h.disk_gb = 100;
    h.cpu_ratio = h.ram_ratio = h.disk_ratio = 1.0;
    h.up = h.enabled = true;
    assert_int_equal(cl_store_host_register(f->fx.st, &h), 0);
    *state = f;
    return 0;
}

static int group_teardown(void **state)
{
    fixture *f = *state;

    cl_http_server_stop(f->agent_http);
    api_fx_stop(&f->fx, NULL);
    pthread_mutex_destroy(&f->lock);
    free(f);
    return 0;
}

typedef api_reply reply;

static reply action(fixture *f, const char *uuid, const char *body)
{
    char url[512];
    const char *headers[] = {"X-Auth-Token: " TOKEN, "Content-Type: application/json", NULL};

    snprintf(url, sizeof(url), "%s/v2.1/servers/%s/action", f->fx.compute, uuid);
    return api_fx_request("POST", url, headers, body, 5000);
}

/* Expect status; for errors also the fault name and a piece of the message. */
static void expect(fixture *f, const char *uuid, const char *body, long status,
                   const char *fault, const char *needle)
{
    reply r = action(f, uuid, body);
    if (r.status != status)
        fail_msg("%s: expected %ld, got %ld: %s", body, status, r.status, r.raw.body);
    if (fault) {
        json_object *fo = NULL, *msg = NULL;
        assert_non_null(r.json);
        assert_true(json_object_object_get_ex(r.json, fault, &fo));
        assert_true(json_object_object_get_ex(fo, "message", &msg));
        if (needle && !strstr(json_object_get_string(msg), needle))
            fail_msg("message '%s' lacks '%s'", json_object_get_string(msg), needle);
    }
    api_reply_free(&r);
}

/* A fresh active instance of flavor m1.tiny on h1. */
static void make_instance(fixture *f, char out[CL_UUID_LEN])
{
    cl_instance in = {0};
    char host[CL_HOST_MAX];
    const char *cands[] = {"h1"};
    cl_uuid_new(out);
    cl_strlcpy(in.uuid, out, sizeof(in.uuid));
    cl_strlcpy(in.name, "vm", sizeof(in.name));
    cl_strlcpy(in.project_id, "5a0c5e2b9b6f4f3e8d1c2b3a4f5e6d7c", sizeof(in.project_id));
    cl_strlcpy(in.user_id, "u", sizeof(in.user_id));
    cl_strlcpy(in.image_ref, "cirros", sizeof(in.image_ref));
    assert_int_equal(cl_store_flavor_get(f->fx.st, "1", &in.flavor), 0);
    in.vm_state = CL_VM_BUILDING;
    in.task_state = CL_TASK_SCHEDULING;
    in.power_state = CL_POWER_NOSTATE;
    assert_int_equal(cl_store_instance_create(f->fx.st, &in), 0);
    assert_int_equal(cl_store_claim(f->fx.st, out, cands, 1, host), 0);
    assert_int_equal(cl_store_instance_set_state(f->fx.st, out, CL_VM_ACTIVE, CL_TASK_NONE,
                                                 CL_POWER_RUNNING, NULL, 0), 0);
}

/* What the agent's instance.state would record. */
static void agent_reports(fixture *f, const char *uuid, cl_vm_state vm, cl_power_state p)
{
    assert_int_equal(cl_store_instance_set_state(f->fx.st, uuid, vm, CL_TASK_NONE, p, NULL, 0), 0);
}

static cl_instance get(fixture *f, const char *uuid)
{
    cl_instance in;
    assert_int_equal(cl_store_instance_get(f->fx.st, uuid, &in), 0);
    return in;
}

static void test_power_actions(void **state)
{
    fixture *f = *state;
    char id[CL_UUID_LEN], msg[200];
    seen_msg m;
    make_instance(f, id);

    snprintf(msg, sizeof(msg), "Cannot 'os-start' instance %s while it is in vm_state active",
             id);
    expect(f, id, "{\"os-start\": null}", 409, "conflictingRequest", msg);
    expect(f, id, "{\"os-stop\": null}", 202, NULL, NULL);
    assert_int_equal(get(f, id).task_state, CL_TASK_POWERING_OFF);
    assert_true(got_action(f, id, 0, &m));
    assert_string_equal(m.action, "stop");
    snprintf(msg, sizeof(msg), "Cannot 'os-stop' instance %s while it is in task_state "
             "powering-off", id);
    expect(f, id, "{\"os-stop\": null}", 409, "conflictingRequest", msg);

    agent_reports(f, id, CL_VM_STOPPED, CL_POWER_SHUTDOWN);
    snprintf(msg, sizeof(msg), "Cannot 'os-stop' instance %s while it is in vm_state stopped",
             id);
    expect(f, id, "{\"os-stop\": null}", 409, "conflictingRequest", msg);
    expect(f, id, "{\"reboot\": {\"type\": \"SOFT\"}}", 409, "conflictingRequest",
           "vm_state stopped");
    expect(f, id, "{\"os-start\": null}", 202, NULL, NULL);
    assert_int_equal(get(f, id).task_state, CL_TASK_POWERING_ON);
    assert_true(got_action(f, id, 1, &m));
    assert_string_equal(m.action, "start");
    agent_reports(f, id, CL_VM_ACTIVE, CL_POWER_RUNNING);

    expect(f, id, "{\"reboot\": {}}", 400, "badRequest", "'type' is a required property");
    expect(f, id, "{\"reboot\": {\"type\": \"WARM\"}}", 400, "badRequest", NULL);
    expect(f, id, "{\"reboot\": {\"type\": \"hard\"}}", 202, NULL, NULL);
    assert_int_equal(get(f, id).task_state, CL_TASK_REBOOTING_HARD);
    assert_string_equal(cl_instance_status(get(f, id).vm_state, get(f, id).task_state),
                        "HARD_REBOOT");
    assert_true(got_action(f, id, 2, &m));
    assert_string_equal(m.action, "reboot_hard");
    agent_reports(f, id, CL_VM_ACTIVE, CL_POWER_RUNNING);

    expect(f, id, "{\"unpause\": null}", 409, "conflictingRequest", "vm_state active");
    expect(f, id, "{\"pause\": null}", 202, NULL, NULL);
    assert_int_equal(get(f, id).task_state, CL_TASK_PAUSING);
    expect(f, id, "{\"suspend\": null}", 409, "conflictingRequest", "task_state pausing");
    assert_true(got_action(f, id, 3, &m));
    assert_string_equal(m.action, "pause");
    agent_reports(f, id, CL_VM_PAUSED, CL_POWER_PAUSED);
    expect(f, id, "{\"suspend\": null}", 409, "conflictingRequest", "vm_state paused");
    expect(f, id, "{\"unpause\": null}", 202, NULL, NULL);
    assert_int_equal(get(f, id).task_state, CL_TASK_UNPAUSING);
    agent_reports(f, id, CL_VM_ACTIVE, CL_POWER_RUNNING);
    expect(f, id, "{\"resume\": null}", 409, "conflictingRequest", "vm_state active");
    expect(f, id, "{\"suspend\": null}", 202, NULL, NULL);
    assert_int_equal(get(f, id).task_state, CL_TASK_SUSPENDING);
    agent_reports(f, id, CL_VM_SUSPENDED, CL_POWER_SHUTDOWN);
    expect(f, id, "{\"resume\": null}", 202, NULL, NULL);
    assert_int_equal(get(f, id).task_state, CL_TASK_RESUMING);
    assert_true(got_action(f, id, 6, &m));
    assert_string_equal(m.action, "resume");
}

static void test_bad_requests(void **state)
{
    fixture *f = *state;
    char id[CL_UUID_LEN];
    make_instance(f, id);
    expect(f, id, "{\"os-frobnicate\": null}", 404, "itemNotFound",
           "There is no such action: os-frobnicate");
    expect(f, id, "{\"pause\": null, \"unpause\": null}", 400, "badRequest", NULL);
    expect(f, id, "[1]", 400, "badRequest", NULL);
    expect(f, "00000000-0000-4000-8000-000000000000", "{\"os-stop\": null}", 404,
           "itemNotFound", NULL);
    expect(f, id, "{\"confirmResize\": null}", 409, "conflictingRequest", "vm_state active");
    expect(f, id, "{\"revertResize\": null}", 409, "conflictingRequest", "vm_state active");
}

static void test_resize(void **state)
{
    fixture *f = *state;
    char id[CL_UUID_LEN];
    seen_msg m;
    cl_host h;
    cl_flavor old;
    make_instance(f, id);

    expect(f, id, "{\"resize\": {}}", 400, "badRequest", "'flavorRef' is a required");
    expect(f, id, "{\"resize\": {\"flavorRef\": \"1\"}}", 400, "badRequest",
           "must change flavor");
    expect(f, id, "{\"resize\": {\"flavorRef\": \"nope\"}}", 400, "badRequest",
           "Unable to locate requested flavor");
    assert_int_equal(cl_store_host_get(f->fx.st, "h1", &h), 0);
    int64_t used_before = h.used_ram_mb;
    expect(f, id, "{\"resize\": {\"flavorRef\": \"5\"}}", 400, "badRequest",
           "No valid host");
    assert_int_equal(cl_store_host_get(f->fx.st, "h1", &h), 0);
    assert_int_equal(h.used_ram_mb, used_before); /* nothing written */

    expect(f, id, "{\"resize\": {\"flavorRef\": \"http://x/flavors/2\"}}", 202, NULL, NULL);
    cl_instance in = get(f, id);
    assert_string_equal(in.flavor.id, "2");
    assert_int_equal(in.task_state, CL_TASK_RESIZE_PREP);
    assert_int_equal(cl_store_resize_pending(f->fx.st, id, &old), 1);
    assert_string_equal(old.id, "1");
    assert_int_equal(cl_store_host_get(f->fx.st, "h1", &h), 0);
    assert_int_equal(h.used_ram_mb, used_before - 512 + 2048);
    assert_true(got_action(f, id, 0, &m));
    assert_string_equal(m.action, "resize");
    assert_string_equal(m.flavor, "2");
    assert_string_equal(cl_instance_status(in.vm_state, in.task_state), "RESIZE");

    agent_reports(f, id, CL_VM_RESIZED, CL_POWER_RUNNING);
    in = get(f, id);
    assert_string_equal(cl_instance_status(in.vm_state, in.task_state), "VERIFY_RESIZE");
    expect(f, id, "{\"confirmResize\": null}", 204, NULL, NULL);
    in = get(f, id);
    assert_int_equal(in.vm_state, CL_VM_ACTIVE);
    assert_int_equal(cl_store_resize_pending(f->fx.st, id, NULL), 0);

    /* Again to m1.medium, then revert to m1.small. */
    expect(f, id, "{\"resize\": {\"flavorRef\": \"3\"}}", 202, NULL, NULL);
    agent_reports(f, id, CL_VM_RESIZED, CL_POWER_RUNNING);
    assert_int_equal(cl_store_host_get(f->fx.st, "h1", &h), 0);
    assert_int_equal(h.used_ram_mb, used_before - 512 + 4096);
    expect(f, id, "{\"revertResize\": null}", 202, NULL, NULL);
    in = get(f, id);
    assert_string_equal(in.flavor.id, "2");
    assert_int_equal(in.task_state, CL_TASK_RESIZE_REVERTING);
    assert_string_equal(cl_instance_status(in.vm_state, in.task_state), "REVERT_RESIZE");
    assert_int_equal(cl_store_host_get(f->fx.st, "h1", &h), 0);
    assert_int_equal(h.used_ram_mb, used_before - 512 + 2048);
    assert_true(got_action(f, id, 2, &m));
    assert_string_equal(m.action, "revert_resize");
    assert_string_equal(m.flavor, "2");
}

static void test_console(void **state)
{
    fixture *f = *state;
    char id[CL_UUID_LEN], url[128];
    make_instance(f, id);

    expect(f, id, "{\"os-getConsoleOutput\": {\"length\": 5}}", 501, "notImplemented", NULL);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u", cl_http_server_port(f->agent_http));
    assert_int_equal(cl_store_host_agent_url_set(f->fx.st, "h1", url), 0);

    reply r = action(f, id, "{\"os-getConsoleOutput\": {\"length\": 5}}");
    assert_int_equal(r.status, 200);
    json_object *out = cl_json_path(r.json, "output");
    assert_non_null(out);
    assert_string_equal(json_object_get_string(out), "NUBE-GUEST-BOOTED\n");
    assert_string_equal(f->console_query, "5");
    api_reply_free(&r);
    expect(f, id, "{\"os-getConsoleOutput\": {\"length\": \"12\"}}", 200, NULL, NULL);
    assert_string_equal(f->console_query, "12");
    expect(f, id, "{\"os-getConsoleOutput\": {}}", 200, NULL, NULL);
    assert_string_equal(f->console_query, "-1");
    expect(f, id, "{\"os-getConsoleOutput\": {\"length\": \"abc\"}}", 400, "badRequest", NULL);
    expect(f, id, "{\"os-getConsoleOutput\": {\"length\": -5}}", 400, "badRequest", NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_power_actions),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_resize),
        cmocka_unit_test(test_console),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
