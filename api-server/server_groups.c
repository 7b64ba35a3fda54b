/*
 * server_groups.c - /v2.1/os-server-groups: create, list, show, delete.
 *
 * Nova's dialects by microversion: before 2.64 a group has "policies" (a list of exactly
 * one policy) and "metadata" ({}); from 2.64 it has "policy" and "rules"
 * ({"max_server_per_host": N} for anti-affinity). soft-affinity and soft-anti-affinity
 * exist from 2.15, project_id/user_id are shown from 2.13. Members are added by the
 * create-server handler from the "group" scheduler hint (store_placement.h); the policy
 * is enforced by the scheduler inside the claim.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api_int.h"
#include "cleanup.h"
#include "json.h"
#include "store_placement.h"
#include "util.h"

static json_object *group_json(cl_store *st, const cl_server_group *g, int mv)
{
    json_object *o = json_object_new_object();
    json_object *members = json_object_new_array();
    char(*m)[CL_UUID_LEN] = NULL;
    size_t n = 0;

    if (cl_store_group_members(st, g->uuid, &m, &n) == 0)
        for (size_t i = 0; i < n; i++)
            json_object_array_add(members, json_object_new_string(m[i]));
    free(m);
    json_object_object_add(o, "id", json_object_new_string(g->uuid));
    json_object_object_add(o, "name", json_object_new_string(g->name));
    json_object_object_add(o, "members", members);
    if (mv >= 64) {
        json_object *rules = json_object_new_object();

        json_object_object_add(o, "policy",
                               json_object_new_string(cl_group_policy_name(g->policy)));
        if (g->max_server_per_host > 0)
            json_object_object_add(rules, "max_server_per_host",
                                   json_object_new_int64(g->max_server_per_host));
        json_object_object_add(o, "rules", rules);
    } else {
        json_object *pol = json_object_new_array();

        json_object_array_add(pol, json_object_new_string(cl_group_policy_name(g->policy)));
        json_object_object_add(o, "policies", pol);
        json_object_object_add(o, "metadata", json_object_new_object());
    }
    if (mv >= 13) {
        json_object_object_add(o, "project_id", json_object_new_string(g->project_id));
        json_object_object_add(o, "user_id", json_object_new_string(g->user_id));
    }
    return o;
}

static int parse_policy(json_object *sg, int mv, cl_server_group *g, cl_error *err)
{
    json_object *v;
    const char *pol = NULL;

    if (mv >= 64) {
        if (!json_object_object_get_ex(sg, "policy", &v) ||
            !json_object_is_type(v, json_type_string))
            return cl_error_set(err, CL_E_BAD_REQUEST,
                                "Invalid input: 'policy' is a required property"), -EINVAL;
        pol = json_object_get_string(v);
    } else {
        if (!json_object_object_get_ex(sg, "policies", &v) ||
            !json_object_is_type(v, json_type_array) || json_object_array_length(v) != 1 ||
            !json_object_is_type(json_object_array_get_idx(v, 0), json_type_string))
            return cl_error_set(err, CL_E_BAD_REQUEST,
                                "Invalid input: 'policies' must be a list of one policy"),
                   -EINVAL;
        pol = json_object_get_string(json_object_array_get_idx(v, 0));
    }
    if (cl_group_policy_parse(pol, &g->policy) < 0 ||
        (mv < 15 && (g->policy == CL_GROUP_SOFT_AFFINITY ||
                     g->policy == CL_GROUP_SOFT_ANTI_AFFINITY)))
        return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid input: policy '%s' is not one of "
                            "the allowed values", pol), -EINVAL;
    if (mv >= 64 && json_object_object_get_ex(sg, "rules", &v)) {
        json_object *m;

        if (!json_object_is_type(v, json_type_object))
            return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid input: 'rules' must be an "
                                "object"), -EINVAL;
        json_object_object_foreach(v, key, val) {
            (void)val;
            if (strcmp(key, "max_server_per_host") != 0)
                return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid input: unknown rule "
                                    "'%s'", key), -EINVAL;
        }
        if (json_object_object_get_ex(v, "max_server_per_host", &m)) {
            if (g->policy != CL_GROUP_ANTI_AFFINITY)
                return cl_error_set(err, CL_E_BAD_REQUEST, "Only anti-affinity policy "
                                    "supports rules."), -EINVAL;
            int64_t x = 0;

            if (json_object_is_type(m, json_type_int))
                x = json_object_get_int64(m);
            else if (!json_object_is_type(m, json_type_string) ||
                     cl_parse_int64(json_object_get_string(m), &x) < 0)
                x = 0;
            if (x < 1 || x > 1000000)
                return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid input: "
                                    "max_server_per_host must be a positive integer"),
                       -EINVAL;
            g->max_server_per_host = x;
        }
    }
    return 0;
}

/* POST /v2.1/os-server-groups */
void api_server_groups_create(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_json_ json_object *root = NULL;
    json_object *sg, *body;
    const char *name = NULL;
    const cl_auth *a;
    cl_server_group g;
    cl_error err = {0};
    cl_store *st;
    int mv = API_MV_MIN, r;

    if (!api_compute_begin(ud, req, resp, true, &mv))
        return;
    a = api_auth_current();
    if (!a || !cl_auth_can_write(a, a->project_id)) {
        api_respond_policy(resp, "os_compute_api:os-server-groups:create");
        return;
    }
    if (cl_http_req_json(req, &root, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    memset(&g, 0, sizeof(g));
    if (!json_object_object_get_ex(root, "server_group", &sg) ||
        !json_object_is_type(sg, json_type_object)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "Invalid input: 'server_group' is a required property");
        return;
    }
    if (cl_json_get_str(root, "server_group.name", true, &name, &err) < 0 ||
        parse_policy(sg, mv, &g, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    if (!*name || strlen(name) > 255) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "Invalid input for field/attribute name: 1 to 255 characters");
        return;
    }
    cl_uuid_new(g.uuid);
    cl_strlcpy(g.name, name, sizeof(g.name));
    cl_strlcpy(g.project_id, a->project_id, sizeof(g.project_id));
    cl_strlcpy(g.user_id, a->user_id, sizeof(g.user_id));
    st = api_store(ud, resp);
    if (!st)
        return;
    r = cl_store_group_create(st, &g);
    if (r < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot record the server group (%s).",
                            strerror(-r));
        return;
    }
    body = json_object_new_object();
    json_object_object_add(body, "server_group", group_json(st, &g, mv));
    cl_http_resp_json(resp, 200, body);
}

