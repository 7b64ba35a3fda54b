/*
 * rating.c - price plans, rating and the reports built on rated rows.
 *
 * What is charged (meters; "GiB" is 2^30 bytes, for RAM, disk and network alike):
 *
 *   meter          quantity (unit)        price (micro-units per ...)    from
 *   -------------  ---------------------  -----------------------------  ----------------
 *   flavor.<id>    running seconds (s)    flavor_hour: hour              events
 *   vcpu           vCPU x s (vcpu.s)      vcpu_hour: vCPU-hour           events
 *   ram            MiB x s (MiB.s)        ram_gb_hour: GiB-hour          events
 *   disk           GiB x s (GiB.s)        disk_gb_hour: GiB-hour         events (allocated)
 *   cpu            CPU time (ns)          cpu_core_hour: core-hour       counter deltas
 *   net_in/out     bytes (B)              net_gb_in/out: GiB             counter deltas
 *   disk_read/     bytes (B)              (no price yet: 0)              counter deltas
 *   disk_write
 *
 * Time: an instance's events, in order, drive a small state machine. A running interval
 * opens at started/resumed and closes at stopped/paused/deleted; resized and migrated
 * split it into segments (each with its flavor snapshot) without closing it. The disk is
 * allocated from created (or the first event) until deleted, running or not. Per-second
 * charging: event times are cut to whole seconds (floor of ts/1000) and every second is
 * charged to the hour that holds it. A running interval shorter than min_charge_s is
 * topped up to the minimum, at its last segment's flavor, in the hour where it closed;
 * an interval still open is charged up to opts->now_ms (never later) and gets no top-up
 * until it closes.
 *
 * Rounding (the one place where money is rounded): a rated row - one hour, one project,
 * one resource, one meter - holds the exact integer quantity; its cost is
 *     cost = floor((quantity * price + divisor / 2) / divisor)
 * in 128-bit arithmetic, i.e. rounded half up, once, at the row. Every total (usage,
 * costs, invoices, exports) is a plain sum of row costs and is never rounded again, so
 * an invoice equals the sum of its exported rows to the micro-unit.
 *
 * Idempotence: rating a window deletes the window's rated rows and writes them again
 * from the samples and the current plan, in one transaction. Re-rating after a price fix
 * or after late samples replaces; it never adds.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bill_int.h"
#include "json.h"
#include "log.h"

#define LOG_MOD "bill.rating"
#define HOUR_S 3600
#define MAX_PRICE INT64_C(1000000000000000) /* 1e9 currency units per unit: a typo guard */
#define META_PRICES "prices"
#define META_CONFIG_PLAN "config_plan"

/* ---- meters ---- */

typedef enum {
    MT_CPU, MT_NET_IN, MT_NET_OUT, MT_DISK_READ, MT_DISK_WRITE,
    MT_VCPU, MT_RAM, MT_DISK, MT_FLAVOR, MT_MAX
} meter_kind;

static const struct meter_def {
    const char *name, *unit, *price_unit;
    int64_t divisor; /* quantity units per price unit */
} meters[MT_MAX] = {
    [MT_CPU] = {"cpu", "ns", "core-hour", INT64_C(3600000000000)},
    [MT_NET_IN] = {"net_in", "B", "GiB", INT64_C(1) << 30},
    [MT_NET_OUT] = {"net_out", "B", "GiB", INT64_C(1) << 30},
    [MT_DISK_READ] = {"disk_read", "B", "GiB", INT64_C(1) << 30},
    [MT_DISK_WRITE] = {"disk_write", "B", "GiB", INT64_C(1) << 30},
    [MT_VCPU] = {"vcpu", "vcpu.s", "vcpu-hour", HOUR_S},
    [MT_RAM] = {"ram", "MiB.s", "GiB-hour", HOUR_S * 1024},
    [MT_DISK] = {"disk", "GiB.s", "GiB-hour", HOUR_S},
    [MT_FLAVOR] = {"flavor", "s", "hour", HOUR_S},
};

static int64_t flavor_price(const bill_prices *p, const char *flavor_id)
{
    for (size_t i = 0; i < p->nflavors; i++)
        if (strcmp(p->flavors[i].flavor_id, flavor_id) == 0)
            return p->flavors[i].hour;
    return 0;
}

static int64_t meter_price(const bill_prices *p, meter_kind m, const char *flavor_id)
{
    switch (m) {
    case MT_CPU: return p->cpu_core_hour;
    case MT_NET_IN: return p->net_gb_in;
    case MT_NET_OUT: return p->net_gb_out;
    case MT_VCPU: return p->vcpu_hour;
    case MT_RAM: return p->ram_gb_hour;
    case MT_DISK: return p->disk_gb_hour;
    case MT_FLAVOR: return flavor_price(p, flavor_id);
    default: return 0;
    }
}

/* The rounding rule of the header comment. Quantities and prices are never negative. */
static int64_t row_cost(int64_t quantity, int64_t price, int64_t divisor)
{
    unsigned __int128 n = (unsigned __int128)(uint64_t)quantity * (uint64_t)price;
    n = (n + (uint64_t)divisor / 2) / (uint64_t)divisor;
    return n > (unsigned __int128)INT64_MAX ? INT64_MAX : (int64_t)n;
}

/* ---- price plans ---- */

static int add_flavor_price(bill_prices *p, const char *id, int64_t hour, cl_error *err)
{
    if (!id[0] || strlen(id) >= CL_ID_MAX)
        return cl_error_set(err, CL_E_BAD_REQUEST, "flavor id '%.64s' is empty or too long",
                            id);
    if (hour < 0 || hour > MAX_PRICE)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "price of flavor '%s' must be between 0 and %" PRId64, id,
                            MAX_PRICE);
    for (size_t i = 0; i < p->nflavors; i++)
        if (strcmp(p->flavors[i].flavor_id, id) == 0) {
            p->flavors[i].hour = hour; /* last one wins, as for INI keys */
            return 0;
        }
    if (p->nflavors >= BILL_PRICE_FLAVORS_MAX)
        return cl_error_set(err, CL_E_BAD_REQUEST, "more than %d flavor prices",
                            BILL_PRICE_FLAVORS_MAX);
    cl_strlcpy(p->flavors[p->nflavors].flavor_id, id, CL_ID_MAX);
    p->flavors[p->nflavors++].hour = hour;
    return 0;
}

