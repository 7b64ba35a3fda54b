/*
 * httpd.c - the HTTP front of nube-image, over libmicrohttpd (MHD) directly.
 *
 * Why not libcloud's cl_http_server: it buffers every request body (up to max_body) and
 * answers from memory, which is right for JSON APIs and wrong for images of many
 * gigabytes. Here the upload route (PUT /v2/images/{id}/file) receives its body chunk by
 * chunk as MHD reads it and hands each chunk to the upload pipeline of api.c (write,
 * hash, inspect), so memory stays flat in the image size; downloads are answered from
 * the blob's file descriptor (MHD uses sendfile(2) for those). Every other route gets a
 * body buffered up to MAX_JSON_BODY and is answered by img_api_dispatch().
 * The conventions of the other nube services are kept: a request id per request
 * ("req-<uuid>", or a valid incoming X-OpenStack-Request-Id) set as the thread's log
 * request id and returned in x-openstack-request-id, OpenStack JSON error bodies, one
 * access line per request, /healthz and /metrics.
 *
 * MHD runs one thread per connection (MHD_USE_THREAD_PER_CONNECTION) with a connection
 * cap: uploads and downloads block on disk I/O, which must not stall other clients the
 * way it would in a shared event loop. Paths are split on '/' before percent-decoding
 * (identity unescaper), so "%2F" inside a tag can never add a path segment.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "cleanup.h"
#include "img.h"
#include "json.h"
#include "log.h"
#include "util.h"

#define MAX_JSON_BODY (1024 * 1024)
/* After a refusal the rest of an upload is read and dropped so the client sees the
 * answer; beyond this much the connection is closed instead (the image is already
 * killed with its reason). */
#define MAX_DISCARD (64ULL * 1024 * 1024)
#define CONN_MEMORY (256 * 1024) /* MHD read buffer per connection: the upload chunk size */
#define CONN_LIMIT 256
#define CONN_TIMEOUT_S 120
#define MAX_QUERY_CACHE 16

struct img_httpd {
    img_service *svc;
    struct MHD_Daemon *daemon;
    uint16_t port;
    atomic_uint_fast64_t by_class[6]; /* responses by status class 1xx..5xx */
    atomic_uint_fast64_t requests;
};

typedef struct req_ctx {
    img_req req;
    img_httpd *h;
    char path[1024];
    size_t body_cap;
    bool streaming, refused, too_large;
    uint64_t discarded;
    struct timespec start;
    struct {
        char *name, *value;
    } query[MAX_QUERY_CACHE];
    size_t nquery;
} req_ctx;

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

/* Percent-decode s[0..len); plus_space for query strings. NULL on bad escapes or NUL. */
static char *pct_decode(const char *s, size_t len, bool plus_space)
{
    char *out = malloc(len + 1), *o = out;

    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            if (i + 2 >= len) {
                free(out);
                return NULL;
            }
            int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                free(out);
                return NULL;
            }
            *o++ = (char)(hi << 4 | lo);
            i += 2;
        } else if (plus_space && s[i] == '+') {
            *o++ = ' ';
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

/**
 * img_req_header - a request header (case-insensitive name) or NULL.
 */
const char *img_req_header(const img_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

/**
 * img_req_query - a query argument, percent-decoded once, or NULL. The value lives as
 * long as the request.
 */
const char *img_req_query(const img_req *req, const char *name)
{
    req_ctx *ctx = (req_ctx *)req; /* req is the first member of its req_ctx */
    const char *raw;
    char *dec;

    for (size_t i = 0; i < ctx->nquery; i++)
        if (strcmp(ctx->query[i].name, name) == 0)
            return ctx->query[i].value;
    raw = MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
    if (!raw || ctx->nquery == MAX_QUERY_CACHE)
        return NULL;
    dec = pct_decode(raw, strlen(raw), true);
    if (!dec)
        return NULL;
    ctx->query[ctx->nquery].name = strdup(name);
    ctx->query[ctx->nquery].value = dec;
    if (!ctx->query[ctx->nquery].name) {
        free(dec);
        return NULL;
    }
    return ctx->query[ctx->nquery++].value;
}

static void resp_set(img_req *req, int status, struct MHD_Response *r)
{
    if (req->resp)
        MHD_destroy_response(req->resp);
    req->resp = r;
    req->status = status;
}

/**
 * img_resp_text - answer with a text body (copied).
 */
void img_resp_text(img_req *req, int status, const char *ctype, const char *text)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), (void *)text,
                                                             MHD_RESPMEM_MUST_COPY);
    if (r && ctype)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    resp_set(req, status, r);
}

