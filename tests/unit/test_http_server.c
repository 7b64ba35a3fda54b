/*
 * test_http_server.c - the HTTP server over real loopback HTTP.
 *
 * Each test starts a cl_http_server on 127.0.0.1 with port 0 and talks to it with plain
 * libcurl (not cl_http_request) so it can look at the connection level: keep-alive reuse,
 * chunked uploads, raw headers. Covered: routing and captures (including %2F and
 * double-decoding traps), OpenStack-shaped 404/405/413/415/400/500 bodies, request ids,
 * /healthz, /metrics, concurrency and a clean stop while a request is in flight.
 *
 * Streaming routes run on a second server (thread per connection, max_body 1 MiB):
 * a 50 MiB upload arrives in order, piece by piece, while the client is still sending,
 * with flat memory (VmHWM); begin() answering from the headers (413 from Content-Length,
 * 401); chunk() refusing mid-way (answered after the body, connection reusable); abort()
 * when the client hangs up mid-body; and answers from a file descriptor with Range, whose
 * descriptors are closed afterwards.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <curl/curl.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>
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

/* ---- streaming routes ---- */

#define STREAM_BIG (50u * 1024 * 1024)
#define STREAM_LIMIT (100ull * 1024 * 1024) /* begin() refuses announced lengths above */
#define REFUSE_AFTER (1024u * 1024)

/* Byte at offset o of every upload: changes with o and with every MiB, so a chunk
 * delivered twice, skipped or out of order shows up. */
static unsigned char pattern_at(uint64_t o)
{
    return (unsigned char)(o % 251 + (o >> 20));
}

typedef struct stream_state {
    char id[64];
    uint64_t received;
    size_t chunks, max_chunk;
    bool bad_order, refused, log_id_ok;
} stream_state;

static atomic_int g_begins, g_ends, g_aborts, g_chunks_after_refusal;
static _Atomic uint64_t g_received;        /* bytes seen by chunk(), all streams */
static _Atomic uint64_t g_client_sent;     /* bytes the curl read callback handed out */
static _Atomic uint64_t g_sent_at_first_mib; /* g_client_sent when 1 MiB had arrived */

static void s_begin(const cl_http_req *req, cl_http_resp *resp, void *ud, void **stream)
{
    const char *id = cl_http_req_param(req, "id");
    const char *cl = cl_http_req_header(req, "Content-Length");
    const char *logid = cl_log_request_id();
    int64_t len = -1;
    stream_state *st;

    (void)ud;
    atomic_fetch_add(&g_begins, 1);
    if (id && strcmp(id, "deny") == 0) {
        cl_http_resp_errorf(resp, CL_E_UNAUTHORIZED, "No token");
        return;
    }
    if (cl && cl_parse_int64(cl, &len) == 0 && (uint64_t)len > STREAM_LIMIT) {
        cl_http_resp_errorf(resp, CL_E_TOO_LARGE, "Announced %" PRId64 " bytes", len);
        return;
    }
    st = calloc(1, sizeof(*st));
    assert_non_null(st);
    snprintf(st->id, sizeof(st->id), "%s", id ? id : "");
    st->log_id_ok = logid && strcmp(logid, req->request_id) == 0 && req->body_len == 0;
    *stream = st;
}

static int s_chunk(void *stream, const char *data, size_t len)
{
    stream_state *st = stream;

    if (st->refused) {
        atomic_fetch_add(&g_chunks_after_refusal, 1);
        return -1;
    }
    for (size_t i = 0; i < len && !st->bad_order; i++)
        st->bad_order = (unsigned char)data[i] != pattern_at(st->received + i);
    if (st->received < 1024 * 1024 && st->received + len >= 1024 * 1024)
        atomic_store(&g_sent_at_first_mib, atomic_load(&g_client_sent));
    st->received += len;
    st->chunks++;
    if (len > st->max_chunk)
        st->max_chunk = len;
    atomic_fetch_add(&g_received, len);
    if (strcmp(st->id, "refuse") == 0 && st->received > REFUSE_AFTER) {
        st->refused = true;
        return -1;
    }
    return 0;
}

