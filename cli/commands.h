/*
 * commands.h - what the nube CLI does: authenticate, call Compute v2.1, print results.
 *
 * The HTTP conversation is split into small functions (auth body, catalog lookup, one
 * API call, name-or-id lookup, waiting) so tests can drive each against a loopback
 * server. Commands return the process exit code; helpers return 0 / negative errno and
 * describe failures in a cl_error whose message main.c prints as "nube: <message>".
 */
#ifndef CLI_COMMANDS_H
#define CLI_COMMANDS_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "clouds.h"
#include "errors.h"
#include "output.h"

/* Exit codes: part of the CLI's interface for scripts (documented in nube --help). */
enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_API = 1,       /* API or network error; message has HTTP status and fault */
    CLI_EXIT_USAGE = 2,     /* bad arguments or no usable cloud configuration */
    CLI_EXIT_NOT_FOUND = 3, /* no server/flavor with that name or id */
    CLI_EXIT_ERROR = 4,     /* the server went to ERROR while waiting */
    CLI_EXIT_TIMEOUT = 5,   /* --wait ran past --timeout */
};

#define CLI_HTTP_TIMEOUT_MS 30000L /* one request; waits have their own deadline */
#define CLI_POLL_MS 500L
#define CLI_TOKEN_MAX 8192
#define CLI_URL_MAX 2048

/* An authenticated session: owned strings, freed by cli_session_clear(). */
typedef struct cli_session {
    char *token;       /* X-Subject-Token */
    char *compute_url; /* compute endpoint from the catalog, no trailing slash */
    char *billing_url; /* "billing" endpoint (nube-billing), NULL when not in the catalog */
    long timeout_ms;   /* per request; 0 = CLI_HTTP_TIMEOUT_MS */
} cli_session;

/* Everything a command needs; no globals, so tests can run commands side by side. */
typedef struct cli_ctx {
    cli_session sess;
    cli_format fmt;
    FILE *out;       /* results (stdout) */
    FILE *err;       /* progress and messages (stderr) */
    bool err_tty;    /* progress is redrawn in place when true */
    long poll_ms;    /* --wait poll interval; 0 = CLI_POLL_MS */
} cli_ctx;

/* Free the session's strings (safe on a zeroed or cleared session). */
void cli_session_clear(cli_session *s);

/* The Identity v3 password + project-scope request body for cloud (new reference).
 * A name without a domain is looked up in the "Default" domain, as keystoneauth does
 * for OS_USER_DOMAIN_NAME-less openrc files. NULL on allocation failure. */
json_object *cli_auth_body(const cli_cloud *cloud);

/* Find the URL of service type in a token response ({"token": {"catalog": [...]}}),
 * with the given interface ("public", "internal", "admin") and, when region is non-empty,
 * region (matched against "region_id" and "region"). Copies it without trailing slashes.
 * Returns 0, -ENOENT (err says what was looked for) or -ENAMETOOLONG. */
int cli_catalog_endpoint(json_object *token_body, const char *type, const char *interface,
                         const char *region, char *out, size_t outlen, cl_error *err);

/* POST <auth_url>/auth/tokens and fill out with the token and the compute endpoint.
 * Returns 0, or a negative errno with err saying why (network, HTTP status and the
 * Keystone message, no token, no compute endpoint). out is untouched on failure. */
int cli_authenticate(const cli_cloud *cloud, long timeout_ms, cli_session *out,
                     cl_error *err);

/* One Compute API call: method on compute_url + path (path starts with '/'), with the
 * token and "X-OpenStack-Nova-API-Version: 2.1", body serialised when non-NULL.
 * On a 2xx answer returns 0 and, when out_json is non-NULL, the parsed body (NULL when
 * empty; caller owns it). Otherwise returns -ENOENT for 404, -EIO for other HTTP errors
 * (err: "HTTP 409 conflictingRequest: <message> (Request-ID: req-...)") or the network
 * error from cl_http_request. out_status (may be NULL) gets the status, 0 without one. */
int cli_compute_call(const cli_session *s, const char *method, const char *path,
                     json_object *body, long *out_status, json_object **out_json,
                     cl_error *err);

/* Resolve a server or flavor given by id or name, as the openstack client does: GET by
 * id, and on 404 list and match the name exactly. kind is "server" or "flavor".
 * Returns 0 and the resource object (new reference), -ENOENT ("No server with a name
 * or ID of 'x' exists."), -ENOTUNIQ ("More than one server exists with the name 'x'.")
 * or another negative errno for API failures. */
int cli_find(const cli_session *s, const char *kind, const char *ref, json_object **out,
             cl_error *err);

/* GET a collection (following "<key>_links" next links, capped) and return the
 * concatenated array of body[key] (new reference). 0 or negative errno. */
int cli_list_all(const cli_session *s, const char *path, const char *key,
                 json_object **out, cl_error *err);

/* Map a helper's negative errno to an exit code (-ENOENT -> 3, anything else -> 1). */
int cli_exit_code(int neg_errno);

/* Poll GET /servers/<id> every poll_ms until the server is ACTIVE (want_gone false) or
 * answers 404 (want_gone true), reporting progress on ctx->err as "Waiting for server
 * <label>: BUILD ... 3s". deadline_ms is on cl_mono_ms()'s clock. Returns an exit code:
 * 0, 4 (ERROR; err carries the fault message), 5 (deadline passed) or 1. */
int cli_wait_server(cli_ctx *ctx, const char *id, const char *label, bool want_gone,
                    int64_t deadline_ms, cl_error *err);

/* ---- the commands; each returns an exit code and fills err when it is not 0 ---- */

int cli_cmd_server_list(cli_ctx *ctx, bool all_projects, cl_error *err);
int cli_cmd_server_show(cli_ctx *ctx, const char *ref, cl_error *err);
int cli_cmd_server_create(cli_ctx *ctx, const char *name, const char *flavor,
                          const char *image, bool wait, int64_t timeout_s, cl_error *err);
int cli_cmd_server_delete(cli_ctx *ctx, const char *const *refs, size_t nrefs, bool wait,
                          int64_t timeout_s, cl_error *err);
int cli_cmd_host_list(cli_ctx *ctx, cl_error *err);
int cli_cmd_flavor_list(cli_ctx *ctx, cl_error *err);

#endif
