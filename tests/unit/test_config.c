/*
 * test_config.c - unit tests for libcloud/config.c. INI files are written to a mkdtemp
 * directory and loaded through a small key table covering every type; errors must name
 * the file, the line, the section and the key.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cleanup.h"
#include "config.h"
#include "util.h"

typedef struct {
    char *log_level;
    bool use_syslog;
    char *listen;
    int64_t port;
    int64_t workers;
    double ratio;
    bool debug_http;
    char *token;
} test_cfg;

static const cl_cfg_key keys[] = {
    {"DEFAULT", "log_level", CL_CFG_STR, "info", 0, -1, offsetof(test_cfg, log_level),
     "Lowest level logged."},
    {"DEFAULT", "use_syslog", CL_CFG_BOOL, "false", 0, -1, offsetof(test_cfg, use_syslog),
     "Also log to syslog."},
    {"api", "listen", CL_CFG_STR, "127.0.0.1", 0, -1, offsetof(test_cfg, listen),
     "Address to listen on. This help is deliberately long so that the sample writer has "
     "to wrap it over several comment lines, which must all still load back."},
    {"api", "port", CL_CFG_INT, "8774", 0, 65535, offsetof(test_cfg, port), "TCP port."},
    {"api", "workers", CL_CFG_INT, NULL, 1, -1, offsetof(test_cfg, workers),
     "Unbounded (min > max)."},
    {"sched", "ratio", CL_CFG_DOUBLE, "4.0", 0.1, 100, offsetof(test_cfg, ratio),
     "Allocation ratio."},
    {"sched", "debug_http", CL_CFG_BOOL, NULL, 0, -1, offsetof(test_cfg, debug_http), NULL},
    {"auth", "token", CL_CFG_STR, NULL, 0, -1, offsetof(test_cfg, token), "Secret."},
};
#define NKEYS CL_ARRAY_SIZE(keys)

typedef struct {
    char dir[64];
    char path[128];
    test_cfg cfg;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));

    if (!f)
        return -1;
    cl_strlcpy(f->dir, "/tmp/test_config.XXXXXX", sizeof(f->dir));
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof(f->path), "%s/test.conf", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    cl_config_free(keys, NKEYS, &f->cfg);
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void write_file(const fixture *f, const char *text)
{
    FILE *fp = fopen(f->path, "we");

    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
}

/* Load text; returns the result, message in err. */
static int load(fixture *f, const char *text, cl_error *err)
{
    cl_config_free(keys, NKEYS, &f->cfg);
    write_file(f, text);
    return cl_config_load(f->path, keys, NKEYS, &f->cfg, err);
}

/* Expect -EINVAL and a message "<path>:<line>: <rest>". */
static void expect_error(fixture *f, const char *text, int line, const char *rest)
{
    cl_error err = {0};
    char want[512];

    snprintf(want, sizeof(want), "%s:%d: %s", f->path, line, rest);
    assert_int_equal(load(f, text, &err), -EINVAL);
    assert_string_equal(err.message, want);
}

static void test_defaults(void **state)
{
    fixture *f = *state;
    cl_error err = {0};

    assert_int_equal(cl_config_defaults(keys, NKEYS, &f->cfg, &err), 0);
    assert_string_equal(f->cfg.log_level, "info");
    assert_false(f->cfg.use_syslog);
    assert_string_equal(f->cfg.listen, "127.0.0.1");
    assert_int_equal(f->cfg.port, 8774);
    assert_int_equal(f->cfg.workers, 0);
    assert_true(f->cfg.ratio == 4.0);
    assert_false(f->cfg.debug_http);
    assert_non_null(f->cfg.token); /* NULL default: empty, never a NULL pointer */
    assert_string_equal(f->cfg.token, "");
}

static void test_bad_default_is_reported(void **state)
{
    static const cl_cfg_key bad[] = {
        {"x", "s", CL_CFG_STR, "v", 0, -1, offsetof(test_cfg, listen), NULL},
        {"x", "n", CL_CFG_INT, "70000", 0, 65535, offsetof(test_cfg, port), NULL},
        {"x", "t", CL_CFG_STR, "w", 0, -1, offsetof(test_cfg, token), NULL},
    };
    fixture *f = *state;
    cl_error err = {0};

    assert_int_equal(cl_config_defaults(bad, CL_ARRAY_SIZE(bad), &f->cfg, &err), -EINVAL);
    assert_non_null(strstr(err.message, "[x] n: bad default: 70000 is above the maximum"));
    /* Strings already set stay owned by cfg; later ones are NULL (free is safe). */
    assert_string_equal(f->cfg.listen, "v");
    assert_null(f->cfg.token);
    cl_config_free(bad, CL_ARRAY_SIZE(bad), &f->cfg);
}

