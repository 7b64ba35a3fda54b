/*
 * identity.c - nube's Identity v3 (Keystone dialect): password and token authentication,
 * sealed tokens, revocation, the service catalog, and the admin API for projects,
 * users, roles, role assignments and domains.
 *
 * Shapes follow the recordings in reference/openstack-api/ (token-issue.txt,
 * catalog-list.txt, version-discovery.txt): 300 for GET /, the token in X-Subject-Token
 * with 201, the catalog with public/internal/admin endpoints in one region, and Keystone's
 * own error body  {"error": {"code": 401, "title": "Unauthorized", "message": "..."}}
 * which differs from Nova's. Every answer carries "Vary: X-Auth-Token" as Keystone's do.
 *
 * Tokens (libcloud/token.h) are stateless: issuing one costs the password hash, checking
 * one costs an AES-GCM decryption and a lookup in the in-memory revocation list. That
 * list is the revoked_tokens table, re-read at most once a second (REVOKED_TTL_MS) so a
 * revocation made by another nube-api process is honoured within that delay; this
 * process's own revocations are added to the list at once. nube-image and nube-billing
 * verify tokens with the same key file but cannot see the controller DB: they honour
 * expiry only until the revocation list is distributed to them (a later issue).
 *
 * Roles are fixed in the token at issue time (admin implies member implies reader, as
 * Keystone's default implied roles). Removing a role or disabling a user takes effect on
 * tokens issued afterwards; Identity's own validation (GET /v3/auth/tokens) also checks
 * that the user still exists and is enabled.
 *
 * The static [auth] admin_token stays accepted everywhere as a service/bootstrap token
 * with every role on the admin project, as Keystone's admin_token: tests and operators'
 * scripts use it.
 *
 * Policy (Keystone's defaults, reduced to nube's three roles): identity administration
 * needs the admin role; a user may read itself, its own projects and role assignments,
 * its project, and validate or revoke its own tokens.
 */
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api_int.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "password.h"
#include "store_identity.h"
#include "token.h"
#include "util.h"

#define LOG_MOD "api.identity"
#define UNAUTH_MSG "The request you have made requires authentication."
#define REVOKED_TTL_MS 1000
#define REVOKED_MAX 1000000 /* entries kept in memory; older ones are dropped first */

struct api_ident {
    cl_token_key key;
    pthread_rwlock_t lock;        /* guards revoked / nrevoked */
    char (*revoked)[23];          /* sorted audit ids */
    size_t nrevoked;
    pthread_mutex_t refresh_lock; /* one refresher at a time; guards st, refreshed_ms */
    cl_store *st;                 /* the refresher's own connection */
    int64_t refreshed_ms;         /* monotonic */
};

/* ---- small helpers ---- */

static bool str_eq(const char *a, const char *b) { return a && b && strcmp(a, b) == 0; }

