/*
 * test_api_health.c - nube-api's /healthz agrees with its handlers.
 *
 * Both listeners are bound (and answer /healthz) before api_start() flips `ready`; until
 * then every handler refuses with 503 "nube-api is starting". A supervisor or test that
 * waits for /healthz 200 and then sends its first request used to land in that window now
 * and then (tests/crash/test_crash.py after restarting nube-api). The window is too short
 * to hit on purpose from outside, so this test holds it open: it starts a real nube-api
 * (port 0 for both listeners, temporary controller DB and state_dir), clears `ready`
 * through api_int.h, and checks that both /healthz answer 503 while a compute and an
 * identity request are refused, and that all of them answer again once `ready` is back.
 * Self-contained on purpose (no shared fixture): it only needs api.h and api_int.h.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "api.h"
#include "api_int.h"
#include "config.h"
#include "http.h"
#include "log.h"

#define TOKEN "health-admin-token-0123456789abcdef"

typedef struct fixture {
    char dir[256];
    api_cfg cfg;
    api_ctx *api;
    char compute[64];
    char identity[64];
} fixture;

static void set(fixture *f, const char *section, const char *name, const char *value)
{
    cl_error err = {0};

    if (cl_config_set(api_cfg_keys, api_cfg_nkeys, &f->cfg, section, name, value, &err) < 0)
        fail_msg("config %s.%s: %s", section, name, err.message);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    cl_error err = {0};
    char db[300];

    assert_non_null(f);
    cl_log_init("test_api_health", CL_LOG_WARN, false);
    cl_http_client_global_init();
    snprintf(f->dir, sizeof(f->dir), "/tmp/test_api_health_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(db, sizeof(db), "%s/controller.db", f->dir);
    assert_int_equal(cl_config_defaults(api_cfg_keys, api_cfg_nkeys, &f->cfg, &err), 0);
    set(f, "DEFAULT", "state_dir", f->dir);
    set(f, "database", "connection", db);
    /* Nobody listens there; ZeroMQ connects lazily and nothing here sends. */
    set(f, "bus", "scheduler_endpoint", "tcp://127.0.0.1:9");
    set(f, "api", "compute_port", "0");
    set(f, "api", "identity_port", "0");
    set(f, "api", "workers", "2");
    set(f, "auth", "admin_token", TOKEN);
    set(f, "auth", "admin_password", "health-admin-password");
    set(f, "auth", "password_iterations", "1000");
    if (api_start(&f->cfg, &f->api, &err) < 0)
        fail_msg("api_start: %s", err.message);
    snprintf(f->compute, sizeof(f->compute), "http://127.0.0.1:%u",
             (unsigned)api_compute_port(f->api));
    snprintf(f->identity, sizeof(f->identity), "http://127.0.0.1:%u",
             (unsigned)api_identity_port(f->api));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    char path[400];

    api_stop(f->api);
    cl_config_free(api_cfg_keys, api_cfg_nkeys, &f->cfg);
    for (const char *const *s = (const char *const[]){"controller.db", "controller.db-wal",
                                                      "controller.db-shm", "token.key", NULL};
         *s; s++) {
        snprintf(path, sizeof(path), "%s/%s", f->dir, *s);
        unlink(path);
    }
    assert_int_equal(rmdir(f->dir), 0);
    free(f);
    return 0;
}

/* GET base+path with the admin token; returns the status, copies the body's start. */
static long get(const char *base, const char *path, char *body, size_t len)
{
    const char *hdrs[] = {"X-Auth-Token: " TOKEN, "Accept: application/json", NULL};
    cl_http_result r = {0};
    cl_error err = {0};
    char url[160];
    long status;

    snprintf(url, sizeof(url), "%s%s", base, path);
    if (cl_http_request("GET", url, hdrs, NULL, 0, 5000, &r, &err) < 0)
        fail_msg("GET %s: %s", url, err.message);
    status = r.status;
    if (body && len) {
        size_t n = r.body && r.body_len < len ? r.body_len : len - 1;

        memcpy(body, r.body ? r.body : "", r.body ? n : 0);
        body[r.body ? n : 0] = '\0';
    }
    cl_http_result_free(&r);
    return status;
}

static void test_healthz_follows_ready(void **state)
{
    fixture *f = *state;
    char body[512];

    /* Started: healthy, and the handlers serve. */
    assert_int_equal(get(f->compute, "/healthz", NULL, 0), 200);
    assert_int_equal(get(f->identity, "/healthz", NULL, 0), 200);
    assert_int_equal(get(f->compute, "/v2.1/flavors", NULL, 0), 200);
    assert_int_equal(get(f->identity, "/v3", NULL, 0), 200);

    /* The window between the listeners' bind and `ready`: the handlers refuse, so
     * /healthz must say so too (it said 200 before the fix). */
    atomic_store(&f->api->ready, false);
    assert_int_equal(get(f->compute, "/v2.1/flavors", body, sizeof(body)), 503);
    assert_non_null(strstr(body, "starting"));
    assert_int_equal(get(f->compute, "/healthz", body, sizeof(body)), 503);
    assert_non_null(strstr(body, "starting"));
    assert_int_equal(get(f->identity, "/healthz", body, sizeof(body)), 503);
    assert_non_null(strstr(body, "starting"));

    atomic_store(&f->api->ready, true);
    assert_int_equal(get(f->compute, "/healthz", NULL, 0), 200);
    assert_int_equal(get(f->identity, "/healthz", NULL, 0), 200);
    assert_int_equal(get(f->compute, "/v2.1/flavors", NULL, 0), 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_healthz_follows_ready),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
