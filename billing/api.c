/*
 * api.c - the billing HTTP API (default :8889), over libcloud's cl_http server.
 *
 *   GET  /v1/usage?project_id&start&end        quantities per resource and meter
 *   GET  /v1/costs?project_id&start&end        cost per project and meter
 *   GET  /v1/invoices?project_id&month=YYYY-MM invoices with line items
 *   GET  /v1/prices                            the price plan            (admin)
 *   PUT  /v1/prices  {"prices": {...}}         replace the plan          (admin)
 *   POST /v1/rate    {"start", "end"}          re-rate a window          (admin)
 *   GET  /v1/export?format=csv|json&project_id&start&end   one row per rated row:
 *        period, project, resource, meter, quantity, unit, price, cost, price_unit,
 *        currency (price and cost in micro-units)
 *   GET  /healthz, /metrics                    built into cl_http
 *
 * Times are unix milliseconds or ISO 8601 UTC ("2026-01-01", "2026-01-01T10:00:00Z").
 * Amounts are integers of micro-units; "*_decimal" fields repeat totals as decimals.
 *
 * Authorisation lives in one function, authorize(): the static [auth] admin_token or a
 * sealed nube token (verified locally with the token key shared with nube-api); a
 * project's reader/member reads its own project only, admins everything.
 *
 * Reads open their own connection to the database (WAL readers do not wait for the
 * ingest writer); admin writes take the daemon's writer connection under its lock.
 *
 * Export: streamed (cl_http_resp_stream): rows are pulled from a cursor on the reader's
 * own connection and formatted one at a time as the socket drains, so a million-row
 * export holds one row in memory. The cursor reads one WAL snapshot: the export is
 * consistent even while samples are ingested and hours re-rated.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bill_int.h"
#include "json.h"
#include "log.h"

#define LOG_MOD "bill.api"
#define EXPORT_ROW_MAX (64 * 1024) /* one formatted row (ids are bounded far below) */

/* Constant-time comparison, so the token cannot be guessed byte by byte from timing. */
static bool token_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = la != lb;
    for (size_t i = 0; i < la; i++)
        diff |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
    return diff == 0;
}

/* The one place that decides who may do what, with the policy of libcloud/auth.h:
 *  - the static [auth] admin_token, or a sealed nube token (cl_token_verify with the
 *    token key) that carries the admin role: everything, every project;
 *  - any other valid token (reader, member) reads its own project only: *project NULL
 *    (no project_id given) becomes the caller's project, another project answers 404
 *    as if it did not exist (as nube-api's os-simple-tenant-usage does);
 *  - admin calls (prices, re-rate) need the admin role: 403 otherwise.
 * own receives the caller's project id when *project is pointed at it. */
static int authorize(const bill *b, const cl_http_req *req, bool admin, const char **project,
                     char own[CL_ID_MAX], cl_error *err)
{
    const char *tok = cl_http_req_header(req, "X-Auth-Token");
    const char *want = b->cfg->admin_token ? b->cfg->admin_token : "";
    cl_auth a;

    if (!tok || !tok[0])
        return cl_error_set(err, CL_E_UNAUTHORIZED,
                            "The request you have made requires authentication.");
    if (want[0] && token_equal(tok, want))
        return 0;
    memset(&a, 0, sizeof a);
    if (!b->have_token_key || strncmp(tok, CL_TOKEN_PREFIX, strlen(CL_TOKEN_PREFIX)) != 0 ||
        cl_token_verify(&b->token_key, tok, cl_now_ms(), &a, NULL) < 0)
        return cl_error_set(err, CL_E_UNAUTHORIZED,
                            "The request you have made requires authentication.");
    if (cl_auth_is_admin(&a))
        return 0;
    if (admin)
        return cl_error_set(err, CL_E_FORBIDDEN,
                            "Policy doesn't allow this operation to be performed "
                            "(admin only).");
    if (!project || !a.project_id[0] || a.roles == 0)
        return cl_error_set(err, CL_E_FORBIDDEN,
                            "A project-scoped token is required to read billing data.");
    if (!*project) {
        cl_strlcpy(own, a.project_id, CL_ID_MAX);
        *project = own;
        return 0;
    }
    if (!cl_auth_can_read(&a, *project))
        return cl_error_set(err, CL_E_NOT_FOUND, "Project %s could not be found.", *project);
    return 0;
}

