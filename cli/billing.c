/*
 * billing.c - `nube billing export`, `nube billing invoice` and `nube usage`: the nube CLI
 * over the nube-billing API (GET /v1/export, /v1/invoices, /v1/usage).
 *
 * The endpoint is the "billing" entry of the token's service catalog (or
 * $NUBE_BILLING_URL), the token is the one the CLI authenticated with: nube-billing
 * verifies it locally, so a project's user sees its own project and an admin any (with
 * --project). Times are what the API takes: ISO 8601 UTC or unix milliseconds.
 *
 * Exports can be large (a month of a big cloud is millions of rows), so they are not
 * fetched with cl_http_request (which buffers, capped at 64 MiB): libcurl hands every
 * piece to a write callback that copies it to stdout at once. The status is known before
 * the first byte of body; a non-2xx body is kept (capped) to say what went wrong instead
 * of landing in the user's CSV file. A stream cut short (billing restarted mid-export)
 * is a curl error and exit status 1, so a script never mistakes half an export for one.
 */
#include "billing.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "json.h"
#include "nube-version.h"
#include "util.h"

#define USER_AGENT "nube/" NUBE_VERSION
#define ERR_BODY_MAX (64 * 1024)
#define QUERY_MAX 1024

int cli_billing_url(const cli_session *s, char *out, size_t outlen, cl_error *err)
{
    const char *env = getenv("NUBE_BILLING_URL");
    const char *url = env && env[0] ? env : s->billing_url;
    size_t n;

    if (!url || !url[0])
        return cl_error_set(err, CL_E_NOT_FOUND,
                            "No billing endpoint in the service catalog (is nube-billing "
                            "deployed?); set NUBE_BILLING_URL to reach it directly"),
               -ENOENT;
    n = strlen(url);
    while (n > 0 && url[n - 1] == '/')
        n--;
    if (n >= outlen)
        return cl_error_set(err, CL_E_BAD_REQUEST, "The billing URL is too long"), -ENAMETOOLONG;
    memcpy(out, url, n);
    out[n] = '\0';
    return 0;
}

/* Append "&key=<escaped value>" to q (value NULL: nothing). */
static int add_arg(CURL *c, char *q, size_t qlen, const char *key, const char *value)
{
    char *esc;
    size_t used = strlen(q);
    int n;

    if (!value)
        return 0;
    esc = curl_easy_escape(c, value, 0);
    if (!esc)
        return -ENOMEM;
    n = snprintf(q + used, qlen - used, "%s%s=%s", used ? "&" : "", key, esc);
    curl_free(esc);
    return n < 0 || (size_t)n >= qlen - used ? -E2BIG : 0;
}

/* Default window: the current UTC month up to now. */
static void default_window(const cli_billing_args *a, char *start, size_t slen, char *end,
                           size_t elen)
{
    time_t now = time(NULL);
    struct tm tm;

    gmtime_r(&now, &tm);
    if (a->start)
        cl_strlcpy(start, a->start, slen);
    else
        snprintf(start, slen, "%04d-%02d-01", tm.tm_year + 1900, tm.tm_mon + 1);
    if (a->end)
        cl_strlcpy(end, a->end, elen);
    else
        snprintf(end, elen, "%" PRId64, cl_now_ms() + 1);
}

typedef struct sink {
    CURL *curl;
    FILE *out;      /* where a 2xx body goes */
    long status;    /* known at the first body byte */
    char *errbody;  /* a non-2xx body, capped */
    size_t errlen;
    bool write_failed;
    bool buffer_all; /* keep a 2xx body too (JSON to parse) */
    char *body;
    size_t len, cap;
} sink;

static size_t on_body(char *p, size_t sz, size_t nm, void *ud)
{
    sink *s = ud;
    size_t n = sz * nm;

    if (s->status == 0)
        curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &s->status);
    if (s->status < 200 || s->status > 299) {
        size_t keep = s->errlen + n > ERR_BODY_MAX ? ERR_BODY_MAX - s->errlen : n;
        char *b = realloc(s->errbody, s->errlen + keep + 1);
        if (!b)
            return 0;
        memcpy(b + s->errlen, p, keep);
        s->errlen += keep;
        b[s->errlen] = '\0';
        s->errbody = b;
        return n;
    }
    if (s->buffer_all) {
        /* Reports (usage, invoice) are small: capped like cl_http_request's bodies. */
        if (s->len + n > 64u * 1024 * 1024)
            return 0;
        if (s->len + n + 1 > s->cap) {
            size_t cap = s->cap ? s->cap * 2 : 65536;
            while (cap < s->len + n + 1)
                cap *= 2;
            char *b = realloc(s->body, cap);
            if (!b)
                return 0;
            s->body = b;
            s->cap = cap;
        }
        memcpy(s->body + s->len, p, n);
        s->len += n;
        s->body[s->len] = '\0';
        return n;
    }
    if (fwrite(p, 1, n, s->out) != n) {
        s->write_failed = true;
        return 0; /* curl stops: the reader went away (a closed pipe) */
    }
    return n;
}

