/*
 * test_api_servers.c - nube-api through real HTTP on loopback.
 *
 * One api_start() per group with a temporary controller DB and port 0 for both listeners;
 * the test plays the scheduler with a real cl_bus ROUTER and records what nube-api sends
 * (instance.schedule, instance.delete). Requests go through cl_http_request (libcurl).
 * Where the scheduler or an agent would move an instance on (placing it on a host,
 * marking it active or deleted), the test does it with its own cl_store on the same file.
 * Every wait polls its condition with a deadline.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "api.h"
#include "api_int.h"
#include "api_fixture.h"
#include "bus.h"
#include "config.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "messages.h"
#include "store.h"
#include "store_compute.h"
#include "util.h"

#define WAIT_MS 5000
#define TOKEN "test-admin-token"
#define PASSWORD "s3cret-pw"
#define MAX_BODY 8192

static void nap(void)
{
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

#define WAIT_UNTIL(expr)                                                                   \
    ({                                                                                     \
        int64_t _deadline = cl_mono_ms() + WAIT_MS;                                        \
        bool _ok;                                                                          \
        while (!(_ok = (expr)) && cl_mono_ms() < _deadline)                                \
            nap();                                                                         \
        _ok;                                                                               \
    })

/* ---- the fake scheduler ---- */

#define MAX_SEEN 64
typedef struct seen_msg {
    char type[64];
    char uuid[CL_UUID_LEN];
    char req[80];
    char from[CL_BUS_NAME_MAX];
} seen_msg;

typedef struct fixture {
    api_fx fx;
    pthread_mutex_t lock;
    seen_msg seen[MAX_SEEN];
    int nseen;
} fixture;

static void on_sched_msg(cl_bus *bus, const cl_bus_msg *msg, void *ud)
{
    fixture *f = ud;
    seen_msg m = {0};

    (void)bus;
    cl_strlcpy(m.type, msg->type, sizeof(m.type));
    cl_strlcpy(m.req, msg->req, sizeof(m.req));
    cl_strlcpy(m.from, msg->from, sizeof(m.from));
    if (cl_msg_uuid_decode(msg->body, m.uuid, NULL) < 0)
        m.uuid[0] = '\0';
    pthread_mutex_lock(&f->lock);
    if (f->nseen < MAX_SEEN)
        f->seen[f->nseen++] = m;
    pthread_mutex_unlock(&f->lock);
}

/* Whether the scheduler got a message of type about uuid; copies it to out. */
static bool got(fixture *f, const char *type, const char *uuid, seen_msg *out)
{
    bool found = false;

    pthread_mutex_lock(&f->lock);
    for (int i = 0; i < f->nseen && !found; i++) {
        if (strcmp(f->seen[i].type, type) == 0 && strcmp(f->seen[i].uuid, uuid) == 0) {
            found = true;
            if (out)
                *out = f->seen[i];
        }
    }
    pthread_mutex_unlock(&f->lock);
    return found;
}

static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    pthread_mutex_init(&f->lock, NULL);
    api_fx_prepare(&f->fx, "test_api", on_sched_msg, f, TOKEN, PASSWORD);
    api_fx_set(&f->fx, "api", "workers", "2");
    api_fx_set(&f->fx, "api", "max_body_bytes", "8192");
    api_fx_start(&f->fx);
    /* key_name must name one of the caller's key pairs (compute API, 400 otherwise). */
    for (const char *const *k = (const char *const[]){"k1", "k", NULL}; *k; k++) {
        cl_keypair kp = {.public_key = (char *)"ssh-ed25519 AAAA test"};

        cl_strlcpy(kp.user_id, f->fx.cfg.admin_user_id, sizeof(kp.user_id));
        cl_strlcpy(kp.name, *k, sizeof(kp.name));
        assert_int_equal(cl_store_keypair_create(f->fx.st, &kp, -1), 0);
    }
    *state = f;
    return 0;
}

static int group_teardown(void **state)
{
    fixture *f = *state;

    api_fx_stop(&f->fx, NULL);
    pthread_mutex_destroy(&f->lock);
    free(f);
    return 0;
}

/* One HTTP/1.1 GET over a plain socket; the whole response (headers and body) into out. */
static void raw_get(uint16_t port, const char *path, char *out, size_t outlen)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    char req[256];
    size_t got = 0;
    ssize_t n;

    assert_true(fd >= 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    n = snprintf(req, sizeof(req),
                 "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n"
                 "Connection: close\r\n\r\n", path);
    assert_int_equal(write(fd, req, (size_t)n), n);
    while (got + 1 < outlen && (n = read(fd, out + got, outlen - 1 - got)) > 0)
        got += (size_t)n;
    out[got] = '\0';
    close(fd);
}

/* ---- HTTP helpers ---- */

typedef api_reply reply;

/* One request. token NULL = no X-Auth-Token; extra: one more header or NULL. */
static reply call(const char *method, const char *base, const char *path, const char *token,
                  const char *extra, const char *body)
{
    char url[512], auth[128];
    const char *headers[4];
    size_t nh = 0;

    snprintf(url, sizeof(url), "%s%s", base, path);
    if (token) {
        snprintf(auth, sizeof(auth), "X-Auth-Token: %s", token);
        headers[nh++] = auth;
    }
    if (body)
        headers[nh++] = "Content-Type: application/json";
    if (extra)
        headers[nh++] = extra;
    headers[nh] = NULL;
    return api_fx_request(method, url, headers, body, 5000);
}

