/*
 * http_server.c - the HTTP server of every nube service, over libmicrohttpd (MHD).
 *
 * MHD runs a pool of worker threads (MHD_OPTION_THREAD_POOL_SIZE), each with its own
 * poll/epoll loop; handlers run on those threads. For every request MHD calls on_access()
 * several times: once when the headers are in (we allocate the request context there),
 * once per chunk of body (we buffer it, up to max_body), and a last time with no data,
 * where we route and call the service's handler. on_completed() runs when the response
 * has been sent or the connection died, and frees the context.
 *
 * Paths are decoded here, not by MHD: MHD's default unescaper would turn "%2F" into a
 * real '/' before we could split the path into segments, so "/servers/a%2Fb" would look
 * like a three-segment path. We install an identity unescaper, split the raw path on '/'
 * and percent-decode each segment once; a capture that decodes to something containing
 * '/' is refused. Query arguments are decoded once, at the first call, into the context.
 *
 * The answers OpenStack clients rely on are produced here: error bodies from
 * cl_error_to_json() ({"itemNotFound": {"code": 404, "message": ...}}), the
 * x-openstack-request-id header on every response, 404 / 405 (with Allow) for unrouted
 * requests, 413 for bodies over the cap and 500 computeFault when a handler forgets to
 * answer. /healthz and /metrics (Prometheus text format 0.0.4) are built in.
 *
 * Streaming routes (http.h) are routed at the first call instead of the last: when the
 * best route for the request is a streaming one, its begin() runs with the headers, each
 * body chunk goes straight to chunk() from MHD's read buffer, and end() answers at the
 * last call. Nothing of the body is kept here, so memory stays at MHD's per-connection
 * pool whatever the size of the upload. on_completed() calls abort() for a stream that
 * never got its end() (client gone, server stopping). A refused stream (chunk() < 0) is
 * answered only after the rest of the body was read and dropped: a response sent while
 * the client is still writing is often lost to a TCP reset, and the client would see
 * "connection reset" instead of the reason. Past STREAM_DISCARD_MAX we stop being polite
 * and close the connection.
 *
 * Responses from a file descriptor (cl_http_resp_fd) become MHD fd responses, which MHD
 * sends with sendfile(2). Streamed responses (cl_http_resp_stream) become MHD callback
 * responses of unknown size (chunked), pulled from the service's reader as the socket
 * drains, so an export of any size needs one block of memory.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "errors.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "util.h"

#define DEFAULT_MAX_BODY (1024 * 1024)
#define DEFAULT_THREADS 4
#define DEFAULT_CONN_TIMEOUT_S 30
#define MAX_SEGMENTS 32       /* path segments; deeper paths cannot match any route */
#define MAX_RESP_HEADERS 16   /* extra headers per response (http.h) */
#define MAX_QUERY_ARGS 64     /* query arguments kept per request; the rest are ignored */
#define MAX_ALLOW_METHODS 8   /* distinct methods listed in a 405's Allow header */
#define STOP_GRACE_MS 5000    /* how long stop waits for requests in flight */
#define REQUEST_ID_LEN 40     /* "req-" + 36-character UUID */
#define STREAM_BLOCK (64 * 1024) /* bytes asked of a cl_http_resp_stream reader at once */
#define CONN_MEMORY_LIMIT (64 * 1024) /* per-connection MHD pool: headers (tokens) fit */
#define MIN_CONN_MEMORY (16 * 1024)   /* below this, ordinary headers no longer fit */
#define DEFAULT_CONN_LIMIT_PER_THREAD 256 /* thread-per-connection: threads are the cost */
#define STREAM_DISCARD_MAX (64ULL * 1024 * 1024) /* body dropped after a refusal, at most (stream and plain routes) */

/* Methods with their own metrics series; anything else is counted as "OTHER". */
static const char *const metric_methods[] = {"GET",    "HEAD",    "POST", "PUT",
                                             "PATCH", "DELETE", "OPTIONS", "OTHER"};
#define N_METRIC_METHODS CL_ARRAY_SIZE(metric_methods)
#define MIN_STATUS 100
#define N_STATUS 500 /* 100..599 */

static const char msg_not_found[] = "The resource could not be found.";
static const char msg_fault[] =
    "The server has either erred or is incapable of performing the requested operation.";

typedef enum { BUILTIN_NONE, BUILTIN_HEALTHZ, BUILTIN_METRICS } builtin_kind;

/* A routing-table entry with its pattern split into segments once, at start. */
typedef struct route {
    const char *method;
    cl_http_handler_fn fn;
    const cl_http_stream_route *stream; /* non-NULL for a streaming route (fn unused) */
    builtin_kind builtin;
    char *buf;                    /* owned copy of the pattern, cut into segs */
    char *segs[MAX_SEGMENTS];
    bool capture[MAX_SEGMENTS];   /* segs[i] is a "{name}" capture (braces stripped) */
    size_t nsegs;
    size_t nliterals;             /* more literal segments = more specific route */
} route;

struct cl_http_server {
    struct MHD_Daemon *daemon;
    char service[64];
    char log_module[80];          /* "http.<service>" */
    size_t max_body;
    route *routes;
    size_t nroutes;
    size_t nstream;               /* streaming routes (first in routes[]) */
    void *ud;
    void (*metrics_fn)(FILE *out, void *ud);
    bool (*health_fn)(char *reason, size_t len, void *ud);
    uint16_t port;

    /* Metrics: plain atomics so the hot path takes no lock. */
    _Atomic uint64_t requests[N_METRIC_METHODS][N_STATUS];
    _Atomic uint64_t duration_ns_sum;
    _Atomic uint64_t duration_count;

    /* Requests whose headers arrived and whose response is not yet sent; stop waits for
     * it to drop to 0. Guarded by lock so stop can sleep on idle. */
    pthread_mutex_t lock;
    pthread_cond_t idle;
    long inflight;
};

struct cl_http_resp {
    bool done;
    int status;
    char *body;                   /* malloc'd; handed to MHD, which frees it */
    size_t body_len;
    char content_type[96];
    bool content_type_set;        /* set by cl_http_resp_header(): wins over defaults */
    char *hdr_names[MAX_RESP_HEADERS];
    char *hdr_values[MAX_RESP_HEADERS];
    size_t nheaders;
    bool has_fd;                  /* answer from fd (owned until handed to MHD) */
    int fd;
    uint64_t fd_offset, fd_len;
    struct resp_stream *stream;   /* cl_http_resp_stream (owned until handed to MHD) */
};

/* A streamed body: the service's reader and its state. */
struct resp_stream {
    cl_http_read_fn read_fn;
    void *ud;
    void (*free_fn)(void *ud);
};

/* Decoded path segments of one request. */
typedef struct path_segs {
    char *raw;                /* owned copy of the raw path, cut at '/' */
    char *dec[MAX_SEGMENTS];  /* owned decoded segments */
    size_t dec_len[MAX_SEGMENTS];
    size_t n;
} path_segs;

