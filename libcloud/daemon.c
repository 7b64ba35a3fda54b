/*
 * daemon.c - the lifecycle every nube daemon shares: options, config, logging, signals,
 * waiting for the stop request.
 *
 * Signals are handled synchronously (no signal handlers): cl_daemon_init() blocks
 * SIGTERM, SIGINT and SIGHUP with pthread_sigmask() before the daemon starts any thread,
 * so every thread inherits the mask and the signals stay pending until the main thread
 * collects them in cl_daemon_wait() with sigtimedwait(2). Nothing then runs in signal
 * context, and a stop is an ordinary return from cl_daemon_wait() followed by an orderly
 * teardown. A thread that hits a fatal error calls cl_daemon_request_stop(), which sets
 * an atomic flag and sends SIGTERM to the process: the same path as an operator's kill.
 * The timeout of sigtimedwait only guards against a signal taken by a thread that some
 * library created with its own mask; the flag is checked on every wake-up.
 */
#include "daemon.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "log.h"
#include "nube-version.h"

#define WAIT_SLICE_MS 500

static atomic_bool stop_requested = false;

enum { OPT_CHECK_CONFIG = 1000, OPT_PRINT_SAMPLE };

static const struct option long_options[] = {
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {"config", required_argument, NULL, 'c'},
    {"check-config", no_argument, NULL, OPT_CHECK_CONFIG},
    {"print-config-sample", no_argument, NULL, OPT_PRINT_SAMPLE},
    {NULL, 0, NULL, 0},
};

static void handled_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
}

/* Consume handled signals already pending (blocked signals stay pending forever): the
 * SIGTERM a cl_daemon_request_stop() sent after cl_daemon_wait() saw its flag must not
 * end a later wait (tests run several lifecycles in one process). */
static void drain_pending(const sigset_t *set)
{
    struct timespec zero = {0, 0};

    while (sigtimedwait(set, NULL, &zero) > 0)
        ;
}

/* Print text with every line indented, as man pages do. */
static void print_indented(FILE *out, const char *text, const char *indent)
{
    bool at_start = true;

    for (const char *p = text; *p; p++) {
        if (at_start && *p != '\n')
            fputs(indent, out);
        fputc(*p, out);
        at_start = *p == '\n';
    }
    if (!at_start)
        fputc('\n', out);
}

static void print_help(const cl_daemon_info *info)
{
    _cleanup_free_ char *ref = NULL;
    size_t ref_len = 0;
    FILE *mem;

    printf("NAME\n    %s - %s\n\n", info->name, info->summary ? info->summary : "");
    printf("SYNOPSIS\n    %s [-c FILE] [--check-config] [--print-config-sample]\n"
           "    %s -h | -V\n\n",
           info->name, info->name);
    printf("DESCRIPTION\n");
    print_indented(stdout, info->description ? info->description : "", "    ");
    printf("\nOPTIONS\n"
           "    -c, --config FILE\n"
           "        Read the configuration from FILE (default: %s). A missing default\n"
           "        file means all defaults; a missing FILE given here is an error.\n\n"
           "    --check-config\n"
           "        Load and check the configuration, report the result and exit.\n\n"
           "    --print-config-sample\n"
           "        Print a complete sample configuration file with every key, its\n"
           "        default value and help, and exit.\n\n"
           "    -h, --help\n        Print this help and exit.\n\n"
           "    -V, --version\n        Print the name and version and exit.\n\n",
           info->default_config ? info->default_config : "none");
    printf("CONFIGURATION\n"
           "    An INI file. Keys before any [section] belong to [DEFAULT]. Unknown\n"
           "    sections or keys and values of the wrong type or out of bounds are\n"
           "    errors naming the file and line. Keys:\n\n");
    /* cl_config_print_help writes to a FILE; capture it to indent it under the heading. */
    mem = open_memstream(&ref, &ref_len);
    if (mem) {
        cl_config_print_help(mem, info->keys, info->nkeys);
        fclose(mem);
        print_indented(stdout, ref ? ref : "", "    ");
    }
    printf("\nSIGNALS\n"
           "    SIGTERM, SIGINT\n        Stop cleanly: finish or hand back work in flight, "
           "then exit 0.\n"
           "    SIGHUP\n        Logged and ignored; restart the daemon to apply a changed "
           "configuration.\n"
           "    SIGPIPE\n        Ignored; a closed connection is an error return.\n\n");
    printf("FILES\n    %s\n        The configuration file.\n"
           "    [DEFAULT] state_dir\n        Where the daemon keeps its state files.\n\n",
           info->default_config ? info->default_config : "(none)");
    printf("EXIT STATUS\n"
           "    0   stopped cleanly, or --help, --version, --check-config succeeded\n"
           "    1   configuration error or fatal runtime error\n"
           "    2   usage error (unknown option, missing argument)\n");
}

static int usage_error(const cl_daemon_info *info, int *out_exit)
{
    fprintf(stderr, "Try '%s --help' for more information.\n", info->name);
    *out_exit = 2;
    return -1;
}