/* Open a read connection for one request. */
static int open_reader(bill *b, bill_store **out, cl_error *err)
{
    int r = bill_store_open(b->cfg->db_connection, out, err);
    if (r < 0)
        cl_error_set(err, CL_E_UNAVAILABLE, "billing database unavailable");
    return r;
}

static void store_closep(bill_store **st)
{
    bill_store_close(*st);
}
#define _cleanup_store_ __attribute__((cleanup(store_closep)))

/* project_id (optional, 1..64 chars), start and end (required, start < end). */
static int window_args(const cl_http_req *req, const char **project, int64_t *start,
                       int64_t *end, cl_error *err)
{
    const char *p = cl_http_req_query(req, "project_id");
    const char *s = cl_http_req_query(req, "start");
    const char *e = cl_http_req_query(req, "end");

    if (p && (!p[0] || strlen(p) >= CL_ID_MAX))
        return cl_error_set(err, CL_E_BAD_REQUEST, "project_id must be 1 to %d characters",
                            CL_ID_MAX - 1);
    if (!s || !e)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "start and end are required (unix ms or ISO 8601 UTC)");
    if (bill_parse_time(s, start) < 0 || bill_parse_time(e, end) < 0)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "start and end must be unix ms or ISO 8601 UTC "
                            "(2026-01-01T00:00:00Z)");
    if (*end <= *start)
        return cl_error_set(err, CL_E_BAD_REQUEST, "end must be after start");
    *project = p;
    return 0;
}

typedef int (*report_fn)(bill_store *st, const char *project, int64_t start, int64_t end,
                         json_object **out, cl_error *err);

static void windowed_report(const cl_http_req *req, cl_http_resp *resp, bill *b, report_fn fn)
{
    _cleanup_store_ bill_store *st = NULL;
    json_object *out = NULL;
    const char *project = NULL;
    char own[CL_ID_MAX];
    int64_t start = 0, end = 0;
    cl_error err = {0};

    if (window_args(req, &project, &start, &end, &err) < 0 ||
        authorize(b, req, false, &project, own, &err) < 0 || open_reader(b, &st, &err) < 0 ||
        fn(st, project, start, end, &out, &err) < 0) {
        if (err.code == CL_E_OK)
            cl_error_set(&err, CL_E_INTERNAL, "out of memory");
        cl_http_resp_error(resp, &err);
        return;
    }
    cl_http_resp_json(resp, 200, out);
}

static void h_usage(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    windowed_report(req, resp, ud, bill_usage_json);
}

static void h_costs(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    windowed_report(req, resp, ud, bill_costs_json);
}

static void h_invoices(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    bill *b = ud;
    _cleanup_store_ bill_store *st = NULL;
    const char *project = cl_http_req_query(req, "project_id");
    const char *month = cl_http_req_query(req, "month");
    char own[CL_ID_MAX];
    json_object *out = NULL;
    int64_t y = 0, m = 0;
    cl_error err = {0};
    char ybuf[5] = "", mbuf[3] = "";

    if (month && strlen(month) == 7 && month[4] == '-') {
        memcpy(ybuf, month, 4);
        memcpy(mbuf, month + 5, 2);
    }
    if (cl_parse_int64(ybuf, &y) < 0 || cl_parse_int64(mbuf, &m) < 0 || y < 1970 ||
        y > 9999 || m < 1 || m > 12) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "month is required as YYYY-MM");
        return;
    }
    if (project && (!project[0] || strlen(project) >= CL_ID_MAX)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "project_id must be 1 to %d characters",
                            CL_ID_MAX - 1);
        return;
    }
    if (authorize(b, req, false, &project, own, &err) < 0 || open_reader(b, &st, &err) < 0 ||
        bill_invoices_json(st, project, (int)y, (int)m, &out, &err) < 0) {
        if (err.code == CL_E_OK)
            cl_error_set(&err, CL_E_INTERNAL, "out of memory");
        cl_http_resp_error(resp, &err);
        return;
    }
    cl_http_resp_json(resp, 200, out);
}

