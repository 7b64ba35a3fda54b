/*
 * api.c - the nube-api context: configuration table, the two HTTP listeners (Identity and
 * Compute) with their routing tables, the bus DEALER to the scheduler, and what every
 * Compute handler does first (token check, microversion negotiation, version headers).
 *
 * Threads: libmicrohttpd runs handlers on its worker threads, several at a time. A
 * cl_store (one SQLite connection) must never be shared between threads, so each worker
 * opens its own on first use and keeps it in thread-local storage (a pthread key whose
 * destructor closes it when the worker exits). A registry of those connections lets
 * api_stop() close the ones of threads that outlive the listeners. The bus has its own
 * thread; cl_bus_send() is thread-safe, so handlers send directly.
 *
 * Authentication: api_compute_begin() verifies X-Auth-Token locally (identity.c:
 * sealed, expiring, revocable tokens, or the static [auth] admin_token as a service
 * token) and records the caller for the handler (api_auth_current()).
 */
#include "api.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "actions.h"
#include "migrate_actions.h"
#include "api_int.h"
#include "bus_auth.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "util.h"

#define LOG_MOD "api"

/* ---- configuration ---- */

const cl_cfg_key api_cfg_keys[] = {
    CL_DAEMON_COMMON_KEYS(api_cfg),
    {"database", "connection", CL_CFG_STR, "/var/lib/nube/controller.db", 0, -1,
     offsetof(api_cfg, db_path), "Path of the controller SQLite database (shared with "
     "nube-scheduler)."},
    {"bus", "scheduler_endpoint", CL_CFG_STR, "tcp://127.0.0.1:5570", 0, -1,
     offsetof(api_cfg, scheduler_endpoint), "ZeroMQ endpoint of nube-scheduler's ROUTER."},
    {"bus", "resend_ms", CL_CFG_INT, "2000", 100, 60000, offsetof(api_cfg, resend_ms),
     "Resend an unacknowledged bus message after this many milliseconds."},
    {"bus", "curve_secret_key_file", CL_CFG_STR, "", 0, -1,
     offsetof(api_cfg, curve_secret_key_file),
     "File (mode 0600) with nube-api's CURVE secret key (nube-keys gen); empty = plain TCP. "
     "Its public key must be in the scheduler's allowed_keys_dir as 'nube-api'."},
    {"bus", "curve_server_key_file", CL_CFG_STR, "", 0, -1,
     offsetof(api_cfg, curve_server_key_file),
     "The scheduler's public key file ('<key> <name>'), required with a secret key."},
    {"api", "listen", CL_CFG_STR, "127.0.0.1", 0, -1, offsetof(api_cfg, listen),
     "Address both HTTP listeners bind to."},
    {"api", "compute_port", CL_CFG_INT, "8774", 0, 65535, offsetof(api_cfg, compute_port),
     "Port of the Compute v2.1 API (0 = pick a free port)."},
    {"api", "identity_port", CL_CFG_INT, "5000", 0, 65535,
     offsetof(api_cfg, identity_port), "Port of the Identity v3 API (0 = pick a free port)."},
    {"api", "public_host", CL_CFG_STR, "127.0.0.1", 0, -1, offsetof(api_cfg, public_host),
     "Host name or address clients use: it appears in links and the service catalog."},
    {"api", "workers", CL_CFG_INT, "4", 1, 64, offsetof(api_cfg, workers),
     "HTTP worker threads per listener."},
    {"api", "max_body_bytes", CL_CFG_INT, "1048576", 1024, 67108864,
     offsetof(api_cfg, max_body_bytes),
     "Largest request body accepted; larger ones get 413."},
    {"auth", "admin_token", CL_CFG_STR, NULL, 0, -1, offsetof(api_cfg, admin_token),
     "Required. The token Identity issues to the admin and Compute accepts."},
    {"auth", "admin_user", CL_CFG_STR, "admin", 0, -1, offsetof(api_cfg, admin_user),
     "Name of the admin user (domain Default)."},
    {"auth", "admin_password", CL_CFG_STR, NULL, 0, -1, offsetof(api_cfg, admin_password),
     "Required. Password of the admin user."},
    {"auth", "admin_project_name", CL_CFG_STR, "admin", 0, -1,
     offsetof(api_cfg, admin_project_name), "Name of the admin project (domain Default)."},
    {"auth", "admin_project_id", CL_CFG_STR, "5a0c5e2b9b6f4f3e8d1c2b3a4f5e6d7c", 0, -1,
     offsetof(api_cfg, admin_project_id), "Id of the admin project (owner of its servers)."},
    {"auth", "admin_user_id", CL_CFG_STR, "0f1e2d3c4b5a49687766554433221100", 0, -1,
     offsetof(api_cfg, admin_user_id), "Id of the admin user."},
    {"auth", "region", CL_CFG_STR, "RegionOne", 0, -1, offsetof(api_cfg, region),
     "Region named in the service catalog."},
    {"auth", "token_ttl_s", CL_CFG_INT, "86400", 60, 31536000,
     offsetof(api_cfg, token_ttl_s), "Lifetime of issued tokens (expires_at)."},
    {"auth", "token_key_file", CL_CFG_STR, "", 0, -1, offsetof(api_cfg, token_key_file),
     "File with the 32-byte key that seals tokens (64 hex characters, mode 0600), shared "
     "by every nube HTTP service. Empty = <state_dir>/token.key, created if missing."},
    {"auth", "password_iterations", CL_CFG_INT, "200000", 1000, 10000000,
     offsetof(api_cfg, password_iterations),
     "PBKDF2-HMAC-SHA256 rounds for new password hashes (existing hashes keep theirs)."},
    {"quota", "instances", CL_CFG_INT, "10", -1, 1000000, offsetof(api_cfg, quota_instances),
     "Default quota of servers per project (-1 = unlimited)."},
    {"quota", "max_concurrent_builds", CL_CFG_INT, "0", 0, 1000000,
     offsetof(api_cfg, max_concurrent_builds),
     "Servers one project may have in BUILD at once; more creates get 403 overLimit "
     "(0 = no cap). Bounds what one tenant can push onto the scheduler and agents."},
    {"quota", "cores", CL_CFG_INT, "20", -1, 100000000, offsetof(api_cfg, quota_cores),
     "Default quota of vCPUs per project (-1 = unlimited)."},
    {"quota", "ram", CL_CFG_INT, "51200", -1, 1000000000000, offsetof(api_cfg, quota_ram),
     "Default quota of RAM (MB) per project (-1 = unlimited)."},
    {"quota", "key_pairs", CL_CFG_INT, "100", -1, 1000000, offsetof(api_cfg, quota_key_pairs),
     "Default quota of key pairs per user (-1 = unlimited)."},
    {"quota", "server_groups", CL_CFG_INT, "10", -1, 1000000,
     offsetof(api_cfg, quota_server_groups),
     "Default quota of server groups per project (-1 = unlimited)."},
    {"quota", "server_group_members", CL_CFG_INT, "10", -1, 1000000,
     offsetof(api_cfg, quota_server_group_members),
     "Default quota of servers per server group (-1 = unlimited)."},
};
const size_t api_cfg_nkeys = CL_ARRAY_SIZE(api_cfg_keys);