static int check_currency(const char *c, cl_error *err)
{
    size_t n = strlen(c);
    if (n < 1 || n >= BILL_CURRENCY_MAX)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "currency must be 1 to %d characters (ISO 4217: EUR, USD)",
                            BILL_CURRENCY_MAX - 1);
    for (size_t i = 0; i < n; i++)
        if (!isupper((unsigned char)c[i]))
            return cl_error_set(err, CL_E_BAD_REQUEST,
                                "currency '%s' must be upper-case letters (EUR, USD)", c);
    return 0;
}

/* [prices] flavor_hour is "id=micro, id=micro" (commas or blanks between entries). */
int bill_prices_from_cfg(const bill_cfg *cfg, bill_prices *out, cl_error *err)
{
    _cleanup_free_ bill_prices *p = calloc(1, sizeof *p);
    _cleanup_free_ char *list = NULL;
    char *save = NULL;
    int r;

    if (!p)
        return -ENOMEM;
    if ((r = check_currency(cfg->currency ? cfg->currency : "", err)) < 0)
        return r;
    cl_strlcpy(p->currency, cfg->currency, sizeof p->currency);
    p->vcpu_hour = cfg->vcpu_hour;
    p->ram_gb_hour = cfg->ram_gb_hour;
    p->disk_gb_hour = cfg->disk_gb_hour;
    p->cpu_core_hour = cfg->cpu_core_hour;
    p->net_gb_in = cfg->net_gb_in;
    p->net_gb_out = cfg->net_gb_out;
    list = strdup(cfg->flavor_hour ? cfg->flavor_hour : "");
    if (!list)
        return -ENOMEM;
    for (char *tok = strtok_r(list, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
        char *eq = strchr(tok, '=');
        int64_t v;
        if (!eq || cl_parse_int64(eq + 1, &v) < 0)
            return cl_error_set(err, CL_E_BAD_REQUEST,
                                "[prices] flavor_hour: '%s' is not <flavor id>=<micro-units>",
                                tok);
        *eq = '\0';
        if ((r = add_flavor_price(p, tok, v, err)) < 0)
            return r;
    }
    *out = *p;
    return 0;
}

static int get_price(json_object *obj, const char *key, int64_t *out, cl_error *err)
{
    return cl_json_get_int_range(obj, key, false, 0, MAX_PRICE, out, err);
}

/* Parse the JSON plan; absent prices are 0, an absent currency is EUR. */
int bill_prices_from_json(json_object *obj, bill_prices *out, cl_error *err)
{
    _cleanup_free_ bill_prices *p = calloc(1, sizeof *p);
    const char *cur = "EUR";
    json_object *fl = NULL;
    int r;

    if (!p)
        return -ENOMEM;
    if (!json_object_is_type(obj, json_type_object))
        return cl_error_set(err, CL_E_BAD_REQUEST, "a price plan must be a JSON object");
    if ((r = cl_json_get_str(obj, "currency", false, &cur, err)) < 0 ||
        (r = check_currency(cur, err)) < 0)
        return r;
    cl_strlcpy(p->currency, cur, sizeof p->currency);
    if ((r = get_price(obj, "vcpu_hour", &p->vcpu_hour, err)) < 0 ||
        (r = get_price(obj, "ram_gb_hour", &p->ram_gb_hour, err)) < 0 ||
        (r = get_price(obj, "disk_gb_hour", &p->disk_gb_hour, err)) < 0 ||
        (r = get_price(obj, "cpu_core_hour", &p->cpu_core_hour, err)) < 0 ||
        (r = get_price(obj, "net_gb_in", &p->net_gb_in, err)) < 0 ||
        (r = get_price(obj, "net_gb_out", &p->net_gb_out, err)) < 0 ||
        (r = cl_json_get_object(obj, "flavors", false, &fl, err)) < 0)
        return r;
    if (fl) {
        json_object_object_foreach(fl, key, val)
        {
            int64_t v;
            if (!json_object_is_type(val, json_type_int) ||
                (v = json_object_get_int64(val)) < 0)
                return cl_error_set(err, CL_E_BAD_REQUEST,
                                    "Invalid input for field 'flavors.%.64s': expected a "
                                    "non-negative integer of micro-units", key);
            if ((r = add_flavor_price(p, key, v, err)) < 0)
                return r;
        }
    }
    *out = *p;
    return 0;
}

/* The JSON plan (new reference, caller owns) or NULL. */
json_object *bill_prices_to_json(const bill_prices *p)
{
    _cleanup_json_ json_object *o = json_object_new_object();
    json_object *fl = json_object_new_object();
    if (!o || !fl) {
        json_object_put(fl);
        return NULL;
    }
    json_object_object_add(o, "currency", json_object_new_string(p->currency));
    json_object_object_add(o, "vcpu_hour", json_object_new_int64(p->vcpu_hour));
    json_object_object_add(o, "ram_gb_hour", json_object_new_int64(p->ram_gb_hour));
    json_object_object_add(o, "disk_gb_hour", json_object_new_int64(p->disk_gb_hour));
    json_object_object_add(o, "cpu_core_hour", json_object_new_int64(p->cpu_core_hour));
    json_object_object_add(o, "net_gb_in", json_object_new_int64(p->net_gb_in));
    json_object_object_add(o, "net_gb_out", json_object_new_int64(p->net_gb_out));
    for (size_t i = 0; i < p->nflavors; i++)
        json_object_object_add(fl, p->flavors[i].flavor_id,
                               json_object_new_int64(p->flavors[i].hour));
    json_object_object_add(o, "flavors", fl);
    return TAKE_PTR(o);
}

static int meta_get(bill_store *st, const char *key, char **out)
{
    _cleanup_stmt_ sqlite3_stmt *q = NULL;
    int r = cl_db_prepare(st->db, "SELECT v FROM meta WHERE k = ?1", &q);
    if (r < 0)
        return r;
    cl_db_bind_text(q, 1, key);
    r = sqlite3_step(q);
    if (r == SQLITE_DONE) {
        *out = NULL;
        return 0;
    }
    if (r != SQLITE_ROW)
        return cl_db_errno(r);
    *out = strdup((const char *)sqlite3_column_text(q, 0));
    return *out ? 0 : -ENOMEM;
}

static int meta_set(bill_store *st, const char *key, const char *val)
{
    _cleanup_stmt_ sqlite3_stmt *q = NULL;
    int r = cl_db_prepare(st->db, "INSERT OR REPLACE INTO meta(k, v) VALUES(?1, ?2)", &q);
    if (r < 0)
        return r;
    cl_db_bind_text(q, 1, key);
    cl_db_bind_text(q, 2, val);
    return cl_db_step_done(q);
}

/* The current plan; an empty EUR plan when none was ever stored. */
int bill_prices_get(bill_store *st, bill_prices *out, cl_error *err)
{
    _cleanup_free_ char *text = NULL;
    _cleanup_json_ json_object *obj = NULL;
    int r = meta_get(st, META_PRICES, &text);
    if (r < 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot read prices: %s",
                            cl_db_errmsg(st->db)), r;
    if (!text) {
        memset(out, 0, sizeof *out);
        cl_strlcpy(out->currency, "EUR", sizeof out->currency);
        return 0;
    }
    if ((r = cl_json_parse_object(text, strlen(text), &obj, err)) < 0)
        return r;
    return bill_prices_from_json(obj, out, err);
}

/* Serialise a plan into a malloc'd string. */
static char *prices_text(const bill_prices *p)
{
    _cleanup_json_ json_object *o = bill_prices_to_json(p);
    return o ? strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN)) : NULL;
}

