/*
 * billing.c - the nube-billing daemon: its configuration, the bus endpoint agents send
 * usage.samples to, and the periodic rating tick.
 *
 * Shape: one bus ROUTER (libcloud/bus.c, manual-ack mode) whose thread is the event
 * loop: every usage.samples batch is decoded (libcloud/usage_msg.c) and queued for the
 * ingest thread. That thread commits whatever is queued as one group (one transaction
 * for many messages: the commit and the index pages it writes are shared, which is what
 * lifts ingest past 100 000 samples/s) and acks each message with cl_bus_ack() only
 * after its group committed. A failed commit (disk full, database locked) acks nothing,
 * so the agents' outboxes resend and nothing is lost; the sample ids make the resend
 * exact. The queue is capped: when the disk is slower than the agents, the bus thread
 * waits (up to QUEUE_WAIT_MS) for the ingest thread to make room, and so stops reading
 * the socket - ZeroMQ's queues and TCP then hold the senders back, the way a pipe does.
 * Only when no room comes in that time (a stalled disk) is a batch left unacked, to
 * come back with its sender's resend.
 *
 * The bus thread also runs the tick: every rate_interval_s it rates what changed
 * (bill_rate_pending) and once an hour it prunes samples past the retention horizon.
 * HTTP workers (api.c) read through their own connections; the writer connection is
 * shared by the ingest thread, the tick and admin calls (PUT /v1/prices, POST /v1/rate)
 * under b->lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <time.h>

#include "bill_int.h"
#include "bus_auth.h"
#include "log.h"

#define LOG_MOD "bill"
#define TICK_MS 1000
#define PRUNE_EVERY_MS (3600 * 1000)
#define DAY_MS INT64_C(86400000)
/* Group commit: a group waits at most GROUP_LINGER_MS for GROUP_MIN_SAMPLES, and holds
 * at most GROUP_MAX_SAMPLES (one transaction of a few hundred ms at most). The queue in
 * front of it is capped: beyond, batches are left unacked for the agents to resend. */
#define GROUP_LINGER_MS 10
#define GROUP_MIN_SAMPLES 2000
#define GROUP_MAX_SAMPLES 50000
#define GROUP_MAX_BATCHES 1024
#define BILL_QUEUE_MAX_SAMPLES 100000
#define QUEUE_WAIT_MS 2000

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
    CFG_KEY("billing", "curve_secret_key_file", CL_CFG_STR, "", 0, -1, curve_secret_key_file,
            "File (mode 0600) with billing's CURVE secret key (nube-keys gen); empty = "
            "plain TCP."),
    CFG_KEY("billing", "allowed_keys_dir", CL_CFG_STR, "", 0, -1, allowed_keys_dir,
            "Directory of '<public key> <host>' files of the agents allowed to send "
            "samples. Needs curve_secret_key_file."),
    CFG_KEY("billing", "min_charge_s", CL_CFG_INT, "60", 0, 86400, min_charge_s,
            "Minimum charge per running interval, in seconds (EC2 charges 60)."),
    CFG_KEY("billing", "sample_retention_days", CL_CFG_INT, "400", 0, 36500,
            sample_retention_days,
            "Raw samples older than this are pruned and late ones refused; 0 keeps all."),
    CFG_KEY("billing", "rate_interval_s", CL_CFG_INT, "60", 1, 86400, rate_interval_s,
            "How often new samples and running intervals are rated."),
    CFG_KEY("billing", "export_max_mb", CL_CFG_INT, "64", 1, 4096, export_max_mb,
            "Unused since exports are streamed (kept so old files still load)."),
    CFG_KEY("database", "connection", CL_CFG_STR, "/var/lib/nube/billing.db", 0, -1,
            db_connection, "Path of the billing SQLite database (billing's own file)."),
    CFG_KEY("auth", "admin_token", CL_CFG_STR, "", 0, -1, admin_token,
            "Static admin token (X-Auth-Token) for the billing API; empty disables it."),
    CFG_KEY("auth", "token_key_file", CL_CFG_STR, "", 0, -1, token_key_file,
            "Key the sealed tokens of nube-api are verified with (the same file as "
            "nube-api's); empty means <state_dir>/token.key."),
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