/* Per-request state, from the first on_access() call to on_completed(). The public
 * cl_http_req is embedded so accessors can find the decoded query arguments. */
typedef struct req_ctx {
    cl_http_req req;
    cl_http_server *srv;
    struct timespec start;
    char request_id[REQUEST_ID_LEN + 1];
    char *body;
    size_t body_len, body_cap;
    bool too_large;               /* body exceeded max_body: no longer stored */
    bool answered;                /* a response was queued (metrics taken) */
    char *qnames[MAX_QUERY_ARGS];
    char *qvalues[MAX_QUERY_ARGS];
    size_t nquery;
    /* Streaming requests only: routed at the first call, so the path captures and the
     * decoded path must live as long as the request. */
    const route *stream_route;
    void *stream;                 /* begin()'s state */
    bool stream_closed;           /* end() ran, or begin() answered without a stream */
    bool stream_refused;          /* chunk() < 0: the rest of the body is dropped */
    uint64_t discarded;
    char *path;
    path_segs ps;
} req_ctx;

static req_ctx *ctx_of(const cl_http_req *req)
{
    return (req_ctx *)((char *)req - offsetof(req_ctx, req));
}

/* ---- small helpers ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode s into a new string; malformed escapes are kept verbatim (as MHD does).
 * *out_len gets the decoded length, which may include NUL bytes from "%00". */
static char *pct_decode(const char *s, size_t len, size_t *out_len)
{
    char *out = malloc(len + 1);
    size_t o = 0;

    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < len && (hi = hexval(s[i + 1])) >= 0 && (lo = hexval(s[i + 2])) >= 0) {
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    if (out_len)
        *out_len = o;
    return out;
}