/* Constant-time for secrets. */
static bool secret_eq(const char *given, const char *want)
{
    size_t n;

    if (!given || !want || !*want)
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

static void ks_error(cl_http_resp *resp, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void ks_error(cl_http_resp *resp, int code, const char *fmt, ...)
{
    char msg[512];
    const char *title;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    switch (code) {
    case 400: title = "Bad Request"; break;
    case 401: title = "Unauthorized"; break;
    case 403: title = "Forbidden"; break;
    case 404: title = "Not Found"; break;
    case 409: title = "Conflict"; break;
    case 415: title = "Unsupported Media Type"; break;
    case 503: title = "Service Unavailable"; break;
    default: title = "Internal Server Error"; break;
    }
    api_respond_keystone_error(resp, code, title, msg);
}

static void ks_forbidden(cl_http_resp *resp, const char *action)
{
    ks_error(resp, 403, "You are not authorized to perform the requested action: %s.", action);
}

static void ks_not_found(cl_http_resp *resp, const char *kind, const char *id)
{
    ks_error(resp, 404, "Could not find %s: %.64s.", kind, id ? id : "");
}

static void ks_store_error(cl_http_resp *resp, int rc, const char *kind, const char *id)
{
    if (rc == -ENOENT)
        ks_not_found(resp, kind, id);
    else if (rc == -EEXIST)
        ks_error(resp, 409, "Conflict occurred attempting to store %s - Duplicate entry.",
                 kind);
    else if (rc == -EBUSY)
        ks_error(resp, 503, "The identity store is busy; try again.");
    else
        ks_error(resp, 500, "An unexpected error prevented the server from fulfilling your "
                            "request.");
}

static bool ready(const api_ctx *ctx, cl_http_resp *resp)
{
    if (atomic_load_explicit(&ctx->ready, memory_order_acquire))
        return true;
    ks_error(resp, 503, "nube-api is starting.");
    return false;
}

/* "2026-11-27T06:00:00.000000Z", as Keystone writes times. */
static json_object *ks_time(int64_t ms)
{
    char t[64], when[80];

    cl_time_iso8601(ms, false, t, sizeof(t));
    snprintf(when, sizeof(when), "%sZ", t);
    return json_object_new_string(when);
}

/* Parse the request body as an object; answers 400/415 itself. */
static bool body_json(const cl_http_req *req, cl_http_resp *resp, json_object **out)
{
    cl_error err = {0};

    if (cl_http_req_json(req, out, &err) < 0) {
        ks_error(resp, cl_error_http_status(err.code), "%s", err.message);
        return false;
    }
    return true;
}

/* Query flags as Keystone reads them: present with no value, "true", "1", "yes". */
static bool query_flag(const cl_http_req *req, const char *name)
{
    const char *v = cl_http_req_query(req, name);

    if (!v)
        return false;
    return !*v || strcasecmp(v, "true") == 0 || strcmp(v, "1") == 0 ||
           strcasecmp(v, "yes") == 0;
}

/* ---- token key, revocation ---- */

void api_token_key_path(const api_cfg *cfg, char *out, size_t outlen)
{
    if (cfg->token_key_file && *cfg->token_key_file)
        cl_strlcpy(out, cfg->token_key_file, outlen);
    else
        snprintf(out, outlen, "%s/token.key",
                 cfg->common.state_dir && *cfg->common.state_dir ? cfg->common.state_dir
                                                                 : ".");
}

static int cmp_audit(const void *a, const void *b) { return strcmp(a, b); }

/* Re-read the revoked list when it is older than the TTL. A failed read keeps the old
 * list (and is retried on the next call): the DB being briefly busy must not turn every
 * token away. */
static void revoked_refresh(struct api_ident *id)
{
    char (*list)[23] = NULL;
    char (*old)[23];
    size_t n = 0;
    int64_t now = cl_mono_ms();

    if (pthread_mutex_trylock(&id->refresh_lock) != 0)
        return; /* someone else is refreshing; the current list is at most a TTL old */
    if (now - __atomic_load_n(&id->refreshed_ms, __ATOMIC_RELAXED) < REVOKED_TTL_MS ||
        !id->st) {
        pthread_mutex_unlock(&id->refresh_lock);
        return;
    }
    if (cl_store_revoked_list(id->st, cl_now_ms(), REVOKED_MAX, &list, &n) < 0) {
        pthread_mutex_unlock(&id->refresh_lock);
        return;
    }
    __atomic_store_n(&id->refreshed_ms, now, __ATOMIC_RELAXED);
    pthread_rwlock_wrlock(&id->lock);
    old = id->revoked;
    id->revoked = list;
    id->nrevoked = n;
    pthread_rwlock_unlock(&id->lock);
    pthread_mutex_unlock(&id->refresh_lock);
    free(old);
}

static bool revoked(struct api_ident *id, const char *audit)
{
    bool hit;

    if (cl_mono_ms() - __atomic_load_n(&id->refreshed_ms, __ATOMIC_RELAXED) >= REVOKED_TTL_MS)
        revoked_refresh(id);
    pthread_rwlock_rdlock(&id->lock);
    hit = id->nrevoked &&
          bsearch(audit, id->revoked, id->nrevoked, sizeof(*id->revoked), cmp_audit) != NULL;
    pthread_rwlock_unlock(&id->lock);
    return hit;
}

/* Add one audit id to this process's list at once (the DB has it already). */
static void revoked_add(struct api_ident *id, const char *audit)
{
    char (*list)[23];

    pthread_rwlock_wrlock(&id->lock);
    if ((!id->nrevoked ||
         !bsearch(audit, id->revoked, id->nrevoked, sizeof(*id->revoked), cmp_audit)) &&
        id->nrevoked < REVOKED_MAX) {
        list = reallocarray(id->revoked, id->nrevoked + 1, sizeof(*list));
        if (list) {
            cl_strlcpy(list[id->nrevoked], audit, sizeof(list[0]));
            id->revoked = list;
            id->nrevoked++;
            qsort(id->revoked, id->nrevoked, sizeof(*id->revoked), cmp_audit);
        }
    }
    pthread_rwlock_unlock(&id->lock);
}

static void static_admin(const api_cfg *cfg, cl_auth *a)
{
    memset(a, 0, sizeof(*a));
    cl_strlcpy(a->user_id, cfg->admin_user_id, sizeof(a->user_id));
    cl_strlcpy(a->user_name, cfg->admin_user, sizeof(a->user_name));
    cl_strlcpy(a->domain_id, CL_DEFAULT_DOMAIN_ID, sizeof(a->domain_id));
    cl_strlcpy(a->project_id, cfg->admin_project_id, sizeof(a->project_id));
    cl_strlcpy(a->project_name, cfg->admin_project_name, sizeof(a->project_name));
    a->roles = cl_identity_role_bits("admin");
    a->expires_ms = INT64_MAX;
}

bool api_auth_token(const api_ctx *ctx, const char *token, cl_auth *out)
{
    cl_auth a;

    if (!token || !*token)
        return false;
    if (secret_eq(token, ctx->cfg->admin_token)) {
        static_admin(ctx->cfg, out);
        return true;
    }
    if (!ctx->ident || cl_token_verify(&ctx->ident->key, token, cl_now_ms(), &a, NULL) < 0)
        return false;
    if (revoked(ctx->ident, a.audit_id))
        return false;
    *out = a;
    return true;
}

/* ---- bootstrap and start ---- */

int api_identity_bootstrap(const api_cfg *cfg, const char *password, bool *out_changed,
                           cl_error *err)
{
    _cleanup_store_ cl_store *st = NULL;
    cl_identity_bootstrap b = {
        .project_id = cfg->admin_project_id,
        .project_name = cfg->admin_project_name,
        .user_id = cfg->admin_user_id,
        .user_name = cfg->admin_user,
        .password = password ? password : cfg->admin_password,
        .password_iterations = cfg->password_iterations,
    };
    char path[4096];
    cl_token_key key;
    int rc;

    api_token_key_path(cfg, path, sizeof(path));
    rc = cl_token_key_load(path, true, &key, err);
    OPENSSL_cleanse(&key, sizeof(key));
    if (rc < 0)
        return rc;
    rc = cl_store_open(cfg->db_path, &st, err);
    if (rc < 0)
        return rc;
    return cl_store_identity_bootstrap(st, &b, out_changed, err);
}

int api_identity_start(api_ctx *ctx, cl_error *err)
{
    const api_cfg *cfg = ctx->cfg;
    struct api_ident *id = calloc(1, sizeof(*id));
    char path[4096];
    cl_user u;
    int rc;

    if (!id)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    pthread_rwlock_init(&id->lock, NULL);
    pthread_mutex_init(&id->refresh_lock, NULL);
    id->refreshed_ms = cl_mono_ms() - REVOKED_TTL_MS;
    ctx->ident = id;

    api_token_key_path(cfg, path, sizeof(path));
    rc = cl_token_key_load(path, true, &id->key, err);
    if (rc == -ENOENT && !(cfg->token_key_file && *cfg->token_key_file)) {
        /* No state directory (unit tests, a first run before packaging made it): run
         * with a key of this process only. Tokens die with it, and other services
         * cannot verify them, so say so loudly. */
        cl_warn(LOG_MOD, "cannot create %s (%s): using an ephemeral token key; set "
                         "[DEFAULT] state_dir or [auth] token_key_file", path,
                err ? err->message : "");
        if (RAND_bytes(id->key.bytes, sizeof(id->key.bytes)) != 1)
            return cl_error_set(err, CL_E_INTERNAL, "no randomness for a token key");
        rc = 0;
    }
    if (rc < 0)
        return rc;

    rc = cl_store_open(cfg->db_path, &id->st, err);
    if (rc < 0)
        return rc;
    rc = cl_store_user_get(id->st, cfg->admin_user_id, &u);
    if (rc == -ENOENT) {
        cl_identity_bootstrap b = {
            .project_id = cfg->admin_project_id,
            .project_name = cfg->admin_project_name,
            .user_id = cfg->admin_user_id,
            .user_name = cfg->admin_user,
            .password = cfg->admin_password,
            .password_iterations = cfg->password_iterations,
        };

        rc = cl_store_identity_bootstrap(id->st, &b, NULL, err);
        if (rc == 0)
            cl_info(LOG_MOD, "bootstrapped the admin user '%s' in project '%s'",
                    cfg->admin_user, cfg->admin_project_name);
    } else if (rc < 0) {
        rc = cl_error_set(err, CL_E_INTERNAL, "cannot read the identity tables");
    }
    return rc;
}

void api_identity_stop(api_ctx *ctx)
{
    struct api_ident *id = ctx ? ctx->ident : NULL;

    if (!id)
        return;
    cl_store_free(id->st);
    free(id->revoked);
    pthread_rwlock_destroy(&id->lock);
    pthread_mutex_destroy(&id->refresh_lock);
    OPENSSL_cleanse(&id->key, sizeof(id->key));
    free(id);
    ctx->ident = NULL;
}

/* ---- JSON of identity objects ---- */

/* Stable 32-hex ids for catalog entries: the same on every start, so clients that cache
 * them see no change. */
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

static json_object *links_obj(const api_ctx *ctx, const char *coll, const char *id)
{
    json_object *l = json_object_new_object();
    char self[API_URL_MAX + 160];

    snprintf(self, sizeof(self), "%s/v3/%s/%s", ctx->identity_url, coll, id);
    json_object_object_add(l, "self", json_object_new_string(self));
    return l;
}

static json_object *links_coll(const api_ctx *ctx, const char *path)
{
    json_object *l = json_object_new_object();
    char self[API_URL_MAX + 64];

    snprintf(self, sizeof(self), "%s/v3/%s", ctx->identity_url, path);
    json_object_object_add(l, "self", json_object_new_string(self));
    json_object_object_add(l, "previous", NULL);
    json_object_object_add(l, "next", NULL);
    return l;
}

static json_object *domain_ref(const char *id, const char *name)
{
    json_object *d = json_object_new_object();

    json_object_object_add(d, "id", json_object_new_string(id));
    json_object_object_add(d, "name", json_object_new_string(name));
    return d;
}

/* Domain name of id (Default without a DB round trip). */
static void domain_name(cl_store *st, const char *id, char *out, size_t outlen)
{
    cl_domain d;

    if (str_eq(id, CL_DEFAULT_DOMAIN_ID)) {
        cl_strlcpy(out, CL_DEFAULT_DOMAIN_NAME, outlen);
        return;
    }
    if (st && cl_store_domain_get(st, id, &d) == 0)
        cl_strlcpy(out, d.name, outlen);
    else
        cl_strlcpy(out, id, outlen);
}

static json_object *domain_json(const api_ctx *ctx, const cl_domain *d)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "id", json_object_new_string(d->id));
    json_object_object_add(o, "name", json_object_new_string(d->name));
    json_object_object_add(o, "description", json_object_new_string(d->description));
    json_object_object_add(o, "enabled", json_object_new_boolean(d->enabled));
    json_object_object_add(o, "tags", json_object_new_array());
    json_object_object_add(o, "options", json_object_new_object());
    json_object_object_add(o, "links", links_obj(ctx, "domains", d->id));
    return o;
}

static json_object *project_json(const api_ctx *ctx, const cl_project *p)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "id", json_object_new_string(p->id));
    json_object_object_add(o, "name", json_object_new_string(p->name));
    json_object_object_add(o, "domain_id", json_object_new_string(p->domain_id));
    json_object_object_add(o, "description", json_object_new_string(p->description));
    json_object_object_add(o, "enabled", json_object_new_boolean(p->enabled));
    json_object_object_add(o, "parent_id", json_object_new_string(p->domain_id));
    json_object_object_add(o, "is_domain", json_object_new_boolean(false));
    json_object_object_add(o, "tags", json_object_new_array());
    json_object_object_add(o, "options", json_object_new_object());
    json_object_object_add(o, "links", links_obj(ctx, "projects", p->id));
    return o;
}

