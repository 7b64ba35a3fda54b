/*
 * errors.h - the one error catalogue of nube.
 *
 * Internal code returns 0 / negative errno; where a failure must reach a user it also
 * fills a cl_error: a catalogue code (which fixes the HTTP status and the OpenStack fault
 * name) and a message a user can act on. The HTTP layer turns a cl_error into the body
 * OpenStack clients parse:  {"badRequest": {"code": 400, "message": "..."}}.
 */
#ifndef CL_ERRORS_H
#define CL_ERRORS_H

#include <json-c/json.h>
#include <stdarg.h>

typedef enum {
    CL_E_OK = 0,
    CL_E_BAD_REQUEST,        /* 400 badRequest */
    CL_E_UNAUTHORIZED,       /* 401 unauthorized */
    CL_E_FORBIDDEN,          /* 403 forbidden */
    CL_E_NOT_FOUND,          /* 404 itemNotFound */
    CL_E_METHOD_NOT_ALLOWED, /* 405 methodNotAllowed */
    CL_E_CONFLICT,           /* 409 conflictingRequest */
    CL_E_TOO_LARGE,          /* 413 requestEntityTooLarge */
    CL_E_UNSUPPORTED_MEDIA,  /* 415 unsupportedMediaType */
    CL_E_OVER_LIMIT,         /* 403 overLimit: quota exceeded (Nova answers 403) */
    CL_E_RATE_LIMIT,         /* 429 overLimit */
    CL_E_INTERNAL,           /* 500 computeFault */
    CL_E_NOT_IMPLEMENTED,    /* 501 notImplemented */
    CL_E_UNAVAILABLE,        /* 503 serviceUnavailable */
    CL_E_NO_VALID_HOST,      /* not an HTTP answer: the fault recorded on an ERROR server (500) */
    CL_E_MAX
} cl_errcode;

#define CL_ERROR_MSG_MAX 512

typedef struct cl_error {
    cl_errcode code;
    char message[CL_ERROR_MSG_MAX];
} cl_error;

/* Fill err (may be NULL) with code and a printf-style message.
 * Returns the negative errno that best matches code (-EINVAL, -ENOENT, -EEXIST, ...),
 * so callers can write  `return cl_error_set(err, CL_E_NOT_FOUND, "...")`. */
int cl_error_set(cl_error *err, cl_errcode code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Map a negative errno to a catalogue code (-ENOENT -> NOT_FOUND, -EEXIST/-EBUSY ->
 * CONFLICT, -EINVAL -> BAD_REQUEST, -E2BIG/-EMSGSIZE -> TOO_LARGE, -ENOSPC -> NO_VALID_HOST,
 * -EDQUOT -> OVER_LIMIT, -EPERM/-EACCES -> FORBIDDEN, anything else -> INTERNAL). */
cl_errcode cl_error_from_errno(int neg_errno);

/* HTTP status and OpenStack fault name of a code. */
int cl_error_http_status(cl_errcode code);
const char *cl_error_fault_name(cl_errcode code);

/* New reference to {"<faultName>": {"code": <status>, "message": "<message>"}}.
 * Caller owns the result. */
json_object *cl_error_to_json(const cl_error *err);

#endif
