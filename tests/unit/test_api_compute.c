/*
 * test_api_compute.c - the compute API's policy, quotas, key pairs, server extras,
 * flavors, services, hypervisors and usage, through real HTTP on loopback.
 *
 * One api_start() per group with a temporary controller DB, a token key file the test
 * generates, and port 0 for both listeners. Callers are sealed tokens the test mints with
 * that key (cl_token_issue) for two projects and the three roles, so policy is tested
 * exactly as requests carry it. A real cl_bus ROUTER plays the scheduler (creates send
 * instance.schedule). Where the scheduler or an agent would move an instance on, the
 * test does it with its own cl_store on the same file.
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
#include <unistd.h>

#include <cmocka.h>

#include "api.h"
#include "api_fixture.h"
#include "auth.h"
#include "bus.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "store.h"
#include "store_compute.h"
#include "store_placement.h"
#include "token.h"
#include "util.h"

#define STATIC_TOKEN "test-static-admin-token"
#define PASSWORD "s3cret-pw"
#define PROJECT_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define PROJECT_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define PUBKEY "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMdi+/7jveyC425gpdNTLaug30xlVsdcntBYjy02az2C t"
#define PUBKEY_FP "80:ad:ad:a9:81:01:80:1d:5d:6f:39:2a:47:41:0a:26"

typedef struct fixture {
    api_fx fx;
    char keyfile[300];
    /* callers */
    char admin[CL_TOKEN_MAX];   /* admin of project A */
    char member_a[CL_TOKEN_MAX];
    char reader_a[CL_TOKEN_MAX];
    char member_b[CL_TOKEN_MAX];
} fixture;

static void on_sched_msg(cl_bus *bus, const cl_bus_msg *msg, void *ud)
{
    (void)bus;
    (void)msg;
    (void)ud;
}

static void mint(const cl_token_key *key, const char *user, const char *project, unsigned roles,
                 char out[CL_TOKEN_MAX])
{
    cl_auth a = {0};
    cl_error err = {0};

    cl_strlcpy(a.user_id, user, sizeof(a.user_id));
    cl_strlcpy(a.project_id, project, sizeof(a.project_id));
    cl_strlcpy(a.domain_id, "default", sizeof(a.domain_id));
    a.roles = roles;
    a.issued_ms = cl_now_ms();
    a.expires_ms = a.issued_ms + 3600 * 1000;
    if (cl_token_issue(key, &a, out, CL_TOKEN_MAX, &err) < 0)
        fail_msg("token: %s", err.message);
}

static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    cl_error err = {0};
    cl_token_key key;
    const unsigned rd = CL_ROLE_BIT(CL_ROLE_READER), mb = CL_ROLE_BIT(CL_ROLE_MEMBER),
                   ad = CL_ROLE_BIT(CL_ROLE_ADMIN);

    assert_non_null(f);
    api_fx_prepare(&f->fx, "test_api_compute", on_sched_msg, f, STATIC_TOKEN, PASSWORD);
    snprintf(f->keyfile, sizeof(f->keyfile), "%s/token.key", f->fx.dir);
    if (cl_token_key_generate(f->keyfile, &err) < 0 ||
        cl_token_key_load(f->keyfile, false, &key, &err) < 0)
        fail_msg("token key: %s", err.message);
    api_fx_set(&f->fx, "DEFAULT", "state_dir", f->fx.dir);
    api_fx_set(&f->fx, "api", "workers", "8");
    api_fx_set(&f->fx, "auth", "token_key_file", f->keyfile);
    api_fx_set(&f->fx, "auth", "password_iterations", "1000");
    api_fx_start(&f->fx);
    mint(&key, "u-admin", PROJECT_A, rd | mb | ad, f->admin);
    mint(&key, "u-member-a", PROJECT_A, rd | mb, f->member_a);
    mint(&key, "u-reader-a", PROJECT_A, rd, f->reader_a);
    mint(&key, "u-member-b", PROJECT_B, rd | mb, f->member_b);
    *state = f;
    return 0;
}

static int group_teardown(void **state)
{
    fixture *f = *state;

    api_fx_stop(&f->fx, (const char *const[]){"token.key", NULL});
    free(f);
    return 0;
}

/* ---- HTTP helpers ---- */

typedef api_reply reply;

/* One request as the caller with token; mv: "2.53" etc. or NULL. */
static reply call(fixture *f, const char *token, const char *method, const char *path,
                  const char *mv, const char *body)
{
    char url[600], auth[CL_TOKEN_MAX + 32], ver[64];
    const char *headers[4];
    size_t nh = 0;

    snprintf(url, sizeof(url), "%s%s", f->fx.compute, path);
    snprintf(auth, sizeof(auth), "X-Auth-Token: %s", token);
    headers[nh++] = auth;
    if (body)
        headers[nh++] = "Content-Type: application/json";
    if (mv) {
        snprintf(ver, sizeof(ver), "OpenStack-API-Version: compute %s", mv);
        headers[nh++] = ver;
    }
    headers[nh] = NULL;
    return api_fx_request(method, url, headers, body, 20000);
}

static void expect(const reply *r, long status)
{
    if (r->status != status)
        fail_msg("expected %ld, got %ld: %s", status, r->status, r->raw.body);
}

