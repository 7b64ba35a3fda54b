/*
 * bench_billing.c - figures for nube-billing's hot paths, with ratios against a baseline
 * measured in the same run on the same disk:
 *
 *   baseline   raw SQLite: the same rows INSERTed with one prepared statement, 1000 per
 *              transaction, no indexes and no delta logic (the floor any ingest pays)
 *   ingest     bill_ingest() in batches of 1000 (CL_USAGE_BATCH_MAX), one transaction
 *              per message, in time order
 *   group      bill_ingest_many(): GROUP messages of 1000 per transaction (what the
 *              daemon's group commit does when agents send faster than one commit)
 *   late       the same number of samples arriving newest-first per batch (every one
 *              slots in before a stored sample and fixes its neighbour)
 *   daemon     the whole path: AGENTS DEALER sockets send usage.samples messages of 100
 *              samples (the row layout cl_usage_batch_encode writes, as agents do) to a
 *              running nube-billing (bill_start) over real ZeroMQ on loopback, which
 *              decodes, group-commits to its SQLite file and acks after each commit;
 *              timed from the first send to the last ack
 *   rate       bill_rate() over the whole window (counters, from the hourly sums the
 *              ingest kept, + events); the samples are ingested before the clock starts
 *   export     bill_export() formatting CSV rows into memory, then the same rows
 *              streamed over HTTP (GET /v1/export, chunked) to a client that counts
 *              bytes, with the peak RSS growth while streaming (flat memory)
 *
 * Usage: bench_billing [samples (default 200000)] [instances (default 500)]
 * Environment: BENCH_EXPORT_ROWS (rows of the HTTP export, default 1000000) and
 * BENCH_RATE_SAMPLES (when set, rating is also timed on that many samples, generated in
 * chunks; bench/billing/run full sets 10000000). BENCH_ONLY=daemon|group|rate runs that
 * one figure alone (for a profiler; rate on BENCH_RATE_SAMPLES, default the sample count).
 * Before each timed phase the page cache is written out (sync), so a phase's commits do
 * not wait behind the writeback of what the phase before it wrote.
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

#include <curl/curl.h>

#include "bill_int.h"
#include "billing.h"
#include "bus.h"
#include "db.h"
#include "json.h"

#define BATCH 1000
#define GROUP 20
#define H_MS INT64_C(3600000)

static void cleanup_db(const char *path);

static double now_s(void)
{
    return (double)cl_mono_ms() / 1000.0;
}

/* Write out what earlier phases left dirty in the page cache before a timed phase, so
 * that its own commits (fsync) do not wait behind their writeback: each phase pays for
 * its own I/O only. */
static void quiesce_io(void)
{
    sync();
}

/* CPU time of the whole process (every thread), in seconds. */
static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
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

/* Peak RSS since the last reset (VmHWM), in MB; reset_peak() restarts it (Linux). */
static long peak_rss_mb(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            kb = strtol(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return kb / 1024;
}

static void reset_peak(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "we");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}

static double ingest_group(bill_store *st, const cl_usage_sample *v, size_t n, size_t group)
{
    const cl_usage_sample *ptrs[64];
    size_t ns[64];
    cl_error err = {0};
    double t = now_s();
    if (group > 64)
        group = 64;
    for (size_t i = 0; i < n;) {
        size_t nb = 0;
        for (; nb < group && i < n; nb++) {
            ptrs[nb] = v + i;
            ns[nb] = n - i < BATCH ? n - i : BATCH;
            i += ns[nb];
        }
        if (bill_ingest_many(st, ptrs, ns, nb, 0, NULL, &err) < 0) {
            fprintf(stderr, "ingest group: %s\n", err.message);
            exit(1);
        }
    }
    return now_s() - t;
}

