/*
 * test_json.c - unit tests for libcloud/json.c: strict bounded parsing, dotted paths
 * and the typed getters with the messages API users see.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "json.h"

static json_object *parse_ok(const char *s)
{
    json_object *o = NULL;
    cl_error err = {0};

    assert_int_equal(cl_json_parse(s, strlen(s), &o, &err), 0);
    assert_non_null(o);
    return o;
}

static void expect_malformed(const char *s, size_t len, const char *needle)
{
    json_object *o = NULL;
    cl_error err = {0};

    assert_int_equal(cl_json_parse(s, len, &o, &err), -EINVAL);
    assert_null(o);
    assert_int_equal(err.code, CL_E_BAD_REQUEST);
    assert_non_null(strstr(err.message, "Malformed request body"));
    if (needle && !strstr(err.message, needle))
        fail_msg("message '%s' lacks '%s'", err.message, needle);
}

static void test_parse_values(void **state)
{
    _cleanup_json_ json_object *a = parse_ok("{\"a\": [1, 2, {\"b\": null}]}\r\n\t ");
    _cleanup_json_ json_object *n = parse_ok("42");
    _cleanup_json_ json_object *s = parse_ok(" \"x\" ");
    _cleanup_json_ json_object *t = parse_ok("true");

    (void)state;
    assert_true(json_object_is_type(a, json_type_object));
    assert_int_equal(json_object_get_int(n), 42);
    assert_string_equal(json_object_get_string(s), "x");
    assert_true(json_object_get_boolean(t));
}

static void test_parse_rejects(void **state)
{
    char deep[CL_JSON_MAX_DEPTH * 2 + 8];
    char ok_deep[CL_JSON_MAX_DEPTH * 2 + 1];
    json_object *o = NULL;

    (void)state;
    expect_malformed("", 0, "empty");
    expect_malformed("   \n", 4, "empty");
    expect_malformed("{} x", 4, "at offset 3");
    expect_malformed("{}{}", 4, "offset");
    expect_malformed("42 7", 4, NULL);
    expect_malformed("{\"a\": 1", 7, NULL);
    expect_malformed("[1, 2,]", 7, NULL);
    expect_malformed("{\"a\":1}\0junk", 12, "NUL");
    /* The length is honoured: a prefix that is valid on its own is not the body. */
    expect_malformed("{\"a\": 1}", 5, NULL);
    /* json-c's NaN/Infinity literals are not JSON (found by fuzz_json: "\r\rNaN"); a
     * string that merely mentions them is fine. */
    expect_malformed("\r\rNaN", 5, "NaN and Infinity");
    expect_malformed("{\"a\": [1, -Infinity]}", strlen("{\"a\": [1, -Infinity]}"),
                     "NaN and Infinity");
    expect_malformed("{\"a\": {\"b\": Infinity}}", strlen("{\"a\": {\"b\": Infinity}}"),
                     "NaN and Infinity");
    {
        _cleanup_json_ json_object *str = parse_ok("{\"NaN\": \"Infinity\", \"x\": 1.5}");
        assert_true(json_object_is_type(str, json_type_object));
    }

    /* Depth: CL_JSON_MAX_DEPTH-1 nested arrays pass, far more fail with a depth error. */
    memset(deep, '[', sizeof(deep));
    expect_malformed(deep, sizeof(deep), "deeper");
    for (int i = 0; i < CL_JSON_MAX_DEPTH - 1; i++) {
        ok_deep[i] = '[';
        ok_deep[CL_JSON_MAX_DEPTH * 2 - 3 - i] = ']';
    }
    assert_int_equal(cl_json_parse(ok_deep, (CL_JSON_MAX_DEPTH - 1) * 2, &o, NULL), 0);
    json_object_put(o);
}

static void test_parse_object(void **state)
{
    _cleanup_json_ json_object *o = NULL;
    cl_error err;

    (void)state;
    assert_int_equal(cl_json_parse_object("[1]", 3, &o, &err), -EINVAL);
    assert_null(o);
    assert_non_null(strstr(err.message, "expected a JSON object"));
    assert_int_equal(cl_json_parse_object("{\"x\":1}", 7, &o, &err), 0);
    assert_non_null(o);
}

