/*
 * flavors.c - GET /v2.1/flavors, /flavors/detail, /flavors/{id}, /flavors/{id}/os-extra_specs.
 *
 * Shapes as recorded in reference/openstack-api/flavor-*.txt: "swap" is "" when 0 (a Nova
 * quirk clients rely on), rxtx_factor 1.0, the OS-FLV-* and os-flavor-access attributes
 * of 2.1, and from 2.55 "description" / from 2.61 "extra_specs" (the openstack CLI asks
 * for 2.61 on `flavor list` and reads them; both are empty in nube).
 *
 * Admins create and delete flavors, manage extra specs and the access list of private
 * flavors (os-flavor-access, addTenantAccess/removeTenantAccess). Tenants see public
 * flavors and the private ones shared with their project; another private flavor reads
 * as missing (404). Description (2.55) and extra specs (2.61) come from the compute
 * schema's tables (store_compute.h).
 *
 * Lookups are by id only. The CLI resolves `--flavor m1.tiny` by first asking
 * GET /flavors/m1.tiny and falling back to listing only on a 404, so a name must not
 * match here even though cl_store_flavor_get() also accepts names.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api_int.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "util.h"

#define LOG_MOD "api.flavors"

static json_object *specs_json(cl_store *st, const char *id)
{
    _cleanup_free_ cl_kv *items = NULL;
    json_object *o = json_object_new_object();
    size_t n = 0;

    if (st && cl_store_flavor_specs(st, id, &items, &n) == 0)
        for (size_t i = 0; i < n; i++)
            json_object_object_add(o, items[i].key, json_object_new_string(items[i].value));
    return o;
}

static json_object *flavor_json(const api_ctx *ctx, cl_store *st, const cl_flavor *f,
                                bool detail, int mv)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "id", json_object_new_string(f->id));
    json_object_object_add(o, "name", json_object_new_string(f->name));
    if (detail) {
        json_object_object_add(o, "ram", json_object_new_int64(f->ram_mb));
        json_object_object_add(o, "disk", json_object_new_int64(f->disk_gb));
        json_object_object_add(o, "swap", f->swap_mb ? json_object_new_int64(f->swap_mb)
                                                     : json_object_new_string(""));
        json_object_object_add(o, "OS-FLV-EXT-DATA:ephemeral",
                               json_object_new_int64(f->ephemeral_gb));
        json_object_object_add(o, "OS-FLV-DISABLED:disabled",
                               json_object_new_boolean(f->disabled));
        json_object_object_add(o, "vcpus", json_object_new_int64(f->vcpus));
        json_object_object_add(o, "os-flavor-access:is_public",
                               json_object_new_boolean(f->is_public));
        json_object_object_add(o, "rxtx_factor", json_object_new_double(1.0));
    }
    json_object_object_add(o, "links", api_links_self_bookmark(ctx, "flavors", f->id));
    if (mv >= 55) {
        _cleanup_free_ char *desc = NULL;

        if (st)
            cl_store_flavor_description(st, f->id, &desc);
        json_object_object_add(o, "description", desc ? json_object_new_string(desc) : NULL);
    }
    if (detail && mv >= 61)
        json_object_object_add(o, "extra_specs", specs_json(st, f->id));
    return o;
}

/* Whether the caller may see flavor f (admins all; others public or shared). */
static bool visible(cl_store *st, const cl_flavor *f)
{
    const cl_auth *a = api_auth_current();
    bool ok = false;

    if (!a)
        return false;
    if (cl_auth_is_admin(a) || f->is_public)
        return true;
    return cl_store_flavor_access_allowed(st, f, a->project_id, &ok) == 0 && ok;
}

/* By id only (see the header comment), as the caller may see it. 0, -ENOENT, or another
 * negative errno. */
static int flavor_by_id(cl_store *st, const char *id, cl_flavor *out)
{
    int rc = cl_store_flavor_get(st, id, out);

    if (rc < 0)
        return rc;
    if (strcmp(out->id, id) != 0 || !visible(st, out))
        return -ENOENT;
    return 0;
}