static json_object *user_json(const api_ctx *ctx, const cl_user *u)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "id", json_object_new_string(u->id));
    json_object_object_add(o, "name", json_object_new_string(u->name));
    json_object_object_add(o, "domain_id", json_object_new_string(u->domain_id));
    json_object_object_add(o, "enabled", json_object_new_boolean(u->enabled));
    if (u->default_project_id[0])
        json_object_object_add(o, "default_project_id",
                               json_object_new_string(u->default_project_id));
    if (u->email[0])
        json_object_object_add(o, "email", json_object_new_string(u->email));
    if (u->description[0])
        json_object_object_add(o, "description", json_object_new_string(u->description));
    json_object_object_add(o, "password_expires_at", NULL);
    json_object_object_add(o, "options", json_object_new_object());
    json_object_object_add(o, "links", links_obj(ctx, "users", u->id));
    return o;
}

static json_object *role_json(const api_ctx *ctx, const cl_role_rec *r, bool full)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "id", json_object_new_string(r->id));
    json_object_object_add(o, "name", json_object_new_string(r->name));
    if (full) {
        json_object_object_add(o, "domain_id", NULL);
        json_object_object_add(o, "description", NULL);
        json_object_object_add(o, "options", json_object_new_object());
        json_object_object_add(o, "links", links_obj(ctx, "roles", r->id));
    }
    return o;
}

/* ---- catalog ---- */

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

/* compute at <public_host>:<compute_port>/v2.1, identity at .../v3/, image (nube-image)
 * at :9292 and billing (nube-billing) at :8889, their default ports. */
static json_object *catalog(const api_ctx *ctx)
{
    json_object *c = json_object_new_array();
    char url[API_URL_MAX + 16];

    snprintf(url, sizeof(url), "%s/v2.1", ctx->compute_url);
    json_object_array_add(c, service_entry(ctx, "compute", "nova", url));
    snprintf(url, sizeof(url), "%s/v3/", ctx->identity_url);
    json_object_array_add(c, service_entry(ctx, "identity", "keystone", url));
    snprintf(url, sizeof(url), "http://%s:9292", ctx->cfg->public_host);
    json_object_array_add(c, service_entry(ctx, "image", "glance", url));
    snprintf(url, sizeof(url), "http://%s:8889", ctx->cfg->public_host);
    json_object_array_add(c, service_entry(ctx, "billing", "nube-billing", url));
    return c;
}

/* ---- token bodies ---- */

/* Roles of the token as JSON: the effective list of the user on the project when the
 * store can tell, else the default roles named by the bits. */
static json_object *roles_json(cl_store *st, const cl_auth *a)
{
    static const char *const names[] = {"admin", "member", "reader"};
    static const cl_role bits[] = {CL_ROLE_ADMIN, CL_ROLE_MEMBER, CL_ROLE_READER};
    json_object *list = json_object_new_array();

    for (size_t i = 0; i < CL_ARRAY_SIZE(names); i++) {
        cl_role_rec r;

        if (!(a->roles & CL_ROLE_BIT(bits[i])))
            continue;
        if (!st || cl_store_role_get_by_name(st, names[i], &r) < 0) {
            char seed[32];

            snprintf(seed, sizeof(seed), "role:%s", names[i]);
            stable_id(seed, r.id);
            cl_strlcpy(r.name, names[i], sizeof(r.name));
        }
        json_object_array_add(list, role_json(NULL, &r, false));
    }
    return list;
}

