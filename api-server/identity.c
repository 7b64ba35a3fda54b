/*
 * identity.c - a minimal, static Identity v3 (Keystone) for the walking skeleton.
 *
 * It knows exactly one user (the admin, domain Default) in one project and hands out one
 * token, [auth] admin_token, so the stock `openstack` CLI can log in and reach Compute.
 * Shapes follow the recordings in reference/openstack-api/ (token-issue.txt,
 * version-discovery.txt, usage-list.txt): 300 for GET /, the token in X-Subject-Token
 * with 201, a catalog naming compute and identity, and Keystone's own error body
 *   {"error": {"code": 401, "title": "Unauthorized", "message": "..."}}
 * which differs from Nova's. Every answer carries "Vary: X-Auth-Token" as Keystone's do.
 * Full Keystone (users, projects, roles, signed tokens) replaces this in a later issue.
 */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#include "api_int.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "util.h"

#define LOG_MOD "api.identity"
#define UNAUTH_MSG "The request you have made requires authentication."

/* Stable 32-hex ids for catalog entries and roles: the same on every start, so clients
 * that cache them see no change. */
static void stable_id(const char *seed, char out[33])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    static const char hex[] = "0123456789abcdef";

    if (EVP_Digest(seed, strlen(seed), md, &n, EVP_sha256(), NULL) != 1 || n < 16) {
        memset(out, '0', 32);
        out[32] = '\0';
        return;
    }
    for (int i = 0; i < 16; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[32] = '\0';
}

/* Keystone's audit ids: 16 random bytes, URL-safe base64 without padding. */
static void audit_id(char out[32])
{
    unsigned char raw[16];
    unsigned char b64[32];
    int n;

    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        cl_strlcpy(out, "AAAAAAAAAAAAAAAAAAAAAA", 32);
        return;
    }
    n = EVP_EncodeBlock(b64, raw, sizeof(raw));
    for (int i = 0; i < n; i++) {
        if (b64[i] == '+')
            b64[i] = '-';
        else if (b64[i] == '/')
            b64[i] = '_';
        else if (b64[i] == '=') {
            n = i;
            break;
        }
    }
    b64[n] = '\0';
    cl_strlcpy(out, (const char *)b64, 32);
}

static json_object *domain_default(void)
{
    json_object *d = json_object_new_object();

    json_object_object_add(d, "id", json_object_new_string("default"));
    json_object_object_add(d, "name", json_object_new_string("Default"));
    return d;
}

static bool ready(api_ctx *ctx, cl_http_resp *resp)
{
    if (atomic_load_explicit(&ctx->ready, memory_order_acquire))
        return true;
    api_respond_keystone_error(resp, 503, "Service Unavailable", "nube-api is starting.");
    return false;
}

static void add_endpoint(json_object *list, const api_ctx *ctx, const char *service,
                         const char *iface, const char *url)
{
    json_object *e = json_object_new_object();
    char seed[128], id[33];

    snprintf(seed, sizeof(seed), "endpoint:%s:%s", service, iface);
    stable_id(seed, id);
    json_object_object_add(e, "id", json_object_new_string(id));
    json_object_object_add(e, "interface", json_object_new_string(iface));
    json_object_object_add(e, "region_id", json_object_new_string(ctx->cfg->region));
    json_object_object_add(e, "url", json_object_new_string(url));
    json_object_object_add(e, "region", json_object_new_string(ctx->cfg->region));
    json_object_array_add(list, e);
}

static json_object *service_entry(const api_ctx *ctx, const char *type, const char *name,
                                  const char *url)
{
    static const char *const ifaces[] = {"public", "internal", "admin"};
    json_object *s = json_object_new_object();
    json_object *eps = json_object_new_array();
    char seed[64], id[33];

    for (size_t i = 0; i < CL_ARRAY_SIZE(ifaces); i++)
        add_endpoint(eps, ctx, type, ifaces[i], url);
    snprintf(seed, sizeof(seed), "service:%s", type);
    stable_id(seed, id);
    json_object_object_add(s, "endpoints", eps);
    json_object_object_add(s, "id", json_object_new_string(id));
    json_object_object_add(s, "type", json_object_new_string(type));
    json_object_object_add(s, "name", json_object_new_string(name));
    return s;
}

/* The catalog: compute at <public_host>:<compute_port>/v2.1, identity at .../v3/, and
 * image at the stand-in under <compute>/image (images.c): the openstack CLI needs an
 * image service for every server command. nube-image and billing take their places in
 * later issues. */
