/*
 * json.c - bounded JSON parsing and typed getters with messages a user can act on.
 *
 * Request bodies come from tenants, so parsing is strict (RFC 8259, json-c's
 * JSON_TOKENER_STRICT), depth-capped (CL_JSON_MAX_DEPTH, so a body of ten thousand '['
 * cannot exhaust the stack) and must consume the whole body: "{} junk" is rejected
 * instead of silently ignoring the tail. The getters walk a dotted path from the root
 * and explain failures in the words Nova uses, naming the full path of the field, so an
 * API handler can validate a body with a few lines and no hand-written messages.
 */
#include "json.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "util.h"

/* Paths are ours (literals in handlers), so a fixed cap is fine; longer ones fail. */
#define PATH_MAX_LEN 256

static bool only_whitespace(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        /* RFC 8259 whitespace: space, tab, LF, CR. */
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\n' && p[i] != '\r')
            return false;
    }
    return true;
}

static void tokener_freep(json_tokener **t)
{
    if (*t)
        json_tokener_free(*t);
}

/* Does the tree hold a NaN or an infinity? json-c reads the literals NaN, Infinity and
 * -Infinity even in strict mode, but RFC 8259 has no such numbers, and a NaN would
 * compare unequal to itself in every check downstream. The depth is capped by the
 * tokener, so the recursion is bounded. */
static bool has_non_finite(json_object *o)
{
    switch (json_object_get_type(o)) {
    case json_type_double:
        return !isfinite(json_object_get_double(o));
    case json_type_array:
        for (size_t i = 0, n = json_object_array_length(o); i < n; i++)
            if (has_non_finite(json_object_array_get_idx(o, i)))
                return true;
        return false;
    case json_type_object: {
        json_object_object_foreach(o, key, val) {
            (void)key;
            if (has_non_finite(val))
                return true;
        }
        return false;
    }
    default:
        return false;
    }
}

/* The last check of a parsed value: only walk the tree when the text could hold one of
 * json-c's non-standard number literals. */
static int check_numbers(const char *buf, size_t len, json_object *obj, cl_error *err)
{
    if ((memmem(buf, len, "NaN", 3) || memmem(buf, len, "Infinity", 8)) &&
        has_non_finite(obj))
        return cl_error_set(err, CL_E_BAD_REQUEST, "Malformed request body: NaN and "
                            "Infinity are not JSON numbers");
    return 0;
}

/*
 * Parse exactly one JSON value from buf[0..len). Returns 0 and a new reference in *out
 * (which the caller owns), or -EINVAL with err describing the problem; *out is untouched
 * on failure. Thread-safe.
 */