static void s_end(void *stream, const cl_http_req *req, cl_http_resp *resp)
{
    stream_state *st = stream;
    json_object *o;

    atomic_fetch_add(&g_ends, 1);
    if (st->refused) {
        cl_http_resp_errorf(resp, CL_E_TOO_LARGE, "Refused after %" PRIu64 " bytes",
                            st->received);
    } else {
        o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_string(st->id));
        json_object_object_add(o, "bytes", json_object_new_int64((int64_t)st->received));
        json_object_object_add(o, "chunks", json_object_new_int64((int64_t)st->chunks));
        json_object_object_add(o, "max_chunk", json_object_new_int64((int64_t)st->max_chunk));
        json_object_object_add(o, "in_order", json_object_new_boolean(!st->bad_order));
        json_object_object_add(o, "log_id_ok",
                               json_object_new_boolean(st->log_id_ok &&
                                                       cl_log_request_id() &&
                                                       strcmp(cl_log_request_id(),
                                                              req->request_id) == 0));
        cl_http_resp_json(resp, 201, o);
    }
    free(st);
}

static void s_abort(void *stream)
{
    atomic_fetch_add(&g_aborts, 1);
    free(stream);
}

static char g_fd_name[64];       /* the temp file behind the fd responses */
static atomic_int g_fd_twice_closed;

/* GET /file: a 100 KiB temp file (already unlinked) answered from its descriptor. */
static void h_file(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    char name[64];
    unsigned char data[100 * 1024];
    const char *range = cl_http_req_header(req, "Range");
    int fd;

    (void)ud;
    snprintf(name, sizeof(name), "/tmp/nube-http-fd-XXXXXX");
    fd = mkstemp(name);
    assert_true(fd >= 0);
    snprintf(g_fd_name, sizeof(g_fd_name), "%s", name);
    unlink(name);
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = pattern_at(i);
    assert_int_equal(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
    if (cl_http_req_query(req, "twice")) {
        /* Answered already: the fd is closed at once, never leaked. */
        cl_http_resp_raw(resp, 200, "text/plain", "first", 5);
        cl_http_resp_fd(resp, 200, fd, 0, sizeof(data));
        atomic_store(&g_fd_twice_closed, fcntl(fd, F_GETFD) == -1 && errno == EBADF);
        return;
    }
    if (range && strcmp(range, "bytes=100-199") == 0) {
        cl_http_resp_header(resp, "Content-Range", "bytes 100-199/102400");
        cl_http_resp_fd(resp, 206, fd, 100, 100);
    } else {
        cl_http_resp_fd(resp, 200, fd, 0, sizeof(data));
        cl_http_resp_header(resp, "Content-MD5", "not-really-md5");
    }
    cl_http_resp_header(resp, "Accept-Ranges", "bytes");
}

static const cl_http_stream_route stream_routes[] = {
    {"PUT", "/stream/{id}", s_begin, s_chunk, s_end, s_abort},
};
static const cl_http_route stream_plain_routes[] = {
    {"PUT", "/buffered", h_echo},
    {"GET", "/file", h_file},
    {"GET", "/stream/{id}", h_echo},
};

static int setup_stream(void **state)
{
    cl_http_opts opts = {
        .service = "stream",
        .bind_addr = "127.0.0.1",
        .max_body = 1024 * 1024,
        .conn_timeout_s = 10,
        .routes = stream_plain_routes,
        .nroutes = CL_ARRAY_SIZE(stream_plain_routes),
        .stream_routes = stream_routes,
        .nstream_routes = CL_ARRAY_SIZE(stream_routes),
        .thread_per_connection = true,
        .max_connections = 16,
        .conn_buffer = 256 * 1024,
    };
    cl_http_server *srv = NULL;
    cl_error err;

    assert_int_equal(cl_http_server_start(&opts, &srv, &err), 0);
    g_port = cl_http_server_port(srv);
    atomic_store(&g_begins, 0);
    atomic_store(&g_ends, 0);
    atomic_store(&g_aborts, 0);
    atomic_store(&g_chunks_after_refusal, 0);
    atomic_store(&g_received, 0);
    atomic_store(&g_client_sent, 0);
    atomic_store(&g_sent_at_first_mib, 0);
    *state = srv;
    return 0;
}

/* The upload body: pattern bytes, counted as curl takes them. */
typedef struct pattern_src {
    uint64_t off, len;
} pattern_src;

static size_t pattern_read(char *p, size_t size, size_t n, void *ud)
{
    pattern_src *src = ud;
    size_t len = size * n;

    if (len > src->len - src->off)
        len = (size_t)(src->len - src->off);
    for (size_t i = 0; i < len; i++)
        p[i] = (char)pattern_at(src->off + i);
    src->off += len;
    atomic_fetch_add(&g_client_sent, len);
    return len;
}

/* PUT len pattern bytes to path on handle h (Content-Length known unless chunked). */
static CURLcode stream_put(CURL *h, const char *path, uint64_t len, bool chunked,
                           const char *extra, reply *out)
{
    char url[256];
    struct curl_slist *hl = NULL;
    pattern_src src = {0, len};
    CURLcode cc;

    memset(out, 0, sizeof(*out));
    snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", (unsigned)g_port, path);
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(h, CURLOPT_READFUNCTION, pattern_read);
    curl_easy_setopt(h, CURLOPT_READDATA, &src);
    if (chunked)
        hl = curl_slist_append(hl, "Transfer-Encoding: chunked");
    else
        curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
    hl = curl_slist_append(hl, extra ? extra : "Expect:");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, buf_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &out->body);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, buf_write);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &out->headers);
    cc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out->status);
    curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &out->num_connects);
    curl_slist_free_all(hl);
    return cc;
}

