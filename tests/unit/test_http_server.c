/*
 * test_http_server.c - the HTTP server over real loopback HTTP.
 *
 * Each test starts a cl_http_server on 127.0.0.1 with port 0 and talks to it with plain
 * libcurl (not cl_http_request) so it can look at the connection level: keep-alive reuse,
 * chunked uploads, raw headers. Covered: routing and captures (including %2F and
 * double-decoding traps), OpenStack-shaped 404/405/413/415/400/500 bodies, request ids,
 * /healthz, /metrics, concurrency and a clean stop while a request is in flight.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cleanup.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "util.h"

/* ---- a small curl-based client that keeps the raw response ---- */

typedef struct buf {
    char *data;
    size_t len;
} buf;

typedef struct reply {
    long status;
    buf body;
    buf headers;
    long num_connects;
} reply;

static size_t buf_write(char *p, size_t size, size_t n, void *ud)
{
    buf *b = ud;
    size_t len = size * n;
    char *nd = realloc(b->data, b->len + len + 1);
    if (!nd)
        return 0;
    memcpy(nd + b->len, p, len);
    b->data = nd;
    b->len += len;
    b->data[b->len] = '\0';
    return len;
}

static void reply_free(reply *r)
{
    free(r->body.data);
    free(r->headers.data);
    memset(r, 0, sizeof(*r));
}

/* Chunked uploads: curl asks a read callback for data when no size is known. */
typedef struct upload {
    size_t left;
} upload;

static size_t upload_read(char *p, size_t size, size_t n, void *ud)
{
    upload *u = ud;
    size_t len = size * n;
    if (len > u->left)
        len = u->left;
    memset(p, 'x', len);
    u->left -= len;
    return len;
}

static uint16_t g_port;

/* One request on handle h (NULL: a fresh handle). extra: NULL-terminated headers.
 * chunked_len > 0 streams that many bytes with Transfer-Encoding: chunked. */
static CURLcode do_req_h(CURL *h, const char *method, const char *path, const char **extra,
                         const char *body, size_t body_len, size_t chunked_len, reply *out)
{
    char url[512];
    bool own = h == NULL;
    struct curl_slist *hl = NULL;
    upload up = {chunked_len};
    CURLcode cc;

    memset(out, 0, sizeof(*out));
    if (own)
        h = curl_easy_init();
    assert_non_null(h);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", (unsigned)g_port, path);
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, buf_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &out->body);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, buf_write);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &out->headers);
    hl = curl_slist_append(hl, "Expect:");
    for (size_t i = 0; extra && extra[i]; i++)
        hl = curl_slist_append(hl, extra[i]);
    if (chunked_len) {
        hl = curl_slist_append(hl, "Transfer-Encoding: chunked");
        curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(h, CURLOPT_READFUNCTION, upload_read);
        curl_easy_setopt(h, CURLOPT_READDATA, &up);
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    } else if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    } else if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    cc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out->status);
    curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &out->num_connects);
    curl_slist_free_all(hl);
    if (own)
        curl_easy_cleanup(h);
    return cc;
}

static void do_req(const char *method, const char *path, const char **extra, const char *body,
                   reply *out)
{
    CURLcode cc = do_req_h(NULL, method, path, extra, body, body ? strlen(body) : 0, 0, out);
    assert_int_equal(cc, CURLE_OK);
}

/* Value of a header in the raw block (case-insensitive), copied into a static buffer. */
static const char *hdr(const reply *r, const char *name)
{
    static __thread char val[256];
    size_t nlen = strlen(name);
    const char *p = r->headers.data;

    while (p && *p) {
        const char *eol = strstr(p, "\r\n");
        if (!eol)
            break;
        if (strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
            const char *v = p + nlen + 1;
            while (*v == ' ')
                v++;
            size_t len = (size_t)(eol - v);
            if (len >= sizeof(val))
                len = sizeof(val) - 1;
            memcpy(val, v, len);
            val[len] = '\0';
            return val;
        }
        p = eol + 2;
    }
    return NULL;
}