/* The "token" document of issue and validation. methods: "password" and/or "token". */
static json_object *token_body(const api_ctx *ctx, cl_store *st, const cl_auth *a,
                               const char *user_name, const char *project_name,
                               const char *project_domain, bool domain_scoped,
                               json_object *roles, const char *method, bool with_catalog)
{
    json_object *body = json_object_new_object();
    json_object *tok = json_object_new_object();
    json_object *methods = json_object_new_array();
    json_object *user = json_object_new_object();
    json_object *audits = json_object_new_array();
    char dname[CL_NAME_MAX];

    json_object_array_add(methods, json_object_new_string(method));
    json_object_object_add(tok, "methods", methods);
    domain_name(st, a->domain_id, dname, sizeof(dname));
    json_object_object_add(user, "domain", domain_ref(a->domain_id, dname));
    json_object_object_add(user, "id", json_object_new_string(a->user_id));
    json_object_object_add(user, "name", json_object_new_string(user_name));
    json_object_object_add(user, "password_expires_at", NULL);
    json_object_object_add(tok, "user", user);
    json_object_array_add(audits, json_object_new_string(a->audit_id));
    json_object_object_add(tok, "audit_ids", audits);
    json_object_object_add(tok, "expires_at",
                           ks_time(a->expires_ms == INT64_MAX ? cl_now_ms() +
                                   ctx->cfg->token_ttl_s * 1000 : a->expires_ms));
    json_object_object_add(tok, "issued_at", ks_time(a->issued_ms ? a->issued_ms
                                                                  : cl_now_ms()));
    if (a->project_id[0] || domain_scoped) {
        if (a->project_id[0]) {
            json_object *proj = json_object_new_object();

            domain_name(st, project_domain, dname, sizeof(dname));
            json_object_object_add(proj, "domain", domain_ref(project_domain, dname));
            json_object_object_add(proj, "id", json_object_new_string(a->project_id));
            json_object_object_add(proj, "name", json_object_new_string(project_name));
            json_object_object_add(tok, "project", proj);
            json_object_object_add(tok, "is_domain", json_object_new_boolean(false));
        } else {
            domain_name(st, a->domain_id, dname, sizeof(dname));
            json_object_object_add(tok, "domain", domain_ref(a->domain_id, dname));
        }
        json_object_object_add(tok, "roles", roles ? roles : roles_json(st, a));
        roles = NULL;
        if (with_catalog)
            json_object_object_add(tok, "catalog", catalog(ctx));
    }
    if (roles)
        json_object_put(roles);
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
static void h_versions(const cl_http_req *req, cl_http_resp *resp, void *ud)
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
static void h_v3(const cl_http_req *req, cl_http_resp *resp, void *ud)
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

/* ---- authentication of identity calls ---- */

/* Prologue of authenticated Identity handlers: the caller in *who and the thread's
 * store in *st. Answers 503/401/500 itself. */
static bool begin(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, cl_auth *who,
                  cl_store **st)
{
    if (!ready(ctx, resp))
        return false;
    cl_http_resp_header(resp, "Vary", "X-Auth-Token");
    if (!api_auth_token(ctx, cl_http_req_header(req, "X-Auth-Token"), who)) {
        api_respond_unauthorized(ctx, resp);
        return false;
    }
    *st = api_store(ctx, resp);
    return *st != NULL;
}

static bool require_admin(const cl_auth *who, cl_http_resp *resp, const char *action)
{
    if (cl_auth_is_admin(who))
        return true;
    ks_forbidden(resp, action);
    return false;
}

/* Resolve a {"domain": {"id"|"name"}} reference (absent = Default) to a domain id. */
static bool resolve_domain(cl_store *st, json_object *owner, char out[CL_ID_MAX])
{
    json_object *d = jobj(owner, "domain");
    cl_domain dom;

    if (!d) {
        cl_strlcpy(out, CL_DEFAULT_DOMAIN_ID, CL_ID_MAX);
        return true;
    }
    if (jstr(d, "id")) {
        if (cl_store_domain_get(st, jstr(d, "id"), &dom) < 0 || !dom.enabled)
            return false;
    } else if (!jstr(d, "name") || cl_store_domain_get_by_name(st, jstr(d, "name"), &dom) < 0 ||
               !dom.enabled) {
        return false;
    }
    cl_strlcpy(out, dom.id, CL_ID_MAX);
    return true;
}

static bool methods_has(json_object *identity, const char *method)
{
    json_object *m;

    if (!json_object_object_get_ex(identity, "methods", &m) ||
        !json_object_is_type(m, json_type_array))
        return false;
    for (size_t i = 0; i < json_object_array_length(m); i++) {
        json_object *s = json_object_array_get_idx(m, i);

        if (json_object_is_type(s, json_type_string) &&
            strcmp(json_object_get_string(s), method) == 0)
            return true;
    }
    return false;
}

/* The password method: find the user (id, or name + domain) and check the password.
 * An unknown user costs the same hash (configured rounds) as a known one, so response
 * times do not tell which user names exist. */
static bool auth_password(api_ctx *ctx, cl_store *st, json_object *identity, cl_user *out)
{
    json_object *user = jobj(jobj(identity, "password"), "user");
    const char *pw = jstr(user, "password");
    char dom[CL_ID_MAX], dummy[CL_PASSWORD_HASH_MAX];
    cl_domain d;
    int rc = -ENOENT;

    if (!user || !pw)
        return false;
    if (jstr(user, "id"))
        rc = cl_store_user_get(st, jstr(user, "id"), out);
    else if (jstr(user, "name") && resolve_domain(st, user, dom))
        rc = cl_store_user_get_by_name(st, dom, jstr(user, "name"), out);
    if (rc < 0) {
        snprintf(dummy, sizeof(dummy),
                 "pbkdf2-sha256$%lld$AAAAAAAAAAAAAAAAAAAAAA$"
                 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                 (long long)ctx->cfg->password_iterations);
        cl_password_verify(pw, dummy);
        return false;
    }
    if (!cl_password_verify(pw, out->password_hash))
        return false;
    if (!out->enabled || cl_store_domain_get(st, out->domain_id, &d) < 0 || !d.enabled) {
        cl_debug(LOG_MOD, "user %s or its domain is disabled", out->id);
        return false;
    }
    return true;
}

/* The token method (re-scoping): the user of a valid token; *expires keeps the original
 * token's expiry, as Keystone does. */
static bool auth_token_method(api_ctx *ctx, cl_store *st, json_object *identity, cl_user *out,
                              int64_t *expires)
{
    const char *tok = jstr(jobj(identity, "token"), "id");
    cl_auth a;

    if (!api_auth_token(ctx, tok, &a) || cl_store_user_get(st, a.user_id, out) < 0 ||
        !out->enabled)
        return false;
    if (a.expires_ms != INT64_MAX)
        *expires = a.expires_ms;
    return true;
}

/* POST /v3/auth/tokens */
static void h_token_issue(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const api_cfg *cfg = ctx->cfg;
    _cleanup_json_ json_object *root = NULL;
    _cleanup_free_ cl_role_rec *roles = NULL;
    json_object *auth, *identity, *scope_obj, *rj = NULL;
    const char *method = "password";
    cl_store *st;
    cl_user u;
    cl_project p;
    cl_auth a;
    size_t nroles = 0;
    bool domain_scoped = false, explicit_unscoped = false;
    int64_t now = cl_now_ms(), expires = now + cfg->token_ttl_s * 1000;
    char token[CL_TOKEN_MAX];
    cl_error err = {0};

    if (!ready(ctx, resp))
        return;
    cl_http_resp_header(resp, "Vary", "X-Auth-Token");
    if (!body_json(req, resp, &root))
        return;
    auth = jobj(root, "auth");
    identity = jobj(auth, "identity");
    if (!identity) {
        ks_error(resp, 400, "Expecting to find identity in auth. The server could not comply "
                            "with the request since it is either malformed or otherwise "
                            "incorrect. The client is assumed to be in error.");
        return;
    }
    st = api_store(ctx, resp);
    if (!st)
        return;
    memset(&p, 0, sizeof(p));
    if (methods_has(identity, "password")) {
        if (!auth_password(ctx, st, identity, &u))
            goto unauthorized;
    } else if (methods_has(identity, "token")) {
        method = "token";
        if (!auth_token_method(ctx, st, identity, &u, &expires))
            goto unauthorized;
    } else {
        goto unauthorized;
    }

    memset(&a, 0, sizeof(a));
    cl_strlcpy(a.user_id, u.id, sizeof(a.user_id));
    cl_strlcpy(a.domain_id, u.domain_id, sizeof(a.domain_id));
    a.issued_ms = now;
    a.expires_ms = expires;
    cl_token_audit_id_new(a.audit_id);

    scope_obj = NULL;
    if (auth && json_object_object_get_ex(auth, "scope", &scope_obj) &&
        json_object_is_type(scope_obj, json_type_string))
        explicit_unscoped = strcmp(json_object_get_string(scope_obj), "unscoped") == 0;
    scope_obj = jobj(auth, "scope");
    if (jobj(scope_obj, "project")) {
        json_object *pj = jobj(scope_obj, "project");
        char dom[CL_ID_MAX];
        int rc = -ENOENT;

        if (jstr(pj, "id"))
            rc = cl_store_project_get(st, jstr(pj, "id"), &p);
        else if (jstr(pj, "name") && resolve_domain(st, pj, dom))
            rc = cl_store_project_get_by_name(st, dom, jstr(pj, "name"), &p);
        if (rc < 0 || !p.enabled)
            goto unauthorized;
    } else if (jobj(scope_obj, "domain")) {
        char dom[CL_ID_MAX];
        _cleanup_free_ cl_role_assignment *as = NULL;
        size_t nas = 0;

        /* Domain scope: nube has no domain role assignments; an admin anywhere holds
         * admin on its domain, everyone else is refused (as Keystone without a grant). */
        if (!resolve_domain(st, scope_obj, dom) || !str_eq(dom, u.domain_id) ||
            cl_store_assignment_list(st, u.id, NULL, NULL, &as, &nas) < 0)
            goto unauthorized;
        for (size_t i = 0; i < nas; i++)
            a.roles |= cl_identity_role_bits(as[i].role_name) & CL_ROLE_BIT(CL_ROLE_ADMIN)
                           ? cl_identity_role_bits("admin") : 0;
        if (!a.roles)
            goto unauthorized;
        domain_scoped = true;
    } else if (scope_obj) {
        /* system scope and others: not offered */
        goto unauthorized;
    } else if (!explicit_unscoped && u.default_project_id[0] &&
               cl_store_project_get(st, u.default_project_id, &p) == 0 && p.enabled) {
        /* Keystone scopes a token without a scope to the user's default project when the
         * user has a role there. */
        unsigned bits = 0;

        if (cl_store_user_project_roles(st, u.id, p.id, &bits, NULL, NULL) < 0 || !bits)
            memset(&p, 0, sizeof(p));
    }
    if (p.id[0]) {
        if (cl_store_user_project_roles(st, u.id, p.id, &a.roles, &roles, &nroles) < 0 ||
            nroles == 0)
            goto unauthorized;
        cl_strlcpy(a.project_id, p.id, sizeof(a.project_id));
        rj = json_object_new_array();
        for (size_t i = 0; i < nroles; i++)
            json_object_array_add(rj, role_json(ctx, &roles[i], false));
    }
    if (cl_token_issue(&ctx->ident->key, &a, token, sizeof(token), &err) < 0) {
        if (rj)
            json_object_put(rj);
        ks_error(resp, 500, "%s", err.message);
        return;
    }
    atomic_fetch_add(&ctx->tokens_issued, 1);
    cl_http_resp_header(resp, "X-Subject-Token", token);
    cl_http_resp_json(resp, 201,
                      token_body(ctx, st, &a, u.name, p.name, p.domain_id, domain_scoped, rj,
                                 method, cl_http_req_query(req, "nocatalog") == NULL));
    return;

unauthorized:
    cl_debug(LOG_MOD, "authentication failed");
    api_respond_unauthorized(ctx, resp);
}

/* Validate X-Subject-Token for GET/HEAD/DELETE: the caller may handle its own tokens, an
 * admin any token. Answers itself on failure. */
static bool subject_token(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp,
                          const cl_auth *who, cl_store *st, cl_auth *out, cl_user *out_user)
{
    const char *subject = cl_http_req_header(req, "X-Subject-Token");

    if (!api_auth_token(ctx, subject, out) || cl_store_user_get(st, out->user_id, out_user) < 0 ||
        !out_user->enabled) {
        ks_error(resp, 404, "Could not find token: %.24s.", subject ? subject : "");
        return false;
    }
    if (!cl_auth_is_admin(who) && !str_eq(who->user_id, out->user_id)) {
        ks_forbidden(resp, "identity:validate_token");
        return false;
    }
    return true;
}

/* GET (and HEAD) /v3/auth/tokens: validate X-Subject-Token (keystonemiddleware). */
static void h_token_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    cl_store *st;
    cl_auth who, sub;
    cl_user u;
    cl_project p;

    if (!begin(ctx, req, resp, &who, &st) || !subject_token(ctx, req, resp, &who, st, &sub, &u))
        return;
    memset(&p, 0, sizeof(p));
    if (sub.project_id[0] && cl_store_project_get(st, sub.project_id, &p) < 0) {
        ks_error(resp, 404, "Could not find token: the project is gone.");
        return;
    }
    cl_http_resp_header(resp, "X-Subject-Token", cl_http_req_header(req, "X-Subject-Token"));
    cl_http_resp_json(resp, 200,
                      token_body(ctx, st, &sub, u.name, p.name, p.domain_id,
                                 !sub.project_id[0] && sub.roles, NULL, "password",
                                 cl_http_req_query(req, "nocatalog") == NULL));
}