static double elapsed_s(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

static size_t metric_method_index(const char *method)
{
    for (size_t i = 0; i + 1 < N_METRIC_METHODS; i++)
        if (strcmp(method, metric_methods[i]) == 0)
            return i;
    return N_METRIC_METHODS - 1;
}

static bool valid_request_id(const char *s)
{
    return s && strlen(s) == REQUEST_ID_LEN && strncmp(s, "req-", 4) == 0 &&
           cl_uuid_valid(s + 4);
}

/* True when a header field may go on the wire as-is (no CR/LF injection). */
static bool header_text_ok(const char *s, bool is_name)
{
    if (!s || (is_name && !*s))
        return false;
    for (const char *p = s; *p; p++) {
        if (*p == '\r' || *p == '\n')
            return false;
        if (is_name && (*p == ':' || *p == ' ' || *p == '\t'))
            return false;
    }
    return true;
}

/* ---- responses ---- */

static void resp_reset(cl_http_resp *resp)
{
    free(resp->body);
    resp->body = NULL;
    if (resp->has_fd) {
        close(resp->fd);
        resp->has_fd = false;
    }
    if (resp->stream) {
        if (resp->stream->free_fn)
            resp->stream->free_fn(resp->stream->ud);
        free(resp->stream);
        resp->stream = NULL;
    }
    for (size_t i = 0; i < resp->nheaders; i++) {
        free(resp->hdr_names[i]);
        free(resp->hdr_values[i]);
    }
    resp->nheaders = 0;
}

/* Common part of the responders: a handler answers once; a second answer is a bug in
 * the handler, which we log and ignore so the first answer goes out intact. */
static bool resp_claim(cl_http_resp *resp)
{
    if (resp->done) {
        cl_debug("http", "handler answered twice; keeping the first response (%d)",
                 resp->status);
        return false;
    }
    resp->done = true;
    return true;
}

/* MHD's content reader over a cl_http_read_fn: 0 from the service is the end. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct resp_stream *st = cls;
    (void)pos;
    ssize_t n = st->read_fn(st->ud, buf, max);
    if (n == 0)
        return MHD_CONTENT_READER_END_OF_STREAM;
    if (n < 0 || (size_t)n > max)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    return n;
}

static void stream_free(void *cls)
{
    struct resp_stream *st = cls;
    if (st->free_fn)
        st->free_fn(st->ud);
    free(st);
}

/**
 * cl_http_resp_stream - answer with a body produced while it is sent (see http.h).
 * @resp: the response handed to the handler
 * @status: HTTP status
 * @content_type: value of Content-Type, or NULL for none
 * @read_fn: fills the next piece of the body; 0 ends it, < 0 aborts the connection
 * @ud: the reader's state, passed to read_fn and free_fn
 * @free_fn: releases ud once (may be NULL); also called at once when refused
 */
void cl_http_resp_stream(cl_http_resp *resp, int status, const char *content_type,
                         cl_http_read_fn read_fn, void *ud, void (*free_fn)(void *ud))
{
    struct resp_stream *st;

    if (!resp_claim(resp)) {
        if (free_fn)
            free_fn(ud);
        return;
    }
    st = calloc(1, sizeof(*st));
    if (!st || !read_fn) {
        free(st);
        if (free_fn)
            free_fn(ud);
        resp->status = 500;
        resp->content_type[0] = '\0';
        return;
    }
    st->read_fn = read_fn;
    st->ud = ud;
    st->free_fn = free_fn;
    resp->status = status;
    resp->stream = st;
    if (!resp->content_type_set) {
        if (content_type && header_text_ok(content_type, false))
            cl_strlcpy(resp->content_type, content_type, sizeof(resp->content_type));
        else
            resp->content_type[0] = '\0';
    }
}

/**
 * cl_http_resp_raw - answer with raw bytes (copied) and a content type.
 * @resp: the response handed to the handler
 * @status: HTTP status (100..599, else 500 is sent)
 * @content_type: value of Content-Type, or NULL for none
 * @data, @len: body bytes (may be NULL when len is 0)
 */
void cl_http_resp_raw(cl_http_resp *resp, int status, const char *content_type,
                      const void *data, size_t len)
{
    char *copy;

    if (!resp_claim(resp))
        return;
    copy = malloc(len ? len : 1);
    if (!copy) {
        /* Out of memory: an empty 500 is all we can still promise. */
        resp->status = 500;
        resp->content_type[0] = '\0';
        return;
    }
    if (len)
        memcpy(copy, data, len);
    resp->status = status;
    resp->body = copy;
    resp->body_len = len;
    /* A Content-Type set earlier with cl_http_resp_header() is the handler's choice. */
    if (!resp->content_type_set) {
        if (content_type && header_text_ok(content_type, false))
            cl_strlcpy(resp->content_type, content_type, sizeof(resp->content_type));
        else
            resp->content_type[0] = '\0';
    }
}

/**
 * cl_http_resp_fd - answer with len bytes of fd starting at offset; MHD sends them with
 * sendfile(2) when it can.
 * @resp: the response handed to the handler
 * @status: HTTP status (200, 206 ...)
 * @fd: an open, readable file; owned from now on (closed after the response, or at once
 *      when the handler already answered or fd is invalid)
 * @offset, @len: the slice to send; the file must hold it (MHD closes the connection
 *      early otherwise)
 * Content-Type defaults to application/octet-stream; headers added with
 * cl_http_resp_header() before or after this call go out with it (Content-Range ...).
 */
void cl_http_resp_fd(cl_http_resp *resp, int status, int fd, uint64_t offset, uint64_t len)
{
    if (!resp_claim(resp)) {
        if (fd >= 0)
            close(fd);
        return;
    }
    if (fd < 0 || offset > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX - offset) {
        if (fd >= 0)
            close(fd);
        cl_debug("http", "cl_http_resp_fd: invalid descriptor or range");
        resp->status = 500;
        resp->content_type[0] = '\0';
        return;
    }
    resp->status = status;
    resp->has_fd = true;
    resp->fd = fd;
    resp->fd_offset = offset;
    resp->fd_len = len;
    if (!resp->content_type_set)
        cl_strlcpy(resp->content_type, "application/octet-stream", sizeof(resp->content_type));
}

static void resp_json_typed(cl_http_resp *resp, int status, json_object *body,
                            const char *content_type)
{
    const char *text;

    if (!body) {
        /* Nova sends Content-Type: application/json even on an empty 202/204. */
        cl_http_resp_raw(resp, status, content_type, NULL, 0);
        return;
    }
    text = cl_json_dump(body);
    cl_http_resp_raw(resp, status, content_type, text, text ? strlen(text) : 0);
    json_object_put(body);
}

/**
 * cl_http_resp_json - answer with a JSON document.
 * @resp: the response handed to the handler
 * @status: HTTP status
 * @body: JSON body; ownership is taken (released here); NULL for an empty body
 */
void cl_http_resp_json(cl_http_resp *resp, int status, json_object *body)
{
    resp_json_typed(resp, status, body, "application/json");
}

/**
 * cl_http_resp_error - answer with the OpenStack error body of err and its status,
 * e.g. 404 {"itemNotFound": {"code": 404, "message": "..."}}.
 */
void cl_http_resp_error(cl_http_resp *resp, const cl_error *err)
{
    cl_error fallback;

    if (!err || err->code <= CL_E_OK || err->code >= CL_E_MAX) {
        /* An error without a code is a bug in the caller; still answer like Nova. */
        fallback.code = CL_E_INTERNAL;
        cl_strlcpy(fallback.message, msg_fault, sizeof(fallback.message));
        err = &fallback;
    }
    /* Nova's error responses say charset explicitly (see the reference exchanges). */
    resp_json_typed(resp, cl_error_http_status(err->code), cl_error_to_json(err),
                    "application/json; charset=UTF-8");
}

/**
 * cl_http_resp_errorf - format an error of the given catalogue code and answer with it.
 */
void cl_http_resp_errorf(cl_http_resp *resp, cl_errcode code, const char *fmt, ...)
{
    cl_error err;
    va_list ap;

    err.code = code;
    va_start(ap, fmt);
    vsnprintf(err.message, sizeof(err.message), fmt, ap);
    va_end(ap);
    cl_http_resp_error(resp, &err);
}

/**
 * cl_http_resp_header - add a response header (name and value copied). Up to 16 per
 * response; names or values with CR/LF are refused (header injection). Repeated names
 * are sent repeatedly (Nova sends Vary twice).
 */
void cl_http_resp_header(cl_http_resp *resp, const char *name, const char *value)
{
    char *n, *v;

    if (!header_text_ok(name, true) || !header_text_ok(value, false)) {
        cl_debug("http", "refusing malformed response header");
        return;
    }
    if (strcasecmp(name, "Content-Type") == 0) {
        /* One Content-Type per response: this overrides the responder's default. */
        cl_strlcpy(resp->content_type, value, sizeof(resp->content_type));
        resp->content_type_set = true;
        return;
    }
    if (resp->nheaders >= MAX_RESP_HEADERS) {
        cl_debug("http", "too many response headers; dropping '%s'", name);
        return;
    }
    n = strdup(name);
    v = strdup(value);
    if (!n || !v) {
        free(n);
        free(v);
        return;
    }
    resp->hdr_names[resp->nheaders] = n;
    resp->hdr_values[resp->nheaders] = v;
    resp->nheaders++;
}

/* ---- request accessors ---- */

/**
 * cl_http_req_header - value of a request header (name case-insensitive) or NULL.
 * Borrowed: valid during the handler call.
 */
const char *cl_http_req_header(const cl_http_req *req, const char *name)
{
    if (!req || !req->conn || !name)
        return NULL;
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

/**
 * cl_http_req_query - first value of a query argument (percent-decoded, '+' as space),
 * "" for a bare "?flag", or NULL when absent. Borrowed: valid during the handler call.
 */
const char *cl_http_req_query(const cl_http_req *req, const char *name)
{
    const req_ctx *ctx;

    if (!req || !req->conn || !name)
        return NULL;
    ctx = ctx_of(req);
    for (size_t i = 0; i < ctx->nquery; i++)
        if (strcmp(ctx->qnames[i], name) == 0)
            return ctx->qvalues[i];
    return NULL;
}

/**
 * cl_http_req_param - a "{name}" path capture (decoded) or NULL.
 */
const char *cl_http_req_param(const cl_http_req *req, const char *name)
{
    if (!req || !name)
        return NULL;
    for (size_t i = 0; i < req->nparams; i++)
        if (req->param_names[i] && strcmp(req->param_names[i], name) == 0)
            return req->param_values[i];
    return NULL;
}

/**
 * cl_http_req_json - parse the request body as a JSON object.
 * Returns 0 with a new reference in *out (caller owns it), or a negative errno with err
 * filled: 415 unsupportedMediaType when a Content-Type other than application/json is
 * given, 400 badRequest for an empty or malformed body or a non-object.
 */
int cl_http_req_json(const cl_http_req *req, json_object **out, cl_error *err)
{
    const char *ct = cl_http_req_header(req, "Content-Type");

    if (ct) {
        static const char json_type[] = "application/json";
        size_t n = sizeof(json_type) - 1;
        /* Accept parameters ("; charset=UTF-8") but not "application/jsonfoo". */
        if (strncasecmp(ct, json_type, n) != 0 ||
            (ct[n] != '\0' && ct[n] != ';' && ct[n] != ' ' && ct[n] != '\t'))
            return cl_error_set(err, CL_E_UNSUPPORTED_MEDIA,
                                "Content-Type '%.100s' is not supported; send "
                                "application/json",
                                ct);
    }
    if (!req->body || req->body_len == 0)
        return cl_error_set(err, CL_E_BAD_REQUEST, "The request body is empty");
    return cl_json_parse_object(req->body, req->body_len, out, err);
}

/* ---- built-in endpoints ---- */

static void builtin_healthz(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    cl_http_server *srv = ud;
    char reason[256] = "";

    (void)req;
    if (srv->health_fn && !srv->health_fn(reason, sizeof(reason), srv->ud)) {
        char line[300];
        int n = snprintf(line, sizeof(line), "%s\n", reason[0] ? reason : "unhealthy");
        size_t len = n < 0 ? 0 : (size_t)n >= sizeof(line) ? sizeof(line) - 1 : (size_t)n;
        cl_http_resp_raw(resp, 503, "text/plain; charset=utf-8", line, len);
        return;
    }
    cl_http_resp_raw(resp, 200, "text/plain; charset=utf-8", "ok\n", 3);
}

/* Write a label value with Prometheus escaping (backslash, quote, newline). */
static void prom_label(FILE *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            fputc('\\', out), fputc(*s, out);
        else if (*s == '\n')
            fputs("\\n", out);
        else
            fputc(*s, out);
    }
}

static void builtin_metrics(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    cl_http_server *srv = ud;
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    long inflight;

    (void)req;
    if (!out) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot build metrics");
        return;
    }
    fputs("# HELP nube_http_requests_total HTTP requests answered, by method and status.\n"
          "# TYPE nube_http_requests_total counter\n",
          out);
    for (size_t m = 0; m < N_METRIC_METHODS; m++) {
        for (size_t s = 0; s < N_STATUS; s++) {
            uint64_t n = atomic_load(&srv->requests[m][s]);
            if (!n)
                continue;
            fputs("nube_http_requests_total{service=\"", out);
            prom_label(out, srv->service);
            fprintf(out, "\",method=\"%s\",code=\"%zu\"} %" PRIu64 "\n", metric_methods[m],
                    s + MIN_STATUS, n);
        }
    }
    fputs("# HELP nube_http_request_duration_seconds Time from request headers to response.\n"
          "# TYPE nube_http_request_duration_seconds summary\n"
          "nube_http_request_duration_seconds_sum{service=\"",
          out);
    prom_label(out, srv->service);
    fprintf(out, "\"} %.6f\n", (double)atomic_load(&srv->duration_ns_sum) / 1e9);
    fputs("nube_http_request_duration_seconds_count{service=\"", out);
    prom_label(out, srv->service);
    fprintf(out, "\"} %" PRIu64 "\n", atomic_load(&srv->duration_count));

    pthread_mutex_lock(&srv->lock);
    inflight = srv->inflight;
    pthread_mutex_unlock(&srv->lock);
    fputs("# HELP nube_http_inflight_requests Requests being received, handled or sent.\n"
          "# TYPE nube_http_inflight_requests gauge\n"
          "nube_http_inflight_requests{service=\"",
          out);
    prom_label(out, srv->service);
    fprintf(out, "\"} %ld\n", inflight);

    if (srv->metrics_fn)
        srv->metrics_fn(out, srv->ud);
    if (fclose(out) != 0 || !text) {
        free(text);
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot build metrics");
        return;
    }
    cl_http_resp_raw(resp, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

/* ---- routing ---- */

static void routes_free(route *routes, size_t n)
{
    if (!routes)
        return;
    for (size_t i = 0; i < n; i++)
        free(routes[i].buf);
    free(routes);
}

/* Split "/a/{b}/c/" into segments in place; a trailing slash is ignored and "/" has
 * none. Returns the count, or -E2BIG beyond MAX_SEGMENTS. */
static int split_path(char *path, char **segs)
{
    size_t n = 0, len;
    char *p;

    while (*path == '/')
        path++;
    len = strlen(path);
    if (len && path[len - 1] == '/')
        path[len - 1] = '\0';
    if (!*path)
        return 0;
    p = path;
    for (;;) {
        char *slash = strchr(p, '/');
        if (n >= MAX_SEGMENTS)
            return -E2BIG;
        segs[n++] = p;
        if (!slash)
            break;
        *slash = '\0';
        p = slash + 1;
    }
    return (int)n;
}

static int route_compile(route *r, const char *method, const char *pattern,
                         cl_http_handler_fn fn, const cl_http_stream_route *stream,
                         builtin_kind builtin, cl_error *err)
{
    size_t ncaptures = 0;
    int n;

    if (!method || !pattern || pattern[0] != '/' ||
        (stream ? !stream->begin || !stream->chunk || !stream->end : !fn)) {
        cl_error_set(err, CL_E_INTERNAL, "Invalid HTTP route '%s %s'", method ? method : "?",
                     pattern ? pattern : "?");
        return -EINVAL;
    }
    r->method = method;
    r->fn = fn;
    r->stream = stream;
    r->builtin = builtin;
    r->buf = strdup(pattern);
    if (!r->buf)
        return -ENOMEM;
    n = split_path(r->buf, r->segs);
    if (n < 0) {
        cl_error_set(err, CL_E_INTERNAL, "HTTP route '%s' has too many segments", pattern);
        return -EINVAL;
    }
    r->nsegs = (size_t)n;
    for (size_t i = 0; i < r->nsegs; i++) {
        char *s = r->segs[i];
        size_t len = strlen(s);
        if (len >= 3 && s[0] == '{' && s[len - 1] == '}') {
            s[len - 1] = '\0';
            r->segs[i] = s + 1;
            r->capture[i] = true;
            if (++ncaptures > CL_HTTP_MAX_PARAMS) {
                cl_error_set(err, CL_E_INTERNAL, "HTTP route '%s' has too many captures",
                             pattern);
                return -EINVAL;
            }
        } else {
            r->nliterals++;
        }
    }
    return 0;
}

static bool method_matches(const char *route_method, const char *method)
{
    if (strcmp(route_method, method) == 0)
        return true;
    /* HEAD is GET without the body (RFC 9110 9.3.2); MHD drops the body for us. */
    return strcmp(method, "HEAD") == 0 && strcmp(route_method, "GET") == 0;
}

static void path_segs_free(path_segs *ps)
{
    free(ps->raw);
    for (size_t i = 0; i < ps->n; i++)
        free(ps->dec[i]);
}

static int path_segs_parse(const char *url, path_segs *ps)
{
    char *raw[MAX_SEGMENTS];
    int n;

    ps->n = 0;
    ps->raw = strdup(url);
    if (!ps->raw)
        return -ENOMEM;
    n = split_path(ps->raw, raw);
    if (n < 0)
        return n;
    for (int i = 0; i < n; i++) {
        ps->dec[i] = pct_decode(raw[i], strlen(raw[i]), &ps->dec_len[i]);
        if (!ps->dec[i])
            return -ENOMEM;
        ps->n++;
    }
    return 0;
}

/* Find the route for (method, path). Returns the route, or NULL with *out_path_known
 * telling 405 from 404 and allow[] listing the methods the path does have. */
static const route *route_find(const cl_http_server *srv, const char *method,
                               const path_segs *ps, bool *out_path_known,
                               const char **allow, size_t *nallow)
{
    const route *best = NULL;

    *out_path_known = false;
    *nallow = 0;
    for (size_t i = 0; i < srv->nroutes; i++) {
        const route *r = &srv->routes[i];
        bool ok = r->nsegs == ps->n;
        for (size_t s = 0; ok && s < ps->n; s++) {
            if (r->capture[s])
                ok = ps->dec_len[s] > 0;
            else
                ok = ps->dec_len[s] == strlen(r->segs[s]) && strcmp(r->segs[s], ps->dec[s]) == 0;
        }
        if (!ok)
            continue;
        *out_path_known = true;
        if (method_matches(r->method, method)) {
            /* "/servers/detail" beats "/servers/{id}": prefer more literal segments. */
            if (!best || r->nliterals > best->nliterals)
                best = r;
            continue;
        }
        bool seen = false;
        for (size_t a = 0; a < *nallow; a++)
            seen |= strcmp(allow[a], r->method) == 0;
        if (!seen && *nallow < MAX_ALLOW_METHODS)
            allow[(*nallow)++] = r->method;
    }
    return best;
}

/* ---- MHD callbacks ---- */

static void account(cl_http_server *srv, req_ctx *ctx, const char *method, const char *url,
                    int status)
{
    double secs = elapsed_s(&ctx->start);
    size_t s = status >= MIN_STATUS && status < MIN_STATUS + N_STATUS
                   ? (size_t)(status - MIN_STATUS)
                   : 500 - MIN_STATUS;

    /* Counted when the response is queued, so a client that has its answer is sure to
     * see it counted in /metrics. */
    atomic_fetch_add(&srv->requests[metric_method_index(method)][s], 1);
    atomic_fetch_add(&srv->duration_ns_sum, (uint64_t)(secs * 1e9));
    atomic_fetch_add(&srv->duration_count, 1);
    ctx->answered = true;
    /* The raw URL, not the decoded path: it cannot carry control characters into the log. */
    cl_info(srv->log_module, "%s %s %d %.3fms", method, url, status, secs * 1e3);
}

static enum MHD_Result queue(cl_http_server *srv, req_ctx *ctx, struct MHD_Connection *conn,
                             const char *method, const char *url, cl_http_resp *resp)
{
    struct MHD_Response *r;
    enum MHD_Result ret;
    int status = resp->status;

    if (status < MIN_STATUS || status >= MIN_STATUS + N_STATUS)
        status = 500;
    if (resp->has_fd) {
        r = MHD_create_response_from_fd_at_offset64(resp->fd_len, resp->fd,
                                                    resp->fd_offset);
        if (r)
            resp->has_fd = false; /* MHD closes the fd when it destroys the response */
    } else if (resp->stream) {
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_read,
                                              resp->stream, stream_free);
        if (r)
            resp->stream = NULL; /* MHD calls stream_free when it destroys the response */
    } else {
        r = MHD_create_response_from_buffer(resp->body_len, resp->body,
                                            MHD_RESPMEM_MUST_FREE);
        if (r)
            resp->body = NULL; /* MHD owns it now */
    }
    if (!r) {
        resp_reset(resp);
        return MHD_NO; /* MHD closes the connection */
    }
    MHD_add_response_header(r, "x-openstack-request-id", ctx->request_id);
    if (resp->content_type[0])
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, resp->content_type);
    for (size_t i = 0; i < resp->nheaders; i++)
        if (MHD_add_response_header(r, resp->hdr_names[i], resp->hdr_values[i]) != MHD_YES)
            cl_debug("http", "MHD refused response header '%s'", resp->hdr_names[i]);
    account(srv, ctx, method, url, status);
    ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    resp_reset(resp);
    return ret;
}