/* ---- per-thread database connections ---- */

struct api_tls {
    api_ctx *ctx;
    cl_store *st;
    api_tls *prev, *next;
};

static void tls_unlink(api_ctx *ctx, api_tls *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        ctx->stores = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
}

/* Runs when a worker thread exits (the listeners stop their threads). */
static void tls_destroy(void *p)
{
    api_tls *t = p;

    pthread_mutex_lock(&t->ctx->stores_lock);
    tls_unlink(t->ctx, t);
    pthread_mutex_unlock(&t->ctx->stores_lock);
    cl_store_free(t->st);
    free(t);
}

cl_store *api_store(api_ctx *ctx, cl_http_resp *resp)
{
    api_tls *t = pthread_getspecific(ctx->store_key);
    cl_error err = {0};
    cl_store *st = NULL;

    if (t)
        return t->st;
    if (cl_store_open(ctx->cfg->db_path, &st, &err) < 0) {
        cl_debug(LOG_MOD, "cannot open the controller DB: %s", err.message);
        cl_http_resp_errorf(resp, CL_E_INTERNAL,
                            "The controller database is unavailable; try again later.");
        return NULL;
    }
    t = calloc(1, sizeof(*t));
    if (!t) {
        cl_store_free(st);
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Out of memory.");
        return NULL;
    }
    t->ctx = ctx;
    t->st = st;
    pthread_mutex_lock(&ctx->stores_lock);
    t->next = ctx->stores;
    if (ctx->stores)
        ctx->stores->prev = t;
    ctx->stores = t;
    pthread_mutex_unlock(&ctx->stores_lock);
    if (pthread_setspecific(ctx->store_key, t) != 0) {
        pthread_mutex_lock(&ctx->stores_lock);
        tls_unlink(ctx, t);
        pthread_mutex_unlock(&ctx->stores_lock);
        cl_store_free(st);
        free(t);
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Out of memory.");
        return NULL;
    }
    return st;
}

