/*
 * billing.h - nube-billing as a library: metering, rating, invoices and the daemon.
 *
 * Layers, bottom up (each usable alone, which is how the unit tests drive them):
 *
 *   bill_store   the billing database (SQLite, its own file): samples with their
 *                counter deltas, their hourly sums per instance and project, the
 *                price plan, rated rows.                          meter.c, rating.c
 *   bill_ingest  samples in, de-duplicated by id, counter deltas kept exact whatever
 *                order the samples arrive in.                     meter.c
 *   bill_rate    per hour, per project, per instance and meter: quantity x price,
 *                re-runnable for any window (one transaction).    rating.c
 *   queries      usage, costs, invoices, export rows.             rating.c
 *   bill         the daemon: bus ROUTER for usage.samples, the HTTP API, a periodic
 *                rating tick.                                     billing.c, api.c
 *
 * Money is integers of a micro-unit of the plan's currency (1 EUR = 1 000 000); no
 * floating point touches a quantity or an amount. Rating never reads the clock: callers
 * pass "now" explicitly, so tests run on a controlled clock.
 *
 * Threads: a bill_store is one SQLite connection, used by one thread at a time; the
 * daemon serialises its writer store with a mutex and opens read-only stores per HTTP
 * request (WAL lets them read beside the writer).
 */
#ifndef BILL_BILLING_H
#define BILL_BILLING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "daemon.h"
#include "errors.h"
#include "usage_msg.h"

#define BILL_HOUR_MS INT64_C(3600000)
#define BILL_CURRENCY_MAX 8
#define BILL_PRICE_FLAVORS_MAX 1024
#define BILL_MAX_RATE_HOURS (24 * 400) /* one re-rate call covers at most ~13 months */

/* nube-billing.conf; see bill_cfg_keys for defaults, bounds and help. */
typedef struct bill_cfg {
    cl_common_cfg common;
    char *listen;                  /* [billing] listen */
    int64_t port;                  /* [billing] port (0 = pick a free one) */
    char *bus_listen;              /* [billing] bus_listen */
    char *curve_secret_key_file;   /* [billing] curve_secret_key_file ("" = plain TCP) */
    char *allowed_keys_dir;        /* [billing] allowed_keys_dir (agents' public keys) */
    int64_t min_charge_s;          /* [billing] min_charge_s */
    int64_t sample_retention_days; /* [billing] sample_retention_days (0 = keep) */
    int64_t rate_interval_s;       /* [billing] rate_interval_s */
    int64_t export_max_mb;         /* [billing] export_max_mb */
    char *db_connection;           /* [database] connection */
    char *admin_token;             /* [auth] admin_token */
    char *token_key_file;          /* [auth] token_key_file ("" = <state_dir>/token.key) */
    char *currency;                /* [prices] currency */
    char *flavor_hour;             /* [prices] flavor_hour "id=micro, id=micro" */
    int64_t vcpu_hour, ram_gb_hour, disk_gb_hour, cpu_core_hour, net_gb_in, net_gb_out;
} bill_cfg;

extern const cl_cfg_key bill_cfg_keys[];
extern const size_t bill_cfg_nkeys;

/* ---- price plans ---- */

typedef struct bill_flavor_price {
    char flavor_id[CL_ID_MAX];
    int64_t hour; /* micro-units per running hour */
} bill_flavor_price;

/* A price plan. Every price is micro-units of currency per the unit named. The prices add
 * up: an operator who prices flavors usually leaves vcpu_hour and ram_gb_hour at 0. */
typedef struct bill_prices {
    char currency[BILL_CURRENCY_MAX];
    int64_t vcpu_hour;     /* per vCPU per running hour */
    int64_t ram_gb_hour;   /* per GiB of flavor RAM per running hour */
    int64_t disk_gb_hour;  /* per GiB of flavor disk per allocated hour (stopped too) */
    int64_t cpu_core_hour; /* per hour of CPU time actually consumed */
    int64_t net_gb_in;     /* per GiB (2^30 bytes) received */
    int64_t net_gb_out;    /* per GiB sent */
    size_t nflavors;
    bill_flavor_price flavors[BILL_PRICE_FLAVORS_MAX];
} bill_prices;

