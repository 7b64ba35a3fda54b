/*
 * api_int.h - what the files of nube-api share with each other (not with main.c or
 * tests): the context, the per-request prologue of Compute handlers, the per-thread
 * database connection, link and pagination helpers, and the handlers themselves.
 *
 * Files: api.c (context, listeners, routing tables, common helpers), identity.c (the
 * static Keystone), versions.c (version documents), servers.c, flavors.c, hypervisors.c,
 * images.c (a stand-in Image v2 endpoint); the compute API's keypairs.c, quotas.c (quota
 * sets, limits), services.c (os-services, availability zones), usage.c, metadata.c,
 * instance_actions.c, migrations_api.c.
 */
#ifndef API_INT_H
#define API_INT_H

#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "api.h"
#include "bus.h"
#include "auth.h"
#include "http.h"
#include "store.h"

/* Nova's microversion window. Everything between is accepted; answers change shape
 * where a client needs it (flavors 2.55/2.61, key pairs 2.2/2.10, server groups 2.64,
 * services 2.11/2.53, servers 2.3-2.73: servers.c mv_fields). */
#define API_MV_MIN 1   /* 2.1 */
#define API_MV_MAX 93  /* 2.93 */

#define API_URL_MAX 300

typedef struct api_tls api_tls;

struct api_ctx {
    const api_cfg *cfg;
    cl_http_server *compute;
    cl_http_server *identity;
    cl_bus *bus;

    /* One cl_store per HTTP worker thread, created lazily (api_store()). The registry
     * lets api_stop() free the connections of threads that never exited. */
    pthread_key_t store_key;
    bool store_key_made;
    pthread_mutex_t stores_lock;
    api_tls *stores;

    /* "http://public_host:port", set before `ready` flips (ports may be chosen at
     * start), read by handlers after they saw `ready`. */
    char compute_url[API_URL_MAX];
    char identity_url[API_URL_MAX];
    atomic_bool ready;

    /* Identity state (identity.c): the token key and the revocation cache. */
    struct api_ident *ident;

    atomic_uint_fast64_t servers_created;
    atomic_uint_fast64_t servers_deleted;
    atomic_uint_fast64_t tokens_issued;
    atomic_uint_fast64_t auth_failures;
};

/* The calling thread's database connection for ctx, opened on first use. On failure it
 * answers 500 itself and returns NULL. */
cl_store *api_store(api_ctx *ctx, cl_http_resp *resp);

/* Prologue of every authenticated Compute handler: answers 503 before start-up is
 * complete, negotiates the microversion (400/406 on bad headers), adds the version
 * headers every Compute answer carries, and checks X-Auth-Token (401 as
 * keystonemiddleware). Returns true when the handler should go on; *out_mv receives the
 * minor version (2.<mv>). auth=false skips the token check (version documents). */
bool api_compute_begin(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, bool auth,
                       int *out_mv);

/* The caller of the request being handled on this thread, set by api_compute_begin
 * (NULL before it or when auth was skipped). Thread-local: a handler runs on one thread
 * from begin to end, and nothing else may keep the pointer past the handler. */
const cl_auth *api_auth_current(void);

/* True when token authenticates (see api_auth_token): the static [auth] admin_token or
 * a valid, unexpired, unrevoked sealed token. */
bool api_token_ok(const api_ctx *ctx, const char *token);

/* Authenticate a token: the static [auth] admin_token (constant-time comparison; a
 * service/bootstrap token with every role on the admin project, as Keystone's
 * admin_token), or a sealed token (cl_token_verify) whose audit id is not revoked.
 * Fills *out and returns true; false for a missing, invalid, expired or revoked token.
 * Sealed tokens carry ids only: user_name and project_name stay empty. Thread-safe; the
 * revocation list is re-read from the controller DB at most once a second. */
bool api_auth_token(const api_ctx *ctx, const char *token, cl_auth *out);

/* The Identity listener's routing table (identity.c). */
const cl_http_route *api_identity_routes(size_t *out_n);

/* Keystone-style bootstrap from cfg (nube-manage bootstrap, and nube-api at start when
 * the admin user is missing): token key file (created if missing), Default domain, admin
 * project, admin user with password (NULL = [auth] admin_password), roles admin/member/
 * reader, the admin role assignment. Idempotent; *out_changed (may be NULL) says whether
 * the database changed. 0 or negative errno with err. */
int api_identity_bootstrap(const api_cfg *cfg, const char *password, bool *out_changed,
                           cl_error *err);
/* The token key path cfg names ([auth] token_key_file, or <state_dir>/token.key). */
void api_token_key_path(const api_cfg *cfg, char *out, size_t outlen);

/* identity.c: load (or create) the token key, bootstrap the admin from [auth] when the
 * admin user is missing, prepare the revocation cache. 0 or negative errno with err. */
int api_identity_start(api_ctx *ctx, cl_error *err);
/* Free what api_identity_start() made. Accepts a ctx without identity state. */
void api_identity_stop(api_ctx *ctx);

/* Respond 401 as keystonemiddleware / Keystone do:
 * {"error": {"code": 401, "title": "Unauthorized", "message": "..."}}. */
void api_respond_unauthorized(api_ctx *ctx, cl_http_resp *resp);

/* Keystone-shaped error: {"error": {"code", "title", "message"}}. */
void api_respond_keystone_error(cl_http_resp *resp, int code, const char *title,
                                const char *message);