/* ---- authentication ---- */

/* Tokens themselves are checked in identity.c (api_auth_token): sealed tokens, the
 * revocation list and the static admin token live there. */
bool api_token_ok(const api_ctx *ctx, const char *token)
{
    cl_auth a;

    return api_auth_token(ctx, token, &a);
}

void api_respond_keystone_error(cl_http_resp *resp, int code, const char *title,
                                const char *message)
{
    json_object *body = json_object_new_object();
    json_object *e = json_object_new_object();

    json_object_object_add(e, "code", json_object_new_int(code));
    json_object_object_add(e, "title", json_object_new_string(title));
    json_object_object_add(e, "message", json_object_new_string(message));
    json_object_object_add(body, "error", e);
    cl_http_resp_json(resp, code, body);
}

void api_respond_unauthorized(api_ctx *ctx, cl_http_resp *resp)
{
    char hdr[API_URL_MAX + 32];

    atomic_fetch_add(&ctx->auth_failures, 1);
    /* keystonemiddleware names the Identity endpoint so clients know where to log in. */
    snprintf(hdr, sizeof(hdr), "Keystone uri=\"%s\"", ctx->identity_url);
    cl_http_resp_header(resp, "WWW-Authenticate", hdr);
    api_respond_keystone_error(resp, 401, "Unauthorized",
                               "The request you have made requires authentication.");
}

/* ---- microversions ---- */

/* "2.61" -> 61, "latest" -> the maximum. -EINVAL for a malformed string, -ERANGE for a
 * well-formed version outside the window. */
static int parse_version(const char *s, int *out_minor)
{
    int64_t major, minor;
    char buf[32];
    char *dot;

    if (strcasecmp(s, "latest") == 0) {
        *out_minor = API_MV_MAX;
        return 0;
    }
    if (cl_strlcpy(buf, s, sizeof(buf)) >= sizeof(buf))
        return -EINVAL;
    dot = strchr(buf, '.');
    if (!dot)
        return -EINVAL;
    *dot = '\0';
    if (cl_parse_int64(buf, &major) < 0 || cl_parse_int64(dot + 1, &minor) < 0 ||
        major < 0 || minor < 0 || buf[0] == '+' || buf[0] == '-' || dot[1] == '+' ||
        dot[1] == '-')
        return -EINVAL;
    if (major != 2 || minor < API_MV_MIN || minor > API_MV_MAX)
        return -ERANGE;
    *out_minor = (int)minor;
    return 0;
}

/* Find the "compute X.Y" entry of an OpenStack-API-Version header (it may list several
 * services separated by commas). Copies the version into out; false when absent. */
static bool compute_entry(const char *hdr, char *out, size_t outlen)
{
    const char *p = hdr;

    while (p && *p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char item[64];
        char *s, *v;
        size_t n;

        if (len < sizeof(item)) {
            memcpy(item, p, len);
            item[len] = '\0';
            s = item;
            while (*s == ' ' || *s == '\t')
                s++;
            if (strncasecmp(s, "compute", 7) == 0 && (s[7] == ' ' || s[7] == '\t')) {
                v = s + 8;
                while (*v == ' ' || *v == '\t')
                    v++;
                n = strlen(v);
                while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
                    v[--n] = '\0';
                cl_strlcpy(out, v, outlen);
                return true;
            }
        }
        p = end ? end + 1 : NULL;
    }
    return false;
}

/* Negotiate as Nova does: the new header wins over the legacy one; no header = 2.1.
 * Returns false after answering 400 (malformed) or 406 (outside the window). */
