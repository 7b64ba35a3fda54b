/*
 * errors.c - the error catalogue: one row per code with its HTTP status, its OpenStack
 * fault name and the errno internal code uses for it.
 *
 * OpenStack clients (python-novaclient, openstacksdk, gophercloud) read the fault name
 * as the single key of the error body and the "code" inside it, so the table below is the
 * contract with them. Nova answers a quota failure with 403 overLimit and a rate limit
 * with 429 overLimit; both share the name. CL_E_NO_VALID_HOST is not sent as an HTTP
 * answer (the create request was already accepted): it is the fault recorded on a server
 * that went to ERROR, which Nova shows with code 500, so it carries computeFault.
 */
#include "errors.h"

#include <errno.h>
#include <stdio.h>


typedef struct {
    int status;
    const char *fault;
    int neg_errno;
} catalogue_row;

static const catalogue_row catalogue[CL_E_MAX] = {
    [CL_E_OK] = {200, "ok", 0},
    [CL_E_BAD_REQUEST] = {400, "badRequest", -EINVAL},
    [CL_E_UNAUTHORIZED] = {401, "unauthorized", -EACCES},
    [CL_E_FORBIDDEN] = {403, "forbidden", -EPERM},
    [CL_E_NOT_FOUND] = {404, "itemNotFound", -ENOENT},
    [CL_E_METHOD_NOT_ALLOWED] = {405, "methodNotAllowed", -ENOTSUP},
    [CL_E_CONFLICT] = {409, "conflictingRequest", -EEXIST},
    [CL_E_TOO_LARGE] = {413, "requestEntityTooLarge", -E2BIG},
    [CL_E_UNSUPPORTED_MEDIA] = {415, "unsupportedMediaType", -EPROTONOSUPPORT},
    [CL_E_OVER_LIMIT] = {403, "overLimit", -EDQUOT},
    [CL_E_RATE_LIMIT] = {429, "overLimit", -EAGAIN},
    [CL_E_INTERNAL] = {500, "computeFault", -EIO},
    [CL_E_NOT_IMPLEMENTED] = {501, "notImplemented", -ENOSYS},
    [CL_E_UNAVAILABLE] = {503, "serviceUnavailable", -EAGAIN},
    [CL_E_NO_VALID_HOST] = {500, "computeFault", -ENOSPC},
};

/* Out-of-range codes are programmer errors; answer as an internal fault rather than
 * reading past the table. */
static const catalogue_row *row_of(cl_errcode code)
{
    if ((unsigned)code >= CL_E_MAX)
        return &catalogue[CL_E_INTERNAL];
    return &catalogue[code];
}

int cl_error_set(cl_error *err, cl_errcode code, const char *fmt, ...)
{
    if (err) {
        va_list ap;

        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
    }
    return row_of(code)->neg_errno;
}

cl_errcode cl_error_from_errno(int neg_errno)
{
    switch (neg_errno) {
    case 0:
        return CL_E_OK;
    case -ENOENT:
        return CL_E_NOT_FOUND;
    case -EEXIST:
    case -EBUSY:
        return CL_E_CONFLICT;
    case -EINVAL:
        return CL_E_BAD_REQUEST;
    case -E2BIG:
    case -EMSGSIZE:
        return CL_E_TOO_LARGE;
    case -ENOSPC:
        return CL_E_NO_VALID_HOST;
    case -EDQUOT:
        return CL_E_OVER_LIMIT;
    case -EPERM:
    case -EACCES:
        return CL_E_FORBIDDEN;
    default:
        return CL_E_INTERNAL;
    }
}

int cl_error_http_status(cl_errcode code) { return row_of(code)->status; }

const char *cl_error_fault_name(cl_errcode code) { return row_of(code)->fault; }

json_object *cl_error_to_json(const cl_error *err)
{
    json_object *root = json_object_new_object();
    json_object *inner = json_object_new_object();

    json_object_object_add(inner, "code",
                           json_object_new_int(cl_error_http_status(err->code)));
    json_object_object_add(inner, "message", json_object_new_string(err->message));
    json_object_object_add(root, cl_error_fault_name(err->code), inner);
    return root;
}