/* DELETE /v3/auth/tokens: revoke X-Subject-Token until its expiry. */
static void h_token_revoke(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    cl_store *st;
    cl_auth who, sub;
    cl_user u;
    int rc;

    if (!begin(ctx, req, resp, &who, &st) || !subject_token(ctx, req, resp, &who, st, &sub, &u))
        return;
    if (sub.expires_ms == INT64_MAX) {
        ks_error(resp, 403, "The configured admin token cannot be revoked; change [auth] "
                            "admin_token instead.");
        return;
    }
    rc = cl_store_token_revoke(st, sub.audit_id, sub.expires_ms, cl_now_ms());
    if (rc < 0) {
        ks_store_error(resp, rc, "token", "");
        return;
    }
    revoked_add(ctx->ident, sub.audit_id);
    cl_http_resp_json(resp, 204, NULL);
}

/* GET /v3/auth/catalog */
static void h_catalog(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    cl_store *st;
    cl_auth who;
    json_object *body;

    if (!begin(ctx, req, resp, &who, &st))
        return;
    body = json_object_new_object();
    json_object_object_add(body, "catalog", catalog(ctx));
    json_object_object_add(body, "links", links_coll(ctx, "auth/catalog"));
    cl_http_resp_json(resp, 200, body);
}

/* Projects the user has a role on (GET /v3/auth/projects, /v3/users/{id}/projects). */
static void respond_user_projects(api_ctx *ctx, cl_http_resp *resp, cl_store *st,
                                  const char *user_id, const char *self)
{
    _cleanup_free_ cl_role_assignment *as = NULL;
    size_t n = 0;
    json_object *body, *list;
    int rc = cl_store_assignment_list(st, user_id, NULL, NULL, &as, &n);

    if (rc < 0) {
        ks_store_error(resp, rc, "user", user_id);
        return;
    }
    list = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        cl_project p;
        bool dup = false;

        for (size_t j = 0; j < i && !dup; j++)
            dup = strcmp(as[j].project_id, as[i].project_id) == 0;
        if (!dup && cl_store_project_get(st, as[i].project_id, &p) == 0)
            json_object_array_add(list, project_json(ctx, &p));
    }
    body = json_object_new_object();
    json_object_object_add(body, "projects", list);
    json_object_object_add(body, "links", links_coll(ctx, self));
    cl_http_resp_json(resp, 200, body);
}

static void h_auth_projects(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    cl_store *st;
    cl_auth who;

    if (begin(ctx, req, resp, &who, &st))
        respond_user_projects(ctx, resp, st, who.user_id, "auth/projects");
}

/* GET /v3/auth/domains: the user's domain when it holds any role. */
static void h_auth_domains(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    cl_store *st;
    cl_auth who;
    cl_domain d;
    json_object *body, *list;

    if (!begin(ctx, req, resp, &who, &st))
        return;
    list = json_object_new_array();
    if (cl_auth_is_admin(&who) && cl_store_domain_get(st, who.domain_id, &d) == 0)
        json_object_array_add(list, domain_json(ctx, &d));
    body = json_object_new_object();
    json_object_object_add(body, "domains", list);
    json_object_object_add(body, "links", links_coll(ctx, "auth/domains"));
    cl_http_resp_json(resp, 200, body);
}

/* ---- domains ---- */

/* {"<key>": obj} with status. */
static void respond_one(cl_http_resp *resp, int status, const char *key, json_object *obj)
{
    json_object *body = json_object_new_object();

    json_object_object_add(body, key, obj);
    cl_http_resp_json(resp, status, body);
}

/* {"<coll>": list, "links": ...} with 200. */
static void respond_list(api_ctx *ctx, cl_http_resp *resp, const char *coll, json_object *list)
{
    json_object *body = json_object_new_object();

    json_object_object_add(body, coll, list);
    json_object_object_add(body, "links", links_coll(ctx, coll));
    cl_http_resp_json(resp, 200, body);
}

static void h_domains_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    _cleanup_free_ cl_domain *ds = NULL;
    size_t n = 0;
    cl_store *st;
    cl_auth who;
    json_object *list;
    int rc;

    if (!begin(ctx, req, resp, &who, &st) || !require_admin(&who, resp, "identity:list_domains"))
        return;
    rc = cl_store_domain_list(st, cl_http_req_query(req, "name"), &ds, &n);
    if (rc < 0) {
        ks_store_error(resp, rc, "domain", "");
        return;
    }
    list = json_object_new_array();
    for (size_t i = 0; i < n; i++)
        json_object_array_add(list, domain_json(ctx, &ds[i]));
    respond_list(ctx, resp, "domains", list);
}

static void h_domain_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *id = cl_http_req_param(req, "id");
    cl_store *st;
    cl_auth who;
    cl_domain d;
    int rc;

    if (!begin(ctx, req, resp, &who, &st))
        return;
    if (!cl_auth_is_admin(&who) && !str_eq(who.domain_id, id)) {
        ks_forbidden(resp, "identity:get_domain");
        return;
    }
    rc = cl_store_domain_get(st, id, &d);
    if (rc < 0) {
        ks_store_error(resp, rc, "domain", id);
        return;
    }
    respond_one(resp, 200, "domain", domain_json(ctx, &d));
}

/* ---- projects and users ----
 *
 * Projects and users are created, read, updated and deleted the same way, with the same
 * policy and the same error texts: one set of handlers serves both routes, and a ks_kind
 * row (chosen by the request path) says what differs: the key in bodies, policy names and
 * errors, the longest name, whose own object a non-admin may read, which bootstrap
 * object cannot be deleted. The store calls and the JSON differ by type only (obj_*). */

/* One project or user. */
typedef union ks_obj {
    cl_project project;
    cl_user user;
} ks_obj;

/* The fields both kinds have, pointing into one ks_obj (same sizes in both structs:
 * CL_ID_MAX, CL_NAME_MAX and CL_DESC_MAX). */
typedef struct ks_fields {
    char *id, *name, *domain_id, *description;
    bool *enabled;
} ks_fields;

typedef struct ks_kind {
    const char *key; /* "project": JSON member, policy and error texts */
    size_t name_max; /* longest name accepted */
    size_t self_off; /* offsetof(cl_auth, ...): the caller's own one, readable by non-admins */
    size_t boot_off; /* offsetof(api_cfg, ...): the bootstrap one, which cannot be deleted */
    bool user;       /* the member of ks_obj: user, else project */
} ks_kind;

static const ks_kind ks_kinds[] = {
    {"project", 64, offsetof(cl_auth, project_id), offsetof(api_cfg, admin_project_id), false},
    {"user", 255, offsetof(cl_auth, user_id), offsetof(api_cfg, admin_user_id), true},
};

/* The kind a request routed to /v3/projects... or /v3/users... is about. The router
 * matched those two literal segments (decoded, after any leading slashes), so the
 * decoded path starts with them. */
static const ks_kind *kind_of(const cl_http_req *req)
{
    const char *p = req->path;

    while (*p == '/')
        p++;
    return &ks_kinds[strncmp(p, "v3/users", 8) == 0 ? 1 : 0];
}

static ks_fields obj_fields(const ks_kind *k, ks_obj *o)
{
    if (k->user)
        return (ks_fields){o->user.id, o->user.name, o->user.domain_id, o->user.description,
                           &o->user.enabled};
    return (ks_fields){o->project.id, o->project.name, o->project.domain_id,
                       o->project.description, &o->project.enabled};
}

static int obj_get(const ks_kind *k, cl_store *st, const char *id, ks_obj *o)
{
    return k->user ? cl_store_user_get(st, id, &o->user)
                   : cl_store_project_get(st, id, &o->project);
}

