/*
 * test_billing_api.c - nube-billing as a running daemon: usage.samples over a real
 * ZeroMQ DEALER into its ROUTER, and its HTTP API over real HTTP on loopback.
 *
 * One bill_start() per test with a temporary database, HTTP on port 0 and the bus on a
 * free loopback port. Samples carry past timestamps (January 2026) so the figures do not
 * depend on the wall clock; every wait polls its condition with a deadline.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <sqlite3.h>

#include "billing.h"
#include "bus.h"
#include "bus_auth.h"
#include "http.h"
#include "json.h"
#include "token.h"
#include "usage_msg.h"

#define TOKEN "s3cret-admin"
#define PROJ "proj-api"
#define INST "33333333-3333-4333-8333-333333333333"
#define WAIT_MS 5000
#define MIN_MS INT64_C(60000)
#define H_MS INT64_C(3600000)
#define G INT64_C(1000000000)

static void nap(void)
{
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

#define WAIT_UNTIL(expr)                                                                   \
    ({                                                                                     \
        int64_t _deadline = cl_mono_ms() + WAIT_MS;                                        \
        bool _ok;                                                                          \
        while (!(_ok = (expr)) && cl_mono_ms() < _deadline)                                \
            nap();                                                                         \
        _ok;                                                                               \
    })

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

typedef struct fixture {
    char dir[64];
    char db[128];
    char key[128];
    char endpoint[64];
    bill_cfg cfg;
    bill *b;
    uint16_t port;
    int64_t t0; /* 2026-01-01T10:00:00Z */
} fixture;

static void set(fixture *f, const char *sec, const char *key, const char *val)
{
    cl_error err = {0};
    if (cl_config_set(bill_cfg_keys, bill_cfg_nkeys, &f->cfg, sec, key, val, &err) < 0)
        fail_msg("config [%s] %s: %s", sec, key, err.message);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    cl_error err = {0};
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/test_billing_api_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->db, sizeof f->db, "%s/billing.db", f->dir);
    snprintf(f->endpoint, sizeof f->endpoint, "tcp://127.0.0.1:%d", free_port());
    assert_int_equal(cl_config_defaults(bill_cfg_keys, bill_cfg_nkeys, &f->cfg, &err), 0);
    set(f, "database", "connection", f->db);
    set(f, "auth", "admin_token", TOKEN);
    snprintf(f->key, sizeof f->key, "%s/token.key", f->dir);
    set(f, "auth", "token_key_file", f->key);
    set(f, "billing", "port", "0");
    set(f, "billing", "bus_listen", f->endpoint);
    set(f, "billing", "sample_retention_days", "0");
    set(f, "billing", "rate_interval_s", "1");
    set(f, "prices", "flavor_hour", "m1.small=360000");
    set(f, "prices", "vcpu_hour", "36000");
    set(f, "prices", "cpu_core_hour", "3600");
    if (bill_start(&f->cfg, &f->b, &err) < 0)
        fail_msg("bill_start: %s", err.message);
    f->port = bill_http_port(f->b);
    assert_true(f->port > 0);
    assert_int_equal(bill_parse_time("2026-01-01T10:00:00Z", &f->t0), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    char p[192];
    bill_stop(f->b);
    cl_config_free(bill_cfg_keys, bill_cfg_nkeys, &f->cfg);
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", f->db, suffixes[i]);
        unlink(p);
    }
    unlink(f->key);
    assert_int_equal(rmdir(f->dir), 0);
    free(f);
    return 0;
}

/* One HTTP call; returns the status, body in *out (caller frees with cl_http_result_free). */
static long call(fixture *f, const char *method, const char *path, const char *token,
                 const char *body, cl_http_result *out)
{
    char url[512], auth[CL_TOKEN_MAX + 32];
    const char *headers[3] = {NULL, NULL, NULL};
    cl_error err = {0};
    size_t nh = 0;

    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", (unsigned)f->port, path);
    if (token) {
        snprintf(auth, sizeof auth, "X-Auth-Token: %s", token);
        headers[nh++] = auth;
    }
    if (body)
        headers[nh++] = "Content-Type: application/json";
    memset(out, 0, sizeof *out);
    if (cl_http_request(method, url, headers, body, body ? strlen(body) : 0, 5000, out, &err) <
        0)
        fail_msg("%s %s: %s", method, path, err.message);
    return out->status;
}