/**
 * img_resp_json - answer with a JSON document (takes ownership of body).
 */
void img_resp_json(img_req *req, int status, json_object *body)
{
    img_resp_text(req, status, "application/json", body ? cl_json_dump(body) : "");
    if (body)
        json_object_put(body);
}

/**
 * img_resp_error - answer with the OpenStack error body of err.
 */
void img_resp_error(img_req *req, const cl_error *err)
{
    img_resp_json(req, cl_error_http_status(err->code), cl_error_to_json(err));
}

/**
 * img_resp_errorf - format and answer an error of the catalogue.
 */
void img_resp_errorf(img_req *req, cl_errcode code, const char *fmt, ...)
{
    cl_error err = {.code = code};
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err.message, sizeof(err.message), fmt, ap);
    va_end(ap);
    img_resp_error(req, &err);
}

/**
 * img_resp_empty - answer with no body (204, 201 ...).
 */
void img_resp_empty(img_req *req, int status)
{
    resp_set(req, status, MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT));
}

/**
 * img_resp_fd - stream len bytes of fd from offset; the response owns fd.
 */
void img_resp_fd(img_req *req, int status, int fd, uint64_t offset, uint64_t len)
{
    struct MHD_Response *r = MHD_create_response_from_fd_at_offset64(len, fd, offset);

    if (!r)
        close(fd);
    else
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/octet-stream");
    resp_set(req, status, r);
}

/**
 * img_resp_header - add a header to the response already built.
 */
void img_resp_header(img_req *req, const char *name, const char *value)
{
    if (req->resp)
        MHD_add_response_header(req->resp, name, value);
}

/**
 * img_req_auth - authenticate; answers 401 itself on failure.
 */
int img_req_auth(img_service *svc, img_req *req)
{
    cl_error err = {0};
    int rc = img_auth(svc, img_req_header(req, "X-Auth-Token"), &req->who, &err);

    if (rc < 0)
        img_resp_error(req, &err);
    return rc;
}

static bool valid_request_id(const char *s)
{
    return s && strncmp(s, "req-", 4) == 0 && cl_uuid_valid(s + 4);
}

/* Split the raw path into decoded segments; -EINVAL for paths no route can match. */
static int split_path(req_ctx *ctx, const char *url)
{
    const char *p = url;

    if (cl_strlcpy(ctx->path, url, sizeof(ctx->path)) >= sizeof(ctx->path))
        return -EINVAL;
    while (*p) {
        const char *e;
        while (*p == '/')
            p++;
        if (!*p)
            break;
        e = strchr(p, '/');
        if (!e)
            e = p + strlen(p);
        if (ctx->req.nsegs == IMG_MAX_SEGS)
            return -EINVAL;
        ctx->req.segs[ctx->req.nsegs] = pct_decode(p, (size_t)(e - p), false);
        if (!ctx->req.segs[ctx->req.nsegs])
            return -EINVAL;
        ctx->req.nsegs++;
        p = e;
    }
    return 0;
}