/* Create or update. */
static int obj_put(const ks_kind *k, cl_store *st, const ks_obj *o, bool create)
{
    if (k->user)
        return create ? cl_store_user_create(st, &o->user) : cl_store_user_update(st, &o->user);
    return create ? cl_store_project_create(st, &o->project)
                  : cl_store_project_update(st, &o->project);
}

static json_object *obj_json(const ks_kind *k, const api_ctx *ctx, const ks_obj *o)
{
    return k->user ? user_json(ctx, &o->user) : project_json(ctx, &o->project);
}

/* Keystone's policy name of verb on the kind, e.g. identity:create_project. */
static const char *ks_policy(const ks_kind *k, const char *verb, char *buf, size_t len)
{
    snprintf(buf, len, "identity:%s_%s", verb, k->key);
    return buf;
}

/* The caller's id field at off (a char array in cl_auth) and the config string at off (a
 * char * in api_cfg). */
static const char *auth_field(const cl_auth *who, size_t off) { return (const char *)who + off; }

static const char *cfg_field(const api_cfg *cfg, size_t off)
{
    return *(char *const *)((const char *)cfg + off);
}

static void h_projects_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    _cleanup_free_ cl_project *ps = NULL;
    size_t n = 0;
    cl_store *st;
    cl_auth who;
    json_object *list;
    int rc;

    if (!begin(ctx, req, resp, &who, &st) ||
        !require_admin(&who, resp, "identity:list_projects"))
        return;
    rc = cl_store_project_list(st, cl_http_req_query(req, "domain_id"),
                               cl_http_req_query(req, "name"), &ps, &n);
    if (rc < 0) {
        ks_store_error(resp, rc, "project", "");
        return;
    }
    list = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        const char *en = cl_http_req_query(req, "enabled");

        if (en && (strcasecmp(en, "false") == 0 || strcmp(en, "0") == 0) == ps[i].enabled)
            continue;
        json_object_array_add(list, project_json(ctx, &ps[i]));
    }
    respond_list(ctx, resp, "projects", list);
}

static void h_users_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    _cleanup_free_ cl_user *us = NULL;
    size_t n = 0;
    cl_store *st;
    cl_auth who;
    json_object *list;
    int rc;

    if (!begin(ctx, req, resp, &who, &st) || !require_admin(&who, resp, "identity:list_users"))
        return;
    rc = cl_store_user_list(st, cl_http_req_query(req, "domain_id"),
                            cl_http_req_query(req, "name"), &us, &n);
    if (rc < 0) {
        ks_store_error(resp, rc, "user", "");
        return;
    }
    list = json_object_new_array();
    for (size_t i = 0; i < n; i++)
        json_object_array_add(list, user_json(ctx, &us[i]));
    respond_list(ctx, resp, "users", list);
}

/* Fields of a user body beyond the common ones: password, default_project_id, email; on
 * create, the default project must exist. */
static bool read_user_extra(api_ctx *ctx, cl_store *st, cl_http_resp *resp, json_object *o,
                            cl_user *u, bool create)
{
    cl_error err = {0};
    const char *s = NULL;
    cl_project p;

    if (json_object_object_get_ex(o, "password", NULL) &&
        !json_object_is_type(cl_json_path(o, "password"), json_type_null)) {
        if (cl_json_get_str_len(o, "password", false, 1, CL_PASSWORD_MAX, &s, &err) < 0) {
            ks_error(resp, 400, "Invalid input for field 'password': %s", err.message);
            return false;
        }
        if (cl_password_hash(s, ctx->cfg->password_iterations, u->password_hash) < 0) {
            ks_error(resp, 500, "Cannot hash the password.");
            return false;
        }
    }
    s = NULL;
    if (cl_json_get_str_len(o, "default_project_id", false, 0, CL_ID_MAX - 1, &s, &err) < 0) {
        ks_error(resp, 400, "Invalid input for field 'default_project_id': %s", err.message);
        return false;
    }
    if (s)
        cl_strlcpy(u->default_project_id, s, sizeof(u->default_project_id));
    s = NULL;
    if (cl_json_get_str_len(o, "email", false, 0, CL_NAME_MAX - 1, &s, &err) < 0) {
        ks_error(resp, 400, "Invalid input for field 'email': %s", err.message);
        return false;
    }
    if (s)
        cl_strlcpy(u->email, s, sizeof(u->email));
    if (create && u->default_project_id[0] &&
        cl_store_project_get(st, u->default_project_id, &p) < 0) {
        ks_error(resp, 400, "Could not find project: %.64s.", u->default_project_id);
        return false;
    }
    return true;
}

/* Read name/description/enabled of a project or user body into f. Returns false after
 * answering 400. */
static bool read_common(cl_http_resp *resp, json_object *o, bool create, size_t name_max,
                        const ks_fields *f)
{
    cl_error err = {0};
    const char *s = NULL;

    if (cl_json_get_str_len(o, "name", create, 1, name_max, &s, &err) < 0) {
        ks_error(resp, 400, "Invalid input for field 'name': %s", err.message);
        return false;
    }
    if (s)
        cl_strlcpy(f->name, s, CL_NAME_MAX);
    s = NULL;
    if (json_object_object_get_ex(o, "description", NULL) &&
        !json_object_is_type(cl_json_path(o, "description"), json_type_null)) {
        if (cl_json_get_str_len(o, "description", false, 0, CL_DESC_MAX - 1, &s, &err) < 0) {
            ks_error(resp, 400, "Invalid input for field 'description': %s", err.message);
            return false;
        }
        cl_strlcpy(f->description, s ? s : "", CL_DESC_MAX);
    }
    if (cl_json_get_bool(o, "enabled", false, f->enabled, &err) < 0) {
        ks_error(resp, 400, "Invalid input for field 'enabled': %s", err.message);
        return false;
    }
    return true;
}

static void h_kind_create(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const ks_kind *k = kind_of(req);
    _cleanup_json_ json_object *root = NULL;
    json_object *o;
    cl_store *st;
    cl_auth who;
    ks_obj obj;
    ks_fields f;
    char policy[64];
    const char *dom;
    int rc;

    if (!begin(ctx, req, resp, &who, &st) ||
        !require_admin(&who, resp, ks_policy(k, "create", policy, sizeof(policy))) ||
        !body_json(req, resp, &root))
        return;
    o = jobj(root, k->key);
    if (!o) {
        ks_error(resp, 400, "Invalid input for field '%s': a %s object is required.", k->key,
                 k->key);
        return;
    }
    memset(&obj, 0, sizeof(obj));
    f = obj_fields(k, &obj);
    *f.enabled = true;
    if (!read_common(resp, o, true, k->name_max, &f) ||
        (k->user && !read_user_extra(ctx, st, resp, o, &obj.user, true)))
        return;
    dom = jstr(o, "domain_id");
    cl_strlcpy(f.domain_id, dom ? dom : who.domain_id[0] ? who.domain_id : CL_DEFAULT_DOMAIN_ID,
               CL_ID_MAX);
    cl_identity_new_id(f.id);
    rc = obj_put(k, st, &obj, true);
    if (rc == -EEXIST) {
        ks_error(resp, 409, "Conflict occurred attempting to store %s - Duplicate entry "
                            "found with name %.64s at domain ID %.64s.", k->key, f.name,
                 f.domain_id);
        return;
    }
    if (rc == -ENOENT) {
        ks_error(resp, 400, "Could not find domain: %.64s.", f.domain_id);
        return;
    }
    if (rc < 0) {
        ks_store_error(resp, rc, k->key, f.id);
        return;
    }
    respond_one(resp, 201, k->key, obj_json(k, ctx, &obj));
}

static void h_kind_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const ks_kind *k = kind_of(req);
    const char *id = cl_http_req_param(req, "id");
    cl_store *st;
    cl_auth who;
    ks_obj obj;
    char policy[64];
    int rc;

    if (!begin(ctx, req, resp, &who, &st))
        return;
    if (!cl_auth_is_admin(&who) && !str_eq(auth_field(&who, k->self_off), id)) {
        ks_forbidden(resp, ks_policy(k, "get", policy, sizeof(policy)));
        return;
    }
    rc = obj_get(k, st, id, &obj);
    if (rc < 0) {
        ks_store_error(resp, rc, k->key, id);
        return;
    }
    respond_one(resp, 200, k->key, obj_json(k, ctx, &obj));
}