static const char body[] =
    "{\"server\": {\"name\": \"vm-1\", \"flavorRef\": \"2\", \"min_count\": 3,"
    " \"big\": 18446744073709551615, \"neg\": -5, \"ctl\": \"a\\u0001b\","
    " \"nul\": \"a\\u0000b\", \"utf\": \"\\u00e9t\\u00e9\", \"nil\": null,"
    " \"flag\": true, \"meta\": {\"k\": \"v\"}, \"nets\": [1], \"f\": 1.5}}";

static void test_path(void **state)
{
    _cleanup_json_ json_object *root = parse_ok(body);

    (void)state;
    assert_string_equal(json_object_get_string(cl_json_path(root, "server.meta.k")), "v");
    assert_non_null(cl_json_path(root, "server"));
    assert_null(cl_json_path(root, "server.nope"));
    assert_null(cl_json_path(root, "server.name.deeper"));
    assert_null(cl_json_path(root, "server.nets.0"));
    assert_null(cl_json_path(root, ""));
    assert_null(cl_json_path(NULL, "server"));
}

static void test_get_str(void **state)
{
    _cleanup_json_ json_object *root = parse_ok(body);
    const char *s = "untouched";
    cl_error err;

    (void)state;
    assert_int_equal(cl_json_get_str(root, "server.name", true, &s, &err), 0);
    assert_string_equal(s, "vm-1");
    s = "untouched";
    assert_int_equal(cl_json_get_str(root, "server.absent", false, &s, &err), 0);
    assert_string_equal(s, "untouched");
    assert_int_equal(cl_json_get_str(root, "server.flavorRefx", true, &s, &err), -ENOENT);
    assert_int_equal(err.code, CL_E_BAD_REQUEST);
    assert_string_equal(err.message, "Missing required field 'server.flavorRefx'");
    assert_int_equal(cl_json_get_str(root, "server.min_count", true, &s, &err), -EINVAL);
    assert_string_equal(err.message,
                        "Invalid input for field 'server.min_count': expected a string");
    /* A present null is a wrong type, even for an optional field. */
    assert_int_equal(cl_json_get_str(root, "server.nil", false, &s, &err), -EINVAL);
    assert_string_equal(s, "untouched");
}

static void test_get_str_len(void **state)
{
    _cleanup_json_ json_object *root = parse_ok(body);
    const char *s = NULL;
    cl_error err;

    (void)state;
    assert_int_equal(cl_json_get_str_len(root, "server.name", true, 1, 255, &s, &err), 0);
    assert_string_equal(s, "vm-1");
    assert_int_equal(cl_json_get_str_len(root, "server.name", true, 5, 255, &s, &err),
                     -EINVAL);
    assert_non_null(strstr(err.message, "'server.name': length must be between 5 and 255"));
    /* Characters, not bytes: "été" is 3 characters in 5 bytes. */
    assert_int_equal(cl_json_get_str_len(root, "server.utf", true, 3, 3, &s, &err), 0);
    assert_int_equal(strlen(s), 5);
    assert_int_equal(cl_json_get_str_len(root, "server.ctl", true, 0, 255, &s, &err),
                     -EINVAL);
    assert_non_null(strstr(err.message, "control characters"));
    assert_int_equal(cl_json_get_str_len(root, "server.nul", true, 0, 255, &s, &err),
                     -EINVAL);
    assert_int_equal(cl_json_get_str_len(root, "server.x", true, 0, 255, &s, &err), -ENOENT);
}