static enum MHD_Result queue_error(cl_http_server *srv, req_ctx *ctx,
                                   struct MHD_Connection *conn, const char *method,
                                   const char *url, cl_errcode code, const char *msg)
{
    cl_http_resp resp = {0};
    cl_http_resp_errorf(&resp, code, "%s", msg);
    return queue(srv, ctx, conn, method, url, &resp);
}

/* 405 with the methods the path does support in Allow (RFC 9110 15.5.6). */
static enum MHD_Result queue_not_allowed(cl_http_server *srv, req_ctx *ctx,
                                         struct MHD_Connection *conn, const char *method,
                                         const char *url, const char *const *allow,
                                         size_t nallow)
{
    cl_http_resp resp = {0};
    char allow_hdr[128] = "";

    for (size_t i = 0; i < nallow; i++) {
        size_t used = strlen(allow_hdr);
        snprintf(allow_hdr + used, sizeof(allow_hdr) - used, "%s%s", i ? ", " : "", allow[i]);
    }
    cl_http_resp_errorf(&resp, CL_E_METHOD_NOT_ALLOWED,
                        "The method %.32s is not allowed for this resource.", method);
    cl_http_resp_header(&resp, "Allow", allow_hdr);
    return queue(srv, ctx, conn, method, url, &resp);
}

