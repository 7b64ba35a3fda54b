/*
 * test_billing_rating.c - exactness of nube-billing's metering and rating, on a
 * controlled clock.
 *
 * Every test builds samples with explicit timestamps, stores them in a real SQLite file
 * in a mkdtemp directory, rates with an explicit "now" and checks quantities and costs
 * to the micro-unit. Prices are chosen so each rated row divides exactly, which makes the
 * expected totals easy to derive by hand in the comments; one test checks the rounding
 * rule (half up, once per row) on purpose. Also here: the usage.samples codec
 * (libcloud/usage_msg.c), which billing owns.
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <sqlite3.h>

#include "bill_int.h"
#include "billing.h"
#include "json.h"
#include "usage_msg.h"

#define INST_A "11111111-1111-4111-8111-111111111111"
#define INST_B "22222222-2222-4222-8222-222222222222"
#define PROJ "proj-1"
#define S_MS INT64_C(1000)
#define MIN_MS INT64_C(60000)
#define H_MS INT64_C(3600000)
#define G INT64_C(1000000000) /* 1e9 ns */

typedef struct fixture {
    char dir[64];
    char path[128];
    bill_store *st;
    int64_t t0; /* 2026-01-01T10:00:00Z */
    bool pruned; /* samples were pruned: the rollup keeps what they measured */
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    cl_error err = {0};
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/test_billing_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/billing.db", f->dir);
    assert_int_equal(bill_store_open(f->path, &f->st, &err), 0);
    assert_int_equal(bill_parse_time("2026-01-01T10:00:00Z", &f->t0), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    char p[192];
    int64_t mismatches = -1;
    /* Every test's ingests left the hourly rollup equal to the samples' deltas. */
    assert_int_equal(bill_rollup_check(f->st, &mismatches), 0);
    if (!f->pruned)
        assert_int_equal(mismatches, 0);
    bill_store_close(f->st);
    static const char *const suffixes[] = {"", "-wal", "-shm", "2", "2-wal", "2-shm"};
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
        snprintf(p, sizeof p, "%s%s", f->path, suffixes[i]);
        unlink(p);
    }
    assert_int_equal(rmdir(f->dir), 0);
    free(f);
    return 0;
}

/* Exact prices (see the file comment): per second, small flavor 100, large 200 µ; 10 µ
 * per vCPU-s; 1 µ per GiB-s of RAM... expressed per hour as the plan wants them. */
static void set_prices(bill_store *st, int64_t small_hour)
{
    bill_prices *p = calloc(1, sizeof *p);
    cl_error err = {0};
    assert_non_null(p);
    cl_strlcpy(p->currency, "EUR", sizeof p->currency);
    p->vcpu_hour = 36000;           /* 10 µ per vCPU-second */
    p->ram_gb_hour = 3600;          /* 1 µ per GiB-second */
    p->disk_gb_hour = 360;          /* 0.1 µ per GiB-second */
    p->cpu_core_hour = 3600;        /* 1 µ per 1e9 ns of CPU time */
    p->net_gb_in = INT64_C(1) << 30;/* 1 µ per byte received */
    p->net_gb_out = 0;
    p->nflavors = 2;
    cl_strlcpy(p->flavors[0].flavor_id, "m1.small", CL_ID_MAX);
    p->flavors[0].hour = small_hour;
    cl_strlcpy(p->flavors[1].flavor_id, "m1.large", CL_ID_MAX);
    p->flavors[1].hour = 720000;    /* 200 µ per second */
    assert_int_equal(bill_prices_put(st, p, &err), 0);
    free(p);
}

static cl_usage_sample ev(const char *inst, int64_t ts, cl_usage_event e, bool large)
{
    cl_usage_sample s;
    memset(&s, 0, sizeof s);
    cl_uuid_new(s.id);
    cl_strlcpy(s.instance_uuid, inst, sizeof s.instance_uuid);
    cl_strlcpy(s.project_id, PROJ, sizeof s.project_id);
    cl_strlcpy(s.host, "host-1", sizeof s.host);
    s.ts = ts;
    s.kind = CL_USAGE_EVENT;
    s.event = e;
    s.has_gauges = true;
    s.gauges.vcpus = large ? 4 : 1;
    s.gauges.ram_mb = large ? 8192 : 2048;
    s.gauges.disk_gb = large ? 80 : 20;
    s.gauges.mem_used_mb = -1;
    cl_strlcpy(s.flavor_id, large ? "m1.large" : "m1.small", sizeof s.flavor_id);
    return s;
}

static cl_usage_sample ctr(const char *inst, int64_t ts, const char *boot, int64_t cpu,
                           int64_t rx)
{
    cl_usage_sample s;
    memset(&s, 0, sizeof s);
    cl_uuid_new(s.id);
    cl_strlcpy(s.instance_uuid, inst, sizeof s.instance_uuid);
    cl_strlcpy(s.project_id, PROJ, sizeof s.project_id);
    cl_strlcpy(s.host, "host-1", sizeof s.host);
    s.ts = ts;
    s.kind = CL_USAGE_COUNTER;
    s.has_counters = true;
    s.counters.cpu_ns = cpu;
    s.counters.net_rx_bytes = rx;
    s.counters.net_tx_bytes = rx * 2;
    cl_strlcpy(s.boot_id, boot, sizeof s.boot_id);
    return s;
}

static void ingest(bill_store *st, const cl_usage_sample *s, size_t n, bill_ingest_stats *stats)
{
    cl_error err = {0};
    assert_int_equal(bill_ingest(st, s, n, 0, stats, &err), 0);
}

static void rate(bill_store *st, int64_t start, int64_t end, int64_t now)
{
    bill_rate_opts o = {.now_ms = now, .min_charge_s = 60};
    cl_error err = {0};
    int r = bill_rate(st, start, end, &o, NULL, &err);
    if (r < 0)
        fail_msg("rate: %s", err.message);
}

