/*
 * api_fixture.c - the shared nube-api test fixture (see api_fixture.h).
 *
 * Failures here fail the calling test through cmocka (assert_* / fail_msg), as the
 * copies in each test file did, so a test reads as a list of steps without error paths.
 */
#include "api_fixture.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "json.h"
#include "log.h"
#include "util.h"

int api_fx_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    socklen_t len = sizeof(a);

    assert_true(fd >= 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

void api_fx_set(api_fx *fx, const char *section, const char *name, const char *value)
{
    cl_error err = {0};

    if (cl_config_set(api_cfg_keys, api_cfg_nkeys, &fx->cfg, section, name, value, &err) < 0)
        fail_msg("config %s.%s: %s", section, name, err.message);
}

void api_fx_prepare(api_fx *fx, const char *name, cl_bus_handler_fn on_msg, void *ud,
                    const char *admin_token, const char *admin_password)
{
    cl_error err = {0};

    cl_log_init(name, CL_LOG_WARN, false);
    cl_http_client_global_init();
    snprintf(fx->dir, sizeof(fx->dir), "/tmp/%s_XXXXXX", name);
    assert_non_null(mkdtemp(fx->dir));
    snprintf(fx->db, sizeof(fx->db), "%s/controller.db", fx->dir);
    snprintf(fx->endpoint, sizeof(fx->endpoint), "tcp://127.0.0.1:%d", api_fx_free_port());
    if (on_msg) {
        cl_bus_opts bo = {0};

        bo.role = CL_BUS_ROUTER;
        bo.endpoint = fx->endpoint;
        bo.name = "nube-scheduler";
        bo.resend_ms = 200;
        bo.on_msg = on_msg;
        bo.ud = ud;
        if (cl_bus_new(&bo, &fx->sched, &err) < 0)
            fail_msg("router: %s", err.message);
    }
    assert_int_equal(cl_config_defaults(api_cfg_keys, api_cfg_nkeys, &fx->cfg, &err), 0);
    api_fx_set(fx, "database", "connection", fx->db);
    api_fx_set(fx, "bus", "scheduler_endpoint", fx->endpoint);
    if (on_msg)
        api_fx_set(fx, "bus", "resend_ms", "200");
    api_fx_set(fx, "api", "compute_port", "0");
    api_fx_set(fx, "api", "identity_port", "0");
    api_fx_set(fx, "auth", "admin_token", admin_token);
    api_fx_set(fx, "auth", "admin_password", admin_password);
}

void api_fx_start(api_fx *fx)
{
    cl_error err = {0};

    if (api_start(&fx->cfg, &fx->api, &err) < 0)
        fail_msg("api_start: %s", err.message);
    snprintf(fx->compute, sizeof(fx->compute), "http://127.0.0.1:%u",
             (unsigned)api_compute_port(fx->api));
    snprintf(fx->identity, sizeof(fx->identity), "http://127.0.0.1:%u",
             (unsigned)api_identity_port(fx->api));
    if (cl_store_open(fx->db, &fx->st, &err) < 0)
        fail_msg("store: %s", err.message);
}

void api_fx_stop(api_fx *fx, const char *const *extra_files)
{
    char path[400];

    api_stop(fx->api);
    cl_bus_free(fx->sched);
    cl_store_free(fx->st);
    cl_config_free(api_cfg_keys, api_cfg_nkeys, &fx->cfg);
    /* SQLite's WAL side files may or may not exist at this point. */
    for (const char *const *s = (const char *const[]){"", "-wal", "-shm", NULL}; *s; s++) {
        snprintf(path, sizeof(path), "%s%s", fx->db, *s);
        unlink(path);
    }
    for (const char *const *e = extra_files; e && *e; e++) {
        snprintf(path, sizeof(path), "%s/%s", fx->dir, *e);
        assert_int_equal(unlink(path), 0);
    }
    assert_int_equal(rmdir(fx->dir), 0);
}

api_reply api_fx_request(const char *method, const char *url, const char *const *headers,
                         const char *body, long timeout_ms)
{
    cl_error err = {0};
    api_reply r = {0};

    if (cl_http_request(method, url, headers, body, body ? strlen(body) : 0, timeout_ms,
                        &r.raw, &err) < 0)
        fail_msg("%s %s: %s", method, url, err.message);
    r.status = r.raw.status;
    if (r.raw.body && r.raw.body_len)
        r.json = json_tokener_parse(r.raw.body);
    return r;
}

void api_reply_free(api_reply *r)
{
    if (r->json)
        json_object_put(r->json);
    cl_http_result_free(&r->raw);
    memset(r, 0, sizeof(*r));
}

const char *api_jget(json_object *root, const char *path)
{
    json_object *o = cl_json_path(root, path);

    return o ? json_object_get_string(o) : NULL;
}
