/*
 * test_daemon.c - unit tests for libcloud/daemon.c: options and exit codes, config
 * handling, and the signal-driven stop (request_stop from a thread, SIGINT from outside,
 * SIGHUP ignored). stdout is captured (dup2 to a file in a mkdtemp dir) to check what
 * --help and --version print.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cleanup.h"
#include "daemon.h"
#include "nube-version.h"
#include "util.h"

typedef struct {
    cl_common_cfg common;
    int64_t port;
    char *name;
} test_cfg;

static const cl_cfg_key keys[] = {
    CL_DAEMON_COMMON_KEYS(test_cfg),
    {"svc", "port", CL_CFG_INT, "8000", 0, 65535, offsetof(test_cfg, port), "TCP port."},
    {"svc", "name", CL_CFG_STR, "alpha", 0, -1, offsetof(test_cfg, name), "A name."},
};

typedef struct {
    char dir[64];
    char conf[128];    /* a valid file */
    char bad[128];     /* an invalid one */
    char absent[128];  /* never created */
    char out[128];     /* captured stdout */
    cl_daemon_info info;
    test_cfg cfg;
} fixture;

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "we");

    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));

    if (!f)
        return -1;
    cl_strlcpy(f->dir, "/tmp/test_daemon.XXXXXX", sizeof(f->dir));
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->conf, sizeof(f->conf), "%s/ok.conf", f->dir);
    snprintf(f->bad, sizeof(f->bad), "%s/bad.conf", f->dir);
    snprintf(f->absent, sizeof(f->absent), "%s/absent.conf", f->dir);
    snprintf(f->out, sizeof(f->out), "%s/stdout", f->dir);
    write_file(f->conf, "log_level = warning\n[svc]\nport = 9000\nname = beta\n");
    write_file(f->bad, "[svc]\nport = 70000\n");
    f->info.name = "nube-test";
    f->info.summary = "a test daemon";
    f->info.description = "Runs nothing.\nExists for tests.";
    f->info.default_config = f->absent;
    f->info.keys = keys;
    f->info.nkeys = CL_ARRAY_SIZE(keys);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    unlink(f->conf);
    unlink(f->bad);
    unlink(f->out);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Run cl_daemon_init with stdout captured; returns its result, output in *out. */
