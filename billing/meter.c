/*
 * meter.c - the billing database and the metering half of nube-billing: samples in,
 * exact counter deltas out.
 *
 * Peers get metering wrong in known ways (CloudKitty: double counting when a source
 * returns duplicates, negative deltas after a counter reset). The rules here:
 *
 *  - De-duplication is by sample id, forever: rows go in with INSERT OR IGNORE under the
 *    primary key (instance, ts, id), so a batch resent after a lost ack, or the same
 *    sample in two batches, changes nothing. (The key carries instance and ts before the
 *    id because a resent sample is the same sample, and because an index ordered by
 *    instance and time is written near its end, where a unique index of random uuids
 *    would be written all over: the difference is 3x in ingest rate.) (The bus's own dedup only remembers the last few thousand
 *    message ids; this is the one that counts.)
 *
 *  - Counters (cumulative since a counter base) become deltas per instance, in the order
 *    of the measurement time (ts, then id to break ties), not of arrival. A sample's delta
 *    is taken against the sample just before it of the same instance:
 *        same boot_id and value >= previous  ->  value - previous
 *        otherwise (new boot_id, or lower)   ->  value   (the counter restarted from 0)
 *    so a delta is never negative, and the deltas of one counter base add up to its last
 *    value: never doubled. When a late sample (an outage drained later, a batch resent
 *    out of order) lands between two stored ones, its own delta is computed against the
 *    one before and the delta of the one after is recomputed against it: the sum over
 *    the instance is the same as if everything had arrived in order.
 *
 *  - Every ingest remembers the earliest ts it touched (state "dirty_from"); the rating
 *    tick re-rates from that hour, because a sample at ts can only change hours >= ts.
 *
 * Ingest cache: agents send in time order almost always, so the store remembers the
 * newest stored counter sample of each instance (a bounded open-addressing table, emptied
 * when full and after any rollback, refilled from the database on a miss). A sample newer
 * than it needs no neighbour queries: its predecessor is the cached one and it has no
 * successor. Only late samples take the two index lookups.
 *
 * Deltas are stored beside the raw values, so the data stays reproducible from the
 * samples.
 *
 * Hourly rollup (ctr_hour): rating charges counters per instance, hour and project, so
 * the same transaction that stores the deltas also adds them to one row per (hour,
 * instance, project): a new sample adds its delta, a late one adds its own and the
 * change of its successor's (which may be in another hour). The sums are gathered in a
 * small in-memory table during the transaction and written with one upsert per group
 * just before the commit, so the rollup and the samples commit or roll back together
 * and always agree (bill_rollup_check() proves it in the tests). Rating then reads one
 * row per instance-hour instead of every sample (~60x fewer rows at one sample a
 * minute), and pruning old samples does not lose the usage they measured.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bill_int.h"
#include "log.h"

#define LOG_MOD "bill.meter"
#define DB_BUSY_MS 5000

static const cl_db_migration migrations[] = {
    {1,
     "CREATE TABLE meta(k TEXT PRIMARY KEY, v TEXT NOT NULL);"
     "CREATE TABLE state(k TEXT PRIMARY KEY, v INTEGER NOT NULL);"
     /* kind: cl_usage_kind; event: cl_usage_event; counters NULL unless kind = 0. */
     "CREATE TABLE instances(n INTEGER PRIMARY KEY, uuid TEXT NOT NULL UNIQUE);"
     "CREATE TABLE samples("
     "  inst INTEGER NOT NULL REFERENCES instances(n), ts INTEGER NOT NULL,"
     "  id TEXT NOT NULL, project_id TEXT NOT NULL,"
     "  host TEXT NOT NULL, kind INTEGER NOT NULL,"
     "  event INTEGER NOT NULL DEFAULT 0, flavor_id TEXT, boot_id TEXT,"
     "  cpu_ns INTEGER, net_rx INTEGER, net_tx INTEGER, disk_rd INTEGER, disk_wr INTEGER,"
     "  d_cpu INTEGER, d_rx INTEGER, d_tx INTEGER, d_rd INTEGER, d_wr INTEGER,"
     "  vcpus INTEGER, ram_mb INTEGER, disk_gb INTEGER, mem_used_mb INTEGER,"
     "  PRIMARY KEY(inst, ts, id)) WITHOUT ROWID;"
     "CREATE INDEX samples_counter_ts ON samples(ts) WHERE kind = 0;"
     "CREATE INDEX samples_event ON samples(inst, ts) WHERE kind = 2;"
     "CREATE TABLE rated("
     "  period INTEGER NOT NULL, project_id TEXT NOT NULL, resource TEXT NOT NULL,"
     "  meter TEXT NOT NULL, quantity INTEGER NOT NULL, unit TEXT NOT NULL,"
     "  price INTEGER NOT NULL, price_unit TEXT NOT NULL, cost INTEGER NOT NULL,"
     "  currency TEXT NOT NULL,"
     "  PRIMARY KEY(period, project_id, resource, meter)) WITHOUT ROWID;"
     "CREATE INDEX rated_project ON rated(project_id, period);"},
    /* The hourly rollup rating reads (see the header comment), filled from the samples
     * already stored; the ts index was only ever read by rating's old GROUP BY. */
    {2,
     "CREATE TABLE ctr_hour("
     "  hour INTEGER NOT NULL, inst INTEGER NOT NULL, project_id TEXT NOT NULL,"
     "  d_cpu INTEGER NOT NULL, d_rx INTEGER NOT NULL, d_tx INTEGER NOT NULL,"
     "  d_rd INTEGER NOT NULL, d_wr INTEGER NOT NULL,"
     "  PRIMARY KEY(hour, inst, project_id)) WITHOUT ROWID;"
     "INSERT INTO ctr_hour SELECT ts / 3600000, inst, project_id, coalesce(sum(d_cpu), 0),"
     "  coalesce(sum(d_rx), 0), coalesce(sum(d_tx), 0), coalesce(sum(d_rd), 0),"
     "  coalesce(sum(d_wr), 0) FROM samples WHERE kind = 0"
     "  GROUP BY ts / 3600000, inst, project_id;"
     "DROP INDEX samples_counter_ts;"},
};