/* ?is_public=True|False|None (None = all; admins see private flavors too). */
static bool public_filter(const char *q, int *out)
{
    if (!q || strcasecmp(q, "none") == 0) {
        *out = -1;
        return true;
    }
    if (strcasecmp(q, "true") == 0 || strcmp(q, "1") == 0 || strcasecmp(q, "yes") == 0) {
        *out = 1;
        return true;
    }
    if (strcasecmp(q, "false") == 0 || strcmp(q, "0") == 0 || strcasecmp(q, "no") == 0) {
        *out = 0;
        return true;
    }
    return false;
}

static bool min_filter(const cl_http_req *req, cl_http_resp *resp, const char *name,
                       int64_t *out)
{
    const char *q = cl_http_req_query(req, name);

    *out = 0;
    if (!q)
        return true;
    if (cl_parse_int64(q, out) < 0 || *out < 0) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid %s filter [%.32s]", name, q);
        return false;
    }
    return true;
}

static void list_common(const cl_http_req *req, cl_http_resp *resp, void *ud, bool detail)
{
    api_ctx *ctx = ud;
    _cleanup_free_ cl_flavor *all = NULL;
    size_t n = 0, start = 0, count = 0;
    int64_t limit, min_ram, min_disk;
    const char *marker;
    json_object *body, *list;
    cl_store *st;
    int mv, pub;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, &mv))
        return;
    if (!api_page_params(req, resp, &limit, &marker) ||
        !min_filter(req, resp, "minRam", &min_ram) ||
        !min_filter(req, resp, "minDisk", &min_disk))
        return;
    if (!public_filter(cl_http_req_query(req, "is_public"), &pub)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid is_public filter [%.32s]",
                            cl_http_req_query(req, "is_public"));
        return;
    }
    st = api_store(ctx, resp);
    if (!st)
        return;
    rc = cl_store_flavor_list(st, &all, &n);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot list flavors (%s).", strerror(-rc));
        return;
    }
    if (marker) {
        size_t i;

        for (i = 0; i < n && strcmp(all[i].id, marker) != 0; i++)
            ;
        if (i == n) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "marker [%.64s] not found", marker);
            return;
        }
        start = i + 1;
    }
    body = json_object_new_object();
    list = json_object_new_array();
    for (size_t i = start; i < n; i++) {
        const cl_flavor *f = &all[i];

        if ((pub >= 0 && f->is_public != (pub == 1)) || f->ram_mb < min_ram ||
            f->disk_gb < min_disk || !visible(st, f))
            continue;
        if (limit > 0 && (int64_t)count == limit) {
            /* There is more: point at the next page as Nova's flavors_links does. */
            json_object *links = json_object_new_array();
            _cleanup_free_ char *href = NULL;
            const char *last = json_object_get_string(json_object_object_get(
                json_object_array_get_idx(list, count - 1), "id"));

            if (asprintf(&href, "%s/v2.1/flavors%s?limit=%lld&marker=%s", ctx->compute_url,
                         detail ? "/detail" : "", (long long)limit, last) < 0)
                href = NULL;
            json_object_array_add(links, api_link("next", href ? href : ""));
            json_object_object_add(body, "flavors_links", links);
            break;
        }
        json_object_array_add(list, flavor_json(ctx, st, f, detail, mv));
        count++;
    }
    json_object_object_add(body, "flavors", list);
    cl_http_resp_json(resp, 200, body);
}

/* GET /v2.1/flavors */
void api_flavors_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    list_common(req, resp, ud, false);
}

/* GET /v2.1/flavors/detail */
void api_flavors_detail(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    list_common(req, resp, ud, true);
}

/* Shared by show and os-extra_specs: the flavor of the {id} capture, or a 404 answered. */
static bool load(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, cl_flavor *out,
                 int *out_mv, cl_store **out_st)
{
    const char *id = cl_http_req_param(req, "id");
    cl_store *st;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, out_mv))
        return false;
    st = api_store(ctx, resp);
    if (!st)
        return false;
    rc = id ? flavor_by_id(st, id, out) : -ENOENT;
    if (rc == -ENOENT) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Flavor %.64s could not be found.",
                            id ? id : "");
        return false;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read flavor (%s).", strerror(-rc));
        return false;
    }
    if (out_st)
        *out_st = st;
    return true;
}