int bill_prices_put(bill_store *st, const bill_prices *p, cl_error *err)
{
    _cleanup_free_ char *text = prices_text(p);
    int r;
    if (!text)
        return -ENOMEM;
    if ((r = meta_set(st, META_PRICES, text)) < 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot store prices: %s",
                            cl_db_errmsg(st->db)), r;
    return 0;
}

int bill_prices_seed(bill_store *st, const bill_prices *cfg_plan, bool *out_applied,
                     cl_error *err)
{
    _cleanup_free_ char *text = prices_text(cfg_plan);
    _cleanup_free_ char *last = NULL;
    int r;

    *out_applied = false;
    if (!text)
        return -ENOMEM;
    if ((r = meta_get(st, META_CONFIG_PLAN, &last)) < 0)
        goto fail;
    if (last && strcmp(last, text) == 0)
        return 0;
    if ((r = cl_db_begin_immediate(st->db)) < 0 || (r = meta_set(st, META_PRICES, text)) < 0 ||
        (r = meta_set(st, META_CONFIG_PLAN, text)) < 0 || (r = cl_db_commit(st->db)) < 0) {
        cl_db_rollback(st->db);
        goto fail;
    }
    *out_applied = true;
    return 0;
fail:
    return cl_error_set(err, CL_E_INTERNAL, "cannot seed prices: %s", cl_db_errmsg(st->db)), r;
}

/* ---- rating ---- */

typedef struct snap {
    char flavor[CL_ID_MAX];
    int64_t vcpus, ram_mb, disk_gb;
} snap;

typedef struct acc_entry {
    int64_t hour_s;
    meter_kind meter;
    char flavor[CL_ID_MAX];
    int64_t qty;
} acc_entry;

typedef struct rate_ctx {
    bill_store *st;
    const bill_prices *plan;
    int64_t ws_s, we_s, now_s, min_charge_s;
    sqlite3_stmt *ins;
    size_t rows;
    /* The instance being walked and what it accumulated (flushed per instance). */
    char inst[CL_UUID_LEN];
    char project[CL_ID_MAX];
    acc_entry *acc;
    size_t nacc, capacc;
} rate_ctx;

static int insert_row(rate_ctx *rc, int64_t hour_s, const char *project, const char *resource,
                      meter_kind m, const char *flavor, int64_t qty)
{
    char name[16 + CL_ID_MAX];
    int64_t price = meter_price(rc->plan, m, flavor);
    sqlite3_stmt *q = rc->ins;

    if (qty <= 0)
        return 0;
    if (m == MT_FLAVOR)
        snprintf(name, sizeof name, "flavor.%s", flavor);
    else
        cl_strlcpy(name, meters[m].name, sizeof name);
    sqlite3_reset(q);
    cl_db_bind_int64(q, 1, hour_s * 1000);
    cl_db_bind_text(q, 2, project);
    cl_db_bind_text(q, 3, resource);
    cl_db_bind_text(q, 4, name);
    cl_db_bind_int64(q, 5, qty);
    cl_db_bind_text(q, 6, meters[m].unit);
    cl_db_bind_int64(q, 7, price);
    cl_db_bind_text(q, 8, meters[m].price_unit);
    cl_db_bind_int64(q, 9, row_cost(qty, price, meters[m].divisor));
    cl_db_bind_text(q, 10, rc->plan->currency);
    rc->rows++;
    return cl_db_step_done(q);
}

/* Counters: the window's deltas summed per hour, project and instance, as the ingest
 * transaction keeps them in the ctr_hour rollup (meter.c): one row per instance-hour
 * rather than every sample, one range of its primary key (hour, inst, project). The
 * rows come sorted as the rated table's key (period, project, resource, meter), meters
 * in name order too, so the rated rows are appended rather than inserted all over a
 * b-tree larger than the page cache (3x faster on 3 M samples). */