static const char SQL_INSERT[] =
    "INSERT OR IGNORE INTO samples(id, inst, project_id, host, ts, kind, event,"
    " flavor_id, boot_id, cpu_ns, net_rx, net_tx, disk_rd, disk_wr,"
    " d_cpu, d_rx, d_tx, d_rd, d_wr, vcpus, ram_mb, disk_gb, mem_used_mb)"
    " VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,"
    "?22,?23)";
/* Row values let SQLite walk the primary key (inst, ts, id) directly. */
static const char SQL_PREV[] =
    "SELECT id, boot_id, cpu_ns, net_rx, net_tx, disk_rd, disk_wr, ts FROM samples"
    " WHERE inst = ?1 AND (ts, id) < (?2, ?3) AND kind = 0"
    " ORDER BY ts DESC, id DESC LIMIT 1";
/* Also the successor's deltas and project: its rollup group is corrected by the change. */
static const char SQL_NEXT[] =
    "SELECT id, boot_id, cpu_ns, net_rx, net_tx, disk_rd, disk_wr, ts, d_cpu, d_rx, d_tx,"
    " d_rd, d_wr, project_id FROM samples"
    " WHERE inst = ?1 AND (ts, id) > (?2, ?3) AND kind = 0"
    " ORDER BY ts, id LIMIT 1";
static const char SQL_LAST[] =
    "SELECT id, boot_id, cpu_ns, net_rx, net_tx, disk_rd, disk_wr, ts FROM samples"
    " WHERE inst = ?1 AND kind = 0 ORDER BY ts DESC, id DESC LIMIT 1";
static const char SQL_SET_DELTA[] =
    "UPDATE samples SET d_cpu = ?4, d_rx = ?5, d_tx = ?6, d_rd = ?7, d_wr = ?8"
    " WHERE inst = ?1 AND ts = ?2 AND id = ?3";
