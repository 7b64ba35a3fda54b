/*
 * host_ops.h - operator commands for host maintenance and server moves (host_ops.c):
 * nube host disable/enable, nube host drain, nube server migrate.
 */
#ifndef CLI_HOST_OPS_H
#define CLI_HOST_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "commands.h"

/* Disable (reason required, may be "") or enable a host's compute service. */
int cli_cmd_host_set_enabled(cli_ctx *ctx, const char *host, bool enabled, const char *reason,
                             cl_error *err);

/* Live-migrate every server off host, at most parallel at a time, the scheduler choosing
 * each destination; one progress line per change on ctx->err and one result line per
 * server on ctx->out. Disables the host first (reason "drain" unless given). Exit 0 when
 * every server moved, 1 when some did not, 5 on timeout. */
int cli_cmd_host_drain(cli_ctx *ctx, const char *host, int64_t parallel, const char *reason,
                       int64_t timeout_s, cl_error *err);

/* os-migrateLive (live) of one server, to host (NULL = scheduler's choice); with wait,
 * until it is ACTIVE again and report where it is. Cold migration is not available yet. */
int cli_cmd_server_migrate(cli_ctx *ctx, const char *ref, bool live, const char *host,
                           bool wait, int64_t timeout_s, cl_error *err);

#endif
