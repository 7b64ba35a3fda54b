/*
 * host_ops.c - host maintenance from the operator CLI (host_ops.h).
 *
 * Draining is orchestrated here, on the client, as novaclient's host-evacuate-live does:
 * the API has the pieces (disable a service with a reason, live-migrate one server with
 * the scheduler choosing the destination), and a drain is a bounded loop over them. The
 * host is disabled first so nothing new lands on it while it empties; at most --parallel
 * migrations run at once (each moves a whole guest's memory across the network, and
 * libvirt/QEMU on both ends pay for it); a server is done when it is ACTIVE again with
 * no task: on another host (moved) or still here (the migration failed and the guest
 * stayed, which the result line says). Polling is the client's only way to watch.
 */
#include "host_ops.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "json.h"
#include "util.h"

#define DRAIN_MAX 1024 /* servers one drain handles (a host holds far fewer) */

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0)
        ;
}

static const char *str_of(json_object *o, const char *key, const char *dflt)
{
    json_object *v = NULL;
    if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return dflt;
    return json_object_get_string(v);
}

int cli_cmd_host_set_enabled(cli_ctx *ctx, const char *host, bool enabled, const char *reason,
                             cl_error *err)
{
    _cleanup_json_ json_object *out = NULL;
    json_object *body = json_object_new_object();
    long status = 0;

    json_object_object_add(body, "host", json_object_new_string(host));
    json_object_object_add(body, "binary", json_object_new_string("nova-compute"));
    if (!enabled && reason && *reason)
        json_object_object_add(body, "disabled_reason", json_object_new_string(reason));
    const char *path = enabled ? "/os-services/enable"
                               : reason && *reason ? "/os-services/disable-log-reason"
                                                   : "/os-services/disable";
    int r = cli_compute_call(&ctx->sess, "PUT", path, body, &status, &out, err);
    json_object_put(body);
    if (r < 0)
        return cli_exit_code(r);
    fprintf(ctx->out, "host %s %s%s%s\n", host, enabled ? "enabled" : "disabled",
            !enabled && reason && *reason ? ": " : "", !enabled && reason ? reason : "");
    return CLI_EXIT_OK;
}

static int live_migrate(cli_ctx *ctx, const char *id, const char *host, cl_error *err)
{
    _cleanup_free_ char *path = NULL;
    _cleanup_json_ json_object *out = NULL;
    json_object *body = json_object_new_object(), *arg = json_object_new_object();
    long status = 0;

    json_object_object_add(arg, "host", host ? json_object_new_string(host) : NULL);
    json_object_object_add(arg, "block_migration", json_object_new_string("auto"));
    json_object_object_add(body, "os-migrateLive", arg);
    if (asprintf(&path, "/servers/%s/action", id) < 0) {
        path = NULL;
        json_object_put(body);
        return cl_error_set(err, CL_E_INTERNAL, "out of memory"), -ENOMEM;
    }
    int r = cli_compute_call(&ctx->sess, "POST", path, body, &status, &out, err);
    json_object_put(body);
    return r;
}

/* Where the server is now: 1 settled (ACTIVE/other stable status with no task), 0 still
 * moving, negative errno on API errors. */
static int poll_server(cli_ctx *ctx, const char *id, char *host, size_t hlen, char *status,
                       size_t slen, cl_error *err)
{
    _cleanup_free_ char *path = NULL;
    _cleanup_json_ json_object *body = NULL;
    long http = 0;

    if (asprintf(&path, "/servers/%s", id) < 0) {
        path = NULL;
        return -ENOMEM;
    }
    int r = cli_compute_call(&ctx->sess, "GET", path, NULL, &http, &body, err);
    if (r < 0)
        return r;
    json_object *s = cl_json_path(body, "server");
    cl_strlcpy(status, str_of(s, "status", "UNKNOWN"), slen);
    cl_strlcpy(host, str_of(s, "OS-EXT-SRV-ATTR:host", ""), hlen);
    const char *task = str_of(s, "OS-EXT-STS:task_state", NULL);
    return (task == NULL || !*task) && strcmp(status, "MIGRATING") != 0;
}

typedef struct drain_item {
    char id[64];
    char name[256];
    int state;                  /* 0 waiting, 1 migrating, 2 done */
    int64_t start_ms;
    char last[64];
} drain_item;

