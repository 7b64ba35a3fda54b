/*
 * test_api_identity.c - nube-api's Identity v3 through real HTTP on loopback.
 *
 * One api_start() for the group, with a temporary controller DB and state_dir (so the
 * token key file is created there), port 0 for both listeners and a low PBKDF2 iteration
 * count to keep the run short. Requests go through cl_http_request (libcurl). The bus
 * endpoint points at a port nobody listens on: ZeroMQ connects lazily, and no test here
 * creates servers.
 *
 * Covered: bootstrap at start (and again, idempotent, resetting the password), token
 * issue (project by name or id, unscoped, default project, re-scope with the token
 * method, bad password, unknown user, disabled user), validation and revocation (404
 * afterwards, and Compute answering 401 to the revoked token), projects, users, roles and
 * role assignments CRUD, and policy: a member of project B gets 403 on identity admin
 * calls, may read itself and its project.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "api.h"
#include "api_fixture.h"
#include "api_int.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "store.h"
#include "store_identity.h"
#include "token.h"
#include "util.h"

#define TOKEN "test-admin-token"
#define PASSWORD "s3cret-pw"
#define ADMIN_ID "0f1e2d3c4b5a49687766554433221100"
#define ADMIN_PROJECT "5a0c5e2b9b6f4f3e8d1c2b3a4f5e6d7c"

typedef struct fixture {
    api_fx fx;
    char key[300];
} fixture;

typedef struct reply {
    long status;
    json_object *json;
    cl_http_result raw;
    char subject[CL_TOKEN_MAX];
} reply;

static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    /* No fake scheduler: no test here creates servers. */
    api_fx_prepare(&f->fx, "test_api_identity", NULL, NULL, TOKEN, PASSWORD);
    snprintf(f->key, sizeof(f->key), "%s/token.key", f->fx.dir);
    api_fx_set(&f->fx, "DEFAULT", "state_dir", f->fx.dir);
    api_fx_set(&f->fx, "api", "workers", "2");
    api_fx_set(&f->fx, "auth", "password_iterations", "1000");
    api_fx_set(&f->fx, "auth", "token_ttl_s", "3600");
    api_fx_start(&f->fx);
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

static reply call(const char *method, const char *base, const char *path, const char *token,
                  const char *subject, const char *body)
{
    char url[512], auth[CL_TOKEN_MAX + 32], sub[CL_TOKEN_MAX + 32];
    const char *hdrs[5];
    size_t nh = 0;
    api_reply a;
    reply r;

    memset(&r, 0, sizeof(r));
    snprintf(url, sizeof(url), "%s%s", base, path);
    hdrs[nh++] = "Content-Type: application/json";
    if (token) {
        snprintf(auth, sizeof(auth), "X-Auth-Token: %s", token);
        hdrs[nh++] = auth;
    }
    if (subject) {
        snprintf(sub, sizeof(sub), "X-Subject-Token: %s", subject);
        hdrs[nh++] = sub;
    }
    hdrs[nh] = NULL;
    a = api_fx_request(method, url, hdrs, body, 10000);
    r.status = a.status;
    r.json = a.json;
    r.raw = a.raw;
    if (cl_http_result_header(&r.raw, "X-Subject-Token", r.subject, sizeof(r.subject)) < 0)
        r.subject[0] = '\0';
    return r;
}

static void reply_free(reply *r)
{
    if (r->json)
        json_object_put(r->json);
    cl_http_result_free(&r->raw);
}