static void h_kind_update(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const ks_kind *k = kind_of(req);
    const char *id = cl_http_req_param(req, "id");
    _cleanup_json_ json_object *root = NULL;
    json_object *o;
    cl_store *st;
    cl_auth who;
    ks_obj obj;
    ks_fields f;
    char policy[64];
    int rc;

    if (!begin(ctx, req, resp, &who, &st) ||
        !require_admin(&who, resp, ks_policy(k, "update", policy, sizeof(policy))) ||
        !body_json(req, resp, &root))
        return;
    rc = obj_get(k, st, id, &obj);
    if (rc < 0) {
        ks_store_error(resp, rc, k->key, id);
        return;
    }
    o = jobj(root, k->key);
    if (!o) {
        ks_error(resp, 400, "Invalid input for field '%s'.", k->key);
        return;
    }
    f = obj_fields(k, &obj);
    if (!read_common(resp, o, false, k->name_max, &f) ||
        (k->user && !read_user_extra(ctx, st, resp, o, &obj.user, false)))
        return;
    rc = obj_put(k, st, &obj, false);
    if (rc < 0) {
        ks_store_error(resp, rc, k->key, id);
        return;
    }
    respond_one(resp, 200, k->key, obj_json(k, ctx, &obj));
}

static void h_kind_delete(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const ks_kind *k = kind_of(req);
    const char *id = cl_http_req_param(req, "id");
    cl_store *st;
    cl_auth who;
    char policy[64];
    int rc;

    if (!begin(ctx, req, resp, &who, &st) ||
        !require_admin(&who, resp, ks_policy(k, "delete", policy, sizeof(policy))))
        return;
    if (str_eq(id, cfg_field(ctx->cfg, k->boot_off))) {
        ks_error(resp, 403, "The bootstrap admin %s ([auth] admin_%s_id) cannot be deleted.",
                 k->key, k->key);
        return;
    }
    rc = k->user ? cl_store_user_delete(st, id) : cl_store_project_delete(st, id);
    if (rc < 0) {
        ks_store_error(resp, rc, k->key, id);
        return;
    }
    cl_http_resp_json(resp, 204, NULL);
}

/* POST /v3/users/{id}/password {"user": {"original_password", "password"}}: a user
 * changes its own password (openstack user password set). */
static void h_user_password(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *id = cl_http_req_param(req, "id");
    _cleanup_json_ json_object *root = NULL;
    const char *orig = NULL, *pw = NULL;
    cl_error err = {0};
    cl_store *st;
    cl_auth who;
    cl_user u;
    int rc;

    if (!begin(ctx, req, resp, &who, &st) || !body_json(req, resp, &root))
        return;
    if (!str_eq(who.user_id, id)) {
        ks_forbidden(resp, "identity:change_password");
        return;
    }
    if (cl_json_get_str_len(root, "user.original_password", true, 1, CL_PASSWORD_MAX, &orig,
                            &err) < 0 ||
        cl_json_get_str_len(root, "user.password", true, 1, CL_PASSWORD_MAX, &pw, &err) < 0) {
        ks_error(resp, 400, "%s", err.message);
        return;
    }
    rc = cl_store_user_get(st, id, &u);
    if (rc < 0) {
        ks_store_error(resp, rc, "user", id);
        return;
    }
    if (!cl_password_verify(orig, u.password_hash)) {
        api_respond_unauthorized(ctx, resp);
        return;
    }
    if (cl_password_hash(pw, ctx->cfg->password_iterations, u.password_hash) < 0) {
        ks_error(resp, 500, "Cannot hash the password.");
        return;
    }
    rc = cl_store_user_update(st, &u);
    if (rc < 0) {
        ks_store_error(resp, rc, "user", id);
        return;
    }
    cl_http_resp_json(resp, 204, NULL);
}

static void h_user_projects(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *id = cl_http_req_param(req, "id");
    cl_store *st;
    cl_auth who;
    cl_user u;

    if (!begin(ctx, req, resp, &who, &st))
        return;
    if (!cl_auth_is_admin(&who) && !str_eq(who.user_id, id)) {
        ks_forbidden(resp, "identity:list_user_projects");
        return;
    }
    if (cl_store_user_get(st, id, &u) < 0) {
        ks_not_found(resp, "user", id);
        return;
    }
    respond_user_projects(ctx, resp, st, id, "users/projects");
}

/* ---- roles ---- */

static void h_roles_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    _cleanup_free_ cl_role_rec *rs = NULL;
    size_t n = 0;
    cl_store *st;
    cl_auth who;
    json_object *list;
    int rc;

    if (!begin(ctx, req, resp, &who, &st) || !require_admin(&who, resp, "identity:list_roles"))
        return;
    rc = cl_store_role_list(st, cl_http_req_query(req, "name"), &rs, &n);
    if (rc < 0) {
        ks_store_error(resp, rc, "role", "");
        return;
    }
    list = json_object_new_array();
    for (size_t i = 0; i < n; i++)
        json_object_array_add(list, role_json(ctx, &rs[i], true));
    respond_list(ctx, resp, "roles", list);
}

static void h_role_create(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    _cleanup_json_ json_object *root = NULL;
    cl_store *st;
    cl_auth who;
    cl_role_rec r;
    cl_error err = {0};
    const char *name = NULL;
    int rc;

    if (!begin(ctx, req, resp, &who, &st) ||
        !require_admin(&who, resp, "identity:create_role") || !body_json(req, resp, &root))
        return;
    if (cl_json_get_str_len(root, "role.name", true, 1, 255, &name, &err) < 0) {
        ks_error(resp, 400, "Invalid input for field 'name': %s", err.message);
        return;
    }
    memset(&r, 0, sizeof(r));
    cl_identity_new_id(r.id);
    cl_strlcpy(r.name, name, sizeof(r.name));
    rc = cl_store_role_create(st, &r);
    if (rc == -EEXIST) {
        ks_error(resp, 409, "Conflict occurred attempting to store role - Duplicate entry "
                            "found with name %.64s.", r.name);
        return;
    }
    if (rc < 0) {
        ks_store_error(resp, rc, "role", r.id);
        return;
    }
    respond_one(resp, 201, "role", role_json(ctx, &r, true));
}

static void h_role_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *id = cl_http_req_param(req, "id");
    cl_store *st;
    cl_auth who;
    cl_role_rec r;
    int rc;

    if (!begin(ctx, req, resp, &who, &st) || !require_admin(&who, resp, "identity:get_role"))
        return;
    rc = cl_store_role_get(st, id, &r);
    if (rc < 0) {
        ks_store_error(resp, rc, "role", id);
        return;
    }
    respond_one(resp, 200, "role", role_json(ctx, &r, true));
}

static void h_role_delete(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *id = cl_http_req_param(req, "id");
    cl_store *st;
    cl_auth who;
    int rc;

    if (!begin(ctx, req, resp, &who, &st) || !require_admin(&who, resp, "identity:delete_role"))
        return;
    rc = cl_store_role_delete(st, id);
    if (rc == -EBUSY) {
        ks_error(resp, 403, "The default roles admin, member and reader cannot be deleted.");
        return;
    }
    if (rc < 0) {
        ks_store_error(resp, rc, "role", id);
        return;
    }
    cl_http_resp_json(resp, 204, NULL);
}

/* ---- role assignments ---- */

/* The {project_id, user_id, role_id} captures, existence checked (404 naming the
 * missing one). */
static bool grant_params(const cl_http_req *req, cl_http_resp *resp, cl_store *st,
                         const char **pid, const char **uid, const char **rid)
{
    cl_project p;
    cl_user u;
    cl_role_rec r;

    *pid = cl_http_req_param(req, "pid");
    *uid = cl_http_req_param(req, "uid");
    *rid = cl_http_req_param(req, "rid");
    if (cl_store_project_get(st, *pid, &p) < 0) {
        ks_not_found(resp, "project", *pid);
        return false;
    }
    if (cl_store_user_get(st, *uid, &u) < 0) {
        ks_not_found(resp, "user", *uid);
        return false;
    }
    if (cl_store_role_get(st, *rid, &r) < 0) {
        ks_not_found(resp, "role", *rid);
        return false;
    }
    return true;
}