int cli_cmd_host_drain(cli_ctx *ctx, const char *host, int64_t parallel, const char *reason,
                       int64_t timeout_s, cl_error *err)
{
    _cleanup_json_ json_object *list = NULL;
    _cleanup_free_ char *path = NULL;
    _cleanup_free_ drain_item *items = NULL;
    size_t n = 0, done = 0, moved = 0, running = 0, next = 0;
    int64_t t0 = cl_mono_ms(), deadline = t0 + timeout_s * 1000;
    int r;

    if (parallel < 1)
        parallel = 1;
    r = cli_cmd_host_set_enabled(ctx, host, false, reason && *reason ? reason : "drain", err);
    if (r != CLI_EXIT_OK)
        return r;
    if (asprintf(&path, "/servers/detail?all_tenants=1&host=%s", host) < 0) {
        path = NULL;
        return cl_error_set(err, CL_E_INTERNAL, "out of memory"), CLI_EXIT_API;
    }
    r = cli_list_all(&ctx->sess, path, "servers", &list, err);
    if (r < 0)
        return cli_exit_code(r);
    size_t total = json_object_array_length(list);
    items = calloc(total ? total : 1, sizeof(*items));
    if (!items)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory"), CLI_EXIT_API;
    for (size_t i = 0; i < total && n < DRAIN_MAX; i++) {
        json_object *s = json_object_array_get_idx(list, i);
        /* The filter is the API's; check anyway (an old API ignores unknown filters). */
        if (strcmp(str_of(s, "OS-EXT-SRV-ATTR:host", host), host) != 0)
            continue;
        cl_strlcpy(items[n].id, str_of(s, "id", ""), sizeof(items[n].id));
        cl_strlcpy(items[n].name, str_of(s, "name", ""), sizeof(items[n].name));
        n++;
    }
    fprintf(ctx->err, "draining %s: %zu servers, %" PRId64 " at a time\n", host, n, parallel);
    while (done < n) {
        while (running < (size_t)parallel && next < n) {
            drain_item *it = &items[next++];
            cl_error e1 = {0};
            it->start_ms = cl_mono_ms();
            if (live_migrate(ctx, it->id, NULL, &e1) < 0) {
                it->state = 2;
                done++;
                fprintf(ctx->out, "%s %s: FAILED to start: %s\n", it->id, it->name,
                        e1.message);
                continue;
            }
            it->state = 1;
            running++;
            fprintf(ctx->err, "[%zu/%zu] %s: migrating\n", done, n, it->name);
        }
        sleep_ms(ctx->poll_ms > 0 ? ctx->poll_ms : CLI_POLL_MS);
        for (size_t i = 0; i < n; i++) {
            drain_item *it = &items[i];
            char at[256], status[64];
            cl_error e2 = {0};
            if (it->state != 1)
                continue;
            int s = poll_server(ctx, it->id, at, sizeof(at), status, sizeof(status), &e2);
            if (s < 0)
                continue; /* transient API error: look again next round */
            if (strcmp(status, it->last) != 0) {
                fprintf(ctx->err, "[%zu/%zu] %s: %s (%" PRId64 " s)\n", done, n, it->name,
                        status, (cl_mono_ms() - it->start_ms) / 1000);
                cl_strlcpy(it->last, status, sizeof(it->last));
            }
            if (s == 0)
                continue;
            it->state = 2;
            running--;
            done++;
            double secs = (double)(cl_mono_ms() - it->start_ms) / 1000.0;
            if (strcmp(at, host) != 0 && strcmp(status, "ERROR") != 0) {
                moved++;
                fprintf(ctx->out, "%s %s: moved to %s in %.1f s\n", it->id, it->name, at, secs);
            } else {
                fprintf(ctx->out, "%s %s: FAILED (%s on %s after %.1f s)\n", it->id, it->name,
                        status, at, secs);
            }
        }
        if (cl_mono_ms() > deadline) {
            cl_error_set(err, CL_E_UNAVAILABLE, "drain of %s timed out: %zu of %zu moved",
                         host, moved, n);
            return CLI_EXIT_TIMEOUT;
        }
    }
    fprintf(ctx->err, "drained %s: %zu of %zu moved in %.1f s\n", host, moved, n,
            (double)(cl_mono_ms() - t0) / 1000.0);
    if (moved < n) {
        cl_error_set(err, CL_E_INTERNAL, "%zu of %zu servers could not be moved off %s",
                     n - moved, n, host);
        return CLI_EXIT_API;
    }
    return CLI_EXIT_OK;
}

int cli_cmd_server_migrate(cli_ctx *ctx, const char *ref, bool live, const char *host,
                           bool wait, int64_t timeout_s, cl_error *err)
{
    _cleanup_json_ json_object *srv = NULL;
    char before[256], at[256], status[64];

    if (!live)
        return cl_error_set(err, CL_E_BAD_REQUEST, "cold migration is not available yet; "
                            "use --live"), CLI_EXIT_USAGE;
    int r = cli_find(&ctx->sess, "server", ref, &srv, err);
    if (r < 0)
        return cli_exit_code(r);
    char id[64];
    cl_strlcpy(id, str_of(srv, "id", ""), sizeof(id));
    cl_strlcpy(before, str_of(srv, "OS-EXT-SRV-ATTR:host", ""), sizeof(before));
    r = live_migrate(ctx, id, host, err);
    if (r < 0)
        return cli_exit_code(r);
    if (!wait) {
        fprintf(ctx->out, "%s: live migration from %s requested\n", ref, before);
        return CLI_EXIT_OK;
    }
    int64_t t0 = cl_mono_ms(), deadline = t0 + timeout_s * 1000;
    for (;;) {
        sleep_ms(ctx->poll_ms > 0 ? ctx->poll_ms : CLI_POLL_MS);
        cl_error e = {0};
        int s = poll_server(ctx, id, at, sizeof(at), status, sizeof(status), &e);
        if (s == 1)
            break;
        if (cl_mono_ms() > deadline)
            return cl_error_set(err, CL_E_UNAVAILABLE, "timed out waiting for %s", ref),
                   CLI_EXIT_TIMEOUT;
    }
    double secs = (double)(cl_mono_ms() - t0) / 1000.0;
    if (strcmp(at, before) == 0 || strcmp(status, "ERROR") == 0) {
        cl_error_set(err, CL_E_INTERNAL, "%s stayed on %s (%s) after %.1f s", ref, at, status,
                     secs);
        return strcmp(status, "ERROR") == 0 ? CLI_EXIT_ERROR : CLI_EXIT_API;
    }
    fprintf(ctx->out, "%s: %s -> %s in %.1f s\n", ref, before, at, secs);
    return CLI_EXIT_OK;
}