static bool negotiate(const cl_http_req *req, cl_http_resp *resp, int *out_minor)
{
    const char *hdr = cl_http_req_header(req, "OpenStack-API-Version");
    const char *legacy = cl_http_req_header(req, "X-OpenStack-Nova-API-Version");
    char ver[64];
    int rc;

    if (hdr && compute_entry(hdr, ver, sizeof(ver))) {
        /* taken from the new header */
    } else if (legacy) {
        cl_strlcpy(ver, legacy, sizeof(ver));
    } else {
        *out_minor = API_MV_MIN;
        return true;
    }
    rc = parse_version(ver, out_minor);
    if (rc == -EINVAL) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "API Version String %s is of invalid format. Must be of format "
                            "MajorNum.MinorNum.", ver);
        return false;
    }
    if (rc < 0) {
        /* Nova answers HTTPNotAcceptable through its fault wrapper, whose name for codes
         * it has no entry for is "computeFault". */
        char msg[256];
        json_object *body = json_object_new_object();
        json_object *f = json_object_new_object();

        snprintf(msg, sizeof(msg),
                 "Version %s is not supported by the API. Minimum is 2.%d and maximum is "
                 "2.%d.", ver, API_MV_MIN, API_MV_MAX);
        json_object_object_add(f, "code", json_object_new_int(406));
        json_object_object_add(f, "message", json_object_new_string(msg));
        json_object_object_add(body, "computeFault", f);
        cl_http_resp_json(resp, 406, body);
        return false;
    }
    return true;
}

/* The caller of the request this thread is handling (see api_auth_current). */
static _Thread_local cl_auth tl_auth;
static _Thread_local bool tl_auth_set;

const cl_auth *api_auth_current(void)
{
    return tl_auth_set ? &tl_auth : NULL;
}

bool api_compute_begin(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, bool auth,
                       int *out_mv)
{
    char v[64];
    int mv = API_MV_MIN;

    tl_auth_set = false;

    if (!atomic_load_explicit(&ctx->ready, memory_order_acquire)) {
        cl_http_resp_errorf(resp, CL_E_UNAVAILABLE, "nube-api is starting; try again.");
        return false;
    }
    /* keystonemiddleware sits in front of Nova: the token is checked before anything.
     * Nova needs a project: unscoped and domain-scoped tokens are refused as invalid. */
    if (auth) {
        if (!api_auth_token(ctx, cl_http_req_header(req, "X-Auth-Token"), &tl_auth) ||
            !tl_auth.project_id[0]) {
            api_respond_unauthorized(ctx, resp);
            return false;
        }
        tl_auth_set = true;
    }
    if (!negotiate(req, resp, &mv))
        return false;
    snprintf(v, sizeof(v), "compute 2.%d", mv);
    cl_http_resp_header(resp, "OpenStack-API-Version", v);
    snprintf(v, sizeof(v), "2.%d", mv);
    cl_http_resp_header(resp, "X-OpenStack-Nova-API-Version", v);
    cl_http_resp_header(resp, "Vary", "OpenStack-API-Version, X-OpenStack-Nova-API-Version");
    if (req->request_id)
        cl_http_resp_header(resp, "x-compute-request-id", req->request_id);
    if (out_mv)
        *out_mv = mv;
    return true;
}

/* ---- JSON helpers shared by the handlers ---- */

json_object *api_link(const char *rel, const char *href)
{
    json_object *l = json_object_new_object();

    json_object_object_add(l, "rel", json_object_new_string(rel));
    json_object_object_add(l, "href", json_object_new_string(href));
    return l;
}

json_object *api_links_self_bookmark(const api_ctx *ctx, const char *coll, const char *id)
{
    json_object *links = json_object_new_array();
    _cleanup_free_ char *self = NULL;
    _cleanup_free_ char *bookmark = NULL;

    if (asprintf(&self, "%s/v2.1/%s/%s", ctx->compute_url, coll, id) < 0)
        self = NULL;
    if (asprintf(&bookmark, "%s/%s/%s", ctx->compute_url, coll, id) < 0)
        bookmark = NULL;
    json_object_array_add(links, api_link("self", self ? self : ""));
    json_object_array_add(links, api_link("bookmark", bookmark ? bookmark : ""));
    return links;
}

json_object *api_links_bookmark(const api_ctx *ctx, const char *coll, const char *id)
{
    json_object *links = json_object_new_array();
    _cleanup_free_ char *bookmark = NULL;

    if (asprintf(&bookmark, "%s/%s/%s", ctx->compute_url, coll, id) < 0)
        bookmark = NULL;
    json_object_array_add(links, api_link("bookmark", bookmark ? bookmark : ""));
    return links;
}