static enum MHD_Result collect_query(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    req_ctx *ctx = cls;
    char *k, *v;

    (void)kind;
    if (!key || ctx->nquery >= MAX_QUERY_ARGS)
        return MHD_YES;
    k = pct_decode(key, strlen(key), NULL);
    v = pct_decode(value ? value : "", value ? strlen(value) : 0, NULL);
    if (!k || !v) {
        free(k);
        free(v);
        return MHD_YES;
    }
    ctx->qnames[ctx->nquery] = k;
    ctx->qvalues[ctx->nquery] = v;
    ctx->nquery++;
    return MHD_YES;
}

static void ctx_free(req_ctx *ctx)
{
    if (!ctx)
        return;
    free(ctx->body);
    free(ctx->path);
    path_segs_free(&ctx->ps);
    for (size_t i = 0; i < ctx->nquery; i++) {
        free(ctx->qnames[i]);
        free(ctx->qvalues[i]);
    }
    free(ctx);
}

/* First call for a request: context, request id, in-flight count, query arguments. */
static req_ctx *ctx_new(cl_http_server *srv, struct MHD_Connection *conn)
{
    req_ctx *ctx = calloc(1, sizeof(*ctx));
    const char *incoming;

    if (!ctx)
        return NULL;
    ctx->srv = srv;
    clock_gettime(CLOCK_MONOTONIC, &ctx->start);
    incoming = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-OpenStack-Request-Id");
    if (valid_request_id(incoming)) {
        /* Keep the caller's id so one request can be followed across services. */
        cl_strlcpy(ctx->request_id, incoming, sizeof(ctx->request_id));
    } else {
        char uuid[CL_UUID_LEN];
        cl_uuid_new(uuid);
        snprintf(ctx->request_id, sizeof(ctx->request_id), "req-%s", uuid);
    }
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect_query, ctx);
    pthread_mutex_lock(&srv->lock);
    srv->inflight++;
    pthread_mutex_unlock(&srv->lock);
    return ctx;
}