/* Build a plan from the [prices] keys. 0 or -EINVAL (bad flavor_hour list) with err. */
int bill_prices_from_cfg(const bill_cfg *cfg, bill_prices *out, cl_error *err);
/* Parse / build the JSON form used by the API and the database:
 * {"currency","vcpu_hour","ram_gb_hour","disk_gb_hour","cpu_core_hour","net_gb_in",
 *  "net_gb_out","flavors":{"<id>":<micro per hour>}}. Parse: 0 or -EINVAL with err. */
int bill_prices_from_json(json_object *obj, bill_prices *out, cl_error *err);
json_object *bill_prices_to_json(const bill_prices *p);

/* ---- the store ---- */

typedef struct bill_store bill_store;

/* Open (create, migrate) the billing database at path. 0 and *out, or -errno + err. */
int bill_store_open(const char *path, bill_store **out, cl_error *err);
/* Close; accepts NULL. */
void bill_store_close(bill_store *st);

/* Current plan (an empty EUR plan when none was ever set). 0 or -errno. */
int bill_prices_get(bill_store *st, bill_prices *out, cl_error *err);
/* Replace the plan. 0 or -errno. Rated rows keep the prices they were rated with until
 * their window is re-rated. */
int bill_prices_put(bill_store *st, const bill_prices *p, cl_error *err);
/* Apply the config plan at start-up when it differs from the config plan applied last
 * time: the most recent change wins (an API change survives restarts until the config
 * file's prices change). *out_applied tells which happened. */
int bill_prices_seed(bill_store *st, const bill_prices *cfg_plan, bool *out_applied,
                     cl_error *err);

typedef struct bill_ingest_stats {
    size_t accepted;   /* new samples stored */
    size_t duplicates; /* ids seen before: ignored */
    size_t late;       /* stored before an already-stored sample of the same instance */
    size_t too_old;    /* older than the retention horizon: refused */
} bill_ingest_stats;

/* Store a batch in one transaction: de-duplicate by id, compute counter deltas against
 * the neighbouring samples of the same instance (by ts, then id), fix the delta of the
 * following sample when a late one slots in before it, and remember the earliest time
 * touched so the next bill_rate_pending() re-rates from there. min_ts: samples older
 * than this are refused as too old (0 = no horizon). Stats are added to *stats (may be
 * NULL). 0 or -errno (the whole batch rolled back) with err. */
int bill_ingest(bill_store *st, const cl_usage_sample *samples, size_t n, int64_t min_ts,
                bill_ingest_stats *stats, cl_error *err);

/* bill_ingest() for several batches in one transaction (the daemon's group commit: one
 * commit, and fewer index pages written, for many messages). All or nothing. */
int bill_ingest_many(bill_store *st, const cl_usage_sample *const *batches, const size_t *ns,
                     size_t nbatches, int64_t min_ts, bill_ingest_stats *stats, cl_error *err);

typedef struct bill_rate_opts {
    int64_t now_ms;       /* running intervals still open are charged up to here */
    int64_t min_charge_s; /* minimum charge per running interval, in seconds */
} bill_rate_opts;

/* Rate every project for the hours in [start_ms, end_ms) (widened to whole hours), with
 * the current plan: the window's rated rows are replaced in one transaction, so running
 * it again (after a price fix, after late samples) is idempotent. *out_rows (may be NULL)
 * gets the number of rows written. 0, -EINVAL (bad window) or -errno with err. */
int bill_rate(bill_store *st, int64_t start_ms, int64_t end_ms, const bill_rate_opts *opts,
              size_t *out_rows, cl_error *err);

/* Rate what changed: from the earliest sample ingested since the last call (or the end
 * of the last call's window, for intervals still running) up to the hour holding
 * opts->now_ms. Does nothing when nothing is pending. 0 or -errno. */
