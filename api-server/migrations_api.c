/*
 * migrations_api.c - GET /v2.1/os-migrations (admins): Nova's list of cold and live
 * migrations, resizes and evacuations.
 *
 * The rows are the placement schema's migrations table (written by the migration work
 * in the scheduler), read through cl_store_migrations_list, which answers an empty list
 * while that table does not exist. Shapes by microversion as Nova: the 2.1 fields, then
 * migration_type and links to the server's migration for live migrations in progress
 * (2.23), uuid (2.59), user_id/project_id (2.80); limit/marker (by uuid) and
 * "migrations_links" from 2.59. nube keeps one node per host, so *_node equals
 * *_compute.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
#include "cleanup.h"
#include "json.h"

static bool in_progress(const char *status)
{
    static const char *const done[] = {"completed", "finished", "done", "error", "failed",
                                       "cancelled", "reverted", "confirmed"};

    for (size_t i = 0; i < CL_ARRAY_SIZE(done); i++)
        if (strcmp(status, done[i]) == 0)
            return false;
    return true;
}

static json_object *migration_json(const api_ctx *ctx, const cl_migration_row *m, int mv)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "id", json_object_new_int64(m->id));
    json_object_object_add(o, "source_node", json_object_new_string(m->source_host));
    json_object_object_add(o, "dest_node", json_object_new_string(m->dest_host));
    json_object_object_add(o, "source_compute", json_object_new_string(m->source_host));
    json_object_object_add(o, "dest_compute", json_object_new_string(m->dest_host));
    json_object_object_add(o, "dest_host", json_object_new_string("127.0.0.1"));
    json_object_object_add(o, "status", json_object_new_string(m->status));
    json_object_object_add(o, "instance_uuid", json_object_new_string(m->instance_uuid));
    json_object_object_add(o, "old_instance_type_id", json_object_new_int(0));
    json_object_object_add(o, "new_instance_type_id", json_object_new_int(0));
    json_object_object_add(o, "created_at", api_time_json(m->created_ms, false));
    json_object_object_add(o, "updated_at", api_time_json(m->updated_ms, false));
    if (mv >= 23) {
        json_object_object_add(o, "migration_type", json_object_new_string(m->type));
        if (strcmp(m->type, "live-migration") == 0 && in_progress(m->status)) {
            char coll[CL_UUID_LEN + 32];

            snprintf(coll, sizeof(coll), "servers/%s/migrations", m->instance_uuid);
            json_object_object_add(o, "links", api_links_self_bookmark(ctx, coll,
                                                                       m->uuid));
        }
    }
    if (mv >= 59)
        json_object_object_add(o, "uuid", json_object_new_string(m->uuid));
    if (mv >= 80) {
        json_object_object_add(o, "user_id", json_object_new_string(m->user_id));
        json_object_object_add(o, "project_id", json_object_new_string(m->project_id));
    }
    return o;
}

/* GET /v2.1/os-migrations[?host=&status=&instance_uuid=&migration_type=&limit=&marker=] */
void api_migrations_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    _cleanup_free_ cl_migration_row *rows = NULL;
    const char *type = cl_http_req_query(req, "migration_type");
    const char *marker;
    json_object *body, *list;
    size_t n = 0, start = 0, count = 0;
    int64_t limit;
    cl_store *st;
    int mv = API_MV_MIN;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, &mv) ||
        !api_require_admin(resp, "os_compute_api:os-migrations:index") ||
        !api_page_params(req, resp, &limit, &marker))
        return;
    if (type && strcmp(type, "migration") && strcmp(type, "live-migration") &&
        strcmp(type, "resize") && strcmp(type, "evacuation")) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "Invalid input for query parameters migration_type.");
        return;
    }
    st = api_store(ctx, resp);
    if (!st)
        return;
    rc = cl_store_migrations_list(st, cl_http_req_query(req, "host"),
                                  cl_http_req_query(req, "status"),
                                  cl_http_req_query(req, "instance_uuid"), type, &rows, &n);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot list migrations (%s).", strerror(-rc));
        return;
    }
    if (mv < 59)
        limit = 0; /* paging arrived with 2.59 */
    if (marker && mv >= 59) {
        while (start < n && strcmp(rows[start].uuid, marker) != 0)
            start++;
        if (start == n) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Marker %.64s could not be found.",
                                marker);
            return;
        }
        start++;
    }
    body = json_object_new_object();
    list = json_object_new_array();
    for (size_t i = start; i < n; i++) {
        if (limit > 0 && (int64_t)count == limit) {
            json_object *links = json_object_new_array();
            _cleanup_free_ char *href = NULL;

            if (asprintf(&href, "%s/v2.1/os-migrations?limit=%lld&marker=%s",
                         ctx->compute_url, (long long)limit, rows[i - 1].uuid) < 0)
                href = NULL;
            json_object_array_add(links, api_link("next", href ? href : ""));
            json_object_object_add(body, "migrations_links", links);
            break;
        }
        json_object_array_add(list, migration_json(ctx, &rows[i], mv));
        count++;
    }
    json_object_object_add(body, "migrations", list);
    cl_http_resp_json(resp, 200, body);
}
