/*
 * billing.c - the nube-billing daemon: its configuration, the bus endpoint agents send
 * usage.samples to, and the periodic rating tick.
 *
 * Shape: one bus ROUTER (libcloud/bus.c) whose thread is the event loop: every
 * usage.samples batch is decoded (libcloud/usage_msg.c) and stored in one transaction
 * by bill_ingest() before the handler returns, and the bus acknowledges the message only
 * after that, so an agent's outbox keeps a batch until it is durably in the billing
 * database. The same thread runs the tick: every rate_interval_s it rates what changed
 * (bill_rate_pending) and once an hour it prunes samples past the retention horizon.
 * HTTP workers (api.c) read through their own connections; the writer connection is
 * shared with admin calls (PUT /v1/prices, POST /v1/rate) under b->lock.
 *
 * Limitation: cl_bus acknowledges after the handler whatever happened in it, so a batch
 * whose transaction failed (disk full) is counted in ingest_errors and logged but not
 * redelivered; see the report to the lead (a handler return value to withhold the ack).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bill_int.h"
#include "log.h"

#define LOG_MOD "bill"
#define TICK_MS 1000
#define PRUNE_EVERY_MS (3600 * 1000)
#define DAY_MS INT64_C(86400000)

#define CFG_KEY(sec, key, type, def, lo, hi, field, help)                                  \
    {sec, key, type, def, lo, hi, offsetof(bill_cfg, field), help}
#define PRICE_KEY(key, field, help)                                                        \
    CFG_KEY("prices", key, CL_CFG_INT, "0", 0, 1e15, field, help)

const cl_cfg_key bill_cfg_keys[] = {
    CL_DAEMON_COMMON_KEYS(bill_cfg),
    CFG_KEY("billing", "listen", CL_CFG_STR, "127.0.0.1", 0, -1, listen,
            "Address the billing HTTP API listens on."),
    CFG_KEY("billing", "port", CL_CFG_INT, "8889", 0, 65535, port,
            "Port of the billing HTTP API (0 = any free port, for tests)."),
    CFG_KEY("billing", "bus_listen", CL_CFG_STR, "tcp://127.0.0.1:5571", 0, -1, bus_listen,
            "ZeroMQ endpoint billing binds; agents connect to send usage.samples."),
    CFG_KEY("billing", "min_charge_s", CL_CFG_INT, "60", 0, 86400, min_charge_s,
            "Minimum charge per running interval, in seconds (EC2 charges 60)."),
    CFG_KEY("billing", "sample_retention_days", CL_CFG_INT, "400", 0, 36500,
            sample_retention_days,
            "Raw samples older than this are pruned and late ones refused; 0 keeps all."),
    CFG_KEY("billing", "rate_interval_s", CL_CFG_INT, "60", 1, 86400, rate_interval_s,
            "How often new samples and running intervals are rated."),
    CFG_KEY("billing", "export_max_mb", CL_CFG_INT, "64", 1, 4096, export_max_mb,
            "Largest export one response may carry; narrower ranges beyond that."),
    CFG_KEY("database", "connection", CL_CFG_STR, "/var/lib/nube/billing.db", 0, -1,
            db_connection, "Path of the billing SQLite database (billing's own file)."),
    CFG_KEY("auth", "admin_token", CL_CFG_STR, "", 0, -1, admin_token,
            "Static token (X-Auth-Token) for the billing API; empty refuses every call."),
    CFG_KEY("prices", "currency", CL_CFG_STR, "EUR", 0, -1, currency,
            "ISO 4217 currency of the price plan; amounts are micro-units of it."),
    CFG_KEY("prices", "flavor_hour", CL_CFG_STR, "", 0, -1, flavor_hour,
            "Per-flavor prices per running hour: 'm1.small=20000, m1.large=80000'."),
    PRICE_KEY("vcpu_hour", vcpu_hour, "Micro-units per vCPU per running hour."),
    PRICE_KEY("ram_gb_hour", ram_gb_hour, "Micro-units per GiB of RAM per running hour."),
    PRICE_KEY("disk_gb_hour", disk_gb_hour,
              "Micro-units per GiB of disk per hour allocated (running or stopped)."),
    PRICE_KEY("cpu_core_hour", cpu_core_hour,
              "Micro-units per hour of CPU time actually consumed."),
    PRICE_KEY("net_gb_in", net_gb_in, "Micro-units per GiB received by instances."),
    PRICE_KEY("net_gb_out", net_gb_out, "Micro-units per GiB sent by instances."),
};
const size_t bill_cfg_nkeys = CL_ARRAY_SIZE(bill_cfg_keys);

/* usage.samples: decode, store in one transaction, then return (the bus acks). */
static void on_msg(cl_bus *bus, const cl_bus_msg *msg, void *ud)
{
    bill *b = ud;
    _cleanup_free_ cl_usage_sample *v = NULL;
    bill_ingest_stats stats = {0};
    size_t n = 0, rejected = 0;
    cl_error err = {0};
    int64_t min_ts = 0;
    int r;

    (void)bus;
    if (strcmp(msg->type, CL_MSG_USAGE_SAMPLES) != 0) {
        cl_debug(LOG_MOD, "ignoring '%s' from '%s'", msg->type, msg->peer);
        return;
    }
    atomic_fetch_add(&b->batches, 1);
    r = cl_usage_batch_decode(msg->body, &v, &n, &rejected, &err);
    if (r < 0 || rejected) {
        atomic_fetch_add(&b->rejected, r < 0 ? 1 : rejected);
        cl_warn(LOG_MOD, "usage.samples %s from '%s': %s%s", msg->id, msg->peer,
                r < 0 ? "refused: " : "some samples refused: ", err.message);
        if (r < 0 || n == 0)
            return;
    }
    if (b->cfg->sample_retention_days > 0)
        min_ts = cl_now_ms() - b->cfg->sample_retention_days * DAY_MS;
    pthread_mutex_lock(&b->lock);
    r = bill_ingest(b->store, v, n, min_ts, &stats, &err);
    pthread_mutex_unlock(&b->lock);
    if (r < 0) {
        atomic_fetch_add(&b->ingest_errors, 1);
        atomic_store(&b->store_failing, true);
        cl_err(LOG_MOD, "usage.samples %s from '%s' not stored: %s", msg->id, msg->peer,
               err.message);
        return;
    }
    atomic_store(&b->store_failing, false);
    atomic_fetch_add(&b->accepted, stats.accepted);
    atomic_fetch_add(&b->duplicates, stats.duplicates);
    atomic_fetch_add(&b->late, stats.late);
    atomic_fetch_add(&b->too_old, stats.too_old);
}