static req_ctx *ctx_new(img_httpd *h, struct MHD_Connection *conn, const char *url,
                        const char *method)
{
    req_ctx *ctx = calloc(1, sizeof(*ctx));
    const char *rid;

    if (!ctx)
        return NULL;
    ctx->h = h;
    ctx->req.conn = conn;
    ctx->req.method = method;
    clock_gettime(CLOCK_MONOTONIC, &ctx->start);
    rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-OpenStack-Request-Id");
    if (valid_request_id(rid)) {
        cl_strlcpy(ctx->req.request_id, rid, sizeof(ctx->req.request_id));
    } else {
        char uuid[CL_UUID_LEN];
        cl_uuid_new(uuid);
        snprintf(ctx->req.request_id, sizeof(ctx->req.request_id), "req-%s", uuid);
    }
    if (split_path(ctx, url) < 0)
        ctx->req.nsegs = SIZE_MAX; /* marker: unroutable */
    return ctx;
}

static void ctx_free(req_ctx *ctx)
{
    if (ctx->req.nsegs != SIZE_MAX)
        for (size_t i = 0; i < ctx->req.nsegs; i++)
            free(ctx->req.segs[i]);
    else
        for (size_t i = 0; i < IMG_MAX_SEGS; i++)
            free(ctx->req.segs[i]);
    for (size_t i = 0; i < ctx->nquery; i++) {
        free(ctx->query[i].name);
        free(ctx->query[i].value);
    }
    free(ctx->req.body);
    if (ctx->req.resp)
        MHD_destroy_response(ctx->req.resp);
    free(ctx);
}

static enum MHD_Result queue(req_ctx *ctx)
{
    img_req *req = &ctx->req;
    enum MHD_Result ret;

    if (!req->resp)
        img_resp_errorf(req, CL_E_INTERNAL, "The image service failed to answer");
    if (!req->resp)
        return MHD_NO;
    MHD_add_response_header(req->resp, "x-openstack-request-id", req->request_id);
    ret = MHD_queue_response(req->conn, (unsigned)req->status, req->resp);
    MHD_destroy_response(req->resp);
    req->resp = NULL;
    return ret;
}

static void body_append(req_ctx *ctx, const char *data, size_t len)
{
    img_req *req = &ctx->req;

    if (ctx->too_large || req->body_len + len > MAX_JSON_BODY) {
        ctx->too_large = true;
        return;
    }
    if (req->body_len + len + 1 > ctx->body_cap) {
        size_t cap = ctx->body_cap ? ctx->body_cap : 4096;
        while (cap < req->body_len + len + 1)
            cap *= 2;
        char *nb = realloc(req->body, cap);
        if (!nb) {
            ctx->too_large = true;
            return;
        }
        req->body = nb;
        ctx->body_cap = cap;
    }
    memcpy(req->body + req->body_len, data, len);
    req->body_len += len;
    req->body[req->body_len] = '\0';
}

static enum MHD_Result first_call(req_ctx *ctx)
{
    img_req *req = &ctx->req;
    img_service *svc = ctx->h->svc;
    const char *cl;
    int64_t len = -1;

    if (req->nsegs == SIZE_MAX) {
        req->nsegs = 0;
        img_resp_errorf(req, CL_E_NOT_FOUND, "The resource could not be found.");
        return queue(ctx);
    }
    if (!img_api_is_upload(req))
        return MHD_YES;
    ctx->streaming = true;
    cl = img_req_header(req, "Content-Length");
    if (cl && cl_parse_int64(cl, &len) < 0) {
        img_resp_errorf(req, CL_E_BAD_REQUEST, "Invalid Content-Length");
        return queue(ctx);
    }
    if (img_api_upload_begin(svc, req, len < 0 ? 0 : (uint64_t)len, len >= 0) < 0)
        return queue(ctx);
    return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_data_size,
                                 void **req_cls)
{
    img_httpd *h = cls;
    req_ctx *ctx = *req_cls;

    if (!ctx) {
        ctx = ctx_new(h, conn, url, method);
        if (!ctx)
            return MHD_NO;
        *req_cls = ctx;
        cl_log_set_request_id(ctx->req.request_id);
        return first_call(ctx);
    }
    cl_log_set_request_id(ctx->req.request_id);
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (!ctx->streaming) {
            body_append(ctx, upload_data, n);
            return MHD_YES;
        }
        if (!ctx->refused &&
            img_api_upload_chunk(h->svc, &ctx->req, upload_data, n) < 0)
            ctx->refused = true;
        else if (ctx->refused && (ctx->discarded += n) > MAX_DISCARD)
            return MHD_NO;
        return MHD_YES;
    }
    if (ctx->streaming)
        img_api_upload_end(h->svc, &ctx->req);
    else if (ctx->too_large)
        img_resp_errorf(&ctx->req, CL_E_TOO_LARGE, "The request body is larger than %d "
                                                   "bytes", MAX_JSON_BODY);
    else
        img_api_dispatch(h->svc, &ctx->req);
    return queue(ctx);
}

