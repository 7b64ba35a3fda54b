/*
 * test_util.c - unit tests for libcloud/util.c: UUIDs, clocks, bounded copies,
 * integer parsing and ISO 8601 formatting.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "util.h"

static void test_uuid_new_is_valid_v4_and_unique(void **state)
{
    char a[CL_UUID_LEN], b[CL_UUID_LEN];

    (void)state;
    cl_uuid_new(a);
    cl_uuid_new(b);
    assert_int_equal(strlen(a), 36);
    assert_true(cl_uuid_valid(a));
    assert_string_not_equal(a, b);
    assert_int_equal(a[14], '4'); /* version nibble */
    assert_non_null(strchr("89ab", a[19])); /* RFC 4122 variant */
    for (size_t i = 0; i < 36; i++)
        assert_false(a[i] >= 'A' && a[i] <= 'F');
}

static void test_uuid_valid(void **state)
{
    (void)state;
    assert_true(cl_uuid_valid("0f1e2d3c-4b5a-4968-7766-554433221100"));
    assert_true(cl_uuid_valid("0F1E2D3C-4B5A-4968-7766-554433221100"));
    assert_false(cl_uuid_valid(NULL));
    assert_false(cl_uuid_valid(""));
    assert_false(cl_uuid_valid("0f1e2d3c4b5a49687766554433221100"));
    assert_false(cl_uuid_valid("0f1e2d3c-4b5a-4968-7766-55443322110"));
    assert_false(cl_uuid_valid("0f1e2d3c-4b5a-4968-7766-5544332211000"));
    assert_false(cl_uuid_valid("0f1e2d3c-4b5a-4968-7766-55443322110g"));
    assert_false(cl_uuid_valid("0f1e2d3c-4b5a-4968+7766-554433221100"));
}

static void test_clocks(void **state)
{
    int64_t now = cl_now_ms(), m1 = cl_mono_ms(), m2;

    (void)state;
    /* After 2020-01-01 and before 2100. */
    assert_true(now > INT64_C(1577836800000));
    assert_true(now < INT64_C(4102444800000));
    m2 = cl_mono_ms();
    assert_true(m2 >= m1);
}

static void test_strlcpy(void **state)
{
    char buf[6];

    (void)state;
    assert_int_equal(cl_strlcpy(buf, "abc", sizeof(buf)), 3);
    assert_string_equal(buf, "abc");
    assert_int_equal(cl_strlcpy(buf, "abcdefgh", sizeof(buf)), 8);
    assert_string_equal(buf, "abcde");
    assert_int_equal(cl_strlcpy(buf, "abcde", sizeof(buf)), 5);
    assert_string_equal(buf, "abcde");
    assert_int_equal(cl_strlcpy(buf, "", sizeof(buf)), 0);
    assert_string_equal(buf, "");
    buf[0] = 'x';
    assert_int_equal(cl_strlcpy(buf, "zz", 0), 2);
    assert_int_equal(buf[0], 'x');
    assert_int_equal(cl_strlcpy(buf, "zz", 1), 2);
    assert_string_equal(buf, "");
}

static void test_parse_int64(void **state)
{
    int64_t v = 7;

    (void)state;
    assert_int_equal(cl_parse_int64("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(cl_parse_int64("-42", &v), 0);
    assert_int_equal(v, -42);
    assert_int_equal(cl_parse_int64("+5", &v), 0);
    assert_int_equal(v, 5);
    assert_int_equal(cl_parse_int64("9223372036854775807", &v), 0);
    assert_true(v == INT64_MAX);
    assert_int_equal(cl_parse_int64("-9223372036854775808", &v), 0);
    assert_true(v == INT64_MIN);

    v = 7;
    assert_int_equal(cl_parse_int64("9223372036854775808", &v), -ERANGE);
    assert_int_equal(cl_parse_int64("-9223372036854775809", &v), -ERANGE);
    assert_int_equal(cl_parse_int64("", &v), -EINVAL);
    assert_int_equal(cl_parse_int64(NULL, &v), -EINVAL);
    assert_int_equal(cl_parse_int64("12a", &v), -EINVAL);
    assert_int_equal(cl_parse_int64(" 12", &v), -EINVAL);
    assert_int_equal(cl_parse_int64("12 ", &v), -EINVAL);
    assert_int_equal(cl_parse_int64("-", &v), -EINVAL);
    assert_int_equal(cl_parse_int64("1.5", &v), -EINVAL);
    assert_int_equal(cl_parse_int64("0x10", &v), -EINVAL);
    assert_int_equal(v, 7); /* untouched on every failure */
}

static void test_iso8601(void **state)
{
    char buf[64];

    (void)state;
    /* 2026-11-26T06:14:50.123 UTC */
    cl_time_iso8601(INT64_C(1795673690123), true, buf, sizeof(buf));
    assert_string_equal(buf, "2026-11-26T06:14:50Z");
    cl_time_iso8601(INT64_C(1795673690123), false, buf, sizeof(buf));
    assert_string_equal(buf, "2026-11-26T06:14:50.123000");
    cl_time_iso8601(0, true, buf, sizeof(buf));
    assert_string_equal(buf, "1970-01-01T00:00:00Z");
    cl_time_iso8601(-1, false, buf, sizeof(buf));
    assert_string_equal(buf, "1969-12-31T23:59:59.999000");
    /* Truncates safely into a short buffer. */
    cl_time_iso8601(0, true, buf, 5);
    assert_string_equal(buf, "1970");
}

/* Every byte reaches the pipe (sized to hold them all, so no reader thread is needed);
 * a closed descriptor gives -EBADF. */
static void test_write_all(void **state)
{
    int p[2];
    const size_t len = 256 * 1024;
    char *buf = malloc(len), *back = malloc(len);

    (void)state;
    assert_non_null(buf);
    assert_non_null(back);
    for (size_t i = 0; i < len; i++)
        buf[i] = (char)(i * 7);
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    assert_true(fcntl(p[1], F_SETPIPE_SZ, (int)len) >= (int)len);
    assert_int_equal(cl_write_all(p[1], buf, len), 0);
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(p[0], back + got, len - got);
        assert_true(r > 0);
        got += (size_t)r;
    }
    assert_memory_equal(buf, back, len);
    close(p[0]);
    close(p[1]);
    assert_int_equal(cl_write_all(p[1], buf, 1), -EBADF);
    free(buf);
    free(back);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uuid_new_is_valid_v4_and_unique),
        cmocka_unit_test(test_uuid_valid),
        cmocka_unit_test(test_clocks),
        cmocka_unit_test(test_strlcpy),
        cmocka_unit_test(test_parse_int64),
        cmocka_unit_test(test_iso8601),
        cmocka_unit_test(test_write_all),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