static json_object *get_json(fixture *f, const char *path, long want)
{
    cl_http_result r;
    json_object *o = NULL;
    cl_error err = {0};
    long st = call(f, "GET", path, TOKEN, NULL, &r);
    if (st != want)
        fail_msg("GET %s: %ld (want %ld): %s", path, st, want, r.body);
    assert_int_equal(cl_json_parse(r.body, r.body_len, &o, &err), 0);
    cl_http_result_free(&r);
    return o;
}

static cl_usage_sample sample(int64_t ts, cl_usage_kind kind)
{
    cl_usage_sample s;
    memset(&s, 0, sizeof s);
    cl_uuid_new(s.id);
    cl_strlcpy(s.instance_uuid, INST, sizeof s.instance_uuid);
    cl_strlcpy(s.project_id, PROJ, sizeof s.project_id);
    cl_strlcpy(s.host, "host-a", sizeof s.host);
    s.ts = ts;
    s.kind = kind;
    s.gauges.mem_used_mb = -1;
    return s;
}

/* m1.small (1 vCPU) started 10:00, stopped 11:30 (5400 s), deleted 12:00; CPU counters
 * 10:30 = 100e9, 11:00 = 250e9 (boot b1), reboot b2 at 11:10 = 40e9. CPU 290e9 ns.
 * Costs: flavor 5400 x 100 = 540000, vcpu 5400 x 10 = 54000, cpu 290 -> 594290 µ. */
#define API_TOTAL INT64_C(594290)

static size_t build_samples(int64_t t0, cl_usage_sample *s)
{
    size_t n = 0;
    static const struct { int min; cl_usage_event e; } evs[] = {
        {0, CL_USAGE_EV_STARTED}, {90, CL_USAGE_EV_STOPPED}, {120, CL_USAGE_EV_DELETED}};
    static const struct { int min; const char *boot; int64_t cpu; } cs[] = {
        {30, "b1", 100}, {60, "b1", 250}, {70, "b2", 40}};
    for (size_t i = 0; i < 3; i++) {
        s[n] = sample(t0 + evs[i].min * MIN_MS, CL_USAGE_EVENT);
        s[n].event = evs[i].e;
        s[n].has_gauges = true;
        s[n].gauges.vcpus = 1;
        s[n].gauges.ram_mb = 2048;
        s[n].gauges.disk_gb = 20;
        cl_strlcpy(s[n].flavor_id, "m1.small", sizeof s[n].flavor_id);
        n++;
    }
    for (size_t i = 0; i < 3; i++) {
        s[n] = sample(t0 + cs[i].min * MIN_MS, CL_USAGE_COUNTER);
        s[n].has_counters = true;
        s[n].counters.cpu_ns = cs[i].cpu * G;
        cl_strlcpy(s[n].boot_id, cs[i].boot, sizeof s[n].boot_id);
        n++;
    }
    return n;
}

static cl_bus *dealer(fixture *f)
{
    cl_bus_opts o = {.role = CL_BUS_DEALER, .endpoint = f->endpoint, .name = "host-a",
                     .resend_ms = 200};
    cl_bus *bus = NULL;
    cl_error err = {0};
    if (cl_bus_new(&o, &bus, &err) < 0)
        fail_msg("dealer: %s", err.message);
    return bus;
}

static void rate_window(fixture *f, int64_t start, int64_t end)
{
    char body[128];
    cl_http_result r;
    snprintf(body, sizeof body, "{\"start\": %lld, \"end\": %lld}", (long long)start,
             (long long)end);
    long st = call(f, "POST", "/v1/rate", TOKEN, body, &r);
    if (st != 200)
        fail_msg("rate: %ld %s", st, r.body);
    cl_http_result_free(&r);
}

static int64_t api_total(fixture *f)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/costs?project_id=%s&start=2026-01-01&end=2026-01-02",
             PROJ);
    json_object *o = get_json(f, path, 200);
    json_object *c0 = json_object_array_get_idx(cl_json_path(o, "costs"), 0);
    int64_t total = c0 ? json_object_get_int64(cl_json_path(c0, "total")) : -1;
    json_object_put(o);
    return total;
}