static const char SQL_HOUR_ADD[] =
    "INSERT INTO ctr_hour(hour, inst, project_id, d_cpu, d_rx, d_tx, d_rd, d_wr)"
    " VALUES(?1,?2,?3,?4,?5,?6,?7,?8) ON CONFLICT(hour, inst, project_id) DO UPDATE SET"
    " d_cpu = d_cpu + excluded.d_cpu, d_rx = d_rx + excluded.d_rx,"
    " d_tx = d_tx + excluded.d_tx, d_rd = d_rd + excluded.d_rd, d_wr = d_wr + excluded.d_wr";
static const char SQL_INST_GET[] = "SELECT n FROM instances WHERE uuid = ?1";
static const char SQL_INST_ADD[] = "INSERT INTO instances(uuid) VALUES(?1)";
static const char SQL_DIRTY[] =
    "INSERT INTO state(k, v) VALUES('" BILL_STATE_DIRTY_FROM "', ?1)"
    " ON CONFLICT(k) DO UPDATE SET v = min(v, excluded.v)";

#define NCOUNTERS 5
#define CACHE_SLOTS 16384 /* power of two */
#define CACHE_MAX_FILL (CACHE_SLOTS / 4 * 3)
#define HOUR_SLOTS 4096 /* power of two; written out early when 3/4 full */
#define HOUR_MAX_FILL (HOUR_SLOTS / 4 * 3)

/* The previous / next counter sample of an instance. */
typedef struct counter_row {
    bool found;
    int64_t ts;
    char id[CL_UUID_LEN];
    char boot_id[CL_USAGE_BOOT_ID_MAX];
    int64_t v[NCOUNTERS];
    int64_t d[NCOUNTERS];      /* SQL_NEXT only: its stored deltas */
    char project[CL_ID_MAX];   /* SQL_NEXT only */
} counter_row;

static void counters_of(const cl_usage_sample *s, int64_t v[NCOUNTERS])
{
    v[0] = s->counters.cpu_ns;
    v[1] = s->counters.net_rx_bytes;
    v[2] = s->counters.net_tx_bytes;
    v[3] = s->counters.disk_rd_bytes;
    v[4] = s->counters.disk_wr_bytes;
}

/* The delta rule of the header comment, per counter: never negative, never doubled. */
static void deltas(const counter_row *prev, const char *boot_id, const int64_t cur[NCOUNTERS],
                   int64_t out[NCOUNTERS])
{
    bool same_base = prev->found && strcmp(prev->boot_id, boot_id) == 0;
    for (int i = 0; i < NCOUNTERS; i++)
        out[i] = (same_base && cur[i] >= prev->v[i]) ? cur[i] - prev->v[i] : cur[i];
}

/* Read a counter row (SQL_PREV, SQL_NEXT and SQL_LAST share their columns). */
static void read_counter_row(sqlite3_stmt *q, counter_row *out)
{
    out->found = true;
    cl_db_column_text(q, 0, out->id, sizeof out->id);
    cl_db_column_text(q, 1, out->boot_id, sizeof out->boot_id);
    for (int i = 0; i < NCOUNTERS; i++)
        out->v[i] = sqlite3_column_int64(q, 2 + i);
    out->ts = sqlite3_column_int64(q, 2 + NCOUNTERS);
    if (sqlite3_column_count(q) > 3 + 2 * NCOUNTERS) {
        for (int i = 0; i < NCOUNTERS; i++)
            out->d[i] = sqlite3_column_int64(q, 3 + NCOUNTERS + i);
        cl_db_column_text(q, 3 + 2 * NCOUNTERS, out->project, sizeof out->project);
    }
}

/* Look up the neighbour of (instance, ts, id) in one direction (the statement says
 * which). 0 or -errno. */
static int neighbour(sqlite3_stmt *q, int64_t inst, const cl_usage_sample *s, counter_row *out)
{
    int rc;
    out->found = false;
    sqlite3_reset(q);
    cl_db_bind_int64(q, 1, inst);
    cl_db_bind_int64(q, 2, s->ts);
    cl_db_bind_text(q, 3, s->id);
    rc = sqlite3_step(q);
    if (rc == SQLITE_ROW)
        read_counter_row(q, out);
    else if (rc != SQLITE_DONE)
        return cl_db_errno(rc);
    sqlite3_reset(q);
    return 0;
}