static int rate_counters(rate_ctx *rc)
{
    /* The meters by name, each with its column in the query below. */
    static const struct { meter_kind m; int col; } order[] = {
        {MT_CPU, 3}, {MT_DISK_READ, 6}, {MT_DISK_WRITE, 7}, {MT_NET_IN, 4}, {MT_NET_OUT, 5},
    };
    _cleanup_stmt_ sqlite3_stmt *q = NULL;
    int r = cl_db_prepare(rc->st->db,
                          "SELECT c.hour, i.uuid, c.project_id, c.d_cpu, c.d_rx, c.d_tx,"
                          " c.d_rd, c.d_wr FROM ctr_hour c JOIN instances i ON i.n = c.inst"
                          " WHERE c.hour >= ?1 AND c.hour < ?2"
                          " ORDER BY c.hour, c.project_id, i.uuid",
                          &q);
    if (r < 0)
        return r;
    cl_db_bind_int64(q, 1, rc->ws_s / HOUR_S);
    cl_db_bind_int64(q, 2, rc->we_s / HOUR_S);
    while ((r = sqlite3_step(q)) == SQLITE_ROW) {
        int64_t hour_s = sqlite3_column_int64(q, 0) * HOUR_S;
        const char *inst = (const char *)sqlite3_column_text(q, 1);
        const char *proj = (const char *)sqlite3_column_text(q, 2);
        for (size_t i = 0; i < CL_ARRAY_SIZE(order); i++) {
            int rr = insert_row(rc, hour_s, proj ? proj : "", inst ? inst : "", order[i].m,
                                "", sqlite3_column_int64(q, order[i].col));
            if (rr < 0)
                return rr;
        }
    }
    return r == SQLITE_DONE ? 0 : cl_db_errno(r);
}