static void h_prices_get(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    bill *b = ud;
    _cleanup_store_ bill_store *st = NULL;
    _cleanup_free_ bill_prices *p = calloc(1, sizeof *p);
    cl_error err = {0};
    json_object *o;

    if (!p) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "out of memory");
        return;
    }
    if (authorize(b, req, true, NULL, NULL, &err) < 0 || open_reader(b, &st, &err) < 0 ||
        bill_prices_get(st, p, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    o = json_object_new_object();
    if (o)
        json_object_object_add(o, "prices", bill_prices_to_json(p));
    cl_http_resp_json(resp, 200, o);
}

static void h_prices_put(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    bill *b = ud;
    _cleanup_json_ json_object *body = NULL;
    _cleanup_free_ bill_prices *p = calloc(1, sizeof *p);
    json_object *plan = NULL, *o;
    cl_error err = {0};
    int r;

    if (!p) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "out of memory");
        return;
    }
    if (authorize(b, req, true, NULL, NULL, &err) < 0 ||
        cl_http_req_json(req, &body, &err) < 0 ||
        cl_json_get_object(body, "prices", true, &plan, &err) < 0 ||
        bill_prices_from_json(plan, p, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    pthread_mutex_lock(&b->lock);
    r = bill_prices_put(b->store, p, &err);
    pthread_mutex_unlock(&b->lock);
    if (r < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    cl_info(LOG_MOD, "price plan replaced (%s, %zu flavor prices); re-rate to apply it to "
            "rated hours", p->currency, p->nflavors);
    o = json_object_new_object();
    if (o)
        json_object_object_add(o, "prices", bill_prices_to_json(p));
    cl_http_resp_json(resp, 200, o);
}

/* A time in a JSON body: an integer of ms or an ISO 8601 string. */
static int body_time(json_object *body, const char *key, int64_t *out, cl_error *err)
{
    json_object *v = cl_json_path(body, key);
    if (!v)
        return cl_error_set(err, CL_E_BAD_REQUEST, "Missing required field '%s'", key);
    if (json_object_is_type(v, json_type_int)) {
        *out = json_object_get_int64(v);
        if (*out >= 0)
            return 0;
    } else if (json_object_is_type(v, json_type_string) &&
               bill_parse_time(json_object_get_string(v), out) == 0) {
        return 0;
    }
    return cl_error_set(err, CL_E_BAD_REQUEST,
                        "Invalid input for field '%s': expected unix ms or ISO 8601 UTC", key);
}

static void h_rate(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    bill *b = ud;
    _cleanup_json_ json_object *body = NULL;
    int64_t start = 0, end = 0;
    bill_rate_opts o = {.now_ms = cl_now_ms(), .min_charge_s = b->cfg->min_charge_s};
    cl_error err = {0};
    size_t rows = 0;
    json_object *out, *r_obj;
    int r;

    if (authorize(b, req, true, NULL, NULL, &err) < 0 ||
        cl_http_req_json(req, &body, &err) < 0 ||
        body_time(body, "start", &start, &err) < 0 || body_time(body, "end", &end, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    pthread_mutex_lock(&b->lock);
    r = bill_rate(b->store, start, end, &o, &rows, &err);
    pthread_mutex_unlock(&b->lock);
    if (r < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    atomic_fetch_add(&b->rated_rows, rows);
    out = json_object_new_object();
    r_obj = json_object_new_object();
    if (out && r_obj) {
        json_object_object_add(r_obj, "start", json_object_new_int64(start));
        json_object_object_add(r_obj, "end", json_object_new_int64(end));
        json_object_object_add(r_obj, "rows", json_object_new_int64((int64_t)rows));
        json_object_object_add(out, "rated", r_obj);
        r_obj = NULL;
    }
    json_object_put(r_obj);
    cl_http_resp_json(resp, 200, out);
}

/* ---- export ---- */

typedef struct outbuf {
    char *data;
    size_t len, cap, max;
    bool json, first;
} outbuf;

static int ob_append(outbuf *ob, const char *s, size_t n)
{
    if (ob->len + n > ob->max)
        return -E2BIG;
    if (ob->len + n + 1 > ob->cap) {
        size_t cap = ob->cap ? ob->cap : 65536;
        while (cap < ob->len + n + 1)
            cap *= 2;
        char *d = realloc(ob->data, cap);
        if (!d)
            return -ENOMEM;
        ob->data = d;
        ob->cap = cap;
    }
    memcpy(ob->data + ob->len, s, n);
    ob->len += n;
    ob->data[ob->len] = '\0';
    return 0;
}

static int ob_printf(outbuf *ob, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int ob_printf(outbuf *ob, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof buf)
        return -EINVAL;
    return ob_append(ob, buf, (size_t)n);
}

/* A CSV field (RFC 4180): quoted when it holds a comma, quote or line break. */
static int ob_csv(outbuf *ob, const char *s)
{
    int r;
    if (!strpbrk(s, ",\"\r\n"))
        return ob_append(ob, s, strlen(s));
    if ((r = ob_append(ob, "\"", 1)) < 0)
        return r;
    for (const char *p = s; *p; p++)
        if ((r = ob_append(ob, p, 1)) < 0 || (*p == '"' && (r = ob_append(ob, "\"", 1)) < 0))
            return r;
    return ob_append(ob, "\"", 1);
}

/* A JSON string (RFC 8259 escaping). */
static int ob_jstr(outbuf *ob, const char *s)
{
    int r = ob_append(ob, "\"", 1);
    for (const char *p = s; r == 0 && *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            r = ob_append(ob, e, 2);
        } else if (c < 0x20) {
            r = ob_printf(ob, "\\u%04x", c);
        } else {
            r = ob_append(ob, p, 1);
        }
    }
    return r < 0 ? r : ob_append(ob, "\"", 1);
}

static int export_row(const bill_row *row, void *ud)
{
    outbuf *ob = ud;
    char period[40];
    int r;

    cl_time_iso8601(row->period_ms, true, period, sizeof period);
    if (ob->json) {
        if ((r = ob_append(ob, ob->first ? "\n" : ",\n", ob->first ? 1 : 2)) < 0 ||
            (r = ob_printf(ob, "{\"period\":\"%s\",\"project\":", period)) < 0 ||
            (r = ob_jstr(ob, row->project_id)) < 0 ||
            (r = ob_append(ob, ",\"resource\":", 12)) < 0 ||
            (r = ob_jstr(ob, row->resource)) < 0 || (r = ob_append(ob, ",\"meter\":", 9)) < 0 ||
            (r = ob_jstr(ob, row->meter)) < 0 ||
            (r = ob_printf(ob, ",\"quantity\":%" PRId64 ",\"unit\":\"%s\",\"price\":%" PRId64
                               ",\"cost\":%" PRId64 ",\"price_unit\":\"%s\",\"currency\":",
                           row->quantity, row->unit, row->price, row->cost,
                           row->price_unit)) < 0 ||
            (r = ob_jstr(ob, row->currency)) < 0 || (r = ob_append(ob, "}", 1)) < 0)
            return r;
    } else {
        if ((r = ob_printf(ob, "%s,", period)) < 0 || (r = ob_csv(ob, row->project_id)) < 0 ||
            (r = ob_append(ob, ",", 1)) < 0 || (r = ob_csv(ob, row->resource)) < 0 ||
            (r = ob_append(ob, ",", 1)) < 0 || (r = ob_csv(ob, row->meter)) < 0 ||
            (r = ob_printf(ob, ",%" PRId64 ",%s,%" PRId64 ",%" PRId64 ",%s,", row->quantity,
                           row->unit, row->price, row->cost, row->price_unit)) < 0 ||
            (r = ob_csv(ob, row->currency)) < 0 || (r = ob_append(ob, "\n", 1)) < 0)
            return r;
    }
    ob->first = false;
    return 0;
}

/* A streamed export: its own read connection and cursor, and the bytes of the row being
 * sent. Memory is one formatted row whatever the size of the export. */
typedef struct export_stream {
    bill_store *st;
    bill_cursor *cur;
    outbuf ob;  /* formatted bytes not yet handed to the socket: ob.data[off..len) */
    size_t off;
    bool finished; /* the cursor is exhausted and the trailer is in ob */
} export_stream;

static void export_free(void *ud)
{
    export_stream *es = ud;
    bill_export_close(es->cur);
    bill_store_close(es->st);
    free(es->ob.data);
    free(es);
}

/* cl_http_read_fn: fill buf with the next rows (0 = the end, < 0 = abort). */
static ssize_t export_read(void *ud, char *buf, size_t max)
{
    export_stream *es = ud;
    cl_error err = {0};
    size_t n = 0;

    for (;;) {
        if (es->off < es->ob.len) {
            size_t k = es->ob.len - es->off;
            if (k > max - n)
                k = max - n;
            memcpy(buf + n, es->ob.data + es->off, k);
            n += k;
            es->off += k;
            if (n == max)
                return (ssize_t)n;
            continue;
        }
        es->ob.len = 0;
        es->off = 0;
        if (es->finished)
            return (ssize_t)n;
        bill_row row;
        int r = bill_export_next(es->cur, &row, &err);
        if (r < 0) {
            /* Headers are gone: all we can do is cut the body short, which the client
             * sees as an incomplete chunked response, not as a complete export. */
            cl_err(LOG_MOD, "export aborted: %s", err.message);
            return -1;
        }
        if (r == 0) {
            es->finished = true;
            if (es->ob.json && ob_append(&es->ob, "\n]}\n", 4) < 0)
                return -1;
            continue;
        }
        if (export_row(&row, &es->ob) < 0)
            return -1;
    }
}

static void h_export(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    bill *b = ud;
    const char *fmt = cl_http_req_query(req, "format");
    const char *project = NULL;
    char own[CL_ID_MAX];
    int64_t start = 0, end = 0;
    cl_error err = {0};
    int r;

    if (fmt && strcmp(fmt, "csv") != 0 && strcmp(fmt, "json") != 0) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "format must be csv or json");
        return;
    }
    export_stream *es = calloc(1, sizeof *es);
    if (!es) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "out of memory");
        return;
    }
    es->ob = (outbuf){.max = EXPORT_ROW_MAX, .first = true,
                      .json = fmt && strcmp(fmt, "json") == 0};
    if (window_args(req, &project, &start, &end, &err) < 0 ||
        authorize(b, req, false, &project, own, &err) < 0 ||
        open_reader(b, &es->st, &err) < 0 ||
        /* One pass in order: a small page cache keeps the export's memory flat. */
        cl_db_exec(es->st->db, "PRAGMA cache_size = -2048") < 0 ||
        bill_export_open(es->st, project, start, end, &es->cur, &err) < 0) {
        export_free(es);
        if (err.code == CL_E_OK)
            cl_error_set(&err, CL_E_INTERNAL, "export failed");
        cl_http_resp_error(resp, &err);
        return;
    }
    r = es->ob.json ? ob_append(&es->ob, "{\"rows\":[", 9)
                    : ob_printf(&es->ob, "period,project,resource,meter,quantity,unit,price,"
                                         "cost,price_unit,currency\n");
    if (r < 0) {
        export_free(es);
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "out of memory");
        return;
    }
    cl_http_resp_stream(resp, 200, es->ob.json ? "application/json" : "text/csv; charset=utf-8",
                        export_read, es, export_free);
}