static double elapsed_s(const struct timespec *start)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    img_httpd *h = cls;
    req_ctx *ctx = *req_cls;

    if (!ctx)
        return;
    cl_log_set_request_id(ctx->req.request_id);
    if (ctx->req.upload)
        img_api_upload_abort(h->svc, &ctx->req);
    atomic_fetch_add(&h->requests, 1);
    if (ctx->req.status >= 100 && ctx->req.status < 600)
        atomic_fetch_add(&h->by_class[ctx->req.status / 100], 1);
    cl_info("image.http", "%s %s -> %d%s (%.3fs)", ctx->req.method, ctx->path,
            ctx->req.status,
            toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection ended early)",
            elapsed_s(&ctx->start));
    cl_log_set_request_id(NULL);
    ctx_free(ctx);
    *req_cls = NULL;
}

/* Keep the path raw: split_path() decodes segment by segment, img_req_query() the
 * query values. */
static size_t on_unescape(void *cls, struct MHD_Connection *conn, char *s)
{
    return strlen(s);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char buf[256];

    vsnprintf(buf, sizeof(buf), fmt, ap);
    cl_debug("image.mhd", "%s", buf);
}

/**
 * img_httpd_start - listen on cfg listen:port and serve the Image API.
 */
int img_httpd_start(img_service *svc, img_httpd **out, cl_error *err)
{
    struct sockaddr_in sin = {.sin_family = AF_INET};
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_ITC;
    const union MHD_DaemonInfo *info;
    img_httpd *h;

    if (inet_pton(AF_INET, svc->cfg->listen, &sin.sin_addr) != 1)
        return cl_error_set(err, CL_E_INTERNAL, "[image] listen: '%s' is not an IPv4 "
                                                "address", svc->cfg->listen);
    sin.sin_port = htons((uint16_t)svc->cfg->port);
    h = calloc(1, sizeof(*h));
    if (!h)
        return cl_error_set(err, CL_E_INTERNAL, "Out of memory");
    h->svc = svc;
    if (cl_log_enabled(CL_LOG_DEBUG))
        flags |= MHD_USE_ERROR_LOG;
    h->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_access, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sin,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)CONN_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CONN_TIMEOUT_S,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_UNESCAPE_CALLBACK,
        on_unescape, h, MHD_OPTION_END);
    if (!h->daemon) {
        free(h);
        return cl_error_set(err, CL_E_INTERNAL, "Cannot listen on %s:%" PRId64 " for HTTP",
                            svc->cfg->listen, svc->cfg->port);
    }
    info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : (uint16_t)svc->cfg->port;
    *out = h;
    return 0;
}

/**
 * img_httpd_port - the bound port.
 */
uint16_t img_httpd_port(const img_httpd *h)
{
    return h->port;
}

/**
 * img_httpd_stop - stop listening, end connections (aborting uploads), free.
 */
void img_httpd_stop(img_httpd *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->daemon);
    free(h);
}

/**
 * img_httpd_metrics - Prometheus lines of the HTTP front.
 */
void img_httpd_metrics(const img_httpd *h, FILE *out)
{
    fprintf(out, "# TYPE nube_image_http_requests_total counter\n");
    for (int c = 1; c <= 5; c++)
        fprintf(out, "nube_image_http_requests_total{class=\"%dxx\"} %" PRIuFAST64 "\n", c,
                (uint_fast64_t)atomic_load(&h->by_class[c]));
}
