/*
 * hypervisors.c - GET /v2.1/os-hypervisors[/detail|/{id}|/{id}/uptime], /v2.1/os-aggregates.
 *
 * One hypervisor per nube host (cl_store_host_list), shaped as Nova 2.1 answers
 * (reference/openstack-api/hypervisor-list.txt, hypervisor-show.txt). The operator CLI's
 * `nube host list` reads /detail. Nova's "free_*" figures are plain total - used (no
 * allocation ratios), and so are these. `openstack hypervisor show` also asks for
 * /os-aggregates (nube has none yet: an empty list) and /uptime, for which Nova's own
 * libvirt driver answers 501 and the CLI copes.
 *
 * Admins only, as Nova's policy. The service's disabled_reason and forced_down come from
 * the compute schema (store_compute.h); a forced-down service shows its hypervisor down.
 * /statistics sums every host.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
#include "cleanup.h"
#include "store_placement.h"

/* The hosts' extensions (hypervisor version as the agent reported it at registration)
 * for one request; none (all versions 0) when they cannot be read: the listing still
 * answers, only that field is unknown. */
typedef struct {
    cl_host_ext *ext;
    size_t n;
} hyp_exts;

static void hyp_exts_load(cl_store *st, hyp_exts *x)
{
    cl_host *hosts = NULL;
    x->ext = NULL;
    x->n = 0;
    if (st && cl_store_host_snapshot(st, &hosts, &x->ext, &x->n) < 0) {
        x->ext = NULL;
        x->n = 0;
    }
    free(hosts);
}

static int64_t hyp_version(const hyp_exts *x, const char *name)
{
    for (size_t i = 0; i < x->n; i++)
        if (strcmp(x->ext[i].name, name) == 0)
            return x->ext[i].hypervisor_version;
    return 0;
}

static json_object *hyp_json(cl_store *st, const cl_host *h, bool detail, const hyp_exts *x)
{
    json_object *o = json_object_new_object();
    json_object *svc;
    cl_service_state ss;

    if (!st || cl_store_service_get(st, h->name, &ss) < 0)
        memset(&ss, 0, sizeof(ss));
    json_object_object_add(o, "id", json_object_new_int64(h->id));
    json_object_object_add(o, "hypervisor_hostname", json_object_new_string(h->name));
    json_object_object_add(o, "state",
                           json_object_new_string(h->up && !ss.forced_down ? "up" : "down"));
    json_object_object_add(o, "status",
                           json_object_new_string(h->enabled ? "enabled" : "disabled"));
    if (!detail)
        return o;
    json_object_object_add(o, "hypervisor_type", json_object_new_string(h->hypervisor_type));
    /* As the agent reported it (libvirt's hypervisor version, major * 1000000 + ...). */
    json_object_object_add(o, "hypervisor_version",
                           json_object_new_int64(hyp_version(x, h->name)));
    json_object_object_add(o, "host_ip", json_object_new_string("127.0.0.1"));
    svc = json_object_new_object();
    json_object_object_add(svc, "id", json_object_new_int64(h->id));
    json_object_object_add(svc, "host", json_object_new_string(h->name));
    json_object_object_add(svc, "disabled_reason",
                           ss.has_reason ? json_object_new_string(ss.disabled_reason) : NULL);
    json_object_object_add(o, "service", svc);
    json_object_object_add(o, "vcpus", json_object_new_int64(h->vcpus));
    json_object_object_add(o, "memory_mb", json_object_new_int64(h->ram_mb));
    json_object_object_add(o, "local_gb", json_object_new_int64(h->disk_gb));
    json_object_object_add(o, "vcpus_used", json_object_new_int64(h->used_vcpus));
    json_object_object_add(o, "memory_mb_used", json_object_new_int64(h->used_ram_mb));
    json_object_object_add(o, "local_gb_used", json_object_new_int64(h->used_disk_gb));
    json_object_object_add(o, "free_ram_mb", json_object_new_int64(h->ram_mb - h->used_ram_mb));
    json_object_object_add(o, "free_disk_gb",
                           json_object_new_int64(h->disk_gb - h->used_disk_gb));
    json_object_object_add(o, "current_workload", json_object_new_int(0));
    json_object_object_add(o, "running_vms", json_object_new_int64(h->running_vms));
    json_object_object_add(o, "disk_available_least",
                           json_object_new_int64(h->disk_gb - h->used_disk_gb));
    /* A JSON document in a string, as Nova < 2.28; the CLI parses it. */
    json_object_object_add(o, "cpu_info", json_object_new_string("{}"));
    return o;
}

static bool load_hosts(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp,
                       cl_host **out, size_t *out_n, cl_store **out_st)
{
    cl_store *st;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, NULL) ||
        !api_require_admin(resp, "os_compute_api:os-hypervisors:list"))
        return false;
    st = api_store(ctx, resp);
    *out_st = st;
    if (!st)
        return false;
    rc = cl_store_host_list(st, out, out_n);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot list hosts (%s).", strerror(-rc));
        return false;
    }
    return true;
}