static reply compute(fixture *f, const char *method, const char *path, const char *body)
{
    return call(method, f->fx.compute, path, TOKEN, NULL, body);
}

/* Assert an OpenStack fault body {"<fault>": {"code": status, "message": ...}}. */
static void assert_fault(const reply *r, long status, const char *fault, const char *needle)
{
    json_object *f, *code, *msg;

    if (r->status != status)
        fail_msg("expected %ld, got %ld: %s", status, r->status, r->raw.body);
    assert_non_null(r->json);
    assert_true(json_object_object_get_ex(r->json, fault, &f));
    assert_true(json_object_object_get_ex(f, "code", &code));
    assert_int_equal(json_object_get_int(code), status);
    assert_true(json_object_object_get_ex(f, "message", &msg));
    if (needle && !strstr(json_object_get_string(msg), needle))
        fail_msg("message '%s' lacks '%s'", json_object_get_string(msg), needle);
}

static void header(const reply *r, const char *name, char *out, size_t len)
{
    if (cl_http_result_header(&r->raw, name, out, len) < 0)
        fail_msg("no %s header in %s", name, r->raw.headers);
}

/* POST a server; returns its id (asserting 202). */
static void create_server(fixture *f, const char *name, char out_id[CL_UUID_LEN])
{
    char body[512];
    reply r;

    snprintf(body, sizeof(body),
             "{\"server\": {\"name\": \"%s\", \"flavorRef\": \"1\", \"imageRef\": \"cirros\","
             " \"min_count\": 1, \"max_count\": 1, \"key_name\": \"k1\","
             " \"metadata\": {\"role\": \"web\"}}}", name);
    r = compute(f, "POST", "/v2.1/servers", body);
    if (r.status != 202)
        fail_msg("create %s: %ld %s", name, r.status, r.raw.body);
    cl_strlcpy(out_id, api_jget(r.json, "server.id"), CL_UUID_LEN);
    api_reply_free(&r);
}

/* ---- identity ---- */

/* Macros, not const variables: printf-format checking needs string literals. */
#define AUTH_BODY                                                                          \
    "{\"auth\": {\"identity\": {\"methods\": [\"password\"], \"password\": {\"user\": "    \
    "{\"name\": \"admin\", \"domain\": {\"name\": \"Default\"}, \"password\": \"%s\"}}}%s}}"
#define PROJECT_SCOPE                                                                      \
    ", \"scope\": {\"project\": {\"name\": \"admin\", \"domain\": {\"name\": \"Default\"}}}"

static void test_identity_versions(void **state)
{
    fixture *f = *state;
    char raw[4096];
    reply r;

    /* cl_http_request follows a 300's Location for GETs; ask by hand to see the 300. */
    raw_get(api_identity_port(f->fx.api), "/", raw, sizeof(raw));
    assert_non_null(strstr(raw, "HTTP/1.1 300"));
    assert_non_null(strcasestr(raw, "\r\nLocation: http://127.0.0.1:"));
    assert_non_null(strstr(raw, "\"values\""));
    assert_non_null(strstr(raw, "\"v3.14\""));

    r = call("GET", f->fx.identity, "/v3", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(api_jget(r.json, "version.id"), "v3.14");
    assert_string_equal(api_jget(r.json, "version.status"), "stable");
    api_reply_free(&r);
}

static void test_token_issue(void **state)
{
    fixture *f = *state;
    char body[1024], subject[512], want[256];
    json_object *catalog, *eps;
    bool compute_found = false;
    reply r;

    snprintf(body, sizeof(body), AUTH_BODY, PASSWORD, PROJECT_SCOPE);
    r = call("POST", f->fx.identity, "/v3/auth/tokens", NULL, NULL, body);
    assert_int_equal(r.status, 201);
    header(&r, "X-Subject-Token", subject, sizeof(subject));
    assert_int_equal(strncmp(subject, "nb1_", 4), 0); /* a sealed token, not the static one */
    assert_string_equal(api_jget(r.json, "token.project.name"), "admin");
    assert_string_equal(api_jget(r.json, "token.project.id"), f->fx.cfg.admin_project_id);
    assert_string_equal(api_jget(r.json, "token.user.id"), f->fx.cfg.admin_user_id);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "token.roles")), 3);
    /* "2026-11-27T06:00:00.000000Z" */
    assert_int_equal(strlen(api_jget(r.json, "token.expires_at")), 27);
    assert_int_equal(api_jget(r.json, "token.expires_at")[26], 'Z');
    catalog = cl_json_path(r.json, "token.catalog");
    assert_non_null(catalog);
    snprintf(want, sizeof(want), "%s/v2.1", f->fx.compute);
    for (size_t i = 0; i < json_object_array_length(catalog); i++) {
        json_object *svc = json_object_array_get_idx(catalog, i);

        if (strcmp(api_jget(svc, "type"), "compute") != 0)
            continue;
        eps = cl_json_path(svc, "endpoints");
        assert_int_equal(json_object_array_length(eps), 3);
        assert_string_equal(api_jget(json_object_array_get_idx(eps, 0), "url"), want);
        compute_found = true;
    }
    assert_true(compute_found);
    api_reply_free(&r);

    /* Unscoped: a token, but no project and no catalog. */
    snprintf(body, sizeof(body), AUTH_BODY, PASSWORD, "");
    r = call("POST", f->fx.identity, "/v3/auth/tokens", NULL, NULL, body);
    assert_int_equal(r.status, 201);
    assert_null(cl_json_path(r.json, "token.project"));
    assert_null(cl_json_path(r.json, "token.catalog"));
    api_reply_free(&r);

    /* Bad password: Keystone's 401 body. */
    snprintf(body, sizeof(body), AUTH_BODY, "wrong", PROJECT_SCOPE);
    r = call("POST", f->fx.identity, "/v3/auth/tokens", NULL, NULL, body);
    assert_int_equal(r.status, 401);
    assert_int_equal(json_object_get_int(cl_json_path(r.json, "error.code")), 401);
    assert_string_equal(api_jget(r.json, "error.title"), "Unauthorized");
    assert_int_not_equal(cl_http_result_header(&r.raw, "X-Subject-Token", subject,
                                               sizeof(subject)), 0);
    api_reply_free(&r);

    /* Unknown project. */
    r = call("POST", f->fx.identity, "/v3/auth/tokens", NULL, NULL,
             "{\"auth\": {\"identity\": {\"methods\": [\"password\"], \"password\": {\"user\": "
             "{\"id\": \"0f1e2d3c4b5a49687766554433221100\", \"password\": \"" PASSWORD "\"}}},"
             " \"scope\": {\"project\": {\"id\": \"nope\"}}}}");
    assert_int_equal(r.status, 401);
    api_reply_free(&r);

    /* Malformed JSON: 400 in Keystone's shape. */
    r = call("POST", f->fx.identity, "/v3/auth/tokens", NULL, NULL, "{\"auth\": ");
    assert_int_equal(r.status, 400);
    assert_int_equal(json_object_get_int(cl_json_path(r.json, "error.code")), 400);
    api_reply_free(&r);

    /* Validation as keystonemiddleware does it. */
    r = call("GET", f->fx.identity, "/v3/auth/tokens", TOKEN, "X-Subject-Token: " TOKEN, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(api_jget(r.json, "token.project.name"), "admin");
    api_reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/auth/tokens", TOKEN, "X-Subject-Token: other", NULL);
    assert_int_equal(r.status, 404);
    api_reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/projects", TOKEN, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "projects")), 1);
    api_reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/projects", NULL, NULL, NULL);
    assert_int_equal(r.status, 401);
    api_reply_free(&r);
}