static json_object *catalog(const api_ctx *ctx)
{
    json_object *c = json_object_new_array();
    char url[API_URL_MAX + 16];

    snprintf(url, sizeof(url), "%s/v2.1", ctx->compute_url);
    json_object_array_add(c, service_entry(ctx, "compute", "nova", url));
    snprintf(url, sizeof(url), "%s/v3/", ctx->identity_url);
    json_object_array_add(c, service_entry(ctx, "identity", "keystone", url));
    snprintf(url, sizeof(url), "%s/image", ctx->compute_url);
    json_object_array_add(c, service_entry(ctx, "image", "glance", url));
    return c;
}

static json_object *role(const char *name)
{
    json_object *r = json_object_new_object();
    char seed[64], id[33];

    snprintf(seed, sizeof(seed), "role:%s", name);
    stable_id(seed, id);
    json_object_object_add(r, "id", json_object_new_string(id));
    json_object_object_add(r, "name", json_object_new_string(name));
    return r;
}

static json_object *token_body(const api_ctx *ctx, bool scoped, bool with_catalog)
{
    const api_cfg *cfg = ctx->cfg;
    json_object *body = json_object_new_object();
    json_object *tok = json_object_new_object();
    json_object *methods = json_object_new_array();
    json_object *user = json_object_new_object();
    json_object *audits = json_object_new_array();
    int64_t now = cl_now_ms();
    char t[64], when[80], aid[32];

    json_object_array_add(methods, json_object_new_string("password"));
    json_object_object_add(tok, "methods", methods);
    json_object_object_add(user, "domain", domain_default());
    json_object_object_add(user, "id", json_object_new_string(cfg->admin_user_id));
    json_object_object_add(user, "name", json_object_new_string(cfg->admin_user));
    json_object_object_add(user, "password_expires_at", NULL);
    json_object_object_add(tok, "user", user);
    audit_id(aid);
    json_object_array_add(audits, json_object_new_string(aid));
    json_object_object_add(tok, "audit_ids", audits);
    /* Keystone writes microseconds and a Z: "2026-11-27T06:00:00.000000Z". */
    cl_time_iso8601(now + cfg->token_ttl_s * 1000, false, t, sizeof(t));
    snprintf(when, sizeof(when), "%sZ", t);
    json_object_object_add(tok, "expires_at", json_object_new_string(when));
    cl_time_iso8601(now, false, t, sizeof(t));
    snprintf(when, sizeof(when), "%sZ", t);
    json_object_object_add(tok, "issued_at", json_object_new_string(when));
    if (scoped) {
        /* An unscoped Keystone token has no project, roles or catalog. */
        json_object *proj = json_object_new_object();
        json_object *roles = json_object_new_array();

        json_object_object_add(proj, "domain", domain_default());
        json_object_object_add(proj, "id", json_object_new_string(cfg->admin_project_id));
        json_object_object_add(proj, "name", json_object_new_string(cfg->admin_project_name));
        json_object_object_add(tok, "project", proj);
        json_object_object_add(tok, "is_domain", json_object_new_boolean(false));
        json_object_array_add(roles, role("admin"));
        json_object_array_add(roles, role("member"));
        json_object_array_add(roles, role("reader"));
        json_object_object_add(tok, "roles", roles);
        if (with_catalog)
            json_object_object_add(tok, "catalog", catalog(ctx));
    }
    json_object_object_add(body, "token", tok);
    return body;
}

/* ---- version documents ---- */

static json_object *version_v3(const api_ctx *ctx)
{
    json_object *v = json_object_new_object();
    json_object *links = json_object_new_array();
    json_object *media = json_object_new_array();
    json_object *m = json_object_new_object();
    char href[API_URL_MAX + 16];

    snprintf(href, sizeof(href), "%s/v3/", ctx->identity_url);
    json_object_object_add(v, "id", json_object_new_string("v3.14"));
    json_object_object_add(v, "status", json_object_new_string("stable"));
    json_object_object_add(v, "updated", json_object_new_string("2020-04-07T00:00:00Z"));
    json_object_array_add(links, api_link("self", href));
    json_object_object_add(v, "links", links);
    json_object_object_add(m, "base", json_object_new_string("application/json"));
    json_object_object_add(m, "type",
                           json_object_new_string("application/vnd.openstack.identity-v3+json"));
    json_object_array_add(media, m);
    json_object_object_add(v, "media-types", media);
    return v;
}