/* Samples over the bus (acked only once stored), a resent batch, then every report. */
static void test_bus_ingest_and_reports(void **state)
{
    fixture *f = *state;
    cl_usage_sample s[8];
    size_t n = build_samples(f->t0, s);
    cl_bus *bus = dealer(f);

    assert_int_equal(cl_bus_send(bus, NULL, CL_MSG_USAGE_SAMPLES, NULL,
                                 cl_usage_batch_encode(s, n), true, NULL), 0);
    assert_true(WAIT_UNTIL(cl_bus_pending(bus) == 0));
    /* The agent's outbox resends the same samples in a new message: counted once. */
    assert_int_equal(cl_bus_send(bus, NULL, CL_MSG_USAGE_SAMPLES, NULL,
                                 cl_usage_batch_encode(s, n), true, NULL), 0);
    assert_true(WAIT_UNTIL(cl_bus_pending(bus) == 0));
    cl_bus_free(bus);

    rate_window(f, f->t0 - H_MS, f->t0 + 23 * H_MS);
    assert_int_equal(api_total(f), API_TOTAL);

    /* usage: quantities per meter */
    char path[256];
    snprintf(path, sizeof path, "/v1/usage?project_id=%s&start=%lld&end=%lld", PROJ,
             (long long)f->t0, (long long)(f->t0 + 24 * H_MS));
    json_object *u = get_json(f, path, 200);
    json_object *arr = cl_json_path(u, "usage");
    int64_t cpu = -1, flavor = -1;
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *row = json_object_array_get_idx(arr, i);
        const char *m = json_object_get_string(cl_json_path(row, "meter"));
        if (strcmp(m, "cpu") == 0)
            cpu = json_object_get_int64(cl_json_path(row, "quantity"));
        if (strcmp(m, "flavor.m1.small") == 0)
            flavor = json_object_get_int64(cl_json_path(row, "quantity"));
    }
    assert_int_equal(cpu, 290 * G);
    assert_int_equal(flavor, 5400);
    json_object_put(u);

    /* invoice of the month */
    snprintf(path, sizeof path, "/v1/invoices?project_id=%s&month=2026-01", PROJ);
    json_object *inv = get_json(f, path, 200);
    json_object *i0 = json_object_array_get_idx(cl_json_path(inv, "invoices"), 0);
    assert_non_null(i0);
    assert_int_equal(json_object_get_int64(cl_json_path(i0, "total")), API_TOTAL);
    assert_string_equal(json_object_get_string(cl_json_path(i0, "currency")), "EUR");
    json_object_put(inv);

    /* CSV export: header + rows whose costs add up to the invoice */
    cl_http_result r;
    snprintf(path, sizeof path, "/v1/export?format=csv&project_id=%s&start=2026-01-01"
             "&end=2026-01-02", PROJ);
    assert_int_equal(call(f, "GET", path, TOKEN, NULL, &r), 200);
    assert_true(strncmp(r.body, "period,project,resource,meter,quantity,unit,price,cost",
                        54) == 0);
    int64_t sum = 0;
    size_t lines = 0;
    for (char *save = NULL, *line = strtok_r(strchr(r.body, '\n') + 1, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save), lines++) {
        char *fields[10];
        size_t nf = 0;
        for (char *s2 = NULL, *tok = strtok_r(line, ",", &s2); tok && nf < 10;
             tok = strtok_r(NULL, ",", &s2))
            fields[nf++] = tok;
        assert_int_equal(nf, 10);
        assert_string_equal(fields[1], PROJ);
        int64_t c = 0;
        assert_int_equal(cl_parse_int64(fields[7], &c), 0);
        sum += c;
    }
    assert_int_equal(sum, API_TOTAL);
    cl_http_result_free(&r);

    /* JSON export: the same rows */
    snprintf(path, sizeof path, "/v1/export?format=json&project_id=%s&start=2026-01-01"
             "&end=2026-01-02", PROJ);
    json_object *ex = get_json(f, path, 200);
    assert_int_equal(json_object_array_length(cl_json_path(ex, "rows")), lines);
    json_object_put(ex);

    /* /metrics counts the duplicates; /healthz is fine */
    assert_int_equal(call(f, "GET", "/metrics", NULL, NULL, &r), 200);
    assert_non_null(strstr(r.body, "nube_billing_samples_total{result=\"accepted\"} 6"));
    assert_non_null(strstr(r.body, "nube_billing_samples_total{result=\"duplicate\"} 6"));
    cl_http_result_free(&r);
    assert_int_equal(call(f, "GET", "/healthz", NULL, NULL, &r), 200);
    cl_http_result_free(&r);
}

/* The periodic tick rates what arrived without anyone asking. */
static void test_tick_rates_pending(void **state)
{
    fixture *f = *state;
    cl_usage_sample s[8];
    size_t n = build_samples(f->t0, s);
    cl_bus *bus = dealer(f);

    assert_int_equal(cl_bus_send(bus, NULL, CL_MSG_USAGE_SAMPLES, NULL,
                                 cl_usage_batch_encode(s, n), true, NULL), 0);
    assert_true(WAIT_UNTIL(cl_bus_pending(bus) == 0));
    cl_bus_free(bus);
    assert_true(WAIT_UNTIL(api_total(f) == API_TOTAL));
}