/* ---- compute: versions and microversions ---- */

static void test_compute_versions(void **state)
{
    fixture *f = *state;
    char v[64];
    reply r = call("GET", f->fx.compute, "/", NULL, NULL, NULL);

    assert_int_equal(r.status, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "versions")), 2);
    assert_string_equal(api_jget(json_object_array_get_idx(cl_json_path(r.json, "versions"), 1),
                             "version"), "2.93");
    api_reply_free(&r);

    r = call("GET", f->fx.compute, "/v2.1", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(api_jget(r.json, "version.min_version"), "2.1");
    assert_string_equal(api_jget(r.json, "version.version"), "2.93");
    header(&r, "OpenStack-API-Version", v, sizeof(v));
    assert_string_equal(v, "compute 2.1");
    header(&r, "Vary", v, sizeof(v));
    assert_non_null(strstr(v, "OpenStack-API-Version"));
    api_reply_free(&r);

    r = call("GET", f->fx.compute, "/v2.1/flavors", TOKEN, "OpenStack-API-Version: compute 2.61",
             NULL);
    assert_int_equal(r.status, 200);
    header(&r, "X-OpenStack-Nova-API-Version", v, sizeof(v));
    assert_string_equal(v, "2.61");
    api_reply_free(&r);

    r = call("GET", f->fx.compute, "/v2.1/flavors", TOKEN, "X-OpenStack-Nova-API-Version: latest",
             NULL);
    assert_int_equal(r.status, 200);
    header(&r, "OpenStack-API-Version", v, sizeof(v));
    assert_string_equal(v, "compute 2.93");
    api_reply_free(&r);

    r = call("GET", f->fx.compute, "/v2.1/flavors", TOKEN, "OpenStack-API-Version: compute 3.0",
             NULL);
    assert_fault(&r, 406, "computeFault", "not supported");
    api_reply_free(&r);
    r = call("GET", f->fx.compute, "/v2.1/flavors", TOKEN, "X-OpenStack-Nova-API-Version: 2.x",
             NULL);
    assert_fault(&r, 400, "badRequest", "invalid format");
    api_reply_free(&r);
}

/* ---- flavors ---- */