static const char *jget(json_object *o, const char *path)
{
    json_object *v = cl_json_path(o, path);

    return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

/* POST /v3/auth/tokens for user (name in Default) with password and a scope fragment. */
static reply issue(fixture *f, const char *user, const char *password, const char *scope)
{
    char body[1024];

    snprintf(body, sizeof(body),
             "{\"auth\": {\"identity\": {\"methods\": [\"password\"], \"password\": {\"user\": "
             "{\"name\": \"%s\", \"domain\": {\"name\": \"Default\"}, \"password\": \"%s\"}}}"
             "%s}}", user, password, scope);
    return call("POST", f->fx.identity, "/v3/auth/tokens", NULL, NULL, body);
}

#define SCOPE_PROJECT(name)                                                                \
    ", \"scope\": {\"project\": {\"name\": \"" name "\", \"domain\": {\"id\": \"default\"}}}"

static bool has_role(json_object *roles, const char *name)
{
    for (size_t i = 0; roles && i < json_object_array_length(roles); i++)
        if (strcmp(jget(json_object_array_get_idx(roles, i), "name"), name) == 0)
            return true;
    return false;
}

/* ---- tests ---- */

static void test_bootstrap(void **state)
{
    fixture *f = *state;
    _cleanup_store_ cl_store *st = NULL;
    cl_error err = {0};
    struct stat sb;
    cl_user u;
    cl_domain d;
    unsigned bits = 0;
    bool changed = true;
    reply r;

    /* nube-api bootstrapped the admin from [auth] and created the key file. */
    assert_int_equal(stat(f->key, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_int_equal(cl_store_open(f->fx.db, &st, &err), 0);
    assert_int_equal(cl_store_user_get(st, ADMIN_ID, &u), 0);
    assert_string_equal(u.name, "admin");
    assert_true(cl_password_verify(PASSWORD, u.password_hash));
    assert_int_equal(strncmp(u.password_hash, "pbkdf2-sha256$1000$", 19), 0);
    assert_int_equal(cl_store_domain_get(st, "default", &d), 0);
    assert_string_equal(d.name, "Default");
    assert_int_equal(cl_store_user_project_roles(st, ADMIN_ID, ADMIN_PROJECT, &bits, NULL, NULL),
                     0);
    assert_int_equal(bits, cl_identity_role_bits("admin"));

    /* Again: nothing to do. With another password: reset, the old one stops working. */
    assert_int_equal(api_identity_bootstrap(&f->fx.cfg, NULL, &changed, &err), 0);
    assert_false(changed);
    assert_int_equal(api_identity_bootstrap(&f->fx.cfg, "other-pw", &changed, &err), 0);
    assert_true(changed);
    r = issue(f, "admin", PASSWORD, "");
    assert_int_equal(r.status, 401);
    reply_free(&r);
    r = issue(f, "admin", "other-pw", "");
    assert_int_equal(r.status, 201);
    reply_free(&r);
    assert_int_equal(api_identity_bootstrap(&f->fx.cfg, NULL, &changed, &err), 0);
    assert_true(changed);
}

static void test_token_issue(void **state)
{
    fixture *f = *state;
    json_object *cat;
    bool image = false, billing = false;
    reply r;

    r = issue(f, "admin", PASSWORD, SCOPE_PROJECT("admin"));
    assert_int_equal(r.status, 201);
    assert_int_equal(strncmp(r.subject, CL_TOKEN_PREFIX, strlen(CL_TOKEN_PREFIX)), 0);
    assert_string_equal(jget(r.json, "token.project.id"), ADMIN_PROJECT);
    assert_string_equal(jget(r.json, "token.project.domain.name"), "Default");
    assert_string_equal(jget(r.json, "token.user.id"), ADMIN_ID);
    assert_true(has_role(cl_json_path(r.json, "token.roles"), "admin"));
    assert_true(has_role(cl_json_path(r.json, "token.roles"), "member"));
    assert_true(has_role(cl_json_path(r.json, "token.roles"), "reader"));
    assert_int_equal(strlen(json_object_get_string(json_object_array_get_idx(
                         cl_json_path(r.json, "token.audit_ids"), 0))), CL_AUDIT_ID_LEN);
    cat = cl_json_path(r.json, "token.catalog");
    assert_non_null(cat);
    for (size_t i = 0; i < json_object_array_length(cat); i++) {
        json_object *svc = json_object_array_get_idx(cat, i);
        const char *url = jget(json_object_array_get_idx(cl_json_path(svc, "endpoints"), 0),
                               "url");

        assert_int_equal(json_object_array_length(cl_json_path(svc, "endpoints")), 3);
        if (strcmp(jget(svc, "type"), "image") == 0)
            image = strcmp(url, "http://127.0.0.1:9292") == 0;
        if (strcmp(jget(svc, "type"), "billing") == 0)
            billing = strcmp(url, "http://127.0.0.1:8889") == 0;
    }
    assert_true(image && billing);
    reply_free(&r);

    /* By ids; ?nocatalog. */
    r = call("POST", f->fx.identity, "/v3/auth/tokens?nocatalog", NULL, NULL,
             "{\"auth\": {\"identity\": {\"methods\": [\"password\"], \"password\": {\"user\": "
             "{\"id\": \"" ADMIN_ID "\", \"password\": \"" PASSWORD "\"}}}, \"scope\": "
             "{\"project\": {\"id\": \"" ADMIN_PROJECT "\"}}}}");
    assert_int_equal(r.status, 201);
    assert_null(cl_json_path(r.json, "token.catalog"));
    assert_non_null(cl_json_path(r.json, "token.roles"));
    reply_free(&r);

    /* Unscoped: no project, roles or catalog; Compute refuses it. */
    r = issue(f, "admin", PASSWORD, "");
    assert_int_equal(r.status, 201);
    assert_null(cl_json_path(r.json, "token.project"));
    assert_null(cl_json_path(r.json, "token.catalog"));
    {
        reply c = call("GET", f->fx.compute, "/v2.1/flavors", r.subject, NULL, NULL);

        assert_int_equal(c.status, 401);
        reply_free(&c);
    }
    reply_free(&r);

    /* Domain scope for an admin. */
    r = issue(f, "admin", PASSWORD, ", \"scope\": {\"domain\": {\"id\": \"default\"}}");
    assert_int_equal(r.status, 201);
    assert_string_equal(jget(r.json, "token.domain.id"), "default");
    assert_true(has_role(cl_json_path(r.json, "token.roles"), "admin"));
    reply_free(&r);

    /* Failures: Keystone's 401, never a token. */
    r = issue(f, "admin", "wrong", SCOPE_PROJECT("admin"));
    assert_int_equal(r.status, 401);
    assert_string_equal(jget(r.json, "error.title"), "Unauthorized");
    assert_string_equal(r.subject, "");
    reply_free(&r);
    r = issue(f, "nobody", PASSWORD, "");
    assert_int_equal(r.status, 401);
    reply_free(&r);
    r = issue(f, "admin", PASSWORD, SCOPE_PROJECT("no-such-project"));
    assert_int_equal(r.status, 401);
    reply_free(&r);
    r = call("POST", f->fx.identity, "/v3/auth/tokens", NULL, NULL, "{\"auth\": ");
    assert_int_equal(r.status, 400);
    assert_int_equal(json_object_get_int(cl_json_path(r.json, "error.code")), 400);
    reply_free(&r);
    r = call("POST", f->fx.identity, "/v3/auth/tokens", NULL, NULL,
             "{\"auth\": {\"identity\": {\"methods\": [\"totp\"]}}}");
    assert_int_equal(r.status, 401);
    reply_free(&r);
}

static void test_validate_revoke(void **state)
{
    fixture *f = *state;
    char tok[CL_TOKEN_MAX];
    reply r;

    r = issue(f, "admin", PASSWORD, SCOPE_PROJECT("admin"));
    assert_int_equal(r.status, 201);
    cl_strlcpy(tok, r.subject, sizeof(tok));
    reply_free(&r);

    /* Validation with itself (a user may check its own token). */
    r = call("GET", f->fx.identity, "/v3/auth/tokens", tok, tok, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.subject, tok);
    assert_string_equal(jget(r.json, "token.project.name"), "admin");
    assert_string_equal(jget(r.json, "token.user.name"), "admin");
    reply_free(&r);
    r = call("HEAD", f->fx.identity, "/v3/auth/tokens", TOKEN, tok, NULL);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    r = call("GET", f->fx.compute, "/v2.1/flavors", tok, NULL, NULL);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/auth/catalog", tok, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "catalog")), 4);
    reply_free(&r);

    /* Garbage subject: 404. */
    r = call("GET", f->fx.identity, "/v3/auth/tokens", TOKEN, "nb1_AAAA", NULL);
    assert_int_equal(r.status, 404);
    assert_int_equal(json_object_get_int(cl_json_path(r.json, "error.code")), 404);
    reply_free(&r);

    /* Revoke: 204, then 404 on validation and 401 everywhere. */
    r = call("DELETE", f->fx.identity, "/v3/auth/tokens", TOKEN, tok, NULL);
    assert_int_equal(r.status, 204);
    reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/auth/tokens", TOKEN, tok, NULL);
    assert_int_equal(r.status, 404);
    reply_free(&r);
    r = call("DELETE", f->fx.identity, "/v3/auth/tokens", TOKEN, tok, NULL);
    assert_int_equal(r.status, 404);
    reply_free(&r);
    r = call("GET", f->fx.compute, "/v2.1/flavors", tok, NULL, NULL);
    assert_int_equal(r.status, 401);
    assert_string_equal(jget(r.json, "error.title"), "Unauthorized");
    reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/auth/catalog", tok, NULL, NULL);
    assert_int_equal(r.status, 401);
    reply_free(&r);

    /* The revocation is in the controller DB for other processes. */
    {
        _cleanup_store_ cl_store *st = NULL;
        char (*list)[23] = NULL;
        size_t n = 0;
        cl_error err = {0};

        assert_int_equal(cl_store_open(f->fx.db, &st, &err), 0);
        assert_int_equal(cl_store_revoked_list(st, cl_now_ms(), 100, &list, &n), 0);
        assert_true(n >= 1);
        free(list);
    }

    /* A revocation written by another process (here: straight into the DB) is honoured
     * once the in-memory list is refreshed (at most a second later). */
    {
        _cleanup_store_ cl_store *st = NULL;
        cl_token_key key;
        cl_auth a;
        cl_error err = {0};
        int64_t deadline;
        long status = 0;

        r = issue(f, "admin", PASSWORD, SCOPE_PROJECT("admin"));
        assert_int_equal(r.status, 201);
        cl_strlcpy(tok, r.subject, sizeof(tok));
        reply_free(&r);
        assert_int_equal(cl_token_key_load(f->key, false, &key, &err), 0);
        assert_int_equal(cl_token_verify(&key, tok, cl_now_ms(), &a, &err), 0);
        assert_int_equal(cl_store_open(f->fx.db, &st, &err), 0);
        assert_int_equal(cl_store_token_revoke(st, a.audit_id, a.expires_ms, cl_now_ms()), 0);
        deadline = cl_mono_ms() + 5000;
        while (cl_mono_ms() < deadline) {
            r = call("GET", f->fx.compute, "/v2.1/flavors", tok, NULL, NULL);
            status = r.status;
            reply_free(&r);
            if (status == 401)
                break;
            usleep(20 * 1000);
        }
        assert_int_equal(status, 401);
    }

    /* The static admin token is not revocable. */
    r = call("DELETE", f->fx.identity, "/v3/auth/tokens", TOKEN, TOKEN, NULL);
    assert_int_equal(r.status, 403);
    reply_free(&r);
}

/* Id of the first element of coll in r whose name is name. */
static void find_id(reply *r, const char *coll, const char *name, char *out, size_t outlen)
{
    json_object *list = cl_json_path(r->json, coll);

    out[0] = '\0';
    for (size_t i = 0; list && i < json_object_array_length(list); i++) {
        json_object *o = json_object_array_get_idx(list, i);

        if (strcmp(jget(o, "name"), name) == 0)
            cl_strlcpy(out, jget(o, "id"), outlen);
    }
}

static void test_crud_and_policy(void **state)
{
    fixture *f = *state;
    char pid[64], uid[64], member[64], path[256], tok[CL_TOKEN_MAX];
    reply r;

    /* Projects. */
    r = call("POST", f->fx.identity, "/v3/projects", TOKEN, NULL,
             "{\"project\": {\"name\": \"proj-b\", \"description\": \"B\", "
             "\"domain_id\": \"default\", \"enabled\": true}}");
    assert_int_equal(r.status, 201);
    cl_strlcpy(pid, jget(r.json, "project.id"), sizeof(pid));
    assert_int_equal(strlen(pid), 32);
    assert_string_equal(jget(r.json, "project.description"), "B");
    reply_free(&r);
    r = call("POST", f->fx.identity, "/v3/projects", TOKEN, NULL,
             "{\"project\": {\"name\": \"proj-b\"}}");
    assert_int_equal(r.status, 409);
    reply_free(&r);
    r = call("POST", f->fx.identity, "/v3/projects", TOKEN, NULL, "{\"project\": {}}");
    assert_int_equal(r.status, 400);
    reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/projects?name=proj-b", TOKEN, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "projects")), 1);
    reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/projects", TOKEN, NULL, NULL);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "projects")), 2);
    reply_free(&r);
    snprintf(path, sizeof(path), "/v3/projects/%s", pid);
    r = call("PATCH", f->fx.identity, path, TOKEN, NULL,
             "{\"project\": {\"description\": \"project B\"}}");
    assert_int_equal(r.status, 200);
    assert_string_equal(jget(r.json, "project.description"), "project B");
    assert_string_equal(jget(r.json, "project.name"), "proj-b");
    reply_free(&r);

    /* Users. */
    snprintf(path, sizeof(path),
             "{\"user\": {\"name\": \"bob\", \"password\": \"bob-pw\", \"default_project_id\": "
             "\"%s\", \"enabled\": true}}", pid);
    r = call("POST", f->fx.identity, "/v3/users", TOKEN, NULL, path);
    assert_int_equal(r.status, 201);
    cl_strlcpy(uid, jget(r.json, "user.id"), sizeof(uid));
    assert_string_equal(jget(r.json, "user.default_project_id"), pid);
    assert_null(cl_json_path(r.json, "user.password"));
    reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/users?name=bob", TOKEN, NULL, NULL);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "users")), 1);
    reply_free(&r);

    /* No role yet: a scoped token is refused, an unscoped one works. */
    r = issue(f, "bob", "bob-pw", SCOPE_PROJECT("proj-b"));
    assert_int_equal(r.status, 401);
    reply_free(&r);
    r = issue(f, "bob", "bob-pw", "");
    assert_int_equal(r.status, 201);
    assert_null(cl_json_path(r.json, "token.project"));
    reply_free(&r);

    /* Roles and the grant. */
    r = call("GET", f->fx.identity, "/v3/roles?name=member", TOKEN, NULL, NULL);
    assert_int_equal(r.status, 200);
    find_id(&r, "roles", "member", member, sizeof(member));
    assert_int_equal(strlen(member), 32);
    reply_free(&r);
    snprintf(path, sizeof(path), "/v3/projects/%s/users/%s/roles/%s", pid, uid, member);
    r = call("HEAD", f->fx.identity, path, TOKEN, NULL, NULL);
    assert_int_equal(r.status, 404);
    reply_free(&r);
    r = call("PUT", f->fx.identity, path, TOKEN, NULL, NULL);
    assert_int_equal(r.status, 204);
    reply_free(&r);
    r = call("HEAD", f->fx.identity, path, TOKEN, NULL, NULL);
    assert_int_equal(r.status, 204);
    reply_free(&r);
    snprintf(path, sizeof(path), "/v3/role_assignments?user.id=%s&include_names=True", uid);
    r = call("GET", f->fx.identity, path, TOKEN, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "role_assignments")), 1);
    {
        json_object *a = json_object_array_get_idx(cl_json_path(r.json, "role_assignments"), 0);

        assert_string_equal(jget(a, "role.name"), "member");
        assert_string_equal(jget(a, "user.name"), "bob");
        assert_string_equal(jget(a, "user.domain.name"), "Default");
        assert_string_equal(jget(a, "scope.project.name"), "proj-b");
    }
    reply_free(&r);

    /* Bob's token: scoped by his default project without a scope, member + reader. */
    r = issue(f, "bob", "bob-pw", "");
    assert_int_equal(r.status, 201);
    assert_string_equal(jget(r.json, "token.project.id"), pid);
    assert_true(has_role(cl_json_path(r.json, "token.roles"), "member"));
    assert_true(has_role(cl_json_path(r.json, "token.roles"), "reader"));
    assert_false(has_role(cl_json_path(r.json, "token.roles"), "admin"));
    cl_strlcpy(tok, r.subject, sizeof(tok));
    reply_free(&r);

    /* Policy: identity administration is for admins; bob may read himself, his
     * project and his assignments, and use Compute. */
    r = call("GET", f->fx.identity, "/v3/projects", tok, NULL, NULL);
    assert_int_equal(r.status, 403);
    assert_string_equal(jget(r.json, "error.title"), "Forbidden");
    reply_free(&r);
    r = call("POST", f->fx.identity, "/v3/users", tok, NULL, "{\"user\": {\"name\": \"eve\"}}");
    assert_int_equal(r.status, 403);
    reply_free(&r);
    r = call("POST", f->fx.identity, "/v3/projects", tok, NULL, "{\"project\": {\"name\": \"x\"}}");
    assert_int_equal(r.status, 403);
    reply_free(&r);
    snprintf(path, sizeof(path), "/v3/projects/%s/users/%s/roles/%s", pid, uid, member);
    r = call("PUT", f->fx.identity, path, tok, NULL, NULL);
    assert_int_equal(r.status, 403);
    reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/role_assignments", tok, NULL, NULL);
    assert_int_equal(r.status, 403);
    reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/users/" ADMIN_ID, tok, NULL, NULL);
    assert_int_equal(r.status, 403);
    reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/projects/" ADMIN_PROJECT, tok, NULL, NULL);
    assert_int_equal(r.status, 403);
    reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/roles", tok, NULL, NULL);
    assert_int_equal(r.status, 403);
    reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/auth/tokens", tok, TOKEN, NULL);
    assert_int_equal(r.status, 403); /* someone else's token */
    reply_free(&r);
    snprintf(path, sizeof(path), "/v3/users/%s", uid);
    r = call("GET", f->fx.identity, path, tok, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(jget(r.json, "user.name"), "bob");
    reply_free(&r);
    snprintf(path, sizeof(path), "/v3/projects/%s", pid);
    r = call("GET", f->fx.identity, path, tok, NULL, NULL);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/auth/projects", tok, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_object_array_length(cl_json_path(r.json, "projects")), 1);
    reply_free(&r);
    snprintf(path, sizeof(path), "/v3/role_assignments?user.id=%s", uid);
    r = call("GET", f->fx.identity, path, tok, NULL, NULL);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    r = call("GET", f->fx.compute, "/v2.1/flavors", tok, NULL, NULL);
    assert_int_equal(r.status, 200);
    reply_free(&r);

    /* Re-scope with the token method keeps the user and the expiry. */
    {
        char body[1024];

        snprintf(body, sizeof(body),
                 "{\"auth\": {\"identity\": {\"methods\": [\"token\"], \"token\": {\"id\": "
                 "\"%s\"}}, \"scope\": {\"project\": {\"id\": \"%s\"}}}}", tok, pid);
        r = call("POST", f->fx.identity, "/v3/auth/tokens", NULL, NULL, body);
        assert_int_equal(r.status, 201);
        assert_string_equal(jget(r.json, "token.user.name"), "bob");
        assert_string_equal(json_object_get_string(json_object_array_get_idx(
                                cl_json_path(r.json, "token.methods"), 0)), "token");
        reply_free(&r);
    }

    /* Bob changes his own password (the original is required); not someone else's. */
    snprintf(path, sizeof(path), "/v3/users/%s/password", uid);
    r = call("POST", f->fx.identity, path, tok, NULL,
             "{\"user\": {\"original_password\": \"wrong\", \"password\": \"bob-pw2\"}}");
    assert_int_equal(r.status, 401);
    reply_free(&r);
    r = call("POST", f->fx.identity, path, tok, NULL,
             "{\"user\": {\"original_password\": \"bob-pw\", \"password\": \"bob-pw2\"}}");
    assert_int_equal(r.status, 204);
    reply_free(&r);
    r = call("POST", f->fx.identity, "/v3/users/" ADMIN_ID "/password", tok, NULL,
             "{\"user\": {\"original_password\": \"x\", \"password\": \"y\"}}");
    assert_int_equal(r.status, 403);
    reply_free(&r);
    r = issue(f, "bob", "bob-pw2", SCOPE_PROJECT("proj-b"));
    assert_int_equal(r.status, 201);
    reply_free(&r);

    /* Disabled: no new tokens, and Identity's validation refuses the old ones. */
    snprintf(path, sizeof(path), "/v3/users/%s", uid);
    r = call("PATCH", f->fx.identity, path, TOKEN, NULL, "{\"user\": {\"enabled\": false}}");
    assert_int_equal(r.status, 200);
    assert_false(json_object_get_boolean(cl_json_path(r.json, "user.enabled")));
    reply_free(&r);
    r = issue(f, "bob", "bob-pw", SCOPE_PROJECT("proj-b"));
    assert_int_equal(r.status, 401);
    reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/auth/tokens", TOKEN, tok, NULL);
    assert_int_equal(r.status, 404);
    reply_free(&r);
    r = call("PATCH", f->fx.identity, path, TOKEN, NULL,
             "{\"user\": {\"enabled\": true, \"password\": \"new-pw\"}}");
    assert_int_equal(r.status, 200);
    reply_free(&r);
    r = issue(f, "bob", "new-pw", SCOPE_PROJECT("proj-b"));
    assert_int_equal(r.status, 201);
    reply_free(&r);

    /* Revoke the grant: no more scoped tokens. */
    snprintf(path, sizeof(path), "/v3/projects/%s/users/%s/roles/%s", pid, uid, member);
    r = call("DELETE", f->fx.identity, path, TOKEN, NULL, NULL);
    assert_int_equal(r.status, 204);
    reply_free(&r);
    r = call("DELETE", f->fx.identity, path, TOKEN, NULL, NULL);
    assert_int_equal(r.status, 404);
    reply_free(&r);
    r = issue(f, "bob", "new-pw", SCOPE_PROJECT("proj-b"));
    assert_int_equal(r.status, 401);
    reply_free(&r);

    /* Custom roles. */
    r = call("POST", f->fx.identity, "/v3/roles", TOKEN, NULL,
             "{\"role\": {\"name\": \"auditor\"}}");
    assert_int_equal(r.status, 201);
    snprintf(path, sizeof(path), "/v3/roles/%s", jget(r.json, "role.id"));
    reply_free(&r);
    r = call("DELETE", f->fx.identity, path, TOKEN, NULL, NULL);
    assert_int_equal(r.status, 204);
    reply_free(&r);
    snprintf(path, sizeof(path), "/v3/roles/%s", member);
    r = call("DELETE", f->fx.identity, path, TOKEN, NULL, NULL);
    assert_int_equal(r.status, 403);
    reply_free(&r);

    /* Domains. */
    r = call("GET", f->fx.identity, "/v3/domains", TOKEN, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(jget(json_object_array_get_idx(cl_json_path(r.json, "domains"), 0),
                             "name"), "Default");
    reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/domains/default", TOKEN, NULL, NULL);
    assert_int_equal(r.status, 200);
    reply_free(&r);

    /* Deletes. The bootstrap admin project and user are protected. */
    snprintf(path, sizeof(path), "/v3/users/%s", uid);
    r = call("DELETE", f->fx.identity, path, TOKEN, NULL, NULL);
    assert_int_equal(r.status, 204);
    reply_free(&r);
    r = call("GET", f->fx.identity, path, TOKEN, NULL, NULL);
    assert_int_equal(r.status, 404);
    assert_string_equal(jget(r.json, "error.title"), "Not Found");
    reply_free(&r);
    snprintf(path, sizeof(path), "/v3/projects/%s", pid);
    r = call("DELETE", f->fx.identity, path, TOKEN, NULL, NULL);
    assert_int_equal(r.status, 204);
    reply_free(&r);
    r = call("GET", f->fx.identity, path, TOKEN, NULL, NULL);
    assert_int_equal(r.status, 404);
    reply_free(&r);
    r = call("DELETE", f->fx.identity, "/v3/projects/" ADMIN_PROJECT, TOKEN, NULL, NULL);
    assert_int_equal(r.status, 403);
    reply_free(&r);
    r = call("DELETE", f->fx.identity, "/v3/users/" ADMIN_ID, TOKEN, NULL, NULL);
    assert_int_equal(r.status, 403);
    reply_free(&r);
    r = call("GET", f->fx.identity, "/v3/projects", NULL, NULL, NULL);
    assert_int_equal(r.status, 401);
    reply_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bootstrap),
        cmocka_unit_test(test_token_issue),
        cmocka_unit_test(test_validate_revoke),
        cmocka_unit_test(test_crud_and_policy),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