/* GET /v2.1/os-server-groups[?all_projects=True&limit=&offset=] */
void api_server_groups_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_free_ cl_server_group *gs = NULL;
    const cl_auth *a;
    const char *allp, *q;
    json_object *body, *arr;
    int64_t limit = -1, offset = 0;
    size_t n = 0;
    cl_store *st;
    int mv = API_MV_MIN, r;

    if (!api_compute_begin(ud, req, resp, true, &mv))
        return;
    a = api_auth_current();
    if (!a) {
        api_respond_policy(resp, "os_compute_api:os-server-groups:index");
        return;
    }
    allp = cl_http_req_query(req, "all_projects");
    if ((q = cl_http_req_query(req, "limit")) && (cl_parse_int64(q, &limit) < 0 || limit < 0)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid limit");
        return;
    }
    if ((q = cl_http_req_query(req, "offset")) && (cl_parse_int64(q, &offset) < 0 || offset < 0)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid offset");
        return;
    }
    st = api_store(ud, resp);
    if (!st)
        return;
    bool all = cl_auth_is_admin(a) && allp &&
               (strcasecmp(allp, "true") == 0 || strcmp(allp, "1") == 0);
    r = cl_store_group_list(st, all ? NULL : a->project_id, &gs, &n);
    if (r < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot list server groups (%s).", strerror(-r));
        return;
    }
    body = json_object_new_object();
    arr = json_object_new_array();
    for (size_t i = (size_t)offset; i < n; i++) {
        if (limit >= 0 && (int64_t)(i - (size_t)offset) >= limit)
            break;
        json_object_array_add(arr, group_json(st, &gs[i], mv));
    }
    json_object_object_add(body, "server_groups", arr);
    cl_http_resp_json(resp, 200, body);
}

/* The {id} group as the caller may see it (404 for another project's). */
static bool group_load(void *ud, const cl_http_req *req, cl_http_resp *resp, int *mv,
                       cl_store **st, cl_server_group *g)
{
    const char *id = cl_http_req_param(req, "id");
    const cl_auth *a;

    if (!api_compute_begin(ud, req, resp, true, mv))
        return false;
    a = api_auth_current();
    *st = api_store(ud, resp);
    if (!*st || !a)
        return false;
    if (!id || cl_store_group_get(*st, id, g) < 0 || !cl_auth_can_read(a, g->project_id)) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Server group %s could not be found.",
                            id ? id : "");
        return false;
    }
    return true;
}

/* GET /v2.1/os-server-groups/{id} */
void api_server_groups_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    cl_server_group g;
    cl_store *st;
    json_object *body;
    int mv = API_MV_MIN;

    if (!group_load(ud, req, resp, &mv, &st, &g))
        return;
    body = json_object_new_object();
    json_object_object_add(body, "server_group", group_json(st, &g, mv));
    cl_http_resp_json(resp, 200, body);
}

/* DELETE /v2.1/os-server-groups/{id} */
void api_server_groups_delete(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    cl_server_group g;
    cl_store *st;
    int mv = API_MV_MIN, r;

    if (!group_load(ud, req, resp, &mv, &st, &g))
        return;
    if (!cl_auth_can_write(api_auth_current(), g.project_id)) {
        api_respond_policy(resp, "os_compute_api:os-server-groups:delete");
        return;
    }
    r = cl_store_group_delete(st, g.uuid);
    if (r < 0 && r != -ENOENT) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot delete the server group (%s).",
                            strerror(-r));
        return;
    }
    cl_http_resp_json(resp, 204, NULL);
}
