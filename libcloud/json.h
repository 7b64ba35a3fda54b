/*
 * json.h - json-c helpers: bounded parsing and typed getters that say which field is wrong.
 *
 * Getters take a dotted path ("server.flavorRef") from a root object. On failure they
 * return -EINVAL (wrong type / bad value) or -ENOENT (missing and required) and fill err
 * with CL_E_BAD_REQUEST and a message such as
 *   "Invalid input for field 'server.name': expected a string"  or
 *   "Missing required field 'server.flavorRef'".
 * Optional fields that are absent return 0 and leave *out untouched.
 * Returned strings are borrowed from the json tree: valid while the tree lives.
 */
#ifndef CL_JSON_H
#define CL_JSON_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cleanup.h"
#include "errors.h"

static inline void cl_json_putp(json_object **o)
{
    if (*o)
        json_object_put(*o);
}
#define _cleanup_json_ _cleanup_(cl_json_putp)

#define CL_JSON_MAX_DEPTH 32

/* Parse exactly one JSON value from buf[0..len) (no trailing garbage, depth capped).
 * Returns 0 and a new reference in *out, or -EINVAL with err ("Malformed request body:
 * ..."). */
int cl_json_parse(const char *buf, size_t len, json_object **out, cl_error *err);

/* Parse and require a top-level object. */
int cl_json_parse_object(const char *buf, size_t len, json_object **out, cl_error *err);

/* Look up a dotted path; NULL when any step is missing or not an object. Borrowed. */
json_object *cl_json_path(json_object *root, const char *path);

int cl_json_get_str(json_object *root, const char *path, bool required, const char **out,
                    cl_error *err);
/* String with length bounds (min..max characters) and no control characters. */
int cl_json_get_str_len(json_object *root, const char *path, bool required, size_t min,
                        size_t max, const char **out, cl_error *err);
int cl_json_get_int64(json_object *root, const char *path, bool required, int64_t *out,
                      cl_error *err);
/* Integer within [min, max]; accepts a JSON integer or a decimal string (Nova does). */
int cl_json_get_int_range(json_object *root, const char *path, bool required, int64_t min,
                          int64_t max, int64_t *out, cl_error *err);
int cl_json_get_bool(json_object *root, const char *path, bool required, bool *out,
                     cl_error *err);
int cl_json_get_object(json_object *root, const char *path, bool required,
                       json_object **out, cl_error *err);
int cl_json_get_array(json_object *root, const char *path, bool required,
                      json_object **out, cl_error *err);

/* Builders that never return NULL for a NULL string: json null instead. */
json_object *cl_json_str_or_null(const char *s);

/* Serialise compactly; the returned string is owned by obj (json-c semantics). */
const char *cl_json_dump(json_object *obj);

#endif