bool api_page_params(const cl_http_req *req, cl_http_resp *resp, int64_t *out_limit,
                     const char **out_marker)
{
    const char *limit = cl_http_req_query(req, "limit");
    const char *marker = cl_http_req_query(req, "marker");
    int64_t n;

    *out_limit = 0;
    *out_marker = NULL;
    if (limit) {
        if (cl_parse_int64(limit, &n) < 0) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "limit param must be an integer");
            return false;
        }
        /* Nova's osapi_max_limit is 1000. */
        if (n < 1 || n > 1000) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "limit param must be between 1 and 1000");
            return false;
        }
        *out_limit = n;
    }
    if (marker) {
        if (!*marker || strlen(marker) >= CL_NAME_MAX) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "marker [%.64s] not found", marker);
            return false;
        }
        *out_marker = marker;
    }
    return true;
}

json_object *api_time_json(int64_t ms, bool with_z)
{
    char buf[64];

    if (ms <= 0)
        return NULL; /* json-c: NULL is JSON null */
    cl_time_iso8601(ms, with_z, buf, sizeof(buf));
    return json_object_new_string(buf);
}

/* ---- routing tables ---- */

/* Literal routes come before captures so "/servers/detail" never reads as an id (the
 * handlers also check, in case the matcher takes the first capture). */
static const cl_http_route compute_routes[] = {
    {"GET", "/", api_compute_versions},
    {"GET", "/v2.1", api_compute_v21},
    {"GET", "/v2.1/servers/detail", api_servers_detail},
    {"GET", "/v2.1/servers", api_servers_list},
    {"POST", "/v2.1/servers", api_servers_create},
    {"GET", "/v2.1/servers/{id}", api_servers_show},
    {"DELETE", "/v2.1/servers/{id}", api_servers_delete},
    {"POST", "/v2.1/servers/{id}/action", api_servers_action},
    {"GET", "/v2.1/flavors/detail", api_flavors_detail},
    {"GET", "/v2.1/flavors", api_flavors_list},
    {"GET", "/v2.1/flavors/{id}", api_flavors_show},
    {"GET", "/v2.1/flavors/{id}/os-extra_specs", api_flavors_extra_specs},
    {"GET", "/v2.1/os-hypervisors/detail", api_hypervisors_detail},
    {"GET", "/v2.1/os-hypervisors", api_hypervisors_list},
    {"GET", "/v2.1/os-hypervisors/{id}", api_hypervisors_show},
    {"GET", "/v2.1/os-hypervisors/{id}/uptime", api_hypervisors_uptime},
    {"GET", "/v2.1/os-aggregates", api_aggregates_list},
    {"POST", "/v2.1/os-aggregates", api_aggregates_create},
    {"GET", "/v2.1/os-aggregates/{id}", api_aggregates_show},
    {"PUT", "/v2.1/os-aggregates/{id}", api_aggregates_update},
    {"DELETE", "/v2.1/os-aggregates/{id}", api_aggregates_delete},
    {"POST", "/v2.1/os-aggregates/{id}/action", api_aggregates_action},
    {"GET", "/v2.1/os-server-groups", api_server_groups_list},
    {"POST", "/v2.1/os-server-groups", api_server_groups_create},
    {"GET", "/v2.1/os-server-groups/{id}", api_server_groups_show},
    {"DELETE", "/v2.1/os-server-groups/{id}", api_server_groups_delete},
    /* compute API extras (servers.c, metadata.c, instance_actions.c, flavors.c,
     * keypairs.c, quotas.c, services.c, hypervisors.c, usage.c, migrations_api.c) */
    {"PUT", "/v2.1/servers/{id}", api_servers_update},
    {"GET", "/v2.1/servers/{id}/metadata", api_server_metadata_list},
    {"PUT", "/v2.1/servers/{id}/metadata", api_server_metadata_replace},
    {"POST", "/v2.1/servers/{id}/metadata", api_server_metadata_update},
    {"GET", "/v2.1/servers/{id}/metadata/{key}", api_server_metadata_show},
    {"PUT", "/v2.1/servers/{id}/metadata/{key}", api_server_metadata_put},
    {"DELETE", "/v2.1/servers/{id}/metadata/{key}", api_server_metadata_delete},
    {"GET", "/v2.1/servers/{id}/os-instance-actions", api_instance_actions_list},
    {"GET", "/v2.1/servers/{id}/os-instance-actions/{req}", api_instance_actions_show},
    {"POST", "/v2.1/flavors", api_flavors_create},
    {"DELETE", "/v2.1/flavors/{id}", api_flavors_delete},
    {"POST", "/v2.1/flavors/{id}/action", api_flavors_action},
    {"GET", "/v2.1/flavors/{id}/os-flavor-access", api_flavors_access_list},
    {"POST", "/v2.1/flavors/{id}/os-extra_specs", api_flavors_extra_specs_create},
    {"GET", "/v2.1/flavors/{id}/os-extra_specs/{key}", api_flavors_extra_spec_show},
    {"PUT", "/v2.1/flavors/{id}/os-extra_specs/{key}", api_flavors_extra_spec_put},
    {"DELETE", "/v2.1/flavors/{id}/os-extra_specs/{key}", api_flavors_extra_spec_delete},
    {"GET", "/v2.1/os-keypairs", api_keypairs_list},
    {"POST", "/v2.1/os-keypairs", api_keypairs_create},
    {"GET", "/v2.1/os-keypairs/{id}", api_keypairs_show},
    {"DELETE", "/v2.1/os-keypairs/{id}", api_keypairs_delete},
    {"GET", "/v2.1/os-quota-sets/{id}", api_quota_show},
    {"PUT", "/v2.1/os-quota-sets/{id}", api_quota_update},
    {"DELETE", "/v2.1/os-quota-sets/{id}", api_quota_delete},
    {"GET", "/v2.1/os-quota-sets/{id}/defaults", api_quota_defaults_show},
    {"GET", "/v2.1/os-quota-sets/{id}/detail", api_quota_detail},
    {"GET", "/v2.1/limits", api_limits},
    {"GET", "/v2.1/os-services", api_services_list},
    {"PUT", "/v2.1/os-services/{id}", api_services_update},
    {"GET", "/v2.1/os-availability-zone", api_availability_zones},
    {"GET", "/v2.1/os-availability-zone/detail", api_availability_zones_detail},
    {"GET", "/v2.1/os-hypervisors/statistics", api_hypervisors_statistics},
    {"GET", "/v2.1/os-simple-tenant-usage", api_usage_list},
    {"GET", "/v2.1/os-simple-tenant-usage/{id}", api_usage_show},
    {"GET", "/v2.1/os-migrations", api_migrations_list},
    /* live migration (migrate_actions.c) */
    {"GET", "/v2.1/servers/{id}/migrations", api_server_migrations_list},
    {"GET", "/v2.1/servers/{id}/migrations/{mid}", api_server_migration_show},
    {"DELETE", "/v2.1/servers/{id}/migrations/{mid}", api_server_migration_delete},
    {"POST", "/v2.1/servers/{id}/migrations/{mid}/action", api_server_migration_action},
    {"GET", "/image", api_images_versions},
    {"GET", "/image/v2/images", api_images_list},
    {"GET", "/image/v2/images/{id}", api_images_show},
};