/* "HTTP 404 itemNotFound: Project x could not be found." from an error body. */
static void describe(const sink *s, cl_error *err)
{
    _cleanup_json_ json_object *body = NULL;

    if (s->errbody && cl_json_parse(s->errbody, s->errlen, &body, NULL) == 0 &&
        json_object_is_type(body, json_type_object)) {
        json_object_object_foreach(body, key, val) {
            json_object *m = cl_json_path(val, "message");
            if (m && json_object_is_type(m, json_type_string)) {
                cl_error_set(err, s->status == 404 ? CL_E_NOT_FOUND : CL_E_INTERNAL,
                             "HTTP %ld %s: %s", s->status, key, json_object_get_string(m));
                return;
            }
        }
    }
    cl_error_set(err, s->status == 404 ? CL_E_NOT_FOUND : CL_E_INTERNAL, "HTTP %ld",
                 s->status);
}

/* GET <billing>/<path>?<query> into s. Returns an exit code. */
static int billing_get(cli_ctx *ctx, const char *path, const cli_billing_args *a,
                       bool window, bool month, sink *s, cl_error *err)
{
    char base[CLI_URL_MAX], q[QUERY_MAX] = "", start[64], end[64];
    _cleanup_free_ char *url = NULL, *auth = NULL;
    struct curl_slist *h = NULL;
    CURL *c;
    CURLcode cr;
    int r = 0, rc = CLI_EXIT_OK;

    if (cli_billing_url(&ctx->sess, base, sizeof base, err) < 0)
        return CLI_EXIT_USAGE;
    c = curl_easy_init();
    if (!c)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory"), CLI_EXIT_API;
    s->curl = c;
    s->out = ctx->out;
    if (window) {
        default_window(a, start, sizeof start, end, sizeof end);
        if (strcmp(path, "/v1/export") == 0)
            r = add_arg(c, q, sizeof q, "format", a->csv ? "csv" : "json");
        if (r == 0)
            r = add_arg(c, q, sizeof q, "start", start);
        if (r == 0)
            r = add_arg(c, q, sizeof q, "end", end);
    }
    if (month && r == 0) {
        char m[32];
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        snprintf(m, sizeof m, "%04d-%02d", tm.tm_year + 1900, tm.tm_mon + 1);
        r = add_arg(c, q, sizeof q, "month", a->month ? a->month : m);
    }
    if (r == 0)
        r = add_arg(c, q, sizeof q, "project_id", a->project);
    if (r < 0 || asprintf(&url, "%s%s?%s", base, path, q) < 0 ||
        asprintf(&auth, "X-Auth-Token: %s", ctx->sess.token) < 0) {
        url = auth = NULL;
        curl_easy_cleanup(c);
        return cl_error_set(err, CL_E_BAD_REQUEST, "arguments too long"), CLI_EXIT_USAGE;
    }
    h = curl_slist_append(h, auth);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_USERAGENT, USER_AGENT);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    /* No total timeout: a big export takes as long as it takes; a stalled one is cut
     * after 60 s without a byte. */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    cr = curl_easy_perform(c);
    if (s->status == 0)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &s->status);
    if (s->write_failed) {
        cl_error_set(err, CL_E_INTERNAL, "writing the output failed");
        rc = CLI_EXIT_API;
    } else if (cr != CURLE_OK) {
        cl_error_set(err, CL_E_UNAVAILABLE, "%s%s: %s", base, path, curl_easy_strerror(cr));
        rc = CLI_EXIT_API;
    } else if (s->status < 200 || s->status > 299) {
        describe(s, err);
        rc = s->status == 404 ? CLI_EXIT_NOT_FOUND : CLI_EXIT_API;
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return rc;
}

static void sink_free(sink *s)
{
    free(s->errbody);
    free(s->body);
}

int cli_cmd_billing_export(cli_ctx *ctx, const cli_billing_args *a, cl_error *err)
{
    sink s = {0};
    int rc = billing_get(ctx, "/v1/export", a, true, false, &s, err);
    sink_free(&s);
    if (rc == CLI_EXIT_OK && fflush(ctx->out) != 0)
        return cl_error_set(err, CL_E_INTERNAL, "writing the output failed"), CLI_EXIT_API;
    return rc;
}