/* {"rel": rel, "href": href} */
json_object *api_link(const char *rel, const char *href);

/* "links": [self, bookmark] of a Compute resource: <url>/v2.1/<coll>/<id> and
 * <url>/<coll>/<id>, as Nova builds them. New reference. */
json_object *api_links_self_bookmark(const api_ctx *ctx, const char *coll, const char *id);

/* Only the bookmark link (embedded flavor/image of a server). New reference. */
json_object *api_links_bookmark(const api_ctx *ctx, const char *coll, const char *id);

/* Pagination query parameters: limit (1..1000) and marker. *out_limit is 0 when absent.
 * On a bad value answers 400 and returns false. */
bool api_page_params(const cl_http_req *req, cl_http_resp *resp, int64_t *out_limit,
                     const char **out_marker);

/* Format a time as Nova's "created" (Z) or "launched_at" (microseconds, no Z) into a new
 * JSON string, or JSON null when ms is 0. */
json_object *api_time_json(int64_t ms, bool with_z);

/* ---- handlers (ud is the api_ctx) ---- */
/* Identity handlers: static in identity.c, see api_identity_routes(). */

void api_compute_versions(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_compute_v21(const cl_http_req *req, cl_http_resp *resp, void *ud);

void api_servers_create(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_servers_list(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_servers_detail(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_servers_show(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_servers_delete(const cl_http_req *req, cl_http_resp *resp, void *ud);

void api_flavors_list(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_flavors_detail(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_flavors_show(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_flavors_extra_specs(const cl_http_req *req, cl_http_resp *resp, void *ud);

void api_hypervisors_list(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_hypervisors_detail(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_hypervisors_show(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_hypervisors_uptime(const cl_http_req *req, cl_http_resp *resp, void *ud);
/* aggregates.c (admin) and server_groups.c: placement objects (issue 4). */
void api_aggregates_list(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_aggregates_create(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_aggregates_show(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_aggregates_update(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_aggregates_delete(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_aggregates_action(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_server_groups_list(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_server_groups_create(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_server_groups_show(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_server_groups_delete(const cl_http_req *req, cl_http_resp *resp, void *ud);

/* images.c: a stand-in Image v2 endpoint under /image until nube-image exists. */
void api_images_versions(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_images_list(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_images_show(const cl_http_req *req, cl_http_resp *resp, void *ud);

/* Once at start: moves key_name/metadata of databases written before the compute
 * schema (nube-api's old api_server_extra table) into the v3 tables (servers.c).
 * 0 or negative errno with err. */
int api_servers_prepare_db(cl_store *st, cl_error *err);

/* ---- compute API: policy, quotas, and the handlers of servers extras, key pairs,
 * quotas/limits, services, usage, metadata, instance actions, migrations ---- */
#include "store_compute.h"

/* 403 {"forbidden": ...} "Policy doesn't allow <rule> to be performed." */
void api_respond_policy(cl_http_resp *resp, const char *rule);
/* True for admins; otherwise answers 403 for rule and returns false. */
bool api_require_admin(cl_http_resp *resp, const char *rule);
/* The live server of the {id} capture as the caller may see it: another project's (or a
 * missing, or deleted) server answers 404; write=true also answers 403 to readers. */
bool api_server_load(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, bool write,
                     const char *rule, cl_store **out_st, cl_instance *out);
/* [quota] defaults of the config (quotas.c). */
void api_quota_defaults(const api_ctx *ctx, cl_quota_set *out);
/* Defaults with the project's overrides applied; 0 or negative errno. */
int api_quota_limits(api_ctx *ctx, cl_store *st, const char *project_id, cl_quota_set *out);
/* Parse an ISO 8601 UTC time as Nova's query parameters take it ("2026-11-26T04:34:57",
 * optional ".ffffff" and "Z" or "+00:00", or a date alone) into unix ms (usage.c).
 * 0 or -EINVAL. */
int api_parse_time(const char *s, int64_t *out_ms);

void api_servers_update(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_server_metadata_list(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_server_metadata_replace(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_server_metadata_update(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_server_metadata_show(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_server_metadata_put(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_server_metadata_delete(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_instance_actions_list(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_instance_actions_show(const cl_http_req *req, cl_http_resp *resp, void *ud);
/* Audit a server action the API accepted (os-instance-actions): one open row named as
 * Nova names it ("stop", "reboot", "confirmResize", ...) under the request's id.
 * Best effort: a failed write is logged, the action goes on. */
void api_instance_action_record(cl_store *st, const char *uuid, const char *nova_name);

void api_flavors_create(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_flavors_delete(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_flavors_action(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_flavors_access_list(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_flavors_extra_specs_create(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_flavors_extra_spec_show(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_flavors_extra_spec_put(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_flavors_extra_spec_delete(const cl_http_req *req, cl_http_resp *resp, void *ud);

void api_keypairs_create(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_keypairs_list(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_keypairs_show(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_keypairs_delete(const cl_http_req *req, cl_http_resp *resp, void *ud);

void api_quota_show(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_quota_defaults_show(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_quota_detail(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_quota_update(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_quota_delete(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_limits(const cl_http_req *req, cl_http_resp *resp, void *ud);

void api_services_list(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_services_update(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_availability_zones(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_availability_zones_detail(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_hypervisors_statistics(const cl_http_req *req, cl_http_resp *resp, void *ud);

void api_usage_list(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_usage_show(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_migrations_list(const cl_http_req *req, cl_http_resp *resp, void *ud);

#endif