static int64_t cost(bill_store *st, int64_t start, int64_t end)
{
    int64_t c = -1;
    cl_error err = {0};
    assert_int_equal(bill_total_cost(st, PROJ, start, end, &c, &err), 0);
    return c;
}

static int64_t qty(bill_store *st, const char *meter, int64_t start, int64_t end)
{
    int64_t q = -1;
    cl_error err = {0};
    assert_int_equal(bill_total_quantity(st, PROJ, NULL, meter, start, end, &q, &err), 0);
    return q;
}

/* The life of one instance at known times (t0 = 10:00:00):
 *   10:00:00 created (m1.small: 1 vCPU, 2048 MiB, 20 GiB)
 *   10:00:30 started
 *   11:30:00 stopped          running 5370 s  (hour 10: 3570, hour 11: 1800)
 *   12:00:00 started
 *   12:15:00 resized m1.large running small 900 s, then large
 *   12:45:00 stopped          large 1800 s (the interval is 2700 s: no top-up)
 *   13:00:00 started
 *   13:00:20 stopped          20 s, topped up to the 60 s minimum at m1.large
 *   14:00:00 deleted
 */
static void load_lifecycle(fixture *f, const char *inst)
{
    int64_t t = f->t0;
    cl_usage_sample s[] = {
        ev(inst, t, CL_USAGE_EV_CREATED, false),
        ev(inst, t + 30 * S_MS, CL_USAGE_EV_STARTED, false),
        ev(inst, t + 90 * MIN_MS, CL_USAGE_EV_STOPPED, false),
        ev(inst, t + 120 * MIN_MS, CL_USAGE_EV_STARTED, false),
        ev(inst, t + 135 * MIN_MS, CL_USAGE_EV_RESIZED, true),
        ev(inst, t + 165 * MIN_MS, CL_USAGE_EV_STOPPED, true),
        ev(inst, t + 180 * MIN_MS, CL_USAGE_EV_STARTED, true),
        ev(inst, t + 180 * MIN_MS + 20 * S_MS, CL_USAGE_EV_STOPPED, true),
        ev(inst, t + 240 * MIN_MS, CL_USAGE_EV_DELETED, true),
    };
    ingest(f->st, s, sizeof s / sizeof *s, NULL);
}

/* Expected, per the timeline and set_prices(small = 360000 µ/h = 100 µ/s):
 *   flavor.m1.small 6270 s x 100 = 627000     flavor.m1.large 1860 s x 200 = 372000
 *   vcpu  small 6270 x 1 x 10 = 62700         large 1860 x 4 x 10 = 74400
 *   ram   small 6270 x 2 GiB = 12540          large 1860 x 8 GiB = 14880
 *   disk  small 10:00-12:15 8100 s x 20 GiB x 0.1 = 16200
 *         large 12:15-14:00 6300 s x 80 GiB x 0.1 = 50400
 *   total 1230120 µ = 1.230120 EUR */
#define LIFECYCLE_TOTAL INT64_C(1230120)

static void test_lifecycle_exact(void **state)
{
    fixture *f = *state;
    int64_t t = f->t0, day = t + 24 * H_MS;

    set_prices(f->st, 360000);
    load_lifecycle(f, INST_A);
    rate(f->st, t - H_MS, day, day);

    assert_int_equal(qty(f->st, "flavor.m1.small", t, day), 6270);
    assert_int_equal(qty(f->st, "flavor.m1.large", t, day), 1860);
    assert_int_equal(qty(f->st, "vcpu", t, day), 6270 + 1860 * 4);
    assert_int_equal(qty(f->st, "ram", t, day), 6270 * 2048 + 1860 * 8192);
    assert_int_equal(qty(f->st, "disk", t, day), 8100 * 20 + 6300 * 80);
    /* Per hour: hour 10 holds 3570 running seconds, hour 13 the 60 s minimum. */
    assert_int_equal(qty(f->st, "flavor.m1.small", t, t + H_MS), 3570);
    assert_int_equal(qty(f->st, "flavor.m1.large", t + 3 * H_MS, t + 4 * H_MS), 60);
    assert_int_equal(cost(f->st, t - H_MS, day), LIFECYCLE_TOTAL);

    /* Idempotent: rating again, or hour by hour, changes nothing. */
    rate(f->st, t - H_MS, day, day);
    assert_int_equal(cost(f->st, t - H_MS, day), LIFECYCLE_TOTAL);
    for (int h = 0; h < 6; h++)
        rate(f->st, t + h * H_MS, t + (h + 1) * H_MS, day);
    assert_int_equal(cost(f->st, t - H_MS, day), LIFECYCLE_TOTAL);
}