/* Parse r's body as JSON and check it is {"<fault>": {"code": status, "message": ...}}. */
static void assert_fault(const reply *r, long status, const char *fault, const char *msg)
{
    json_object *root = json_tokener_parse(r->body.data ? r->body.data : "");
    json_object *inner, *code, *message;

    assert_int_equal(r->status, status);
    assert_non_null(root);
    assert_true(json_object_object_get_ex(root, fault, &inner));
    assert_true(json_object_object_get_ex(inner, "code", &code));
    assert_int_equal(json_object_get_int(code), status);
    assert_true(json_object_object_get_ex(inner, "message", &message));
    if (msg)
        assert_string_equal(json_object_get_string(message), msg);
    assert_non_null(hdr(r, "Content-Type"));
    assert_true(strncmp(hdr(r, "Content-Type"), "application/json", 16) == 0);
    json_object_put(root);
}

/* ---- handlers ---- */

/* Echo what the router saw, so tests can check captures, decoding and context. */
static void h_echo(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    json_object *o = json_object_new_object();
    const char *id = cl_http_req_param(req, "id");
    const char *q = cl_http_req_query(req, "name");
    const char *logid = cl_log_request_id();

    json_object_object_add(o, "ud", json_object_new_string(ud ? (const char *)ud : ""));
    json_object_object_add(o, "method", json_object_new_string(req->method));
    json_object_object_add(o, "path", json_object_new_string(req->path));
    json_object_object_add(o, "id", id ? json_object_new_string(id) : NULL);
    json_object_object_add(o, "name", q ? json_object_new_string(q) : NULL);
    json_object_object_add(o, "body_len", json_object_new_int64((int64_t)req->body_len));
    json_object_object_add(o, "request_id", json_object_new_string(req->request_id));
    /* The log's thread-local id must be the request's own while the handler runs. */
    json_object_object_add(o, "log_id_ok",
                           json_object_new_boolean(logid && strcmp(logid, req->request_id) == 0));
    cl_http_resp_header(resp, "X-Test", "yes");
    cl_http_resp_json(resp, 200, o);
}

static void h_detail(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    (void)req;
    (void)ud;
    /* An explicit Content-Type header replaces the responder's, never duplicates it. */
    cl_http_resp_header(resp, "content-type", "text/x-detail");
    cl_http_resp_raw(resp, 200, "text/plain", "detail", 6);
}

