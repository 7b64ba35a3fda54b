/*
 * sched.h - nube-scheduler as a library: its configuration and one running instance.
 *
 * A running scheduler (sched) owns three things: the controller store (one cl_store
 * connection), the bus ROUTER that agents and nube-api connect to, and an optional HTTP
 * server for /healthz and /metrics. Every message and every periodic check runs on the
 * bus thread, the daemon's single event loop, so the store is only ever used by that
 * one thread. main.c and the unit tests both drive the scheduler through this header.
 */
#ifndef SCHED_SCHED_H
#define SCHED_SCHED_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "daemon.h"
#include "errors.h"

/* nube-scheduler.conf (see the key table sched_cfg_keys for defaults and bounds). */
typedef struct sched_cfg {
    cl_common_cfg common;
    char *db_connection;            /* [database] connection */
    char *bus_listen;               /* [bus] listen */
    int64_t bus_resend_ms;          /* [bus] resend_ms */
    char *bus_curve_secret_key_file;/* [bus] curve_secret_key_file ("" = no CURVE) */
    char *bus_allowed_keys_dir;     /* [bus] allowed_keys_dir (agents' and nube-api's keys) */
    int64_t host_down_after_s;      /* [scheduler] host_down_after_s */
    int64_t check_interval_ms;      /* [scheduler] check_interval_ms */
    int64_t resize_confirm_window_s;/* [scheduler] resize_confirm_window_s (0 = never) */
    double cpu_allocation_ratio;    /* [scheduler] cpu_allocation_ratio */
    double ram_allocation_ratio;    /* [scheduler] ram_allocation_ratio */
    double disk_allocation_ratio;   /* [scheduler] disk_allocation_ratio */
    int64_t reserved_host_vcpus;    /* [scheduler] reserved_host_vcpus */
    int64_t reserved_host_memory_mb;/* [scheduler] reserved_host_memory_mb */
    int64_t reserved_host_disk_gb;  /* [scheduler] reserved_host_disk_gb */
    char *enabled_filters;          /* [scheduler] enabled_filters */
    double ram_weight_multiplier;   /* [scheduler] *_weight_multiplier */
    double cpu_weight_multiplier;
    double disk_weight_multiplier;
    double num_instances_weight_multiplier;
    double build_failure_weight_multiplier;
    double soft_affinity_weight_multiplier;
    double soft_anti_affinity_weight_multiplier;
    int64_t host_subset_size;       /* [scheduler] host_subset_size */
    int64_t max_attempts;           /* [scheduler] max_attempts */
    int64_t max_instances_per_host; /* [scheduler] max_instances_per_host */
    int64_t snapshot_max_age_ms;    /* [scheduler] snapshot_max_age_ms */
    char *http_listen;              /* [http] listen */
    int64_t http_port;              /* [http] port, 0 = no HTTP server */
} sched_cfg;

/* The declarative key table of nube-scheduler.conf (for cl_daemon_init, cl_config_*). */
extern const cl_cfg_key sched_cfg_keys[];
extern const size_t sched_cfg_nkeys;

typedef struct sched sched;

/* Open the store, bind the bus and start the HTTP server as cfg says. cfg must outlive
 * the scheduler (its strings are borrowed). Returns 0 and *out (stop with sched_stop),
 * or a negative errno with err saying what failed (e.g. the bus address is in use).
 * Call from the main thread. */
int sched_start(const sched_cfg *cfg, sched **out, cl_error *err);

/* Stop HTTP, then the bus thread (no handler runs after this), close the store, free.
 * Accepts NULL. Must not be called from the bus thread. */
void sched_stop(sched *s);

/* Port the HTTP server listens on (useful when cfg asked for a free one); 0 when the
 * HTTP server is disabled. */
uint16_t sched_http_port(const sched *s);

#endif