static int acc_add(rate_ctx *rc, int64_t hour_s, meter_kind m, const char *flavor, int64_t qty)
{
    if (qty <= 0)
        return 0;
    if (rc->nacc == rc->capacc) {
        size_t cap = rc->capacc ? rc->capacc * 2 : 64;
        acc_entry *n = realloc(rc->acc, cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        rc->acc = n;
        rc->capacc = cap;
    }
    acc_entry *e = &rc->acc[rc->nacc++];
    e->hour_s = hour_s;
    e->meter = m;
    cl_strlcpy(e->flavor, flavor, sizeof e->flavor);
    e->qty = qty;
    return 0;
}

/* Charge the running seconds of one hour: flavor, vCPUs and RAM. */
static int add_running(rate_ctx *rc, int64_t hour_s, int64_t secs, const snap *sn)
{
    int r;
    if ((r = acc_add(rc, hour_s, MT_FLAVOR, sn->flavor, secs)) < 0 ||
        (r = acc_add(rc, hour_s, MT_VCPU, "", secs * sn->vcpus)) < 0 ||
        (r = acc_add(rc, hour_s, MT_RAM, "", secs * sn->ram_mb)) < 0)
        return r;
    return 0;
}

/* Spread [a, b) seconds over the hours of the window (and not past now). */
static int spread(rate_ctx *rc, int64_t a, int64_t b, const snap *sn, bool running)
{
    if (a < rc->ws_s)
        a = rc->ws_s;
    if (b > rc->we_s)
        b = rc->we_s;
    if (b > rc->now_s)
        b = rc->now_s;
    while (a < b) {
        int64_t h = a - a % HOUR_S, e = h + HOUR_S < b ? h + HOUR_S : b;
        int r = running ? add_running(rc, h, e - a, sn)
                        : acc_add(rc, h, MT_DISK, "", (e - a) * sn->disk_gb);
        if (r < 0)
            return r;
        a = e;
    }
    return 0;
}

static int acc_cmp(const void *pa, const void *pb)
{
    const acc_entry *a = pa, *b = pb;
    if (a->hour_s != b->hour_s)
        return a->hour_s < b->hour_s ? -1 : 1;
    if (a->meter != b->meter)
        return a->meter < b->meter ? -1 : 1;
    return strcmp(a->flavor, b->flavor);
}

/* Write the walked instance's rows: entries of the same (hour, meter, flavor) merge. */
static int flush_instance(rate_ctx *rc)
{
    if (rc->nacc == 0)
        return 0;
    qsort(rc->acc, rc->nacc, sizeof *rc->acc, acc_cmp);
    for (size_t i = 0; i < rc->nacc;) {
        size_t j = i + 1;
        int64_t qty = rc->acc[i].qty;
        while (j < rc->nacc && acc_cmp(&rc->acc[i], &rc->acc[j]) == 0)
            qty += rc->acc[j++].qty;
        int r = insert_row(rc, rc->acc[i].hour_s, rc->project, rc->inst, rc->acc[i].meter,
                           rc->acc[i].flavor, qty);
        if (r < 0)
            return r;
        i = j;
    }
    rc->nacc = 0;
    return 0;
}

/* The life-cycle state machine of one instance (see the header comment). */
typedef struct life {
    bool alloc, running, deleted;
    int64_t alloc_start, seg_start, run_total;
    snap sn;
} life;

/* Close the running interval at t: its last segment, then the minimum-charge top-up in
 * the hour that holds t (when that hour is in the window). */
static int close_running(rate_ctx *rc, life *lf, int64_t t)
{
    int r = spread(rc, lf->seg_start, t, &lf->sn, true);
    if (r < 0)
        return r;
    lf->run_total += t - lf->seg_start;
    lf->running = false;
    if (lf->run_total < rc->min_charge_s && t >= rc->ws_s && t < rc->we_s)
        return add_running(rc, t - t % HOUR_S, rc->min_charge_s - lf->run_total, &lf->sn);
    return 0;
}

static int apply_event(rate_ctx *rc, life *lf, cl_usage_event ev, int64_t t, const snap *sn)
{
    int r;
    if (lf->deleted)
        return 0; /* nothing comes back from deleted */
    switch (ev) {
    case CL_USAGE_EV_CREATED:
        if (!lf->alloc) {
            lf->alloc = true;
            lf->alloc_start = t;
            lf->sn = *sn;
        }
        return 0;
    case CL_USAGE_EV_STARTED:
    case CL_USAGE_EV_RESUMED:
        if (!lf->alloc) {
            lf->alloc = true;
            lf->alloc_start = t;
        }
        if (!lf->running) { /* a repeated "started" changes nothing */
            lf->running = true;
            lf->seg_start = t;
            lf->run_total = 0;
            lf->sn = *sn;
        }
        return 0;
    case CL_USAGE_EV_RESIZED:
    case CL_USAGE_EV_MIGRATED:
        if (lf->running) {
            if ((r = spread(rc, lf->seg_start, t, &lf->sn, true)) < 0)
                return r;
            lf->run_total += t - lf->seg_start;
            lf->seg_start = t;
        }
        if (lf->alloc) {
            if ((r = spread(rc, lf->alloc_start, t, &lf->sn, false)) < 0)
                return r;
            lf->alloc_start = t;
        }
        lf->sn = *sn;
        return 0;
    case CL_USAGE_EV_PAUSED:
    case CL_USAGE_EV_STOPPED:
        return lf->running ? close_running(rc, lf, t) : 0;
    case CL_USAGE_EV_DELETED:
        if (lf->running && (r = close_running(rc, lf, t)) < 0)
            return r;
        if (lf->alloc && (r = spread(rc, lf->alloc_start, t, &lf->sn, false)) < 0)
            return r;
        lf->alloc = false;
        lf->deleted = true;
        return 0;
    default:
        return 0;
    }
}

/* End of an instance's events: what is still open runs to the window's end (or now). */
static int finish_instance(rate_ctx *rc, life *lf)
{
    int r;
    if (!rc->inst[0])
        return 0;
    if (lf->running && (r = spread(rc, lf->seg_start, INT64_MAX, &lf->sn, true)) < 0)
        return r;
    if (lf->alloc && (r = spread(rc, lf->alloc_start, INT64_MAX, &lf->sn, false)) < 0)
        return r;
    return flush_instance(rc);
}

/* Time-based charges: walk the events of every instance alive at some point before the
 * window's end, skipping those deleted before it began. */
static int rate_intervals(rate_ctx *rc)
{
    _cleanup_stmt_ sqlite3_stmt *q = NULL;
    life lf;
    int r = cl_db_prepare(
        rc->st->db,
        "SELECT i.uuid, e.project_id, e.ts, e.event, e.flavor_id, e.vcpus, e.ram_mb,"
        " e.disk_gb FROM samples e JOIN instances i ON i.n = e.inst"
        " WHERE e.kind = 2 AND e.ts < ?2 AND NOT EXISTS (SELECT 1 FROM samples d"
        "  WHERE d.inst = e.inst AND d.kind = 2 AND d.event = 8 AND d.ts < ?1)"
        " ORDER BY e.inst, e.ts, e.event, e.id",
        &q);
    if (r < 0)
        return r;
    cl_db_bind_int64(q, 1, rc->ws_s * 1000);
    cl_db_bind_int64(q, 2, rc->we_s * 1000);
    rc->inst[0] = '\0';
    memset(&lf, 0, sizeof lf);
    while ((r = sqlite3_step(q)) == SQLITE_ROW) {
        const char *inst = (const char *)sqlite3_column_text(q, 0);
        snap sn;
        if (strcmp(inst, rc->inst) != 0) {
            if ((r = finish_instance(rc, &lf)) < 0)
                return r;
            memset(&lf, 0, sizeof lf);
            cl_strlcpy(rc->inst, inst, sizeof rc->inst);
        }
        cl_db_column_text(q, 1, rc->project, sizeof rc->project);
        cl_db_column_text(q, 4, sn.flavor, sizeof sn.flavor);
        sn.vcpus = sqlite3_column_int64(q, 5);
        sn.ram_mb = sqlite3_column_int64(q, 6);
        sn.disk_gb = sqlite3_column_int64(q, 7);
        if ((r = apply_event(rc, &lf, (cl_usage_event)sqlite3_column_int(q, 3),
                             sqlite3_column_int64(q, 2) / 1000, &sn)) < 0)
            return r;
    }
    if (r != SQLITE_DONE)
        return cl_db_errno(r);
    return finish_instance(rc, &lf);
}

static int64_t floor_hour_ms(int64_t ms)
{
    return ms - ms % BILL_HOUR_MS;
}

/* The rating transaction; with pending, it also moves the pending marks. */
static int rate_window(bill_store *st, int64_t start_ms, int64_t end_ms,
                       const bill_rate_opts *o, bool pending, size_t *out_rows, cl_error *err)
{
    _cleanup_stmt_ sqlite3_stmt *del = NULL;
    _cleanup_stmt_ sqlite3_stmt *ins = NULL;
    _cleanup_free_ bill_prices *plan = calloc(1, sizeof *plan);
    rate_ctx rc;
    int64_t ws, we;
    int r;

    if (!plan)
        return -ENOMEM;
    if (start_ms < 0 || end_ms <= start_ms || !o || o->now_ms < 0 || o->min_charge_s < 0)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "rating window: start must be >= 0 and before end");
    ws = floor_hour_ms(start_ms);
    we = floor_hour_ms(end_ms - 1) + BILL_HOUR_MS;
    if ((we - ws) / BILL_HOUR_MS > BILL_MAX_RATE_HOURS)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "rating window of %" PRId64 " hours is longer than %d hours;"
                            " rate it in parts", (we - ws) / BILL_HOUR_MS, BILL_MAX_RATE_HOURS);
    if ((r = bill_prices_get(st, plan, err)) < 0)
        return r;

    memset(&rc, 0, sizeof rc);
    rc.st = st;
    rc.plan = plan;
    rc.ws_s = ws / 1000;
    rc.we_s = we / 1000;
    rc.now_s = o->now_ms / 1000;
    rc.min_charge_s = o->min_charge_s;

    if ((r = cl_db_begin_immediate(st->db)) < 0)
        return cl_error_set(err, CL_E_UNAVAILABLE, "billing database busy"), r;
    if ((r = cl_db_prepare(st->db, "DELETE FROM rated WHERE period >= ?1 AND period < ?2",
                           &del)) < 0 ||
        (r = cl_db_prepare(st->db,
                           "INSERT INTO rated(period, project_id, resource, meter, quantity,"
                           " unit, price, price_unit, cost, currency)"
                           " VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)",
                           &ins)) < 0)
        goto fail;
    rc.ins = ins;
    cl_db_bind_int64(del, 1, ws);
    cl_db_bind_int64(del, 2, we);
    if ((r = cl_db_step_done(del)) < 0 || (r = rate_counters(&rc)) < 0 ||
        (r = rate_intervals(&rc)) < 0)
        goto fail;
    if (pending) {
        char sql[160];
        snprintf(sql, sizeof sql,
                 "DELETE FROM state WHERE k = '" BILL_STATE_DIRTY_FROM "';"
                 "INSERT OR REPLACE INTO state(k, v) VALUES('" BILL_STATE_RATED_THROUGH
                 "', %" PRId64 ")",
                 o->now_ms);
        if ((r = cl_db_exec(st->db, sql)) < 0)
            goto fail;
    }
    if ((r = cl_db_commit(st->db)) < 0)
        goto fail;
    free(rc.acc);
    if (out_rows)
        *out_rows = rc.rows;
    cl_debug(LOG_MOD, "rated [%" PRId64 ", %" PRId64 "): %zu rows", ws, we, rc.rows);
    return 0;