/* Assert a fault {"<fault>": {"code": status, "message": ... needle ...}}. */
static void expect_fault(const reply *r, long status, const char *fault, const char *needle)
{
    json_object *o;

    expect(r, status);
    assert_non_null(r->json);
    if (!json_object_object_get_ex(r->json, fault, &o))
        fail_msg("no %s in %s", fault, r->raw.body);
    if (needle && !strstr(api_jget(o, "message"), needle))
        fail_msg("message '%s' lacks '%s'", api_jget(o, "message"), needle);
}

/* Create one server as token; returns its id. */
static void create(fixture *f, const char *token, const char *name, char out[CL_UUID_LEN])
{
    char body[512];
    reply r;

    snprintf(body, sizeof(body),
             "{\"server\": {\"name\": \"%s\", \"flavorRef\": \"1\", \"imageRef\": \"cirros\"}}",
             name);
    r = call(f, token, "POST", "/v2.1/servers", NULL, body);
    expect(&r, 202);
    cl_strlcpy(out, api_jget(r.json, "server.id"), CL_UUID_LEN);
    api_reply_free(&r);
}

/* Whether obj has key (even with a JSON null value). */
static bool has_key(json_object *obj, const char *key)
{
    return obj && json_object_object_get_ex(obj, key, NULL);
}

static bool list_has(const reply *r, const char *coll, const char *id)
{
    json_object *arr = cl_json_path(r->json, coll);

    for (size_t i = 0; arr && i < json_object_array_length(arr); i++)
        if (strcmp(api_jget(json_object_array_get_idx(arr, i), "id"), id) == 0)
            return true;
    return false;
}

/* ---- tests ---- */

static void test_policy_isolation(void **state)
{
    fixture *f = *state;
    char id[CL_UUID_LEN], path[128];
    reply r;

    create(f, f->member_a, "iso-a", id);
    snprintf(path, sizeof(path), "/v2.1/servers/%s", id);

    /* Another project: exactly like a missing server. */
    r = call(f, f->member_b, "GET", path, NULL, NULL);
    expect_fault(&r, 404, "itemNotFound", "could not be found");
    api_reply_free(&r);
    r = call(f, f->member_b, "DELETE", path, NULL, NULL);
    expect_fault(&r, 404, "itemNotFound", NULL);
    api_reply_free(&r);
    r = call(f, f->member_b, "GET", "/v2.1/servers/detail", NULL, NULL);
    expect(&r, 200);
    assert_false(list_has(&r, "servers", id));
    api_reply_free(&r);

    /* The reader of the project reads, but neither writes nor creates. */
    r = call(f, f->reader_a, "GET", path, NULL, NULL);
    expect(&r, 200);
    assert_string_equal(api_jget(r.json, "server.tenant_id"), PROJECT_A);
    /* Host attributes are for admins. */
    assert_false(has_key(cl_json_path(r.json, "server"), "OS-EXT-SRV-ATTR:host"));
    api_reply_free(&r);
    r = call(f, f->reader_a, "DELETE", path, NULL, NULL);
    expect_fault(&r, 403, "forbidden", "Policy");
    api_reply_free(&r);
    r = call(f, f->reader_a, "PUT", path, NULL, "{\"server\": {\"name\": \"x\"}}");
    expect(&r, 403);
    api_reply_free(&r);
    r = call(f, f->reader_a, "POST", "/v2.1/servers", NULL,
             "{\"server\": {\"name\": \"r\", \"flavorRef\": \"1\", \"imageRef\": \"i\"}}");
    expect(&r, 403);
    api_reply_free(&r);

    /* all_tenants is the admin's. */
    r = call(f, f->member_a, "GET", "/v2.1/servers?all_tenants=1", NULL, NULL);
    expect(&r, 403);
    api_reply_free(&r);
    r = call(f, f->admin, "GET", "/v2.1/servers/detail?all_tenants=1", NULL, NULL);
    expect(&r, 200);
    assert_true(list_has(&r, "servers", id));
    assert_true(has_key(json_object_array_get_idx(cl_json_path(r.json, "servers"), 0),
                        "OS-EXT-SRV-ATTR:host"));
    api_reply_free(&r);

    /* The member of the project deletes it. */
    r = call(f, f->member_a, "DELETE", path, NULL, NULL);
    expect(&r, 204);
    api_reply_free(&r);
}

static void test_fault_details_for_admins(void **state)
{
    fixture *f = *state;
    char id[CL_UUID_LEN], path[128];
    reply r;

    create(f, f->member_a, "doomed", id);
    assert_int_equal(cl_store_instance_fail(f->fx.st, id,
                                            "No valid host was found. Flavor 'm1.tiny' needs "
                                            "1 vCPU; the most free RAM is 10 MB on secret-host",
                                            500), 0);
    snprintf(path, sizeof(path), "/v2.1/servers/%s", id);
    r = call(f, f->member_a, "GET", path, NULL, NULL);
    expect(&r, 200);
    assert_string_equal(api_jget(r.json, "server.status"), "ERROR");
    assert_string_equal(api_jget(r.json, "server.fault.message"),
                        "No valid host was found. There are not enough hosts available.");
    assert_null(strstr(r.raw.body, "secret-host"));
    api_reply_free(&r);
    r = call(f, f->admin, "GET", path, NULL, NULL);
    expect(&r, 200);
    assert_non_null(strstr(api_jget(r.json, "server.fault.details"), "secret-host"));
    api_reply_free(&r);
}

