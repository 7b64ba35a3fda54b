/*
 * http.h - the HTTP server every nube service uses (over libmicrohttpd).
 *
 * A service gives a routing table of (method, pattern, handler); patterns are literal
 * path segments and "{name}" captures ("/v2.1/servers/{id}"), matched segment by
 * segment; a trailing slash is ignored. The server:
 *  - assigns each request an id "req-<uuid>" (or keeps a valid incoming
 *    X-OpenStack-Request-Id), sets it as the handler thread's log request id and returns it
 *    in the "x-openstack-request-id" header of every response;
 *  - buffers the body up to max_body bytes, answering 413 requestEntityTooLarge beyond it
 *    without reading the rest into memory;
 *  - answers 404 itemNotFound for unknown paths and 405 methodNotAllowed when the path
 *    exists with other methods, with OpenStack-style JSON error bodies;
 *  - serves GET /healthz ("ok", or the service's health callback) and GET /metrics
 *    (Prometheus text: requests by method/status, latency sums, plus the service's own
 *    lines from metrics_fn);
 *  - keeps connections alive (HTTP/1.1) and logs one access line per request.
 * Handlers run on libmicrohttpd's worker threads (thread pool), several at a time, or on
 * one thread per connection (opts.thread_per_connection) for services whose handlers
 * block on disk.
 *
 * Streaming routes (opts.stream_routes) are for bodies too large to buffer (disk
 * images): the service sees the body piece by piece as it is read, never all at once,
 * and max_body does not apply to them. Downloads are answered from a file descriptor
 * with cl_http_resp_fd() (sendfile).
 */
#ifndef CL_HTTP_H
#define CL_HTTP_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "errors.h"

#define CL_HTTP_MAX_PARAMS 8

typedef struct cl_http_server cl_http_server;

typedef struct cl_http_req {
    const char *method;
    const char *path;       /* without the query string */
    const char *body;       /* NUL-terminated copy, "" when none */
    size_t body_len;
    const char *request_id;
    const char *param_names[CL_HTTP_MAX_PARAMS];
    const char *param_values[CL_HTTP_MAX_PARAMS]; /* URL-decoded captures */
    size_t nparams;
    void *conn;             /* struct MHD_Connection *, for the accessors below */
} cl_http_req;

/* Header value (case-insensitive name) or NULL. */
const char *cl_http_req_header(const cl_http_req *req, const char *name);
/* Query argument or NULL (first occurrence). */
const char *cl_http_req_query(const cl_http_req *req, const char *name);
/* Path capture by name or NULL. */
const char *cl_http_req_param(const cl_http_req *req, const char *name);

/* Parse the body as a JSON object; on failure fills err (400 badRequest, or 415 when
 * Content-Type is present and not JSON). Caller owns *out. */
int cl_http_req_json(const cl_http_req *req, json_object **out, cl_error *err);

typedef struct cl_http_resp cl_http_resp;

/* Respond with JSON (takes ownership of body; NULL = no body). */
void cl_http_resp_json(cl_http_resp *resp, int status, json_object *body);
/* Respond with raw bytes (copied) and a content type. */
void cl_http_resp_raw(cl_http_resp *resp, int status, const char *content_type,
                      const void *data, size_t len);