fail:
    free(rc.acc);
    cl_error_set(err, cl_error_from_errno(r), "rating failed: %s", cl_db_errmsg(st->db));
    cl_db_rollback(st->db);
    return r;
}

int bill_rate(bill_store *st, int64_t start_ms, int64_t end_ms, const bill_rate_opts *opts,
              size_t *out_rows, cl_error *err)
{
    return rate_window(st, start_ms, end_ms, opts, false, out_rows, err);
}

int bill_rate_pending(bill_store *st, const bill_rate_opts *opts, size_t *out_rows,
                      cl_error *err)
{
    int64_t dirty = 0, through = 0, start, end;
    bool has_dirty = false, has_through = false;
    int r;

    if (out_rows)
        *out_rows = 0;
    if ((r = bill_state_get(st, BILL_STATE_DIRTY_FROM, &dirty, &has_dirty)) < 0 ||
        (r = bill_state_get(st, BILL_STATE_RATED_THROUGH, &through, &has_through)) < 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot read rating state: %s",
                            cl_db_errmsg(st->db)), r;
    if (!has_dirty && !has_through)
        return 0;
    start = has_dirty && (!has_through || dirty < through) ? dirty : through;
    end = opts->now_ms + 1;
    if (end <= start)
        end = start + 1;
    /* A very long outage is rated in the largest pieces one call accepts. */
    if ((end - start) / BILL_HOUR_MS >= BILL_MAX_RATE_HOURS)
        start = floor_hour_ms(end) - (int64_t)(BILL_MAX_RATE_HOURS - 1) * BILL_HOUR_MS;
    return rate_window(st, start, end, opts, true, out_rows, err);
}

/* ---- reports ---- */

void bill_format_micro(int64_t micro, char *out, size_t outlen)
{
    uint64_t a = micro < 0 ? (uint64_t)0 - (uint64_t)micro : (uint64_t)micro;
    snprintf(out, outlen, "%s%" PRIu64 ".%06" PRIu64, micro < 0 ? "-" : "", a / 1000000,
             a % 1000000);
}

/* Days from the civil date, so parsing never depends on the TZ environment. */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
    /* Howard Hinnant's days_from_civil algorithm (public domain description). */
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int64_t month_start_ms(int year, int month)
{
    return days_from_civil(year, month, 1) * 86400 * 1000;
}

int bill_parse_time(const char *s, int64_t *out)
{
    int y, mo, d, h = 0, mi = 0, se = 0, n = 0;
    if (!s || !*s)
        return -EINVAL;
    if (isdigit((unsigned char)s[0]) && strspn(s, "0123456789") == strlen(s))
        return cl_parse_int64(s, out);
    if (sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &d, &n) != 3 || n != 10)
        return -EINVAL;
    if (s[n] == 'T' || s[n] == ' ') {
        int m = 0;
        if (sscanf(s + n + 1, "%2d:%2d:%2d%n", &h, &mi, &se, &m) != 3 || m != 8)
            return -EINVAL;
        n += 1 + m;
        if (s[n] == 'Z')
            n++;
    }
    if (s[n] != '\0' || y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 ||
        mi > 59 || se > 60)
        return -EINVAL;
    *out = ((days_from_civil(y, mo, d) * 86400) + h * 3600 + mi * 60 + se) * 1000;
    return 0;
}

static json_object *time_json(int64_t ms)
{
    char buf[40];
    cl_time_iso8601(ms, true, buf, sizeof buf);
    return json_object_new_string(buf);
}

static json_object *money_json(int64_t micro)
{
    char buf[32];
    bill_format_micro(micro, buf, sizeof buf);
    return json_object_new_string(buf);
}

/* Statements over rated rows share this filter: ?1 project (NULL = all), ?2/?3 window. */
#define RATED_FILTER " WHERE (?1 IS NULL OR project_id = ?1) AND period >= ?2 AND period < ?3"

static int prepare_rated(bill_store *st, const char *sql, const char *project, int64_t start,
                         int64_t end, sqlite3_stmt **out, cl_error *err)
{
    int r = cl_db_prepare(st->db, sql, out);
    if (r < 0)
        return cl_error_set(err, CL_E_INTERNAL, "query failed: %s", cl_db_errmsg(st->db)), r;
    cl_db_bind_text(*out, 1, project);
    cl_db_bind_int64(*out, 2, start);
    cl_db_bind_int64(*out, 3, end);
    return 0;
}

static int step_err(bill_store *st, int rc, cl_error *err)
{
    if (rc == SQLITE_DONE)
        return 0;
    return cl_error_set(err, CL_E_INTERNAL, "query failed: %s", cl_db_errmsg(st->db)),
           cl_db_errno(rc);
}