/* The same events delivered in reverse order, in three batches, one of them twice. */
static void test_lifecycle_out_of_order_and_duplicated(void **state)
{
    fixture *f = *state;
    int64_t t = f->t0, day = t + 24 * H_MS;
    bill_ingest_stats stats = {0};
    cl_usage_sample s[] = {
        ev(INST_A, t, CL_USAGE_EV_CREATED, false),
        ev(INST_A, t + 30 * S_MS, CL_USAGE_EV_STARTED, false),
        ev(INST_A, t + 90 * MIN_MS, CL_USAGE_EV_STOPPED, false),
        ev(INST_A, t + 120 * MIN_MS, CL_USAGE_EV_STARTED, false),
        ev(INST_A, t + 135 * MIN_MS, CL_USAGE_EV_RESIZED, true),
        ev(INST_A, t + 165 * MIN_MS, CL_USAGE_EV_STOPPED, true),
        ev(INST_A, t + 180 * MIN_MS, CL_USAGE_EV_STARTED, true),
        ev(INST_A, t + 180 * MIN_MS + 20 * S_MS, CL_USAGE_EV_STOPPED, true),
        ev(INST_A, t + 240 * MIN_MS, CL_USAGE_EV_DELETED, true),
    };
    cl_usage_sample rev[9];
    for (int i = 0; i < 9; i++)
        rev[i] = s[8 - i];

    set_prices(f->st, 360000);
    ingest(f->st, rev, 3, &stats);
    /* Rated in the middle of the "outage": partial, and must not stick. */
    rate(f->st, t - H_MS, day, day);
    ingest(f->st, rev + 3, 3, &stats);
    ingest(f->st, rev + 3, 3, &stats); /* the same batch again (lost ack) */
    ingest(f->st, rev + 6, 3, &stats);
    assert_int_equal(stats.accepted, 9);
    assert_int_equal(stats.duplicates, 3);
    /* An agent re-sending a "started" under a new id while running changes nothing. */
    cl_usage_sample again = ev(INST_A, t + 10 * MIN_MS, CL_USAGE_EV_STARTED, false);
    ingest(f->st, &again, 1, NULL);
    rate(f->st, t - H_MS, day, day);
    assert_int_equal(cost(f->st, t - H_MS, day), LIFECYCLE_TOTAL);
}

/* An instance still running is charged up to "now", never beyond, and the figures grow
 * as the clock moves; the minimum charge waits for the interval to close. */
static void test_open_interval_follows_now(void **state)
{
    fixture *f = *state;
    int64_t t = f->t0;
    cl_usage_sample s = ev(INST_B, t + 10 * MIN_MS, CL_USAGE_EV_STARTED, false);

    set_prices(f->st, 360000);
    ingest(f->st, &s, 1, NULL);
    rate(f->st, t, t + 24 * H_MS, t + 10 * MIN_MS + 30 * S_MS);
    assert_int_equal(qty(f->st, "flavor.m1.small", t, t + 24 * H_MS), 30);
    rate(f->st, t, t + 24 * H_MS, t + 130 * MIN_MS);
    assert_int_equal(qty(f->st, "flavor.m1.small", t, t + 24 * H_MS), 120 * 60);
    assert_int_equal(qty(f->st, "flavor.m1.small", t + H_MS, t + 2 * H_MS), 3600);
    /* disk is allocated from the first event (no "created" seen) */
    assert_int_equal(qty(f->st, "disk", t, t + 24 * H_MS), 120 * 60 * 20);
}

/* Counters for one instance (cpu in 1e9 ns; rx bytes = cpu / 1e9 * 1000):
 *   boot b1: 10:05 10, 10:10 30, 10:20 60        -> 60 (the first value counts: since boot)
 *   boot b2 (reboot): 10:30 65, 10:40 85         -> 85 (65 > 60, yet a new base)
 *   b2 goes down without a new boot id: 10:50 3  -> 3 (a reset, never negative)
 *   11:05 13                                     -> 10
 * cpu total 158e9 ns: hour 10 = 148e9, hour 11 = 10e9. */
static size_t counter_series(int64_t t, cl_usage_sample *s)
{
    static const struct { int min; const char *boot; int64_t cpu; } pts[] = {
        {5, "b1", 10}, {10, "b1", 30}, {20, "b1", 60}, {30, "b2", 65},
        {40, "b2", 85}, {50, "b2", 3}, {65, "b2", 13},
    };
    for (size_t i = 0; i < sizeof pts / sizeof *pts; i++)
        s[i] = ctr(INST_A, t + pts[i].min * MIN_MS, pts[i].boot, pts[i].cpu * G,
                   pts[i].cpu * 1000);
    return sizeof pts / sizeof *pts;
}

static void check_counters(fixture *f)
{
    int64_t t = f->t0;
    assert_int_equal(qty(f->st, "cpu", t, t + 2 * H_MS), 158 * G);
    assert_int_equal(qty(f->st, "cpu", t, t + H_MS), 148 * G);
    assert_int_equal(qty(f->st, "cpu", t + H_MS, t + 2 * H_MS), 10 * G);
    assert_int_equal(qty(f->st, "net_in", t, t + 2 * H_MS), 158000);
    assert_int_equal(qty(f->st, "net_out", t, t + 2 * H_MS), 316000);
    /* cpu 158 µ + net_in 158000 µ; net_out is free in this plan. */
    assert_int_equal(cost(f->st, t, t + 2 * H_MS), 158 + 158000);
}

static void test_counter_reset_in_order(void **state)
{
    fixture *f = *state;
    cl_usage_sample s[16];
    size_t n = counter_series(f->t0, s);

    set_prices(f->st, 360000);
    ingest(f->st, s, n, NULL);
    rate(f->st, f->t0, f->t0 + 2 * H_MS, f->t0 + 3 * H_MS);
    check_counters(f);
}

/* A billing outage: the agent's outbox drains later, newest first, in odd batches, one
 * of them twice; rating ran on partial data in between. Totals stay exact. */
static void test_counter_late_delivery(void **state)
{
    fixture *f = *state;
    cl_usage_sample s[16];
    (void)counter_series(f->t0, s);
    bill_ingest_stats stats = {0};
    bill_rate_opts o = {.now_ms = f->t0 + 70 * MIN_MS, .min_charge_s = 60};
    cl_error err = {0};
    size_t rows = 0;

    set_prices(f->st, 360000);
    /* Only the newest sample gets through first and is rated by the pending tick. */
    ingest(f->st, &s[6], 1, &stats);
    assert_int_equal(bill_rate_pending(f->st, &o, &rows, &err), 0);
    assert_true(rows > 0);
    /* Then the rest, out of order, with a duplicated batch. */
    cl_usage_sample b1[] = {s[5], s[1], s[3]};
    cl_usage_sample b2[] = {s[0], s[4], s[2]};
    ingest(f->st, b1, 3, &stats);
    ingest(f->st, b2, 3, &stats);
    ingest(f->st, b1, 3, &stats);
    assert_int_equal(stats.accepted, 7);
    assert_int_equal(stats.duplicates, 3);
    assert_true(stats.late >= 4);
    o.now_ms = f->t0 + 80 * MIN_MS;
    assert_int_equal(bill_rate_pending(f->st, &o, &rows, &err), 0);
    check_counters(f);
    /* Nothing new: a pending run re-rates the current hour only and changes nothing. */
    assert_int_equal(bill_rate_pending(f->st, &o, &rows, &err), 0);
    check_counters(f);
}