typedef struct racer {
    fixture *f;
    long status;
    char message[256];
} racer;

static void *race_create(void *p)
{
    racer *rc = p;
    reply r = call(rc->f, rc->f->member_b, "POST", "/v2.1/servers", NULL,
                   "{\"server\": {\"name\": \"race\", \"flavorRef\": \"1\","
                   " \"imageRef\": \"cirros\"}}");

    rc->status = r.status;
    if (r.status == 403 && r.json)
        cl_strlcpy(rc->message, api_jget(r.json, "overLimit.message") ?: "", sizeof(rc->message));
    api_reply_free(&r);
    return NULL;
}

static void test_quota_parallel_creates(void **state)
{
    fixture *f = *state;
    racer racers[8];
    pthread_t th[8];
    int ok = 0, over = 0;
    reply r;

    /* Only admins set quotas; members read their own. */
    r = call(f, f->member_b, "PUT", "/v2.1/os-quota-sets/" PROJECT_B, NULL,
             "{\"quota_set\": {\"cores\": 100}}");
    expect(&r, 403);
    api_reply_free(&r);
    r = call(f, f->admin, "PUT", "/v2.1/os-quota-sets/" PROJECT_B, NULL,
             "{\"quota_set\": {\"cores\": 3, \"instances\": 20}}");
    expect(&r, 200);
    assert_int_equal(json_object_get_int(cl_json_path(r.json, "quota_set.cores")), 3);
    api_reply_free(&r);
    r = call(f, f->admin, "PUT", "/v2.1/os-quota-sets/" PROJECT_B, NULL,
             "{\"quota_set\": {\"cores\": -5}}");
    expect(&r, 400);
    api_reply_free(&r);
    r = call(f, f->member_b, "GET", "/v2.1/os-quota-sets/" PROJECT_B, NULL, NULL);
    expect(&r, 200);
    assert_int_equal(json_object_get_int(cl_json_path(r.json, "quota_set.cores")), 3);
    assert_int_equal(json_object_get_int(cl_json_path(r.json, "quota_set.ram")), 51200);
    assert_string_equal(api_jget(r.json, "quota_set.id"), PROJECT_B);
    api_reply_free(&r);
    r = call(f, f->member_b, "GET", "/v2.1/os-quota-sets/" PROJECT_A, NULL, NULL);
    expect(&r, 403);
    api_reply_free(&r);

    for (int i = 0; i < 8; i++) {
        racers[i] = (racer){.f = f};
        assert_int_equal(pthread_create(&th[i], NULL, race_create, &racers[i]), 0);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        if (racers[i].status == 202)
            ok++;
        else if (racers[i].status == 403) {
            over++;
            assert_non_null(strstr(racers[i].message, "Quota exceeded for cores: Requested 1, "
                                                      "but already used 3 of 3 cores"));
        }
    }
    assert_int_equal(ok, 3);
    assert_int_equal(over, 5);

    r = call(f, f->member_b, "GET", "/v2.1/limits", NULL, NULL);
    expect(&r, 200);
    assert_int_equal(json_object_get_int(cl_json_path(r.json, "limits.absolute.totalCoresUsed")),
                     3);
    assert_int_equal(json_object_get_int(cl_json_path(r.json,
                                                      "limits.absolute.maxTotalCores")), 3);
    api_reply_free(&r);
    r = call(f, f->admin, "GET", "/v2.1/os-quota-sets/" PROJECT_B "/detail", NULL, NULL);
    expect(&r, 200);
    assert_int_equal(json_object_get_int(cl_json_path(r.json, "quota_set.cores.in_use")), 3);
    assert_int_equal(json_object_get_int(cl_json_path(r.json, "quota_set.cores.limit")), 3);
    api_reply_free(&r);
    /* Multi-create takes as many as fit, if at least min_count do. */
    r = call(f, f->admin, "PUT", "/v2.1/os-quota-sets/" PROJECT_B, NULL,
             "{\"quota_set\": {\"cores\": 5}}");
    expect(&r, 200);
    api_reply_free(&r);
    r = call(f, f->member_b, "POST", "/v2.1/servers", NULL,
             "{\"server\": {\"name\": \"mq\", \"flavorRef\": \"1\", \"imageRef\": \"i\","
             " \"min_count\": 3, \"max_count\": 4}}");
    expect_fault(&r, 403, "overLimit", "Requested 4, but already used 3 of 5 cores");
    api_reply_free(&r);
    r = call(f, f->member_b, "POST", "/v2.1/servers", NULL,
             "{\"server\": {\"name\": \"mq\", \"flavorRef\": \"1\", \"imageRef\": \"i\","
             " \"min_count\": 1, \"max_count\": 4}}");
    expect(&r, 202);
    api_reply_free(&r);
    r = call(f, f->member_b, "GET", "/v2.1/servers?name=mq-", NULL, NULL);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "servers")), 2);
    api_reply_free(&r);
    /* Lowering a quota below what is used needs force. */
    r = call(f, f->admin, "PUT", "/v2.1/os-quota-sets/" PROJECT_B, NULL,
             "{\"quota_set\": {\"cores\": 1}}");
    expect(&r, 400);
    api_reply_free(&r);
    r = call(f, f->admin, "PUT", "/v2.1/os-quota-sets/" PROJECT_B, NULL,
             "{\"quota_set\": {\"cores\": 1, \"force\": true}}");
    expect(&r, 200);
    api_reply_free(&r);
    /* Back to the defaults. */
    r = call(f, f->admin, "DELETE", "/v2.1/os-quota-sets/" PROJECT_B, NULL, NULL);
    expect(&r, 202);
    api_reply_free(&r);
    r = call(f, f->member_b, "GET", "/v2.1/os-quota-sets/" PROJECT_B, NULL, NULL);
    assert_int_equal(json_object_get_int(cl_json_path(r.json, "quota_set.cores")), 20);
    api_reply_free(&r);
}