static void test_auth_and_prices(void **state)
{
    fixture *f = *state;
    cl_http_result r;

    assert_int_equal(call(f, "GET", "/v1/prices", NULL, NULL, &r), 401);
    assert_non_null(strstr(r.body, "unauthorized"));
    cl_http_result_free(&r);
    assert_int_equal(call(f, "GET", "/v1/prices", "wrong", NULL, &r), 401);
    cl_http_result_free(&r);
    assert_int_equal(call(f, "GET", "/v1/costs?start=1&end=2", "s3cret-admiN", NULL, &r), 401);
    cl_http_result_free(&r);

    json_object *p = get_json(f, "/v1/prices", 200);
    json_object *fl = cl_json_path(p, "prices.flavors");
    json_object *small = NULL;
    assert_true(json_object_object_get_ex(fl, "m1.small", &small));
    assert_int_equal(json_object_get_int64(small), 360000);
    assert_int_equal(json_object_get_int64(cl_json_path(p, "prices.vcpu_hour")), 36000);
    json_object_put(p);

    assert_int_equal(call(f, "PUT", "/v1/prices", TOKEN,
                          "{\"prices\": {\"currency\": \"USD\", \"net_gb_out\": 90000,"
                          " \"flavors\": {\"m1.tiny\": 5000}}}",
                          &r),
                     200);
    cl_http_result_free(&r);
    p = get_json(f, "/v1/prices", 200);
    assert_string_equal(json_object_get_string(cl_json_path(p, "prices.currency")), "USD");
    assert_int_equal(json_object_get_int64(cl_json_path(p, "prices.net_gb_out")), 90000);
    assert_int_equal(json_object_get_int64(cl_json_path(p, "prices.vcpu_hour")), 0);
    json_object_put(p);

    assert_int_equal(call(f, "PUT", "/v1/prices", TOKEN,
                          "{\"prices\": {\"vcpu_hour\": -5}}", &r), 400);
    assert_non_null(strstr(r.body, "vcpu_hour"));
    cl_http_result_free(&r);
    assert_int_equal(call(f, "PUT", "/v1/prices", TOKEN, "{\"prices\": {\"currency\": \"eur\"}}",
                          &r), 400);
    cl_http_result_free(&r);
}

static void test_bad_requests(void **state)
{
    fixture *f = *state;
    cl_http_result r;
    static const char *const paths[] = {
        "/v1/usage?project_id=p",                       /* no window */
        "/v1/usage?start=2026-01-02&end=2026-01-01",    /* end before start */
        "/v1/costs?start=yesterday&end=today",
        "/v1/invoices?month=2026-13",
        "/v1/invoices",
        "/v1/export?format=xml&start=1&end=2",
    };
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        long st = call(f, "GET", paths[i], TOKEN, NULL, &r);
        if (st != 400)
            fail_msg("GET %s: %ld, want 400 (%s)", paths[i], st, r.body);
        assert_non_null(strstr(r.body, "badRequest"));
        cl_http_result_free(&r);
    }
    assert_int_equal(call(f, "POST", "/v1/rate", TOKEN, "{\"start\": 10}", &r), 400);
    cl_http_result_free(&r);
    assert_int_equal(call(f, "POST", "/v1/rate", TOKEN, "{\"start\": 10, \"end\": 5}", &r), 400);
    cl_http_result_free(&r);
    assert_int_equal(call(f, "DELETE", "/v1/prices", TOKEN, NULL, &r), 405);
    cl_http_result_free(&r);
    /* An empty month is an empty list, not an error. */
    json_object *inv = get_json(f, "/v1/invoices?month=2026-02", 200);
    assert_int_equal(json_object_array_length(cl_json_path(inv, "invoices")), 0);
    json_object_put(inv);
}

/* A message billing cannot use is acknowledged (so the agent does not resend it
 * forever), counted, and stores nothing. */
static void test_bad_batch_is_counted(void **state)
{
    fixture *f = *state;
    cl_bus *bus = dealer(f);
    cl_http_result r;
    json_object *body = json_object_new_object();
    json_object_object_add(body, "samples", json_object_new_array());

    assert_int_equal(cl_bus_send(bus, NULL, CL_MSG_USAGE_SAMPLES, NULL, body, true, NULL), 0);
    assert_true(WAIT_UNTIL(cl_bus_pending(bus) == 0));
    cl_bus_free(bus);
    assert_int_equal(call(f, "GET", "/metrics", NULL, NULL, &r), 200);
    assert_non_null(strstr(r.body, "nube_billing_samples_total{result=\"rejected\"} 1"));
    assert_non_null(strstr(r.body, "nube_billing_samples_total{result=\"accepted\"} 0"));
    cl_http_result_free(&r);
}