/* A price fix: the rated figures keep the old price until the window is re-rated, and
 * re-rating replaces (never adds). */
static void test_rerate_after_price_fix(void **state)
{
    fixture *f = *state;
    int64_t t = f->t0, day = t + 24 * H_MS;

    set_prices(f->st, 360000);
    load_lifecycle(f, INST_A);
    rate(f->st, t, day, day);
    assert_int_equal(cost(f->st, t, day), LIFECYCLE_TOTAL);
    set_prices(f->st, 720000); /* small now 200 µ/s: +6270 x 100 */
    assert_int_equal(cost(f->st, t, day), LIFECYCLE_TOTAL);
    rate(f->st, t, day, day);
    assert_int_equal(cost(f->st, t, day), LIFECYCLE_TOTAL + 627000);
    rate(f->st, t, day, day);
    assert_int_equal(cost(f->st, t, day), LIFECYCLE_TOTAL + 627000);
}

/* Rounding: half up, once per rated row. 0.1 EUR/h for 3570 s = 99166.67 -> 99167;
 * 1800 s = 50000; 900 s = 25000. */
static void test_rounding_half_up_per_row(void **state)
{
    fixture *f = *state;
    int64_t t = f->t0, day = t + 24 * H_MS;
    bill_prices *p = calloc(1, sizeof *p);
    cl_error err = {0};
    assert_non_null(p);
    cl_strlcpy(p->currency, "EUR", sizeof p->currency);
    p->nflavors = 1;
    cl_strlcpy(p->flavors[0].flavor_id, "m1.small", CL_ID_MAX);
    p->flavors[0].hour = 100000;
    assert_int_equal(bill_prices_put(f->st, p, &err), 0);
    load_lifecycle(f, INST_A);
    rate(f->st, t, day, day);
    /* small: h10 3570 s, h11 1800 s, h12 900 s */
    assert_int_equal(cost(f->st, t, t + H_MS), 99167);
    assert_int_equal(cost(f->st, t, day), 99167 + 50000 + 25000);
    /* 1 µ per hour for 1800 s is 0.5 -> 1 (half up); for 1799 s it would be 0. */
    p->flavors[0].hour = 1;
    assert_int_equal(bill_prices_put(f->st, p, &err), 0);
    rate(f->st, t, day, day);
    assert_int_equal(cost(f->st, t + H_MS, t + 2 * H_MS), 1); /* 1800 s */
    assert_int_equal(cost(f->st, t + 2 * H_MS, t + 3 * H_MS), 0); /* 900 s: 0.25 */
    free(p);
}

/* Invoices and exports add up to the rated total. */
static int sum_row(const bill_row *row, void *ud)
{
    int64_t *sum = ud;
    assert_true(row->quantity > 0);
    *sum += row->cost;
    return 0;
}

static void test_invoice_and_export_agree(void **state)
{
    fixture *f = *state;
    int64_t t = f->t0, day = t + 24 * H_MS, sum = 0;
    cl_usage_sample s[16];
    size_t n = counter_series(t, s);
    cl_error err = {0};
    json_object *inv = NULL;

    set_prices(f->st, 360000);
    load_lifecycle(f, INST_A);
    ingest(f->st, s, n, NULL);
    rate(f->st, t, day, day);
    assert_int_equal(bill_export(f->st, PROJ, t, day, sum_row, &sum, &err), 0);
    assert_int_equal(sum, LIFECYCLE_TOTAL + 158 + 158000);
    assert_int_equal(bill_invoices_json(f->st, PROJ, 2026, 1, &inv, &err), 0);
    json_object *i0 = json_object_array_get_idx(cl_json_path(inv, "invoices"), 0);
    assert_non_null(i0);
    assert_int_equal(json_object_get_int64(cl_json_path(i0, "total")), sum);
    assert_string_equal(json_object_get_string(cl_json_path(i0, "month")), "2026-01");
    assert_string_equal(json_object_get_string(cl_json_path(i0, "total_decimal")), "1.388278");
    /* one line per (instance, meter): flavor x2, vcpu, ram, disk, cpu, net_in, net_out */
    assert_int_equal(json_object_array_length(cl_json_path(i0, "lines")), 8);
    json_object_put(inv);
    /* February is empty. */
    assert_int_equal(bill_invoices_json(f->st, PROJ, 2026, 2, &inv, &err), 0);
    assert_int_equal(json_object_array_length(cl_json_path(inv, "invoices")), 0);
    json_object_put(inv);
}