/* GET a JSON report; *out owns the body. */
static int get_report(cli_ctx *ctx, const char *path, const cli_billing_args *a, bool window,
                      bool month, json_object **out, cl_error *err)
{
    sink s = {.buffer_all = true};
    int rc = billing_get(ctx, path, a, window, month, &s, err);

    if (rc == CLI_EXIT_OK && cl_json_parse_object(s.body ? s.body : "", s.len, out, NULL) < 0) {
        cl_error_set(err, CL_E_INTERNAL, "nube-billing answered with a body that is not JSON");
        rc = CLI_EXIT_API;
    }
    sink_free(&s);
    return rc;
}

static json_object *cell(json_object *o, const char *key)
{
    return json_object_get(cl_json_path(o, key));
}

static int print_rows(cli_ctx *ctx, const char *const *headers, const char *const *keys,
                      size_t ncols, json_object *list, cl_error *err)
{
    _cleanup_json_ json_object *rows = json_object_new_array();
    int r;

    if (!rows)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory"), CLI_EXIT_API;
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *it = json_object_array_get_idx(list, i);
        json_object *row = json_object_new_array();
        if (!row || json_object_array_add(rows, row) < 0) {
            json_object_put(row);
            return cl_error_set(err, CL_E_INTERNAL, "out of memory"), CLI_EXIT_API;
        }
        for (size_t k = 0; k < ncols; k++)
            json_object_array_add(row, cell(it, keys[k]));
    }
    r = cli_print_list(ctx->out, ctx->fmt, headers, ncols, rows);
    if (r < 0)
        return cl_error_set(err, CL_E_INTERNAL, "could not write the output"), CLI_EXIT_API;
    return CLI_EXIT_OK;
}

int cli_cmd_billing_invoice(cli_ctx *ctx, const cli_billing_args *a, cl_error *err)
{
    static const char *const headers[] = {"Resource", "Meter", "Quantity", "Unit", "Price",
                                          "Price Unit", "Cost"};
    static const char *const keys[] = {"resource", "meter", "quantity", "unit", "price",
                                       "price_unit", "cost"};
    _cleanup_json_ json_object *body = NULL;
    int rc = get_report(ctx, "/v1/invoices", a, false, true, &body, err);
    json_object *invs;

    if (rc != CLI_EXIT_OK)
        return rc;
    if (ctx->fmt == CLI_FMT_JSON)
        return cli_print_json(ctx->out, body) < 0 ? CLI_EXIT_API : CLI_EXIT_OK;
    invs = cl_json_path(body, "invoices");
    if (json_object_array_length(invs) == 0)
        fprintf(ctx->out, "No usage rated for this project and month.\n");
    for (size_t i = 0; i < json_object_array_length(invs); i++) {
        json_object *inv = json_object_array_get_idx(invs, i);
        fprintf(ctx->out, "Invoice %s, project %s (%s to %s), amounts in micro-%s\n",
                json_object_get_string(cl_json_path(inv, "month")),
                json_object_get_string(cl_json_path(inv, "project_id")),
                json_object_get_string(cl_json_path(inv, "period_start")),
                json_object_get_string(cl_json_path(inv, "period_end")),
                json_object_get_string(cl_json_path(inv, "currency")));
        rc = print_rows(ctx, headers, keys, CL_ARRAY_SIZE(headers), cl_json_path(inv, "lines"),
                        err);
        if (rc != CLI_EXIT_OK)
            return rc;
        fprintf(ctx->out, "Total: %s %s\n\n",
                json_object_get_string(cl_json_path(inv, "total_decimal")),
                json_object_get_string(cl_json_path(inv, "currency")));
    }
    return CLI_EXIT_OK;
}

int cli_cmd_usage(cli_ctx *ctx, const cli_billing_args *a, cl_error *err)
{
    static const char *const headers[] = {"Resource", "Meter", "Quantity", "Unit"};
    static const char *const keys[] = {"resource", "meter", "quantity", "unit"};
    _cleanup_json_ json_object *body = NULL;
    int rc = get_report(ctx, "/v1/usage", a, true, false, &body, err);

    if (rc != CLI_EXIT_OK)
        return rc;
    if (ctx->fmt == CLI_FMT_JSON)
        return cli_print_json(ctx->out, body) < 0 ? CLI_EXIT_API : CLI_EXIT_OK;
    return print_rows(ctx, headers, keys, CL_ARRAY_SIZE(headers), cl_json_path(body, "usage"),
                      err);
}