/* The value of a /metrics line "name value" (-1 when absent). */
static int64_t metric(fixture *f, const char *name)
{
    cl_http_result r;
    char key[128], num[32] = "";
    int64_t v = -1;

    assert_int_equal(call(f, "GET", "/metrics", NULL, NULL, &r), 200);
    snprintf(key, sizeof key, "\n%s ", name);
    const char *p = strstr(r.body, key);
    if (p && sscanf(p + strlen(key), "%31[0-9]", num) == 1 && cl_parse_int64(num, &v) < 0)
        v = -1;
    cl_http_result_free(&r);
    return v;
}

/* A sealed token for project (NULL = unscoped) with roles, from the key billing made. */
static void mint(fixture *f, const char *project, unsigned roles, int64_t ttl_ms,
                 char out[CL_TOKEN_MAX])
{
    cl_token_key key;
    cl_auth a;
    cl_error err = {0};

    assert_int_equal(cl_token_key_load(f->key, false, &key, &err), 0);
    memset(&a, 0, sizeof a);
    cl_strlcpy(a.user_id, "0123456789abcdef0123456789abcdef", sizeof a.user_id);
    cl_strlcpy(a.domain_id, "default", sizeof a.domain_id);
    if (project)
        cl_strlcpy(a.project_id, project, sizeof a.project_id);
    a.roles = roles;
    a.issued_ms = cl_now_ms() - 2 * H_MS;
    a.expires_ms = cl_now_ms() + ttl_ms;
    if (cl_token_issue(&key, &a, out, CL_TOKEN_MAX, &err) < 0)
        fail_msg("token: %s", err.message);
}

static long get_as(fixture *f, const char *token, const char *path, cl_http_result *r)
{
    return call(f, "GET", path, token, NULL, r);
}

/* Two projects' samples; tokens of each see their own figures only, admin calls need
 * the admin role, the static admin token and an admin sealed token see everything. */