/* ---- metrics and health ---- */

static void compute_metrics(FILE *out, void *ud)
{
    api_ctx *ctx = ud;
    cl_bus_stats bs = {0};

    cl_bus_get_stats(ctx->bus, &bs);
    fprintf(out, "# HELP nube_api_servers_created_total Servers accepted by POST /servers.\n"
                 "# TYPE nube_api_servers_created_total counter\n"
                 "nube_api_servers_created_total %" PRIuFAST64 "\n",
            atomic_load(&ctx->servers_created));
    fprintf(out, "# HELP nube_api_servers_deleted_total Delete requests accepted.\n"
                 "# TYPE nube_api_servers_deleted_total counter\n"
                 "nube_api_servers_deleted_total %" PRIuFAST64 "\n",
            atomic_load(&ctx->servers_deleted));
    fprintf(out, "# HELP nube_api_auth_failures_total Requests refused for a bad token.\n"
                 "# TYPE nube_api_auth_failures_total counter\n"
                 "nube_api_auth_failures_total %" PRIuFAST64 "\n",
            atomic_load(&ctx->auth_failures));
    fprintf(out, "# HELP nube_api_bus_pending Bus messages waiting for the scheduler's ack.\n"
                 "# TYPE nube_api_bus_pending gauge\n"
                 "nube_api_bus_pending %zu\n", cl_bus_pending(ctx->bus));
    fprintf(out, "# HELP nube_api_bus_resent_total Bus messages sent again after a timeout.\n"
                 "# TYPE nube_api_bus_resent_total counter\n"
                 "nube_api_bus_resent_total %" PRIu64 "\n", bs.resent);
}