static void test_flavors(void **state)
{
    fixture *f = *state;
    json_object *list, *first;
    reply r = compute(f, "GET", "/v2.1/flavors", NULL);

    assert_int_equal(r.status, 200);
    list = cl_json_path(r.json, "flavors");
    assert_int_equal(json_object_array_length(list), 5);
    first = json_object_array_get_idx(list, 0);
    assert_string_equal(api_jget(first, "id"), "1");
    assert_string_equal(api_jget(first, "name"), "m1.tiny");
    assert_null(cl_json_path(first, "ram"));
    assert_int_equal(json_object_array_length(cl_json_path(first, "links")), 2);
    api_reply_free(&r);

    r = compute(f, "GET", "/v2.1/flavors/detail", NULL);
    assert_int_equal(r.status, 200);
    first = json_object_array_get_idx(cl_json_path(r.json, "flavors"), 0);
    assert_int_equal(json_object_get_int(cl_json_path(first, "ram")), 512);
    assert_string_equal(api_jget(first, "swap"), "");
    assert_true(json_object_is_type(cl_json_path(first, "rxtx_factor"), json_type_double));
    assert_false(json_object_get_boolean(cl_json_path(first, "OS-FLV-DISABLED:disabled")));
    assert_true(json_object_get_boolean(cl_json_path(first, "os-flavor-access:is_public")));
    assert_null(cl_json_path(first, "extra_specs"));
    api_reply_free(&r);

    r = call("GET", f->fx.compute, "/v2.1/flavors/detail?is_public=True", TOKEN,
             "OpenStack-API-Version: compute 2.61", NULL);
    assert_int_equal(r.status, 200);
    first = json_object_array_get_idx(cl_json_path(r.json, "flavors"), 0);
    assert_non_null(cl_json_path(first, "extra_specs"));
    api_reply_free(&r);

    r = compute(f, "GET", "/v2.1/flavors/2", NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(api_jget(r.json, "flavor.name"), "m1.small");
    assert_int_equal(json_object_get_int(cl_json_path(r.json, "flavor.disk")), 20);
    api_reply_free(&r);

    /* By id only: the CLI's name lookup needs this 404 before it lists. */
    r = compute(f, "GET", "/v2.1/flavors/m1.tiny", NULL);
    assert_fault(&r, 404, "itemNotFound", "Flavor m1.tiny could not be found.");
    api_reply_free(&r);

    r = compute(f, "GET", "/v2.1/flavors/1/os-extra_specs", NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(cl_json_path(r.json, "extra_specs"));
    api_reply_free(&r);

    r = compute(f, "GET", "/v2.1/flavors?limit=2", NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "flavors")), 2);
    assert_non_null(cl_json_path(r.json, "flavors_links"));
    api_reply_free(&r);
}

/* ---- servers ---- */