/* PUT /v3/projects/{pid}/users/{uid}/roles/{rid} */
static void h_grant_put(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *pid, *uid, *rid;
    cl_store *st;
    cl_auth who;
    int rc;

    if (!begin(ctx, req, resp, &who, &st) ||
        !require_admin(&who, resp, "identity:create_grant") ||
        !grant_params(req, resp, st, &pid, &uid, &rid))
        return;
    rc = cl_store_assignment_add(st, uid, pid, rid);
    if (rc < 0) {
        ks_store_error(resp, rc, "role assignment", rid);
        return;
    }
    cl_http_resp_json(resp, 204, NULL);
}

/* GET/HEAD /v3/projects/{pid}/users/{uid}/roles/{rid}: 204 when granted. */
static void h_grant_check(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *pid, *uid, *rid;
    cl_store *st;
    cl_auth who;

    if (!begin(ctx, req, resp, &who, &st) || !require_admin(&who, resp, "identity:check_grant") ||
        !grant_params(req, resp, st, &pid, &uid, &rid))
        return;
    if (cl_store_assignment_check(st, uid, pid, rid) < 0) {
        ks_error(resp, 404, "Could not find role assignment with role: %.64s, user or group: "
                            "%.64s, project, domain, or system: %.64s.", rid, uid, pid);
        return;
    }
    cl_http_resp_json(resp, 204, NULL);
}

static void h_grant_delete(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *pid, *uid, *rid;
    cl_store *st;
    cl_auth who;
    int rc;

    if (!begin(ctx, req, resp, &who, &st) ||
        !require_admin(&who, resp, "identity:revoke_grant") ||
        !grant_params(req, resp, st, &pid, &uid, &rid))
        return;
    rc = cl_store_assignment_remove(st, uid, pid, rid);
    if (rc < 0) {
        ks_error(resp, 404, "Could not find role assignment with role: %.64s, user or group: "
                            "%.64s, project, domain, or system: %.64s.", rid, uid, pid);
        return;
    }
    cl_http_resp_json(resp, 204, NULL);
}

/* GET /v3/projects/{pid}/users/{uid}/roles */
static void h_grants_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    _cleanup_free_ cl_role_assignment *as = NULL;
    size_t n = 0;
    const char *pid = cl_http_req_param(req, "pid"), *uid = cl_http_req_param(req, "uid");
    cl_store *st;
    cl_auth who;
    json_object *list;
    int rc;

    if (!begin(ctx, req, resp, &who, &st) || !require_admin(&who, resp, "identity:list_grants"))
        return;
    rc = cl_store_assignment_list(st, uid, pid, NULL, &as, &n);
    if (rc < 0) {
        ks_store_error(resp, rc, "role assignment", "");
        return;
    }
    list = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        cl_role_rec r;

        cl_strlcpy(r.id, as[i].role_id, sizeof(r.id));
        cl_strlcpy(r.name, as[i].role_name, sizeof(r.name));
        json_object_array_add(list, role_json(ctx, &r, true));
    }
    respond_list(ctx, resp, "roles", list);
}

static json_object *assignment_json(const api_ctx *ctx, cl_store *st,
                                    const cl_role_assignment *a, bool names)
{
    json_object *o = json_object_new_object();
    json_object *role = json_object_new_object();
    json_object *user = json_object_new_object();
    json_object *scope = json_object_new_object();
    json_object *proj = json_object_new_object();
    json_object *links = json_object_new_object();
    char url[API_URL_MAX + 256], dname[CL_NAME_MAX];

    json_object_object_add(role, "id", json_object_new_string(a->role_id));
    json_object_object_add(user, "id", json_object_new_string(a->user_id));
    json_object_object_add(proj, "id", json_object_new_string(a->project_id));
    if (names) {
        json_object_object_add(role, "name", json_object_new_string(a->role_name));
        json_object_object_add(user, "name", json_object_new_string(a->user_name));
        domain_name(st, a->user_domain_id, dname, sizeof(dname));
        json_object_object_add(user, "domain", domain_ref(a->user_domain_id, dname));
        json_object_object_add(proj, "name", json_object_new_string(a->project_name));
        domain_name(st, a->project_domain_id, dname, sizeof(dname));
        json_object_object_add(proj, "domain", domain_ref(a->project_domain_id, dname));
    }
    json_object_object_add(scope, "project", proj);
    json_object_object_add(o, "role", role);
    json_object_object_add(o, "user", user);
    json_object_object_add(o, "scope", scope);
    snprintf(url, sizeof(url), "%s/v3/projects/%s/users/%s/roles/%s", ctx->identity_url,
             a->project_id, a->user_id, a->role_id);
    json_object_object_add(links, "assignment", json_object_new_string(url));
    json_object_object_add(o, "links", links);
    return o;
}

/* GET /v3/role_assignments?user.id=&scope.project.id=&role.id=&include_names&effective */
static void h_assignments_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    _cleanup_free_ cl_role_assignment *as = NULL;
    size_t n = 0;
    const char *uid = cl_http_req_query(req, "user.id");
    const char *pid = cl_http_req_query(req, "scope.project.id");
    const char *rid = cl_http_req_query(req, "role.id");
    bool names = query_flag(req, "include_names");
    cl_store *st;
    cl_auth who;
    json_object *list;
    int rc;

    if (!begin(ctx, req, resp, &who, &st))
        return;
    /* A user may list its own assignments; everything else is for admins. Groups, domain
     * and system scopes do not exist in nube: filtering by them finds nothing. */
    if (!cl_auth_is_admin(&who) && !str_eq(uid, who.user_id)) {
        ks_forbidden(resp, "identity:list_role_assignments");
        return;
    }
    list = json_object_new_array();
    if (!cl_http_req_query(req, "group.id") && !cl_http_req_query(req, "scope.domain.id") &&
        !cl_http_req_query(req, "scope.system")) {
        rc = cl_store_assignment_list(st, uid, pid, rid, &as, &n);
        if (rc < 0) {
            json_object_put(list);
            ks_store_error(resp, rc, "role assignment", "");
            return;
        }
    }
    for (size_t i = 0; i < n; i++)
        json_object_array_add(list, assignment_json(ctx, st, &as[i], names));
    respond_list(ctx, resp, "role_assignments", list);
}

/* ---- routing ---- */

static const cl_http_route identity_routes[] = {
    {"GET", "/", h_versions},
    {"GET", "/v3", h_v3},
    {"POST", "/v3/auth/tokens", h_token_issue},
    {"GET", "/v3/auth/tokens", h_token_show},
    {"DELETE", "/v3/auth/tokens", h_token_revoke},
    {"GET", "/v3/auth/catalog", h_catalog},
    {"GET", "/v3/auth/projects", h_auth_projects},
    {"GET", "/v3/auth/domains", h_auth_domains},
    {"GET", "/v3/domains", h_domains_list},
    {"GET", "/v3/domains/{id}", h_domain_show},
    {"GET", "/v3/projects", h_projects_list},
    {"POST", "/v3/projects", h_kind_create},
    {"GET", "/v3/projects/{id}", h_kind_show},
    {"PATCH", "/v3/projects/{id}", h_kind_update},
    {"DELETE", "/v3/projects/{id}", h_kind_delete},
    {"GET", "/v3/projects/{pid}/users/{uid}/roles", h_grants_list},
    {"PUT", "/v3/projects/{pid}/users/{uid}/roles/{rid}", h_grant_put},
    {"GET", "/v3/projects/{pid}/users/{uid}/roles/{rid}", h_grant_check},
    {"DELETE", "/v3/projects/{pid}/users/{uid}/roles/{rid}", h_grant_delete},
    {"GET", "/v3/users", h_users_list},
    {"POST", "/v3/users", h_kind_create},
    {"GET", "/v3/users/{id}", h_kind_show},
    {"PATCH", "/v3/users/{id}", h_kind_update},
    {"DELETE", "/v3/users/{id}", h_kind_delete},
    {"GET", "/v3/users/{id}/projects", h_user_projects},
    {"POST", "/v3/users/{id}/password", h_user_password},
    {"GET", "/v3/roles", h_roles_list},
    {"POST", "/v3/roles", h_role_create},
    {"GET", "/v3/roles/{id}", h_role_show},
    {"DELETE", "/v3/roles/{id}", h_role_delete},
    {"GET", "/v3/role_assignments", h_assignments_list},
};

const cl_http_route *api_identity_routes(size_t *out_n)
{
    *out_n = CL_ARRAY_SIZE(identity_routes);
    return identity_routes;
}
