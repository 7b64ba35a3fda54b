/*
 * images.c - a stand-in Image v2 (Glance) endpoint, until nube-image exists.
 *
 * Why it exists: the stock openstack CLI builds its image client for every server
 * command. `server list` and `server show` stop with "public endpoint for image service
 * not found" without an image entry in the catalog, or with "exists but does not have any
 * supported versions" when that endpoint does not answer version discovery, and
 * `server create --image X` looks X up in Glance before it posts to Nova.
 *
 * What it does: served on the Compute listener under /image and listed in the catalog as
 * the "image" service, it answers version discovery (300, like Glance) and treats every
 * id as an existing, active, public image named after the id. That matches what the
 * Compute API accepts for imageRef in this issue (any id). Listing returns no images
 * (the CLI then shows ids instead of names).
 *
 * The image-store issue replaces this file: the catalog points at nube-image instead and
 * imageRef gets checked against it.
 */
#include <stdio.h>
#include <string.h>

#include "api_int.h"

static bool image_begin(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp)
{
    if (!atomic_load_explicit(&ctx->ready, memory_order_acquire)) {
        cl_http_resp_errorf(resp, CL_E_UNAVAILABLE, "nube-api is starting; try again.");
        return false;
    }
    if (!api_token_ok(ctx, cl_http_req_header(req, "X-Auth-Token"))) {
        api_respond_unauthorized(ctx, resp);
        return false;
    }
    return true;
}

/* GET /image: Glance's version document (300 Multiple Choices). */
void api_images_versions(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    json_object *body, *list, *v, *links;
    char href[API_URL_MAX + 32];

    (void)req;
    if (!atomic_load_explicit(&ctx->ready, memory_order_acquire)) {
        cl_http_resp_errorf(resp, CL_E_UNAVAILABLE, "nube-api is starting; try again.");
        return;
    }
    body = json_object_new_object();
    list = json_object_new_array();
    v = json_object_new_object();
    links = json_object_new_array();
    snprintf(href, sizeof(href), "%s/image/v2/", ctx->compute_url);
    json_object_object_add(v, "id", json_object_new_string("v2.15"));
    json_object_object_add(v, "status", json_object_new_string("CURRENT"));
    json_object_array_add(links, api_link("self", href));
    json_object_object_add(v, "links", links);
    json_object_array_add(list, v);
    json_object_object_add(body, "versions", list);
    cl_http_resp_json(resp, 300, body);
}

static json_object *image_json(const api_ctx *ctx, const char *id)
{
    json_object *o = json_object_new_object();
    char path[256];

    json_object_object_add(o, "id", json_object_new_string(id));
    json_object_object_add(o, "name", json_object_new_string(id));
    json_object_object_add(o, "status", json_object_new_string("active"));
    json_object_object_add(o, "visibility", json_object_new_string("public"));
    json_object_object_add(o, "disk_format", json_object_new_string("qcow2"));
    json_object_object_add(o, "container_format", json_object_new_string("bare"));
    json_object_object_add(o, "min_disk", json_object_new_int(0));
    json_object_object_add(o, "min_ram", json_object_new_int(0));
    json_object_object_add(o, "protected", json_object_new_boolean(false));
    json_object_object_add(o, "os_hidden", json_object_new_boolean(false));
    json_object_object_add(o, "owner", json_object_new_string(ctx->cfg->admin_project_id));
    json_object_object_add(o, "tags", json_object_new_array());
    snprintf(path, sizeof(path), "/v2/images/%.200s", id);
    json_object_object_add(o, "self", json_object_new_string(path));
    json_object_object_add(o, "schema", json_object_new_string("/v2/schemas/image"));
    return o;
}

/* GET /image/v2/images: nothing to list yet (?name= included). */
void api_images_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    json_object *body;

    if (!image_begin(ud, req, resp))
        return;
    body = json_object_new_object();
    json_object_object_add(body, "images", json_object_new_array());
    json_object_object_add(body, "first", json_object_new_string("/v2/images"));
    json_object_object_add(body, "schema", json_object_new_string("/v2/schemas/images"));
    cl_http_resp_json(resp, 200, body);
}

/* GET /image/v2/images/{id}: every id is an image for now (see the header comment). */
void api_images_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    const char *id = cl_http_req_param(req, "id");

    if (!image_begin(ud, req, resp))
        return;
    if (!id || !*id || strlen(id) >= CL_ID_MAX) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "No image found with ID %.64s",
                            id ? id : "");
        return;
    }
    cl_http_resp_json(resp, 200, image_json(ud, id));
}