/* Respond with the OpenStack error body of err and its HTTP status. */
void cl_http_resp_error(cl_http_resp *resp, const cl_error *err);
/* Shorthand: format an error of code and respond with it. */
void cl_http_resp_errorf(cl_http_resp *resp, cl_errcode code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Add a header (both copied). Up to 16 per response. */
void cl_http_resp_header(cl_http_resp *resp, const char *name, const char *value);
/* Respond with len bytes of fd from offset (sent with sendfile); takes ownership of fd,
 * also when the response is refused. Content-Type is application/octet-stream unless
 * set with cl_http_resp_header(); headers may be added before or after this call. */
void cl_http_resp_fd(cl_http_resp *resp, int status, int fd, uint64_t offset, uint64_t len);

/* A body produced while it is sent, for answers too large to build in memory (exports):
 * read(ud, buf, max) writes 1..max bytes into buf and returns how many, 0 at the end of
 * the body, or < 0 to abort (the connection is closed, so the client sees a truncated
 * chunked body, never a complete-looking one). It runs on the connection's thread after
 * the handler returned, as the socket drains, and may block while it produces data.
 * free_fn(ud) (optional) runs exactly once when the response is finished, abandoned by
 * the client, or refused (a second answer). Sent with chunked transfer encoding. */
typedef ssize_t (*cl_http_read_fn)(void *ud, char *buf, size_t max);
void cl_http_resp_stream(cl_http_resp *resp, int status, const char *content_type,
                         cl_http_read_fn read_fn, void *ud, void (*free_fn)(void *ud));

typedef void (*cl_http_handler_fn)(const cl_http_req *req, cl_http_resp *resp, void *ud);

typedef struct cl_http_route {
    const char *method;  /* "GET", "POST", ... */
    const char *pattern; /* "/v2.1/servers/{id}" */
    cl_http_handler_fn fn;
} cl_http_route;

/*
 * A streaming route. For every request it matches (same pattern rules; on a tie with a
 * buffered route of the same method and path, the streaming route wins):
 *  - begin() runs once the headers are in (req->body is "", Content-Length is a
 *    header). It either answers at once through resp (401, 404, 413 from the announced
 *    Content-Length ...; the body is then never read) or leaves resp alone and may set
 *    *stream to its own state.
 *  - chunk() gets each piece of the body in order, as read from the socket (at most
 *    about half of opts.conn_buffer; nothing is gathered). Returning < 0 refuses: chunk() is
 *    not called again, the rest of the body is read and dropped (up to 64 MiB, beyond
 *    which the connection is closed and abort() runs instead) and end() answers with the
 *    error the stream recorded.
 *  - end() runs after the last byte and must answer (else 500).
 *  - abort() (optional) runs instead of end() when the request does not complete: the
 *    client disconnected mid-body, the server stopped, or begin() answered early after
 *    setting *stream.
 * Exactly one of end() and abort() is called for every begin() that did not answer, so
 * either can free the stream. All four run on the connection's thread, with the request
 * id set as the thread's log request id.
 */
typedef void (*cl_http_stream_begin_fn)(const cl_http_req *req, cl_http_resp *resp, void *ud,
                                        void **stream);
typedef int (*cl_http_stream_chunk_fn)(void *stream, const char *data, size_t len);
typedef void (*cl_http_stream_end_fn)(void *stream, const cl_http_req *req, cl_http_resp *resp);
typedef void (*cl_http_stream_abort_fn)(void *stream);

typedef struct cl_http_stream_route {
    const char *method;
    const char *pattern;
    cl_http_stream_begin_fn begin;   /* required */
    cl_http_stream_chunk_fn chunk;   /* required */
    cl_http_stream_end_fn end;       /* required */
    cl_http_stream_abort_fn abort;   /* optional */
} cl_http_stream_route;

typedef struct cl_http_opts {
    const char *service;      /* "compute": used in logs and metric names */
    const char *bind_addr;    /* "127.0.0.1", "0.0.0.0" */
    uint16_t port;            /* 0 = pick a free port (see cl_http_server_port) */
    size_t max_body;          /* bytes, default 1 MiB */
    unsigned threads;         /* worker threads, default 4 */
    unsigned conn_timeout_s;  /* idle connection timeout, default 30 */
    const cl_http_route *routes;
    size_t nroutes;
    void *ud;                 /* passed to handlers */
    /* Optional: extra Prometheus lines appended to /metrics. */
    void (*metrics_fn)(FILE *out, void *ud);
    /* Optional: health check; return true when healthy, write a short reason. */
    bool (*health_fn)(char *reason, size_t len, void *ud);
    /* Optional: streaming routes (see cl_http_stream_route); ud is passed to begin(). */
    const cl_http_stream_route *stream_routes;
    size_t nstream_routes;
    /* One thread per connection instead of the pool of `threads` (for handlers that
     * block on disk); connections are then capped at max_connections (default 256). */
    bool thread_per_connection;
    unsigned max_connections; /* 0 = default (libmicrohttpd's, or 256 per connection) */
    /* Per-connection buffer in bytes (default 64 KiB, minimum 16 KiB). It holds the
     * request headers and bounds each chunk() piece: streaming services gain from 256 KiB
     * (fewer, larger pieces cost less CPU per byte). */
    size_t conn_buffer;
} cl_http_opts;

int cl_http_server_start(const cl_http_opts *opts, cl_http_server **out, cl_error *err);
uint16_t cl_http_server_port(const cl_http_server *srv);
/* Stop accepting, finish running requests, free. Accepts NULL. */
void cl_http_server_stop(cl_http_server *srv);

/* ---- client (libcurl) ---- */

typedef struct cl_http_result {
    long status;
    char *body;          /* NUL-terminated, malloc'd */
    size_t body_len;
    char *headers;       /* raw response header block, malloc'd */
} cl_http_result;

/* One request. headers: NULL-terminated array of "Name: value" strings (may be NULL).
 * body may be NULL. Response bodies are capped at 64 MiB (-EMSGSIZE).
 * Returns 0 when an HTTP response arrived (any status) or negative errno
 * (-ECONNREFUSED, -ETIMEDOUT, -EIO) with err filled. Thread-safe (one easy handle per
 * call; call cl_http_client_global_init() once before threads start). */
int cl_http_request(const char *method, const char *url, const char *const *headers,
                    const char *body, size_t body_len, long timeout_ms,
                    cl_http_result *out, cl_error *err);

/* Value of a response header (case-insensitive), copied into out; 0 or -ENOENT. */
int cl_http_result_header(const cl_http_result *res, const char *name, char *out,
                          size_t outlen);

void cl_http_result_free(cl_http_result *res);
void cl_http_client_global_init(void);

#endif
