/*
 * bench_billing.c - figures for nube-billing's hot paths, with ratios against a baseline
 * measured in the same run on the same disk:
 *
 *   baseline   raw SQLite: the same rows INSERTed with one prepared statement, 1000 per
 *              transaction, no indexes and no delta logic (the floor any ingest pays)
 *   ingest     bill_ingest() in batches of 1000 (CL_USAGE_BATCH_MAX), in time order
 *   late       the same number of samples arriving newest-first per batch (every one
 *              slots in before a stored sample and fixes its neighbour)
 *   rate       bill_rate() over the whole window (counters + events)
 *   export     bill_export() formatting CSV rows into memory
 *
 * Usage: bench_billing [samples (default 200000)] [instances (default 500)]
 * The targets (ingest > 100 000 samples/s, rating 10 M samples < 10 s, export
 * 1 M rows < 5 s) are printed beside the figures, scaled to the sample count.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "billing.h"
#include "db.h"

#define BATCH 1000
#define H_MS INT64_C(3600000)

static double now_s(void)
{
    return (double)cl_mono_ms() / 1000.0;
}

static long maxrss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024;
}

static void make_instances(size_t ninst, char (*ids)[CL_UUID_LEN])
{
    for (size_t i = 0; i < ninst; i++)
        cl_uuid_new(ids[i]);
}

/* Sample k of the run: instance k % ninst, one sample per instance per minute. */
static void make_sample(cl_usage_sample *s, size_t k, size_t ninst,
                        char (*ids)[CL_UUID_LEN], int64_t t0)
{
    size_t inst = k % ninst, step = k / ninst;
    memset(s, 0, sizeof *s);
    cl_uuid_new(s->id);
    memcpy(s->instance_uuid, ids[inst], CL_UUID_LEN);
    snprintf(s->project_id, sizeof s->project_id, "proj-%zu", inst % 50);
    cl_strlcpy(s->host, "bench-host", sizeof s->host);
    s->ts = t0 + (int64_t)step * 60000;
    s->kind = CL_USAGE_COUNTER;
    s->has_counters = true;
    s->counters.cpu_ns = (int64_t)step * 30000000000LL;
    s->counters.net_rx_bytes = (int64_t)step * 1000000;
    s->counters.net_tx_bytes = (int64_t)step * 500000;
    s->counters.disk_rd_bytes = (int64_t)step * 4096;
    s->counters.disk_wr_bytes = (int64_t)step * 8192;
    cl_strlcpy(s->boot_id, "boot-1", sizeof s->boot_id);
}

static double baseline(const char *path, const cl_usage_sample *v, size_t n)
{
    static const cl_db_migration mig[] = {
        {1, "CREATE TABLE raw(id TEXT, instance_uuid TEXT, project_id TEXT, host TEXT,"
            " ts INTEGER, kind INTEGER, boot_id TEXT, cpu INTEGER, rx INTEGER, tx INTEGER,"
            " rd INTEGER, wr INTEGER)"}};
    cl_db *db = NULL;
    sqlite3_stmt *q = NULL;
    cl_error err = {0};
    double t;

    if (cl_db_open(path, mig, 1, 5000, &db, &err) < 0 ||
        cl_db_prepare(db, "INSERT INTO raw VALUES(?,?,?,?,?,?,?,?,?,?,?,?)", &q) < 0) {
        fprintf(stderr, "baseline: %s\n", err.message);
        exit(1);
    }
    t = now_s();
    for (size_t i = 0; i < n; i += BATCH) {
        cl_db_begin(db);
        for (size_t j = i; j < n && j < i + BATCH; j++) {
            const cl_usage_sample *s = &v[j];
            sqlite3_reset(q);
            cl_db_bind_text(q, 1, s->id);
            cl_db_bind_text(q, 2, s->instance_uuid);
            cl_db_bind_text(q, 3, s->project_id);
            cl_db_bind_text(q, 4, s->host);
            cl_db_bind_int64(q, 5, s->ts);
            cl_db_bind_int64(q, 6, s->kind);
            cl_db_bind_text(q, 7, s->boot_id);
            cl_db_bind_int64(q, 8, s->counters.cpu_ns);
            cl_db_bind_int64(q, 9, s->counters.net_rx_bytes);
            cl_db_bind_int64(q, 10, s->counters.net_tx_bytes);
            cl_db_bind_int64(q, 11, s->counters.disk_rd_bytes);
            cl_db_bind_int64(q, 12, s->counters.disk_wr_bytes);
            cl_db_step_done(q);
        }
        cl_db_commit(db);
    }
    t = now_s() - t;
    sqlite3_finalize(q);
    cl_db_close(db);
    return t;
}