static void test_every_type(void **state)
{
    fixture *f = *state;
    cl_error err = {0};

    assert_int_equal(load(f,
                          "; comment\n"
                          "log_level = debug\n"
                          "\n"
                          "[DEFAULT]\n"
                          "use_syslog = YES\n"
                          "[api]\n"
                          "listen = 0.0.0.0 ; inline comment\n"
                          "  port=0\n"
                          "workers = -3\n"
                          "\t# indented comment\n"
                          "[sched]\n"
                          "ratio = 1.5\n"
                          "debug_http = on\n"
                          "[auth]\n"
                          "token = s3cr=t\n",
                          &err),
                     0);
    assert_string_equal(f->cfg.log_level, "debug");
    assert_true(f->cfg.use_syslog);
    assert_string_equal(f->cfg.listen, "0.0.0.0");
    assert_int_equal(f->cfg.port, 0);
    assert_int_equal(f->cfg.workers, -3); /* min > max: no bounds */
    assert_true(f->cfg.ratio == 1.5);
    assert_true(f->cfg.debug_http);
    assert_string_equal(f->cfg.token, "s3cr=t");
}

static void test_booleans(void **state)
{
    static const char *const yes[] = {"true", "True", "yes", "on", "1"};
    static const char *const no[] = {"false", "NO", "off", "0"};
    fixture *f = *state;
    cl_error err;

    assert_int_equal(cl_config_defaults(keys, NKEYS, &f->cfg, &err), 0);
    for (size_t i = 0; i < CL_ARRAY_SIZE(yes); i++) {
        f->cfg.use_syslog = false;
        assert_int_equal(
            cl_config_set(keys, NKEYS, &f->cfg, "DEFAULT", "use_syslog", yes[i], &err), 0);
        assert_true(f->cfg.use_syslog);
    }
    for (size_t i = 0; i < CL_ARRAY_SIZE(no); i++) {
        f->cfg.use_syslog = true;
        assert_int_equal(
            cl_config_set(keys, NKEYS, &f->cfg, "DEFAULT", "use_syslog", no[i], &err), 0);
        assert_false(f->cfg.use_syslog);
    }
    assert_int_equal(
        cl_config_set(keys, NKEYS, &f->cfg, "DEFAULT", "use_syslog", "maybe", &err),
        -EINVAL);
    assert_string_equal(err.message, "[DEFAULT] use_syslog: 'maybe' is not a boolean "
                                     "(true/false, yes/no, on/off, 1/0)");
}

static void test_set(void **state)
{
    fixture *f = *state;
    cl_error err;

    assert_int_equal(cl_config_defaults(keys, NKEYS, &f->cfg, &err), 0);
    assert_int_equal(cl_config_set(keys, NKEYS, &f->cfg, "api", "listen", "::1", &err), 0);
    assert_string_equal(f->cfg.listen, "::1");
    assert_int_equal(cl_config_set(keys, NKEYS, &f->cfg, "api", "nope", "1", &err), -ENOENT);
    assert_string_equal(err.message, "[api] nope: unknown key");
    assert_int_equal(cl_config_set(keys, NKEYS, &f->cfg, "apx", "port", "1", &err), -ENOENT);
    assert_string_equal(err.message, "[apx]: unknown section");
    assert_int_equal(cl_config_set(keys, NKEYS, &f->cfg, "api", "port", "80", &err), 0);
    assert_int_equal(f->cfg.port, 80);
}

static void test_bounds_and_types(void **state)
{
    fixture *f = *state;

    expect_error(f, "[api]\nport = 70000\n", 2,
                 "[api] port: 70000 is above the maximum 65535");
    expect_error(f, "[api]\n\nport = -1\n", 3, "[api] port: -1 is below the minimum 0");
    expect_error(f, "[api]\nport = 80x\n", 2, "[api] port: '80x' is not an integer");
    expect_error(f, "[api]\nport =\n", 2, "[api] port: '' is not an integer");
    expect_error(f, "[api]\nport = 99999999999999999999\n", 2,
                 "[api] port: '99999999999999999999' is not an integer");
    expect_error(f, "[sched]\nratio = 0.05\n", 2,
                 "[sched] ratio: 0.05 is below the minimum 0.1");
    expect_error(f, "[sched]\nratio = 101\n", 2,
                 "[sched] ratio: 101 is above the maximum 100");
    expect_error(f, "[sched]\nratio = fast\n", 2, "[sched] ratio: 'fast' is not a number");
    expect_error(f, "[sched]\nratio = nan\n", 2, "[sched] ratio: 'nan' is not a number");
    expect_error(f, "[sched]\nratio = 0x10\n", 2, "[sched] ratio: '0x10' is not a number");
    expect_error(f, "[sched]\ndebug_http = 2\n", 2,
                 "[sched] debug_http: '2' is not a boolean (true/false, yes/no, on/off, 1/0)");
}