static int set_delta(bill_store *st, int64_t inst, const counter_row *row,
                     const int64_t d[NCOUNTERS])
{
    sqlite3_stmt *q = st->st_set_delta;
    sqlite3_reset(q);
    cl_db_bind_int64(q, 1, inst);
    cl_db_bind_int64(q, 2, row->ts);
    cl_db_bind_text(q, 3, row->id);
    for (int i = 0; i < NCOUNTERS; i++)
        cl_db_bind_int64(q, 4 + i, d[i]);
    return cl_db_step_done(q);
}

static void bind_opt_int(sqlite3_stmt *q, int idx, bool present, int64_t v)
{
    if (present)
        cl_db_bind_int64(q, idx, v);
    else
        sqlite3_bind_null(q, idx);
}

/* Bind a string the sample owns for the whole step (SQLITE_STATIC: no copy, on the hot
 * path); NULL when empty and optional. The statement keeps the pointer after the step,
 * but only a step reads it, and insert_sample() binds every parameter before each. */
static void bind_static(sqlite3_stmt *q, int idx, const char *s, bool empty_is_null)
{
    if (empty_is_null && !s[0])
        sqlite3_bind_null(q, idx);
    else
        sqlite3_bind_text(q, idx, s, -1, SQLITE_STATIC);
}

/* Insert one sample with its deltas (when a counter sample). *out_new: false for a
 * duplicate id. Every parameter is bound on every call (no clear_bindings needed). */
static int insert_sample(bill_store *st, int64_t inst, const cl_usage_sample *s,
                         const int64_t d[NCOUNTERS], bool *out_new)
{
    sqlite3_stmt *q = st->st_insert;
    bool c = s->kind == CL_USAGE_COUNTER, g = s->has_gauges;
    int64_t v[NCOUNTERS];
    int r;

    counters_of(s, v);
    sqlite3_reset(q);
    bind_static(q, 1, s->id, false);
    cl_db_bind_int64(q, 2, inst);
    bind_static(q, 3, s->project_id, false);
    bind_static(q, 4, s->host, false);
    cl_db_bind_int64(q, 5, s->ts);
    cl_db_bind_int64(q, 6, s->kind);
    cl_db_bind_int64(q, 7, s->event);
    bind_static(q, 8, s->flavor_id, true);
    bind_static(q, 9, s->boot_id, true);
    for (int i = 0; i < NCOUNTERS; i++) {
        bind_opt_int(q, 10 + i, c, v[i]);
        bind_opt_int(q, 15 + i, c, c ? d[i] : 0);
    }
    bind_opt_int(q, 20, g, s->gauges.vcpus);
    bind_opt_int(q, 21, g, s->gauges.ram_mb);
    bind_opt_int(q, 22, g, s->gauges.disk_gb);
    bind_opt_int(q, 23, g && s->gauges.mem_used_mb >= 0, s->gauges.mem_used_mb);
    r = cl_db_step_done(q);
    if (r < 0)
        return r;
    *out_new = sqlite3_changes(cl_db_handle(st->db)) > 0;
    return 0;
}

/* ---- the hourly rollup ---- */

static void hour_clear(bill_store *st)
{
    if (st->hacc)
        memset(st->hacc, 0, HOUR_SLOTS * sizeof *st->hacc);
    st->hacc_n = 0;
}

/* Write the pending sums (one upsert per group) and empty the table. 0 or -errno. */
static int hour_flush(bill_store *st)
{
    sqlite3_stmt *q = st->st_hour_add;
    int r;

    for (size_t i = 0; st->hacc_n && i < HOUR_SLOTS; i++) {
        const bill_hour_acc *a = &st->hacc[i];
        if (!a->used)
            continue;
        sqlite3_reset(q);
        cl_db_bind_int64(q, 1, a->hour);
        cl_db_bind_int64(q, 2, a->inst);
        cl_db_bind_text(q, 3, a->project);
        for (int k = 0; k < NCOUNTERS; k++)
            cl_db_bind_int64(q, 4 + k, a->d[k]);
        if ((r = cl_db_step_done(q)) < 0)
            return r;
    }
    hour_clear(st);
    return 0;
}

