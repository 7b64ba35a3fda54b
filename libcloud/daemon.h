/*
 * daemon.h - the lifecycle every nube daemon shares, written once.
 *
 * A daemon's main() is:
 *
 *     struct my_cfg cfg;
 *     int rc;
 *     if (cl_daemon_init(&my_daemon_info, argc, argv, &cfg, &rc) <= 0)
 *         return rc;                        // --help, --version, bad config ...
 *     ... start the bus, the HTTP server, worker threads ...
 *     cl_daemon_wait();                     // until SIGTERM / SIGINT
 *     ... stop and free in reverse order ...
 *     cl_daemon_done(&my_daemon_info, &cfg);
 *
 * Options: -h/--help (man-style text: synopsis, description, options, config reference,
 * files, signals, exit status), -V/--version, -c/--config FILE (default
 * info->default_config; a missing default file means "all defaults", a missing explicit
 * file is an error), --check-config (load, report, exit 0/1), --print-config-sample.
 * Logging is configured from the common keys ([DEFAULT] log_level, use_syslog), which
 * every daemon's table includes through CL_DAEMON_COMMON_KEYS().
 * SIGTERM/SIGINT request a clean stop; SIGPIPE is ignored; SIGHUP is logged and ignored.
 */
#ifndef CL_DAEMON_H
#define CL_DAEMON_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* Keys every daemon has; embed as the first member named `common` of the config struct. */
typedef struct cl_common_cfg {
    char *log_level; /* debug|info|warning|error */
    bool use_syslog;
    char *state_dir; /* where the daemon keeps its files */
} cl_common_cfg;

#define CL_DAEMON_COMMON_KEYS(type)                                                        \
    {"DEFAULT", "log_level", CL_CFG_STR, "info", 0, -1, offsetof(type, common.log_level),  \
     "Lowest level logged: debug, info, warning or error."},                               \
    {"DEFAULT", "use_syslog", CL_CFG_BOOL, "false", 0, -1,                                 \
     offsetof(type, common.use_syslog), "Also send log lines to syslog(3)."},              \
    {"DEFAULT", "state_dir", CL_CFG_STR, "/var/lib/nube", 0, -1,                           \
     offsetof(type, common.state_dir), "Directory for this daemon's state files."}

typedef struct cl_daemon_info {
    const char *name;           /* "nube-api" */
    const char *summary;        /* one line for NAME */
    const char *description;    /* paragraphs for DESCRIPTION */
    const char *default_config; /* "/etc/nube/nube-api.conf" */
    const cl_cfg_key *keys;
    size_t nkeys;
} cl_daemon_info;

/* Parse options, load config into cfg (a struct starting with cl_common_cfg common),
 * set up logging and signals. Returns 1 when the daemon should run, 0 when it should exit
 * with *out_exit (after --help, --version, --check-config), -1 on error (message already
 * printed to stderr, *out_exit = 2 for usage errors, 1 for config errors). */
int cl_daemon_init(const cl_daemon_info *info, int argc, char **argv, void *cfg,
                   int *out_exit);

/* Block until SIGTERM or SIGINT arrives (or cl_daemon_request_stop is called). */
void cl_daemon_wait(void);

/* Ask the daemon to stop from inside (fatal error in a thread). Async-signal-safe. */
void cl_daemon_request_stop(void);

/* True once a stop was requested. */
bool cl_daemon_stopping(void);

/* Log the shutdown and free the config's strings. */
void cl_daemon_done(const cl_daemon_info *info, void *cfg);

/* The version string (from meson). */
const char *cl_version(void);

#endif