/* What billing's bus thread does per message: parse the envelope, decode the samples. */
static double decode_rate(const cl_usage_sample *v, size_t n, size_t per_msg)
{
    size_t nmsg = (n + per_msg - 1) / per_msg, got = 0;
    char **frames = calloc(nmsg, sizeof *frames);
    for (size_t m = 0; m < nmsg; m++) {
        cl_bus_msg msg;
        memset(&msg, 0, sizeof msg);
        msg.v = 1;
        cl_uuid_new(msg.id);
        cl_strlcpy(msg.type, CL_MSG_USAGE_SAMPLES, sizeof msg.type);
        cl_strlcpy(msg.from, "bench", sizeof msg.from);
        size_t off = m * per_msg;
        msg.body = cl_usage_batch_encode(v + off, n - off < per_msg ? n - off : per_msg);
        cl_bus_encode(&msg, &frames[m]);
        json_object_put(msg.body);
    }
    double t = now_s();
    for (size_t m = 0; m < nmsg; m++) {
        cl_bus_msg msg;
        cl_error err = {0};
        cl_usage_sample *out = NULL;
        size_t k = 0, rej = 0;
        memset(&msg, 0, sizeof msg);
        if (cl_bus_decode(frames[m], strlen(frames[m]), &msg, &err) == 0 &&
            cl_usage_batch_decode(msg.body, &out, &k, &rej, &err) == 0)
            got += k;
        free(out);
        cl_bus_msg_clear(&msg);
    }
    t = now_s() - t;
    for (size_t m = 0; m < nmsg; m++)
        free(frames[m]);
    free(frames);
    if (got != n)
        fprintf(stderr, "decode: %zu of %zu samples\n", got, n);
    return t;
}

#define DAEMON_AGENTS 4
#define DAEMON_PER_MSG 100

/* The daemon path: messages of DAEMON_PER_MSG samples from DAEMON_AGENTS dealers. The
 * bodies are built before the clock starts (an agent builds them as it samples). */