static void test_project_tokens(void **state)
{
    fixture *f = *state;
    cl_usage_sample s[16];
    size_t n = build_samples(f->t0, s);
    cl_bus *bus = dealer(f);
    char member[CL_TOKEN_MAX], other[CL_TOKEN_MAX], admin[CL_TOKEN_MAX];
    char expired[CL_TOKEN_MAX], unscoped[CL_TOKEN_MAX], path[256];
    cl_http_result r;

    /* The same workload again as another instance of project "proj-b". */
    for (size_t i = 0; i < 6; i++) {
        s[n + i] = s[i];
        cl_uuid_new(s[n + i].id);
        cl_strlcpy(s[n + i].instance_uuid, "44444444-4444-4444-8444-444444444444",
                   sizeof s[n + i].instance_uuid);
        cl_strlcpy(s[n + i].project_id, "proj-b", sizeof s[n + i].project_id);
    }
    n += 6;
    assert_int_equal(cl_bus_send(bus, NULL, CL_MSG_USAGE_SAMPLES, NULL,
                                 cl_usage_batch_encode(s, n), true, NULL), 0);
    assert_true(WAIT_UNTIL(cl_bus_pending(bus) == 0));
    cl_bus_free(bus);
    rate_window(f, f->t0 - H_MS, f->t0 + 23 * H_MS);

    mint(f, PROJ, CL_ROLE_BIT(CL_ROLE_MEMBER) | CL_ROLE_BIT(CL_ROLE_READER), H_MS, member);
    mint(f, "proj-b", CL_ROLE_BIT(CL_ROLE_READER), H_MS, other);
    mint(f, "admin", CL_ROLE_BIT(CL_ROLE_ADMIN), H_MS, admin);
    mint(f, PROJ, CL_ROLE_BIT(CL_ROLE_MEMBER), -1000, expired);
    mint(f, NULL, CL_ROLE_BIT(CL_ROLE_MEMBER), H_MS, unscoped);

    /* No project_id: the caller's own project, and only it. */
    assert_int_equal(get_as(f, member, "/v1/costs?start=2026-01-01&end=2026-01-02", &r), 200);
    json_object *o = NULL;
    cl_error err = {0};
    assert_int_equal(cl_json_parse(r.body, r.body_len, &o, &err), 0);
    cl_http_result_free(&r);
    json_object *costs = cl_json_path(o, "costs");
    assert_int_equal(json_object_array_length(costs), 1);
    json_object *c0 = json_object_array_get_idx(costs, 0);
    assert_string_equal(json_object_get_string(cl_json_path(c0, "project_id")), PROJ);
    assert_int_equal(json_object_get_int64(cl_json_path(c0, "total")), API_TOTAL);
    json_object_put(o);

    /* Another project's usage, costs, invoices and export: 404, as if absent. */
    static const char *const others[] = {
        "/v1/usage?project_id=proj-b&start=2026-01-01&end=2026-01-02",
        "/v1/costs?project_id=proj-b&start=2026-01-01&end=2026-01-02",
        "/v1/invoices?project_id=proj-b&month=2026-01",
        "/v1/export?format=csv&project_id=proj-b&start=2026-01-01&end=2026-01-02",
    };
    for (size_t i = 0; i < sizeof others / sizeof *others; i++) {
        long st = get_as(f, member, others[i], &r);
        if (st != 404)
            fail_msg("GET %s as %s member: %ld (%s)", others[i], PROJ, st, r.body);
        cl_http_result_free(&r);
        assert_int_equal(get_as(f, other, others[i], &r), 200);
        cl_http_result_free(&r);
    }
    /* proj-b's reader exports its own rows only. */
    assert_int_equal(get_as(f, other, "/v1/export?format=csv&start=2026-01-01&end=2026-01-02",
                            &r), 200);
    assert_non_null(strstr(r.body, ",proj-b,"));
    assert_null(strstr(r.body, "," PROJ ","));
    cl_http_result_free(&r);

    /* Admin calls need the admin role. */
    assert_int_equal(get_as(f, member, "/v1/prices", &r), 403);
    cl_http_result_free(&r);
    assert_int_equal(call(f, "POST", "/v1/rate", member, "{\"start\": 0, \"end\": 3600000}",
                          &r), 403);
    cl_http_result_free(&r);
    assert_int_equal(call(f, "PUT", "/v1/prices", other, "{\"prices\": {}}", &r), 403);
    cl_http_result_free(&r);
    assert_int_equal(get_as(f, admin, "/v1/prices", &r), 200);
    cl_http_result_free(&r);

    /* Admin (sealed or static): every project. */
    const char *admins[] = {admin, TOKEN};
    for (size_t i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "/v1/invoices?month=2026-01");
        assert_int_equal(get_as(f, admins[i], path, &r), 200);
        assert_int_equal(cl_json_parse(r.body, r.body_len, &o, &err), 0);
        cl_http_result_free(&r);
        assert_int_equal(json_object_array_length(cl_json_path(o, "invoices")), 2);
        json_object_put(o);
    }

    /* Expired, unscoped, tampered and foreign tokens. */
    assert_int_equal(get_as(f, expired, "/v1/costs?start=2026-01-01&end=2026-01-02", &r), 401);
    cl_http_result_free(&r);
    assert_int_equal(get_as(f, unscoped, "/v1/costs?start=2026-01-01&end=2026-01-02", &r),
                     403);
    cl_http_result_free(&r);
    member[strlen(member) - 3] ^= 1;
    assert_int_equal(get_as(f, member, "/v1/costs?start=2026-01-01&end=2026-01-02", &r), 401);
    cl_http_result_free(&r);
}

/* A group whose commit fails is not acknowledged: the agent's resend lands once the
 * database works again, and the totals are exact. The failure is real: a trigger that
 * aborts every insert into samples, added and dropped through a second connection. */