static void test_server_lifecycle(void **state)
{
    fixture *f = *state;
    char id[CL_UUID_LEN], path[128], loc[256], reqid[128];
    cl_host h;
    seen_msg m;
    reply r;
    json_object *srv;
    const char *cands[] = {"hostA"};
    char chosen[CL_HOST_MAX];

    r = compute(f, "POST", "/v2.1/servers",
                "{\"server\": {\"name\": \"web-1\", \"flavorRef\": \"http://x/flavors/1\","
                " \"imageRef\": \"7ad09468-f067-471a-ab1c-2332adf8008d\", \"key_name\": \"k\","
                " \"min_count\": 1, \"max_count\": 1, \"networks\": \"none\","
                " \"metadata\": {\"a\": \"b\"}}}");
    assert_int_equal(r.status, 202);
    cl_strlcpy(id, api_jget(r.json, "server.id"), sizeof(id));
    assert_true(cl_uuid_valid(id));
    assert_int_equal(strlen(api_jget(r.json, "server.adminPass")), 12);
    assert_string_equal(api_jget(r.json, "server.OS-DCF:diskConfig"), "MANUAL");
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "server.links")), 2);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "server.security_groups")),
                     1);
    assert_null(cl_json_path(r.json, "server.name"));
    header(&r, "Location", loc, sizeof(loc));
    assert_non_null(strstr(loc, id));
    header(&r, "x-openstack-request-id", reqid, sizeof(reqid));
    api_reply_free(&r);

    /* The scheduler hears about it, with the request id to follow in its logs. */
    assert_true(WAIT_UNTIL(got(f, CL_MSG_INSTANCE_SCHEDULE, id, &m)));
    assert_string_equal(m.req, reqid);
    assert_string_equal(m.from, "nube-api");

    snprintf(path, sizeof(path), "/v2.1/servers/%s", id);
    r = compute(f, "GET", path, NULL);
    assert_int_equal(r.status, 200);
    srv = cl_json_path(r.json, "server");
    assert_string_equal(api_jget(srv, "status"), "BUILD");
    assert_string_equal(api_jget(srv, "name"), "web-1");
    assert_string_equal(api_jget(srv, "tenant_id"), f->fx.cfg.admin_project_id);
    assert_string_equal(api_jget(srv, "user_id"), f->fx.cfg.admin_user_id);
    assert_string_equal(api_jget(srv, "hostId"), "");
    assert_string_equal(api_jget(srv, "OS-EXT-STS:task_state"), "scheduling");
    assert_string_equal(api_jget(srv, "OS-EXT-STS:vm_state"), "building");
    assert_int_equal(json_object_get_int(cl_json_path(srv, "OS-EXT-STS:power_state")), 0);
    assert_null(cl_json_path(srv, "OS-EXT-SRV-ATTR:host"));
    assert_null(cl_json_path(srv, "OS-SRV-USG:launched_at"));
    assert_string_equal(api_jget(srv, "flavor.id"), "1");
    assert_string_equal(api_jget(srv, "image.id"), "7ad09468-f067-471a-ab1c-2332adf8008d");
    assert_string_equal(api_jget(srv, "key_name"), "k");
    assert_string_equal(api_jget(srv, "metadata.a"), "b");
    assert_int_equal(api_jget(srv, "created")[strlen(api_jget(srv, "created")) - 1], 'Z');
    assert_non_null(cl_json_path(srv, "os-extended-volumes:volumes_attached"));
    assert_non_null(cl_json_path(srv, "addresses"));
    assert_null(cl_json_path(srv, "fault"));
    api_reply_free(&r);

    /* Play the scheduler: register a host, claim, then the agent reports it running. */
    memset(&h, 0, sizeof(h));
    cl_strlcpy(h.name, "hostA", sizeof(h.name));
    cl_strlcpy(h.hypervisor_type, "QEMU", sizeof(h.hypervisor_type));
    cl_strlcpy(h.libvirt_uri, "test:///default", sizeof(h.libvirt_uri));
    h.vcpus = 8;
    h.ram_mb = 8192;
    h.disk_gb = 100;
    h.cpu_ratio = h.ram_ratio = h.disk_ratio = 1.0;
    h.up = h.enabled = true;
    assert_int_equal(cl_store_host_register(f->fx.st, &h), 0);
    assert_int_equal(cl_store_claim(f->fx.st, id, cands, 1, chosen), 0);
    assert_int_equal(cl_store_instance_set_state(f->fx.st, id, CL_VM_ACTIVE, CL_TASK_NONE,
                                                 CL_POWER_RUNNING, NULL, 0), 0);
    r = compute(f, "GET", path, NULL);
    assert_int_equal(r.status, 200);
    srv = cl_json_path(r.json, "server");
    assert_string_equal(api_jget(srv, "status"), "ACTIVE");
    assert_int_equal(strlen(api_jget(srv, "hostId")), 56);
    assert_string_equal(api_jget(srv, "OS-EXT-SRV-ATTR:host"), "hostA");
    assert_string_equal(api_jget(srv, "OS-EXT-SRV-ATTR:hypervisor_hostname"), "hostA");
    assert_string_equal(api_jget(srv, "OS-EXT-AZ:availability_zone"), "nova");
    assert_null(cl_json_path(srv, "OS-EXT-STS:task_state"));
    assert_int_equal(json_object_get_int(cl_json_path(srv, "OS-EXT-STS:power_state")), 1);
    /* launched_at: microseconds, no Z ("2026-11-26T04:33:48.000000"). */
    assert_int_equal(strlen(api_jget(srv, "OS-SRV-USG:launched_at")), 26);
    api_reply_free(&r);

    /* The hypervisor shows the claim. */
    r = compute(f, "GET", "/v2.1/os-hypervisors/detail", NULL);
    assert_int_equal(r.status, 200);
    srv = json_object_array_get_idx(cl_json_path(r.json, "hypervisors"), 0);
    assert_string_equal(api_jget(srv, "hypervisor_hostname"), "hostA");
    assert_string_equal(api_jget(srv, "state"), "up");
    assert_int_equal(json_object_get_int(cl_json_path(srv, "vcpus_used")), 1);
    assert_int_equal(json_object_get_int(cl_json_path(srv, "running_vms")), 1);
    assert_int_equal(json_object_get_int(cl_json_path(srv, "free_ram_mb")), 8192 - 512);
    assert_string_equal(api_jget(srv, "service.host"), "hostA");
    snprintf(loc, sizeof(loc), "/v2.1/os-hypervisors/%d",
             json_object_get_int(cl_json_path(srv, "id")));
    api_reply_free(&r);
    r = compute(f, "GET", loc, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(api_jget(r.json, "hypervisor.hypervisor_hostname"), "hostA");
    api_reply_free(&r);
    r = compute(f, "GET", "/v2.1/os-hypervisors", NULL);
    assert_int_equal(r.status, 200);
    assert_null(cl_json_path(json_object_array_get_idx(cl_json_path(r.json, "hypervisors"), 0),
                             "vcpus"));
    api_reply_free(&r);
    r = compute(f, "GET", "/v2.1/os-hypervisors/999", NULL);
    assert_fault(&r, 404, "itemNotFound", NULL);
    api_reply_free(&r);
    r = compute(f, "GET", "/v2.1/os-aggregates", NULL);
    assert_int_equal(r.status, 200);
    api_reply_free(&r);

    /* Delete: 204, the scheduler is told, the server shows "deleting" until gone. */
    r = compute(f, "DELETE", path, NULL);
    assert_int_equal(r.status, 204);
    api_reply_free(&r);
    assert_true(WAIT_UNTIL(got(f, CL_MSG_INSTANCE_DELETE, id, NULL)));
    r = compute(f, "GET", path, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(api_jget(r.json, "server.OS-EXT-STS:task_state"), "deleting");
    api_reply_free(&r);
    r = compute(f, "DELETE", path, NULL);
    assert_int_equal(r.status, 204);
    api_reply_free(&r);

    assert_int_equal(cl_store_instance_mark_deleted(f->fx.st, id), 0);
    r = compute(f, "GET", path, NULL);
    assert_fault(&r, 404, "itemNotFound", "could not be found");
    api_reply_free(&r);
    r = compute(f, "DELETE", path, NULL);
    assert_fault(&r, 404, "itemNotFound", NULL);
    api_reply_free(&r);
}

static void test_list_pagination(void **state)
{
    fixture *f = *state;
    char ids[3][CL_UUID_LEN], path[256];
    const char *next;
    json_object *list;
    reply r;
    int total = 0;

    create_server(f, "page-a", ids[0]);
    create_server(f, "page-b", ids[1]);
    create_server(f, "page-c", ids[2]);

    r = compute(f, "GET", "/v2.1/servers?name=page-", NULL);
    assert_int_equal(r.status, 200);
    list = cl_json_path(r.json, "servers");
    assert_int_equal(json_object_array_length(list), 3);
    /* Newest first, as Nova lists. */
    assert_string_equal(api_jget(json_object_array_get_idx(list, 0), "name"), "page-c");
    assert_null(cl_json_path(json_object_array_get_idx(list, 0), "status"));
    api_reply_free(&r);

    /* Walk all pages of two following "next". */
    snprintf(path, sizeof(path), "/v2.1/servers/detail?limit=2&name=page-");
    for (int page = 0; page < 5; page++) {
        r = compute(f, "GET", path, NULL);
        assert_int_equal(r.status, 200);
        list = cl_json_path(r.json, "servers");
        total += (int)json_object_array_length(list);
        assert_true(json_object_array_length(list) <= 2);
        if (json_object_array_length(list) > 0)
            assert_string_equal(api_jget(json_object_array_get_idx(list, 0), "status"), "BUILD");
        next = NULL;
        if (cl_json_path(r.json, "servers_links"))
            next = api_jget(json_object_array_get_idx(cl_json_path(r.json, "servers_links"), 0),
                        "href");
        if (!next) {
            api_reply_free(&r);
            break;
        }
        assert_non_null(strstr(next, "marker="));
        assert_non_null(strstr(next, "name=page-"));
        snprintf(path, sizeof(path), "%s", strstr(next, "/v2.1/"));
        api_reply_free(&r);
    }
    assert_int_equal(total, 3);

    snprintf(path, sizeof(path), "/v2.1/servers?marker=%s&name=page-", ids[2]);
    r = compute(f, "GET", path, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "servers")), 2);
    api_reply_free(&r);

    r = compute(f, "GET", "/v2.1/servers?status=ACTIVE&name=page-", NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "servers")), 0);
    api_reply_free(&r);

    r = compute(f, "GET", "/v2.1/servers?limit=abc", NULL);
    assert_fault(&r, 400, "badRequest", "limit");
    api_reply_free(&r);
    r = compute(f, "GET", "/v2.1/servers?limit=0", NULL);
    assert_fault(&r, 400, "badRequest", "limit");
    api_reply_free(&r);
    r = compute(f, "GET", "/v2.1/servers?marker=00000000-0000-4000-8000-000000000000", NULL);
    assert_fault(&r, 400, "badRequest", "marker [00000000-0000-4000-8000-000000000000] not found");
    api_reply_free(&r);
}

