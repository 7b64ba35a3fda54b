/*
 * flavors.c - GET /v2.1/flavors, /flavors/detail, /flavors/{id}, /flavors/{id}/os-extra_specs.
 *
 * Shapes as recorded in reference/openstack-api/flavor-*.txt: "swap" is "" when 0 (a Nova
 * quirk clients rely on), rxtx_factor 1.0, the OS-FLV-* and os-flavor-access attributes
 * of 2.1, and from 2.55 "description" / from 2.61 "extra_specs" (the openstack CLI asks
 * for 2.61 on `flavor list` and reads them; both are empty in nube).
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
#include "log.h"

#define LOG_MOD "api.flavors"

static json_object *flavor_json(const api_ctx *ctx, const cl_flavor *f, bool detail, int mv)
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
    if (detail && mv >= 55)
        json_object_object_add(o, "description", NULL);
    if (detail && mv >= 61)
        json_object_object_add(o, "extra_specs", json_object_new_object());
    return o;
}

/* By id only (see the header comment). 0, -ENOENT, or another negative errno. */
static int flavor_by_id(cl_store *st, const char *id, cl_flavor *out)
{
    int rc = cl_store_flavor_get(st, id, out);

    if (rc < 0)
        return rc;
    if (strcmp(out->id, id) != 0)
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
            f->disk_gb < min_disk)
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
        json_object_array_add(list, flavor_json(ctx, f, detail, mv));
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
                 int *out_mv)
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
    return true;
}

/* GET /v2.1/flavors/{id} */
void api_flavors_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *id = cl_http_req_param(req, "id");
    json_object *body;
    cl_flavor f;
    int mv = API_MV_MIN;

    if (id && strcmp(id, "detail") == 0) {
        api_flavors_detail(req, resp, ud);
        return;
    }
    if (!load(ctx, req, resp, &f, &mv))
        return;
    body = json_object_new_object();
    json_object_object_add(body, "flavor", flavor_json(ctx, &f, true, mv));
    cl_http_resp_json(resp, 200, body);
}

/* GET /v2.1/flavors/{id}/os-extra_specs: nube flavors carry no extra specs yet. */
void api_flavors_extra_specs(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    json_object *body;
    cl_flavor f;
    int mv = API_MV_MIN;

    if (!load(ud, req, resp, &f, &mv))
        return;
    body = json_object_new_object();
    json_object_object_add(body, "extra_specs", json_object_new_object());
    cl_http_resp_json(resp, 200, body);
}