static double daemon_ingest(const char *dir, const cl_usage_sample *v, size_t n,
                            uint64_t *out_groups)
{
    char db[300], ep[64], kf[300];
    bill_cfg cfg;
    bill *b = NULL;
    cl_bus *bus[DAEMON_AGENTS];
    cl_error err = {0};
    int port = 0;

    snprintf(db, sizeof db, "%s/daemon.db", dir);
    snprintf(kf, sizeof kf, "%s/token.key", dir);
    /* A free port: bind port 0 through ZeroMQ's own probe is overkill; pick by pid. */
    port = 20000 + (int)(getpid() % 20000);
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    size_t nmsg = (n + DAEMON_PER_MSG - 1) / DAEMON_PER_MSG;
    json_object **bodies = calloc(nmsg, sizeof *bodies);
    for (size_t m = 0; m < nmsg; m++) {
        size_t off = m * DAEMON_PER_MSG;
        bodies[m] = cl_usage_batch_encode(v + off, n - off < DAEMON_PER_MSG ? n - off
                                                                          : DAEMON_PER_MSG);
    }
    if (cl_config_defaults(bill_cfg_keys, bill_cfg_nkeys, &cfg, &err) < 0 ||
        cl_config_set(bill_cfg_keys, bill_cfg_nkeys, &cfg, "database", "connection", db,
                      &err) < 0 ||
        cl_config_set(bill_cfg_keys, bill_cfg_nkeys, &cfg, "billing", "port", "0", &err) < 0 ||
        cl_config_set(bill_cfg_keys, bill_cfg_nkeys, &cfg, "billing", "bus_listen", ep,
                      &err) < 0 ||
        cl_config_set(bill_cfg_keys, bill_cfg_nkeys, &cfg, "auth", "token_key_file", kf,
                      &err) < 0 ||
        cl_config_set(bill_cfg_keys, bill_cfg_nkeys, &cfg, "billing", "sample_retention_days",
                      "0", &err) < 0 ||
        cl_config_set(bill_cfg_keys, bill_cfg_nkeys, &cfg, "billing", "rate_interval_s",
                      "86400", &err) < 0 ||
        bill_start(&cfg, &b, &err) < 0) {
        fprintf(stderr, "daemon: %s\n", err.message);
        exit(1);
    }
    for (int a = 0; a < DAEMON_AGENTS; a++) {
        char name[32];
        snprintf(name, sizeof name, "bench-agent-%d", a);
        cl_bus_opts o = {.role = CL_BUS_DEALER, .endpoint = ep, .name = name,
                         .resend_ms = 60000, .pending_cap = nmsg + 1};
        if (cl_bus_new(&o, &bus[a], &err) < 0) {
            fprintf(stderr, "dealer: %s\n", err.message);
            exit(1);
        }
    }
    /* Let the dealers connect (ZMQ_IMMEDIATE would defer the first sends). */
    struct timespec settle = {0, 200 * 1000000};
    nanosleep(&settle, NULL);
    quiesce_io();
    /* Timed from the first send: the senders' JSON encoding shares the CPU with billing
     * here (on real agents it does not), so this figure is a floor. The CPU time of all
     * threads over the same span tells the cost apart from the machine's load. */
    double c0 = cpu_s();
    double t = now_s();
    for (size_t m = 0; m < nmsg; m++)
        if (cl_bus_send(bus[m % DAEMON_AGENTS], NULL, CL_MSG_USAGE_SAMPLES, NULL, bodies[m],
                        true, NULL) < 0) {
            fprintf(stderr, "send failed\n");
            exit(1);
        }
    double t_sent = now_s() - t;
    for (int a = 0; a < DAEMON_AGENTS; a++)
        while (cl_bus_pending(bus[a]) > 0) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    t = now_s() - t;
    double cpu = cpu_s() - c0;
    *out_groups = atomic_load(&b->groups);
    printf("  (daemon: the senders took %.3f s of it to encode and queue %zu messages;"
           " CPU of all threads %.3f s = %.1f us/sample, senders included)\n", t_sent, nmsg,
           cpu, cpu * 1e6 / (double)n);
    if (atomic_load(&b->deferred) || atomic_load(&b->duplicates))
        printf("  (daemon: %" PRIu64 " batches deferred for a resend, %" PRIu64
               " duplicate samples)\n", (uint64_t)atomic_load(&b->deferred),
               (uint64_t)atomic_load(&b->duplicates));
    if (atomic_load(&b->accepted) != n)
        fprintf(stderr, "daemon: %" PRIu64 " samples stored, %zu sent\n",
                (uint64_t)atomic_load(&b->accepted), n);
    for (int a = 0; a < DAEMON_AGENTS; a++)
        cl_bus_free(bus[a]);
    bill_stop(b);
    cl_config_free(bill_cfg_keys, bill_cfg_nkeys, &cfg);
    free(bodies);
    cleanup_db(db);
    unlink(kf);
    return t;
}

/* 1M-row export over HTTP: rated rows written directly, then streamed to a counter. */
static size_t count_bytes(char *p, size_t sz, size_t nm, void *ud)
{
    (void)p;
    *(size_t *)ud += sz * nm;
    return sz * nm;
}

