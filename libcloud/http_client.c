/*
 * http_client.c - one-shot HTTP requests over libcurl (image fetches, service-to-service).
 *
 * Every call uses its own easy handle, so calls are thread-safe without locks; the only
 * process-wide state is curl_global_init(), run once through pthread_once. Responses are
 * buffered in memory with caps (64 MiB body, 1 MiB headers) because the bytes come from
 * another machine. The raw header block of the final response is kept so callers can
 * read X-Subject-Token, Location and friends with cl_http_result_header().
 *
 * Redirects are followed for GET and HEAD only: following them for POST/PUT/DELETE
 * would silently change or repeat side effects (curl keeps a custom method across a
 * 303, for example).
 */
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cleanup.h"
#include "errors.h"
#include "http.h"
#include "log.h"
#include "util.h"

#define MAX_BODY_BYTES ((size_t)64 * 1024 * 1024)
#define MAX_HEADER_BYTES ((size_t)1024 * 1024)
#define MAX_REDIRECTS 5L

static inline void curl_easy_cleanupp(CURL **h)
{
    if (*h)
        curl_easy_cleanup(*h);
}
static inline void curl_slist_free_allp(struct curl_slist **l)
{
    if (*l)
        curl_slist_free_all(*l);
}
#define _cleanup_curl_ _cleanup_(curl_easy_cleanupp)
#define _cleanup_slist_ _cleanup_(curl_slist_free_allp)

/* A growing, capped receive buffer, always NUL-terminated once allocated. */
typedef struct rbuf {
    char *data;
    size_t len, cap, max;
    bool overflow;
} rbuf;

static bool rbuf_append(rbuf *b, const char *p, size_t n)
{
    if (n > b->max - b->len) {
        b->overflow = true;
        return false;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *nd = realloc(b->data, cap);
        if (!nd)
            return false;
        b->data = nd;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return true;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    size_t n = size * nmemb;
    /* Returning less than n makes curl abort the transfer with CURLE_WRITE_ERROR. */
    return rbuf_append(ud, ptr, n) ? n : 0;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *ud)
{
    rbuf *b = ud;
    size_t n = size * nmemb;

    /* A status line starts a new response (after a redirect or "100 Continue"): keep
     * only the final response's block. */
    if (n >= 5 && strncmp(ptr, "HTTP/", 5) == 0)
        b->len = 0;
    return rbuf_append(b, ptr, n) ? n : 0;
}

static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void global_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

/**
 * cl_http_client_global_init - initialise libcurl once for the process. Safe to call
 * several times and from several threads (pthread_once), but call it before starting
 * threads: curl_global_init() may initialise other libraries (OpenSSL) that are not.
 */
void cl_http_client_global_init(void)
{
    pthread_once(&global_once, global_init_once);
}

static int map_curl_error(CURLcode cc, const rbuf *body, const rbuf *hdrs, const char *method,
                          const char *url, const char *detail, cl_error *err)
{
    const char *what = detail[0] ? detail : curl_easy_strerror(cc);

    if (cc == CURLE_WRITE_ERROR && (body->overflow || hdrs->overflow)) {
        cl_error_set(err, CL_E_INTERNAL, "%s %s: response larger than %zu bytes", method, url,
                     body->overflow ? MAX_BODY_BYTES : MAX_HEADER_BYTES);
        return -EMSGSIZE;
    }
    switch (cc) {
    case CURLE_COULDNT_CONNECT:
        cl_error_set(err, CL_E_UNAVAILABLE, "%s %s: connection refused (%s)", method, url, what);
        return -ECONNREFUSED;
    case CURLE_OPERATION_TIMEDOUT:
        cl_error_set(err, CL_E_UNAVAILABLE, "%s %s: timed out (%s)", method, url, what);
        return -ETIMEDOUT;
    default:
        cl_error_set(err, CL_E_UNAVAILABLE, "%s %s: %s", method, url, what);
        return -EIO;
    }
}

/**
 * cl_http_request - perform one HTTP request and buffer the response.
 * @method: "GET", "POST", "PUT", "DELETE", "HEAD", ...
 * @url: absolute http(s) URL
 * @headers: NULL-terminated "Name: value" strings, or NULL
 * @body, @body_len: request body (copied by curl as needed), or NULL
 * @timeout_ms: whole-transfer timeout; <= 0 means 30 s
 * @out: on success, the status, body and header block (free with cl_http_result_free);
 *       untouched on failure
 * @err: filled on failure
 * Returns 0 when any HTTP response arrived, or -ECONNREFUSED, -ETIMEDOUT, -EMSGSIZE,
 * -EIO, -EINVAL, -ENOMEM. Thread-safe.
 */
int cl_http_request(const char *method, const char *url, const char *const *headers,
                    const char *body, size_t body_len, long timeout_ms,
                    cl_http_result *out, cl_error *err)
{
    _cleanup_curl_ CURL *h = NULL;
    _cleanup_slist_ struct curl_slist *hl = NULL;
    rbuf rb = {.max = MAX_BODY_BYTES}, hb = {.max = MAX_HEADER_BYTES};
    char detail[CURL_ERROR_SIZE] = "";
    bool is_get = false, is_head = false;
    CURLcode cc;
    long status = 0;
    int rc;

    if (!method || !url || !out) {
        cl_error_set(err, CL_E_INTERNAL, "cl_http_request: missing method, URL or result");
        return -EINVAL;
    }
    cl_http_client_global_init();
    h = curl_easy_init();
    if (!h) {
        cl_error_set(err, CL_E_INTERNAL, "Cannot create an HTTP client handle");
        return -ENOMEM;
    }
    is_get = strcmp(method, "GET") == 0;
    is_head = strcmp(method, "HEAD") == 0;
    if (timeout_ms <= 0)
        timeout_ms = 30000;

    /* NOSIGNAL: we are multi-threaded; curl must not use SIGALRM for DNS timeouts. */
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, detail);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &rb);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &hb);
    if (is_get || is_head) {
        curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(h, CURLOPT_MAXREDIRS, MAX_REDIRECTS);
        curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    }
    if (is_head) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
               strcmp(method, "PATCH") == 0) {
        /* POSTFIELDS does not copy: body outlives curl_easy_perform() below. */
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? body_len : 0));
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body ? body : "");
        if (strcmp(method, "POST") != 0)
            curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    } else if (!is_get) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    }

    /* No "Expect: 100-continue": it costs a round trip and our servers answer early
     * anyway when they refuse a body. */
    hl = curl_slist_append(NULL, "Expect:");
    for (size_t i = 0; hl && headers && headers[i]; i++) {
        struct curl_slist *nl = curl_slist_append(hl, headers[i]);
        if (!nl) {
            curl_slist_free_all(hl);
            hl = NULL;
        } else {
            hl = nl;
        }
    }
    if (!hl) {
        cl_error_set(err, CL_E_INTERNAL, "Out of memory building HTTP headers");
        return -ENOMEM;
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);

    cc = curl_easy_perform(h);
    if (cc != CURLE_OK) {
        rc = map_curl_error(cc, &rb, &hb, method, url, detail, err);
        cl_debug("http.client", "%s %s failed: %s", method, url, curl_easy_strerror(cc));
        free(rb.data);
        free(hb.data);
        return rc;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    /* Always hand back allocated, NUL-terminated strings, even when empty. */
    if ((!rb.data && !rbuf_append(&rb, "", 0)) || (!hb.data && !rbuf_append(&hb, "", 0))) {
        free(rb.data);
        free(hb.data);
        cl_error_set(err, CL_E_INTERNAL, "Out of memory reading an HTTP response");
        return -ENOMEM;
    }
    out->status = status;
    out->body = rb.data;
    out->body_len = rb.len;
    out->headers = hb.data;
    return 0;
}