static int run_init(fixture *f, char **argv, int *exit_code, char **out)
{
    int argc = 0, saved, fd, r;
    FILE *fp;
    long n;

    while (argv[argc])
        argc++;
    fflush(stdout);
    saved = dup(STDOUT_FILENO);
    fd = open(f->out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    dup2(fd, STDOUT_FILENO);
    close(fd);
    *exit_code = -99;
    r = cl_daemon_init(&f->info, argc, argv, &f->cfg, exit_code);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);

    fp = fopen(f->out, "re");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    *out = calloc(1, (size_t)n + 1);
    assert_non_null(*out);
    assert_int_equal(fread(*out, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    return r;
}

static void test_version(void **state)
{
    fixture *f = *state;
    char *argv[] = {"nube-test", "--version", NULL};
    char *argv2[] = {"nube-test", "-V", NULL};
    _cleanup_free_ char *out = NULL, *out2 = NULL;
    char want[64];
    int ec;

    snprintf(want, sizeof(want), "nube-test %s\n", NUBE_VERSION);
    assert_int_equal(run_init(f, argv, &ec, &out), 0);
    assert_int_equal(ec, 0);
    assert_string_equal(out, want);
    assert_int_equal(run_init(f, argv2, &ec, &out2), 0);
    assert_int_equal(ec, 0);
    assert_string_equal(out2, want);
    assert_string_equal(cl_version(), NUBE_VERSION);
}

static void test_help(void **state)
{
    fixture *f = *state;
    char *argv[] = {"nube-test", "--help", NULL};
    _cleanup_free_ char *out = NULL;
    static const char *const sections[] = {"NAME\n", "SYNOPSIS\n", "DESCRIPTION\n",
                                           "OPTIONS\n", "CONFIGURATION\n", "SIGNALS\n",
                                           "FILES\n", "EXIT STATUS\n"};
    const char *prev;
    int ec;

    assert_int_equal(run_init(f, argv, &ec, &out), 0);
    assert_int_equal(ec, 0);
    /* Every man-page section, in order. */
    prev = out;
    for (size_t i = 0; i < CL_ARRAY_SIZE(sections); i++) {
        const char *p = strstr(prev, sections[i]);
        if (!p)
            fail_msg("section %s missing or out of order", sections[i]);
        prev = p;
    }
    assert_non_null(strstr(out, "    nube-test - a test daemon\n"));
    assert_non_null(strstr(out, "    Runs nothing.\n    Exists for tests.\n"));
    assert_non_null(strstr(out, "    [svc] port = 8000  (integer, 0..65535) TCP port.\n"));
    assert_non_null(strstr(out, "[DEFAULT] log_level = info"));
    assert_non_null(strstr(out, "--check-config"));
    assert_non_null(strstr(out, f->absent));
    assert_non_null(strstr(out, "SIGHUP"));
}

static void test_print_sample(void **state)
{
    fixture *f = *state;
    char *argv[] = {"nube-test", "--print-config-sample", NULL};
    _cleanup_free_ char *out = NULL;
    int ec;

    assert_int_equal(run_init(f, argv, &ec, &out), 0);
    assert_int_equal(ec, 0);
    assert_non_null(strstr(out, "[svc]\n"));
    assert_non_null(strstr(out, "port = 8000\n"));
}

static void test_usage_errors(void **state)
{
    fixture *f = *state;
    char *unknown[] = {"nube-test", "--bogus", NULL};
    char *noarg[] = {"nube-test", "-c", NULL};
    char *extra[] = {"nube-test", "stray", NULL};
    _cleanup_free_ char *o1 = NULL, *o2 = NULL, *o3 = NULL;
    int ec;

    assert_int_equal(run_init(f, unknown, &ec, &o1), -1);
    assert_int_equal(ec, 2);
    assert_int_equal(run_init(f, noarg, &ec, &o2), -1);
    assert_int_equal(ec, 2);
    assert_int_equal(run_init(f, extra, &ec, &o3), -1);
    assert_int_equal(ec, 2);
}

static void test_config_errors(void **state)
{
    fixture *f = *state;
    char *bad[] = {"nube-test", "-c", f->bad, NULL};
    char *absent[] = {"nube-test", "--config", f->absent, NULL};
    char *check_bad[] = {"nube-test", "--check-config", "-c", f->bad, NULL};
    _cleanup_free_ char *o1 = NULL, *o2 = NULL, *o3 = NULL, *o4 = NULL;
    char level[160];
    char *bad_level[] = {"nube-test", "-c", level, NULL};
    int ec;

    assert_int_equal(run_init(f, bad, &ec, &o1), -1);
    assert_int_equal(ec, 1);
    /* An explicit file that does not exist is an error (the default one is not). */
    assert_int_equal(run_init(f, absent, &ec, &o2), -1);
    assert_int_equal(ec, 1);
    assert_int_equal(run_init(f, check_bad, &ec, &o3), -1);
    assert_int_equal(ec, 1);
    snprintf(level, sizeof(level), "%s/level.conf", f->dir);
    write_file(level, "log_level = loud\n");
    assert_int_equal(run_init(f, bad_level, &ec, &o4), -1);
    assert_int_equal(ec, 1);
    unlink(level);
}

static void test_check_config_ok(void **state)
{
    fixture *f = *state;
    char *argv[] = {"nube-test", "--check-config", "--config", f->conf, NULL};
    _cleanup_free_ char *out = NULL;
    int ec;

    assert_int_equal(run_init(f, argv, &ec, &out), 0);
    assert_int_equal(ec, 0);
    assert_non_null(strstr(out, "configuration OK"));
    assert_null(f->cfg.name); /* freed: nothing to own after an exit */
}

static void *stopper(void *arg)
{
    (void)arg;
    cl_daemon_request_stop();
    return NULL;
}

static void test_run_and_request_stop(void **state)
{
    fixture *f = *state;
    char *argv[] = {"nube-test", "-c", f->conf, NULL};
    _cleanup_free_ char *out = NULL;
    pthread_t th;
    sigset_t cur;
    struct sigaction sa;
    int ec;

    assert_int_equal(run_init(f, argv, &ec, &out), 1);
    assert_int_equal(f->cfg.port, 9000);
    assert_string_equal(f->cfg.name, "beta");
    assert_string_equal(f->cfg.common.log_level, "warning");
    assert_false(cl_daemon_stopping());

    /* The stop signals are blocked (threads created now inherit that) and SIGPIPE is
     * ignored. */
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    assert_true(sigismember(&cur, SIGTERM));
    assert_true(sigismember(&cur, SIGINT));
    assert_true(sigismember(&cur, SIGHUP));
    sigaction(SIGPIPE, NULL, &sa);
    assert_true(sa.sa_handler == SIG_IGN);

    assert_int_equal(pthread_create(&th, NULL, stopper, NULL), 0);
    cl_daemon_wait();
    pthread_join(th, NULL);
    assert_true(cl_daemon_stopping());
    cl_daemon_done(&f->info, &f->cfg);
    assert_null(f->cfg.name);
}

static void test_default_config_missing_runs_with_defaults(void **state)
{
    fixture *f = *state;
    char *argv[] = {"nube-test", NULL};
    _cleanup_free_ char *out = NULL;
    int ec;

    assert_int_equal(run_init(f, argv, &ec, &out), 1);
    assert_int_equal(f->cfg.port, 8000);
    assert_string_equal(f->cfg.name, "alpha");
    assert_string_equal(f->cfg.common.state_dir, "/var/lib/nube");
    /* SIGHUP is ignored; SIGINT from outside stops the wait. Both stay pending (blocked)
     * until cl_daemon_wait collects them, in order. */
    assert_int_equal(kill(getpid(), SIGHUP), 0);
    assert_int_equal(kill(getpid(), SIGINT), 0);
    cl_daemon_wait();
    assert_true(cl_daemon_stopping());
    cl_daemon_done(&f->info, &f->cfg);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_version),
        T(test_help),
        T(test_print_sample),
        T(test_usage_errors),
        T(test_config_errors),
        T(test_check_config_ok),
        T(test_run_and_request_stop),
        T(test_default_config_missing_runs_with_defaults),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