/* Add deltas (negative for a correction) to the group of (inst, ts's hour, project). */
static int hour_add(bill_store *st, int64_t inst, int64_t ts, const char *project,
                    const int64_t d[NCOUNTERS], int sign)
{
    int64_t hour = ts / BILL_HOUR_MS;
    uint32_t h = 2166136261u;
    int r;

    if (!st->hacc && !(st->hacc = calloc(HOUR_SLOTS, sizeof *st->hacc)))
        return -ENOMEM;
    if (st->hacc_n >= HOUR_MAX_FILL && (r = hour_flush(st)) < 0)
        return r;
    h = (h ^ (uint32_t)inst) * 16777619u;
    h = (h ^ (uint32_t)hour) * 16777619u;
    for (const char *p = project; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    for (uint32_t i = h & (HOUR_SLOTS - 1);; i = (i + 1) & (HOUR_SLOTS - 1)) {
        bill_hour_acc *a = &st->hacc[i];
        if (!a->used) {
            a->used = true;
            a->inst = inst;
            a->hour = hour;
            cl_strlcpy(a->project, project, sizeof a->project);
            st->hacc_n++;
        } else if (a->inst != inst || a->hour != hour || strcmp(a->project, project) != 0) {
            continue;
        }
        for (int k = 0; k < NCOUNTERS; k++)
            a->d[k] += sign * d[k];
        return 0;
    }
}

/* The rollup's invariant (see bill_int.h). */
int bill_rollup_check(bill_store *st, int64_t *out_mismatches)
{
    _cleanup_stmt_ sqlite3_stmt *q = NULL;
    int r = cl_db_prepare(
        st->db,
        "WITH s AS (SELECT ts / 3600000 AS hour, inst, project_id, sum(d_cpu) AS c,"
        "  sum(d_rx) AS rx, sum(d_tx) AS tx, sum(d_rd) AS rd, sum(d_wr) AS wr FROM samples"
        "  WHERE kind = 0 GROUP BY 1, 2, 3)"
        " SELECT (SELECT count(*) FROM s LEFT JOIN ctr_hour h USING(hour, inst, project_id)"
        "  WHERE h.d_cpu IS NOT s.c OR h.d_rx IS NOT s.rx OR h.d_tx IS NOT s.tx"
        "  OR h.d_rd IS NOT s.rd OR h.d_wr IS NOT s.wr)"
        " + (SELECT count(*) FROM ctr_hour h LEFT JOIN s USING(hour, inst, project_id)"
        "  WHERE s.hour IS NULL)",
        &q);
    if (r < 0)
        return r;
    if ((r = sqlite3_step(q)) != SQLITE_ROW)
        return cl_db_errno(r);
    *out_mismatches = sqlite3_column_int64(q, 0);
    return 0;
}

/* ---- the ingest cache ---- */

static uint32_t cache_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static void cache_clear(bill_store *st)
{
    if (st->cache)
        memset(st->cache, 0, CACHE_SLOTS * sizeof *st->cache);
    st->cache_n = 0;
}

/* The slot of an instance: its entry (used) or the empty slot where it would go. NULL
 * only when the table cannot be allocated. */
static bill_last_ctr *cache_slot(bill_store *st, const char *inst)
{
    if (!st->cache && !(st->cache = calloc(CACHE_SLOTS, sizeof *st->cache)))
        return NULL;
    if (st->cache_n >= CACHE_MAX_FILL)
        cache_clear(st); /* a cap, not an eviction policy: misses only cost a query */
    for (uint32_t i = cache_hash(inst) & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
        bill_last_ctr *c = &st->cache[i];
        if (!c->used || strcmp(c->inst, inst) == 0)
            return c;
    }
}

static void cache_store(bill_last_ctr *c, const cl_usage_sample *s, const int64_t v[NCOUNTERS])
{
    c->has = true;
    memcpy(c->id, s->id, sizeof c->id);
    c->ts = s->ts;
    cl_strlcpy(c->boot_id, s->boot_id, sizeof c->boot_id);
    memcpy(c->v, v, sizeof c->v);
}

/* The integer key of an instance, created on first sight. 0 or -errno. */
static int instance_key(bill_store *st, const char *uuid, int64_t *out)
{
    sqlite3_stmt *q = st->st_inst_get;
    int rc, r;

    sqlite3_reset(q);
    cl_db_bind_text(q, 1, uuid);
    rc = sqlite3_step(q);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(q, 0);
    sqlite3_reset(q);
    if (rc == SQLITE_ROW)
        return 0;
    if (rc != SQLITE_DONE)
        return cl_db_errno(rc);
    sqlite3_reset(st->st_inst_add);
    cl_db_bind_text(st->st_inst_add, 1, uuid);
    if ((r = cl_db_step_done(st->st_inst_add)) < 0)
        return r;
    *out = sqlite3_last_insert_rowid(cl_db_handle(st->db));
    return 0;
}

/* Fill an empty slot from the database: the instance's key and its newest counter
 * sample. */
static int cache_fill(bill_store *st, bill_last_ctr *c, const char *inst)
{
    counter_row last = {0};
    int64_t n = 0;
    int r;

    memset(c, 0, sizeof *c);
    if ((r = instance_key(st, inst, &n)) < 0)
        return r;
    c->n = n;
    sqlite3_reset(st->st_last);
    cl_db_bind_int64(st->st_last, 1, n);
    r = sqlite3_step(st->st_last);
    if (r == SQLITE_ROW)
        read_counter_row(st->st_last, &last);
    sqlite3_reset(st->st_last);
    if (r != SQLITE_ROW && r != SQLITE_DONE)
        return cl_db_errno(r);
    if (last.found) {
        c->has = true;
        memcpy(c->id, last.id, sizeof c->id);
        memcpy(c->boot_id, last.boot_id, sizeof c->boot_id);
        memcpy(c->v, last.v, sizeof c->v);
        c->ts = last.ts;
    }
    c->used = true;
    cl_strlcpy(c->inst, inst, sizeof c->inst);
    st->cache_n++;
    return 0;
}

/* True when s sorts after the cached newest sample (by ts, then id). */
static bool after_newest(const bill_last_ctr *c, const cl_usage_sample *s)
{
    return !c->has || s->ts > c->ts || (s->ts == c->ts && strcmp(s->id, c->id) > 0);
}

/* One sample: dedup, deltas, and the fix-up of the following sample when it is late. */
static int ingest_one(bill_store *st, const cl_usage_sample *s, bill_ingest_stats *stats)
{
    counter_row prev, next;
    int64_t cur[NCOUNTERS], d[NCOUNTERS] = {0};
    bool is_new = false;
    int r;

    bill_last_ctr *c = cache_slot(st, s->instance_uuid);
    if (!c)
        return -ENOMEM;
    if (!c->used && (r = cache_fill(st, c, s->instance_uuid)) < 0)
        return r;
    if (s->kind != CL_USAGE_COUNTER) {
        if ((r = insert_sample(st, c->n, s, d, &is_new)) < 0)
            return r;
        if (is_new)
            stats->accepted++;
        else
            stats->duplicates++;
        return 0;
    }

    counters_of(s, cur);
    if (after_newest(c, s)) {
        /* The common case: in order. prev is the cached sample, and nothing follows. */
        prev.found = c->has;
        cl_strlcpy(prev.boot_id, c->boot_id, sizeof prev.boot_id);
        memcpy(prev.v, c->v, sizeof prev.v);
        deltas(&prev, s->boot_id, cur, d);
        if ((r = insert_sample(st, c->n, s, d, &is_new)) < 0)
            return r;
        if (is_new) {
            if ((r = hour_add(st, c->n, s->ts, s->project_id, d, 1)) < 0)
                return r;
            cache_store(c, s, cur);
            stats->accepted++;
        } else {
            stats->duplicates++;
        }
        return 0;
    }
    if ((r = neighbour(st->st_prev, c->n, s, &prev)) < 0)
        return r;
    deltas(&prev, s->boot_id, cur, d);
    if ((r = insert_sample(st, c->n, s, d, &is_new)) < 0)
        return r;
    if (!is_new) {
        stats->duplicates++;
        return 0;
    }
    stats->accepted++;
    if ((r = hour_add(st, c->n, s->ts, s->project_id, d, 1)) < 0)
        return r;
    if ((r = neighbour(st->st_next, c->n, s, &next)) < 0)
        return r;
    if (next.found) {
        /* s slotted in before next: next's delta is now against s. */
        counter_row me = {.found = true};
        int64_t nd[NCOUNTERS];
        cl_strlcpy(me.boot_id, s->boot_id, sizeof me.boot_id);
        memcpy(me.v, cur, sizeof me.v);
        deltas(&me, next.boot_id, next.v, nd);
        if ((r = set_delta(st, c->n, &next, nd)) < 0 ||
            (r = hour_add(st, c->n, next.ts, next.project, next.d, -1)) < 0 ||
            (r = hour_add(st, c->n, next.ts, next.project, nd, 1)) < 0)
            return r;
        stats->late++;
    }
    return 0;
}

/* Store a batch in one transaction (see billing.h). */
int bill_ingest(bill_store *st, const cl_usage_sample *samples, size_t n, int64_t min_ts,
                bill_ingest_stats *stats, cl_error *err)
{
    if (!st || (!samples && n))
        return -EINVAL;
    return bill_ingest_many(st, &samples, &n, 1, min_ts, stats, err);
}

/* Several batches in one transaction (see billing.h): the group commit. */
int bill_ingest_many(bill_store *st, const cl_usage_sample *const *batches, const size_t *ns,
                     size_t nbatches, int64_t min_ts, bill_ingest_stats *stats, cl_error *err)
{
    bill_ingest_stats local = {0};
    int64_t earliest = INT64_MAX;
    size_t total = 0;
    int r;

    if (!st || (!batches && nbatches))
        return -EINVAL;
    for (size_t b = 0; b < nbatches; b++) {
        if (!batches[b] && ns[b])
            return -EINVAL;
        total += ns[b];
    }
    if (total == 0)
        return 0;
    if ((r = cl_db_begin_immediate(st->db)) < 0) {
        cl_error_set(err, CL_E_UNAVAILABLE, "billing database busy: %s",
                     cl_db_errmsg(st->db));
        return r;
    }
    for (size_t b = 0; b < nbatches; b++)
        for (size_t i = 0; i < ns[b]; i++) {
            const cl_usage_sample *s = &batches[b][i];
            size_t before = local.accepted;
            if (min_ts > 0 && s->ts < min_ts) {
                local.too_old++;
                continue;
            }
            if ((r = ingest_one(st, s, &local)) < 0)
                goto fail;
            if (local.accepted > before && s->ts < earliest)
                earliest = s->ts;
        }
    if ((r = hour_flush(st)) < 0)
        goto fail;
    if (earliest != INT64_MAX) {
        sqlite3_reset(st->st_dirty);
        cl_db_bind_int64(st->st_dirty, 1, earliest);
        if ((r = cl_db_step_done(st->st_dirty)) < 0)
            goto fail;
    }
    if ((r = cl_db_commit(st->db)) < 0)
        goto fail;
    if (stats) {
        stats->accepted += local.accepted;
        stats->duplicates += local.duplicates;
        stats->late += local.late;
        stats->too_old += local.too_old;
    }
    cl_debug(LOG_MOD, "ingested %zu new, %zu duplicate, %zu late, %zu too old",
             local.accepted, local.duplicates, local.late, local.too_old);
    return 0;
fail:
    cl_error_set(err, cl_error_from_errno(r), "cannot store usage samples: %s",
                 cl_db_errmsg(st->db));
    cl_db_rollback(st->db);
    cache_clear(st); /* it may describe rows that were just rolled back */
    hour_clear(st);
    return r;
}

/* Delete old samples, keeping what deltas and intervals still need (see billing.h). */
int bill_prune(bill_store *st, int64_t before_ms, size_t *out_deleted, cl_error *err)
{
    _cleanup_stmt_ sqlite3_stmt *q = NULL;
    int r;

    /* Gauges go; counters go unless they are their instance's newest (the base the next
     * delta is taken against); events stay: a running interval may have started years
     * ago, and there are few of them. */
    r = cl_db_prepare(st->db,
                      "DELETE FROM samples WHERE ts < ?1 AND (kind = 1 OR (kind = 0 AND"
                      " ts < (SELECT max(ts) FROM samples m WHERE m.inst = samples.inst"
                      " AND m.kind = 0)))",
                      &q);
    if (r < 0)
        return cl_error_set(err, CL_E_INTERNAL, "prune: %s", cl_db_errmsg(st->db)), r;
    cl_db_bind_int64(q, 1, before_ms);
    if ((r = cl_db_step_done(q)) < 0)
        return cl_error_set(err, CL_E_INTERNAL, "prune: %s", cl_db_errmsg(st->db)), r;
    if (out_deleted)
        *out_deleted = (size_t)cl_db_changes(st->db);
    return 0;
}

/* Read an integer state row. */
int bill_state_get(bill_store *st, const char *key, int64_t *out, bool *found)
{
    _cleanup_stmt_ sqlite3_stmt *q = NULL;
    int r = cl_db_prepare(st->db, "SELECT v FROM state WHERE k = ?1", &q);
    if (r < 0)
        return r;
    cl_db_bind_text(q, 1, key);
    r = sqlite3_step(q);
    *found = r == SQLITE_ROW;
    if (r == SQLITE_ROW)
        *out = sqlite3_column_int64(q, 0);
    else if (r != SQLITE_DONE)
        return cl_db_errno(r);
    return 0;
}

/* Open (create, migrate) the billing database and prepare the ingest statements. */
int bill_store_open(const char *path, bill_store **out, cl_error *err)
{
    bill_store *st = calloc(1, sizeof *st);
    int r;

    if (!st)
        return -ENOMEM;
    r = cl_db_open(path, migrations, CL_ARRAY_SIZE(migrations), DB_BUSY_MS, &st->db, err);
    if (r < 0) {
        free(st);
        return r;
    }
    /* The samples' indexes (random uuids among them) outgrow SQLite's 2 MB default
     * page cache quickly; ingest speed falls off a cliff when they do. */
    /* synchronous=FULL: an acknowledged sample is a promise (the agent forgets it), so
     * a commit must survive a power loss, not only a crash (deploy/OPERATIONS.md). */
    if ((r = cl_db_exec(st->db, "PRAGMA synchronous = FULL")) < 0 ||
        (r = cl_db_exec(st->db, "PRAGMA cache_size = -65536")) < 0 ||
        (r = cl_db_exec(st->db, "PRAGMA wal_autocheckpoint = 16384")) < 0 ||
        (r = cl_db_prepare(st->db, SQL_INSERT, &st->st_insert)) < 0 ||
        (r = cl_db_prepare(st->db, SQL_PREV, &st->st_prev)) < 0 ||
        (r = cl_db_prepare(st->db, SQL_NEXT, &st->st_next)) < 0 ||
        (r = cl_db_prepare(st->db, SQL_SET_DELTA, &st->st_set_delta)) < 0 ||
        (r = cl_db_prepare(st->db, SQL_DIRTY, &st->st_dirty)) < 0 ||
        (r = cl_db_prepare(st->db, SQL_LAST, &st->st_last)) < 0 ||
        (r = cl_db_prepare(st->db, SQL_INST_GET, &st->st_inst_get)) < 0 ||
        (r = cl_db_prepare(st->db, SQL_INST_ADD, &st->st_inst_add)) < 0 ||
        (r = cl_db_prepare(st->db, SQL_HOUR_ADD, &st->st_hour_add)) < 0) {
        cl_error_set(err, CL_E_INTERNAL, "billing database %s: %s", path,
                     cl_db_errmsg(st->db));
        bill_store_close(st);
        return r;
    }
    *out = st;
    return 0;
}

/* Finalize the statements and close; accepts NULL. */
void bill_store_close(bill_store *st)
{
    if (!st)
        return;
    sqlite3_finalize(st->st_insert);
    sqlite3_finalize(st->st_prev);
    sqlite3_finalize(st->st_next);
    sqlite3_finalize(st->st_set_delta);
    sqlite3_finalize(st->st_dirty);
    sqlite3_finalize(st->st_last);
    sqlite3_finalize(st->st_inst_get);
    sqlite3_finalize(st->st_inst_add);
    sqlite3_finalize(st->st_hour_add);
    cl_db_close(st->db);
    free(st->cache);
    free(st->hacc);
    free(st);
}
