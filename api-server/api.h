/*
 * api.h - nube-api: the OpenStack-dialect front door of nube.
 *
 * One process serves two HTTP listeners:
 *  - Identity v3 (default :5000): version documents and a minimal, static Keystone that
 *    knows one admin user in one admin project and hands out one configured token;
 *  - Compute v2.1 (default :8774): servers, flavors and hypervisors in Nova's shapes.
 * It writes instance records into the controller database and tells the scheduler what to
 * do over the bus (a DEALER named "nube-api").
 *
 * main.c and the unit tests drive the daemon through this header only: fill an api_cfg
 * (from the INI file via api_cfg_keys, or with cl_config_defaults + cl_config_set in
 * tests), then api_start() / api_stop(). There are no globals: everything lives in the
 * api_ctx returned by api_start(), so a test can run several in one process.
 */
#ifndef API_H
#define API_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "daemon.h"
#include "errors.h"

/* nube-api.conf, as listed in the configuration contract (notes/configs.md). */
typedef struct api_cfg {
    cl_common_cfg common;      /* [DEFAULT]: must stay first (cl_daemon_init) */
    char *db_path;             /* [database] connection */
    char *scheduler_endpoint;  /* [bus] scheduler_endpoint */
    int64_t resend_ms;         /* [bus] resend_ms */
    char *curve_secret_key_file; /* [bus] curve_secret_key_file ("" = plain TCP) */
    char *curve_server_key_file; /* [bus] curve_server_key_file (the scheduler's) */
    char *listen;              /* [api] listen */
    int64_t compute_port;      /* [api] compute_port (0 = pick a free one) */
    int64_t identity_port;     /* [api] identity_port (0 = pick a free one) */
    char *public_host;         /* [api] public_host: host used in links and the catalog */
    int64_t workers;           /* [api] workers: HTTP worker threads per listener */
    int64_t max_body_bytes;    /* [api] max_body_bytes */
    char *admin_token;         /* [auth] admin_token (required) */
    char *admin_user;          /* [auth] admin_user */
    char *admin_password;      /* [auth] admin_password (required) */
    char *admin_project_name;  /* [auth] admin_project_name */
    char *admin_project_id;    /* [auth] admin_project_id */
    char *admin_user_id;       /* [auth] admin_user_id */
    char *region;              /* [auth] region */
    int64_t token_ttl_s;       /* [auth] token_ttl_s */
    char *token_key_file;      /* [auth] token_key_file ("" = <state_dir>/token.key) */
    int64_t password_iterations; /* [auth] password_iterations (PBKDF2 rounds) */
    int64_t quota_instances;   /* [quota] instances: default per project (-1 = unlimited) */
    int64_t max_concurrent_builds; /* [quota] max_concurrent_builds per project (0 = no cap) */
    int64_t quota_cores;       /* [quota] cores */
    int64_t quota_ram;         /* [quota] ram (MB) */
    int64_t quota_key_pairs;   /* [quota] key_pairs (per user) */
    int64_t quota_server_groups;        /* [quota] server_groups */
    int64_t quota_server_group_members; /* [quota] server_group_members */
} api_cfg;

/* The declarative key table of nube-api.conf (for cl_daemon_init, cl_config_*). */
extern const cl_cfg_key api_cfg_keys[];
extern const size_t api_cfg_nkeys;

typedef struct api_ctx api_ctx;

/* Validate cfg, open (and migrate) the controller DB once, connect the bus DEALER to the
 * scheduler and start both HTTP listeners. cfg is borrowed: it must outlive the context.
 * Returns 0 and *out, or a negative errno with err describing the problem (empty
 * admin_token/admin_password, unusable DB, port in use, ...). */
int api_start(const api_cfg *cfg, api_ctx **out, cl_error *err);

/* Stop both listeners (finishing running requests), then the bus, and free everything,
 * including the per-thread database connections. Accepts NULL. */
void api_stop(api_ctx *ctx);

/* The ports actually bound (useful when the config asked for 0). */
uint16_t api_compute_port(const api_ctx *ctx);
uint16_t api_identity_port(const api_ctx *ctx);

#endif
