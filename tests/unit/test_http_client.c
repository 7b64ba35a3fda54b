/*
 * test_http_client.c - cl_http_request() against a cl_http_server started in-process on
 * 127.0.0.1 (port 0): methods and bodies, headers (case, repeats, redirects), the
 * errno mapping for refused connections and timeouts, and the 64 MiB response cap.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "util.h"

static uint16_t g_port;

static void url_of(char *out, size_t len, const char *path)
{
    snprintf(out, len, "http://127.0.0.1:%u%s", (unsigned)g_port, path);
}

/* ---- handlers ---- */

static void h_hello(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    json_object *o = json_object_new_object();
    const char *auth = cl_http_req_header(req, "x-auth-token");

    (void)ud;
    json_object_object_add(o, "hello", json_object_new_string("world"));
    json_object_object_add(o, "token", json_object_new_string(auth ? auth : ""));
    cl_http_resp_header(resp, "X-Subject-Token", "tok-123");
    cl_http_resp_header(resp, "X-Dup", "first");
    cl_http_resp_header(resp, "X-Dup", "second");
    cl_http_resp_json(resp, 200, o);
}

static void h_echo(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    char status[64];

    (void)ud;
    snprintf(status, sizeof(status), "%s %zu", req->method, req->body_len);
    cl_http_resp_header(resp, "X-Seen", status);
    cl_http_resp_raw(resp, 201, "application/octet-stream", req->body, req->body_len);
}

static void h_delete(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    (void)req;
    (void)ud;
    cl_http_resp_json(resp, 204, NULL);
}

static void h_redirect(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    (void)req;
    (void)ud;
    cl_http_resp_header(resp, "Location", "/hello");
    cl_http_resp_header(resp, "X-Only-On-Redirect", "1");
    cl_http_resp_raw(resp, 302, "text/plain", "moved", 5);
}

static void h_huge(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    size_t len = (size_t)64 * 1024 * 1024 + 1;
    char *data = malloc(len);

    (void)req;
    (void)ud;
    if (!data) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "no memory");
        return;
    }
    memset(data, 'z', len);
    cl_http_resp_raw(resp, 200, "application/octet-stream", data, len);
    free(data);
}

/* Blocks until released by the test (or a deadline), to make the client time out. */
static pthread_mutex_t slow_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t slow_cond = PTHREAD_COND_INITIALIZER;
static bool slow_release;

static void h_slow(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    struct timespec deadline;

    (void)req;
    (void)ud;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 5;
    pthread_mutex_lock(&slow_lock);
    while (!slow_release)
        if (pthread_cond_timedwait(&slow_cond, &slow_lock, &deadline) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&slow_lock);
    cl_http_resp_raw(resp, 200, "text/plain", "late", 4);
}

static const cl_http_route routes[] = {
    {"GET", "/hello", h_hello},       {"POST", "/echo", h_echo},
    {"PUT", "/echo", h_echo},         {"PATCH", "/echo", h_echo},
    {"DELETE", "/things/{id}", h_delete}, {"GET", "/redirect", h_redirect},
    {"GET", "/huge", h_huge},         {"GET", "/slow", h_slow},
};

static int setup(void **state)
{
    cl_http_opts opts = {
        .service = "client-test",
        .bind_addr = "127.0.0.1",
        .threads = 4,
        .routes = routes,
        .nroutes = CL_ARRAY_SIZE(routes),
    };
    cl_http_server *srv = NULL;
    cl_error err;

    if (cl_http_server_start(&opts, &srv, &err) < 0)
        return -1;
    g_port = cl_http_server_port(srv);
    *state = srv;
    return 0;
}

static int teardown(void **state)
{
    cl_http_server_stop(*state);
    return 0;
}

/* ---- tests ---- */

static void test_get_json_and_headers(void **state)
{
    char url[128], val[64];
    const char *hdrs[] = {"X-Auth-Token: abc", "Accept: application/json", NULL};
    cl_http_result res = {0};
    cl_error err;
    json_object *o;

    (void)state;
    url_of(url, sizeof(url), "/hello");
    assert_int_equal(cl_http_request("GET", url, hdrs, NULL, 0, 5000, &res, &err), 0);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.body_len, strlen(res.body));
    o = json_tokener_parse(res.body);
    assert_non_null(o);
    assert_string_equal(json_object_get_string(json_object_object_get(o, "hello")), "world");
    assert_string_equal(json_object_get_string(json_object_object_get(o, "token")), "abc");
    json_object_put(o);

    /* Case-insensitive names; the last of repeated headers wins. */
    assert_int_equal(cl_http_result_header(&res, "x-subject-token", val, sizeof(val)), 0);
    assert_string_equal(val, "tok-123");
    assert_int_equal(cl_http_result_header(&res, "X-DUP", val, sizeof(val)), 0);
    assert_string_equal(val, "second");
    assert_int_equal(cl_http_result_header(&res, "content-type", val, sizeof(val)), 0);
    assert_string_equal(val, "application/json");
    assert_int_equal(cl_http_result_header(&res, "x-openstack-request-id", val, sizeof(val)), 0);
    assert_true(strncmp(val, "req-", 4) == 0);
    assert_int_equal(cl_http_result_header(&res, "X-Missing", val, sizeof(val)), -ENOENT);
    /* A name that is only a prefix of a header does not match it. */
    assert_int_equal(cl_http_result_header(&res, "X-Subject", val, sizeof(val)), -ENOENT);
    assert_int_equal(cl_http_result_header(&res, "X-Subject-Token", val, 4), -ERANGE);
    assert_string_equal(val, "tok");
    cl_http_result_free(&res);
    assert_null(res.body);
    cl_http_result_free(&res);
}

