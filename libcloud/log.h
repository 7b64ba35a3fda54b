/*
 * log.h - levelled logging with module names and the request id in every line.
 *
 * Line format (stderr):
 *   2026-11-26T06:14:50.123Z INFO  nube-api[1234] api.servers [req-<uuid>] message
 * The request id is thread-local: the HTTP layer sets it for the handler thread, the bus
 * sets it from the "req" field of the message being handled, so one user request can be
 * followed across daemons with grep. Optionally lines also go to syslog(3).
 * Thread-safe: each line is written with one write(2)/fputs under a lock.
 */
#ifndef CL_LOG_H
#define CL_LOG_H

#include <stdbool.h>

typedef enum { CL_LOG_DEBUG, CL_LOG_INFO, CL_LOG_WARN, CL_LOG_ERROR, CL_LOG_LEVEL_MAX } cl_log_level;

/* Configure the process logger. ident is the daemon name ("nube-api"). */
void cl_log_init(const char *ident, cl_log_level level, bool use_syslog);

/* Parse "debug" / "info" / "warning" / "error" (case-insensitive). 0 or -EINVAL. */
int cl_log_level_parse(const char *s, cl_log_level *out);
const char *cl_log_level_name(cl_log_level level);

/* Set / read the calling thread's request id (copied; NULL clears it). */
void cl_log_set_request_id(const char *req_id);
const char *cl_log_request_id(void);

/* Write one line if level is enabled. module is a short dotted name ("sched.claims"). */
void cl_log_write(cl_log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

bool cl_log_enabled(cl_log_level level);

#define cl_debug(mod, ...) cl_log_write(CL_LOG_DEBUG, mod, __VA_ARGS__)
#define cl_info(mod, ...) cl_log_write(CL_LOG_INFO, mod, __VA_ARGS__)
#define cl_warn(mod, ...) cl_log_write(CL_LOG_WARN, mod, __VA_ARGS__)
#define cl_err(mod, ...) cl_log_write(CL_LOG_ERROR, mod, __VA_ARGS__)

#endif