/* GET /v2.1/flavors/{id} */
void api_flavors_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *id = cl_http_req_param(req, "id");
    json_object *body;
    cl_store *st;
    cl_flavor f;
    int mv = API_MV_MIN;

    if (id && strcmp(id, "detail") == 0) {
        api_flavors_detail(req, resp, ud);
        return;
    }
    if (!load(ctx, req, resp, &f, &mv, &st))
        return;
    body = json_object_new_object();
    json_object_object_add(body, "flavor", flavor_json(ctx, st, &f, true, mv));
    cl_http_resp_json(resp, 200, body);
}

/* GET /v2.1/flavors/{id}/os-extra_specs */
void api_flavors_extra_specs(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    json_object *body;
    cl_store *st;
    cl_flavor f;
    int mv = API_MV_MIN;

    if (!load(ud, req, resp, &f, &mv, &st))
        return;
    body = json_object_new_object();
    json_object_object_add(body, "extra_specs", specs_json(st, f.id));
    cl_http_resp_json(resp, 200, body);
}

/* An extra spec value as Nova takes it: a string, number or boolean, stored as text. */
static bool spec_value(json_object *v, char *out, size_t outlen)
{
    if (json_object_is_type(v, json_type_string) || json_object_is_type(v, json_type_int) ||
        json_object_is_type(v, json_type_double)) {
        const char *s = json_object_get_string(v);

        return strlen(s) < outlen && cl_strlcpy(out, s, outlen) < outlen;
    }
    if (json_object_is_type(v, json_type_boolean)) {
        cl_strlcpy(out, json_object_get_boolean(v) ? "True" : "False", outlen);
        return true;
    }
    return false;
}

/* Parse {"extra_specs": {...}} (or, for one key, {"<key>": value}) into items. */
static bool parse_specs(json_object *obj, cl_http_resp *resp, cl_kv **out, size_t *out_n)
{
    size_t n = (size_t)json_object_object_length(obj), i = 0;
    cl_kv *items;

    if (n > 256) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Too many extra specs (at most 256).");
        return false;
    }
    items = calloc(n ? n : 1, sizeof(*items));
    if (!items) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Out of memory.");
        return false;
    }
    json_object_object_foreach(obj, k, v) {
        size_t kl = strlen(k);
        bool key_ok = kl >= 1 && kl <= 255;

        for (const char *c = k; key_ok && *c; c++)
            key_ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                     (*c >= '0' && *c <= '9') || *c == '_' || *c == '-' || *c == '.' ||
                     *c == ':' || *c == ' ';
        if (!key_ok || !spec_value(v, items[i].value, sizeof(items[i].value))) {
            free(items);
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute extra_specs. Keys must be 1 "
                                "to 255 of [a-zA-Z0-9-_:. ], values strings of at most 255.");
            return false;
        }
        cl_strlcpy(items[i].key, k, sizeof(items[i].key));
        i++;
    }
    *out = items;
    *out_n = n;
    return true;
}

static bool admin_load(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp,
                       const char *rule, cl_flavor *f, int *mv, cl_store **st)
{
    /* A flavor the caller cannot see is missing (404) before it is forbidden (403). */
    return load(ctx, req, resp, f, mv, st) && api_require_admin(resp, rule);
}

/* POST /v2.1/flavors/{id}/os-extra_specs {"extra_specs": {...}} */
void api_flavors_extra_specs_create(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_json_ json_object *root = NULL;
    _cleanup_free_ cl_kv *items = NULL;
    json_object *specs, *body;
    cl_error err = {0};
    cl_store *st;
    cl_flavor f;
    size_t n = 0;
    int mv = API_MV_MIN;
    int rc;

    if (!admin_load(ud, req, resp, "os_compute_api:os-flavor-extra-specs:create", &f, &mv, &st))
        return;
    if (cl_http_req_json(req, &root, &err) < 0 ||
        cl_json_get_object(root, "extra_specs", true, &specs, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    if (!parse_specs(specs, resp, &items, &n))
        return;
    rc = cl_store_flavor_specs_set(st, f.id, items, n);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot store extra specs (%s).",
                            strerror(-rc));
        return;
    }
    body = json_object_new_object();
    json_object_object_add(body, "extra_specs", json_object_get(specs));
    cl_http_resp_json(resp, 200, body);
}

