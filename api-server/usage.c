/*
 * usage.c - GET /v2.1/os-simple-tenant-usage (admins: every project) and
 * GET /v2.1/os-simple-tenant-usage/{project_id} (the caller's own project, or any for
 * admins), as reference/openstack-api/usage-list.txt.
 *
 * Usage is derived from the instance rows alone, as Nova's simple usage is: an instance
 * counts in [start, end] from its launch (or the start) until its deletion (or the
 * end, or now when the end is in the future), and its flavor's vCPUs, RAM and disk are
 * multiplied by those hours. Instances never launched are listed with 0 hours. Another
 * project's usage answers 404 to tenants, like a project that does not exist.
 */
#define _DEFAULT_SOURCE /* timegm */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api_int.h"
#include "cleanup.h"
#include "json.h"
#include "util.h"

static bool digits(const char *s, int n, int *out)
{
    int v = 0;

    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

int api_parse_time(const char *s, int64_t *out_ms)
{
    struct tm tm = {0};
    int y, mo, d, h = 0, mi = 0, sec = 0, frac_ms = 0;
    const char *p;
    time_t t;

    if (!s || strlen(s) < 10 || !digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) ||
        s[7] != '-' || !digits(s + 8, 2, &d))
        return -EINVAL;
    p = s + 10;
    if (*p == 'T' || *p == 't' || *p == ' ') {
        if (!digits(p + 1, 2, &h) || p[3] != ':' || !digits(p + 4, 2, &mi))
            return -EINVAL;
        p += 6;
        if (*p == ':') {
            if (!digits(p + 1, 2, &sec))
                return -EINVAL;
            p += 3;
        }
        if (*p == '.') {
            int scale = 100;

            p++;
            if (*p < '0' || *p > '9')
                return -EINVAL;
            for (; *p >= '0' && *p <= '9'; p++) {
                frac_ms += (*p - '0') * scale;
                scale /= 10;
            }
        }
    }
    /* UTC only: "Z", "+00:00", "+0000" or nothing. */
    if (*p == 'Z' || *p == 'z')
        p++;
    else if (strcmp(p, "+00:00") == 0 || strcmp(p, "+0000") == 0 || strcmp(p, "-00:00") == 0)
        p += strlen(p);
    if (*p || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60 ||
        y < 1970)
        return -EINVAL;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    t = timegm(&tm);
    if (t == (time_t)-1)
        return -EINVAL;
    *out_ms = (int64_t)t * 1000 + frac_ms;
    return 0;
}

/* start/end query parameters (both default to now, as Nova). Answers 400 itself. */
static bool period(const cl_http_req *req, cl_http_resp *resp, int64_t *start, int64_t *end)
{
    const char *s = cl_http_req_query(req, "start");
    const char *e = cl_http_req_query(req, "end");
    int64_t now = cl_now_ms();

    *start = *end = now;
    if ((s && api_parse_time(s, start) < 0) || (e && api_parse_time(e, end) < 0)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "Invalid start time or end time: use ISO 8601 "
                            "(2026-11-26T04:34:57).");
        return false;
    }
    if (*start > *end) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "Invalid start time. The start time cannot occur after the end "
                            "time.");
        return false;
    }
    return true;
}

typedef struct totals {
    double hours, vcpus, ram, disk;
} totals;

/* Nova's _hours_for: the part of [start, stop] the instance ran. */
static double hours_for(const cl_instance *i, int64_t start, int64_t stop)
{
    int64_t from, to;

    if (!i->launched_ms)
        return 0;
    if (i->deleted_ms && i->deleted_ms < start)
        return 0;
    if (i->launched_ms > stop)
        return 0;
    from = i->launched_ms > start ? i->launched_ms : start;
    to = (i->deleted_ms && i->deleted_ms < stop) ? i->deleted_ms : stop;
    return to > from ? (double)(to - from) / 3600000.0 : 0;
}

/* Active in the window: not deleted before it starts, not launched after it ends. */
static bool in_window(const cl_instance *i, int64_t start, int64_t end)
{
    if (i->deleted_ms && i->deleted_ms <= start)
        return false;
    if (i->launched_ms && i->launched_ms >= end)
        return false;
    if (!i->launched_ms && i->created_ms >= end)
        return false;
    return true;
}

static json_object *server_usage(const cl_instance *i, double hours, int64_t now)
{
    json_object *o = json_object_new_object();
    int64_t upto = i->deleted_ms ? i->deleted_ms : now;

    json_object_object_add(o, "hours", json_object_new_double(hours));
    json_object_object_add(o, "flavor", json_object_new_string(i->flavor.name));
    json_object_object_add(o, "instance_id", json_object_new_string(i->uuid));
    json_object_object_add(o, "name", json_object_new_string(i->name));
    json_object_object_add(o, "tenant_id", json_object_new_string(i->project_id));
    json_object_object_add(o, "memory_mb", json_object_new_int64(i->flavor.ram_mb));
    json_object_object_add(o, "local_gb", json_object_new_int64(i->flavor.disk_gb));
    json_object_object_add(o, "vcpus", json_object_new_int64(i->flavor.vcpus));
    json_object_object_add(o, "started_at", api_time_json(i->launched_ms, false));
    json_object_object_add(o, "ended_at", api_time_json(i->deleted_ms, false));
    json_object_object_add(o, "state", json_object_new_string(
                                           i->vm_state == CL_VM_DELETED
                                               ? "terminated"
                                               : cl_vm_state_name(i->vm_state)));
    json_object_object_add(o, "uptime",
                           json_object_new_int64(i->launched_ms && upto > i->launched_ms
                                                     ? (upto - i->launched_ms) / 1000
                                                     : 0));
    return o;
}