static void http_export(const char *dir, size_t rows, double *out_s, size_t *out_bytes,
                        long *out_rss_growth)
{
    char db[300], kf[300], url[256];
    bill_cfg cfg;
    bill *b = NULL;
    cl_error err = {0};
    bill_store *xs = NULL;
    cl_db *d = NULL;
    sqlite3_stmt *q = NULL;

    snprintf(db, sizeof db, "%s/export.db", dir);
    snprintf(kf, sizeof kf, "%s/token.key", dir);
    if (cl_config_defaults(bill_cfg_keys, bill_cfg_nkeys, &cfg, &err) < 0 ||
        cl_config_set(bill_cfg_keys, bill_cfg_nkeys, &cfg, "database", "connection", db,
                      &err) < 0 ||
        cl_config_set(bill_cfg_keys, bill_cfg_nkeys, &cfg, "billing", "port", "0", &err) < 0 ||
        cl_config_set(bill_cfg_keys, bill_cfg_nkeys, &cfg, "billing", "bus_listen",
                      "tcp://127.0.0.1:0", &err) < 0 ||
        cl_config_set(bill_cfg_keys, bill_cfg_nkeys, &cfg, "auth", "admin_token", "bench",
                      &err) < 0 ||
        cl_config_set(bill_cfg_keys, bill_cfg_nkeys, &cfg, "auth", "token_key_file", kf,
                      &err) < 0 ||
        cl_config_set(bill_cfg_keys, bill_cfg_nkeys, &cfg, "billing", "rate_interval_s",
                      "86400", &err) < 0 ||
        bill_start(&cfg, &b, &err) < 0) {
        fprintf(stderr, "export daemon: %s\n", err.message);
        exit(1);
    }
    /* rows rated rows: 1000 instances x 6 meters per hour. */
    if (bill_store_open(db, &xs, &err) < 0 || (d = xs->db, false) ||
        cl_db_prepare(d, "INSERT INTO rated VALUES(?1, ?2, ?3, ?4, ?5, 'ns', 10, 'core-hour',"
                         " ?6, 'EUR')", &q) < 0) {
        fprintf(stderr, "export rows: %s\n", err.message);
        exit(1);
    }
    static const char *const meters[] = {"cpu", "vcpu", "ram", "disk", "net.in", "net.out"};
    int64_t t0 = INT64_C(1767225600000);
    cl_db_begin(d);
    for (size_t i = 0; i < rows; i++) {
        char proj[32], res[64];
        size_t per_hour = 6000;
        snprintf(proj, sizeof proj, "proj-%zu", (i / 6) % 50);
        snprintf(res, sizeof res, "inst-%06zu", (i / 6) % 1000);
        sqlite3_reset(q);
        cl_db_bind_int64(q, 1, t0 + (int64_t)(i / per_hour) * H_MS);
        cl_db_bind_text(q, 2, proj);
        cl_db_bind_text(q, 3, res);
        cl_db_bind_text(q, 4, meters[i % 6]);
        cl_db_bind_int64(q, 5, (int64_t)i * 1000);
        cl_db_bind_int64(q, 6, (int64_t)i);
        cl_db_step_done(q);
    }
    cl_db_commit(d);
    sqlite3_finalize(q);
    bill_store_close(xs);

    snprintf(url, sizeof url, "http://127.0.0.1:%u/v1/export?format=csv&start=2026-01-01"
             "&end=2030-01-01", (unsigned)bill_http_port(b));
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "X-Auth-Token: bench");
    size_t bytes = 0;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, count_bytes);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &bytes);
    quiesce_io();
    reset_peak();
    long before = peak_rss_mb();
    double t = now_s();
    CURLcode cr = curl_easy_perform(c);
    *out_s = now_s() - t;
    *out_rss_growth = peak_rss_mb() - before;
    if (*out_rss_growth < 0)
        *out_rss_growth = 0; /* the peak was reset: nothing grew */
    if (cr != CURLE_OK)
        fprintf(stderr, "export: %s\n", curl_easy_strerror(cr));
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    *out_bytes = bytes;
    bill_stop(b);
    cl_config_free(bill_cfg_keys, bill_cfg_nkeys, &cfg);
    cleanup_db(db);
    unlink(kf);
}

/* Rating at full size: n samples generated and group-ingested in chunks (flat memory),
 * then one bill_rate() over the whole window, timed alone. */