/* Pruning keeps what later deltas need; samples too old are refused. */
static void test_prune_and_horizon(void **state)
{
    fixture *f = *state;
    cl_usage_sample s[16];
    size_t n = counter_series(f->t0, s), deleted = 0;
    bill_ingest_stats stats = {0};
    cl_error err = {0};

    set_prices(f->st, 360000);
    ingest(f->st, s, n, NULL);
    assert_int_equal(bill_prune(f->st, f->t0 + 2 * H_MS, &deleted, &err), 0);
    assert_int_equal(deleted, n - 1);
    f->pruned = true;
    /* The hourly rollup still holds what the pruned samples measured. */
    rate(f->st, f->t0, f->t0 + 2 * H_MS, f->t0 + 3 * H_MS);
    check_counters(f);
    /* The next sample's delta is still taken against the kept newest one (13 -> 20). */
    cl_usage_sample next = ctr(INST_A, f->t0 + 2 * H_MS + MIN_MS, "b2", 20 * G, 20000);
    ingest(f->st, &next, 1, NULL);
    rate(f->st, f->t0 + 2 * H_MS, f->t0 + 3 * H_MS, f->t0 + 3 * H_MS);
    assert_int_equal(qty(f->st, "cpu", f->t0 + 2 * H_MS, f->t0 + 3 * H_MS), 7 * G);
    /* Older than the horizon: refused and counted. */
    cl_usage_sample old = ctr(INST_A, f->t0, "b1", G, 1);
    assert_int_equal(bill_ingest(f->st, &old, 1, f->t0 + H_MS, &stats, &err), 0);
    assert_int_equal(stats.too_old, 1);
    assert_int_equal(stats.accepted, 0);
}

/* A random workload - many instances, counter resets, samples delivered shuffled, in
 * batches of random sizes, some twice - rated per instance and hour exactly as a naive
 * reference computes it from the samples sorted by time (the rules of meter.c). */
#define RND_INST 12
#define RND_PER_INST 150
#define RND_HOURS 5

typedef struct rnd_sample {
    cl_usage_sample s;
    int inst;
} rnd_sample;

static int rnd_cmp(const void *pa, const void *pb)
{
    const rnd_sample *a = pa, *b = pb;
    if (a->inst != b->inst)
        return a->inst < b->inst ? -1 : 1;
    if (a->s.ts != b->s.ts)
        return a->s.ts < b->s.ts ? -1 : 1;
    return strcmp(a->s.id, b->s.id);
}

static void test_random_workload_exact(void **state)
{
    fixture *f = *state;
    enum { N = RND_INST * RND_PER_INST };
    rnd_sample *v = calloc(N, sizeof *v);
    cl_usage_sample *batch = calloc(N, sizeof *batch);
    static int64_t want[RND_INST][RND_HOURS][5];
    static const char *const meter_names[5] = {"cpu", "net_in", "net_out", "disk_read",
                                               "disk_write"};
    char uuids[RND_INST][CL_UUID_LEN];
    cl_error err = {0};
    unsigned seed = 12345;

    assert_non_null(v);
    assert_non_null(batch);
    memset(want, 0, sizeof want);
    set_prices(f->st, 360000);
    for (int i = 0; i < RND_INST; i++)
        cl_uuid_new(uuids[i]);
    for (int i = 0; i < RND_INST; i++) {
        int64_t cpu = 0;
        int boot = 1;
        for (int k = 0; k < RND_PER_INST; k++) {
            char b[16];
            /* Random times in the window (ties possible), values that mostly grow. */
            int64_t ts = f->t0 + (int64_t)(rand_r(&seed) % (RND_HOURS * 3600)) * S_MS;
            if (rand_r(&seed) % 20 == 0) {
                boot++;
                cpu = 0;
            }
            cpu += (int64_t)(rand_r(&seed) % 1000) * 1000;
            snprintf(b, sizeof b, "b%d", boot);
            /* Five different counters, so a meter read from the wrong one shows. */
            cl_usage_sample *c = &v[i * RND_PER_INST + k].s;
            *c = ctr(uuids[i], ts, b, cpu, cpu / 7);
            c->counters.disk_rd_bytes = cpu / 3;
            c->counters.disk_wr_bytes = cpu / 5;
            v[i * RND_PER_INST + k].inst = i;
        }
    }
    /* Deliver shuffled, in batches of 1 to 200, a few of them twice. */
    for (size_t i = 0; i < N; i++)
        batch[i] = v[i].s;
    for (size_t i = N - 1; i > 0; i--) {
        size_t j = (size_t)rand_r(&seed) % (i + 1);
        cl_usage_sample t = batch[i];
        batch[i] = batch[j];
        batch[j] = t;
    }
    for (size_t off = 0; off < N;) {
        size_t m = 1 + (size_t)rand_r(&seed) % 200;
        if (m > N - off)
            m = N - off;
        ingest(f->st, batch + off, m, NULL);
        if (rand_r(&seed) % 4 == 0)
            ingest(f->st, batch + off, m, NULL);
        off += m;
    }
    /* The reference: per instance in (ts, id) order, the delta rule. */
    qsort(v, N, sizeof *v, rnd_cmp);
    for (size_t k = 0; k < N; k++) {
        const cl_usage_sample *c = &v[k].s;
        const cl_usage_sample *p = k > 0 && v[k - 1].inst == v[k].inst ? &v[k - 1].s : NULL;
        const int64_t cv[5] = {c->counters.cpu_ns, c->counters.net_rx_bytes,
                               c->counters.net_tx_bytes, c->counters.disk_rd_bytes,
                               c->counters.disk_wr_bytes};
        const int64_t pv[5] = {p ? p->counters.cpu_ns : 0, p ? p->counters.net_rx_bytes : 0,
                               p ? p->counters.net_tx_bytes : 0,
                               p ? p->counters.disk_rd_bytes : 0,
                               p ? p->counters.disk_wr_bytes : 0};
        bool same = p && strcmp(p->boot_id, c->boot_id) == 0;
        for (int m = 0; m < 5; m++)
            want[v[k].inst][(c->ts - f->t0) / H_MS][m] +=
                same && cv[m] >= pv[m] ? cv[m] - pv[m] : cv[m];
    }
    rate(f->st, f->t0, f->t0 + RND_HOURS * H_MS, f->t0 + RND_HOURS * H_MS);
    for (int i = 0; i < RND_INST; i++)
        for (int h = 0; h < RND_HOURS; h++)
            for (int m = 0; m < 5; m++) {
                int64_t q = -1;
                assert_int_equal(bill_total_quantity(f->st, PROJ, uuids[i], meter_names[m],
                                                     f->t0 + h * H_MS,
                                                     f->t0 + (h + 1) * H_MS, &q, &err), 0);
                if (q != want[i][h][m])
                    fail_msg("instance %d hour %d %s: %" PRId64 " != %" PRId64, i, h,
                             meter_names[m], q, want[i][h][m]);
            }
    free(v);
    free(batch);
}