static json_object *tenant_usage(const char *project, json_object *servers, const totals *t,
                                 int64_t start, int64_t stop)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "tenant_id", json_object_new_string(project));
    if (servers)
        json_object_object_add(o, "server_usages", servers);
    json_object_object_add(o, "total_local_gb_usage", json_object_new_double(t->disk));
    json_object_object_add(o, "total_vcpus_usage", json_object_new_double(t->vcpus));
    json_object_object_add(o, "total_memory_mb_usage", json_object_new_double(t->ram));
    json_object_object_add(o, "total_hours", json_object_new_double(t->hours));
    json_object_object_add(o, "start", api_time_json(start, false));
    json_object_object_add(o, "stop", api_time_json(stop, false));
    return o;
}

/* The instances of project (NULL = all) that were around in the window. */
static bool load(api_ctx *ctx, cl_http_resp *resp, const char *project, cl_instance **out,
                 size_t *out_n)
{
    cl_instance_filter f = {.project_id = project, .include_deleted = true};
    cl_store *st = api_store(ctx, resp);
    int rc;

    if (!st)
        return false;
    rc = cl_store_instance_list(st, &f, out, out_n);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read usage (%s).", strerror(-rc));
        return false;
    }
    return true;
}

/* GET /v2.1/os-simple-tenant-usage?start=&end=&detailed= (admins) */
void api_usage_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    _cleanup_free_ cl_instance *rows = NULL;
    _cleanup_json_ json_object *servers_by = NULL;
    _cleanup_free_ totals *tot = NULL;
    const char *det = cl_http_req_query(req, "detailed");
    bool detailed = det && strcmp(det, "0") != 0 && *det;
    int64_t start, end, stop, now = cl_now_ms();
    size_t n = 0, np = 0;
    char (*projects)[CL_ID_MAX] = NULL;
    json_object *body, *list;

    if (!api_compute_begin(ctx, req, resp, true, NULL) ||
        !api_require_admin(resp, "os_compute_api:os-simple-tenant-usage:list") ||
        !period(req, resp, &start, &end) || !load(ctx, resp, NULL, &rows, &n))
        return;
    stop = end < now ? end : now;
    /* Projects in order of first appearance; at most one per instance. */
    projects = calloc(n ? n : 1, sizeof(*projects));
    tot = calloc(n ? n : 1, sizeof(*tot));
    servers_by = json_object_new_array();
    if (!projects || !tot) {
        free(projects);
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Out of memory.");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const cl_instance *inst = &rows[i];
        size_t p;
        double h;

        if (!in_window(inst, start, end))
            continue;
        for (p = 0; p < np && strcmp(projects[p], inst->project_id) != 0; p++)
            ;
        if (p == np) {
            cl_strlcpy(projects[np++], inst->project_id, CL_ID_MAX);
            json_object_array_add(servers_by, json_object_new_array());
        }
        h = hours_for(inst, start, stop);
        tot[p].hours += h;
        tot[p].vcpus += h * (double)inst->flavor.vcpus;
        tot[p].ram += h * (double)inst->flavor.ram_mb;
        tot[p].disk += h * (double)inst->flavor.disk_gb;
        json_object_array_add(json_object_array_get_idx(servers_by, p),
                              server_usage(inst, h, now));
    }
    body = json_object_new_object();
    list = json_object_new_array();
    for (size_t p = 0; p < np; p++) {
        json_object *srv = json_object_array_get_idx(servers_by, p);

        json_object_array_add(list, tenant_usage(projects[p],
                                                 detailed ? json_object_get(srv) : NULL,
                                                 &tot[p], start, stop));
    }
    free(projects);
    json_object_object_add(body, "tenant_usages", list);
    cl_http_resp_json(resp, 200, body);
}

/* GET /v2.1/os-simple-tenant-usage/{id}?start=&end= */
void api_usage_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    _cleanup_free_ cl_instance *rows = NULL;
    const char *project = cl_http_req_param(req, "id");
    const cl_auth *a;
    int64_t start, end, stop, now = cl_now_ms();
    size_t n = 0, shown = 0;
    totals t = {0};
    json_object *body, *servers;

    if (!api_compute_begin(ctx, req, resp, true, NULL))
        return;
    a = api_auth_current();
    if (!project || strlen(project) >= CL_ID_MAX || !a || !cl_auth_can_read(a, project)) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Project %.64s could not be found.",
                            project ? project : "");
        return;
    }
    if (!period(req, resp, &start, &end) || !load(ctx, resp, project, &rows, &n))
        return;
    stop = end < now ? end : now;
    servers = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        double h;

        if (!in_window(&rows[i], start, end))
            continue;
        h = hours_for(&rows[i], start, stop);
        t.hours += h;
        t.vcpus += h * (double)rows[i].flavor.vcpus;
        t.ram += h * (double)rows[i].flavor.ram_mb;
        t.disk += h * (double)rows[i].flavor.disk_gb;
        json_object_array_add(servers, server_usage(&rows[i], h, now));
        shown++;
    }
    body = json_object_new_object();
    /* Nova answers an empty object for a project without usage in the window. */
    if (shown == 0) {
        json_object_put(servers);
        json_object_object_add(body, "tenant_usage", json_object_new_object());
    } else {
        json_object_object_add(body, "tenant_usage",
                               tenant_usage(project, servers, &t, start, stop));
    }
    cl_http_resp_json(resp, 200, body);
}