/* Peak resident memory of this process in KiB (VmHWM). */
static long vm_hwm_kib(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    char line[256];
    long kib = -1;

    assert_non_null(f);
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
            break;
    fclose(f);
    assert_true(kib > 0);
    return kib;
}

static int64_t jint(json_object *o, const char *key)
{
    json_object *v;
    assert_true(json_object_object_get_ex(o, key, &v));
    return json_object_get_int64(v);
}

static void test_stream_big_upload_flat(void **state)
{
    CURL *h = curl_easy_init();
    long hwm_before, hwm_after;
    json_object *o, *v;
    reply r;

    (void)state;
    assert_non_null(h);
    /* A warm-up upload, so one-time allocations (curl, MHD's thread) are in the baseline. */
    assert_int_equal(stream_put(h, "/stream/warm", 2 * 1024 * 1024, false, NULL, &r), CURLE_OK);
    assert_int_equal(r.status, 201);
    reply_free(&r);
    atomic_store(&g_client_sent, 0);

    hwm_before = vm_hwm_kib();
    assert_int_equal(stream_put(h, "/stream/big", STREAM_BIG, false, NULL, &r), CURLE_OK);
    hwm_after = vm_hwm_kib();
    assert_int_equal(r.status, 201);
    o = body_json(&r);
    assert_string_equal(jstr(o, "id"), "big");
    assert_int_equal(jint(o, "bytes"), STREAM_BIG);
    assert_true(json_object_object_get_ex(o, "in_order", &v) && json_object_get_boolean(v));
    assert_true(json_object_object_get_ex(o, "log_id_ok", &v) && json_object_get_boolean(v));
    /* Piece by piece: many chunks, none larger than the connection buffer (so nothing
     * was gathered), and larger than the 64 KiB default thanks to conn_buffer. */
    assert_true(jint(o, "chunks") > 100);
    assert_true(jint(o, "max_chunk") <= 256 * 1024);
    assert_true(jint(o, "max_chunk") > 64 * 1024);
    json_object_put(o);
    assert_non_null(hdr(&r, "x-openstack-request-id"));
    reply_free(&r);
    /* The first MiB reached the handler while most of the body was still unsent. */
    assert_true(atomic_load(&g_sent_at_first_mib) > 0);
    assert_true(atomic_load(&g_sent_at_first_mib) < STREAM_BIG / 2);
    if (hwm_after - hwm_before >= 20 * 1024)
        fail_msg("VmHWM grew by %ld KiB during a 50 MiB upload", hwm_after - hwm_before);

    /* Chunked (no Content-Length) streams too. */
    assert_int_equal(stream_put(h, "/stream/chunked", 3 * 1024 * 1024 + 17, true, NULL, &r),
                     CURLE_OK);
    assert_int_equal(r.status, 201);
    o = body_json(&r);
    assert_int_equal(jint(o, "bytes"), 3 * 1024 * 1024 + 17);
    assert_true(json_object_object_get_ex(o, "in_order", &v) && json_object_get_boolean(v));
    json_object_put(o);
    reply_free(&r);

    /* max_body still holds for the buffered routes of the same server (chunked, so the
     * 413 comes after the body and cannot race it), and a GET on the streaming pattern
     * is an ordinary buffered route. */
    assert_int_equal(stream_put(h, "/buffered", 2 * 1024 * 1024, true, NULL, &r), CURLE_OK);
    assert_fault(&r, 413, "requestEntityTooLarge", NULL);
    reply_free(&r);
    do_req("GET", "/stream/abc", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    o = body_json(&r);
    assert_string_equal(jstr(o, "id"), "abc");
    json_object_put(o);
    reply_free(&r);
    curl_easy_cleanup(h);
    assert_int_equal(atomic_load(&g_ends), 3);
    assert_int_equal(atomic_load(&g_aborts), 0);
}

static void test_stream_begin_answers(void **state)
{
    CURL *h = curl_easy_init();
    reply r;

    (void)state;
    assert_non_null(h);
    /* The client waits for "100 Continue" (as curl, python and Go do for big bodies);
     * the 413 comes instead, from the announced length, and no byte is sent. */
    assert_int_equal(stream_put(h, "/stream/huge", 200ull * 1024 * 1024, false,
                                "Expect: 100-continue", &r),
                     CURLE_OK);
    assert_fault(&r, 413, "requestEntityTooLarge", "Announced 209715200 bytes");
    assert_non_null(hdr(&r, "x-openstack-request-id"));
    reply_free(&r);
    assert_int_equal(atomic_load(&g_client_sent), 0);

    assert_int_equal(stream_put(h, "/stream/deny", 10, false, NULL, &r), CURLE_OK);
    assert_fault(&r, 401, "unauthorized", "No token");
    reply_free(&r);
    /* Unknown paths and methods are answered as usual. */
    assert_int_equal(stream_put(h, "/stream/a/b", 10, false, NULL, &r), CURLE_OK);
    assert_fault(&r, 404, "itemNotFound", NULL);
    reply_free(&r);
    curl_easy_cleanup(h);
    do_req("DELETE", "/stream/x", NULL, NULL, &r);
    assert_fault(&r, 405, "methodNotAllowed", NULL);
    assert_non_null(strstr(hdr(&r, "Allow"), "PUT"));
    reply_free(&r);

    assert_int_equal(atomic_load(&g_begins), 2);
    assert_int_equal(atomic_load(&g_received), 0);
    assert_int_equal(atomic_load(&g_ends), 0);
    assert_int_equal(atomic_load(&g_aborts), 0);
}

static void test_stream_chunk_refuses(void **state)
{
    CURL *h = curl_easy_init();
    reply r;

    (void)state;
    assert_non_null(h);
    assert_int_equal(stream_put(h, "/stream/refuse", 4 * 1024 * 1024, false, NULL, &r),
                     CURLE_OK);
    assert_fault(&r, 413, "requestEntityTooLarge", NULL);
    assert_non_null(strstr(r.body.data, "Refused after"));
    reply_free(&r);
    /* chunk() was not called again, end() answered, and the rest of the body was read,
     * so the connection serves the next request. */
    assert_int_equal(atomic_load(&g_chunks_after_refusal), 0);
    assert_true(atomic_load(&g_received) > REFUSE_AFTER);
    assert_true(atomic_load(&g_received) < 4 * 1024 * 1024);
    assert_int_equal(atomic_load(&g_ends), 1);
    assert_int_equal(atomic_load(&g_aborts), 0);
    assert_int_equal(stream_put(h, "/stream/after", 1000, false, NULL, &r), CURLE_OK);
    assert_int_equal(r.status, 201);
    assert_int_equal(r.num_connects, 0);
    reply_free(&r);
    curl_easy_cleanup(h);
}

static void test_stream_abort_on_disconnect(void **state)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(g_port)};
    static unsigned char body[256 * 1024];
    const char *head = "PUT /stream/cut HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n";
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int64_t deadline;
    reply r;

    (void)state;
    for (size_t i = 0; i < sizeof(body); i++)
        body[i] = pattern_at(i);
    assert_true(fd >= 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(write(fd, head, strlen(head)), (ssize_t)strlen(head));
    assert_int_equal(write(fd, body, sizeof(body)), (ssize_t)sizeof(body));
    deadline = cl_mono_ms() + 5000;
    while (atomic_load(&g_received) < sizeof(body) && cl_mono_ms() < deadline) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(atomic_load(&g_received), sizeof(body));
    /* Other clients are served meanwhile (the upload holds its own thread). */
    do_req("GET", "/healthz", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    assert_int_equal(atomic_load(&g_aborts), 0);

    close(fd); /* hang up mid-body */
    deadline = cl_mono_ms() + 5000;
    while (atomic_load(&g_aborts) == 0 && cl_mono_ms() < deadline) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(atomic_load(&g_aborts), 1);
    assert_int_equal(atomic_load(&g_ends), 0);
}

/* Does this process still hold a descriptor on the temp file of h_file? */
static bool fd_name_open(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    bool found = false;

    assert_non_null(d);
    while ((e = readdir(d)) && !found) {
        char link[300], target[300];
        ssize_t n;
        if (e->d_name[0] == '.')
            continue;
        snprintf(link, sizeof(link), "/proc/self/fd/%s", e->d_name);
        n = readlink(link, target, sizeof(target) - 1);
        if (n <= 0)
            continue;
        target[n] = '\0';
        found = strncmp(target, g_fd_name, strlen(g_fd_name)) == 0;
    }
    closedir(d);
    return found;
}

static void test_fd_response_range(void **state)
{
    const char *range[] = {"Range: bytes=100-199", NULL};
    int64_t deadline;
    reply r;

    (void)state;
    do_req("GET", "/file", range, NULL, &r);
    assert_int_equal(r.status, 206);
    assert_int_equal(r.body.len, 100);
    for (size_t i = 0; i < 100; i++)
        assert_int_equal((unsigned char)r.body.data[i], pattern_at(100 + i));
    assert_string_equal(hdr(&r, "Content-Range"), "bytes 100-199/102400");
    assert_string_equal(hdr(&r, "Accept-Ranges"), "bytes");
    assert_string_equal(hdr(&r, "Content-Type"), "application/octet-stream");
    assert_non_null(hdr(&r, "x-openstack-request-id"));
    reply_free(&r);

    do_req("GET", "/file", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body.len, 100 * 1024);
    for (size_t i = 0; i < r.body.len; i++)
        if ((unsigned char)r.body.data[i] != pattern_at(i))
            fail_msg("byte %zu differs", i);
    assert_string_equal(hdr(&r, "Content-MD5"), "not-really-md5");
    assert_string_equal(hdr(&r, "Accept-Ranges"), "bytes");
    reply_free(&r);
    /* HEAD: the headers of the GET, no body. */
    do_req("HEAD", "/file", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body.len, 0);
    reply_free(&r);

    /* The descriptors were closed once sent (polled: MHD frees after the last byte). */
    deadline = cl_mono_ms() + 5000;
    while (fd_name_open() && cl_mono_ms() < deadline) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_false(fd_name_open());

    do_req("GET", "/file?twice=1", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "first");
    assert_int_equal(atomic_load(&g_fd_twice_closed), 1);
    reply_free(&r);
}

static void test_stream_route_errors(void **state)
{
    cl_http_stream_route bad[] = {{"PUT", "/x", s_begin, NULL, s_end, NULL}};
    cl_http_opts opts = {.service = "bad", .bind_addr = "127.0.0.1", .stream_routes = bad,
                         .nstream_routes = 1};
    cl_http_server *srv = NULL;
    cl_error err;

    (void)state;
    /* chunk() is required. */
    assert_true(cl_http_server_start(&opts, &srv, &err) < 0);
    assert_null(srv);
    opts.stream_routes = NULL;
    assert_true(cl_http_server_start(&opts, &srv, &err) < 0);
    assert_null(srv);
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
        cmocka_unit_test_setup_teardown(test_stream_big_upload_flat, setup_stream, teardown),
        cmocka_unit_test_setup_teardown(test_stream_begin_answers, setup_stream, teardown),
        cmocka_unit_test_setup_teardown(test_stream_chunk_refuses, setup_stream, teardown),
        cmocka_unit_test_setup_teardown(test_stream_abort_on_disconnect, setup_stream,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fd_response_range, setup_stream, teardown),
        cmocka_unit_test_setup_teardown(test_stream_route_errors, setup_stream, teardown),
    };
    int rc;

    /* TEST_VERBOSE=1 shows the access log and MHD's own messages. */
    cl_log_init("test_http_server", getenv("TEST_VERBOSE") ? CL_LOG_DEBUG : CL_LOG_WARN, false);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
