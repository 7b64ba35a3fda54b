/*
 * fuzz_json.c - cl_json_parse / cl_json_parse_object and the typed getters of json.h,
 * which every API handler runs on a tenant's request body.
 *
 * Invariants beyond "no crash":
 *  - a refusal is -EINVAL with err filled ("Malformed request body: ...") and *out
 *    untouched; parse_object accepts exactly what parse accepts and is an object;
 *  - an accepted value survives dump -> parse -> dump unchanged (json_object_equal and
 *    identical text);
 *  - every getter, on fixed paths and on paths built from the document's own keys,
 *    returns 0 / -EINVAL / -ENOENT; a required field that returns 0 set *out; an
 *    optional absent field leaves *out alone; a refusal fills err; bounded getters only
 *    return values inside their bounds.
 */
#include <errno.h>
#include <string.h>

#include "fuzz_common.h"
#include "json.h"

#define MAX_PATHS 48
#define PATH_LEN 200

static void check_rc(int r, const cl_error *err)
{
    FUZZ_CHECK(r == 0 || r == -EINVAL || r == -ENOENT);
    if (r < 0)
        fuzz_check_error(err);
}

static bool has_control(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

static size_t utf8_len(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

static void fuzz_getters(json_object *root, const char *path)
{
    for (int required = 0; required < 2; required++) {
        cl_error err = {0};
        const char *s = (const char *)&err; /* sentinel */
        int r = cl_json_get_str(root, path, required, &s, &err);
        check_rc(r, &err);
        if (r == 0 && s != (const char *)&err)
            FUZZ_CHECK(s != NULL);
        if (r == 0 && required)
            FUZZ_CHECK(s != (const char *)&err && s != NULL);

        memset(&err, 0, sizeof(err));
        s = (const char *)&err;
        r = cl_json_get_str_len(root, path, required, 1, 16, &s, &err);
        check_rc(r, &err);
        if (r == 0 && s != (const char *)&err) {
            FUZZ_CHECK(!has_control(s));
            size_t n = utf8_len(s);
            FUZZ_CHECK(n >= 1 && n <= 16);
        }
        if (r == 0 && required)
            FUZZ_CHECK(s != (const char *)&err);

        memset(&err, 0, sizeof(err));
        int64_t v = INT64_MIN + 12345;
        r = cl_json_get_int64(root, path, required, &v, &err);
        check_rc(r, &err);
        if (r == 0 && required)
            FUZZ_CHECK(v != INT64_MIN + 12345 || json_object_get_int64(cl_json_path(root, path)) == v);

        memset(&err, 0, sizeof(err));
        v = INT64_MIN;
        r = cl_json_get_int_range(root, path, required, -5, 100000, &v, &err);
        check_rc(r, &err);
        if (r == 0 && v != INT64_MIN)
            FUZZ_CHECK(v >= -5 && v <= 100000);
        if (r == 0 && required)
            FUZZ_CHECK(v != INT64_MIN);

        memset(&err, 0, sizeof(err));
        bool b;
        unsigned char *bp = (unsigned char *)&b;
        *bp = 0x5A; /* neither true nor false: "untouched" is visible */
        r = cl_json_get_bool(root, path, required, &b, &err);
        check_rc(r, &err);
        if (r == 0 && required)
            FUZZ_CHECK(*bp == 0 || *bp == 1);

        memset(&err, 0, sizeof(err));
        json_object *o = NULL;
        r = cl_json_get_object(root, path, required, &o, &err);
        check_rc(r, &err);
        if (r == 0 && o)
            FUZZ_CHECK(json_object_is_type(o, json_type_object));
        if (r == 0 && required)
            FUZZ_CHECK(o != NULL);

        memset(&err, 0, sizeof(err));
        o = NULL;
        r = cl_json_get_array(root, path, required, &o, &err);
        check_rc(r, &err);
        if (r == 0 && o)
            FUZZ_CHECK(json_object_is_type(o, json_type_array));
        if (r == 0 && required)
            FUZZ_CHECK(o != NULL);
    }
}

/* Paths "k" and "k.k2" from the document's own keys (keys with '.' cannot be named). */
static size_t own_paths(json_object *root, char paths[][PATH_LEN], size_t max)
{
    size_t n = 0;

    if (!json_object_is_type(root, json_type_object))
        return 0;
    json_object_object_foreach(root, k, v) {
        if (n >= max)
            break;
        if (strchr(k, '.') || strlen(k) >= PATH_LEN / 2)
            continue;
        snprintf(paths[n++], PATH_LEN, "%s", k);
        if (!json_object_is_type(v, json_type_object))
            continue;
        json_object_object_foreach(v, k2, v2) {
            (void)v2;
            if (n >= max)
                break;
            if (strchr(k2, '.') || strlen(k2) >= PATH_LEN / 2 - 1)
                continue;
            snprintf(paths[n++], PATH_LEN, "%s.%s", k, k2);
        }
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const fixed[] = {
        "server", "server.name", "server.flavorRef", "server.imageRef", "a", "a.b", "a.b.c",
        "", ".", "a..b", ".a", "a.", "x.y.z.w.v",
    };
    json_object *sentinel = (json_object *)&size;
    json_object *obj = sentinel, *obj2 = NULL, *objo = sentinel;
    cl_error err = {0}, erro = {0};
    char paths[MAX_PATHS][PATH_LEN];

    int r = cl_json_parse((const char *)data, size, &obj, &err);
    int ro = cl_json_parse_object((const char *)data, size, &objo, &erro);
    if (r < 0) {
        FUZZ_CHECK(r == -EINVAL || r == -E2BIG);
        fuzz_check_error(&err);
        FUZZ_CHECK(strncmp(err.message, "Malformed request body", 22) == 0);
        FUZZ_CHECK(obj == sentinel);
        FUZZ_CHECK(ro < 0 && objo == sentinel);
        fuzz_check_error(&erro);
        return 0;
    }
    FUZZ_CHECK(r == 0 && obj != sentinel);
    if (json_object_is_type(obj, json_type_object)) {
        FUZZ_CHECK(ro == 0 && json_object_equal(obj, objo));
        json_object_put(objo);
    } else {
        FUZZ_CHECK(ro == -EINVAL && objo == sentinel);
        fuzz_check_error(&erro);
    }

    /* dump -> parse -> dump is a fixed point. */
    char *dump = strdup(cl_json_dump(obj));
    FUZZ_CHECK(dump != NULL);
    memset(&err, 0, sizeof(err));
    r = cl_json_parse(dump, strlen(dump), &obj2, &err);
    if (r != 0)
        fprintf(stderr, "re-parse of our own dump failed: %s\n%s\n", err.message, dump);
    FUZZ_CHECK(r == 0);
    FUZZ_CHECK(json_object_equal(obj, obj2));
    FUZZ_CHECK(strcmp(dump, cl_json_dump(obj2)) == 0);
    free(dump);
    json_object_put(obj2);

    for (size_t i = 0; i < CL_ARRAY_SIZE(fixed); i++)
        fuzz_getters(obj, fixed[i]);
    size_t n = own_paths(obj, paths, MAX_PATHS);
    for (size_t i = 0; i < n; i++)
        fuzz_getters(obj, paths[i]);
    json_object_put(obj);
    return 0;
}