static void identity_metrics(FILE *out, void *ud)
{
    api_ctx *ctx = ud;

    fprintf(out, "# HELP nube_api_tokens_issued_total Tokens issued by POST /v3/auth/tokens.\n"
                 "# TYPE nube_api_tokens_issued_total counter\n"
                 "nube_api_tokens_issued_total %" PRIuFAST64 "\n",
            atomic_load(&ctx->tokens_issued));
}

/* Both listeners answer /healthz from the moment they are bound, but every handler
 * refuses with 503 "starting" until api_start() flips `ready` (after the second listener
 * is up). Health must not run ahead of that: a supervisor or test that waits for 200
 * would otherwise send its first request into the 503 window. */
static bool started_health(char *reason, size_t len, void *ud)
{
    const api_ctx *ctx = ud;

    if (atomic_load_explicit(&ctx->ready, memory_order_acquire))
        return true;
    snprintf(reason, len, "nube-api is starting");
    return false;
}

/* The API is healthy once started and while the scheduler keeps acknowledging: a pending
 * set that only grows means the scheduler is away and servers will stay in BUILD. */
static bool compute_health(char *reason, size_t len, void *ud)
{
    api_ctx *ctx = ud;
    size_t pending;

    if (!started_health(reason, len, ud))
        return false;
    pending = cl_bus_pending(ctx->bus);
    if (pending > 1000) {
        snprintf(reason, len, "%zu bus messages unacknowledged by the scheduler", pending);
        return false;
    }
    return true;
}

/* The scheduler only sends acks (handled by the bus) today; anything else is logged. */
static void on_bus_msg(cl_bus *bus, const cl_bus_msg *msg, void *ud)
{
    (void)bus;
    (void)ud;
    cl_debug(LOG_MOD, "ignoring bus message %s from %s", msg->type, msg->from);
}

/* ---- start / stop ---- */

static bool empty(const char *s) { return !s || !*s; }

static int check_cfg(const api_cfg *cfg, cl_error *err)
{
    if (empty(cfg->admin_token))
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "[auth] admin_token is empty: set the token Compute should "
                            "accept in nube-api.conf");
    if (empty(cfg->admin_password))
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "[auth] admin_password is empty: set the admin password in "
                            "nube-api.conf");
    if (empty(cfg->db_path))
        return cl_error_set(err, CL_E_BAD_REQUEST, "[database] connection is empty");
    if (empty(cfg->scheduler_endpoint))
        return cl_error_set(err, CL_E_BAD_REQUEST, "[bus] scheduler_endpoint is empty");
    if (empty(cfg->admin_user) || empty(cfg->admin_project_name) ||
        empty(cfg->admin_project_id) || empty(cfg->admin_user_id))
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "[auth] admin_user, admin_user_id, admin_project_name and "
                            "admin_project_id must not be empty");
    if (strlen(cfg->admin_project_id) >= CL_ID_MAX || strlen(cfg->admin_user_id) >= CL_ID_MAX)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "[auth] admin_project_id and admin_user_id must be at most %d "
                            "characters", CL_ID_MAX - 1);
    if (empty(cfg->public_host) || strlen(cfg->public_host) > 200)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "[api] public_host must be a host name of 1..200 characters");
    return 0;
}

/* The first connection migrates and seeds the database, so workers never race to do it;
 * it also creates the API's own table. */
static int prepare_db(const api_cfg *cfg, cl_error *err)
{
    _cleanup_store_ cl_store *st = NULL;
    int rc = cl_store_open(cfg->db_path, &st, err);

    if (rc < 0)
        return rc;
    return api_servers_prepare_db(st, err);
}

static int start_listener(api_ctx *ctx, const char *service, int64_t port,
                          const cl_http_route *routes, size_t nroutes,
                          void (*metrics_fn)(FILE *, void *),
                          bool (*health_fn)(char *, size_t, void *), cl_http_server **out,
                          cl_error *err)
{
    cl_http_opts o = {
        .service = service,
        .bind_addr = ctx->cfg->listen,
        .port = (uint16_t)port,
        .max_body = (size_t)ctx->cfg->max_body_bytes,
        .threads = (unsigned)ctx->cfg->workers,
        .conn_timeout_s = 30,
        .routes = routes,
        .nroutes = nroutes,
        .ud = ctx,
        .metrics_fn = metrics_fn,
        .health_fn = health_fn,
    };

    return cl_http_server_start(&o, out, err);
}

