/*
 * log.c - the process logger: one line per event on stderr, optionally syslog(3).
 *
 * Every line carries the time (UTC, milliseconds), the level, the daemon and its pid,
 * the module and the request id of the calling thread:
 *
 *   2026-11-26T06:14:50.123Z INFO  nube-api[1234] api.servers [req-<uuid>] message
 *
 * so a single user request can be followed through nube-api, the scheduler and an agent
 * with one grep. The request id lives in thread-local storage: whoever starts handling a
 * request (the HTTP layer, the bus dispatcher) sets it, and every log call below it picks
 * it up without passing it around. Lines are formatted into a bounded buffer first and
 * written with a single write(2) under a mutex, so lines from different threads never
 * interleave. Control characters in messages are replaced, so a tenant-supplied name
 * cannot forge extra log lines.
 */
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <unistd.h>

#include "util.h"

#define LOG_LINE_MAX 4096
#define LOG_REQ_ID_MAX 128
#define LOG_IDENT_MAX 64

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int log_level = CL_LOG_INFO;
static atomic_bool log_syslog = false;
/* Guarded by log_lock. openlog(3) keeps the pointer, so the ident must stay put. */
static char log_ident[LOG_IDENT_MAX] = "nube";

static __thread char log_req_id[LOG_REQ_ID_MAX];

/* Names accepted in the config (and printed by cl_log_level_name) and the fixed-width
 * tags used in lines, so columns stay aligned. */
static const char *const level_names[CL_LOG_LEVEL_MAX] = {
    [CL_LOG_DEBUG] = "debug",
    [CL_LOG_INFO] = "info",
    [CL_LOG_WARN] = "warning",
    [CL_LOG_ERROR] = "error",
};
static const char *const level_tags[CL_LOG_LEVEL_MAX] = {
    [CL_LOG_DEBUG] = "DEBUG",
    [CL_LOG_INFO] = "INFO ",
    [CL_LOG_WARN] = "WARN ",
    [CL_LOG_ERROR] = "ERROR",
};
static const int level_syslog[CL_LOG_LEVEL_MAX] = {
    [CL_LOG_DEBUG] = LOG_DEBUG,
    [CL_LOG_INFO] = LOG_INFO,
    [CL_LOG_WARN] = LOG_WARNING,
    [CL_LOG_ERROR] = LOG_ERR,
};

/*
 * Configure the process logger. Safe to call again (tests do); the previous syslog
 * connection is closed first. Thread-safe, but meant to be called once at start-up.
 */
void cl_log_init(const char *ident, cl_log_level level, bool use_syslog)
{
    pthread_mutex_lock(&log_lock);
    if (atomic_load(&log_syslog))
        closelog();
    cl_strlcpy(log_ident, ident ? ident : "nube", sizeof(log_ident));
    if ((unsigned)level >= CL_LOG_LEVEL_MAX)
        level = CL_LOG_INFO;
    atomic_store(&log_level, (int)level);
    if (use_syslog)
        openlog(log_ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
    atomic_store(&log_syslog, use_syslog);
    pthread_mutex_unlock(&log_lock);
}

int cl_log_level_parse(const char *s, cl_log_level *out)
{
    if (!s)
        return -EINVAL;
    for (int i = 0; i < CL_LOG_LEVEL_MAX; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (cl_log_level)i;
            return 0;
        }
    }
    /* "warn" is what people type, and what the line shows. */
    if (strcasecmp(s, "warn") == 0) {
        *out = CL_LOG_WARN;
        return 0;
    }
    return -EINVAL;
}

const char *cl_log_level_name(cl_log_level level)
{
    if ((unsigned)level >= CL_LOG_LEVEL_MAX)
        return "unknown";
    return level_names[level];
}

/* Copy of req_id kept per thread; longer ids are truncated (they are ours, and short). */
void cl_log_set_request_id(const char *req_id)
{
    if (!req_id) {
        log_req_id[0] = '\0';
        return;
    }
    cl_strlcpy(log_req_id, req_id, sizeof(log_req_id));
}

/* The calling thread's request id, or NULL when none is set. Valid until the thread
 * sets another one. */
const char *cl_log_request_id(void) { return log_req_id[0] ? log_req_id : NULL; }

bool cl_log_enabled(cl_log_level level) { return (int)level >= atomic_load(&log_level); }

/* Replace control characters in place: newlines in a message would let user input
 * forge log lines. */
static void sanitize(char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\n' || c == '\r' || c == '\t')
            *s = ' ';
        else if (c < 0x20 || c == 0x7f)
            *s = '?';
    }
}

/*
 * Format and write one line. Lines longer than LOG_LINE_MAX are cut and end in "...".
 * Thread-safe; never fails visibly (a logger that cannot write has nobody to tell).
 */
void cl_log_write(cl_log_level level, const char *module, const char *fmt, ...)
{
    char line[LOG_LINE_MAX];
    char stamp[40];
    char msg[LOG_LINE_MAX];
    int64_t now;
    va_list ap;
    int n;
    size_t len;

    if ((unsigned)level >= CL_LOG_LEVEL_MAX || !cl_log_enabled(level))
        return;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sanitize(msg);

    now = cl_now_ms();
    cl_time_iso8601(now, false, stamp, sizeof(stamp));
    /* cl_time_iso8601 gives microseconds ("...:50.123000"); keep milliseconds. */
    if (strlen(stamp) > 23)
        stamp[23] = '\0';

    pthread_mutex_lock(&log_lock);
    n = snprintf(line, sizeof(line), "%sZ %s %s[%ld] %s [%s] %s\n", stamp,
                 level_tags[level], log_ident, (long)getpid(), module ? module : "-",
                 log_req_id[0] ? log_req_id : "-", msg);
    if (n < 0) {
        pthread_mutex_unlock(&log_lock);
        return;
    }
    len = (size_t)n;
    if (len >= sizeof(line)) {
        len = sizeof(line) - 1;
        memcpy(line + len - 4, "...\n", 4);
    }
    /* One write(2) per line; retry on EINTR and short writes (a pipe under pressure). */
    for (size_t off = 0; off < len;) {
        ssize_t w = write(STDERR_FILENO, line + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        off += (size_t)w;
    }
    if (atomic_load(&log_syslog)) {
        /* syslog adds its own time, ident and pid; keep module and request id. */
        syslog(level_syslog[level], "%s [%s] %s", module ? module : "-",
               log_req_id[0] ? log_req_id : "-", msg);
    }
    pthread_mutex_unlock(&log_lock);
}