/* Ack a message the bus handed us in manual-ack mode (best effort: a lost ack is a
 * resend, which dedup absorbs). */
static void ack(bill *b, const char *peer, const char *id)
{
    int r = cl_bus_ack(b->bus, peer, id);
    if (r < 0)
        cl_debug(LOG_MOD, "ack %s to '%s' not queued (%d): it will be resent", id, peer, r);
}

static void batch_free(bill_batch *bb)
{
    if (bb) {
        free(bb->samples);
        free(bb);
    }
}

/* usage.samples (bus thread): decode and queue for the ingest thread, which acks after
 * the commit. What can never be stored (a malformed batch, another message type) is
 * acked at once, or the sender would resend it forever. */
static void on_msg(cl_bus *bus, const cl_bus_msg *msg, void *ud)
{
    bill *b = ud;
    cl_usage_sample *v = NULL;
    size_t n = 0, rejected = 0;
    cl_error err = {0};
    int r;

    (void)bus;
    if (strcmp(msg->type, CL_MSG_USAGE_SAMPLES) != 0) {
        cl_debug(LOG_MOD, "ignoring '%s' from '%s'", msg->type, msg->peer);
        ack(b, msg->peer, msg->id);
        return;
    }
    atomic_fetch_add(&b->batches, 1);
    r = cl_usage_batch_decode(msg->body, &v, &n, &rejected, &err);
    if (r < 0 || rejected) {
        atomic_fetch_add(&b->rejected, r < 0 ? 1 : rejected);
        cl_warn(LOG_MOD, "usage.samples %s from '%s': %s%s", msg->id, msg->peer,
                r < 0 ? "refused: " : "some samples refused: ", err.message);
        if (r < 0 || n == 0) {
            free(v);
            ack(b, msg->peer, msg->id);
            return;
        }
    }
    if (msg->user_id[0]) {
        /* CURVE with allowed keys: the sender's key belongs to user_id (a host name), and
         * a host reports only for itself. */
        size_t kept = 0, foreign = 0;
        for (size_t i = 0; i < n; i++) {
            if (strcmp(v[i].host, msg->user_id) != 0) {
                foreign++;
                continue;
            }
            if (kept != i)
                v[kept] = v[i];
            kept++;
        }
        if (foreign) {
            atomic_fetch_add(&b->rejected, foreign);
            cl_warn(LOG_MOD, "usage.samples %s: refused %zu sample(s) for another host "
                    "than '%s', whose key sent them", msg->id, foreign, msg->user_id);
            n = kept;
        }
        if (n == 0) {
            free(v);
            ack(b, msg->peer, msg->id);
            return;
        }
    }
    bill_batch *bb = calloc(1, sizeof *bb);
    if (!bb) {
        free(v);
        atomic_fetch_add(&b->deferred, 1);
        return; /* not acked: the agent resends */
    }
    cl_strlcpy(bb->peer, msg->peer, sizeof bb->peer);
    cl_strlcpy(bb->id, msg->id, sizeof bb->id);
    bb->samples = v;
    bb->n = n;

    pthread_mutex_lock(&b->qlock);
    if (!b->qstop && b->qsamples + n > BILL_QUEUE_MAX_SAMPLES) {
        /* Full: the disk is slower than the agents. Wait for the ingest thread to take a
         * group (with a deadline, so a stalled disk cannot hold the bus thread). */
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += QUEUE_WAIT_MS / 1000;
        dl.tv_nsec += (QUEUE_WAIT_MS % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
        while (!b->qstop && b->qsamples + n > BILL_QUEUE_MAX_SAMPLES &&
               pthread_cond_timedwait(&b->qroom, &b->qlock, &dl) == 0)
            ;
    }
    if (b->qstop || b->qsamples + n > BILL_QUEUE_MAX_SAMPLES) {
        /* Still full or stopping: not acked, so the agent's outbox keeps it and resends
         * it later. Memory stays bounded. */
        pthread_mutex_unlock(&b->qlock);
        atomic_fetch_add(&b->deferred, 1);
        batch_free(bb);
        return;
    }
    if (b->qtail)
        b->qtail->next = bb;
    else
        b->qhead = bb;
    b->qtail = bb;
    b->qsamples += n;
    pthread_cond_signal(&b->qcond);
    pthread_mutex_unlock(&b->qlock);
}

/* Store one group in one transaction, then ack each of its messages; on failure ack
 * none (every agent resends its batches, the samples' ids make that exact). */
static void commit_group(bill *b, bill_batch *group)
{
    const cl_usage_sample *ptrs[GROUP_MAX_BATCHES];
    size_t ns[GROUP_MAX_BATCHES], nb = 0;
    bill_ingest_stats stats = {0};
    cl_error err = {0};
    int64_t min_ts = 0;
    int r;

    for (bill_batch *bb = group; bb; bb = bb->next, nb++) {
        ptrs[nb] = bb->samples;
        ns[nb] = bb->n;
    }
    if (b->cfg->sample_retention_days > 0)
        min_ts = cl_now_ms() - b->cfg->sample_retention_days * DAY_MS;
    pthread_mutex_lock(&b->lock);
    r = bill_ingest_many(b->store, ptrs, ns, nb, min_ts, &stats, &err);
    pthread_mutex_unlock(&b->lock);
    atomic_fetch_add(&b->groups, 1);
    if (r < 0) {
        atomic_fetch_add(&b->ingest_errors, 1);
        atomic_store(&b->store_failing, true);
        cl_err(LOG_MOD, "%zu usage.samples messages not stored (the agents will resend "
               "them): %s", nb, err.message);
    } else {
        atomic_store(&b->store_failing, false);
        atomic_fetch_add(&b->accepted, stats.accepted);
        atomic_fetch_add(&b->duplicates, stats.duplicates);
        atomic_fetch_add(&b->late, stats.late);
        atomic_fetch_add(&b->too_old, stats.too_old);
        for (bill_batch *bb = group; bb; bb = bb->next)
            ack(b, bb->peer, bb->id);
    }
    while (group) {
        bill_batch *next = group->next;
        batch_free(group);
        group = next;
    }
}

/* The ingest thread: wait for queued batches, linger up to GROUP_LINGER_MS while the
 * group is small (more messages share the commit), take up to GROUP_MAX_SAMPLES and
 * commit them together. Batches still queued at stop are dropped unacked (resent). */
static void *ingest_main(void *arg)
{
    bill *b = arg;

    pthread_mutex_lock(&b->qlock);
    for (;;) {
        while (!b->qhead && !b->qstop)
            pthread_cond_wait(&b->qcond, &b->qlock);
        if (b->qstop)
            break;
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_nsec += GROUP_LINGER_MS * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
        while (!b->qstop && b->qsamples < GROUP_MIN_SAMPLES &&
               pthread_cond_timedwait(&b->qcond, &b->qlock, &dl) == 0)
            ;
        if (b->qstop)
            break;
        /* Take a prefix of at most GROUP_MAX_SAMPLES samples (always one batch). */
        bill_batch *group = b->qhead, *last = group;
        size_t taken = group->n, nb = 1;
        while (last->next && nb < GROUP_MAX_BATCHES &&
               taken + last->next->n <= GROUP_MAX_SAMPLES) {
            last = last->next;
            taken += last->n;
            nb++;
        }
        b->qhead = last->next;
        if (!b->qhead)
            b->qtail = NULL;
        last->next = NULL;
        b->qsamples -= taken;
        pthread_cond_signal(&b->qroom);
        pthread_mutex_unlock(&b->qlock);
        commit_group(b, group);
        pthread_mutex_lock(&b->qlock);
    }
    pthread_mutex_unlock(&b->qlock);
    return NULL;
}

static int ingest_start(bill *b, cl_error *err)
{
    pthread_condattr_t ca;
    int r;

    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->qcond, &ca);
    pthread_cond_init(&b->qroom, &ca);
    pthread_condattr_destroy(&ca);
    b->qcond_init = true;
    if ((r = pthread_create(&b->ingest_thread, NULL, ingest_main, b)) != 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot start the ingest thread: %s",
                            strerror(r)), -r;
    b->ingest_started = true;
    return 0;
}