static void test_keypairs(void **state)
{
    fixture *f = *state;
    const char *priv, *fp;
    reply r;

    /* Generated: the private half comes back once. */
    r = call(f, f->member_a, "POST", "/v2.1/os-keypairs", "2.10",
             "{\"keypair\": {\"name\": \"gen\"}}");
    expect(&r, 201);
    priv = api_jget(r.json, "keypair.private_key");
    assert_non_null(priv);
    assert_non_null(strstr(priv, "PRIVATE KEY-----"));
    assert_int_equal(strncmp(api_jget(r.json, "keypair.public_key"), "ssh-rsa AAAA", 12), 0);
    fp = api_jget(r.json, "keypair.fingerprint");
    assert_int_equal(strlen(fp), 47);
    assert_string_equal(api_jget(r.json, "keypair.user_id"), "u-member-a");
    api_reply_free(&r);

    /* Imported: Nova's MD5 fingerprint. */
    r = call(f, f->member_a, "POST", "/v2.1/os-keypairs", "2.10",
             "{\"keypair\": {\"name\": \"imp\", \"public_key\": \"" PUBKEY "\"}}");
    expect(&r, 201);
    assert_string_equal(api_jget(r.json, "keypair.fingerprint"), PUBKEY_FP);
    assert_null(cl_json_path(r.json, "keypair.private_key"));
    api_reply_free(&r);
    r = call(f, f->member_a, "POST", "/v2.1/os-keypairs", "2.10",
             "{\"keypair\": {\"name\": \"imp\", \"public_key\": \"" PUBKEY "\"}}");
    expect_fault(&r, 409, "conflictingRequest", "already exists");
    api_reply_free(&r);
    r = call(f, f->member_a, "POST", "/v2.1/os-keypairs", "2.10",
             "{\"keypair\": {\"name\": \"bad\", \"public_key\": \"ssh-rsa !!notbase64\"}}");
    expect(&r, 400);
    api_reply_free(&r);
    r = call(f, f->member_a, "POST", "/v2.1/os-keypairs", "2.10",
             "{\"keypair\": {\"name\": \"bad/name\"}}");
    expect(&r, 400);
    api_reply_free(&r);
    r = call(f, f->reader_a, "POST", "/v2.1/os-keypairs", "2.10",
             "{\"keypair\": {\"name\": \"rk\"}}");
    expect(&r, 403);
    api_reply_free(&r);

    r = call(f, f->member_a, "GET", "/v2.1/os-keypairs", "2.10", NULL);
    expect(&r, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "keypairs")), 2);
    assert_string_equal(api_jget(json_object_array_get_idx(cl_json_path(r.json, "keypairs"), 0),
                             "keypair.name"), "gen");
    api_reply_free(&r);
    /* Key pairs are per user: another user does not see them. */
    r = call(f, f->member_b, "GET", "/v2.1/os-keypairs/imp", "2.10", NULL);
    expect_fault(&r, 404, "itemNotFound", NULL);
    api_reply_free(&r);
    r = call(f, f->member_b, "GET", "/v2.1/os-keypairs?user_id=u-member-a", "2.10", NULL);
    expect(&r, 403);
    api_reply_free(&r);
    r = call(f, f->admin, "GET", "/v2.1/os-keypairs?user_id=u-member-a", "2.10", NULL);
    expect(&r, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "keypairs")), 2);
    api_reply_free(&r);

    /* key_name must exist for the caller. */
    r = call(f, f->member_b, "POST", "/v2.1/servers", NULL,
             "{\"server\": {\"name\": \"k\", \"flavorRef\": \"1\", \"imageRef\": \"i\","
             " \"key_name\": \"imp\"}}");
    expect_fault(&r, 400, "badRequest", "Invalid key_name");
    api_reply_free(&r);
    r = call(f, f->member_a, "POST", "/v2.1/servers", NULL,
             "{\"server\": {\"name\": \"k\", \"flavorRef\": \"1\", \"imageRef\": \"i\","
             " \"key_name\": \"imp\"}}");
    expect(&r, 202);
    api_reply_free(&r);

    r = call(f, f->member_a, "DELETE", "/v2.1/os-keypairs/imp", "2.10", NULL);
    expect(&r, 204);
    api_reply_free(&r);
    r = call(f, f->member_a, "DELETE", "/v2.1/os-keypairs/imp", "2.10", NULL);
    expect(&r, 404);
    api_reply_free(&r);
}

