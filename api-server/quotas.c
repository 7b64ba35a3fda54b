/*
 * quotas.c - GET/PUT/DELETE /v2.1/os-quota-sets/{project_id}, .../defaults, .../detail,
 * and GET /v2.1/limits.
 *
 * Defaults come from nube-api.conf [quota]; per-project overrides live in the quotas
 * table (store_compute.h). Enforcement is elsewhere (servers.c through
 * cl_store_instances_create_quota, keypairs.c): this file only shows and sets limits.
 * Shapes as reference/openstack-api/quota-show.txt and limits-show.txt: the legacy
 * network resources (fixed_ips, floating_ips, security_groups, ...) are reported as
 * unlimited (-1) as Nova does without nova-network, and the injected-file ones as
 * Nova's fixed defaults.
 *
 * Policy as Nova: anyone with a role reads their own project's quotas, admins any
 * project's (another project answers 403 for tenants: a quota set is not an object that
 * may or may not exist, every project id has one); only admins update or reset.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "util.h"

#define LOG_MOD "api.quotas"

/* Nova's fixed values for resources nube does not manage. */
static const struct {
    const char *name;
    int64_t value;
} fixed_quotas[] = {
    {"fixed_ips", -1},
    {"floating_ips", -1},
    {"injected_file_content_bytes", 10240},
    {"injected_file_path_bytes", 255},
    {"injected_files", 5},
    {"security_group_rules", -1},
    {"security_groups", -1},
};

void api_quota_defaults(const api_ctx *ctx, cl_quota_set *out)
{
    const api_cfg *c = ctx->cfg;

    out->limit[CL_QUOTA_INSTANCES] = c->quota_instances;
    out->limit[CL_QUOTA_CORES] = c->quota_cores;
    out->limit[CL_QUOTA_RAM] = c->quota_ram;
    out->limit[CL_QUOTA_KEY_PAIRS] = c->quota_key_pairs;
    out->limit[CL_QUOTA_SERVER_GROUPS] = c->quota_server_groups;
    out->limit[CL_QUOTA_SERVER_GROUP_MEMBERS] = c->quota_server_group_members;
    out->limit[CL_QUOTA_METADATA_ITEMS] = 128; /* Nova's default; not configurable here */
}

int api_quota_limits(api_ctx *ctx, cl_store *st, const char *project_id, cl_quota_set *out)
{
    api_quota_defaults(ctx, out);
    return cl_store_quota_get(st, project_id, out);
}

/* The {id} project the caller may read quotas of, or answers 403/400. */
static bool quota_project(const cl_http_req *req, cl_http_resp *resp, const char **out)
{
    const char *id = cl_http_req_param(req, "id");
    const cl_auth *a = api_auth_current();

    if (!id || !*id || strlen(id) >= CL_ID_MAX) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid project id.");
        return false;
    }
    if (!a || !cl_auth_can_read(a, id)) {
        api_respond_policy(resp, "os_compute_api:os-quota-sets:show");
        return false;
    }
    *out = id;
    return true;
}

static int64_t used_of(const cl_project_usage *u, cl_quota_res r)
{
    switch (r) {
    case CL_QUOTA_INSTANCES: return u->instances;
    case CL_QUOTA_CORES: return u->cores;
    case CL_QUOTA_RAM: return u->ram_mb;
    case CL_QUOTA_KEY_PAIRS: return u->key_pairs;
    case CL_QUOTA_SERVER_GROUPS: return u->server_groups;
    default: return 0;
    }
}

/* {"quota_set": {...}}; detail adds in_use/reserved per resource (u needed then). */
static json_object *quota_body(const char *project_id, const cl_quota_set *q,
                               const cl_project_usage *u)
{
    json_object *body = json_object_new_object();
    json_object *qs = json_object_new_object();

    if (project_id)
        json_object_object_add(qs, "id", json_object_new_string(project_id));
    for (int r = 0; r < CL_QUOTA_MAX; r++) {
        if (u) {
            json_object *d = json_object_new_object();

            json_object_object_add(d, "in_use", json_object_new_int64(used_of(u, r)));
            json_object_object_add(d, "limit", json_object_new_int64(q->limit[r]));
            json_object_object_add(d, "reserved", json_object_new_int(0));
            json_object_object_add(qs, cl_quota_res_name(r), d);
        } else {
            json_object_object_add(qs, cl_quota_res_name(r), json_object_new_int64(q->limit[r]));
        }
    }
    for (size_t i = 0; i < CL_ARRAY_SIZE(fixed_quotas); i++) {
        if (u) {
            json_object *d = json_object_new_object();

            json_object_object_add(d, "in_use", json_object_new_int(0));
            json_object_object_add(d, "limit", json_object_new_int64(fixed_quotas[i].value));
            json_object_object_add(d, "reserved", json_object_new_int(0));
            json_object_object_add(qs, fixed_quotas[i].name, d);
        } else {
            json_object_object_add(qs, fixed_quotas[i].name,
                                   json_object_new_int64(fixed_quotas[i].value));
        }
    }
    json_object_object_add(body, "quota_set", qs);
    return body;
}