/* Stop the ingest thread (after the bus: no new batches) and drop what is queued. */
static void ingest_stop(bill *b)
{
    if (!b->ingest_started)
        return;
    pthread_mutex_lock(&b->qlock);
    b->qstop = true;
    pthread_cond_broadcast(&b->qcond);
    pthread_cond_broadcast(&b->qroom);
    pthread_mutex_unlock(&b->qlock);
    pthread_join(b->ingest_thread, NULL);
    while (b->qhead) {
        bill_batch *next = b->qhead->next;
        batch_free(b->qhead);
        b->qhead = next;
    }
    b->qtail = NULL;
    b->ingest_started = false;
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

/* The key nube-api seals tokens with ([auth] token_key_file, or <state_dir>/token.key;
 * created there when missing, as nube-api does, so either may start first). Without it
 * only the static admin token works, which is logged. */
static int load_token_key(bill *b, cl_error *err)
{
    const bill_cfg *cfg = b->cfg;
    char path[4096];
    cl_error kerr = {0};
    bool explicit_path = cfg->token_key_file && cfg->token_key_file[0];
    int r;

    if (explicit_path)
        cl_strlcpy(path, cfg->token_key_file, sizeof path);
    else
        snprintf(path, sizeof path, "%s/token.key",
                 cfg->common.state_dir && cfg->common.state_dir[0] ? cfg->common.state_dir
                                                                   : ".");
    r = cl_token_key_load(path, true, &b->token_key, &kerr);
    if (r == 0) {
        b->have_token_key = true;
        return 0;
    }
    if (explicit_path) {
        cl_error_set(err, kerr.code ? kerr.code : CL_E_INTERNAL, "token key %s: %s", path,
                     kerr.message);
        return r;
    }
    cl_warn(LOG_MOD, "no token key at %s (%s): only the static admin token is accepted",
            path, kerr.message);
    return 0;
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
    pthread_mutex_init(&b->qlock, NULL);
    if ((r = bill_store_open(cfg->db_connection, &b->store, err)) < 0 ||
        (r = seed_prices(b, err)) < 0 || (r = load_token_key(b, err)) < 0 ||
        (r = ingest_start(b, err)) < 0)
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
        .manual_ack = true, /* acked by the ingest thread after the commit */
        .curve_allowed_dir = cfg->allowed_keys_dir,
    };
    cl_bus_keys keys;
    r = cl_bus_keys_apply(&keys, cfg->curve_secret_key_file, NULL, false, &bo, err);
    if (r == 0)
        r = cl_bus_new(&bo, &b->bus, err);
    explicit_bzero(&keys, sizeof keys);
    if (r < 0)
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
    ingest_stop(b); /* before the bus: it acks through it */
    cl_bus_free(b->bus);
    bill_store_close(b->store);
    pthread_mutex_destroy(&b->lock);
    pthread_mutex_destroy(&b->qlock);
    if (b->qcond_init) {
        pthread_cond_destroy(&b->qcond);
        pthread_cond_destroy(&b->qroom);
    }
    OPENSSL_cleanse(&b->token_key, sizeof b->token_key);
    free(b);
}

uint16_t bill_http_port(const bill *b)
{
    return b && b->http ? cl_http_server_port(b->http) : 0;
}