/* A database written before the hourly rollup existed (schema 1) gets it filled from
 * its samples when opened, and rates the same. */
static void test_rollup_migration(void **state)
{
    fixture *f = *state;
    cl_usage_sample s[16];
    size_t n = counter_series(f->t0, s);
    sqlite3 *db = NULL;

    set_prices(f->st, 360000);
    ingest(f->st, s, n, NULL);
    bill_store_close(f->st);
    f->st = NULL;
    /* Back to schema 1, as an older nube-billing left it. */
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "DROP TABLE ctr_hour;"
                                      "CREATE INDEX samples_counter_ts ON samples(ts)"
                                      " WHERE kind = 0; PRAGMA user_version = 1",
                                  NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    cl_error err = {0};
    assert_int_equal(bill_store_open(f->path, &f->st, &err), 0);
    rate(f->st, f->t0, f->t0 + 2 * H_MS, f->t0 + 3 * H_MS);
    check_counters(f);
}

static void test_prices_config_and_seed(void **state)
{
    fixture *f = *state;
    bill_cfg cfg;
    bill_prices *p = calloc(1, sizeof *p), *got = calloc(1, sizeof *got);
    bool applied = false;
    cl_error err = {0};

    assert_non_null(p);
    assert_non_null(got);
    memset(&cfg, 0, sizeof cfg);
    assert_int_equal(cl_config_defaults(bill_cfg_keys, bill_cfg_nkeys, &cfg, &err), 0);
    assert_int_equal(cl_config_set(bill_cfg_keys, bill_cfg_nkeys, &cfg, "prices",
                                   "flavor_hour", "m1.small=20000, m1.large=80000", &err),
                     0);
    assert_int_equal(cl_config_set(bill_cfg_keys, bill_cfg_nkeys, &cfg, "prices",
                                   "vcpu_hour", "1500", &err), 0);
    assert_int_equal(bill_prices_from_cfg(&cfg, p, &err), 0);
    assert_int_equal(p->nflavors, 2);
    assert_int_equal(p->flavors[1].hour, 80000);
    assert_int_equal(p->vcpu_hour, 1500);
    assert_string_equal(p->currency, "EUR");

    assert_int_equal(bill_prices_seed(f->st, p, &applied, &err), 0);
    assert_true(applied);
    /* An API change survives a restart with the same config ... */
    got->nflavors = 0;
    cl_strlcpy(got->currency, "USD", sizeof got->currency);
    assert_int_equal(bill_prices_put(f->st, got, &err), 0);
    assert_int_equal(bill_prices_seed(f->st, p, &applied, &err), 0);
    assert_false(applied);
    assert_int_equal(bill_prices_get(f->st, got, &err), 0);
    assert_string_equal(got->currency, "USD");
    /* ... until the config's prices change. */
    p->vcpu_hour = 1600;
    assert_int_equal(bill_prices_seed(f->st, p, &applied, &err), 0);
    assert_true(applied);
    assert_int_equal(bill_prices_get(f->st, got, &err), 0);
    assert_int_equal(got->vcpu_hour, 1600);

    /* Bad lists and bad JSON plans are refused with a reason. */
    assert_int_equal(cl_config_set(bill_cfg_keys, bill_cfg_nkeys, &cfg, "prices",
                                   "flavor_hour", "m1.small:20000", &err), 0);
    assert_int_equal(bill_prices_from_cfg(&cfg, p, &err), -EINVAL);
    assert_non_null(strstr(err.message, "m1.small:20000"));
    json_object *bad = NULL;
    assert_int_equal(cl_json_parse_object("{\"vcpu_hour\": -1}", 17, &bad, &err), 0);
    assert_true(bill_prices_from_json(bad, p, &err) < 0);
    json_object_put(bad);
    cl_config_free(bill_cfg_keys, bill_cfg_nkeys, &cfg);
    free(p);
    free(got);
}

static void test_time_and_money_format(void **state)
{
    (void)state;
    int64_t t = 0;
    char buf[32];
    assert_int_equal(bill_parse_time("1970-01-02", &t), 0);
    assert_int_equal(t, 86400000);
    assert_int_equal(bill_parse_time("2026-03-01T00:00:00Z", &t), 0);
    assert_int_equal(t, INT64_C(1772323200000));
    assert_int_equal(bill_parse_time("1772323200123", &t), 0);
    assert_int_equal(t, INT64_C(1772323200123));
    assert_int_equal(bill_parse_time("2026-13-01", &t), -EINVAL);
    assert_int_equal(bill_parse_time("2026-01-01T10:00", &t), -EINVAL);
    assert_int_equal(bill_parse_time("12abc", &t), -EINVAL);
    bill_format_micro(1230120, buf, sizeof buf);
    assert_string_equal(buf, "1.230120");
    bill_format_micro(-5, buf, sizeof buf);
    assert_string_equal(buf, "-0.000005");
}

/* ---- the usage.samples codec ---- */