/* GET /v2.1/flavors/{id}/os-extra_specs/{key} */
void api_flavors_extra_spec_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_free_ cl_kv *items = NULL;
    const char *key = cl_http_req_param(req, "key");
    json_object *body;
    cl_store *st;
    cl_flavor f;
    size_t n = 0;
    int mv = API_MV_MIN;

    if (!load(ud, req, resp, &f, &mv, &st))
        return;
    if (cl_store_flavor_specs(st, f.id, &items, &n) < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read extra specs.");
        return;
    }
    for (size_t i = 0; key && i < n; i++) {
        if (strcmp(items[i].key, key) == 0) {
            body = json_object_new_object();
            json_object_object_add(body, key, json_object_new_string(items[i].value));
            cl_http_resp_json(resp, 200, body);
            return;
        }
    }
    cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Flavor %s has no extra specs with key %.64s.",
                        f.id, key ? key : "");
}

/* PUT /v2.1/flavors/{id}/os-extra_specs/{key} {"<key>": value} */
void api_flavors_extra_spec_put(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_json_ json_object *root = NULL;
    _cleanup_free_ cl_kv *items = NULL;
    const char *key = cl_http_req_param(req, "key");
    cl_error err = {0};
    cl_store *st;
    cl_flavor f;
    size_t n = 0;
    int mv = API_MV_MIN;
    int rc;

    if (!admin_load(ud, req, resp, "os_compute_api:os-flavor-extra-specs:update", &f, &mv, &st))
        return;
    if (cl_http_req_json(req, &root, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    if (!parse_specs(root, resp, &items, &n))
        return;
    if (n != 1 || !key || strcmp(items[0].key, key) != 0) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            n != 1 ? "Request body contains too many items"
                                   : "Request body and URI mismatch");
        return;
    }
    rc = cl_store_flavor_specs_set(st, f.id, items, 1);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot store extra specs (%s).",
                            strerror(-rc));
        return;
    }
    cl_http_resp_json(resp, 200, json_object_get(root));
}

/* DELETE /v2.1/flavors/{id}/os-extra_specs/{key} */
void api_flavors_extra_spec_delete(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    const char *key = cl_http_req_param(req, "key");
    cl_store *st;
    cl_flavor f;
    int mv = API_MV_MIN;
    int rc;

    if (!admin_load(ud, req, resp, "os_compute_api:os-flavor-extra-specs:delete", &f, &mv, &st))
        return;
    rc = key ? cl_store_flavor_spec_delete(st, f.id, key) : -ENOENT;
    if (rc == -ENOENT) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND,
                            "Flavor %s has no extra specs with key %.64s.", f.id,
                            key ? key : "");
        return;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot delete the extra spec (%s).",
                            strerror(-rc));
        return;
    }
    cl_http_resp_json(resp, 202, NULL);
}

/* ---- create / delete ---- */

/* A non-negative integer given as a JSON integer or an integer string (Nova's
 * flavor_param_*). Absent -> def. */
static bool int_field(json_object *fl, const char *name, int64_t min, int64_t def, int64_t *out,
                      cl_http_resp *resp)
{
    json_object *v;
    int64_t n;

    if (!json_object_object_get_ex(fl, name, &v) || json_object_is_type(v, json_type_null)) {
        if (def < min) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "'%s' is a required property", name);
            return false;
        }
        *out = def;
        return true;
    }
    if (json_object_is_type(v, json_type_int)) {
        n = json_object_get_int64(v);
    } else if (json_object_is_type(v, json_type_string) && !*json_object_get_string(v) &&
               strcmp(name, "swap") == 0) {
        n = 0; /* the "" Nova shows for no swap */
    } else if (!json_object_is_type(v, json_type_string) ||
               cl_parse_int64(json_object_get_string(v), &n) < 0) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "Invalid input for field/attribute %s. Value must be an integer.",
                            name);
        return false;
    }
    if (n < min || n > INT32_MAX) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "Invalid input for field/attribute %s. Value must be between %lld "
                            "and 2147483647.", name, (long long)min);
        return false;
    }
    *out = n;
    return true;
}

/* Flavor ids and names: printable, no leading/trailing space; ids [a-zA-Z0-9_.- ]. */
static bool valid_flavor_id(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n >= CL_ID_MAX || s[0] == ' ' || s[n - 1] == ' ')
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-' || *s == '.' || *s == ' '))
            return false;
    return true;
}