static int config_error(const cl_daemon_info *info, void *cfg, const char *msg,
                        int *out_exit)
{
    fprintf(stderr, "%s: %s\n", info->name, msg);
    cl_config_free(info->keys, info->nkeys, cfg);
    *out_exit = 1;
    return -1;
}

/* SIGPIPE would kill the process when a peer closes a socket we write to. */
static void setup_signals(void)
{
    struct sigaction sa;
    sigset_t set;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPIPE, &sa, NULL);

    handled_signals(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    drain_pending(&set);
    atomic_store(&stop_requested, false);
}

/*
 * See daemon.h. On return 1, cfg holds the loaded configuration (free with
 * cl_daemon_done); on 0 or -1 it holds nothing. Call from main() before creating
 * threads: the signal mask set here is inherited only by threads created afterwards.
 */
int cl_daemon_init(const cl_daemon_info *info, int argc, char **argv, void *cfg,
                   int *out_exit)
{
    const char *config_path = info->default_config;
    bool explicit_config = false, check_only = false;
    cl_common_cfg *common = cfg;
    cl_log_level level;
    cl_error err = {0};
    int opt, r;

    *out_exit = 0;
    /* optind = 0 makes glibc re-initialise getopt, so tests can call us repeatedly. */
    optind = 0;
    while ((opt = getopt_long(argc, argv, "hVc:", long_options, NULL)) != -1) {
        switch (opt) {
        case 'h':
            print_help(info);
            return 0;
        case 'V':
            printf("%s %s\n", info->name, NUBE_VERSION);
            return 0;
        case 'c':
            config_path = optarg;
            explicit_config = true;
            break;
        case OPT_CHECK_CONFIG:
            check_only = true;
            break;
        case OPT_PRINT_SAMPLE:
            cl_config_print_sample(stdout, info->keys, info->nkeys);
            return 0;
        default: /* getopt already named the bad option */
            return usage_error(info, out_exit);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "%s: unexpected argument '%s'\n", info->name, argv[optind]);
        return usage_error(info, out_exit);
    }

    if (config_path) {
        r = cl_config_load(config_path, info->keys, info->nkeys, cfg, &err);
        /* A missing default file means "all defaults" (load applied them already). */
        if (r == -ENOENT && !explicit_config)
            r = 0;
    } else {
        r = cl_config_defaults(info->keys, info->nkeys, cfg, &err);
    }
    if (r < 0)
        return config_error(info, cfg, err.message, out_exit);

    if (cl_log_level_parse(common->log_level, &level) < 0) {
        char msg[CL_ERROR_MSG_MAX];
        snprintf(msg, sizeof(msg),
                 "%s: [DEFAULT] log_level: '%s' is not one of debug, info, warning, error",
                 config_path ? config_path : "defaults", common->log_level);
        return config_error(info, cfg, msg, out_exit);
    }

    if (check_only) {
        printf("%s: configuration OK\n", config_path ? config_path : "defaults");
        cl_config_free(info->keys, info->nkeys, cfg);
        return 0;
    }

    cl_log_init(info->name, level, common->use_syslog);
    setup_signals();
    cl_info("daemon", "%s %s starting (config %s%s)", info->name, NUBE_VERSION,
            config_path ? config_path : "none",
            config_path && access(config_path, F_OK) != 0 ? ", not found: defaults" : "");
    return 1;
}

/*
 * Block until SIGTERM or SIGINT (or cl_daemon_request_stop). SIGHUP is logged and
 * ignored. Main thread only; requires cl_daemon_init() to have blocked the signals.
 */
void cl_daemon_wait(void)
{
    sigset_t set;

    handled_signals(&set);
    while (!atomic_load(&stop_requested)) {
        struct timespec ts = {WAIT_SLICE_MS / 1000, (WAIT_SLICE_MS % 1000) * 1000000L};
        siginfo_t si;
        int sig = sigtimedwait(&set, &si, &ts);

        if (sig < 0)
            continue; /* EAGAIN (slice over) or EINTR: re-check the flag */
        if (sig == SIGHUP) {
            cl_info("daemon", "SIGHUP received (from pid %ld): ignored; restart to "
                              "apply configuration changes",
                    (long)si.si_pid);
            continue;
        }
        cl_info("daemon", "%s received (from pid %ld): stopping",
                sig == SIGTERM ? "SIGTERM" : "SIGINT", (long)si.si_pid);
        atomic_store(&stop_requested, true);
    }
    drain_pending(&set);
}

/* Async-signal-safe: an atomic store and kill(2). */
void cl_daemon_request_stop(void)
{
    atomic_store(&stop_requested, true);
    kill(getpid(), SIGTERM);
}

bool cl_daemon_stopping(void) { return atomic_load(&stop_requested); }

/* Log the stop and free cfg's strings (cfg itself is the caller's). */
void cl_daemon_done(const cl_daemon_info *info, void *cfg)
{
    cl_info("daemon", "%s stopped", info->name);
    cl_config_free(info->keys, info->nkeys, cfg);
}

const char *cl_version(void) { return NUBE_VERSION; }
