/*
 * metadata.c - server metadata: GET/PUT/POST /v2.1/servers/{id}/metadata and
 * GET/PUT/DELETE /v2.1/servers/{id}/metadata/{key}.
 *
 * PUT on the collection replaces every item, POST merges, PUT on a key sets one (the
 * body must name that same key). Keys are 1..255 characters, values 0..255, and a server
 * holds at most the metadata_items quota (128): the count is checked inside the write
 * transaction (403 overLimit beyond it), as Nova. Readers may read, members of the
 * server's project and admins may change; another project's server answers 404.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
#include "cleanup.h"
#include "json.h"
#include "util.h"

#define MD_MAX_ITEMS 128

static json_object *md_object(const cl_kv *items, size_t n)
{
    json_object *o = json_object_new_object();

    for (size_t i = 0; i < n; i++)
        json_object_object_add(o, items[i].key, json_object_new_string(items[i].value));
    return o;
}

static void respond_all(cl_store *st, const char *uuid, cl_http_resp *resp)
{
    _cleanup_free_ cl_kv *items = NULL;
    json_object *body;
    size_t n = 0;
    int rc = cl_store_metadata_list(st, uuid, &items, &n);

    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read metadata (%s).", strerror(-rc));
        return;
    }
    body = json_object_new_object();
    json_object_object_add(body, "metadata", md_object(items, n));
    cl_http_resp_json(resp, 200, body);
}

/* Validate a {"<wrapper>": {k: v, ...}} body into items (malloc'd). Answers 400. */
static bool parse_items(const cl_http_req *req, cl_http_resp *resp, const char *wrapper,
                        cl_kv **out, size_t *out_n)
{
    _cleanup_json_ json_object *root = NULL;
    json_object *md;
    cl_error err = {0};
    cl_kv *items;
    size_t n, i = 0;

    if (cl_http_req_json(req, &root, &err) < 0 ||
        cl_json_get_object(root, wrapper, true, &md, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return false;
    }
    n = (size_t)json_object_object_length(md);
    if (n > MD_MAX_ITEMS) {
        cl_http_resp_errorf(resp, CL_E_OVER_LIMIT, "Quota exceeded for metadata_items: "
                            "at most %d items are allowed.", MD_MAX_ITEMS);
        return false;
    }
    items = calloc(n ? n : 1, sizeof(*items));
    if (!items) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Out of memory.");
        return false;
    }
    json_object_object_foreach(md, k, v) {
        size_t kl = strlen(k);

        if (kl == 0 || kl > 255 || !json_object_is_type(v, json_type_string) ||
            strlen(json_object_get_string(v)) > 255) {
            free(items);
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute %s. Keys must be 1 to 255 "
                                "characters and values strings of at most 255.", wrapper);
            return false;
        }
        cl_strlcpy(items[i].key, k, sizeof(items[i].key));
        cl_strlcpy(items[i].value, json_object_get_string(v), sizeof(items[i].value));
        i++;
    }
    *out = items;
    *out_n = n;
    return true;
}

static bool store_items(cl_store *st, const char *uuid, const cl_kv *items, size_t n,
                        bool replace, cl_http_resp *resp)
{
    int rc = cl_store_metadata_set(st, uuid, items, n, replace, MD_MAX_ITEMS);

    if (rc == -EDQUOT) {
        cl_http_resp_errorf(resp, CL_E_OVER_LIMIT, "Quota exceeded for metadata_items: "
                            "at most %d items are allowed.", MD_MAX_ITEMS);
        return false;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot store metadata (%s).", strerror(-rc));
        return false;
    }
    return true;
}

/* GET /v2.1/servers/{id}/metadata */
void api_server_metadata_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    cl_instance inst;
    cl_store *st;

    if (!api_compute_begin(ud, req, resp, true, NULL) ||
        !api_server_load(ud, req, resp, false, "os_compute_api:server-metadata:index", &st,
                         &inst))
        return;
    respond_all(st, inst.uuid, resp);
}

static void set_common(const cl_http_req *req, cl_http_resp *resp, void *ud, bool replace)
{
    _cleanup_free_ cl_kv *items = NULL;
    cl_instance inst;
    cl_store *st;
    size_t n = 0;

    if (!api_compute_begin(ud, req, resp, true, NULL) ||
        !api_server_load(ud, req, resp, true,
                         replace ? "os_compute_api:server-metadata:update_all"
                                 : "os_compute_api:server-metadata:create", &st, &inst) ||
        !parse_items(req, resp, "metadata", &items, &n) ||
        !store_items(st, inst.uuid, items, n, replace, resp))
        return;
    respond_all(st, inst.uuid, resp);
}

/* PUT /v2.1/servers/{id}/metadata: replace all. */
void api_server_metadata_replace(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    set_common(req, resp, ud, true);
}

/* POST /v2.1/servers/{id}/metadata: merge. */
void api_server_metadata_update(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    set_common(req, resp, ud, false);
}

/* GET /v2.1/servers/{id}/metadata/{key} */
void api_server_metadata_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_free_ cl_kv *items = NULL;
    const char *key = cl_http_req_param(req, "key");
    json_object *body;
    cl_instance inst;
    cl_store *st;
    size_t n = 0;

    if (!api_compute_begin(ud, req, resp, true, NULL) ||
        !api_server_load(ud, req, resp, false, "os_compute_api:server-metadata:show", &st,
                         &inst))
        return;
    if (cl_store_metadata_list(st, inst.uuid, &items, &n) < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read metadata.");
        return;
    }
    for (size_t i = 0; key && i < n; i++) {
        if (strcmp(items[i].key, key) == 0) {
            body = json_object_new_object();
            json_object_object_add(body, "meta", md_object(&items[i], 1));
            cl_http_resp_json(resp, 200, body);
            return;
        }
    }
    cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Metadata item was not found");
}

/* PUT /v2.1/servers/{id}/metadata/{key} {"meta": {"<key>": "value"}} */
void api_server_metadata_put(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_free_ cl_kv *items = NULL;
    const char *key = cl_http_req_param(req, "key");
    json_object *body;
    cl_instance inst;
    cl_store *st;
    size_t n = 0;

    if (!api_compute_begin(ud, req, resp, true, NULL) ||
        !api_server_load(ud, req, resp, true, "os_compute_api:server-metadata:update", &st,
                         &inst) ||
        !parse_items(req, resp, "meta", &items, &n))
        return;
    if (n != 1) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Request body contains too many items");
        return;
    }
    if (!key || strcmp(items[0].key, key) != 0) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Request body and URI mismatch");
        return;
    }
    if (!store_items(st, inst.uuid, items, 1, false, resp))
        return;
    body = json_object_new_object();
    json_object_object_add(body, "meta", md_object(items, 1));
    cl_http_resp_json(resp, 200, body);
}

/* DELETE /v2.1/servers/{id}/metadata/{key} */
void api_server_metadata_delete(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    const char *key = cl_http_req_param(req, "key");
    cl_instance inst;
    cl_store *st;
    int rc;

    if (!api_compute_begin(ud, req, resp, true, NULL) ||
        !api_server_load(ud, req, resp, true, "os_compute_api:server-metadata:delete", &st,
                         &inst))
        return;
    rc = key ? cl_store_metadata_delete(st, inst.uuid, key) : -ENOENT;
    if (rc == -ENOENT) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Metadata item was not found");
        return;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot delete metadata (%s).", strerror(-rc));
        return;
    }
    cl_http_resp_json(resp, 204, NULL);
}