int api_start(const api_cfg *cfg, api_ctx **out, cl_error *err)
{
    api_ctx *ctx;
    int rc;

    rc = check_cfg(cfg, err);
    if (rc < 0)
        return rc;
    rc = prepare_db(cfg, err);
    if (rc < 0)
        return rc;

    ctx = calloc(1, sizeof(*ctx));
    if (!ctx)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    ctx->cfg = cfg;
    atomic_init(&ctx->ready, false);
    pthread_mutex_init(&ctx->stores_lock, NULL);
    if (pthread_key_create(&ctx->store_key, tls_destroy) != 0) {
        rc = cl_error_set(err, CL_E_INTERNAL, "cannot create a thread-local key");
        goto fail;
    }
    ctx->store_key_made = true;
    /* Token key, admin bootstrap from [auth], revocation list: before any listener. */
    rc = api_identity_start(ctx, err);
    if (rc < 0)
        goto fail;

    {
        cl_bus_opts bo = {
            .role = CL_BUS_DEALER,
            .endpoint = cfg->scheduler_endpoint,
            .name = "nube-api",
            .resend_ms = (int)cfg->resend_ms,
            .on_msg = on_bus_msg,
            .ud = ctx,
        };
        cl_bus_keys keys;
        rc = cl_bus_keys_apply(&keys, cfg->curve_secret_key_file, cfg->curve_server_key_file,
                               true, &bo, err);
        if (rc == 0)
            rc = cl_bus_new(&bo, &ctx->bus, err);
        explicit_bzero(&keys, sizeof keys);
        if (rc < 0)
            goto fail;
    }

    /* URLs with fixed ports are known now; chosen ports only once bound. Handlers wait
     * for `ready`, so they never read a half-written URL. */
    rc = start_listener(ctx, "compute", cfg->compute_port, compute_routes,
                        CL_ARRAY_SIZE(compute_routes), compute_metrics, compute_health,
                        &ctx->compute, err);
    if (rc < 0)
        goto fail;
    {
        size_t nid = 0;
        const cl_http_route *idr = api_identity_routes(&nid);

        rc = start_listener(ctx, "identity", cfg->identity_port, idr, nid, identity_metrics,
                            started_health, &ctx->identity, err);
    }
    if (rc < 0)
        goto fail;
    snprintf(ctx->compute_url, sizeof(ctx->compute_url), "http://%s:%u", cfg->public_host,
             (unsigned)cl_http_server_port(ctx->compute));
    snprintf(ctx->identity_url, sizeof(ctx->identity_url), "http://%s:%u", cfg->public_host,
             (unsigned)cl_http_server_port(ctx->identity));
    atomic_store_explicit(&ctx->ready, true, memory_order_release);
    cl_debug(LOG_MOD, "compute at %s, identity at %s", ctx->compute_url, ctx->identity_url);
    *out = ctx;
    return 0;

fail:
    api_stop(ctx);
    return rc;
}

void api_stop(api_ctx *ctx)
{
    if (!ctx)
        return;
    /* Listeners first: no handler may run (or send on the bus) after this. Their worker
     * threads exit here, which closes their database connections via the key's
     * destructor. */
    cl_http_server_stop(ctx->identity);
    cl_http_server_stop(ctx->compute);
    cl_bus_free(ctx->bus);
    api_identity_stop(ctx);
    if (ctx->store_key_made)
        pthread_key_delete(ctx->store_key);
    /* Connections of threads that did not exit (none with a thread pool, but the HTTP
     * layer's threading is not ours to assume). */
    while (ctx->stores) {
        api_tls *t = ctx->stores;

        tls_unlink(ctx, t);
        cl_store_free(t->st);
        free(t);
    }
    pthread_mutex_destroy(&ctx->stores_lock);
    free(ctx);
}

uint16_t api_compute_port(const api_ctx *ctx) { return cl_http_server_port(ctx->compute); }

uint16_t api_identity_port(const api_ctx *ctx) { return cl_http_server_port(ctx->identity); }