static void test_codec_roundtrip(void **state)
{
    (void)state;
    cl_usage_sample in[3], *out = NULL;
    size_t n = 0, rej = 0;
    cl_error err = {0};

    in[0] = ctr(INST_A, 1000, "boot-1", 5 * G, 77);
    in[1] = ev(INST_B, 2000, CL_USAGE_EV_RESIZED, true);
    in[2] = ev(INST_B, 3000, CL_USAGE_EV_STARTED, false);
    in[2].kind = CL_USAGE_GAUGE;
    in[2].event = CL_USAGE_EV_NONE;
    in[2].gauges.mem_used_mb = 512;
    json_object *body = cl_usage_batch_encode(in, 3);
    assert_non_null(body);
    /* through the wire text, as the bus carries it */
    json_object *parsed = NULL;
    const char *txt = cl_json_dump(body);
    assert_int_equal(cl_json_parse_object(txt, strlen(txt), &parsed, &err), 0);
    json_object_put(body);
    assert_int_equal(cl_usage_batch_decode(parsed, &out, &n, &rej, &err), 0);
    json_object_put(parsed);
    assert_int_equal(n, 3);
    assert_int_equal(rej, 0);
    assert_memory_equal(&out[0].counters, &in[0].counters, sizeof in[0].counters);
    assert_string_equal(out[0].boot_id, "boot-1");
    assert_int_equal(out[1].event, CL_USAGE_EV_RESIZED);
    assert_int_equal(out[1].gauges.ram_mb, 8192);
    assert_string_equal(out[1].flavor_id, "m1.large");
    assert_int_equal(out[2].kind, CL_USAGE_GAUGE);
    assert_int_equal(out[2].gauges.mem_used_mb, 512);
    assert_int_equal(out[1].gauges.mem_used_mb, -1);
    free(out);
}

static void test_codec_rejects(void **state)
{
    (void)state;
    cl_usage_sample good = ctr(INST_A, 1000, "b", 1, 1), *out = NULL;
    size_t n = 0, rej = 0;
    cl_error err = {0};
    static const char *const bad[] = {
        /* negative counter */
        "\"counters\":{\"cpu_ns\":-1,\"net_rx_bytes\":0,\"net_tx_bytes\":0,"
        "\"disk_rd_bytes\":0,\"disk_wr_bytes\":0},\"boot_id\":\"b\",\"kind\":\"counter\"",
        /* counter without boot_id */
        "\"counters\":{\"cpu_ns\":1,\"net_rx_bytes\":0,\"net_tx_bytes\":0,"
        "\"disk_rd_bytes\":0,\"disk_wr_bytes\":0},\"kind\":\"counter\"",
        /* unknown event */
        "\"kind\":\"event\",\"event\":\"exploded\",\"flavor_id\":\"f\","
        "\"gauges\":{\"vcpus\":1,\"ram_mb\":1,\"disk_gb\":1}",
        /* unknown kind */
        "\"kind\":\"vibe\"",
    };
    /* Each bad sample travels beside a good one: the good one must survive. */
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        json_object *g = cl_usage_sample_encode(&good);
        char buf[1536];
        snprintf(buf, sizeof buf,
                 "{\"samples\":[{\"id\":\"%s\",\"instance_uuid\":\"%s\",\"project_id\":\"p\","
                 "\"host\":\"h\",\"ts\":5,%s}, %s]}",
                 good.id, INST_A, bad[i], json_object_to_json_string(g));
        json_object_put(g);
        json_object *body = NULL;
        assert_int_equal(cl_json_parse_object(buf, strlen(buf), &body, &err), 0);
        memset(&err, 0, sizeof err);
        assert_int_equal(cl_usage_batch_decode(body, &out, &n, &rej, &err), 0);
        assert_int_equal(n, 1);
        assert_int_equal(rej, 1);
        assert_non_null(strstr(err.message, "samples[0]"));
        free(out);
        out = NULL;
        json_object_put(body);
    }
    /* The envelope itself: empty, missing, too many. */
    json_object *body = NULL;
    assert_int_equal(cl_json_parse_object("{\"samples\":[]}", 14, &body, &err), 0);
    assert_int_equal(cl_usage_batch_decode(body, &out, &n, &rej, &err), -EINVAL);
    json_object_put(body);
    assert_int_equal(cl_json_parse_object("{}", 2, &body, &err), 0);
    assert_true(cl_usage_batch_decode(body, &out, &n, &rej, &err) < 0);
    json_object_put(body);
    body = json_object_new_object();
    json_object *arr = json_object_new_array();
    for (int i = 0; i < CL_USAGE_BATCH_MAX + 1; i++)
        json_object_array_add(arr, json_object_new_object());
    json_object_object_add(body, "samples", arr);
    assert_int_equal(cl_usage_batch_decode(body, &out, &n, &rej, &err), -E2BIG);
    json_object_put(body);
    assert_null(cl_usage_batch_encode(&good, 0));
}

/* The row layout (what agents send now) and the object layout (what older agents may
 * still hold in their outboxes) decode to the same samples. */