/* Append an upload chunk unless the body has outgrown max_body; past the cap we keep
 * reading (so the connection stays usable) but store nothing. */
static void body_append(cl_http_server *srv, req_ctx *ctx, const char *data, size_t len)
{
    if (ctx->too_large)
        return;
    if (len > srv->max_body - ctx->body_len) {
        ctx->too_large = true;
        free(ctx->body);
        ctx->body = NULL;
        ctx->body_len = ctx->body_cap = 0;
        return;
    }
    if (ctx->body_len + len + 1 > ctx->body_cap) {
        size_t cap = ctx->body_cap ? ctx->body_cap : 1024;
        while (cap < ctx->body_len + len + 1)
            cap *= 2;
        if (cap > srv->max_body + 1)
            cap = srv->max_body + 1;
        char *nb = realloc(ctx->body, cap);
        if (!nb) {
            /* Treat exhaustion like an oversize body: refuse rather than truncate. */
            ctx->too_large = true;
            return;
        }
        ctx->body = nb;
        ctx->body_cap = cap;
    }
    memcpy(ctx->body + ctx->body_len, data, len);
    ctx->body_len += len;
    ctx->body[ctx->body_len] = '\0';
}

/* Fill the captures of route r from the decoded segments of ps (which must outlive the
 * request's use of req). -EINVAL with msg when a capture would smuggle extra path. */
static int bind_params(cl_http_req *req, const route *r, const path_segs *ps, char *msg,
                       size_t msglen)
{
    req->nparams = 0;
    for (size_t s = 0; s < ps->n; s++) {
        if (!r->capture[s])
            continue;
        /* A decoded '/' (from %2F) or NUL would let a capture smuggle extra path. */
        if (memchr(ps->dec[s], '/', ps->dec_len[s]) || strlen(ps->dec[s]) != ps->dec_len[s]) {
            snprintf(msg, msglen, "Invalid value for '%s' in the URL path", r->segs[s]);
            return -EINVAL;
        }
        req->param_names[req->nparams] = r->segs[s];
        req->param_values[req->nparams] = ps->dec[s];
        req->nparams++;
    }
    return 0;
}

static enum MHD_Result dispatch(cl_http_server *srv, req_ctx *ctx,
                                struct MHD_Connection *conn, const char *url,
                                const char *method)
{
    _cleanup_(path_segs_free) path_segs ps = {0};
    const char *allow[MAX_ALLOW_METHODS];
    size_t nallow = 0;
    bool path_known = false;
    const route *r;
    cl_http_req *req = &ctx->req;
    cl_http_resp resp = {0};
    _cleanup_free_ char *path = NULL;
    char msg[160];
    int rc;

    if (ctx->too_large) {
        snprintf(msg, sizeof(msg), "Request body is larger than the limit of %zu bytes",
                 srv->max_body);
        return queue_error(srv, ctx, conn, method, url, CL_E_TOO_LARGE, msg);
    }
    rc = path_segs_parse(url, &ps);
    if (rc == -ENOMEM)
        return MHD_NO; /* MHD closes the connection */
    r = rc < 0 ? NULL : route_find(srv, method, &ps, &path_known, allow, &nallow);
    if (!r) {
        if (rc == 0 && path_known)
            return queue_not_allowed(srv, ctx, conn, method, url, allow, nallow);
        return queue_error(srv, ctx, conn, method, url, CL_E_NOT_FOUND, msg_not_found);
    }
    if (r->stream) {
        /* Streaming routes are taken at the first call; reaching one here is a bug. */
        return queue_error(srv, ctx, conn, method, url, CL_E_INTERNAL, msg_fault);
    }
    if (bind_params(req, r, &ps, msg, sizeof(msg)) < 0)
        return queue_error(srv, ctx, conn, method, url, CL_E_BAD_REQUEST, msg);
    path = pct_decode(url, strlen(url), NULL);
    if (!path)
        return MHD_NO;
    req->method = method;
    req->path = path;
    req->body = ctx->body ? ctx->body : "";
    req->body_len = ctx->body_len;
    req->request_id = ctx->request_id;
    req->conn = conn;

    r->fn(req, &resp, r->builtin != BUILTIN_NONE ? (void *)srv : srv->ud);

    if (!resp.done) {
        cl_debug("http", "handler for %s %s sent no response", method, url);
        resp_reset(&resp);
        memset(&resp, 0, sizeof(resp));
        cl_http_resp_errorf(&resp, CL_E_INTERNAL, "%s", msg_fault);
    }
    return queue(srv, ctx, conn, method, url, &resp);
}

/* The streaming route for this request, or NULL when the request is to be buffered
 * (no streaming route is the best match, or the path cannot be parsed: dispatch()
 * answers those as usual). On success the decoded segments stay in ctx->ps. */
static const route *stream_route_find(cl_http_server *srv, req_ctx *ctx, const char *url,
                                      const char *method)
{
    const char *allow[MAX_ALLOW_METHODS];
    size_t nallow = 0;
    bool path_known = false;
    const route *r = NULL;

    if (path_segs_parse(url, &ctx->ps) == 0)
        r = route_find(srv, method, &ctx->ps, &path_known, allow, &nallow);
    if (r && r->stream)
        return r;
    path_segs_free(&ctx->ps);
    memset(&ctx->ps, 0, sizeof(ctx->ps));
    return NULL;
}

/* Headers in, streaming route found: bind the request and call begin(). */
static enum MHD_Result stream_begin(cl_http_server *srv, req_ctx *ctx,
                                    struct MHD_Connection *conn, const char *url,
                                    const char *method, const route *r)
{
    cl_http_req *req = &ctx->req;
    cl_http_resp resp = {0};
    char msg[160];

    ctx->stream_route = r;
    if (bind_params(req, r, &ctx->ps, msg, sizeof(msg)) < 0) {
        ctx->stream_closed = true;
        return queue_error(srv, ctx, conn, method, url, CL_E_BAD_REQUEST, msg);
    }
    ctx->path = pct_decode(url, strlen(url), NULL);
    if (!ctx->path) {
        ctx->stream_closed = true;
        return MHD_NO;
    }
    req->method = method;
    req->path = ctx->path;
    req->body = "";
    req->body_len = 0;
    req->request_id = ctx->request_id;
    req->conn = conn;

    r->stream->begin(req, &resp, srv->ud, &ctx->stream);
    if (!resp.done)
        return MHD_YES; /* MHD sends "100 Continue" if asked, and reads the body */
    /* Answered from the headers: the body is never read (MHD closes the connection
     * after the response when some is left). A stream begin() set anyway gets abort(). */
    if (!ctx->stream)
        ctx->stream_closed = true;
    return queue(srv, ctx, conn, method, url, &resp);
}