static void test_failed_commit_is_resent(void **state)
{
    fixture *f = *state;
    cl_usage_sample s[8];
    size_t n = build_samples(f->t0, s);
    sqlite3 *db = NULL;
    cl_http_result r;

    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_exec(db, "CREATE TRIGGER fail_ingest BEFORE INSERT ON samples"
                                      " BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
                                  NULL, NULL, NULL), SQLITE_OK);
    cl_bus *bus = dealer(f);
    assert_int_equal(cl_bus_send(bus, NULL, CL_MSG_USAGE_SAMPLES, NULL,
                                 cl_usage_batch_encode(s, n), true, NULL), 0);
    /* Wait for at least two failed attempts (the first and a resend). */
    assert_true(WAIT_UNTIL(metric(f, "nube_billing_ingest_errors_total") >= 2));
    assert_int_equal(cl_bus_pending(bus), 1); /* never acked */
    assert_int_equal(call(f, "GET", "/healthz", NULL, NULL, &r), 503);
    cl_http_result_free(&r);

    assert_int_equal(sqlite3_exec(db, "DROP TRIGGER fail_ingest", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_true(WAIT_UNTIL(cl_bus_pending(bus) == 0));
    cl_bus_free(bus);
    rate_window(f, f->t0 - H_MS, f->t0 + 23 * H_MS);
    assert_int_equal(api_total(f), API_TOTAL);
    assert_int_equal(call(f, "GET", "/healthz", NULL, NULL, &r), 200);
    cl_http_result_free(&r);
}

/* Many messages from several agents at once: group commits, every message acked once
 * its group committed, every sample stored once. */
static void test_group_commit(void **state)
{
    fixture *f = *state;
    enum { AGENTS = 3, MSGS = 40, PER = 25 };
    cl_bus *bus[AGENTS];
    cl_http_result r;
    char name[32], want[96];

    for (int a = 0; a < AGENTS; a++) {
        snprintf(name, sizeof name, "host-%d", a);
        cl_bus_opts o = {.role = CL_BUS_DEALER, .endpoint = f->endpoint, .name = name,
                         .resend_ms = 2000};
        cl_error err = {0};
        if (cl_bus_new(&o, &bus[a], &err) < 0)
            fail_msg("dealer: %s", err.message);
    }
    for (int m = 0; m < MSGS; m++)
        for (int a = 0; a < AGENTS; a++) {
            cl_usage_sample v[PER];
            for (int i = 0; i < PER; i++) {
                v[i] = sample(f->t0 + (m * PER + i) * MIN_MS, CL_USAGE_COUNTER);
                snprintf(v[i].instance_uuid, sizeof v[i].instance_uuid,
                         "5555555%d-5555-4555-8555-555555555555", a);
                v[i].has_counters = true;
                v[i].counters.cpu_ns = (m * PER + i + 1) * G;
                cl_strlcpy(v[i].boot_id, "b", sizeof v[i].boot_id);
            }
            assert_int_equal(cl_bus_send(bus[a], NULL, CL_MSG_USAGE_SAMPLES, NULL,
                                         cl_usage_batch_encode(v, PER), true, NULL), 0);
        }
    for (int a = 0; a < AGENTS; a++) {
        assert_true(WAIT_UNTIL(cl_bus_pending(bus[a]) == 0));
        cl_bus_free(bus[a]);
    }
    assert_int_equal(call(f, "GET", "/metrics", NULL, NULL, &r), 200);
    snprintf(want, sizeof want, "nube_billing_samples_total{result=\"accepted\"} %d",
             AGENTS * MSGS * PER);
    assert_non_null(strstr(r.body, want));
    assert_non_null(strstr(r.body, "nube_billing_ingest_errors_total 0\n"));
    cl_http_result_free(&r);
    /* Fewer commits than messages (the groups shared them). */
    int64_t groups = metric(f, "nube_billing_group_commits_total");
    assert_true(groups >= 1 && groups < AGENTS * MSGS);
}

/* A large export is streamed (chunked, many 64 KiB blocks): every row arrives once, in
 * order, for CSV and JSON. The rows are written straight into the rated table. */
static void test_streamed_export(void **state)
{
    fixture *f = *state;
    enum { ROWS = 30000 };
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    cl_http_result r;
    char path[256];

    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO rated VALUES(?1, ?2, ?3, 'cpu', ?4,"
                                            " 'ns', 1, 'core-hour', ?4, 'EUR')", -1, &q, NULL),
                     SQLITE_OK);
    for (int i = 0; i < ROWS; i++) {
        char res[64];
        snprintf(res, sizeof res, "res-%06d", i % 1000);
        sqlite3_bind_int64(q, 1, f->t0 + (int64_t)(i / 1000) * H_MS);
        sqlite3_bind_text(q, 2, i % 2 ? PROJ : "proj-b", -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 3, res, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(q, 4, i);
        assert_int_equal(sqlite3_step(q), SQLITE_DONE);
        sqlite3_reset(q);
    }
    sqlite3_finalize(q);
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    snprintf(path, sizeof path, "/v1/export?format=csv&start=%lld&end=%lld",
             (long long)f->t0, (long long)(f->t0 + 31 * H_MS));
    assert_int_equal(call(f, "GET", path, TOKEN, NULL, &r), 200);
    assert_true(r.body_len > 4 * 65536);
    size_t lines = 0;
    int64_t sum = 0;
    for (char *save = NULL, *line = strtok_r(r.body, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save), lines++) {
        char *cost = strrchr(line, ',');
        int64_t c = 0;
        assert_non_null(cost);
        *cost = '\0';
        cost = strrchr(line, ',');
        *cost = '\0';
        cost = strrchr(line, ',');
        if (lines > 0) {
            assert_int_equal(cl_parse_int64(cost + 1, &c), 0);
            sum += c;
        }
    }
    assert_int_equal(lines, ROWS + 1);
    assert_int_equal(sum, (int64_t)ROWS * (ROWS - 1) / 2);
    cl_http_result_free(&r);

    snprintf(path, sizeof path, "/v1/export?format=json&project_id=%s&start=%lld&end=%lld",
             PROJ, (long long)f->t0, (long long)(f->t0 + 31 * H_MS));
    json_object *ex = get_json(f, path, 200);
    json_object *rows = cl_json_path(ex, "rows");
    assert_int_equal(json_object_array_length(rows), ROWS / 2);
    for (size_t i = 0; i < json_object_array_length(rows); i++)
        assert_string_equal(
            json_object_get_string(cl_json_path(json_object_array_get_idx(rows, i), "project")),
            PROJ);
    json_object_put(ex);
}

/* With CURVE and allowed keys, a key speaks for its own host only: a batch sent with
 * host-a's key holding a sample about host-b has that sample refused (and counted), the
 * one about host-a stored. */
static void test_curve_samples_of_own_host_only(void **state)
{
    fixture *f = *state;
    char spub[CL_BUS_KEY_LEN], ssec[CL_BUS_KEY_LEN], cpub[CL_BUS_KEY_LEN],
        csec[CL_BUS_KEY_LEN];
    char skey[128], ckey[128], allowed[128], cpubf[192];
    cl_error err = {0};

    if (cl_bus_keypair(spub, ssec) == -ENOTSUP)
        skip();
    assert_int_equal(cl_bus_keypair(cpub, csec), 0);
    snprintf(skey, sizeof skey, "%s/billing.key", f->dir);
    snprintf(ckey, sizeof ckey, "%s/host-a.key", f->dir);
    snprintf(allowed, sizeof allowed, "%s/allowed", f->dir);
    snprintf(cpubf, sizeof cpubf, "%s/host-a.pub", allowed);
    assert_int_equal(mkdir(allowed, 0700), 0);
    assert_int_equal(cl_bus_key_write(skey, NULL, "nube-billing", spub, ssec, false, &err), 0);
    assert_int_equal(cl_bus_key_write(ckey, cpubf, "host-a", cpub, csec, false, &err), 0);

    bill_stop(f->b);
    f->b = NULL;
    set(f, "billing", "curve_secret_key_file", skey);
    set(f, "billing", "allowed_keys_dir", allowed);
    if (bill_start(&f->cfg, &f->b, &err) < 0)
        fail_msg("bill_start with CURVE: %s", err.message);
    f->port = bill_http_port(f->b);

    cl_bus_opts o = {.role = CL_BUS_DEALER, .endpoint = f->endpoint, .name = "host-a",
                     .resend_ms = 200, .curve_public_key = cpub, .curve_secret_key = csec,
                     .curve_server_key = spub};
    cl_bus *bus = NULL;
    if (cl_bus_new(&o, &bus, &err) < 0)
        fail_msg("dealer: %s", err.message);
    cl_usage_sample s[2] = {sample(f->t0, CL_USAGE_GAUGE), sample(f->t0, CL_USAGE_GAUGE)};
    for (size_t i = 0; i < 2; i++) {
        s[i].has_gauges = true;
        s[i].gauges.vcpus = 1;
    }
    cl_strlcpy(s[1].host, "host-b", sizeof s[1].host);
    assert_int_equal(cl_bus_send(bus, NULL, CL_MSG_USAGE_SAMPLES, NULL,
                                 cl_usage_batch_encode(s, 2), true, NULL), 0);
    assert_true(WAIT_UNTIL(cl_bus_pending(bus) == 0));
    cl_bus_free(bus);
    assert_int_equal(metric(f, "nube_billing_samples_total{result=\"rejected\"}"), 1);
    assert_int_equal(metric(f, "nube_billing_samples_total{result=\"accepted\"}"), 1);

    unlink(cpubf);
    unlink(ckey);
    unlink(skey);
    assert_int_equal(rmdir(allowed), 0);
}

int main(void)
{
    cl_http_client_global_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bus_ingest_and_reports, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tick_rates_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_and_prices, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_batch_is_counted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_project_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_commit_is_resent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_streamed_export, setup, teardown),
        cmocka_unit_test_setup_teardown(test_curve_samples_of_own_host_only, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