static void test_methods_and_bodies(void **state)
{
    char url[128], val[64];
    const char *methods[] = {"POST", "PUT", "PATCH"};
    cl_http_result res = {0};
    cl_error err;

    (void)state;
    url_of(url, sizeof(url), "/echo");
    for (size_t i = 0; i < CL_ARRAY_SIZE(methods); i++) {
        char expect[32];
        /* Bytes after a NUL must survive: bodies are lengths, not strings. */
        assert_int_equal(
            cl_http_request(methods[i], url, NULL, "ab\0cd", 5, 5000, &res, &err), 0);
        assert_int_equal(res.status, 201);
        assert_int_equal(res.body_len, 5);
        assert_memory_equal(res.body, "ab\0cd", 5);
        snprintf(expect, sizeof(expect), "%s 5", methods[i]);
        assert_int_equal(cl_http_result_header(&res, "X-Seen", val, sizeof(val)), 0);
        assert_string_equal(val, expect);
        cl_http_result_free(&res);
    }

    /* POST without a body sends an empty one. */
    assert_int_equal(cl_http_request("POST", url, NULL, NULL, 0, 5000, &res, &err), 0);
    assert_int_equal(res.status, 201);
    assert_int_equal(res.body_len, 0);
    assert_string_equal(res.body, "");
    cl_http_result_free(&res);

    url_of(url, sizeof(url), "/things/42");
    assert_int_equal(cl_http_request("DELETE", url, NULL, NULL, 0, 5000, &res, &err), 0);
    assert_int_equal(res.status, 204);
    assert_string_equal(res.body, "");
    cl_http_result_free(&res);

    /* Any HTTP status is a successful exchange for the client. */
    url_of(url, sizeof(url), "/nothing-here");
    assert_int_equal(cl_http_request("GET", url, NULL, NULL, 0, 5000, &res, &err), 0);
    assert_int_equal(res.status, 404);
    assert_non_null(strstr(res.body, "itemNotFound"));
    cl_http_result_free(&res);

    url_of(url, sizeof(url), "/hello");
    assert_int_equal(cl_http_request("HEAD", url, NULL, NULL, 0, 5000, &res, &err), 0);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.body_len, 0);
    cl_http_result_free(&res);
}

static void test_redirect_keeps_final_headers(void **state)
{
    char url[128], val[64];
    cl_http_result res = {0};
    cl_error err;

    (void)state;
    url_of(url, sizeof(url), "/redirect");
    assert_int_equal(cl_http_request("GET", url, NULL, NULL, 0, 5000, &res, &err), 0);
    assert_int_equal(res.status, 200);
    assert_non_null(strstr(res.body, "world"));
    assert_int_equal(cl_http_result_header(&res, "X-Subject-Token", val, sizeof(val)), 0);
    /* Headers of the intermediate 302 are not reported as the final response's. */
    assert_int_equal(cl_http_result_header(&res, "X-Only-On-Redirect", val, sizeof(val)),
                     -ENOENT);
    cl_http_result_free(&res);
}

static void test_connection_refused(void **state)
{
    struct sockaddr_in sin = {.sin_family = AF_INET};
    socklen_t slen = sizeof(sin);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cl_http_result res = {.status = 777};
    char url[128];
    cl_error err;

    (void)state;
    /* Find a free port, then free it: nothing listens there. */
    assert_true(fd >= 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &slen), 0);
    close(fd);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/x", (unsigned)ntohs(sin.sin_port));
    memset(&err, 0, sizeof(err));
    assert_int_equal(cl_http_request("GET", url, NULL, NULL, 0, 2000, &res, &err),
                     -ECONNREFUSED);
    assert_int_equal(err.code, CL_E_UNAVAILABLE);
    assert_non_null(strstr(err.message, url));
    assert_int_equal(res.status, 777); /* untouched on failure */

    assert_int_equal(cl_http_request("GET", "ftp://127.0.0.1/x", NULL, NULL, 0, 2000, &res, &err),
                     -EIO);
}

static void test_timeout(void **state)
{
    char url[128];
    cl_http_result res = {0};
    cl_error err;
    int64_t t0 = cl_mono_ms();

    (void)state;
    slow_release = false;
    url_of(url, sizeof(url), "/slow");
    assert_int_equal(cl_http_request("GET", url, NULL, NULL, 0, 200, &res, &err), -ETIMEDOUT);
    assert_true(cl_mono_ms() - t0 < 3000);
    assert_int_equal(err.code, CL_E_UNAVAILABLE);
    /* Let the handler finish so the server stops promptly. */
    pthread_mutex_lock(&slow_lock);
    slow_release = true;
    pthread_cond_broadcast(&slow_cond);
    pthread_mutex_unlock(&slow_lock);
}

static void test_body_cap(void **state)
{
    char url[128];
    cl_http_result res = {0};
    cl_error err;

    (void)state;
    url_of(url, sizeof(url), "/huge");
    assert_int_equal(cl_http_request("GET", url, NULL, NULL, 0, 20000, &res, &err), -EMSGSIZE);
    assert_null(res.body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_json_and_headers),
        cmocka_unit_test(test_methods_and_bodies),
        cmocka_unit_test(test_redirect_keeps_final_headers),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_body_cap),
    };

    cl_log_init("test_http_client", getenv("TEST_VERBOSE") ? CL_LOG_DEBUG : CL_LOG_WARN, false);
    cl_http_client_global_init();
    return cmocka_run_group_tests(tests, setup, teardown);
}
