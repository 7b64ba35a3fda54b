/*
 * test_log.c - unit tests for libcloud/log.c. stderr is redirected (dup2) to a file in a
 * temporary directory, and the lines the logger wrote are read back and checked for the
 * level, daemon, module and request id, and for whole lines under concurrent writers.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
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
#include "log.h"
#include "util.h"

typedef struct {
    char dir[64];
    char path[128];
    int saved_stderr;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    int fd;

    if (!f)
        return -1;
    cl_strlcpy(f->dir, "/tmp/test_log.XXXXXX", sizeof(f->dir));
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof(f->path), "%s/stderr", f->dir);
    fd = open(f->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    fflush(stderr);
    f->saved_stderr = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
    cl_log_init("nube-test", CL_LOG_DEBUG, false);
    cl_log_set_request_id(NULL);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    dup2(f->saved_stderr, STDERR_FILENO);
    close(f->saved_stderr);
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Whole content of the captured stderr; caller frees. */
static char *captured(const fixture *f)
{
    FILE *fp = fopen(f->path, "re");
    char *buf;
    long n;

    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    buf = calloc(1, (size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    return buf;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;

    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void test_line_format(void **state)
{
    fixture *f = *state;
    char pidtag[64];
    _cleanup_free_ char *out = NULL;

    cl_log_set_request_id("req-0f1e2d3c-4b5a-4968-7766-554433221100");
    assert_string_equal(cl_log_request_id(), "req-0f1e2d3c-4b5a-4968-7766-554433221100");
    cl_info("api.servers", "created server %s", "vm1");
    cl_log_set_request_id(NULL);
    assert_null(cl_log_request_id());
    cl_err("sched.claims", "no host for %d vcpus", 64);

    out = captured(f);
    assert_int_equal(count_lines(out), 2);
    snprintf(pidtag, sizeof(pidtag), " nube-test[%ld] ", (long)getpid());
    assert_non_null(strstr(out, pidtag));
    /* Timestamp shape: 2026-11-26T06:14:50.123Z */
    assert_int_equal(out[4], '-');
    assert_int_equal(out[10], 'T');
    assert_int_equal(out[19], '.');
    assert_int_equal(out[23], 'Z');
    assert_non_null(strstr(out, "Z INFO  nube-test["));
    assert_non_null(strstr(out, "] api.servers [req-0f1e2d3c-4b5a-4968-7766-554433221100] "
                                "created server vm1\n"));
    assert_non_null(strstr(out, "Z ERROR nube-test["));
    assert_non_null(strstr(out, "] sched.claims [-] no host for 64 vcpus\n"));
}

static void test_level_filter(void **state)
{
    fixture *f = *state;
    _cleanup_free_ char *out = NULL;

    cl_log_init("nube-test", CL_LOG_WARN, false);
    assert_false(cl_log_enabled(CL_LOG_DEBUG));
    assert_false(cl_log_enabled(CL_LOG_INFO));
    assert_true(cl_log_enabled(CL_LOG_WARN));
    assert_true(cl_log_enabled(CL_LOG_ERROR));
    cl_debug("m", "hidden debug");
    cl_info("m", "hidden info");
    cl_warn("m", "shown warning");
    out = captured(f);
    assert_null(strstr(out, "hidden"));
    assert_non_null(strstr(out, "WARN  nube-test["));
    assert_non_null(strstr(out, "shown warning"));
    assert_int_equal(count_lines(out), 1);
}

static void test_control_chars_cannot_forge_lines(void **state)
{
    fixture *f = *state;
    _cleanup_free_ char *out = NULL;

    cl_info("api", "name=%s", "evil\n2026-01-01T00:00:00.000Z ERROR forged\x1b[31m");
    out = captured(f);
    assert_int_equal(count_lines(out), 1);
    assert_null(strchr(out, '\x1b'));
}

static void test_long_line_is_bounded(void **state)
{
    fixture *f = *state;
    _cleanup_free_ char *out = NULL;
    char *big = malloc(20000);

    assert_non_null(big);
    memset(big, 'x', 19999);
    big[19999] = '\0';
    cl_info("api", "%s", big);
    free(big);
    out = captured(f);
    assert_int_equal(count_lines(out), 1);
    assert_true(strlen(out) <= 4096);
    assert_non_null(strstr(out, "xxx...\n"));
}

static void test_levels_parse(void **state)
{
    cl_log_level l = CL_LOG_ERROR;

    (void)state;
    assert_int_equal(cl_log_level_parse("debug", &l), 0);
    assert_int_equal(l, CL_LOG_DEBUG);
    assert_int_equal(cl_log_level_parse("INFO", &l), 0);
    assert_int_equal(l, CL_LOG_INFO);
    assert_int_equal(cl_log_level_parse("Warning", &l), 0);
    assert_int_equal(l, CL_LOG_WARN);
    assert_int_equal(cl_log_level_parse("warn", &l), 0);
    assert_int_equal(l, CL_LOG_WARN);
    assert_int_equal(cl_log_level_parse("error", &l), 0);
    assert_int_equal(l, CL_LOG_ERROR);
    assert_int_equal(cl_log_level_parse("loud", &l), -EINVAL);
    assert_int_equal(cl_log_level_parse(NULL, &l), -EINVAL);
    assert_int_equal(l, CL_LOG_ERROR);
    for (int i = 0; i < CL_LOG_LEVEL_MAX; i++) {
        assert_int_equal(cl_log_level_parse(cl_log_level_name((cl_log_level)i), &l), 0);
        assert_int_equal(l, i);
    }
}

#define WRITERS 8
#define LINES_EACH 200

static void *writer(void *arg)
{
    char rid[32];

    snprintf(rid, sizeof(rid), "req-t%d", (int)(intptr_t)arg);
    cl_log_set_request_id(rid);
    for (int i = 0; i < LINES_EACH; i++)
        cl_info("bus", "thread %d line %d padding-padding-padding-padding-padding",
                (int)(intptr_t)arg, i);
    /* The id is per thread: nobody else's set it, and it stays ours. */
    return (void *)(intptr_t)(strcmp(cl_log_request_id(), rid) == 0);
}

static void test_threads_request_id_and_whole_lines(void **state)
{
    fixture *f = *state;
    pthread_t th[WRITERS];
    _cleanup_free_ char *out = NULL;
    char *save = NULL;
    size_t n = 0;

    cl_log_set_request_id("req-main");
    for (int i = 0; i < WRITERS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, writer, (void *)(intptr_t)i), 0);
    for (int i = 0; i < WRITERS; i++) {
        void *ok = NULL;
        pthread_join(th[i], &ok);
        assert_true(ok != NULL);
    }
    assert_string_equal(cl_log_request_id(), "req-main");
    cl_log_set_request_id(NULL);

    out = captured(f);
    assert_int_equal(count_lines(out), WRITERS * LINES_EACH);
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        int t = -1, i = -1;
        const char *p = strstr(line, " bus [req-t");

        assert_non_null(p);
        assert_int_equal(sscanf(p, " bus [req-t%d] thread %d line", &t, &i), 2);
        assert_non_null(strstr(line, "padding-padding-padding-padding-padding"));
        n++;
    }
    assert_int_equal(n, WRITERS * LINES_EACH);
}

static void test_syslog_does_not_break_stderr(void **state)
{
    fixture *f = *state;
    _cleanup_free_ char *out = NULL;

    cl_log_init("nube-test", CL_LOG_INFO, true);
    cl_info("api", "to both");
    cl_log_init("nube-test", CL_LOG_INFO, false);
    out = captured(f);
    assert_non_null(strstr(out, "] api [-] to both\n"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_line_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_level_filter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_control_chars_cannot_forge_lines, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_long_line_is_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_levels_parse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads_request_id_and_whole_lines, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_syslog_does_not_break_stderr, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