static void test_codec_rows_and_objects_agree(void **state)
{
    (void)state;
    cl_usage_sample in[3], *a = NULL, *b = NULL;
    size_t na = 0, nb = 0, rej = 0;
    cl_error err = {0};

    in[0] = ctr(INST_A, 1000, "boot-1", 5 * G, 77);
    in[1] = ev(INST_B, 2000, CL_USAGE_EV_DELETED, true);
    in[2] = ev(INST_B, 3000, CL_USAGE_EV_STARTED, false);
    in[2].kind = CL_USAGE_GAUGE;
    in[2].event = CL_USAGE_EV_NONE;
    in[2].gauges.mem_used_mb = 512;
    json_object *rows = cl_usage_batch_encode(in, 3);
    assert_non_null(rows);
    assert_non_null(cl_json_path(rows, "rows"));
    json_object *objs = json_object_new_object(), *arr = json_object_new_array();
    for (int i = 0; i < 3; i++)
        json_object_array_add(arr, cl_usage_sample_encode(&in[i]));
    json_object_object_add(objs, "samples", arr);
    assert_int_equal(cl_usage_batch_decode(rows, &a, &na, &rej, &err), 0);
    assert_int_equal(rej, 0);
    assert_int_equal(cl_usage_batch_decode(objs, &b, &nb, &rej, &err), 0);
    assert_int_equal(rej, 0);
    assert_int_equal(na, 3);
    assert_int_equal(nb, 3);
    assert_memory_equal(a, b, 3 * sizeof *a);
    assert_int_equal(a[1].event, CL_USAGE_EV_DELETED);
    /* Both layouts in one body: refused as a whole. */
    json_object_object_add(rows, "samples", json_object_get(arr));
    cl_usage_sample *c = NULL;
    assert_int_equal(cl_usage_batch_decode(rows, &c, &nb, &rej, &err), -EINVAL);
    assert_null(c);
    free(a);
    free(b);
    json_object_put(rows);
    json_object_put(objs);
}

/* Bad rows are skipped and counted; the good row beside each survives. */
static void test_codec_rows_reject(void **state)
{
    (void)state;
    cl_usage_sample good = ctr(INST_A, 1000, "b", 1, 1), *out = NULL;
    size_t n = 0, rej = 0;
    cl_error err = {0};
    char row[1024];
    /* id, instance_uuid, project_id, host, ts, kind, event, flavor_id, boot_id, cpu, rx,
     * tx, rd, wr, vcpus, ram, disk, mem */
    static const char *const bad[] = {
        /* negative counter */
        "\"p\",\"h\",5,\"counter\",null,null,\"b\",-1,0,0,0,0,null,null,null,null",
        /* counter without boot_id */
        "\"p\",\"h\",5,\"counter\",null,null,null,1,0,0,0,0,null,null,null,null",
        /* a counter missing */
        "\"p\",\"h\",5,\"counter\",null,null,\"b\",1,0,null,0,0,null,null,null,null",
        /* unknown event */
        "\"p\",\"h\",5,\"event\",\"exploded\",\"f\",null,null,null,null,null,null,1,1,1,"
        "null",
        /* event without flavor */
        "\"p\",\"h\",5,\"event\",\"started\",null,null,null,null,null,null,null,1,1,1,"
        "null",
        /* unknown kind */
        "\"p\",\"h\",5,\"vibe\",null,null,null,null,null,null,null,null,null,null,null,"
        "null",
        /* ts as a string */
        "\"p\",\"h\",\"5\",\"gauge\",null,null,null,null,null,null,null,null,1,1,1,null",
        /* a control character in the host */
        "\"p\",\"h\\u0001\",5,\"gauge\",null,null,null,null,null,null,null,null,1,1,1,null",
        /* empty project */
        "\"\",\"h\",5,\"gauge\",null,null,null,null,null,null,null,null,1,1,1,null",
        /* one field short */
        "\"p\",\"h\",5,\"gauge\",null,null,null,null,null,null,null,null,1,1,1",
    };
    json_object *gb = cl_usage_batch_encode(&good, 1);
    const char *grow = json_object_to_json_string(
        json_object_array_get_idx(cl_json_path(gb, "rows"), 0));
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char other[CL_UUID_LEN];
        cl_uuid_new(other);
        snprintf(row, sizeof row, "{\"rows\":[[\"%s\",\"%s\",%s], %s]}", other, INST_A,
                 bad[i], grow);
        json_object *body = NULL;
        assert_int_equal(cl_json_parse_object(row, strlen(row), &body, &err), 0);
        memset(&err, 0, sizeof err);
        assert_int_equal(cl_usage_batch_decode(body, &out, &n, &rej, &err), 0);
        if (n != 1 || rej != 1)
            fail_msg("bad row %zu: kept %zu, rejected %zu", i, n, rej);
        assert_non_null(strstr(err.message, "rows[0]"));
        assert_string_equal(out[0].id, good.id);
        free(out);
        out = NULL;
        json_object_put(body);
    }
    json_object_put(gb);
    /* The envelope: empty rows, rows that are not an array, too many rows. */
    json_object *body = NULL;
    assert_int_equal(cl_json_parse_object("{\"rows\":[]}", 11, &body, &err), 0);
    assert_int_equal(cl_usage_batch_decode(body, &out, &n, &rej, &err), -EINVAL);
    json_object_put(body);
    assert_int_equal(cl_json_parse_object("{\"rows\":{}}", 11, &body, &err), 0);
    assert_int_equal(cl_usage_batch_decode(body, &out, &n, &rej, &err), -EINVAL);
    json_object_put(body);
    body = json_object_new_object();
    json_object *arr = json_object_new_array();
    for (int i = 0; i < CL_USAGE_BATCH_MAX + 1; i++)
        json_object_array_add(arr, json_object_new_array());
    json_object_object_add(body, "rows", arr);
    assert_int_equal(cl_usage_batch_decode(body, &out, &n, &rej, &err), -E2BIG);
    json_object_put(body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lifecycle_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_out_of_order_and_duplicated, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_open_interval_follows_now, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counter_reset_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counter_late_delivery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rerate_after_price_fix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rounding_half_up_per_row, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invoice_and_export_agree, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prune_and_horizon, setup, teardown),
        cmocka_unit_test_setup_teardown(test_random_workload_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rollup_migration, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prices_config_and_seed, setup, teardown),
        cmocka_unit_test(test_time_and_money_format),
        cmocka_unit_test(test_codec_roundtrip),
        cmocka_unit_test(test_codec_rejects),
        cmocka_unit_test(test_codec_rows_and_objects_agree),
        cmocka_unit_test(test_codec_rows_reject),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
