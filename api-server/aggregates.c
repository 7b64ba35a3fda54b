/*
 * aggregates.c - /v2.1/os-aggregates (admin only): host aggregates and availability
 * zones.
 *
 * An aggregate groups hosts and carries metadata; its availability_zone (also stored
 * as the "availability_zone" metadata key, as Nova does) puts its hosts in that zone.
 * The scheduler reads both: AvailabilityZoneFilter for the zone a server asks for, and
 * AggregateInstanceExtraSpecsFilter matching flavor extra specs
 * "aggregate_instance_extra_specs:<key>" against the metadata. Actions: add_host,
 * remove_host, set_metadata (a null value removes a key).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
#include "cleanup.h"
#include "json.h"
#include "store_placement.h"
#include "util.h"

#define RULE "os_compute_api:os-aggregates"

static json_object *agg_json(cl_aggregate *a, int mv)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "id", json_object_new_int64(a->id));
    json_object_object_add(o, "name", json_object_new_string(a->name));
    json_object_object_add(o, "availability_zone",
                           a->az[0] ? json_object_new_string(a->az) : NULL);
    json_object_object_add(o, "hosts", json_object_get(a->hosts));
    json_object_object_add(o, "metadata", json_object_get(a->metadata));
    json_object_object_add(o, "created_at", api_time_json(a->created_ms, false));
    json_object_object_add(o, "updated_at", a->updated_ms != a->created_ms
                                                ? api_time_json(a->updated_ms, false) : NULL);
    json_object_object_add(o, "deleted", json_object_new_boolean(false));
    json_object_object_add(o, "deleted_at", NULL);
    if (mv >= 41)
        json_object_object_add(o, "uuid", json_object_new_string(a->uuid));
    return o;
}

static void respond_agg(cl_store *st, cl_http_resp *resp, int64_t id, int mv)
{
    cl_aggregate a;
    json_object *body;

    if (cl_store_aggregate_get(st, id, &a) < 0) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Aggregate %" PRId64 " could not be found.",
                            id);
        return;
    }
    body = json_object_new_object();
    json_object_object_add(body, "aggregate", agg_json(&a, mv));
    cl_aggregate_clear(&a);
    cl_http_resp_json(resp, 200, body);
}

static bool begin(void *ud, const cl_http_req *req, cl_http_resp *resp, int *mv, cl_store **st)
{
    if (!api_compute_begin(ud, req, resp, true, mv))
        return false;
    if (!api_require_admin(resp, RULE))
        return false;
    *st = api_store(ud, resp);
    return *st != NULL;
}

static bool id_of(const cl_http_req *req, cl_http_resp *resp, int64_t *id)
{
    const char *s = cl_http_req_param(req, "id");

    if (!s || cl_parse_int64(s, id) < 0) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Aggregate %s could not be found.",
                            s ? s : "");
        return false;
    }
    return true;
}

/* GET /v2.1/os-aggregates (replaces the empty stub that lived in hypervisors.c) */
void api_aggregates_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    cl_aggregate *arr = NULL;
    size_t n = 0;
    cl_store *st;
    json_object *body, *list;
    int mv = API_MV_MIN, r;

    if (!begin(ud, req, resp, &mv, &st))
        return;
    r = cl_store_aggregate_list(st, &arr, &n);
    if (r < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot list aggregates (%s).", strerror(-r));
        return;
    }
    body = json_object_new_object();
    list = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        json_object_array_add(list, agg_json(&arr[i], mv));
        cl_aggregate_clear(&arr[i]);
    }
    free(arr);
    json_object_object_add(body, "aggregates", list);
    cl_http_resp_json(resp, 200, body);
}

/* Optional string field of "aggregate" (NULL when absent or null). */
static int opt_str(json_object *agg, const char *key, const char **out, cl_error *err)
{
    json_object *v;

    *out = NULL;
    if (!json_object_object_get_ex(agg, key, &v) || json_object_is_type(v, json_type_null))
        return 0;
    if (!json_object_is_type(v, json_type_string) || !*json_object_get_string(v) ||
        strlen(json_object_get_string(v)) > 255)
        return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid input for field/attribute %s",
                            key), -EINVAL;
    *out = json_object_get_string(v);
    return 0;
}