static void test_unknown_and_syntax(void **state)
{
    fixture *f = *state;
    cl_error err;

    expect_error(f, "[api]\nport = 1\n# c\nprot = 2\n", 4, "[api] prot: unknown key");
    /* A key before any section is in [DEFAULT]. */
    expect_error(f, "port = 1\n", 1, "[DEFAULT] port: unknown key");
    /* An unknown section is caught even when it holds no key. */
    expect_error(f, "[api]\nport = 1\n[apii]\n", 3, "[apii]: unknown section");
    expect_error(f, "[api]\n[nope]\nx = 1\n", 2, "[nope]: unknown section");
    expect_error(f, "[api]\nport 8774\n", 2,
                 "syntax error (expected '[section]' or 'key = value')");
    expect_error(f, "[api\nport = 1\n", 1,
                 "syntax error (expected '[section]' or 'key = value')");
    /* The first problem wins, whichever kind it is. */
    expect_error(f, "[api]\nport = x\nbroken line\n", 2, "[api] port: 'x' is not an integer");
    expect_error(f, "[api]\nbroken line\nport = x\n", 2,
                 "syntax error (expected '[section]' or 'key = value')");
    /* Lines longer than inih's buffer are refused instead of split in two. */
    {
        char text[600];
        memset(text, 'a', sizeof(text));
        memcpy(text, "[api]\nlisten = ", 15);
        memcpy(text + sizeof(text) - 2, "\n", 2);
        assert_int_equal(load(f, text, &err), -EINVAL);
        assert_non_null(strstr(err.message, ":2: line is longer than"));
    }
}

static void test_duplicates_last_wins(void **state)
{
    fixture *f = *state;
    cl_error err;

    assert_int_equal(
        load(f, "[api]\nport = 1\nlisten = a\n[sched]\nratio=2\n[api]\nport = 2\nlisten = b\n",
             &err),
        0);
    assert_int_equal(f->cfg.port, 2);
    assert_string_equal(f->cfg.listen, "b");
}

static void test_missing_file(void **state)
{
    fixture *f = *state;
    cl_error err = {0};
    char path[160];

    snprintf(path, sizeof(path), "%s/absent.conf", f->dir);
    assert_int_equal(cl_config_load(path, keys, NKEYS, &f->cfg, &err), -ENOENT);
    assert_non_null(strstr(err.message, "absent.conf"));
    assert_int_equal(err.code, CL_E_NOT_FOUND);
    /* Defaults were applied nonetheless. */
    assert_int_equal(f->cfg.port, 8774);
}

/* Capture a printer's output into a string. */
static char *capture(void (*printer)(FILE *, const cl_cfg_key *, size_t))
{
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);

    assert_non_null(mem);
    printer(mem, keys, NKEYS);
    fclose(mem);
    return buf;
}

static void test_help(void **state)
{
    fixture *f = *state;
    _cleanup_free_ char *help = capture(cl_config_print_help);
    cl_error err = {0};

    assert_non_null(strstr(help, "[api] port = 8774  (integer, 0..65535) TCP port.\n"));
    assert_non_null(strstr(help, "[sched] ratio = 4.0  (number, 0.1..100) Allocation ratio.\n"));
    assert_non_null(strstr(help, "[DEFAULT] use_syslog = false  (boolean) Also log"));
    assert_non_null(strstr(help, "[api] workers = 0  (integer) Unbounded"));
    assert_non_null(strstr(help, "[auth] token =   (string) Secret.\n"));
    /* It parses back too (each line reads as a known section header). */
    assert_int_equal(load(f, help, &err), 0);
}

static void test_sample_loads_back(void **state)
{
    fixture *f = *state;
    _cleanup_free_ char *sample = capture(cl_config_print_sample);
    cl_error err = {0};
    char *p;
    size_t longest = 0, cur = 0;

    assert_non_null(strstr(sample, "[DEFAULT]\n"));
    assert_non_null(strstr(sample, "\n[api]\n"));
    assert_non_null(strstr(sample, "# (integer, 0..65535)\nport = 8774\n"));
    assert_non_null(strstr(sample, "token = \n"));
    /* Each section header appears once even though [api] keys are listed together. */
    p = strstr(sample, "[api]");
    assert_null(strstr(p + 1, "[api]"));
    for (p = sample; *p; p++) {
        cur = *p == '\n' ? 0 : cur + 1;
        longest = cur > longest ? cur : longest;
    }
    assert_true(longest <= 80);

    assert_int_equal(load(f, sample, &err), 0);
    assert_string_equal(f->cfg.listen, "127.0.0.1");
    assert_int_equal(f->cfg.port, 8774);
    assert_true(f->cfg.ratio == 4.0);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_defaults),       T(test_bad_default_is_reported),
        T(test_every_type),     T(test_booleans),
        T(test_set),            T(test_bounds_and_types),
        T(test_unknown_and_syntax), T(test_duplicates_last_wins),
        T(test_missing_file),   T(test_help),
        T(test_sample_loads_back),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