static double ingest_all(bill_store *st, cl_usage_sample *v, size_t n, bool reverse_batches)
{
    cl_error err = {0};
    double t = now_s();
    for (size_t i = 0; i < n; i += BATCH) {
        size_t m = n - i < BATCH ? n - i : BATCH;
        if (reverse_batches) /* newest first inside every batch */
            for (size_t a = i, b = i + m - 1; a < b; a++, b--) {
                cl_usage_sample tmp = v[a];
                v[a] = v[b];
                v[b] = tmp;
            }
        if (bill_ingest(st, v + i, m, 0, NULL, &err) < 0) {
            fprintf(stderr, "ingest: %s\n", err.message);
            exit(1);
        }
    }
    return now_s() - t;
}

typedef struct sink {
    char buf[1 << 16];
    size_t len, rows;
} sink;

static int to_csv(const bill_row *r, void *ud)
{
    sink *s = ud;
    char line[512];
    int n = snprintf(line, sizeof line, "%" PRId64 ",%s,%s,%s,%" PRId64 ",%s,%" PRId64
                     ",%" PRId64 "\n", r->period_ms, r->project_id, r->resource, r->meter,
                     r->quantity, r->unit, r->price, r->cost);
    if (n > 0 && s->len + (size_t)n > sizeof s->buf)
        s->len = 0; /* a stand-in for writing to the socket */
    if (n > 0) {
        memcpy(s->buf + s->len, line, (size_t)n);
        s->len += (size_t)n;
    }
    s->rows++;
    return 0;
}

static void cleanup_db(const char *path)
{
    char p[512];
    static const char *const suf[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", path, suf[i]);
        unlink(p);
    }
}

int main(int argc, char **argv)
{
    size_t n = 200000, ninst = 500;
    int64_t v64;
    char dir[] = "/tmp/bench_billing_XXXXXX", base[256], billdb[256], late[256];
    if (argc > 1 && cl_parse_int64(argv[1], &v64) == 0 && v64 > 0)
        n = (size_t)v64;
    if (argc > 2 && cl_parse_int64(argv[2], &v64) == 0 && v64 > 0)
        ninst = (size_t)v64;
    if (!mkdtemp(dir))
        return 1;
    snprintf(base, sizeof base, "%s/raw.db", dir);
    snprintf(billdb, sizeof billdb, "%s/billing.db", dir);
    snprintf(late, sizeof late, "%s/late.db", dir);

    char (*ids)[CL_UUID_LEN] = calloc(ninst, CL_UUID_LEN);
    cl_usage_sample *v = calloc(n, sizeof *v);
    if (!ids || !v)
        return 1;
    int64_t t0 = INT64_C(1767225600000); /* 2026-01-01 */
    make_instances(ninst, ids);
    for (size_t k = 0; k < n; k++)
        make_sample(&v[k], k, ninst, ids, t0);

    double tb = baseline(base, v, n);
    bill_store *st = NULL, *st2 = NULL;
    cl_error err = {0};
    if (bill_store_open(billdb, &st, &err) < 0 || bill_store_open(late, &st2, &err) < 0) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    double ti = ingest_all(st, v, n, false);
    double tl = ingest_all(st2, v, n, true);

    bill_prices *p = calloc(1, sizeof *p);
    cl_strlcpy(p->currency, "EUR", sizeof p->currency);
    p->cpu_core_hour = 10000;
    p->net_gb_in = 5000;
    bill_prices_put(st, p, &err);
    free(p);
    int64_t end = t0 + (int64_t)(n / ninst + 1) * 60000 + H_MS;
    bill_rate_opts o = {.now_ms = end, .min_charge_s = 60};
    size_t rows = 0;
    double tr = now_s();
    if (bill_rate(st, t0, end, &o, &rows, &err) < 0) {
        fprintf(stderr, "rate: %s\n", err.message);
        return 1;
    }
    tr = now_s() - tr;
    sink *sk = calloc(1, sizeof *sk);
    double te = now_s();
    bill_export(st, NULL, t0, end, to_csv, sk, &err);
    te = now_s() - te;

    printf("nube-billing bench: %zu counter samples, %zu instances\n", n, ninst);
    printf("  baseline raw sqlite insert : %9.0f rows/s    (%.3f s)\n", n / tb, tb);
    printf("  ingest (in order)          : %9.0f samples/s (%.3f s)  ratio to baseline %.2f"
           "  [target > 100000/s]\n", n / ti, ti, tb / ti);
    printf("  ingest (late, reversed)    : %9.0f samples/s (%.3f s)  ratio to baseline %.2f\n",
           n / tl, tl, tb / tl);
    printf("  rate whole window          : %9.0f samples/s (%.3f s, %zu rows)"
           "  [target 10M in 10 s = 1000000/s]\n", n / tr, tr, rows);
    printf("  export csv                 : %9.0f rows/s    (%.3f s, %zu rows)"
           "  [target 1M in 5 s = 200000/s]\n", sk->rows / (te > 0 ? te : 1e-9), te, sk->rows);
    printf("  max RSS                    : %ld MB\n", maxrss_mb());

    free(sk);
    bill_store_close(st);
    bill_store_close(st2);
    cleanup_db(base);
    cleanup_db(billdb);
    cleanup_db(late);
    rmdir(dir);
    free(v);
    free(ids);
    return 0;
}