static void test_server_extras(void **state)
{
    fixture *f = *state;
    char id[CL_UUID_LEN], path[200], since[64], q[128];
    char big[70000 + 128];
    int64_t before;
    reply r;

    /* user_data: base64, at most 65535 bytes. */
    r = call(f, f->member_a, "POST", "/v2.1/servers", NULL,
             "{\"server\": {\"name\": \"u\", \"flavorRef\": \"1\", \"imageRef\": \"i\","
             " \"user_data\": \"not base64!\"}}");
    expect(&r, 400);
    api_reply_free(&r);
    snprintf(big, sizeof(big), "{\"server\": {\"name\": \"u\", \"flavorRef\": \"1\", "
                               "\"imageRef\": \"i\", \"user_data\": \"");
    {
        size_t o = strlen(big);

        memset(big + o, 'A', 65540);
        snprintf(big + o + 65540, sizeof(big) - o - 65540, "\"}}");
    }
    r = call(f, f->member_a, "POST", "/v2.1/servers", NULL, big);
    /* Larger than the API's body cap or than Nova's user data limit: both refuse it. */
    assert_true(r.status == 400 || r.status == 413);
    api_reply_free(&r);

    /* Multi-create: name-1..N; return_reservation_id. */
    before = cl_now_ms();
    r = call(f, f->member_a, "POST", "/v2.1/servers", NULL,
             "{\"server\": {\"name\": \"multi\", \"flavorRef\": \"1\", \"imageRef\": \"i\","
             " \"user_data\": \"aGVsbG8=\", \"min_count\": 2, \"max_count\": 2,"
             " \"metadata\": {\"role\": \"web\"}}}");
    expect(&r, 202);
    cl_strlcpy(id, api_jget(r.json, "server.id"), sizeof(id));
    api_reply_free(&r);
    r = call(f, f->member_a, "GET", "/v2.1/servers?name=multi-", NULL, NULL);
    expect(&r, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "servers")), 2);
    api_reply_free(&r);
    r = call(f, f->member_a, "POST", "/v2.1/servers", NULL,
             "{\"server\": {\"name\": \"resv\", \"flavorRef\": \"1\", \"imageRef\": \"i\","
             " \"return_reservation_id\": true}}");
    expect(&r, 202);
    assert_int_equal(strncmp(api_jget(r.json, "reservation_id"), "r-", 2), 0);
    api_reply_free(&r);

    /* Rename. */
    snprintf(path, sizeof(path), "/v2.1/servers/%s", id);
    r = call(f, f->member_a, "PUT", path, NULL, "{\"server\": {\"name\": \"renamed\"}}");
    expect(&r, 200);
    assert_string_equal(api_jget(r.json, "server.name"), "renamed");
    assert_string_equal(api_jget(r.json, "server.metadata.role"), "web");
    api_reply_free(&r);
    r = call(f, f->member_a, "PUT", path, NULL, "{\"server\": {\"name\": \"\"}}");
    expect(&r, 400);
    api_reply_free(&r);
    /* Lists read the extras of a page in one go: each server gets its own. */
    r = call(f, f->member_a, "GET", "/v2.1/servers/detail?name=multi", NULL, NULL);
    expect(&r, 200);
    {
        json_object *arr = cl_json_path(r.json, "servers");
        int with_md = 0;

        for (size_t i = 0; i < json_object_array_length(arr); i++) {
            json_object *srv = json_object_array_get_idx(arr, i);

            assert_true(has_key(srv, "key_name"));
            if (api_jget(srv, "metadata.role"))
                with_md++;
        }
        assert_int_equal(json_object_array_length(arr), 1); /* multi-2; multi-1 renamed */
        assert_int_equal(with_md, 1);
    }
    api_reply_free(&r);
    r = call(f, f->member_a, "GET", "/v2.1/servers/detail?limit=1", NULL, NULL);
    expect(&r, 200);
    assert_non_null(cl_json_path(r.json, "servers_links"));
    api_reply_free(&r);

    /* changes-since: only what changed after the time (the rename, not older ones). */
    cl_time_iso8601(before - 1000, false, since, sizeof(since));
    snprintf(q, sizeof(q), "/v2.1/servers?changes-since=%s", since);
    r = call(f, f->member_a, "GET", q, NULL, NULL);
    expect(&r, 200);
    assert_true(list_has(&r, "servers", id));
    api_reply_free(&r);
    r = call(f, f->member_a, "GET", "/v2.1/servers?changes-since=2999-01-01T00:00:00Z", NULL,
             NULL);
    expect(&r, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "servers")), 0);
    api_reply_free(&r);
    r = call(f, f->member_a, "GET", "/v2.1/servers?changes-since=yesterday", NULL, NULL);
    expect(&r, 400);
    api_reply_free(&r);

    /* Metadata endpoints. */
    snprintf(path, sizeof(path), "/v2.1/servers/%s/metadata", id);
    r = call(f, f->member_a, "POST", path, NULL, "{\"metadata\": {\"tier\": \"1\"}}");
    expect(&r, 200);
    assert_string_equal(api_jget(r.json, "metadata.role"), "web");
    assert_string_equal(api_jget(r.json, "metadata.tier"), "1");
    api_reply_free(&r);
    r = call(f, f->member_a, "PUT", path, NULL, "{\"metadata\": {\"only\": \"x\"}}");
    expect(&r, 200);
    assert_null(cl_json_path(r.json, "metadata.role"));
    api_reply_free(&r);
    r = call(f, f->reader_a, "POST", path, NULL, "{\"metadata\": {\"a\": \"b\"}}");
    expect(&r, 403);
    api_reply_free(&r);
    r = call(f, f->member_b, "GET", path, NULL, NULL);
    expect(&r, 404);
    api_reply_free(&r);
    snprintf(path, sizeof(path), "/v2.1/servers/%s/metadata/k2", id);
    r = call(f, f->member_a, "PUT", path, NULL, "{\"meta\": {\"k2\": \"v2\"}}");
    expect(&r, 200);
    api_reply_free(&r);
    r = call(f, f->member_a, "PUT", path, NULL, "{\"meta\": {\"other\": \"v2\"}}");
    expect(&r, 400);
    api_reply_free(&r);
    r = call(f, f->reader_a, "GET", path, NULL, NULL);
    expect(&r, 200);
    assert_string_equal(api_jget(r.json, "meta.k2"), "v2");
    api_reply_free(&r);
    r = call(f, f->member_a, "DELETE", path, NULL, NULL);
    expect(&r, 204);
    api_reply_free(&r);
    r = call(f, f->member_a, "GET", path, NULL, NULL);
    expect(&r, 404);
    api_reply_free(&r);

    /* Instance actions. */
    snprintf(path, sizeof(path), "/v2.1/servers/%s/os-instance-actions", id);
    r = call(f, f->reader_a, "GET", path, NULL, NULL);
    expect(&r, 200);
    assert_string_equal(api_jget(json_object_array_get_idx(cl_json_path(r.json, "instanceActions"),
                                                       0), "action"), "create");
    {
        char show[300];

        snprintf(show, sizeof(show), "%s/%s", path,
                 api_jget(json_object_array_get_idx(cl_json_path(r.json, "instanceActions"), 0),
                      "request_id"));
        api_reply_free(&r);
        r = call(f, f->admin, "GET", show, NULL, NULL);
        expect(&r, 200);
        assert_string_equal(api_jget(r.json, "instanceAction.action"), "create");
        assert_non_null(cl_json_path(r.json, "instanceAction.events"));
    }
    api_reply_free(&r);
    r = call(f, f->member_b, "GET", path, NULL, NULL);
    expect(&r, 404);
    api_reply_free(&r);
}