static void show_common(const cl_http_req *req, cl_http_resp *resp, void *ud, bool detail)
{
    api_ctx *ctx = ud;
    const char *project;
    cl_project_usage u = {0};
    cl_quota_set q;
    cl_store *st;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, NULL) || !quota_project(req, resp, &project))
        return;
    st = api_store(ctx, resp);
    if (!st)
        return;
    rc = api_quota_limits(ctx, st, project, &q);
    if (rc == 0 && detail)
        rc = cl_store_project_usage(st, project, api_auth_current()->user_id, &u);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read quotas (%s).", strerror(-rc));
        return;
    }
    cl_http_resp_json(resp, 200, quota_body(project, &q, detail ? &u : NULL));
}

/* GET /v2.1/os-quota-sets/{id} */
void api_quota_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    show_common(req, resp, ud, false);
}

/* GET /v2.1/os-quota-sets/{id}/detail */
void api_quota_detail(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    show_common(req, resp, ud, true);
}

/* GET /v2.1/os-quota-sets/{id}/defaults */
void api_quota_defaults_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *project;
    cl_quota_set q;

    if (!api_compute_begin(ctx, req, resp, true, NULL) || !quota_project(req, resp, &project))
        return;
    api_quota_defaults(ctx, &q);
    cl_http_resp_json(resp, 200, quota_body(project, &q, NULL));
}

/* PUT /v2.1/os-quota-sets/{id} {"quota_set": {"instances": 5, ..., "force": false}} */
void api_quota_update(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    _cleanup_json_ json_object *root = NULL;
    json_object *qs;
    const char *project;
    cl_error err = {0};
    cl_quota_set q;
    cl_project_usage u = {0};
    int64_t want[CL_QUOTA_MAX];
    bool set[CL_QUOTA_MAX] = {0};
    bool force = false;
    cl_store *st;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, NULL))
        return;
    if (!api_require_admin(resp, "os_compute_api:os-quota-sets:update") ||
        !quota_project(req, resp, &project))
        return;
    if (cl_http_req_json(req, &root, &err) < 0 ||
        cl_json_get_object(root, "quota_set", true, &qs, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    json_object_object_foreach(qs, k, v) {
        cl_quota_res r;
        bool fixed = false;
        int64_t n;

        if (strcmp(k, "force") == 0) {
            if (!json_object_is_type(v, json_type_boolean)) {
                cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                    "Invalid input for field/attribute force.");
                return;
            }
            force = json_object_get_boolean(v);
            continue;
        }
        for (size_t i = 0; i < CL_ARRAY_SIZE(fixed_quotas); i++)
            fixed = fixed || strcmp(k, fixed_quotas[i].name) == 0;
        if (cl_quota_res_parse(k, &r) < 0 && !fixed) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute quota_set. Additional "
                                "properties are not allowed ('%.64s' was unexpected)", k);
            return;
        }
        /* Nova accepts integers and integer strings, -1 .. 2^31-1. */
        if (json_object_is_type(v, json_type_int)) {
            n = json_object_get_int64(v);
        } else if (!json_object_is_type(v, json_type_string) ||
                   cl_parse_int64(json_object_get_string(v), &n) < 0) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute %.64s. Value must be an "
                                "integer.", k);
            return;
        }
        if (n < -1 || n > INT32_MAX) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute %.64s. Value must be between "
                                "-1 and 2147483647.", k);
            return;
        }
        if (fixed)
            continue; /* accepted and ignored, as Nova without nova-network */
        want[r] = n;
        set[r] = true;
    }
    st = api_store(ctx, resp);
    if (!st)
        return;
    rc = cl_store_project_usage(st, project, NULL, &u);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read usage (%s).", strerror(-rc));
        return;
    }
    for (int r = 0; r < CL_QUOTA_MAX && !force; r++) {
        int64_t used = used_of(&u, r);

        if (set[r] && want[r] >= 0 && want[r] < used && r != CL_QUOTA_KEY_PAIRS) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Quota limit %lld for %s must be greater than or equal to "
                                "already used and reserved %lld.", (long long)want[r],
                                cl_quota_res_name(r), (long long)used);
            return;
        }
    }
    for (int r = 0; r < CL_QUOTA_MAX; r++) {
        if (!set[r])
            continue;
        rc = cl_store_quota_set(st, project, r, want[r]);
        if (rc < 0) {
            cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot store quotas (%s).",
                                strerror(-rc));
            return;
        }
    }
    cl_info(LOG_MOD, "quotas of project %s updated", project);
    rc = api_quota_limits(ctx, st, project, &q);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read quotas (%s).", strerror(-rc));
        return;
    }
    /* Nova's update answer has no "id". */
    cl_http_resp_json(resp, 200, quota_body(NULL, &q, NULL));
}