/* POST /v2.1/flavors {"flavor": {...}} (admins) */
void api_flavors_create(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    static const char *const keys[] = {"name", "id", "ram", "vcpus", "disk", "swap",
                                       "OS-FLV-EXT-DATA:ephemeral", "rxtx_factor",
                                       "os-flavor-access:is_public", "description"};
    api_ctx *ctx = ud;
    _cleanup_json_ json_object *root = NULL;
    json_object *fl, *v, *body;
    const char *name = NULL, *desc = NULL;
    cl_error err = {0};
    cl_flavor f = {0}, other;
    cl_store *st;
    bool pub = true;
    int mv = API_MV_MIN;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, &mv) ||
        !api_require_admin(resp, "os_compute_api:os-flavor-manage:create"))
        return;
    if (cl_http_req_json(req, &root, &err) < 0 ||
        cl_json_get_object(root, "flavor", true, &fl, &err) < 0 ||
        cl_json_get_str(root, "flavor.name", true, &name, &err) < 0 ||
        cl_json_get_bool(root, "flavor.os-flavor-access:is_public", false, &pub, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    json_object_object_foreach(fl, k, val) {
        bool ok = false;

        (void)val;
        for (size_t i = 0; i < CL_ARRAY_SIZE(keys) - (mv < 55 ? 1 : 0); i++)
            ok = ok || strcmp(k, keys[i]) == 0;
        if (!ok) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute flavor. Additional "
                                "properties are not allowed ('%.64s' was unexpected)", k);
            return;
        }
    }
    if (!*name || strlen(name) > 255 || name[0] == ' ' || name[strlen(name) - 1] == ' ') {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "Invalid input for field/attribute name. The name must be 1 to "
                            "255 characters without leading or trailing whitespace.");
        return;
    }
    cl_strlcpy(f.name, name, sizeof(f.name));
    if (json_object_object_get_ex(fl, "id", &v) && !json_object_is_type(v, json_type_null) &&
        !(json_object_is_type(v, json_type_string) &&
          strcmp(json_object_get_string(v), "auto") == 0)) {
        if (!json_object_is_type(v, json_type_string) && !json_object_is_type(v, json_type_int)) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute id.");
            return;
        }
        if (!valid_flavor_id(json_object_get_string(v))) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute id. Ids are 1 to 64 of "
                                "[a-zA-Z0-9_.- ].");
            return;
        }
        cl_strlcpy(f.id, json_object_get_string(v), sizeof(f.id));
    } else {
        cl_uuid_new(f.id);
    }
    if (!int_field(fl, "ram", 1, -1, &f.ram_mb, resp) ||
        !int_field(fl, "vcpus", 1, -1, &f.vcpus, resp) ||
        !int_field(fl, "disk", 0, -1, &f.disk_gb, resp) ||
        !int_field(fl, "swap", 0, 0, &f.swap_mb, resp) ||
        !int_field(fl, "OS-FLV-EXT-DATA:ephemeral", 0, 0, &f.ephemeral_gb, resp))
        return;
    if (json_object_object_get_ex(fl, "rxtx_factor", &v) &&
        (!(json_object_is_type(v, json_type_double) || json_object_is_type(v, json_type_int)) ||
         json_object_get_double(v) <= 0)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "Invalid input for field/attribute rxtx_factor. Value must be a "
                            "number greater than 0.");
        return;
    }
    if (json_object_object_get_ex(fl, "description", &v) &&
        !json_object_is_type(v, json_type_null)) {
        if (!json_object_is_type(v, json_type_string) ||
            strlen(json_object_get_string(v)) > 65535) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute description.");
            return;
        }
        desc = json_object_get_string(v);
    }
    f.is_public = pub;
    st = api_store(ctx, resp);
    if (!st)
        return;
    rc = cl_store_flavor_create(st, &f);
    if (rc == -EEXIST) {
        bool id_taken = cl_store_flavor_get(st, f.id, &other) == 0 && strcmp(other.id, f.id) == 0;

        cl_http_resp_errorf(resp, CL_E_CONFLICT, "Flavor with %s %s already exists.",
                            id_taken ? "ID" : "name", id_taken ? f.id : f.name);
        return;
    }
    if (rc == 0 && desc)
        rc = cl_store_flavor_set_description(st, f.id, desc);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot create the flavor (%s).",
                            strerror(-rc));
        return;
    }
    cl_info(LOG_MOD, "flavor %s (%s) created", f.id, f.name);
    body = json_object_new_object();
    json_object_object_add(body, "flavor", flavor_json(ctx, st, &f, true, mv));
    cl_http_resp_json(resp, 200, body);
}

