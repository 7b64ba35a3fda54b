/*
 * fuzz_http.c - the request path of libcloud/http_server.c: whatever bytes a client
 * sends on a connection to a nube service.
 *
 * One cl_http_server is started on 127.0.0.1 port 0 (first input) with a few routes
 * like a service's: captures, a JSON body, a nested capture route. Each input is sent
 * as-is over a fresh loopback TCP connection; the write side is then shut down and the
 * answer read until the server closes or goes quiet (short deadlines below), so a
 * request the server waits on cannot hang the fuzzer. The handlers themselves check what the server
 * promises them:
 *  - method and path are set, the body is NUL-terminated at body_len;
 *  - every capture is non-empty and contains neither '/' nor NUL;
 *  - cl_http_req_json() either gives an object or fills err;
 *  - the request id is "req-<uuid>".
 * On the client side: anything the server answers starts with an HTTP/1.x status line.
 * Sanitizer findings in the server's worker threads abort the process like any other.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "fuzz_common.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "util.h"

#define MAX_BODY 4096
/* How long the client waits: for the first byte of an answer (a server that has no
 * complete request waits for more input, until its 1 s connection timeout; we stop
 * earlier and close, which exercises the abort path), for more bytes once answers
 * flow (the server keeps the connection open after answering), and in all. */
#define FIRST_BYTE_MS 150
#define IDLE_MS 15
#define ANSWER_DEADLINE_MS 3000
#define ANSWER_MAX (64 * 1024)

static cl_http_server *srv;
static uint16_t port;

static void check_req(const cl_http_req *req)
{
    FUZZ_CHECK(req->method && req->method[0]);
    FUZZ_CHECK(req->path != NULL);
    FUZZ_CHECK(req->body != NULL && req->body[req->body_len] == '\0');
    FUZZ_CHECK(req->body_len <= MAX_BODY);
    FUZZ_CHECK(req->request_id && strlen(req->request_id) == 40 &&
               strncmp(req->request_id, "req-", 4) == 0 && cl_uuid_valid(req->request_id + 4));
    FUZZ_CHECK(req->nparams <= CL_HTTP_MAX_PARAMS);
    for (size_t i = 0; i < req->nparams; i++) {
        const char *v = req->param_values[i];
        FUZZ_CHECK(req->param_names[i] && v && v[0] && !strchr(v, '/'));
        FUZZ_CHECK(cl_http_req_param(req, req->param_names[i]) != NULL);
    }
    /* Accessors on names the request may or may not carry. */
    (void)cl_http_req_header(req, "Content-Type");
    (void)cl_http_req_header(req, "X-Auth-Token");
    (void)cl_http_req_query(req, "limit");
    (void)cl_http_req_query(req, "");
}

static void echo(const cl_http_req *req, cl_http_resp *resp, int status)
{
    json_object *o = json_object_new_object();
    for (size_t i = 0; i < req->nparams; i++)
        json_object_object_add(o, req->param_names[i],
                               json_object_new_string(req->param_values[i]));
    const char *q = cl_http_req_query(req, "marker");
    json_object_object_add(o, "marker", cl_json_str_or_null(q));
    json_object_object_add(o, "path", json_object_new_string(req->path));
    cl_http_resp_json(resp, status, o);
}

static void h_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    (void)ud;
    check_req(req);
    /* "/v1/things/detail" beats "/v1/things/{id}": no capture then. */
    FUZZ_CHECK(req->nparams <= 1);
    if (req->nparams == 1)
        FUZZ_CHECK(cl_http_req_param(req, "id") != NULL);
    /* The server, not the handler, keeps a header value from splitting the response. */
    const char *h = cl_http_req_header(req, "X-Echo");
    if (h)
        cl_http_resp_header(resp, "X-Echo", h);
    echo(req, resp, 200);
}

