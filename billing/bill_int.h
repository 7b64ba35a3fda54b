/*
 * bill_int.h - what the files of nube-billing share and nobody else sees: the store's
 * insides and the state keys. The public face is billing.h.
 */
#ifndef BILL_INT_H
#define BILL_INT_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>

#include "billing.h"
#include "bus.h"
#include "db.h"
#include "http.h"
#include "token.h"

/* samples.kind values are cl_usage_kind; samples.event values are cl_usage_event;
 * samples.inst is instances.n (an integer key keeps the sample index small and local). */

/* The newest stored counter sample of an instance (see meter.c: the ingest cache). */
typedef struct bill_last_ctr {
    bool used; /* slot taken */
    bool has;  /* false: the instance has no counter sample stored yet */
    char inst[CL_UUID_LEN];
    int64_t n; /* instances.n: the integer key samples are stored under */
    char id[CL_UUID_LEN];
    int64_t ts;
    char boot_id[CL_USAGE_BOOT_ID_MAX];
    int64_t v[5];
} bill_last_ctr;

/* Counter deltas of one instance, hour and project that a transaction has not yet added
 * to the ctr_hour rollup (see meter.c). */
typedef struct bill_hour_acc {
    bool used;
    int64_t inst, hour;
    char project[CL_ID_MAX];
    int64_t d[5];
} bill_hour_acc;

struct bill_store {
    cl_db *db;
    bill_last_ctr *cache; /* BILL_CACHE_SLOTS slots, allocated on first use */
    size_t cache_n;
    bill_hour_acc *hacc; /* the rollup's pending sums, allocated on first use */
    size_t hacc_n;
    /* Ingest statements, prepared once: ingest is the hot path. */
    sqlite3_stmt *st_insert;
    sqlite3_stmt *st_prev;
    sqlite3_stmt *st_next;
    sqlite3_stmt *st_set_delta;
    sqlite3_stmt *st_dirty;
    sqlite3_stmt *st_last;
    sqlite3_stmt *st_inst_get;
    sqlite3_stmt *st_inst_add;
    sqlite3_stmt *st_hour_add;
};

/* Rows of the state table (integers). */
#define BILL_STATE_DIRTY_FROM "dirty_from"       /* earliest ts ingested, not yet rated */
#define BILL_STATE_RATED_THROUGH "rated_through" /* now_ms of the last pending rating */

/* Count the (instance, hour, project) groups where the ctr_hour rollup differs from the
 * sums of the stored counter samples' deltas (0 when exact): the rollup's invariant,
 * checked by the tests. 0 or -errno. */
int bill_rollup_check(bill_store *st, int64_t *out_mismatches);

/* Read an integer state row; *found tells whether it exists. 0 or -errno. */
int bill_state_get(bill_store *st, const char *key, int64_t *out, bool *found);

/* One usage.samples message waiting for its group commit (billing.c). */
typedef struct bill_batch {
    struct bill_batch *next;
    char peer[CL_BUS_NAME_MAX];
    char id[CL_UUID_LEN];
    cl_usage_sample *samples;
    size_t n;
} bill_batch;

/* The running daemon (billing.c starts it, api.c serves its HTTP API). */
struct bill {
    const bill_cfg *cfg;
    bill_store *store;    /* the writer connection: bus thread and admin calls */
    pthread_mutex_t lock; /* guards store */
    cl_bus *bus;
    cl_http_server *http;
    int64_t last_rate_mono, last_prune_mono; /* bus thread only */

    /* Token verification (api.c): the key nube-api seals tokens with, when readable. */
    cl_token_key token_key;
    bool have_token_key;

    /* Group commit (billing.c): the bus thread decodes and queues, the ingest thread
     * stores everything queued in one transaction and only then acks each message. */
    pthread_t ingest_thread;
    bool ingest_started;
    pthread_mutex_t qlock;
    pthread_cond_t qcond;
    pthread_cond_t qroom;      /* signalled when the ingest thread takes from the queue */
    bill_batch *qhead, *qtail; /* guarded by qlock */
    size_t qsamples;           /* samples queued, capped by BILL_QUEUE_MAX_SAMPLES */
    bool qstop;
    bool qcond_init;

    /* Counters for /metrics; written by the bus thread and HTTP workers. */
    _Atomic uint64_t batches, accepted, duplicates, rejected, late, too_old;
    _Atomic uint64_t ingest_errors, rate_runs, rate_errors, rated_rows;
    _Atomic uint64_t groups, deferred; /* group commits; batches left unacked (queue full) */
    _Atomic int64_t last_rate_ms;
    _Atomic bool store_failing; /* the last ingest or rating failed */
};

/* The routes of the billing API (api.c) and the hooks the HTTP server calls. */
extern const cl_http_route bill_api_routes[];
extern const size_t bill_api_nroutes;
void bill_api_metrics(FILE *out, void *ud);
bool bill_api_health(char *reason, size_t len, void *ud);

#endif
