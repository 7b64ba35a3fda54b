/*
 * versions.c - the version documents of Compute, the first thing a client reads.
 *
 * keystoneauth discovers the Compute microversion range from GET /v2.1 (recorded in
 * reference/openstack-api/version-discovery.txt): "version" is the maximum (2.93) and
 * "min_version" the minimum (2.1). GET / lists v2.0 (SUPPORTED, no microversions) and
 * v2.1 (CURRENT) and, unlike Identity, answers 200. Neither needs a token.
 * (Identity's documents live in identity.c with the rest of Identity.)
 */
#include <stdio.h>

#include "api_int.h"

static json_object *version_v21(const api_ctx *ctx, bool full)
{
    json_object *v = json_object_new_object();
    json_object *links = json_object_new_array();
    char href[API_URL_MAX + 16];
    char mv[16];

    snprintf(href, sizeof(href), "%s/v2.1/", ctx->compute_url);
    snprintf(mv, sizeof(mv), "2.%d", API_MV_MAX);
    json_object_object_add(v, "id", json_object_new_string("v2.1"));
    json_object_object_add(v, "status", json_object_new_string("CURRENT"));
    json_object_object_add(v, "version", json_object_new_string(mv));
    json_object_object_add(v, "min_version", json_object_new_string("2.1"));
    json_object_object_add(v, "updated", json_object_new_string("2013-07-23T11:33:21Z"));
    json_object_array_add(links, api_link("self", href));
    if (full) {
        json_object *d = api_link("describedby", "http://docs.openstack.org/");
        json_object *media = json_object_new_array();
        json_object *m = json_object_new_object();

        json_object_object_add(d, "type", json_object_new_string("text/html"));
        json_object_array_add(links, d);
        json_object_object_add(m, "base", json_object_new_string("application/json"));
        json_object_object_add(
            m, "type", json_object_new_string("application/vnd.openstack.compute+json;version=2.1"));
        json_object_array_add(media, m);
        json_object_object_add(v, "links", links);
        json_object_object_add(v, "media-types", media);
    } else {
        json_object_object_add(v, "links", links);
    }
    return v;
}

/* GET / on Compute: 200 and both API versions. */
void api_compute_versions(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    json_object *body, *list, *v2, *links;
    char href[API_URL_MAX + 16];

    (void)req;
    if (!atomic_load_explicit(&ctx->ready, memory_order_acquire)) {
        cl_http_resp_errorf(resp, CL_E_UNAVAILABLE, "nube-api is starting; try again.");
        return;
    }
    body = json_object_new_object();
    list = json_object_new_array();
    v2 = json_object_new_object();
    links = json_object_new_array();
    snprintf(href, sizeof(href), "%s/v2/", ctx->compute_url);
    json_object_object_add(v2, "id", json_object_new_string("v2.0"));
    json_object_object_add(v2, "status", json_object_new_string("SUPPORTED"));
    json_object_object_add(v2, "version", json_object_new_string(""));
    json_object_object_add(v2, "min_version", json_object_new_string(""));
    json_object_object_add(v2, "updated", json_object_new_string("2011-01-21T11:33:21Z"));
    json_object_array_add(links, api_link("self", href));
    json_object_object_add(v2, "links", links);
    json_object_array_add(list, v2);
    json_object_array_add(list, version_v21(ctx, false));
    json_object_object_add(body, "versions", list);
    cl_http_resp_json(resp, 200, body);
}

/* GET /v2.1: the microversion range, with the version headers like every Compute answer. */
void api_compute_v21(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    json_object *body;

    if (!api_compute_begin(ctx, req, resp, false, NULL))
        return;
    body = json_object_new_object();
    json_object_object_add(body, "version", version_v21(ctx, true));
    cl_http_resp_json(resp, 200, body);
}