/* The per-thread list cache (servers.c) must never answer from before a change, whoever
 * made it: another connection (the scheduler's, here the test thread's) or nube-api
 * itself; and server bodies follow the microversion (2.47 embeds the flavor). */
static void test_list_cache_and_microversions(void **state)
{
    fixture *f = *state;
    char id[CL_UUID_LEN], path[128];
    json_object *list;
    reply r;

    create_server(f, "cache-a", id);
    for (int i = 0; i < 3; i++) { /* several workers may each keep an answer */
        r = compute(f, "GET", "/v2.1/servers/detail?name=cache-", NULL);
        assert_int_equal(r.status, 200);
        list = cl_json_path(r.json, "servers");
        assert_int_equal(json_object_array_length(list), 1);
        assert_string_equal(api_jget(json_object_array_get_idx(list, 0), "status"), "BUILD");
        api_reply_free(&r);
    }
    /* Another connection commits: every later answer shows it. */
    assert_int_equal(cl_store_instance_set_state(f->fx.st, id, CL_VM_ACTIVE, CL_TASK_NONE, -1,
                                                 NULL, 0), 0);
    for (int i = 0; i < 3; i++) {
        r = compute(f, "GET", "/v2.1/servers/detail?name=cache-", NULL);
        assert_int_equal(r.status, 200);
        list = cl_json_path(r.json, "servers");
        assert_string_equal(api_jget(json_object_array_get_idx(list, 0), "status"), "ACTIVE");
        api_reply_free(&r);
    }
    /* nube-api's own write (its connection's changes) too. */
    snprintf(path, sizeof(path), "/v2.1/servers/%s", id);
    r = compute(f, "PUT", path, "{\"server\": {\"name\": \"cache-b\"}}");
    assert_int_equal(r.status, 200);
    api_reply_free(&r);
    for (int i = 0; i < 3; i++) {
        r = compute(f, "GET", "/v2.1/servers/detail?name=cache-", NULL);
        list = cl_json_path(r.json, "servers");
        assert_string_equal(api_jget(json_object_array_get_idx(list, 0), "name"), "cache-b");
        api_reply_free(&r);
    }

    /* Metadata only (the rows stay as they were) from another connection: the kept
     * answer's rows still hash the same, its extras do not. */
    cl_kv kv = {.key = "role", .value = "db"};
    assert_int_equal(cl_store_metadata_set(f->fx.st, id, &kv, 1, false, 128), 0);
    for (int i = 0; i < 3; i++) {
        r = compute(f, "GET", "/v2.1/servers/detail?name=cache-", NULL);
        list = cl_json_path(r.json, "servers");
        assert_string_equal(api_jget(json_object_array_get_idx(list, 0), "metadata.role"), "db");
        api_reply_free(&r);
    }

    /* 2.1: the flavor is a link; 2.47: the flavor itself, in show and detail. */
    r = call("GET", f->fx.compute, path, TOKEN, "OpenStack-API-Version: compute 2.1", NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(api_jget(r.json, "server.flavor.id"), "1");
    assert_null(cl_json_path(r.json, "server.locked"));
    api_reply_free(&r);
    r = call("GET", f->fx.compute, path, TOKEN, "OpenStack-API-Version: compute 2.79", NULL);
    assert_int_equal(r.status, 200);
    assert_null(cl_json_path(r.json, "server.flavor.id"));
    assert_string_equal(api_jget(r.json, "server.flavor.original_name"), "m1.tiny");
    assert_string_equal(api_jget(r.json, "server.flavor.ram"), "512");
    assert_non_null(cl_json_path(r.json, "server.flavor.extra_specs"));
    assert_string_equal(api_jget(r.json, "server.locked"), "false");
    assert_non_null(cl_json_path(r.json, "server.server_groups"));
    assert_non_null(cl_json_path(r.json, "server.tags"));
    api_reply_free(&r);
    r = call("GET", f->fx.compute, "/v2.1/servers/detail?name=cache-", TOKEN,
             "OpenStack-API-Version: compute 2.47", NULL);
    assert_int_equal(r.status, 200);
    list = cl_json_path(r.json, "servers");
    assert_string_equal(api_jget(json_object_array_get_idx(list, 0), "flavor.original_name"),
                        "m1.tiny");
    api_reply_free(&r);
}

static void test_bad_inputs(void **state)
{
    fixture *f = *state;
    char big[MAX_BODY * 2];
    reply r;

    /* No token / wrong token: keystonemiddleware's 401. */
    r = call("GET", f->fx.compute, "/v2.1/servers", NULL, NULL, NULL);
    assert_int_equal(r.status, 401);
    assert_int_equal(json_object_get_int(cl_json_path(r.json, "error.code")), 401);
    api_reply_free(&r);
    r = call("GET", f->fx.compute, "/v2.1/servers", "wrong", NULL, NULL);
    assert_int_equal(r.status, 401);
    api_reply_free(&r);

    r = compute(f, "POST", "/v2.1/servers", "{\"server\": {\"name\": \"x\",");
    assert_fault(&r, 400, "badRequest", NULL);
    api_reply_free(&r);
    r = compute(f, "POST", "/v2.1/servers",
                "{\"server\": {\"name\": \"x\", \"flavorRef\": \"nope\", \"imageRef\": \"i\"}}");
    assert_fault(&r, 400, "badRequest", "Flavor nope could not be found.");
    api_reply_free(&r);
    /* A flavor name is not an id. */
    r = compute(f, "POST", "/v2.1/servers",
                "{\"server\": {\"name\": \"x\", \"flavorRef\": \"m1.tiny\", \"imageRef\": \"i\"}}");
    assert_fault(&r, 400, "badRequest", "could not be found");
    api_reply_free(&r);
    r = compute(f, "POST", "/v2.1/servers",
                "{\"server\": {\"flavorRef\": \"1\", \"imageRef\": \"i\"}}");
    assert_fault(&r, 400, "badRequest", "name");
    api_reply_free(&r);
    r = compute(f, "POST", "/v2.1/servers",
                "{\"server\": {\"name\": \"   \", \"flavorRef\": \"1\", \"imageRef\": \"i\"}}");
    assert_fault(&r, 400, "badRequest", "whitespace");
    api_reply_free(&r);
    r = compute(f, "POST", "/v2.1/servers",
                "{\"server\": {\"name\": \" x\", \"flavorRef\": \"1\", \"imageRef\": \"i\"}}");
    assert_fault(&r, 400, "badRequest", "whitespace");
    api_reply_free(&r);
    r = compute(f, "POST", "/v2.1/servers",
                "{\"server\": {\"name\": 42, \"flavorRef\": \"1\", \"imageRef\": \"i\"}}");
    assert_fault(&r, 400, "badRequest", "name");
    api_reply_free(&r);
    r = compute(f, "POST", "/v2.1/servers",
                "{\"server\": {\"name\": \"x\", \"flavorRef\": \"1\"}}");
    assert_fault(&r, 400, "badRequest", "imageRef");
    api_reply_free(&r);
    r = compute(f, "POST", "/v2.1/servers",
                "{\"server\": {\"name\": \"x\", \"flavorRef\": \"1\", \"imageRef\": \"i\","
                " \"min_count\": 3, \"max_count\": 2}}");
    assert_fault(&r, 400, "badRequest", "min_count");
    api_reply_free(&r);
    r = compute(f, "POST", "/v2.1/servers",
                "{\"server\": {\"name\": \"x\", \"flavorRef\": \"1\", \"imageRef\": \"i\","
                " \"metadata\": {\"k\": 1}}}");
    assert_fault(&r, 400, "badRequest", "metadata");
    api_reply_free(&r);
    r = compute(f, "POST", "/v2.1/servers",
                "{\"server\": {\"name\": \"x\", \"flavorRef\": \"1\", \"imageRef\": \"i\","
                " \"networks\": 5}}");
    assert_fault(&r, 400, "badRequest", "networks");
    api_reply_free(&r);
    r = compute(f, "POST", "/v2.1/servers",
                "{\"server\": {\"name\": \"x\", \"flavorRef\": \"1\", \"imageRef\": \"i\","
                " \"colour\": \"red\"}}");
    assert_fault(&r, 400, "badRequest", "'colour' was unexpected");
    api_reply_free(&r);
    r = compute(f, "POST", "/v2.1/servers", "{\"nothing\": {}}");
    assert_fault(&r, 400, "badRequest", NULL);
    api_reply_free(&r);

    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    memcpy(big, "{\"server\": {\"name\": \"", 21);
    r = compute(f, "POST", "/v2.1/servers", big);
    assert_fault(&r, 413, "requestEntityTooLarge", NULL);
    api_reply_free(&r);

    r = compute(f, "GET", "/v2.1/no-such-thing", NULL);
    assert_fault(&r, 404, "itemNotFound", NULL);
    api_reply_free(&r);
    r = compute(f, "GET", "/v2.1/servers/00000000-0000-0000-0000-000000000000", NULL);
    assert_fault(&r, 404, "itemNotFound", "Instance 00000000-0000-0000-0000-000000000000");
    api_reply_free(&r);
    r = compute(f, "PUT", "/v2.1/servers", "{}");
    assert_int_equal(r.status, 405);
    api_reply_free(&r);

    /* Still serving, and nothing above created a server. */
    r = compute(f, "GET", "/v2.1/servers?name=x", NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "servers")), 0);
    api_reply_free(&r);
}