/**
 * cl_http_result_header - copy the value of response header name (case-insensitive,
 * surrounding blanks removed) into out. When the header repeats, the last one wins.
 * Returns 0, -ENOENT when absent, -ERANGE when the value does not fit in outlen (out
 * then holds a truncated copy), -EINVAL on bad arguments.
 */
int cl_http_result_header(const cl_http_result *res, const char *name, char *out,
                          size_t outlen)
{
    const char *p, *found = NULL;
    size_t nlen, found_len = 0;

    if (!res || !name || !out || outlen == 0)
        return -EINVAL;
    if (!res->headers)
        return -ENOENT;
    nlen = strlen(name);
    for (p = res->headers; *p;) {
        const char *eol = strchr(p, '\n');
        const char *end = eol ? eol : p + strlen(p);
        if ((size_t)(end - p) > nlen && strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
            const char *v = p + nlen + 1;
            const char *ve = end;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && isspace((unsigned char)ve[-1]))
                ve--;
            found = v;
            found_len = (size_t)(ve - v);
        }
        p = eol ? eol + 1 : end;
    }
    if (!found)
        return -ENOENT;
    if (found_len >= outlen) {
        memcpy(out, found, outlen - 1);
        out[outlen - 1] = '\0';
        return -ERANGE;
    }
    memcpy(out, found, found_len);
    out[found_len] = '\0';
    return 0;
}

/**
 * cl_http_result_free - free the buffers of a result and zero it. Accepts NULL and a
 * zero-initialised result.
 */
void cl_http_result_free(cl_http_result *res)
{
    if (!res)
        return;
    free(res->body);
    free(res->headers);
    res->body = NULL;
    res->headers = NULL;
    res->body_len = 0;
    res->status = 0;
}