/* POST /v2.1/os-aggregates */
void api_aggregates_create(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_json_ json_object *root = NULL;
    json_object *agg;
    const char *name, *az;
    cl_error err = {0};
    cl_aggregate a;
    cl_store *st;
    int mv = API_MV_MIN, r;

    if (!begin(ud, req, resp, &mv, &st))
        return;
    if (cl_http_req_json(req, &root, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    if (!json_object_object_get_ex(root, "aggregate", &agg) ||
        !json_object_is_type(agg, json_type_object)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "Invalid input: 'aggregate' is a required property");
        return;
    }
    if (opt_str(agg, "name", &name, &err) < 0 || opt_str(agg, "availability_zone", &az, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    if (!name) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid input: 'name' is required");
        return;
    }
    r = cl_store_aggregate_create(st, name, az, &a);
    if (r == -EEXIST) {
        cl_http_resp_errorf(resp, CL_E_CONFLICT, "Aggregate %s already exists.", name);
        return;
    }
    if (r < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot create the aggregate (%s).",
                            strerror(-r));
        return;
    }
    json_object *body = json_object_new_object();

    json_object_object_add(body, "aggregate", agg_json(&a, mv));
    cl_aggregate_clear(&a);
    cl_http_resp_json(resp, 200, body);
}

/* GET /v2.1/os-aggregates/{id} */
void api_aggregates_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    cl_store *st;
    int64_t id;
    int mv = API_MV_MIN;

    if (!begin(ud, req, resp, &mv, &st) || !id_of(req, resp, &id))
        return;
    respond_agg(st, resp, id, mv);
}

/* PUT /v2.1/os-aggregates/{id} */
void api_aggregates_update(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_json_ json_object *root = NULL;
    json_object *agg;
    const char *name, *az;
    cl_error err = {0};
    cl_store *st;
    int64_t id;
    int mv = API_MV_MIN, r;

    if (!begin(ud, req, resp, &mv, &st) || !id_of(req, resp, &id))
        return;
    if (cl_http_req_json(req, &root, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    if (!json_object_object_get_ex(root, "aggregate", &agg) ||
        !json_object_is_type(agg, json_type_object) ||
        opt_str(agg, "name", &name, &err) < 0 || opt_str(agg, "availability_zone", &az, &err) < 0) {
        if (!err.message[0])
            cl_error_set(&err, CL_E_BAD_REQUEST, "Invalid input: 'aggregate' is required");
        cl_http_resp_error(resp, &err);
        return;
    }
    r = cl_store_aggregate_update(st, id, name, az);
    if (r == -ENOENT) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Aggregate %" PRId64 " could not be found.",
                            id);
        return;
    }
    if (r < 0) {
        cl_http_resp_errorf(resp, r == -EEXIST ? CL_E_CONFLICT : CL_E_INTERNAL,
                            "Cannot update the aggregate (%s).", strerror(-r));
        return;
    }
    respond_agg(st, resp, id, mv);
}

/* DELETE /v2.1/os-aggregates/{id} */
void api_aggregates_delete(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    cl_store *st;
    int64_t id;
    int mv = API_MV_MIN, r;

    if (!begin(ud, req, resp, &mv, &st) || !id_of(req, resp, &id))
        return;
    r = cl_store_aggregate_delete(st, id);
    if (r == -ENOENT)
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Aggregate %" PRId64 " could not be found.",
                            id);
    else if (r == -EBUSY)
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Cannot remove aggregate %" PRId64
                            ": it still has hosts.", id);
    else if (r < 0)
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot delete the aggregate (%s).",
                            strerror(-r));
    else
        cl_http_resp_json(resp, 200, NULL);
}

/* POST /v2.1/os-aggregates/{id}/action: add_host, remove_host, set_metadata */
void api_aggregates_action(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_json_ json_object *root = NULL;
    json_object *act;
    const char *host = NULL;
    cl_error err = {0};
    cl_store *st;
    int64_t id;
    int mv = API_MV_MIN, r;

    if (!begin(ud, req, resp, &mv, &st) || !id_of(req, resp, &id))
        return;
    if (cl_http_req_json(req, &root, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    if (json_object_object_get_ex(root, "add_host", &act) ||
        json_object_object_get_ex(root, "remove_host", &act)) {
        bool add = json_object_object_get_ex(root, "add_host", NULL);

        if (cl_json_get_str(act, "host", true, &host, &err) < 0) {
            cl_http_resp_error(resp, &err);
            return;
        }
        r = add ? cl_store_aggregate_add_host(st, id, host, &err)
                : cl_store_aggregate_remove_host(st, id, host);
        if (r < 0) {
            if (err.message[0])
                cl_http_resp_error(resp, &err);
            else if (r == -ENOENT)
                cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Aggregate %" PRId64 " or host %s "
                                    "could not be found%s.", id, host,
                                    add ? "" : " (or the host is not a member)");
            else
                cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot change the aggregate (%s).",
                                    strerror(-r));
            return;
        }
    } else if (json_object_object_get_ex(root, "set_metadata", &act)) {
        json_object *meta;

        if (!json_object_object_get_ex(act, "metadata", &meta) ||
            !json_object_is_type(meta, json_type_object)) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Invalid input: set_metadata needs a 'metadata' object");
            return;
        }
        r = cl_store_aggregate_set_metadata(st, id, meta);
        if (r < 0) {
            cl_http_resp_errorf(resp, r == -ENOENT ? CL_E_NOT_FOUND : CL_E_BAD_REQUEST,
                                r == -ENOENT ? "Aggregate %" PRId64 " could not be found."
                                             : "Invalid metadata for aggregate %" PRId64, id);
            return;
        }
    } else {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Unsupported aggregate action");
        return;
    }
    respond_agg(st, resp, id, mv);
}