/* Every later call of a streaming request: a body chunk, or the end of the body. */
static enum MHD_Result stream_access(cl_http_server *srv, req_ctx *ctx,
                                     struct MHD_Connection *conn, const char *url,
                                     const char *method, const char *data, size_t *size)
{
    const cl_http_stream_route *sr = ctx->stream_route->stream;
    cl_http_resp resp = {0};

    if (*size) {
        size_t n = *size;
        *size = 0;
        if (ctx->stream_refused) {
            ctx->discarded += n;
            /* MHD_NO closes the connection; on_completed() then calls abort(). */
            return ctx->discarded > STREAM_DISCARD_MAX ? MHD_NO : MHD_YES;
        }
        if (sr->chunk(ctx->stream, data, n) < 0)
            ctx->stream_refused = true;
        return MHD_YES;
    }
    ctx->stream_closed = true;
    sr->end(ctx->stream, &ctx->req, &resp);
    ctx->stream = NULL; /* end() owned it last */
    if (!resp.done) {
        cl_debug("http", "stream end for %s %s sent no response", method, url);
        resp_reset(&resp);
        memset(&resp, 0, sizeof(resp));
        cl_http_resp_errorf(&resp, CL_E_INTERNAL, "%s", msg_fault);
    }
    return queue(srv, ctx, conn, method, url, &resp);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_data_size,
                                 void **req_cls)
{
    cl_http_server *srv = cls;
    req_ctx *ctx = *req_cls;
    enum MHD_Result ret;

    (void)version;
    if (!ctx) {
        const char *cl;
        int64_t announced;
        const route *sr;

        ctx = ctx_new(srv, conn);
        if (!ctx)
            return MHD_NO;
        *req_cls = ctx;
        if (srv->nstream && (sr = stream_route_find(srv, ctx, url, method))) {
            cl_log_set_request_id(ctx->request_id);
            ret = stream_begin(srv, ctx, conn, url, method, sr);
            cl_log_set_request_id(NULL);
            return ret;
        }
        cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && cl_parse_int64(cl, &announced) == 0 && announced >= 0 &&
            (uint64_t)announced > srv->max_body) {
            const char *expect = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                             MHD_HTTP_HEADER_EXPECT);
            ctx->too_large = true;
            /* A client already sending the body would see its connection reset before it
             * reads an early answer (RFC 9110 15.5.14 allows either); unless it waits for
             * "100 Continue" or the body is absurd, read and drop it, then answer 413. */
            if (!expect && (uint64_t)announced <= STREAM_DISCARD_MAX)
                return MHD_YES;
            /* Refuse before reading a byte; MHD closes the connection afterwards since
             * the body stays unread (and sends no "100 Continue"). */
            cl_log_set_request_id(ctx->request_id);
            ret = dispatch(srv, ctx, conn, url, method);
            cl_log_set_request_id(NULL);
            return ret;
        }
        return MHD_YES;
    }
    if (ctx->answered) {
        /* Already answered early: swallow whatever body still arrives. */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (ctx->stream_route) {
        cl_log_set_request_id(ctx->request_id);
        ret = stream_access(srv, ctx, conn, url, method, upload_data, upload_data_size);
        cl_log_set_request_id(NULL);
        return ret;
    }
    if (*upload_data_size) {
        body_append(srv, ctx, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    cl_log_set_request_id(ctx->request_id);
    ret = dispatch(srv, ctx, conn, url, method);
    cl_log_set_request_id(NULL);
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    cl_http_server *srv = cls;
    req_ctx *ctx = *req_cls;

    (void)conn;
    if (!ctx)
        return;
    cl_log_set_request_id(ctx->request_id);
    if (!ctx->answered || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        cl_debug("http", "request ended before its response was sent (reason %d)", (int)toe);
    if (ctx->stream_route && !ctx->stream_closed) {
        /* begin() ran and end() never will: the client left, the server is stopping,
         * the discard cap was hit, or begin() answered early but kept a stream. */
        const cl_http_stream_route *sr = ctx->stream_route->stream;
        ctx->stream_closed = true;
        if (sr->abort)
            sr->abort(ctx->stream);
        ctx->stream = NULL;
    }
    cl_log_set_request_id(NULL);
    *req_cls = NULL;
    ctx_free(ctx);
    pthread_mutex_lock(&srv->lock);
    if (--srv->inflight == 0)
        pthread_cond_broadcast(&srv->idle);
    pthread_mutex_unlock(&srv->lock);
}

/* Identity unescaper: paths and query arguments are decoded by us (see top comment). */
static size_t on_unescape(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls;
    (void)conn;
    return strlen(s);
}

__attribute__((format(printf, 2, 0))) static void on_mhd_log(void *cls, const char *fmt,
                                                             va_list ap)
{
    char line[512];
    size_t len;

    (void)cls;
    vsnprintf(line, sizeof(line), fmt, ap);
    len = strlen(line);
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        line[--len] = '\0';
    cl_debug("http.mhd", "%s", line);
}

/* ---- lifecycle ---- */

static void server_free(cl_http_server *srv)
{
    if (!srv)
        return;
    routes_free(srv->routes, srv->nroutes);
    pthread_mutex_destroy(&srv->lock);
    pthread_cond_destroy(&srv->idle);
    free(srv);
}

static int routes_build(cl_http_server *srv, const cl_http_opts *opts, cl_error *err)
{
    size_t n = opts->nstream_routes + opts->nroutes + 2;

    if ((opts->nroutes && !opts->routes) || (opts->nstream_routes && !opts->stream_routes)) {
        cl_error_set(err, CL_E_INTERNAL, "HTTP routes missing");
        return -EINVAL;
    }
    srv->routes = calloc(n, sizeof(*srv->routes));
    if (!srv->routes)
        return -ENOMEM;
    /* Streaming routes first: route_find() keeps the first of equally specific routes. */
    for (size_t i = 0; i < opts->nstream_routes; i++) {
        const cl_http_stream_route *sr = &opts->stream_routes[i];
        int rc = route_compile(&srv->routes[srv->nroutes++], sr->method, sr->pattern, NULL,
                               sr, BUILTIN_NONE, err);
        if (rc < 0)
            return rc;
        srv->nstream++;
    }
    for (size_t i = 0; i < opts->nroutes; i++) {
        const cl_http_route *ro = &opts->routes[i];
        int rc = route_compile(&srv->routes[srv->nroutes++], ro->method, ro->pattern, ro->fn,
                               NULL, BUILTIN_NONE, err);
        if (rc < 0)
            return rc;
    }
    /* Built-ins go last: with equal specificity the service's own routes win. */
    int rc = route_compile(&srv->routes[srv->nroutes++], "GET", "/healthz", builtin_healthz,
                           NULL, BUILTIN_HEALTHZ, err);
    if (rc == 0)
        rc = route_compile(&srv->routes[srv->nroutes++], "GET", "/metrics", builtin_metrics,
                           NULL, BUILTIN_METRICS, err);
    return rc;
}

/**
 * cl_http_server_start - start serving opts->routes on bind_addr:port.
 * @opts: options; the routes array and strings must outlive the server
 * @out: the running server (stop with cl_http_server_stop)
 * @err: filled on failure
 * Returns 0, -EINVAL (bad route, options or address), -ENOMEM, or -EIO when MHD cannot
 * start (port in use, ...); err says which. Not thread-safe against stop of the same server.
 */
int cl_http_server_start(const cl_http_opts *opts, cl_http_server **out, cl_error *err)
{
    cl_http_server *srv;
    struct sockaddr_storage ss = {0};
    const char *bind_addr;
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ITC;
    unsigned threads, timeout, conn_limit;
    size_t conn_memory;
    const union MHD_DaemonInfo *info;
    pthread_condattr_t ca;
    int rc;

    if (!opts || !out) {
        cl_error_set(err, CL_E_INTERNAL, "cl_http_server_start: missing options");
        return -EINVAL;
    }
    bind_addr = opts->bind_addr ? opts->bind_addr : "127.0.0.1";
    if (inet_pton(AF_INET, bind_addr, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(opts->port);
    } else if (inet_pton(AF_INET6, bind_addr, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(opts->port);
        flags |= MHD_USE_IPv6;
    } else {
        cl_error_set(err, CL_E_INTERNAL, "Invalid HTTP bind address '%s'", bind_addr);
        return -EINVAL;
    }

    srv = calloc(1, sizeof(*srv));
    if (!srv) {
        cl_error_set(err, CL_E_INTERNAL, "Out of memory starting the HTTP server");
        return -ENOMEM;
    }
    pthread_mutex_init(&srv->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&srv->idle, &ca);
    pthread_condattr_destroy(&ca);
    cl_strlcpy(srv->service, opts->service ? opts->service : "http", sizeof(srv->service));
    snprintf(srv->log_module, sizeof(srv->log_module), "http.%s", srv->service);
    srv->max_body = opts->max_body ? opts->max_body : DEFAULT_MAX_BODY;
    srv->ud = opts->ud;
    srv->metrics_fn = opts->metrics_fn;
    srv->health_fn = opts->health_fn;
    rc = routes_build(srv, opts, err);
    if (rc < 0) {
        if (rc == -ENOMEM)
            cl_error_set(err, CL_E_INTERNAL, "Out of memory starting the HTTP server");
        server_free(srv);
        return rc;
    }

    threads = opts->threads ? opts->threads : DEFAULT_THREADS;
    timeout = opts->conn_timeout_s ? opts->conn_timeout_s : DEFAULT_CONN_TIMEOUT_S;
    conn_limit = opts->max_connections;
    conn_memory = opts->conn_buffer ? opts->conn_buffer : CONN_MEMORY_LIMIT;
    if (conn_memory < MIN_CONN_MEMORY)
        conn_memory = MIN_CONN_MEMORY;
    if (opts->thread_per_connection) {
        /* Each connection gets its own thread (plus MHD's listening thread), so a handler
         * blocked on disk delays nobody else; a pool does not combine with it. */
        /* With MHD_USE_AUTO (in flags) MHD then polls with poll(), not select(), so
         * descriptors above FD_SETSIZE work. */
        flags |= MHD_USE_THREAD_PER_CONNECTION;
        threads = 1;
        if (!conn_limit)
            conn_limit = DEFAULT_CONN_LIMIT_PER_THREAD;
    }
    /* MHD only logs when asked to; its messages are library-internal, so they go to our
     * debug level and are requested only when that level is on. */
    if (cl_log_enabled(CL_LOG_DEBUG))
        flags |= MHD_USE_ERROR_LOG;
    struct MHD_OptionItem pool[] = {
        {threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, threads, NULL},
        {MHD_OPTION_END, 0, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    /* MHD_OPTION_END ends the array, so the connection cap goes first when pool is off. */
    if (conn_limit)
        pool[threads > 1 ? 1 : 0] =
            (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT, conn_limit, NULL};
    srv->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_access, srv, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, srv,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_TIMEOUT, timeout,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, conn_memory,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv, MHD_OPTION_UNESCAPE_CALLBACK,
        on_unescape, srv, MHD_OPTION_ARRAY, pool, MHD_OPTION_END);
    if (!srv->daemon) {
        server_free(srv);
        return cl_error_set(err, CL_E_INTERNAL, "Cannot listen on %s:%u for HTTP",
                            bind_addr, (unsigned)opts->port);
    }
    info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = info ? info->port : opts->port;
    cl_debug("http", "%s listening on %s:%u (%s)", srv->service, bind_addr,
             (unsigned)srv->port,
             opts->thread_per_connection ? "thread per connection" : "thread pool");
    *out = srv;
    return 0;
}

/**
 * cl_http_server_port - the port actually bound (useful with port 0).
 */
uint16_t cl_http_server_port(const cl_http_server *srv)
{
    return srv ? srv->port : 0;
}

/**
 * cl_http_server_stop - stop accepting connections, let requests in flight finish (up to
 * a few seconds), then stop the worker threads and free. Accepts NULL.
 * Must not be called from a handler.
 */
void cl_http_server_stop(cl_http_server *srv)
{
    MHD_socket listen_fd;
    struct timespec deadline;

    if (!srv)
        return;
    listen_fd = MHD_quiesce_daemon(srv->daemon);
    /* Quiesced, MHD no longer accepts, but the kernel still would: connections would
     * queue in the backlog and hang. Shutting the listening socket down makes new
     * clients see "connection refused" at once (they retry elsewhere); closing it must
     * wait for MHD_stop_daemon (fd reuse). */
    if (listen_fd != MHD_INVALID_SOCKET)
        shutdown(listen_fd, SHUT_RDWR);

    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += STOP_GRACE_MS / 1000;
    pthread_mutex_lock(&srv->lock);
    while (srv->inflight > 0) {
        if (pthread_cond_timedwait(&srv->idle, &srv->lock, &deadline) == ETIMEDOUT)
            break;
    }
    if (srv->inflight > 0)
        cl_debug("http", "stopping with %ld requests still in flight", srv->inflight);
    pthread_mutex_unlock(&srv->lock);

    MHD_stop_daemon(srv->daemon);
    /* After quiesce the listening socket is ours to close (microhttpd.h). */
    if (listen_fd != MHD_INVALID_SOCKET)
        close(listen_fd);
    server_free(srv);
}