static void test_flavors_admin(void **state)
{
    fixture *f = *state;
    reply r;

    r = call(f, f->member_a, "POST", "/v2.1/flavors", "2.61",
             "{\"flavor\": {\"name\": \"nope\", \"ram\": 64, \"vcpus\": 1, \"disk\": 1}}");
    expect(&r, 403);
    api_reply_free(&r);
    r = call(f, f->admin, "POST", "/v2.1/flavors", "2.61",
             "{\"flavor\": {\"name\": \"priv\", \"id\": \"p1\", \"ram\": 64, \"vcpus\": 1,"
             " \"disk\": 1, \"os-flavor-access:is_public\": false, \"description\": \"d\"}}");
    expect(&r, 200);
    assert_string_equal(api_jget(r.json, "flavor.id"), "p1");
    assert_string_equal(api_jget(r.json, "flavor.description"), "d");
    api_reply_free(&r);
    r = call(f, f->admin, "POST", "/v2.1/flavors", "2.61",
             "{\"flavor\": {\"name\": \"priv\", \"ram\": 64, \"vcpus\": 1, \"disk\": 1}}");
    expect(&r, 409);
    api_reply_free(&r);
    r = call(f, f->admin, "POST", "/v2.1/flavors", "2.61",
             "{\"flavor\": {\"name\": \"x\", \"ram\": 0, \"vcpus\": 1, \"disk\": 1}}");
    expect(&r, 400);
    api_reply_free(&r);

    /* Private: invisible to tenants until shared. */
    r = call(f, f->member_b, "GET", "/v2.1/flavors/p1", NULL, NULL);
    expect(&r, 404);
    api_reply_free(&r);
    r = call(f, f->member_b, "POST", "/v2.1/servers", NULL,
             "{\"server\": {\"name\": \"p\", \"flavorRef\": \"p1\", \"imageRef\": \"i\"}}");
    expect(&r, 400);
    api_reply_free(&r);
    r = call(f, f->admin, "POST", "/v2.1/flavors/p1/action", NULL,
             "{\"addTenantAccess\": {\"tenant\": \"" PROJECT_B "\"}}");
    expect(&r, 200);
    assert_string_equal(
        api_jget(json_object_array_get_idx(cl_json_path(r.json, "flavor_access"), 0), "tenant_id"),
        PROJECT_B);
    api_reply_free(&r);
    r = call(f, f->member_b, "GET", "/v2.1/flavors/detail", NULL, NULL);
    expect(&r, 200);
    assert_true(list_has(&r, "flavors", "p1"));
    api_reply_free(&r);
    r = call(f, f->member_a, "GET", "/v2.1/flavors/detail", NULL, NULL);
    assert_false(list_has(&r, "flavors", "p1"));
    api_reply_free(&r);
    r = call(f, f->admin, "GET", "/v2.1/flavors/p1/os-flavor-access", NULL, NULL);
    expect(&r, 200);
    api_reply_free(&r);

    /* Extra specs. */
    r = call(f, f->admin, "POST", "/v2.1/flavors/p1/os-extra_specs", NULL,
             "{\"extra_specs\": {\"hw:cpu_policy\": \"dedicated\", \"n\": 2}}");
    expect(&r, 200);
    api_reply_free(&r);
    r = call(f, f->member_b, "GET", "/v2.1/flavors/p1/os-extra_specs/n", NULL, NULL);
    expect(&r, 200);
    assert_string_equal(api_jget(r.json, "n"), "2");
    api_reply_free(&r);
    r = call(f, f->member_b, "GET", "/v2.1/flavors/p1", "2.61", NULL);
    assert_string_equal(api_jget(r.json, "flavor.extra_specs.hw:cpu_policy"), "dedicated");
    api_reply_free(&r);
    r = call(f, f->admin, "DELETE", "/v2.1/flavors/p1/os-extra_specs/n", NULL, NULL);
    expect(&r, 202);
    api_reply_free(&r);
    r = call(f, f->admin, "DELETE", "/v2.1/flavors/p1/os-extra_specs/n", NULL, NULL);
    expect(&r, 404);
    api_reply_free(&r);

    r = call(f, f->member_b, "DELETE", "/v2.1/flavors/p1", NULL, NULL);
    expect(&r, 403);
    api_reply_free(&r);
    r = call(f, f->admin, "DELETE", "/v2.1/flavors/p1", NULL, NULL);
    expect(&r, 202);
    api_reply_free(&r);
    r = call(f, f->admin, "GET", "/v2.1/flavors/p1", NULL, NULL);
    expect(&r, 404);
    api_reply_free(&r);
}