/* DELETE /v2.1/flavors/{id} (admins). Servers keep the copy they were given. */
void api_flavors_delete(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    cl_store *st;
    cl_flavor f;
    int mv = API_MV_MIN;
    int rc;

    if (!admin_load(ud, req, resp, "os_compute_api:os-flavor-manage:delete", &f, &mv, &st))
        return;
    rc = cl_store_flavor_delete(st, f.id);
    if (rc == -ENOENT) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Flavor %s could not be found.", f.id);
        return;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot delete the flavor (%s).",
                            strerror(-rc));
        return;
    }
    cl_info(LOG_MOD, "flavor %s deleted", f.id);
    cl_http_resp_json(resp, 202, NULL);
}

/* ---- access to private flavors ---- */

static void respond_access(cl_store *st, const char *id, cl_http_resp *resp)
{
    char (*projects)[CL_ID_MAX] = NULL;
    json_object *body, *list;
    size_t n = 0;
    int rc = cl_store_flavor_access_list(st, id, &projects, &n);

    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read flavor access (%s).",
                            strerror(-rc));
        return;
    }
    list = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "flavor_id", json_object_new_string(id));
        json_object_object_add(o, "tenant_id", json_object_new_string(projects[i]));
        json_object_array_add(list, o);
    }
    free(projects);
    body = json_object_new_object();
    json_object_object_add(body, "flavor_access", list);
    cl_http_resp_json(resp, 200, body);
}

/* GET /v2.1/flavors/{id}/os-flavor-access (admins) */
void api_flavors_access_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    cl_store *st;
    cl_flavor f;
    int mv = API_MV_MIN;

    if (!admin_load(ud, req, resp, "os_compute_api:os-flavor-access", &f, &mv, &st))
        return;
    if (f.is_public) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Access list not available for public "
                                                  "flavors.");
        return;
    }
    respond_access(st, f.id, resp);
}

/* POST /v2.1/flavors/{id}/action {"addTenantAccess"|"removeTenantAccess": {"tenant"}} */
void api_flavors_action(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_json_ json_object *root = NULL;
    const char *tenant = NULL;
    cl_error err = {0};
    bool add;
    cl_store *st;
    cl_flavor f;
    int mv = API_MV_MIN;
    int rc;

    if (!admin_load(ud, req, resp, "os_compute_api:os-flavor-access:add_tenant_access", &f, &mv,
                    &st))
        return;
    if (cl_http_req_json(req, &root, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    add = json_object_object_get_ex(root, "addTenantAccess", NULL);
    if (!add && !json_object_object_get_ex(root, "removeTenantAccess", NULL)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "There is no such action.");
        return;
    }
    if (cl_json_get_str(root, add ? "addTenantAccess.tenant" : "removeTenantAccess.tenant",
                        true, &tenant, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    if (!*tenant || strlen(tenant) >= CL_ID_MAX) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid input for field/attribute tenant.");
        return;
    }
    if (f.is_public) {
        cl_http_resp_errorf(resp, CL_E_CONFLICT, "Can not %s access to a public flavor.",
                            add ? "add" : "remove");
        return;
    }
    rc = add ? cl_store_flavor_access_add(st, f.id, tenant)
             : cl_store_flavor_access_remove(st, f.id, tenant);
    if (rc == -EEXIST) {
        cl_http_resp_errorf(resp, CL_E_CONFLICT, "Flavor access already exists for flavor %s "
                            "and project %s combination.", f.id, tenant);
        return;
    }
    if (rc == -ENOENT) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Flavor access not found for %s / %s "
                            "combination.", f.id, tenant);
        return;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot change flavor access (%s).",
                            strerror(-rc));
        return;
    }
    respond_access(st, f.id, resp);
}