static void list_common(const cl_http_req *req, cl_http_resp *resp, void *ud, bool detail)
{
    _cleanup_free_ cl_host *hosts = NULL;
    size_t n = 0;
    json_object *body, *list;
    cl_store *st;
    hyp_exts x = {0};

    if (!load_hosts(ud, req, resp, &hosts, &n, &st))
        return;
    if (detail)
        hyp_exts_load(st, &x);
    body = json_object_new_object();
    list = json_object_new_array();
    for (size_t i = 0; i < n; i++)
        json_object_array_add(list, hyp_json(st, &hosts[i], detail, &x));
    free(x.ext);
    json_object_object_add(body, "hypervisors", list);
    cl_http_resp_json(resp, 200, body);
}

/* GET /v2.1/os-hypervisors */
void api_hypervisors_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    list_common(req, resp, ud, false);
}

/* GET /v2.1/os-hypervisors/detail */
void api_hypervisors_detail(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    list_common(req, resp, ud, true);
}

/* The host whose integer id is the {id} capture; answers 404 itself when none. */
static bool find(const cl_http_req *req, cl_http_resp *resp, const cl_host *hosts, size_t n,
                 size_t *out_idx)
{
    const char *id = cl_http_req_param(req, "id");
    int64_t want;

    if (id && cl_parse_int64(id, &want) == 0) {
        for (size_t i = 0; i < n; i++) {
            if (hosts[i].id == want) {
                *out_idx = i;
                return true;
            }
        }
    }
    cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Hypervisor with ID '%.64s' could not be found.",
                        id ? id : "");
    return false;
}

/* GET /v2.1/os-hypervisors/{id} */
void api_hypervisors_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_free_ cl_host *hosts = NULL;
    const char *id = cl_http_req_param(req, "id");
    size_t n = 0, idx;
    json_object *body;
    cl_store *st;

    if (id && strcmp(id, "detail") == 0) {
        api_hypervisors_detail(req, resp, ud);
        return;
    }
    if (id && strcmp(id, "statistics") == 0) {
        api_hypervisors_statistics(req, resp, ud);
        return;
    }
    if (!load_hosts(ud, req, resp, &hosts, &n, &st) || !find(req, resp, hosts, n, &idx))
        return;
    hyp_exts x = {0};
    hyp_exts_load(st, &x);
    body = json_object_new_object();
    json_object_object_add(body, "hypervisor", hyp_json(st, &hosts[idx], true, &x));
    free(x.ext);
    cl_http_resp_json(resp, 200, body);
}

/* GET /v2.1/os-hypervisors/{id}/uptime: 404 for unknown ids, else 501 as Nova's libvirt
 * driver when it cannot tell. */
void api_hypervisors_uptime(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_free_ cl_host *hosts = NULL;
    size_t n = 0, idx;
    cl_store *st;

    if (!load_hosts(ud, req, resp, &hosts, &n, &st) || !find(req, resp, hosts, n, &idx))
        return;
    cl_http_resp_errorf(resp, CL_E_NOT_IMPLEMENTED,
                        "The requested functionality is not supported.");
}

/* GET /v2.1/os-hypervisors/statistics: the sums over every host. */
void api_hypervisors_statistics(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    _cleanup_free_ cl_host *hosts = NULL;
    int64_t vcpus = 0, ram = 0, disk = 0, uv = 0, ur = 0, ud_ = 0, vms = 0;
    json_object *body, *o;
    size_t n = 0;
    cl_store *st;

    if (!load_hosts(ud, req, resp, &hosts, &n, &st))
        return;
    for (size_t i = 0; i < n; i++) {
        vcpus += hosts[i].vcpus;
        ram += hosts[i].ram_mb;
        disk += hosts[i].disk_gb;
        uv += hosts[i].used_vcpus;
        ur += hosts[i].used_ram_mb;
        ud_ += hosts[i].used_disk_gb;
        vms += hosts[i].running_vms;
    }
    o = json_object_new_object();
    json_object_object_add(o, "count", json_object_new_int64((int64_t)n));
    json_object_object_add(o, "vcpus", json_object_new_int64(vcpus));
    json_object_object_add(o, "memory_mb", json_object_new_int64(ram));
    json_object_object_add(o, "local_gb", json_object_new_int64(disk));
    json_object_object_add(o, "vcpus_used", json_object_new_int64(uv));
    json_object_object_add(o, "memory_mb_used", json_object_new_int64(ur));
    json_object_object_add(o, "local_gb_used", json_object_new_int64(ud_));
    json_object_object_add(o, "free_ram_mb", json_object_new_int64(ram - ur));
    json_object_object_add(o, "free_disk_gb", json_object_new_int64(disk - ud_));
    json_object_object_add(o, "current_workload", json_object_new_int(0));
    json_object_object_add(o, "running_vms", json_object_new_int64(vms));
    json_object_object_add(o, "disk_available_least", json_object_new_int64(disk - ud_));
    body = json_object_new_object();
    json_object_object_add(body, "hypervisor_statistics", o);
    cl_http_resp_json(resp, 200, body);
}

/* GET /v2.1/os-aggregates moved to aggregates.c. */