int bill_rate_pending(bill_store *st, const bill_rate_opts *opts, size_t *out_rows,
                      cl_error *err);

/* Delete samples older than before_ms, keeping each instance's newest counter sample and
 * all events (deltas and intervals need them). The hourly counter sums rating reads are
 * kept, so pruned hours still re-rate the same. *out_deleted may be NULL. 0 or -errno. */
int bill_prune(bill_store *st, int64_t before_ms, size_t *out_deleted, cl_error *err);

/* ---- queries over rated rows (project NULL = every project) ---- */

/* Total cost in micro-units over [start, end). */
int bill_total_cost(bill_store *st, const char *project, int64_t start_ms, int64_t end_ms,
                    int64_t *out, cl_error *err);
/* Sum of one meter's quantity (e.g. "vcpu", "cpu", "flavor.m1.small") for a resource
 * (NULL = all) over [start, end). */
int bill_total_quantity(bill_store *st, const char *project, const char *resource,
                        const char *meter, int64_t start_ms, int64_t end_ms, int64_t *out,
                        cl_error *err);

/* {"project_id", "start", "end", "usage": [{"resource","meter","unit","quantity"}]} */
int bill_usage_json(bill_store *st, const char *project, int64_t start_ms, int64_t end_ms,
                    json_object **out, cl_error *err);
/* {"start","end","currency","costs":[{"project_id","total","total_decimal",
 *  "by_meter":{...}}]} */
int bill_costs_json(bill_store *st, const char *project, int64_t start_ms, int64_t end_ms,
                    json_object **out, cl_error *err);
/* Invoice(s) of a month: {"invoices":[{"project_id","month","currency","period_start",
 *  "period_end","lines":[{"resource","meter","quantity","unit","price","price_unit",
 *  "cost"}],"total","total_decimal"}]} */
int bill_invoices_json(bill_store *st, const char *project, int year, int month,
                       json_object **out, cl_error *err);

/* One rated row, as exported. Strings are borrowed for the duration of the callback. */
typedef struct bill_row {
    int64_t period_ms;
    const char *project_id, *resource, *meter, *unit, *price_unit, *currency;
    int64_t quantity, price, cost;
} bill_row;

/* Call fn for every rated row in [start, end) ordered by period, project, resource and
 * meter; a negative return from fn stops the walk and is returned. */
int bill_export(bill_store *st, const char *project, int64_t start_ms, int64_t end_ms,
                int (*fn)(const bill_row *row, void *ud), void *ud, cl_error *err);

/* The same walk as a cursor, for a consumer that pulls rows (a streamed HTTP export):
 * open, then next() gives 1 and a row (strings valid until the next call), 0 at the end,
 * or -errno. The cursor reads one snapshot of the database (WAL) until it is closed. */
typedef struct bill_cursor bill_cursor;
int bill_export_open(bill_store *st, const char *project, int64_t start_ms, int64_t end_ms,
                     bill_cursor **out, cl_error *err);
int bill_export_next(bill_cursor *c, bill_row *row, cl_error *err);
/* Close; accepts NULL. */
void bill_export_close(bill_cursor *c);

/* Format micro-units as a decimal string ("-1.500000"). */
void bill_format_micro(int64_t micro, char *out, size_t outlen);

/* Parse a time given as unix milliseconds or ISO 8601 UTC ("2026-01-31",
 * "2026-01-31T10:00:00Z"). 0 or -EINVAL. */
int bill_parse_time(const char *s, int64_t *out);

/* ---- the daemon ---- */

typedef struct bill bill;

/* Open the store, seed prices, bind the bus ROUTER, start the HTTP API. cfg must outlive
 * the daemon (strings borrowed). 0 and *out, or -errno with err. Main thread. */
int bill_start(const bill_cfg *cfg, bill **out, cl_error *err);
/* Stop HTTP, the bus, close the store, free. Accepts NULL. */
void bill_stop(bill *b);
/* The HTTP port actually bound. */
uint16_t bill_http_port(const bill *b);

#endif