static void test_metrics(void **state)
{
    fixture *f = *state;
    reply r = call("GET", f->fx.compute, "/metrics", NULL, NULL, NULL);

    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.raw.body, "nube_api_servers_created_total"));
    assert_non_null(strstr(r.raw.body, "nube_api_bus_pending"));
    api_reply_free(&r);
    r = call("GET", f->fx.compute, "/healthz", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    api_reply_free(&r);
}

/* The stand-in image service the CLI needs for server commands (images.c). */
static void test_image_standin(void **state)
{
    fixture *f = *state;
    char raw[4096];
    reply r;

    raw_get(api_compute_port(f->fx.api), "/image", raw, sizeof(raw));
    assert_non_null(strstr(raw, "HTTP/1.1 300"));
    assert_non_null(strstr(raw, "/image/v2/"));
    r = compute(f, "GET", "/image/v2/images/cirros", NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(api_jget(r.json, "id"), "cirros");
    assert_string_equal(api_jget(r.json, "status"), "active");
    api_reply_free(&r);
    r = call("GET", f->fx.compute, "/image/v2/images?name=cirros", NULL, NULL, NULL);
    assert_int_equal(r.status, 401);
    api_reply_free(&r);
}

/* An api_start() without its secrets refuses, naming the key. */
static void test_refuses_empty_secrets(void **state)
{
    fixture *f = *state;
    api_cfg cfg;
    api_ctx *ctx = NULL;
    cl_error err = {0};

    assert_int_equal(cl_config_defaults(api_cfg_keys, api_cfg_nkeys, &cfg, &err), 0);
    assert_int_equal(cl_config_set(api_cfg_keys, api_cfg_nkeys, &cfg, "database",
                                   "connection", f->fx.db, &err), 0);
    assert_true(api_start(&cfg, &ctx, &err) < 0);
    assert_null(ctx);
    assert_non_null(strstr(err.message, "admin_token"));
    cl_config_free(api_cfg_keys, api_cfg_nkeys, &cfg);
}

/* A database of an early release kept key names and metadata in api_server_extra; the
 * upgrade moves them into the compute schema and drops that table. It once failed with
 * "database table is locked" because the probe of sqlite_master was still open. */
static void test_upgrade_moves_server_extras(void **state)
{
    char dir[] = "/tmp/nube-api-upgrade-XXXXXX", path[64];
    cl_store *st = NULL;
    cl_error err = {0};
    sqlite3_stmt *s = NULL;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/nube.db", dir);
    assert_int_equal(cl_store_open(path, &st, &err), 0);
    assert_int_equal(cl_db_exec(cl_store_db(st), "CREATE TABLE api_server_extra (uuid TEXT "
                                "PRIMARY KEY, key_name TEXT, metadata TEXT); INSERT INTO "
                                "api_server_extra VALUES ('0a1b2c3d-0000-4000-8000-"
                                "000000000001', 'k', '{\"a\":\"b\"}')"), 0);
    assert_int_equal(api_servers_prepare_db(st, &err), 0);
    assert_int_equal(cl_db_prepare(cl_store_db(st), "SELECT count(*) FROM sqlite_master "
                                   "WHERE name = 'api_server_extra'", &s), 0);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(s, 0), 0);
    sqlite3_finalize(s);
    /* Idempotent: a second start finds nothing to move. */
    assert_int_equal(api_servers_prepare_db(st, &err), 0);
    cl_store_free(st);
    unlink(path);
    snprintf(path, sizeof(path), "%s/nube.db-wal", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/nube.db-shm", dir);
    unlink(path);
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identity_versions),
        cmocka_unit_test(test_token_issue),
        cmocka_unit_test(test_compute_versions),
        cmocka_unit_test(test_flavors),
        cmocka_unit_test(test_server_lifecycle),
        cmocka_unit_test(test_list_pagination),
        cmocka_unit_test(test_list_cache_and_microversions),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_image_standin),
        cmocka_unit_test(test_refuses_empty_secrets),
        cmocka_unit_test(test_upgrade_moves_server_extras),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