static void test_operators(void **state)
{
    fixture *f = *state;
    cl_host h = {.vcpus = 8, .ram_mb = 16384, .disk_gb = 100, .cpu_ratio = 1, .ram_ratio = 1,
                 .disk_ratio = 1};
    char id[CL_UUID_LEN], put[128], usage[128];
    const char *sid;
    reply r;

    cl_strlcpy(h.hypervisor_type, "QEMU", sizeof(h.hypervisor_type));
    cl_strlcpy(h.name, "op-host-1", sizeof(h.name));
    assert_int_equal(cl_store_host_register(f->fx.st, &h), 0);
    cl_strlcpy(h.name, "op-host-2", sizeof(h.name));
    assert_int_equal(cl_store_host_register(f->fx.st, &h), 0);

    r = call(f, f->member_a, "GET", "/v2.1/os-services", "2.69", NULL);
    expect(&r, 403);
    api_reply_free(&r);
    r = call(f, f->admin, "GET", "/v2.1/os-services?host=op-host-1&binary=nova-compute",
             "2.69", NULL);
    expect(&r, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "services")), 1);
    sid = api_jget(json_object_array_get_idx(cl_json_path(r.json, "services"), 0), "id");
    assert_int_equal(strlen(sid), 36);
    snprintf(put, sizeof(put), "/v2.1/os-services/%s", sid);
    api_reply_free(&r);
    r = call(f, f->admin, "PUT", put, "2.69",
             "{\"status\": \"disabled\", \"disabled_reason\": \"maintenance\"}");
    expect(&r, 200);
    assert_string_equal(api_jget(r.json, "service.status"), "disabled");
    assert_string_equal(api_jget(r.json, "service.disabled_reason"), "maintenance");
    api_reply_free(&r);
    /* Disabled means no scheduling there. */
    assert_int_equal(cl_store_host_get(f->fx.st, "op-host-1", &h), 0);
    assert_false(h.enabled);
    r = call(f, f->admin, "PUT", put, "2.69", "{\"forced_down\": true}");
    expect(&r, 200);
    assert_string_equal(api_jget(r.json, "service.state"), "down");
    api_reply_free(&r);
    /* Heartbeats do not bring a forced-down host back (no scheduling there). */
    assert_int_equal(cl_store_host_heartbeat(f->fx.st, "op-host-1", 0, 0, 0), 0);
    assert_int_equal(cl_store_host_get(f->fx.st, "op-host-1", &h), 0);
    assert_false(h.up);
    r = call(f, f->admin, "PUT", put, "2.69", "{\"status\": \"enabled\", \"forced_down\": false}");
    expect(&r, 200);
    assert_null(cl_json_path(r.json, "service.disabled_reason"));
    api_reply_free(&r);
    assert_int_equal(cl_store_host_heartbeat(f->fx.st, "op-host-1", 0, 0, 0), 0);
    assert_int_equal(cl_store_host_get(f->fx.st, "op-host-1", &h), 0);
    assert_true(h.enabled);
    assert_true(h.up);
    /* The legacy form (before 2.53). */
    r = call(f, f->admin, "PUT", "/v2.1/os-services/disable-log-reason", "2.1",
             "{\"host\": \"op-host-2\", \"binary\": \"nova-compute\","
             " \"disabled_reason\": \"old\"}");
    expect(&r, 200);
    api_reply_free(&r);
    assert_int_equal(cl_store_host_get(f->fx.st, "op-host-2", &h), 0);
    assert_false(h.enabled);

    r = call(f, f->admin, "GET", "/v2.1/os-hypervisors/statistics", NULL, NULL);
    expect(&r, 200);
    assert_int_equal(json_object_get_int(cl_json_path(r.json, "hypervisor_statistics.count")),
                     2);
    assert_int_equal(json_object_get_int(cl_json_path(r.json, "hypervisor_statistics.vcpus")),
                     16);
    api_reply_free(&r);
    r = call(f, f->member_a, "GET", "/v2.1/os-hypervisors", NULL, NULL);
    expect(&r, 403);
    api_reply_free(&r);
    /* The hypervisor version the agent reported at registration is shown. */
    assert_int_equal(cl_store_host_set_caps(f->fx.st, "op-host-2", "QEMU", 9000000, "x86_64",
                                            "qemu64"), 0);
    r = call(f, f->admin, "GET", "/v2.1/os-hypervisors/detail", NULL, NULL);
    expect(&r, 200);
    bool seen_version = false;
    json_object *hyps = cl_json_path(r.json, "hypervisors");
    for (size_t i = 0; i < json_object_array_length(hyps); i++) {
        json_object *hv = json_object_array_get_idx(hyps, i);
        if (strcmp(api_jget(hv, "hypervisor_hostname"), "op-host-2") == 0) {
            assert_int_equal(json_object_get_int64(cl_json_path(hv, "hypervisor_version")),
                             9000000);
            seen_version = true;
        }
    }
    assert_true(seen_version);
    api_reply_free(&r);
    r = call(f, f->member_a, "GET", "/v2.1/os-availability-zone", NULL, NULL);
    expect(&r, 200);
    assert_string_equal(api_jget(json_object_array_get_idx(cl_json_path(r.json,
                                                                     "availabilityZoneInfo"), 0),
                             "zoneName"), "nova");
    api_reply_free(&r);
    r = call(f, f->admin, "GET", "/v2.1/os-migrations", NULL, NULL);
    expect(&r, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "migrations")), 0);
    api_reply_free(&r);
    /* A row as the migration work writes it (placement schema). */
    create(f, f->member_a, "moving", id);
    {
        char sql[512];

        snprintf(sql, sizeof(sql),
                 "INSERT INTO migrations (uuid, instance_uuid, source_host, dest_host,"
                 " migration_type, status, created_ms, updated_ms) VALUES"
                 " ('11111111-2222-4333-8444-555555555555', '%s', 'op-host-1', 'op-host-2',"
                 " 'live-migration', 'running', 1, 2)", id);
        assert_int_equal(cl_db_exec(cl_store_db(f->fx.st), sql), 0);
    }
    r = call(f, f->admin, "GET", "/v2.1/os-migrations?host=op-host-2", "2.80", NULL);
    expect(&r, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "migrations")), 1);
    {
        json_object *m = json_object_array_get_idx(cl_json_path(r.json, "migrations"), 0);

        assert_string_equal(api_jget(m, "instance_uuid"), id);
        assert_string_equal(api_jget(m, "project_id"), PROJECT_A);
        assert_string_equal(api_jget(m, "migration_type"), "live-migration");
        assert_non_null(cl_json_path(m, "links"));
    }
    api_reply_free(&r);
    r = call(f, f->admin, "GET", "/v2.1/os-migrations?host=elsewhere", NULL, NULL);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "migrations")), 0);
    api_reply_free(&r);
    r = call(f, f->member_a, "GET", "/v2.1/os-migrations", NULL, NULL);
    expect(&r, 403);
    api_reply_free(&r);

    /* Usage: one server of project B active for a moment. */
    create(f, f->member_b, "billed", id);
    assert_int_equal(cl_store_instance_set_state(f->fx.st, id, CL_VM_ACTIVE, CL_TASK_NONE,
                                                 CL_POWER_RUNNING, NULL, 0), 0);
    r = call(f, f->member_b, "GET", "/v2.1/os-simple-tenant-usage", NULL, NULL);
    expect(&r, 403);
    api_reply_free(&r);
    r = call(f, f->admin, "GET",
             "/v2.1/os-simple-tenant-usage?start=2020-01-01T00:00:00&end=2999-01-01T00:00:00"
             "&detailed=1", NULL, NULL);
    expect(&r, 200);
    assert_true(json_object_array_length(cl_json_path(r.json, "tenant_usages")) >= 2);
    api_reply_free(&r);
    snprintf(usage, sizeof(usage), "/v2.1/os-simple-tenant-usage/%s?start=2020-01-01T00:00:00",
             PROJECT_B);
    r = call(f, f->member_b, "GET", usage, NULL, NULL);
    expect(&r, 200);
    assert_string_equal(api_jget(r.json, "tenant_usage.tenant_id"), PROJECT_B);
    assert_non_null(strstr(r.raw.body, id));
    api_reply_free(&r);
    r = call(f, f->member_a, "GET", usage, NULL, NULL);
    expect(&r, 404);
    api_reply_free(&r);
    r = call(f, f->admin, "GET", "/v2.1/os-simple-tenant-usage/x?start=bad", NULL, NULL);
    expect(&r, 400);
    api_reply_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_isolation),
        cmocka_unit_test(test_fault_details_for_admins),
        cmocka_unit_test(test_quota_parallel_creates),
        cmocka_unit_test(test_keypairs),
        cmocka_unit_test(test_server_extras),
        cmocka_unit_test(test_flavors_admin),
        cmocka_unit_test(test_operators),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
