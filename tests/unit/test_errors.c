/*
 * test_errors.c - unit tests for the error catalogue (libcloud/errors.c): every code's
 * HTTP status and fault name, errno mapping both ways, and the JSON body clients parse.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "errors.h"
#include "json.h"

static void test_catalogue(void **state)
{
    static const struct {
        cl_errcode code;
        int status;
        const char *fault;
    } rows[] = {
        {CL_E_BAD_REQUEST, 400, "badRequest"},
        {CL_E_UNAUTHORIZED, 401, "unauthorized"},
        {CL_E_FORBIDDEN, 403, "forbidden"},
        {CL_E_NOT_FOUND, 404, "itemNotFound"},
        {CL_E_METHOD_NOT_ALLOWED, 405, "methodNotAllowed"},
        {CL_E_CONFLICT, 409, "conflictingRequest"},
        {CL_E_TOO_LARGE, 413, "requestEntityTooLarge"},
        {CL_E_UNSUPPORTED_MEDIA, 415, "unsupportedMediaType"},
        {CL_E_OVER_LIMIT, 403, "overLimit"},
        {CL_E_RATE_LIMIT, 429, "overLimit"},
        {CL_E_INTERNAL, 500, "computeFault"},
        {CL_E_NOT_IMPLEMENTED, 501, "notImplemented"},
        {CL_E_UNAVAILABLE, 503, "serviceUnavailable"},
        {CL_E_NO_VALID_HOST, 500, "computeFault"},
    };

    (void)state;
    assert_int_equal(CL_ARRAY_SIZE(rows), CL_E_MAX - 1);
    for (size_t i = 0; i < CL_ARRAY_SIZE(rows); i++) {
        assert_int_equal(cl_error_http_status(rows[i].code), rows[i].status);
        assert_string_equal(cl_error_fault_name(rows[i].code), rows[i].fault);
    }
    /* Out-of-range codes answer as internal faults instead of reading past the table. */
    assert_int_equal(cl_error_http_status(CL_E_MAX), 500);
    assert_string_equal(cl_error_fault_name((cl_errcode)999), "computeFault");
}

static void test_set_returns_errno_and_formats(void **state)
{
    cl_error err = {0};

    (void)state;
    assert_int_equal(cl_error_set(&err, CL_E_NOT_FOUND, "server %s not found", "abc"),
                     -ENOENT);
    assert_int_equal(err.code, CL_E_NOT_FOUND);
    assert_string_equal(err.message, "server abc not found");
    assert_int_equal(cl_error_set(&err, CL_E_BAD_REQUEST, "x"), -EINVAL);
    assert_int_equal(cl_error_set(&err, CL_E_CONFLICT, "x"), -EEXIST);
    assert_int_equal(cl_error_set(&err, CL_E_NO_VALID_HOST, "x"), -ENOSPC);
    assert_int_equal(cl_error_set(&err, CL_E_OVER_LIMIT, "x"), -EDQUOT);
    assert_int_equal(cl_error_set(&err, CL_E_TOO_LARGE, "x"), -E2BIG);
    /* NULL err is allowed and still returns the errno. */
    assert_int_equal(cl_error_set(NULL, CL_E_NOT_FOUND, "nobody reads %d", 1), -ENOENT);
    /* Every code maps to a negative errno except OK, and back to a sensible code. */
    for (int c = CL_E_BAD_REQUEST; c < CL_E_MAX; c++)
        assert_true(cl_error_set(NULL, (cl_errcode)c, "x") < 0);
}

static void test_set_truncates_long_message(void **state)
{
    cl_error err;
    char big[CL_ERROR_MSG_MAX * 2];

    (void)state;
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    cl_error_set(&err, CL_E_BAD_REQUEST, "%s", big);
    assert_int_equal(strlen(err.message), CL_ERROR_MSG_MAX - 1);
}

static void test_from_errno(void **state)
{
    (void)state;
    assert_int_equal(cl_error_from_errno(-ENOENT), CL_E_NOT_FOUND);
    assert_int_equal(cl_error_from_errno(-EEXIST), CL_E_CONFLICT);
    assert_int_equal(cl_error_from_errno(-EBUSY), CL_E_CONFLICT);
    assert_int_equal(cl_error_from_errno(-EINVAL), CL_E_BAD_REQUEST);
    assert_int_equal(cl_error_from_errno(-E2BIG), CL_E_TOO_LARGE);
    assert_int_equal(cl_error_from_errno(-EMSGSIZE), CL_E_TOO_LARGE);
    assert_int_equal(cl_error_from_errno(-ENOSPC), CL_E_NO_VALID_HOST);
    assert_int_equal(cl_error_from_errno(-EDQUOT), CL_E_OVER_LIMIT);
    assert_int_equal(cl_error_from_errno(-EPERM), CL_E_FORBIDDEN);
    assert_int_equal(cl_error_from_errno(-EACCES), CL_E_FORBIDDEN);
    assert_int_equal(cl_error_from_errno(-EIO), CL_E_INTERNAL);
    assert_int_equal(cl_error_from_errno(-ENOMEM), CL_E_INTERNAL);
}

static void test_to_json(void **state)
{
    cl_error err;
    _cleanup_json_ json_object *j = NULL;
    json_object *inner = NULL, *v = NULL;

    (void)state;
    cl_error_set(&err, CL_E_OVER_LIMIT, "Quota exceeded for cores: requested %d", 8);
    j = cl_error_to_json(&err);
    assert_non_null(j);
    assert_int_equal(json_object_object_length(j), 1);
    assert_true(json_object_object_get_ex(j, "overLimit", &inner));
    assert_true(json_object_object_get_ex(inner, "code", &v));
    assert_int_equal(json_object_get_int(v), 403);
    assert_true(json_object_object_get_ex(inner, "message", &v));
    assert_string_equal(json_object_get_string(v), "Quota exceeded for cores: requested 8");
    assert_string_equal(cl_json_dump(j), "{\"overLimit\":{\"code\":403,\"message\":"
                                         "\"Quota exceeded for cores: requested 8\"}}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_catalogue),
        cmocka_unit_test(test_set_returns_errno_and_formats),
        cmocka_unit_test(test_set_truncates_long_message),
        cmocka_unit_test(test_from_errno),
        cmocka_unit_test(test_to_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
