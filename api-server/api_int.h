/*
 * api_int.h - what the files of nube-api share with each other (not with main.c or
 * tests): the context, the per-request prologue of Compute handlers, the per-thread
 * database connection, link and pagination helpers, and the handlers themselves.
 *
 * Files: api.c (context, listeners, routing tables, common helpers), identity.c (the
 * static Keystone), versions.c (version documents), servers.c, flavors.c, hypervisors.c,
 * images.c (a stand-in Image v2 endpoint).
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

/* Nova's microversion window. Everything between is accepted, but the answers stay
 * those of 2.1 for now except where noted (flavor description / extra_specs), because
 * the stock clients negotiate down and send 2.1 for server commands anyway. */
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

/* True when the request carries the admin token (constant-time comparison). */
bool api_token_ok(const api_ctx *ctx, const char *token);

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
void api_identity_versions(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_identity_v3(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_identity_token_issue(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_identity_token_show(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_identity_catalog(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_identity_projects(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_identity_project_show(const cl_http_req *req, cl_http_resp *resp, void *ud);

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
void api_aggregates_list(const cl_http_req *req, cl_http_resp *resp, void *ud);

/* images.c: a stand-in Image v2 endpoint under /image until nube-image exists. */
void api_images_versions(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_images_list(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_images_show(const cl_http_req *req, cl_http_resp *resp, void *ud);

/* servers.c keeps key_name and metadata (absent from cl_instance) in its own table of
 * the controller DB; api_start() creates it once. 0 or negative errno with err. */
int api_servers_prepare_db(cl_store *st, cl_error *err);

#endif