int cl_json_parse(const char *buf, size_t len, json_object **out, cl_error *err)
{
    _cleanup_(tokener_freep) json_tokener *tok = NULL;
    _cleanup_json_ json_object *obj = NULL;
    enum json_tokener_error jerr;
    size_t end;

    if (!buf || len == 0 || only_whitespace(buf, len))
        return cl_error_set(err, CL_E_BAD_REQUEST, "Malformed request body: empty body");
    /* json-c takes an int length and stops at an embedded NUL; reject both cases rather
     * than parse a prefix of what was sent. */
    if (len > (size_t)INT32_MAX)
        return cl_error_set(err, CL_E_TOO_LARGE, "Malformed request body: too large");
    if (memchr(buf, '\0', len))
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Malformed request body: contains a NUL character");

    tok = json_tokener_new_ex(CL_JSON_MAX_DEPTH);
    if (!tok)
        return cl_error_set(err, CL_E_INTERNAL, "Out of memory parsing request body");
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);

    obj = json_tokener_parse_ex(tok, buf, (int)len);
    jerr = json_tokener_get_error(tok);
    if (!obj && jerr == json_tokener_continue) {
        /* A bare top-level number ("42") is only known to be complete at end of input;
         * json-c learns that from a terminating NUL, which we feed separately. */
        obj = json_tokener_parse_ex(tok, "", 1);
        jerr = json_tokener_get_error(tok);
        if (!obj) {
            return cl_error_set(err, CL_E_BAD_REQUEST, "Malformed request body: %s",
                                jerr == json_tokener_continue ? "unexpected end of input"
                                                              : json_tokener_error_desc(jerr));
        }
        if (check_numbers(buf, len, obj, err) < 0)
            return -EINVAL;
        *out = TAKE_PTR(obj);
        return 0;
    }
    if (!obj || jerr != json_tokener_success) {
        if (jerr == json_tokener_error_depth)
            return cl_error_set(err, CL_E_BAD_REQUEST,
                                "Malformed request body: nested deeper than %d levels",
                                CL_JSON_MAX_DEPTH);
        return cl_error_set(err, CL_E_BAD_REQUEST, "Malformed request body: %s at offset %zu",
                            json_tokener_error_desc(jerr), json_tokener_get_parse_end(tok));
    }
    end = json_tokener_get_parse_end(tok);
    if (end < len && !only_whitespace(buf + end, len - end))
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Malformed request body: unexpected data after the JSON value "
                            "at offset %zu",
                            end);
    if (check_numbers(buf, len, obj, err) < 0)
        return -EINVAL;
    *out = TAKE_PTR(obj);
    return 0;
}

/* Like cl_json_parse() but the value must be an object (every OpenStack body is). */
int cl_json_parse_object(const char *buf, size_t len, json_object **out, cl_error *err)
{
    _cleanup_json_ json_object *obj = NULL;
    int r = cl_json_parse(buf, len, &obj, err);

    if (r < 0)
        return r;
    if (!json_object_is_type(obj, json_type_object))
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Malformed request body: expected a JSON object");
    *out = TAKE_PTR(obj);
    return 0;
}

/*
 * Walk a dotted path. Returns true when the last member exists (its value, possibly
 * JSON null = NULL, in *val), false when any step is missing or not an object.
 */
static bool lookup(json_object *root, const char *path, json_object **val)
{
    char buf[PATH_MAX_LEN];
    char *save = NULL;
    json_object *cur = root;

    if (!root || !path || cl_strlcpy(buf, path, sizeof(buf)) >= sizeof(buf))
        return false;
    for (char *tok = strtok_r(buf, ".", &save); tok; tok = strtok_r(NULL, ".", &save)) {
        json_object *next = NULL;
        if (!json_object_is_type(cur, json_type_object) ||
            !json_object_object_get_ex(cur, tok, &next))
            return false;
        cur = next;
    }
    if (cur == root)
        return false; /* empty path */
    *val = cur;
    return true;
}

json_object *cl_json_path(json_object *root, const char *path)
{
    json_object *v = NULL;

    return lookup(root, path, &v) ? v : NULL;
}

/*
 * Shared front half of every getter: find the field and check its type. Returns 1 with
 * *val set when present with the right type, 0 when absent and optional, or a negative
 * errno with err filled.
 */
static int find_typed(json_object *root, const char *path, bool required, json_type type,
                      const char *what, json_object **val, cl_error *err)
{
    json_object *v = NULL;

    if (!lookup(root, path, &v)) {
        if (!required)
            return 0;
        cl_error_set(err, CL_E_BAD_REQUEST, "Missing required field '%s'", path);
        return -ENOENT;
    }
    if (!json_object_is_type(v, type))
        return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid input for field '%s': expected %s",
                            path, what);
    *val = v;
    return 1;
}

int cl_json_get_str(json_object *root, const char *path, bool required, const char **out,
                    cl_error *err)
{
    json_object *v = NULL;
    int r = find_typed(root, path, required, json_type_string, "a string", &v, err);

    if (r <= 0)
        return r;
    *out = json_object_get_string(v);
    return 0;
}

/* Characters as Nova counts them: UTF-8 code points, not bytes. */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;

    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