/* GET /: 300 Multiple Choices, as Keystone, with Location pointing at v3. */
void api_identity_versions(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    json_object *body, *versions, *values;
    char loc[API_URL_MAX + 16];

    (void)req;
    if (!ready(ctx, resp))
        return;
    body = json_object_new_object();
    versions = json_object_new_object();
    values = json_object_new_array();
    json_object_array_add(values, version_v3(ctx));
    json_object_object_add(versions, "values", values);
    json_object_object_add(body, "versions", versions);
    snprintf(loc, sizeof(loc), "%s/v3/", ctx->identity_url);
    cl_http_resp_header(resp, "Location", loc);
    cl_http_resp_header(resp, "Vary", "X-Auth-Token");
    cl_http_resp_json(resp, 300, body);
}

/* GET /v3 */
void api_identity_v3(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    json_object *body;

    (void)req;
    if (!ready(ctx, resp))
        return;
    body = json_object_new_object();
    json_object_object_add(body, "version", version_v3(ctx));
    cl_http_resp_header(resp, "Vary", "X-Auth-Token");
    cl_http_resp_json(resp, 200, body);
}

/* ---- tokens ---- */

static bool str_eq(const char *a, const char *b) { return a && b && strcmp(a, b) == 0; }

/* Constant-time for secrets. */
static bool secret_eq(const char *given, const char *want)
{
    size_t n;

    if (!given || !want)
        return false;
    n = strlen(want);
    return strlen(given) == n && CRYPTO_memcmp(given, want, n) == 0;
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;

    if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static json_object *jobj(json_object *o, const char *key)
{
    json_object *v;

    if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_object))
        return NULL;
    return v;
}

/* A {"domain": {"id"|"name"}} reference, or none at all, must mean Default. */
static bool domain_ok(json_object *owner)
{
    json_object *d = jobj(owner, "domain");

    if (!d)
        return true;
    return str_eq(jstr(d, "id"), "default") || str_eq(jstr(d, "name"), "Default");
}

static bool methods_has_password(json_object *identity)
{
    json_object *m;

    if (!json_object_object_get_ex(identity, "methods", &m) ||
        !json_object_is_type(m, json_type_array))
        return false;
    for (size_t i = 0; i < json_object_array_length(m); i++) {
        json_object *s = json_object_array_get_idx(m, i);

        if (json_object_is_type(s, json_type_string) &&
            strcmp(json_object_get_string(s), "password") == 0)
            return true;
    }
    return false;
}

/* POST /v3/auth/tokens, password method. 201 with the token in X-Subject-Token. */
void api_identity_token_issue(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const api_cfg *cfg = ctx->cfg;
    _cleanup_json_ json_object *root = NULL;
    json_object *auth, *identity, *password, *user, *scope, *project = NULL;
    cl_error err = {0};
    bool user_ok, scoped = false;
    const char *qnocat;

    if (!ready(ctx, resp))
        return;
    cl_http_resp_header(resp, "Vary", "X-Auth-Token");
    if (cl_http_req_json(req, &root, &err) < 0) {
        api_respond_keystone_error(resp, cl_error_http_status(err.code),
                                   err.code == CL_E_BAD_REQUEST ? "Bad Request"
                                                                : "Unsupported Media Type",
                                   err.message);
        return;
    }
    auth = jobj(root, "auth");
    identity = jobj(auth, "identity");
    if (!identity) {
        api_respond_keystone_error(resp, 400, "Bad Request",
                                   "Expecting to find identity in auth. The server could not "
                                   "comply with the request since it is either malformed or "
                                   "otherwise incorrect. The client is assumed to be in error.");
        return;
    }
    password = jobj(identity, "password");
    user = jobj(password, "user");
    if (!methods_has_password(identity) || !user) {
        /* Only the password method exists here (token, application credential: later). */
        api_respond_unauthorized(ctx, resp);
        return;
    }
    if (jstr(user, "id"))
        user_ok = str_eq(jstr(user, "id"), cfg->admin_user_id);
    else
        user_ok = str_eq(jstr(user, "name"), cfg->admin_user) && domain_ok(user);
    if (!user_ok || !secret_eq(jstr(user, "password"), cfg->admin_password)) {
        cl_debug(LOG_MOD, "authentication failed");
        api_respond_unauthorized(ctx, resp);
        return;
    }
    scope = jobj(auth, "scope");
    if (scope) {
        project = jobj(scope, "project");
        if (!project) {
            /* Domain and system scopes need role assignments the static admin lacks. */
            api_respond_unauthorized(ctx, resp);
            return;
        }
        if (jstr(project, "id"))
            scoped = str_eq(jstr(project, "id"), cfg->admin_project_id);
        else
            scoped = str_eq(jstr(project, "name"), cfg->admin_project_name) &&
                     domain_ok(project);
        if (!scoped) {
            api_respond_unauthorized(ctx, resp);
            return;
        }
    }
    qnocat = cl_http_req_query(req, "nocatalog");
    atomic_fetch_add(&ctx->tokens_issued, 1);
    cl_http_resp_header(resp, "X-Subject-Token", cfg->admin_token);
    cl_http_resp_json(resp, 201, token_body(ctx, scoped, qnocat == NULL));
}