static void test_get_ints(void **state)
{
    _cleanup_json_ json_object *root = parse_ok(body);
    int64_t v = 99;
    cl_error err;

    (void)state;
    assert_int_equal(cl_json_get_int64(root, "server.min_count", true, &v, &err), 0);
    assert_int_equal(v, 3);
    assert_int_equal(cl_json_get_int64(root, "server.neg", true, &v, &err), 0);
    assert_int_equal(v, -5);
    v = 99;
    assert_int_equal(cl_json_get_int64(root, "server.big", true, &v, &err), -EINVAL);
    assert_non_null(strstr(err.message, "out of range"));
    assert_int_equal(cl_json_get_int64(root, "server.flavorRef", true, &v, &err), -EINVAL);
    assert_string_equal(err.message,
                        "Invalid input for field 'server.flavorRef': expected an integer");
    assert_int_equal(cl_json_get_int64(root, "server.f", true, &v, &err), -EINVAL);
    assert_int_equal(cl_json_get_int64(root, "server.none", false, &v, &err), 0);
    assert_int_equal(v, 99);

    /* Range: integers and decimal strings. */
    assert_int_equal(cl_json_get_int_range(root, "server.flavorRef", true, 1, 10, &v, &err),
                     0);
    assert_int_equal(v, 2);
    assert_int_equal(cl_json_get_int_range(root, "server.min_count", true, 1, 3, &v, &err),
                     0);
    assert_int_equal(v, 3);
    v = 99;
    assert_int_equal(cl_json_get_int_range(root, "server.min_count", true, 4, 10, &v, &err),
                     -EINVAL);
    assert_string_equal(err.message,
                        "Invalid input for field 'server.min_count': must be between 4 and 10");
    assert_int_equal(cl_json_get_int_range(root, "server.name", true, 1, 10, &v, &err),
                     -EINVAL);
    assert_non_null(strstr(err.message, "expected an integer"));
    assert_int_equal(cl_json_get_int_range(root, "server.big", true, 1, 10, &v, &err),
                     -EINVAL);
    assert_int_equal(cl_json_get_int_range(root, "server.flag", true, 0, 1, &v, &err),
                     -EINVAL);
    assert_int_equal(cl_json_get_int_range(root, "server.zz", true, 1, 10, &v, &err),
                     -ENOENT);
    assert_string_equal(err.message, "Missing required field 'server.zz'");
    assert_int_equal(cl_json_get_int_range(root, "server.zz", false, 1, 10, &v, &err), 0);
    assert_int_equal(v, 99);
}

static void test_get_bool_object_array(void **state)
{
    _cleanup_json_ json_object *root = parse_ok(body);
    bool b = false;
    json_object *o = NULL;
    cl_error err;

    (void)state;
    assert_int_equal(cl_json_get_bool(root, "server.flag", true, &b, &err), 0);
    assert_true(b);
    assert_int_equal(cl_json_get_bool(root, "server.name", true, &b, &err), -EINVAL);
    assert_non_null(strstr(err.message, "expected a boolean"));
    assert_int_equal(cl_json_get_object(root, "server.meta", true, &o, &err), 0);
    assert_true(json_object_is_type(o, json_type_object));
    assert_int_equal(cl_json_get_object(root, "server.nets", true, &o, &err), -EINVAL);
    assert_non_null(strstr(err.message, "expected an object"));
    assert_int_equal(cl_json_get_array(root, "server.nets", true, &o, &err), 0);
    assert_int_equal(json_object_array_length(o), 1);
    assert_int_equal(cl_json_get_array(root, "server.meta", true, &o, &err), -EINVAL);
    assert_non_null(strstr(err.message, "expected an array"));
    o = NULL;
    assert_int_equal(cl_json_get_array(root, "server.nope", false, &o, &err), 0);
    assert_null(o);
}

static void test_builders_and_dump(void **state)
{
    _cleanup_json_ json_object *o = json_object_new_object();

    (void)state;
    json_object_object_add(o, "a", cl_json_str_or_null(NULL));
    json_object_object_add(o, "b", cl_json_str_or_null("http://x/y"));
    assert_string_equal(cl_json_dump(o), "{\"a\":null,\"b\":\"http://x/y\"}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_values),
        cmocka_unit_test(test_parse_rejects),
        cmocka_unit_test(test_parse_object),
        cmocka_unit_test(test_path),
        cmocka_unit_test(test_get_str),
        cmocka_unit_test(test_get_str_len),
        cmocka_unit_test(test_get_ints),
        cmocka_unit_test(test_get_bool_object_array),
        cmocka_unit_test(test_builders_and_dump),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