static void h_json(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    json_object *body = NULL;
    cl_error err;

    (void)ud;
    if (cl_http_req_json(req, &body, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    cl_http_resp_json(resp, 201, body);
}

static void h_forget(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    (void)req;
    (void)resp;
    (void)ud;
}

static void h_delete(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    (void)req;
    (void)ud;
    cl_http_resp_json(resp, 204, NULL);
}

/* A handler that blocks until the test releases it (or a deadline passes). */
static pthread_mutex_t slow_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t slow_cond = PTHREAD_COND_INITIALIZER;
static bool slow_entered, slow_release;

static void h_slow(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    struct timespec deadline;

    (void)req;
    (void)ud;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 5;
    pthread_mutex_lock(&slow_lock);
    slow_entered = true;
    pthread_cond_broadcast(&slow_cond);
    while (!slow_release)
        if (pthread_cond_timedwait(&slow_cond, &slow_lock, &deadline) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&slow_lock);
    cl_http_resp_raw(resp, 200, "text/plain", "slow", 4);
}

static const cl_http_route routes[] = {
    {"GET", "/v2.1/servers", h_echo},
    {"GET", "/v2.1/servers/{id}", h_echo},
    {"GET", "/v2.1/servers/detail", h_detail},
    {"DELETE", "/v2.1/servers/{id}", h_delete},
    {"POST", "/v2.1/servers/{id}/action", h_json},
    {"POST", "/json", h_json},
    {"POST", "/upload", h_echo},
    {"GET", "/forget", h_forget},
    {"GET", "/slow", h_slow},
    {"GET", "/", h_echo},
};

static bool g_healthy = true;

static bool health(char *reason, size_t len, void *ud)
{
    (void)ud;
    if (!g_healthy)
        snprintf(reason, len, "database unreachable");
    return g_healthy;
}

static void extra_metrics(FILE *out, void *ud)
{
    (void)ud;
    fputs("nube_test_gauge 42\n", out);
}

static cl_http_server *start_server(void)
{
    static char ud[] = "the-ud";
    cl_http_opts opts = {
        .service = "test",
        .bind_addr = "127.0.0.1",
        .port = 0,
        .max_body = 1024,
        .threads = 4,
        .conn_timeout_s = 10,
        .routes = routes,
        .nroutes = CL_ARRAY_SIZE(routes),
        .ud = ud,
        .metrics_fn = extra_metrics,
        .health_fn = health,
    };
    cl_http_server *srv = NULL;
    cl_error err;

    assert_int_equal(cl_http_server_start(&opts, &srv, &err), 0);
    assert_non_null(srv);
    g_port = cl_http_server_port(srv);
    assert_true(g_port > 0);
    return srv;
}

static int setup(void **state)
{
    *state = start_server();
    return 0;
}

static int teardown(void **state)
{
    cl_http_server_stop(*state);
    return 0;
}

static json_object *body_json(const reply *r)
{
    json_object *o = json_tokener_parse(r->body.data ? r->body.data : "");
    assert_non_null(o);
    return o;
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || json_object_is_type(v, json_type_null))
        return NULL;
    return json_object_get_string(v);
}

/* ---- tests ---- */

static void test_routing_captures(void **state)
{
    reply r;
    json_object *o;

    (void)state;
    do_req("GET", "/v2.1/servers/abc-123", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    o = body_json(&r);
    assert_string_equal(jstr(o, "id"), "abc-123");
    assert_string_equal(jstr(o, "ud"), "the-ud");
    assert_string_equal(jstr(o, "path"), "/v2.1/servers/abc-123");
    assert_string_equal(hdr(&r, "X-Test"), "yes");
    assert_string_equal(hdr(&r, "Content-Type"), "application/json");
    assert_true(json_object_get_boolean(json_object_object_get(o, "log_id_ok")));
    json_object_put(o);
    reply_free(&r);

    /* A literal segment beats a capture, whatever the table order. */
    do_req("GET", "/v2.1/servers/detail", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "detail");
    assert_string_equal(hdr(&r, "Content-Type"), "text/x-detail");
    assert_null(strstr(r.headers.data, "text/plain"));
    reply_free(&r);

    /* One trailing slash is ignored; the root path routes too. */
    do_req("GET", "/v2.1/servers/abc/", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    o = body_json(&r);
    assert_string_equal(jstr(o, "id"), "abc");
    json_object_put(o);
    reply_free(&r);
    do_req("GET", "/", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    reply_free(&r);

    /* Captures are decoded exactly once: %20 -> ' ', %252F -> "%2F" (not '/'). */
    do_req("GET", "/v2.1/servers/a%20b", NULL, NULL, &r);
    o = body_json(&r);
    assert_string_equal(jstr(o, "id"), "a b");
    json_object_put(o);
    reply_free(&r);
    do_req("GET", "/v2.1/servers/x%252Fy", NULL, NULL, &r);
    o = body_json(&r);
    assert_string_equal(jstr(o, "id"), "x%2Fy");
    json_object_put(o);
    reply_free(&r);

    /* An encoded slash inside a capture is refused rather than matched elsewhere. */
    do_req("GET", "/v2.1/servers/a%2Fb", NULL, NULL, &r);
    assert_fault(&r, 400, "badRequest", NULL);
    reply_free(&r);

    /* Query arguments: decoded, '+' is a space, first occurrence wins. */
    do_req("GET", "/v2.1/servers?name=a%2Bb+c&name=second", NULL, NULL, &r);
    o = body_json(&r);
    assert_string_equal(jstr(o, "name"), "a+b c");
    assert_null(jstr(o, "id"));
    json_object_put(o);
    reply_free(&r);

    /* DELETE answers 204 with no body. */
    do_req("DELETE", "/v2.1/servers/abc", NULL, NULL, &r);
    assert_int_equal(r.status, 204);
    assert_int_equal(r.body.len, 0);
    assert_non_null(hdr(&r, "x-openstack-request-id"));
    reply_free(&r);

    /* HEAD follows GET routes without a body. */
    do_req("HEAD", "/v2.1/servers/abc", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body.len, 0);
    reply_free(&r);
}

static void test_not_found_and_method(void **state)
{
    reply r;
    const char *allow;

    (void)state;
    do_req("GET", "/v2.1/nothing", NULL, NULL, &r);
    assert_fault(&r, 404, "itemNotFound", "The resource could not be found.");
    assert_non_null(hdr(&r, "x-openstack-request-id"));
    reply_free(&r);

    do_req("GET", "/v2.1/servers/a/b/c/d", NULL, NULL, &r);
    assert_fault(&r, 404, "itemNotFound", NULL);
    reply_free(&r);

    do_req("PUT", "/v2.1/servers/abc", NULL, NULL, &r);
    assert_fault(&r, 405, "methodNotAllowed", NULL);
    allow = hdr(&r, "Allow");
    assert_non_null(allow);
    assert_non_null(strstr(allow, "GET"));
    assert_non_null(strstr(allow, "DELETE"));
    assert_null(strstr(allow, "PUT"));
    reply_free(&r);

    /* A handler that forgets to answer becomes a Nova-style 500. */
    do_req("GET", "/forget", NULL, NULL, &r);
    assert_fault(&r, 500, "computeFault", NULL);
    reply_free(&r);
}

static void test_body_limit(void **state)
{
    reply r;
    /* Well over the socket buffers, so an early answer races the upload. */
    size_t big_len = 4 * 1024 * 1024;
    _cleanup_free_ char *big = malloc(big_len);
    CURL *h = curl_easy_init();
    CURLcode cc;

    (void)state;
    assert_non_null(big);
    memset(big, 'a', big_len);
    /* Announced with Content-Length: refused up front. */
    cc = do_req_h(NULL, "POST", "/upload", NULL, big, big_len, 0, &r);
    assert_int_equal(cc, CURLE_OK);
    assert_fault(&r, 413, "requestEntityTooLarge", NULL);
    reply_free(&r);

    /* Chunked, so the size is only known while reading: consumed, then refused, and the
     * connection stays usable for the next request. */
    assert_non_null(h);
    cc = do_req_h(h, "POST", "/upload", NULL, NULL, 0, 5000, &r);
    assert_int_equal(cc, CURLE_OK);
    assert_fault(&r, 413, "requestEntityTooLarge", NULL);
    reply_free(&r);
    cc = do_req_h(h, "POST", "/upload", NULL, NULL, 0, 1000, &r);
    assert_int_equal(cc, CURLE_OK);
    assert_int_equal(r.status, 200);
    json_object *o = body_json(&r);
    assert_int_equal(json_object_get_int(json_object_object_get(o, "body_len")), 1000);
    json_object_put(o);
    assert_int_equal(r.num_connects, 0);
    reply_free(&r);
    curl_easy_cleanup(h);

    /* Exactly at the cap is accepted. */
    cc = do_req_h(NULL, "POST", "/upload", NULL, big, 1024, 0, &r);
    assert_int_equal(cc, CURLE_OK);
    assert_int_equal(r.status, 200);
    reply_free(&r);
}

static void test_json_bodies(void **state)
{
    reply r;
    const char *json_ct[] = {"Content-Type: application/json", NULL};
    const char *json_cs[] = {"Content-Type: application/json; charset=UTF-8", NULL};
    const char *text_ct[] = {"Content-Type: text/plain", NULL};
    json_object *o;

    (void)state;
    do_req("POST", "/json", text_ct, "{\"a\": 1}", &r);
    assert_fault(&r, 415, "unsupportedMediaType", NULL);
    reply_free(&r);

    do_req("POST", "/json", json_ct, "{\"a\": ", &r);
    assert_fault(&r, 400, "badRequest", NULL);
    reply_free(&r);

    do_req("POST", "/json", json_ct, "[1, 2]", &r);
    assert_fault(&r, 400, "badRequest", NULL);
    reply_free(&r);

    do_req("POST", "/json", json_ct, "", &r);
    assert_fault(&r, 400, "badRequest", "The request body is empty");
    reply_free(&r);

    do_req("POST", "/v2.1/servers/abc/action", json_cs, "{\"reboot\": {\"type\": \"SOFT\"}}", &r);
    assert_int_equal(r.status, 201);
    o = body_json(&r);
    assert_non_null(json_object_object_get(o, "reboot"));
    json_object_put(o);
    reply_free(&r);
}

static void test_request_id(void **state)
{
    reply r;
    const char *id;
    char first[64];
    const char *valid[] = {"X-OpenStack-Request-Id: req-0b9e8a48-6c1f-4b43-9c9b-2f5c1e7d9a10",
                           NULL};
    const char *invalid[] = {"X-OpenStack-Request-Id: req-not-a-uuid", NULL};
    json_object *o;

    (void)state;
    do_req("GET", "/v2.1/servers", NULL, NULL, &r);
    id = hdr(&r, "x-openstack-request-id");
    assert_non_null(id);
    assert_int_equal(strlen(id), 40);
    assert_true(strncmp(id, "req-", 4) == 0);
    assert_true(cl_uuid_valid(id + 4));
    o = body_json(&r);
    assert_string_equal(jstr(o, "request_id"), id);
    json_object_put(o);
    snprintf(first, sizeof(first), "%s", id);
    reply_free(&r);

    do_req("GET", "/v2.1/servers", NULL, NULL, &r);
    assert_string_not_equal(hdr(&r, "x-openstack-request-id"), first);
    reply_free(&r);

    do_req("GET", "/v2.1/servers", valid, NULL, &r);
    assert_string_equal(hdr(&r, "x-openstack-request-id"),
                        "req-0b9e8a48-6c1f-4b43-9c9b-2f5c1e7d9a10");
    reply_free(&r);

    /* A malformed incoming id is replaced, never echoed. */
    do_req("GET", "/v2.1/servers", invalid, NULL, &r);
    id = hdr(&r, "x-openstack-request-id");
    assert_non_null(id);
    assert_true(cl_uuid_valid(id + 4));
    reply_free(&r);
}

static void test_healthz(void **state)
{
    reply r;

    (void)state;
    g_healthy = true;
    do_req("GET", "/healthz", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "ok\n");
    assert_true(strncmp(hdr(&r, "Content-Type"), "text/plain", 10) == 0);
    reply_free(&r);

    g_healthy = false;
    do_req("GET", "/healthz", NULL, NULL, &r);
    g_healthy = true;
    assert_int_equal(r.status, 503);
    assert_non_null(strstr(r.body.data, "database unreachable"));
    reply_free(&r);
}

static void test_metrics(void **state)
{
    reply r;

    (void)state;
    /* Fresh server (per-test setup): counts are exact. */
    for (int i = 0; i < 3; i++) {
        do_req("GET", "/v2.1/servers", NULL, NULL, &r);
        reply_free(&r);
    }
    do_req("GET", "/missing", NULL, NULL, &r);
    reply_free(&r);
    do_req("GET", "/metrics", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_true(strncmp(hdr(&r, "Content-Type"), "text/plain; version=0.0.4", 25) == 0);
    assert_non_null(strstr(r.body.data,
                           "nube_http_requests_total{service=\"test\",method=\"GET\",code=\"200\"} 3\n"));
    assert_non_null(strstr(r.body.data,
                           "nube_http_requests_total{service=\"test\",method=\"GET\",code=\"404\"} 1\n"));
    assert_non_null(strstr(r.body.data,
                           "nube_http_request_duration_seconds_count{service=\"test\"} 4\n"));
    assert_non_null(strstr(r.body.data, "nube_http_request_duration_seconds_sum{service=\"test\"} "));
    /* The /metrics request itself is in flight while it renders. */
    assert_non_null(strstr(r.body.data, "nube_http_inflight_requests{service=\"test\"} 1\n"));
    assert_non_null(strstr(r.body.data, "# TYPE nube_http_requests_total counter\n"));
    assert_non_null(strstr(r.body.data, "nube_test_gauge 42\n"));
    reply_free(&r);
}

static void test_keepalive(void **state)
{
    reply r;
    CURL *h = curl_easy_init();
    CURLcode cc;

    (void)state;
    assert_non_null(h);
    cc = do_req_h(h, "GET", "/v2.1/servers", NULL, NULL, 0, 0, &r);
    assert_int_equal(cc, CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.num_connects, 1);
    reply_free(&r);
    /* Errors keep the connection too (no "Connection: close" on a 404). */
    cc = do_req_h(h, "GET", "/nope", NULL, NULL, 0, 0, &r);
    assert_int_equal(cc, CURLE_OK);
    assert_int_equal(r.status, 404);
    assert_int_equal(r.num_connects, 0);
    reply_free(&r);
    cc = do_req_h(h, "GET", "/v2.1/servers/x", NULL, NULL, 0, 0, &r);
    assert_int_equal(cc, CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.num_connects, 0);
    reply_free(&r);
    curl_easy_cleanup(h);
}

#define N_THREADS 8
#define N_PER_THREAD 25

static void *client_thread(void *arg)
{
    int *ok = arg;
    CURL *h = curl_easy_init();

    *ok = 0;
    for (int i = 0; h && i < N_PER_THREAD; i++) {
        reply r;
        char path[64];
        snprintf(path, sizeof(path), "/v2.1/servers/t%d", i);
        if (do_req_h(h, "GET", path, NULL, NULL, 0, 0, &r) == CURLE_OK && r.status == 200 &&
            r.body.data && strstr(r.body.data, "\"log_id_ok\":true") &&
            strstr(r.body.data, path + strlen("/v2.1/servers/")))
            (*ok)++;
        reply_free(&r);
    }
    curl_easy_cleanup(h);
    return NULL;
}

static void test_concurrent(void **state)
{
    pthread_t th[N_THREADS];
    int ok[N_THREADS];

    (void)state;
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, client_thread, &ok[i]), 0);
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(ok[i], N_PER_THREAD);
    }
}

typedef struct slow_client {
    long status;
    CURLcode cc;
    char body[16];
} slow_client;

static void *slow_thread(void *arg)
{
    slow_client *sc = arg;
    reply r;
    sc->cc = do_req_h(NULL, "GET", "/slow", NULL, NULL, 0, 0, &r);
    sc->status = r.status;
    snprintf(sc->body, sizeof(sc->body), "%s", r.body.data ? r.body.data : "");
    reply_free(&r);
    return NULL;
}

static void *stop_thread(void *arg)
{
    cl_http_server_stop(arg);
    return NULL;
}

static void test_stop_with_request_in_flight(void **state)
{
    cl_http_server *srv = *state;
    pthread_t client, stopper;
    slow_client sc = {0};
    struct timespec deadline;
    bool refused = false;
    reply r;

    *state = NULL; /* this test stops the server itself */
    slow_entered = slow_release = false;
    assert_int_equal(pthread_create(&client, NULL, slow_thread, &sc), 0);
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 5;
    pthread_mutex_lock(&slow_lock);
    while (!slow_entered)
        if (pthread_cond_timedwait(&slow_cond, &slow_lock, &deadline) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&slow_lock);
    assert_true(slow_entered);

    assert_int_equal(pthread_create(&stopper, NULL, stop_thread, srv), 0);
    /* Stop first closes the door: poll (with a deadline) until new connections fail. */
    for (int64_t end = cl_mono_ms() + 5000; cl_mono_ms() < end;) {
        CURLcode cc = do_req_h(NULL, "GET", "/healthz", NULL, NULL, 0, 0, &r);
        reply_free(&r);
        if (cc == CURLE_COULDNT_CONNECT) {
            refused = true;
            break;
        }
    }
    assert_true(refused);

    /* ...while the request in flight still completes normally. */
    pthread_mutex_lock(&slow_lock);
    slow_release = true;
    pthread_cond_broadcast(&slow_cond);
    pthread_mutex_unlock(&slow_lock);
    pthread_join(stopper, NULL);
    pthread_join(client, NULL);
    assert_int_equal(sc.cc, CURLE_OK);
    assert_int_equal(sc.status, 200);
    assert_string_equal(sc.body, "slow");
}

static void test_start_errors(void **state)
{
    cl_http_route bad[] = {{"GET", "no-slash", h_echo}};
    cl_http_opts opts = {.service = "bad", .bind_addr = "127.0.0.1", .routes = bad, .nroutes = 1};
    cl_http_server *srv = NULL;
    cl_error err;

    (void)state;
    assert_true(cl_http_server_start(&opts, &srv, &err) < 0);
    assert_null(srv);
    opts.routes = routes;
    opts.nroutes = CL_ARRAY_SIZE(routes);
    opts.bind_addr = "not-an-address";
    assert_true(cl_http_server_start(&opts, &srv, &err) < 0);
    assert_null(srv);
    /* The port of a running server is taken. */
    opts.bind_addr = "127.0.0.1";
    opts.port = g_port;
    assert_true(cl_http_server_start(&opts, &srv, &err) < 0);
    assert_null(srv);
    cl_http_server_stop(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_routing_captures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_found_and_method, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_bodies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_healthz, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_with_request_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_start_errors, setup, teardown),
    };
    int rc;

    /* TEST_VERBOSE=1 shows the access log and MHD's own messages. */
    cl_log_init("test_http_server", getenv("TEST_VERBOSE") ? CL_LOG_DEBUG : CL_LOG_WARN, false);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