int cl_json_get_str_len(json_object *root, const char *path, bool required, size_t min,
                        size_t max, const char **out, cl_error *err)
{
    json_object *v = NULL;
    const char *s;
    size_t n;
    int r = find_typed(root, path, required, json_type_string, "a string", &v, err);

    if (r <= 0)
        return r;
    s = json_object_get_string(v);
    /* json-c strings may hold an escaped \u0000; the C view stops there, so compare. */
    if (strlen(s) != (size_t)json_object_get_string_len(v))
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': must not contain control "
                            "characters",
                            path);
    for (const char *p = s; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return cl_error_set(err, CL_E_BAD_REQUEST,
                                "Invalid input for field '%s': must not contain control "
                                "characters",
                                path);
    }
    n = utf8_chars(s);
    if (n < min || n > max)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': length must be between %zu and "
                            "%zu characters (got %zu)",
                            path, min, max, n);
    *out = s;
    return 0;
}

/* Read an integer node, refusing values json-c clamped (above INT64_MAX). */
static int int_value(json_object *v, int64_t *out)
{
    if (json_object_is_type(v, json_type_int)) {
        int64_t n = json_object_get_int64(v);
        if (n == INT64_MAX && json_object_get_uint64(v) != (uint64_t)INT64_MAX)
            return -ERANGE;
        *out = n;
        return 0;
    }
    return -EINVAL;
}

int cl_json_get_int64(json_object *root, const char *path, bool required, int64_t *out,
                      cl_error *err)
{
    json_object *v = NULL;
    int64_t n;
    int r = find_typed(root, path, required, json_type_int, "an integer", &v, err);

    if (r <= 0)
        return r;
    if (int_value(v, &n) < 0)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': integer out of range", path);
    *out = n;
    return 0;
}

int cl_json_get_int_range(json_object *root, const char *path, bool required, int64_t min,
                          int64_t max, int64_t *out, cl_error *err)
{
    json_object *v = NULL;
    int64_t n = 0;
    int r;

    if (!lookup(root, path, &v)) {
        if (!required)
            return 0;
        cl_error_set(err, CL_E_BAD_REQUEST, "Missing required field '%s'", path);
        return -ENOENT;
    }
    if (json_object_is_type(v, json_type_int))
        r = int_value(v, &n);
    else if (json_object_is_type(v, json_type_string))
        r = cl_parse_int64(json_object_get_string(v), &n);
    else
        r = -EINVAL;
    if (r == -EINVAL)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': expected an integer", path);
    if (r < 0 || n < min || n > max)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': must be between %" PRId64
                            " and %" PRId64,
                            path, min, max);
    *out = n;
    return 0;
}

int cl_json_get_bool(json_object *root, const char *path, bool required, bool *out,
                     cl_error *err)
{
    json_object *v = NULL;
    int r = find_typed(root, path, required, json_type_boolean, "a boolean", &v, err);

    if (r <= 0)
        return r;
    *out = json_object_get_boolean(v);
    return 0;
}

int cl_json_get_object(json_object *root, const char *path, bool required,
                       json_object **out, cl_error *err)
{
    json_object *v = NULL;
    int r = find_typed(root, path, required, json_type_object, "an object", &v, err);

    if (r <= 0)
        return r;
    *out = v;
    return 0;
}

int cl_json_get_array(json_object *root, const char *path, bool required,
                      json_object **out, cl_error *err)
{
    json_object *v = NULL;
    int r = find_typed(root, path, required, json_type_array, "an array", &v, err);

    if (r <= 0)
        return r;
    *out = v;
    return 0;
}

json_object *cl_json_str_or_null(const char *s) { return s ? json_object_new_string(s) : NULL; }

const char *cl_json_dump(json_object *obj)
{
    /* PLAIN: no spaces; NOSLASHESCAPE: "http://..." stays readable as OpenStack sends it. */
    return json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN |
                                                   JSON_C_TO_STRING_NOSLASHESCAPE);
}