static void rate_tick(bill *b)
{
    bill_rate_opts o = {.now_ms = cl_now_ms(), .min_charge_s = b->cfg->min_charge_s};
    cl_error err = {0};
    size_t rows = 0;
    int r;

    pthread_mutex_lock(&b->lock);
    r = bill_rate_pending(b->store, &o, &rows, &err);
    pthread_mutex_unlock(&b->lock);
    atomic_fetch_add(&b->rate_runs, 1);
    if (r < 0) {
        atomic_fetch_add(&b->rate_errors, 1);
        atomic_store(&b->store_failing, true);
        cl_err(LOG_MOD, "rating failed: %s", err.message);
        return;
    }
    atomic_store(&b->store_failing, false);
    atomic_fetch_add(&b->rated_rows, rows);
    atomic_store(&b->last_rate_ms, o.now_ms);
}

static void prune_tick(bill *b)
{
    cl_error err = {0};
    size_t n = 0;
    int r;

    pthread_mutex_lock(&b->lock);
    r = bill_prune(b->store, cl_now_ms() - b->cfg->sample_retention_days * DAY_MS, &n, &err);
    pthread_mutex_unlock(&b->lock);
    if (r < 0)
        cl_err(LOG_MOD, "pruning samples failed: %s", err.message);
    else if (n)
        cl_info(LOG_MOD, "pruned %zu samples older than %" PRId64 " days", n,
                b->cfg->sample_retention_days);
}

static void on_tick(cl_bus *bus, void *ud)
{
    bill *b = ud;
    int64_t now = cl_mono_ms();

    (void)bus;
    if (b->last_rate_mono == 0 || now - b->last_rate_mono >= b->cfg->rate_interval_s * 1000) {
        b->last_rate_mono = now;
        rate_tick(b);
    }
    if (b->cfg->sample_retention_days > 0 &&
        (b->last_prune_mono == 0 || now - b->last_prune_mono >= PRUNE_EVERY_MS)) {
        b->last_prune_mono = now;
        prune_tick(b);
    }
}

static int seed_prices(bill *b, cl_error *err)
{
    _cleanup_free_ bill_prices *plan = calloc(1, sizeof *plan);
    bool applied = false;
    int r;

    if (!plan)
        return -ENOMEM;
    if ((r = bill_prices_from_cfg(b->cfg, plan, err)) < 0 ||
        (r = bill_prices_seed(b->store, plan, &applied, err)) < 0)
        return r;
    if (applied)
        cl_info(LOG_MOD, "price plan from the configuration applied (%s)", plan->currency);
    return 0;
}

int bill_start(const bill_cfg *cfg, bill **out, cl_error *err)
{
    bill *b = calloc(1, sizeof *b);
    int r;

    if (!b)
        return -ENOMEM;
    b->cfg = cfg;
    pthread_mutex_init(&b->lock, NULL);
    if ((r = bill_store_open(cfg->db_connection, &b->store, err)) < 0 ||
        (r = seed_prices(b, err)) < 0)
        goto fail;

    cl_http_opts ho = {
        .service = "billing",
        .bind_addr = cfg->listen,
        .port = (uint16_t)cfg->port,
        .routes = bill_api_routes,
        .nroutes = bill_api_nroutes,
        .ud = b,
        .metrics_fn = bill_api_metrics,
        .health_fn = bill_api_health,
    };
    if ((r = cl_http_server_start(&ho, &b->http, err)) < 0)
        goto fail;

    cl_bus_opts bo = {
        .role = CL_BUS_ROUTER,
        .endpoint = cfg->bus_listen,
        .name = "nube-billing",
        .tick_ms = TICK_MS,
        .on_msg = on_msg,
        .on_tick = on_tick,
        .ud = b,
    };
    if ((r = cl_bus_new(&bo, &b->bus, err)) < 0)
        goto fail;
    cl_info(LOG_MOD, "billing API on %s:%u, usage samples on %s", cfg->listen,
            (unsigned)cl_http_server_port(b->http), cfg->bus_listen);
    *out = b;
    return 0;
fail:
    bill_stop(b);
    return r;
}

void bill_stop(bill *b)
{
    if (!b)
        return;
    /* HTTP first (no admin call can start), then the bus thread (no handler runs after). */
    cl_http_server_stop(b->http);
    cl_bus_free(b->bus);
    bill_store_close(b->store);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

uint16_t bill_http_port(const bill *b)
{
    return b && b->http ? cl_http_server_port(b->http) : 0;
}