int bill_total_cost(bill_store *st, const char *project, int64_t start_ms, int64_t end_ms,
                    int64_t *out, cl_error *err)
{
    _cleanup_stmt_ sqlite3_stmt *q = NULL;
    int r = prepare_rated(st, "SELECT total(cost), sum(cost) FROM rated" RATED_FILTER, project,
                          start_ms, end_ms, &q, err);
    if (r < 0)
        return r;
    if ((r = sqlite3_step(q)) != SQLITE_ROW)
        return step_err(st, r, err);
    *out = sqlite3_column_int64(q, 1);
    return 0;
}

int bill_total_quantity(bill_store *st, const char *project, const char *resource,
                        const char *meter, int64_t start_ms, int64_t end_ms, int64_t *out,
                        cl_error *err)
{
    _cleanup_stmt_ sqlite3_stmt *q = NULL;
    int r = prepare_rated(st,
                          "SELECT sum(quantity) FROM rated" RATED_FILTER
                          " AND (?4 IS NULL OR resource = ?4) AND meter = ?5",
                          project, start_ms, end_ms, &q, err);
    if (r < 0)
        return r;
    cl_db_bind_text(q, 4, resource);
    cl_db_bind_text(q, 5, meter);
    if ((r = sqlite3_step(q)) != SQLITE_ROW)
        return step_err(st, r, err);
    *out = sqlite3_column_int64(q, 0);
    return 0;
}

int bill_usage_json(bill_store *st, const char *project, int64_t start_ms, int64_t end_ms,
                    json_object **out, cl_error *err)
{
    _cleanup_stmt_ sqlite3_stmt *q = NULL;
    _cleanup_json_ json_object *o = json_object_new_object();
    json_object *arr = json_object_new_array();
    int r;

    if (!o || !arr) {
        json_object_put(arr);
        return -ENOMEM;
    }
    json_object_object_add(o, "usage", arr);
    json_object_object_add(o, "project_id", cl_json_str_or_null(project));
    json_object_object_add(o, "start", time_json(start_ms));
    json_object_object_add(o, "end", time_json(end_ms));
    r = prepare_rated(st,
                      "SELECT project_id, resource, meter, unit, sum(quantity) FROM rated"
                      RATED_FILTER " GROUP BY project_id, resource, meter, unit"
                      " ORDER BY project_id, resource, meter",
                      project, start_ms, end_ms, &q, err);
    if (r < 0)
        return r;
    while ((r = sqlite3_step(q)) == SQLITE_ROW) {
        json_object *row = json_object_new_object();
        if (!row)
            return -ENOMEM;
        for (int c = 0; c < 4; c++) {
            static const char *const names[] = {"project_id", "resource", "meter", "unit"};
            json_object_object_add(row, names[c], json_object_new_string(
                                                      (const char *)sqlite3_column_text(q, c)));
        }
        json_object_object_add(row, "quantity", json_object_new_int64(sqlite3_column_int64(q, 4)));
        json_object_array_add(arr, row);
    }
    if ((r = step_err(st, r, err)) < 0)
        return r;
    *out = TAKE_PTR(o);
    return 0;
}

int bill_costs_json(bill_store *st, const char *project, int64_t start_ms, int64_t end_ms,
                    json_object **out, cl_error *err)
{
    _cleanup_stmt_ sqlite3_stmt *q = NULL;
    _cleanup_json_ json_object *o = json_object_new_object();
    json_object *arr = json_object_new_array(), *cur = NULL, *by = NULL;
    char last[CL_ID_MAX] = "";
    int64_t total = 0;
    int r;

    if (!o || !arr) {
        json_object_put(arr);
        return -ENOMEM;
    }
    json_object_object_add(o, "costs", arr);
    json_object_object_add(o, "start", time_json(start_ms));
    json_object_object_add(o, "end", time_json(end_ms));
    r = prepare_rated(st,
                      "SELECT project_id, meter, sum(cost), max(currency) FROM rated"
                      RATED_FILTER " GROUP BY project_id, meter ORDER BY project_id, meter",
                      project, start_ms, end_ms, &q, err);
    if (r < 0)
        return r;
    while ((r = sqlite3_step(q)) == SQLITE_ROW) {
        const char *proj = (const char *)sqlite3_column_text(q, 0);
        int64_t cost = sqlite3_column_int64(q, 2);
        if (!cur || strcmp(proj, last) != 0) {
            if (cur) {
                json_object_object_add(cur, "total", json_object_new_int64(total));
                json_object_object_add(cur, "total_decimal", money_json(total));
            }
            cur = json_object_new_object();
            by = json_object_new_object();
            if (!cur || !by) {
                json_object_put(cur);
                json_object_put(by);
                return -ENOMEM;
            }
            json_object_array_add(arr, cur);
            json_object_object_add(cur, "project_id", json_object_new_string(proj));
            json_object_object_add(cur, "currency", json_object_new_string(
                                                        (const char *)sqlite3_column_text(q, 3)));
            json_object_object_add(cur, "by_meter", by);
            cl_strlcpy(last, proj, sizeof last);
            total = 0;
        }
        json_object_object_add(by, (const char *)sqlite3_column_text(q, 1),
                               json_object_new_int64(cost));
        total += cost;
    }
    if ((r = step_err(st, r, err)) < 0)
        return r;
    if (cur) {
        json_object_object_add(cur, "total", json_object_new_int64(total));
        json_object_object_add(cur, "total_decimal", money_json(total));
    }
    *out = TAKE_PTR(o);
    return 0;
}

static void close_invoice(json_object *inv, int64_t total)
{
    if (!inv)
        return;
    json_object_object_add(inv, "total", json_object_new_int64(total));
    json_object_object_add(inv, "total_decimal", money_json(total));
}