static void h_create(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    json_object *body = NULL;
    cl_error err = {0};

    (void)ud;
    check_req(req);
    int r = cl_http_req_json(req, &body, &err);
    if (r < 0) {
        fuzz_check_error(&err);
        cl_http_resp_error(resp, &err);
        return;
    }
    FUZZ_CHECK(r == 0 && json_object_is_type(body, json_type_object));
    const char *name = NULL;
    int64_t count = 0;
    r = cl_json_get_str_len(body, "thing.name", true, 1, 255, &name, &err);
    if (r == 0)
        r = cl_json_get_int_range(body, "thing.count", false, 0, 1000, &count, &err);
    if (r < 0) {
        fuzz_check_error(&err);
        json_object_put(body);
        cl_http_resp_error(resp, &err);
        return;
    }
    cl_http_resp_json(resp, 201, body); /* takes body over */
}

static void h_tag(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    (void)ud;
    check_req(req);
    FUZZ_CHECK(req->nparams == 2);
    echo(req, resp, 200);
}

static void h_delete(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    (void)ud;
    check_req(req);
    if (req->body_len % 2)
        return; /* no answer: the server must send its 500 itself */
    cl_http_resp_raw(resp, 204, "text/plain", "", 0);
}

static const cl_http_route routes[] = {
    {"GET", "/v1/things/{id}", h_show},
    {"GET", "/v1/things/detail", h_show},
    {"POST", "/v1/things", h_create},
    {"PUT", "/v1/things/{id}/tags/{tag}", h_tag},
    {"DELETE", "/v1/things/{id}", h_delete},
};

static void stop_server(void)
{
    cl_http_server_stop(srv);
    srv = NULL;
}

static void start_server(void)
{
    cl_http_opts opts = {
        .service = "fuzz",
        .bind_addr = "127.0.0.1",
        .port = 0,
        .max_body = MAX_BODY,
        .threads = 2,
        .conn_timeout_s = 1,
        .routes = routes,
        .nroutes = CL_ARRAY_SIZE(routes),
    };
    cl_error err = {0};

    cl_log_init("fuzz_http", CL_LOG_ERROR, false);
    if (cl_http_server_start(&opts, &srv, &err) < 0) {
        fprintf(stderr, "fuzz_http: cannot start the server: %s\n", err.message);
        abort();
    }
    port = cl_http_server_port(srv);
    atexit(stop_server);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    static char scratch[ANSWER_MAX];
    char head[16];
    size_t got = 0, off = 0;

    if (size > 64 * 1024)
        return 0;
    if (!srv)
        start_server();
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(fd >= 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        fprintf(stderr, "fuzz_http: connect: %s\n", strerror(errno));
        abort();
    }
    const int64_t end = now_ms() + ANSWER_DEADLINE_MS;
    int64_t deadline = end;
    /* Send what the server takes; it may close early (413, parse error): then stop. */
    while (off < size) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int64_t left = deadline - now_ms();
        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            break;
        ssize_t n = send(fd, data + off, size - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    shutdown(fd, SHUT_WR);
    int64_t first = now_ms() + FIRST_BYTE_MS;
    if (first < deadline)
        deadline = first;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int64_t left = deadline - now_ms();
        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            break;
        ssize_t n = recv(fd, scratch, sizeof(scratch), MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n <= 0)
            break;
        /* Only the start of the answer is checked; the rest is drained. */
        for (ssize_t i = 0; i < n && got < sizeof(head); i++)
            head[got++] = scratch[i];
        deadline = now_ms() + IDLE_MS;
        if (deadline > end)
            deadline = end;
    }
    close(fd);
    if (getenv("NUBE_FUZZ_HTTP_DEBUG"))
        fprintf(stderr, "fuzz_http: sent %zu of %zu bytes, answer starts '%.*s'\n", off, size,
                (int)got, head);
    if (got >= 8)
        FUZZ_CHECK(memcmp(head, "HTTP/1.", 7) == 0);
    return 0;
}