static double rate_full(const char *dir, size_t n, size_t ninst, char (*ids)[CL_UUID_LEN],
                        int64_t t0, size_t *out_rows)
{
    enum { CHUNK = 20000 };
    char db[300];
    bill_store *st = NULL;
    cl_error err = {0};
    cl_usage_sample *v = calloc(CHUNK, sizeof *v);

    snprintf(db, sizeof db, "%s/rate.db", dir);
    if (!v || bill_store_open(db, &st, &err) < 0) {
        fprintf(stderr, "rate store: %s\n", err.message);
        exit(1);
    }
    for (size_t k = 0; k < n; k += CHUNK) {
        size_t m = n - k < CHUNK ? n - k : CHUNK;
        for (size_t j = 0; j < m; j++)
            make_sample(&v[j], k + j, ninst, ids, t0);
        ingest_group(st, v, m, 20);
    }
    free(v);
    bill_prices *p = calloc(1, sizeof *p);
    cl_strlcpy(p->currency, "EUR", sizeof p->currency);
    p->cpu_core_hour = 10000;
    p->net_gb_in = 5000;
    bill_prices_put(st, p, &err);
    free(p);
    int64_t end = t0 + (int64_t)(n / ninst + 1) * 60000 + H_MS;
    bill_rate_opts o = {.now_ms = end, .min_charge_s = 60};
    quiesce_io();
    double t = now_s();
    if (bill_rate(st, t0, end, &o, out_rows, &err) < 0) {
        fprintf(stderr, "rate: %s\n", err.message);
        exit(1);
    }
    t = now_s() - t;
    bill_store_close(st);
    cleanup_db(db);
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
    char dir[] = "/tmp/bench_billing_XXXXXX", base[256], billdb[256], late[256], grp[256];
    size_t export_rows = 1000000, rate_n = 0;
    const char *ev = getenv("BENCH_EXPORT_ROWS");
    if (ev && cl_parse_int64(ev, &v64) == 0 && v64 > 0)
        export_rows = (size_t)v64;
    if (argc > 1 && cl_parse_int64(argv[1], &v64) == 0 && v64 > 0)
        n = (size_t)v64;
    if (argc > 2 && cl_parse_int64(argv[2], &v64) == 0 && v64 > 0)
        ninst = (size_t)v64;
    if (!mkdtemp(dir))
        return 1;
    snprintf(base, sizeof base, "%s/raw.db", dir);
    snprintf(billdb, sizeof billdb, "%s/billing.db", dir);
    snprintf(late, sizeof late, "%s/late.db", dir);
    snprintf(grp, sizeof grp, "%s/group.db", dir);

    char (*ids)[CL_UUID_LEN] = calloc(ninst, CL_UUID_LEN);
    cl_usage_sample *v = calloc(n, sizeof *v);
    if (!ids || !v)
        return 1;
    int64_t t0 = INT64_C(1767225600000); /* 2026-01-01 */
    make_instances(ninst, ids);
    for (size_t k = 0; k < n; k++)
        make_sample(&v[k], k, ninst, ids, t0);

    /* BENCH_ONLY=daemon|group|rate: one figure alone (to profile it); rate is the full
     * size one, on BENCH_RATE_SAMPLES (default: samples) samples. */
    const char *only = getenv("BENCH_ONLY");
    if (only && strcmp(only, "rate") == 0) {
        size_t rrows = 0, rn = n;
        ev = getenv("BENCH_RATE_SAMPLES");
        if (ev && cl_parse_int64(ev, &v64) == 0 && v64 > 0)
            rn = (size_t)v64;
        double trf = rate_full(dir, rn, ninst, ids, t0, &rrows);
        printf("  rate full size             : %9.0f samples/s (%.3f s for %zu samples, %zu"
               " rows)\n", rn / trf, trf, rn, rrows);
        free(v);
        free(ids);
        rmdir(dir);
        return 0;
    }
    if (only && (strcmp(only, "daemon") == 0 || strcmp(only, "group") == 0)) {
        uint64_t g = 0;
        bill_store *gs = NULL;
        cl_error gerr = {0};
        double t, c0 = cpu_s();
        if (only[0] == 'd') {
            t = daemon_ingest(dir, v, n, &g);
        } else {
            if (bill_store_open(grp, &gs, &gerr) < 0)
                return 1;
            t = ingest_group(gs, v, n, GROUP);
            bill_store_close(gs);
            cleanup_db(grp);
        }
        printf("  %-26s : %9.0f samples/s (%.3f s, %" PRIu64 " group commits, %.1f us CPU"
               "/sample)\n", only, n / t, t, g, (cpu_s() - c0) * 1e6 / (double)n);
        free(v);
        free(ids);
        rmdir(dir);
        return 0;
    }
    quiesce_io();
    double tb = baseline(base, v, n);
    bill_store *st = NULL, *st2 = NULL;
    cl_error err = {0};
    if (bill_store_open(billdb, &st, &err) < 0 || bill_store_open(late, &st2, &err) < 0) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    quiesce_io();
    double ti = ingest_all(st, v, n, false);
    bill_store *st3 = NULL;
    if (bill_store_open(grp, &st3, &err) < 0) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    quiesce_io();
    double tg = ingest_group(st3, v, n, GROUP);
    bill_store_close(st3);
    cleanup_db(grp);
    quiesce_io();
    double tl = ingest_all(st2, v, n, true);
    /* The daemon gets fresh ids (the same ids would be duplicates of nothing: its own db). */
    uint64_t groups = 0;
    double td = daemon_ingest(dir, v, n, &groups);
    double tdec = decode_rate(v, n, DAEMON_PER_MSG);

    bill_prices *p = calloc(1, sizeof *p);
    cl_strlcpy(p->currency, "EUR", sizeof p->currency);
    p->cpu_core_hour = 10000;
    p->net_gb_in = 5000;
    bill_prices_put(st, p, &err);
    free(p);
    int64_t end = t0 + (int64_t)(n / ninst + 1) * 60000 + H_MS;
    bill_rate_opts o = {.now_ms = end, .min_charge_s = 60};
    size_t rows = 0;
    quiesce_io();
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
    printf("  ingest group commit (x%d)  : %9.0f samples/s (%.3f s)  ratio to baseline %.2f"
           "  [target > 100000/s]\n", GROUP, n / tg, tg, tb / tg);
    printf("  ingest (late, reversed)    : %9.0f samples/s (%.3f s)  ratio to baseline %.2f\n",
           n / tl, tl, tb / tl);
    printf("  decode (bus thread's work) : %9.0f samples/s (%.3f s)  envelope + samples,"
           " %d/msg\n", n / tdec, tdec, DAEMON_PER_MSG);
    printf("  daemon bus->commit->ack    : %9.0f samples/s (%.3f s, %d agents, %d/msg, "
           "%" PRIu64 " group commits)  ratio to baseline %.2f  [target > 100000/s]\n",
           n / td, td, DAEMON_AGENTS, DAEMON_PER_MSG, groups, tb / td);
    printf("  rate whole window          : %9.0f samples/s (%.3f s, %zu rows)"
           "  [target 10M in 10 s = 1000000/s]\n", n / tr, tr, rows);
    printf("  export csv                 : %9.0f rows/s    (%.3f s, %zu rows)"
           "  [target 1M in 5 s = 200000/s]\n", sk->rows / (te > 0 ? te : 1e-9), te, sk->rows);
    printf("  max RSS                    : %ld MB\n", maxrss_mb());
    ev = getenv("BENCH_RATE_SAMPLES");
    if (ev && cl_parse_int64(ev, &v64) == 0 && v64 > 0)
        rate_n = (size_t)v64;
    if (rate_n) {
        size_t rrows = 0;
        double trf = rate_full(dir, rate_n, ninst, ids, t0, &rrows);
        printf("  rate full size             : %9.0f samples/s (%.3f s for %zu samples, %zu rows)"
               "  [target 10M in 10 s]\n", rate_n / trf, trf, rate_n, rrows);
    } else {
        printf("  rate 10M samples projected : %.1f s from the rate above (BENCH_RATE_SAMPLES="
               "10000000 measures it)\n", 10e6 / (n / tr));
    }
    free(v);
    v = NULL;
    double tx = 0;
    size_t xbytes = 0;
    long growth = 0;
    http_export(dir, export_rows, &tx, &xbytes, &growth);
    printf("  export HTTP stream csv     : %9.0f rows/s    (%.3f s, %zu rows, %zu MB sent,"
           " peak RSS growth %ld MB)  [target 1M in 5 s]\n", export_rows / tx, tx,
           export_rows, xbytes >> 20, growth);

    free(sk);
    bill_store_close(st);
    bill_store_close(st2);
    cleanup_db(base);
    cleanup_db(billdb);
    cleanup_db(late);
    rmdir(dir);
    free(ids);
    return 0;
}