/* DELETE /v2.1/os-quota-sets/{id}: back to the defaults. */
void api_quota_delete(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *project;
    cl_store *st;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, NULL))
        return;
    if (!api_require_admin(resp, "os_compute_api:os-quota-sets:delete") ||
        !quota_project(req, resp, &project))
        return;
    st = api_store(ctx, resp);
    if (!st)
        return;
    rc = cl_store_quota_delete(st, project);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot reset quotas (%s).", strerror(-rc));
        return;
    }
    cl_http_resp_json(resp, 202, NULL);
}

/* GET /v2.1/limits[?tenant_id=] (limits-show.txt): absolute limits and usage of the
 * caller's project; admins may name another with tenant_id. */
void api_limits(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const cl_auth *a;
    const char *project;
    cl_project_usage u = {0};
    cl_quota_set q;
    json_object *body, *lim, *abs;
    cl_store *st;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, NULL))
        return;
    a = api_auth_current();
    project = cl_http_req_query(req, "tenant_id");
    if (!project || !cl_auth_is_admin(a))
        project = a ? a->project_id : "";
    if (!a || !cl_auth_can_read(a, project) || strlen(project) >= CL_ID_MAX) {
        api_respond_policy(resp, "os_compute_api:limits");
        return;
    }
    st = api_store(ctx, resp);
    if (!st)
        return;
    rc = api_quota_limits(ctx, st, project, &q);
    if (rc == 0)
        rc = cl_store_project_usage(st, project, a->user_id, &u);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read limits (%s).", strerror(-rc));
        return;
    }
    abs = json_object_new_object();
#define ABS(name, v) json_object_object_add(abs, name, json_object_new_int64(v))
    ABS("maxTotalInstances", q.limit[CL_QUOTA_INSTANCES]);
    ABS("maxTotalCores", q.limit[CL_QUOTA_CORES]);
    ABS("maxTotalRAMSize", q.limit[CL_QUOTA_RAM]);
    ABS("maxServerMeta", q.limit[CL_QUOTA_METADATA_ITEMS]);
    ABS("maxImageMeta", 128);
    ABS("maxPersonality", 5);
    ABS("maxPersonalitySize", 10240);
    ABS("maxTotalKeypairs", q.limit[CL_QUOTA_KEY_PAIRS]);
    ABS("maxServerGroups", q.limit[CL_QUOTA_SERVER_GROUPS]);
    ABS("maxServerGroupMembers", q.limit[CL_QUOTA_SERVER_GROUP_MEMBERS]);
    ABS("maxTotalFloatingIps", -1);
    ABS("maxSecurityGroups", -1);
    ABS("maxSecurityGroupRules", -1);
    ABS("totalRAMUsed", u.ram_mb);
    ABS("totalCoresUsed", u.cores);
    ABS("totalInstancesUsed", u.instances);
    ABS("totalFloatingIpsUsed", 0);
    ABS("totalSecurityGroupsUsed", 0);
    ABS("totalServerGroupsUsed", u.server_groups);
#undef ABS
    lim = json_object_new_object();
    json_object_object_add(lim, "rate", json_object_new_array());
    json_object_object_add(lim, "absolute", abs);
    body = json_object_new_object();
    json_object_object_add(body, "limits", lim);
    cl_http_resp_json(resp, 200, body);
}