int bill_invoices_json(bill_store *st, const char *project, int year, int month,
                       json_object **out, cl_error *err)
{
    _cleanup_stmt_ sqlite3_stmt *q = NULL;
    _cleanup_json_ json_object *o = json_object_new_object();
    json_object *arr = json_object_new_array(), *inv = NULL, *lines = NULL;
    char last[CL_ID_MAX] = "", mon[16];
    int64_t start, end, total = 0;
    int r;

    if (!o || !arr) {
        json_object_put(arr);
        return -ENOMEM;
    }
    json_object_object_add(o, "invoices", arr);
    if (year < 1970 || year > 9999 || month < 1 || month > 12)
        return cl_error_set(err, CL_E_BAD_REQUEST, "month must be YYYY-MM (1970-01 or later)");
    start = month_start_ms(year, month);
    end = month == 12 ? month_start_ms(year + 1, 1) : month_start_ms(year, month + 1);
    snprintf(mon, sizeof mon, "%04d-%02d", year, month);
    r = prepare_rated(st,
                      "SELECT project_id, resource, meter, unit, sum(quantity), min(price),"
                      " max(price), price_unit, sum(cost), max(currency) FROM rated"
                      RATED_FILTER " GROUP BY project_id, resource, meter"
                      " ORDER BY project_id, resource, meter",
                      project, start, end, &q, err);
    if (r < 0)
        return r;
    while ((r = sqlite3_step(q)) == SQLITE_ROW) {
        const char *proj = (const char *)sqlite3_column_text(q, 0);
        int64_t pmin = sqlite3_column_int64(q, 5), pmax = sqlite3_column_int64(q, 6);
        int64_t cost = sqlite3_column_int64(q, 8);
        json_object *line;
        if (!inv || strcmp(proj, last) != 0) {
            close_invoice(inv, total);
            if (!(inv = json_object_new_object()) || !(lines = json_object_new_array())) {
                json_object_put(inv);
                return -ENOMEM;
            }
            json_object_array_add(arr, inv);
            json_object_object_add(inv, "project_id", json_object_new_string(proj));
            json_object_object_add(inv, "month", json_object_new_string(mon));
            json_object_object_add(inv, "currency", json_object_new_string(
                                                        (const char *)sqlite3_column_text(q, 9)));
            json_object_object_add(inv, "period_start", time_json(start));
            json_object_object_add(inv, "period_end", time_json(end));
            json_object_object_add(inv, "lines", lines);
            cl_strlcpy(last, proj, sizeof last);
            total = 0;
        }
        if (!(line = json_object_new_object()))
            return -ENOMEM;
        json_object_array_add(lines, line);
        json_object_object_add(line, "resource",
                               json_object_new_string((const char *)sqlite3_column_text(q, 1)));
        json_object_object_add(line, "meter",
                               json_object_new_string((const char *)sqlite3_column_text(q, 2)));
        json_object_object_add(line, "quantity", json_object_new_int64(sqlite3_column_int64(q, 4)));
        json_object_object_add(line, "unit",
                               json_object_new_string((const char *)sqlite3_column_text(q, 3)));
        /* A price changed inside the month (and the hours were re-rated separately):
         * the line has no single price; its hourly rows in the export do. */
        json_object_object_add(line, "price", pmin == pmax ? json_object_new_int64(pmin) : NULL);
        json_object_object_add(line, "price_unit",
                               json_object_new_string((const char *)sqlite3_column_text(q, 7)));
        json_object_object_add(line, "cost", json_object_new_int64(cost));
        total += cost;
    }
    if ((r = step_err(st, r, err)) < 0)
        return r;
    close_invoice(inv, total);
    *out = TAKE_PTR(o);
    return 0;
}

struct bill_cursor {
    bill_store *st;
    sqlite3_stmt *q;
};

/* Open a cursor over the rated rows of an export (see billing.h). */
int bill_export_open(bill_store *st, const char *project, int64_t start_ms, int64_t end_ms,
                     bill_cursor **out, cl_error *err)
{
    bill_cursor *c = calloc(1, sizeof *c);
    int r;

    if (!c)
        return -ENOMEM;
    r = prepare_rated(st,
                      "SELECT period, project_id, resource, meter, quantity, unit, price,"
                      " price_unit, cost, currency FROM rated" RATED_FILTER
                      " ORDER BY period, project_id, resource, meter",
                      project, start_ms, end_ms, &c->q, err);
    if (r < 0) {
        free(c);
        return r;
    }
    c->st = st;
    *out = c;
    return 0;
}

/* The next row: 1 and *row (strings valid until the next call), 0 at the end, or
 * -errno with err. */
int bill_export_next(bill_cursor *c, bill_row *row, cl_error *err)
{
    sqlite3_stmt *q = c->q;
    int r = sqlite3_step(q);

    if (r != SQLITE_ROW)
        return step_err(c->st, r, err);
    *row = (bill_row){
        .period_ms = sqlite3_column_int64(q, 0),
        .project_id = (const char *)sqlite3_column_text(q, 1),
        .resource = (const char *)sqlite3_column_text(q, 2),
        .meter = (const char *)sqlite3_column_text(q, 3),
        .quantity = sqlite3_column_int64(q, 4),
        .unit = (const char *)sqlite3_column_text(q, 5),
        .price = sqlite3_column_int64(q, 6),
        .price_unit = (const char *)sqlite3_column_text(q, 7),
        .cost = sqlite3_column_int64(q, 8),
        .currency = (const char *)sqlite3_column_text(q, 9),
    };
    return 1;
}

void bill_export_close(bill_cursor *c)
{
    if (!c)
        return;
    sqlite3_finalize(c->q);
    free(c);
}

int bill_export(bill_store *st, const char *project, int64_t start_ms, int64_t end_ms,
                int (*fn)(const bill_row *row, void *ud), void *ud, cl_error *err)
{
    bill_cursor *c = NULL;
    bill_row row;
    int r = bill_export_open(st, project, start_ms, end_ms, &c, err);

    while (r >= 0 && (r = bill_export_next(c, &row, err)) == 1) {
        int fr = fn(&row, ud);
        if (fr < 0) {
            r = fr;
            break;
        }
    }
    bill_export_close(c);
    return r < 0 ? r : 0;
}