const cl_http_route bill_api_routes[] = {
    {"GET", "/v1/usage", h_usage},
    {"GET", "/v1/costs", h_costs},
    {"GET", "/v1/invoices", h_invoices},
    {"GET", "/v1/prices", h_prices_get},
    {"PUT", "/v1/prices", h_prices_put},
    {"POST", "/v1/rate", h_rate},
    {"GET", "/v1/export", h_export},
};
const size_t bill_api_nroutes = CL_ARRAY_SIZE(bill_api_routes);

/* Prometheus lines appended to /metrics. */
void bill_api_metrics(FILE *out, void *ud)
{
    bill *b = ud;
    cl_bus_stats bs = {0};

    fprintf(out, "# TYPE nube_billing_samples_total counter\n");
    fprintf(out, "nube_billing_samples_total{result=\"accepted\"} %" PRIu64 "\n",
            atomic_load(&b->accepted));
    fprintf(out, "nube_billing_samples_total{result=\"duplicate\"} %" PRIu64 "\n",
            atomic_load(&b->duplicates));
    fprintf(out, "nube_billing_samples_total{result=\"rejected\"} %" PRIu64 "\n",
            atomic_load(&b->rejected));
    fprintf(out, "nube_billing_samples_total{result=\"too_old\"} %" PRIu64 "\n",
            atomic_load(&b->too_old));
    fprintf(out, "nube_billing_samples_late_total %" PRIu64 "\n", atomic_load(&b->late));
    fprintf(out, "nube_billing_batches_total %" PRIu64 "\n", atomic_load(&b->batches));
    fprintf(out, "nube_billing_ingest_errors_total %" PRIu64 "\n",
            atomic_load(&b->ingest_errors));
    fprintf(out, "nube_billing_group_commits_total %" PRIu64 "\n", atomic_load(&b->groups));
    fprintf(out, "nube_billing_batches_deferred_total %" PRIu64 "\n",
            atomic_load(&b->deferred));
    fprintf(out, "nube_billing_rate_runs_total %" PRIu64 "\n", atomic_load(&b->rate_runs));
    fprintf(out, "nube_billing_rate_errors_total %" PRIu64 "\n", atomic_load(&b->rate_errors));
    fprintf(out, "nube_billing_rated_rows_total %" PRIu64 "\n", atomic_load(&b->rated_rows));
    fprintf(out, "nube_billing_last_rate_ms %" PRId64 "\n", atomic_load(&b->last_rate_ms));
    if (b->bus) {
        cl_bus_get_stats(b->bus, &bs);
        fprintf(out, "nube_billing_bus_received_total %" PRIu64 "\n", bs.received);
        fprintf(out, "nube_billing_bus_duplicates_total %" PRIu64 "\n", bs.duplicates);
    }
}

/* Unhealthy while the billing database refuses writes (the last ingest or rating
 * failed); the next success clears it. */
bool bill_api_health(char *reason, size_t len, void *ud)
{
    bill *b = ud;
    if (atomic_load(&b->store_failing)) {
        snprintf(reason, len, "billing database writes failing (%" PRIu64 " ingest, %" PRIu64
                 " rating errors)", atomic_load(&b->ingest_errors), atomic_load(&b->rate_errors));
        return false;
    }
    snprintf(reason, len, "ok");
    return true;
}