/* Identity calls other than token issue need a valid X-Auth-Token. */
static bool identity_auth(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp)
{
    if (!ready(ctx, resp))
        return false;
    cl_http_resp_header(resp, "Vary", "X-Auth-Token");
    if (!api_token_ok(ctx, cl_http_req_header(req, "X-Auth-Token"))) {
        api_respond_unauthorized(ctx, resp);
        return false;
    }
    return true;
}

/* GET /v3/auth/tokens: validate X-Subject-Token (what keystonemiddleware does). */
void api_identity_token_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *subject = cl_http_req_header(req, "X-Subject-Token");
    char msg[160];

    if (!identity_auth(ctx, req, resp))
        return;
    if (!api_token_ok(ctx, subject)) {
        snprintf(msg, sizeof(msg), "Could not find token: %.64s.", subject ? subject : "");
        api_respond_keystone_error(resp, 404, "Not Found", msg);
        return;
    }
    cl_http_resp_header(resp, "X-Subject-Token", ctx->cfg->admin_token);
    cl_http_resp_json(resp, 200,
                      token_body(ctx, true, cl_http_req_query(req, "nocatalog") == NULL));
}

static json_object *links_self(const char *self)
{
    json_object *l = json_object_new_object();

    json_object_object_add(l, "self", json_object_new_string(self));
    json_object_object_add(l, "previous", NULL);
    json_object_object_add(l, "next", NULL);
    return l;
}

/* GET /v3/auth/catalog */
void api_identity_catalog(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    json_object *body;
    char self[API_URL_MAX + 32];

    if (!identity_auth(ctx, req, resp))
        return;
    body = json_object_new_object();
    snprintf(self, sizeof(self), "%s/v3/auth/catalog", ctx->identity_url);
    json_object_object_add(body, "catalog", catalog(ctx));
    json_object_object_add(body, "links", links_self(self));
    cl_http_resp_json(resp, 200, body);
}

static json_object *project_json(const api_ctx *ctx)
{
    json_object *p = json_object_new_object();
    json_object *links = json_object_new_object();
    char self[API_URL_MAX + 96];

    snprintf(self, sizeof(self), "%s/v3/projects/%s", ctx->identity_url,
             ctx->cfg->admin_project_id);
    json_object_object_add(p, "id", json_object_new_string(ctx->cfg->admin_project_id));
    json_object_object_add(p, "name", json_object_new_string(ctx->cfg->admin_project_name));
    json_object_object_add(p, "domain_id", json_object_new_string("default"));
    json_object_object_add(p, "description", json_object_new_string(""));
    json_object_object_add(p, "enabled", json_object_new_boolean(true));
    json_object_object_add(p, "parent_id", json_object_new_string("default"));
    json_object_object_add(p, "is_domain", json_object_new_boolean(false));
    json_object_object_add(p, "tags", json_object_new_array());
    json_object_object_add(p, "options", json_object_new_object());
    json_object_object_add(links, "self", json_object_new_string(self));
    json_object_object_add(p, "links", links);
    return p;
}

/* GET /v3/projects (the admin project only; ?name= filters). */
void api_identity_projects(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *name;
    json_object *body, *list;
    char self[API_URL_MAX + 32];

    if (!identity_auth(ctx, req, resp))
        return;
    name = cl_http_req_query(req, "name");
    body = json_object_new_object();
    list = json_object_new_array();
    if (!name || strcmp(name, ctx->cfg->admin_project_name) == 0)
        json_object_array_add(list, project_json(ctx));
    snprintf(self, sizeof(self), "%s/v3/projects", ctx->identity_url);
    json_object_object_add(body, "projects", list);
    json_object_object_add(body, "links", links_self(self));
    cl_http_resp_json(resp, 200, body);
}

/* GET /v3/projects/{id} */
void api_identity_project_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *id = cl_http_req_param(req, "id");
    json_object *body;
    char msg[160];

    if (!identity_auth(ctx, req, resp))
        return;
    if (!str_eq(id, ctx->cfg->admin_project_id)) {
        snprintf(msg, sizeof(msg), "Could not find project: %.64s.", id ? id : "");
        api_respond_keystone_error(resp, 404, "Not Found", msg);
        return;
    }
    body = json_object_new_object();
    json_object_object_add(body, "project", project_json(ctx));
    cl_http_resp_json(resp, 200, body);
}
