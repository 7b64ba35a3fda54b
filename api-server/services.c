/*
 * services.c - GET /v2.1/os-services, PUT /v2.1/os-services/{id} (2.53+) and the legacy
 * PUT /v2.1/os-services/{enable|disable|disable-log-reason|force-down}, and
 * GET /v2.1/os-availability-zone[/detail].
 *
 * Every nube host is one "nova-compute" service in zone "nova" (the scheduler and the
 * API are not listed; reference/openstack-api/compute-service-list.txt shows what Nova
 * adds). Its id is the host's integer id before 2.53 and, from 2.53, a UUID derived from
 * the host name, stable across restarts without storing one. Disabling a service is
 * disabling the host for scheduling (hosts.enabled, which the scheduler's claim checks)
 * with the reason recorded next to it, in one statement. forced_down marks the host down
 * and keeps it down across heartbeats (cl_store_service_set_forced_down), so nothing is
 * scheduled there until it is cleared.
 *
 * All of it is for admins, as in Nova, except the availability zone list.
 */
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "util.h"

#define LOG_MOD "api.services"
#define BINARY "nova-compute"
#define ZONE "nova"

/* A UUID-shaped id from sha256("nova-compute:" host), version nibble 5-like. */
static void service_uuid(const char *host, char out[CL_UUID_LEN])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    _cleanup_free_ char *data = NULL;
    size_t o = 0;

    out[0] = '\0';
    if (asprintf(&data, BINARY ":%s", host) < 0) {
        data = NULL;
        return;
    }
    if (EVP_Digest(data, strlen(data), md, &n, EVP_sha256(), NULL) != 1 || n < 16)
        return;
    md[6] = (unsigned char)((md[6] & 0x0f) | 0x50);
    md[8] = (unsigned char)((md[8] & 0x3f) | 0x80);
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[md[i] >> 4];
        out[o++] = hex[md[i] & 15];
    }
    out[o] = '\0';
}

static json_object *service_json(const cl_host *h, const cl_service_state *ss, int mv)
{
    json_object *o = json_object_new_object();
    char uuid[CL_UUID_LEN];

    if (mv >= 53) {
        service_uuid(h->name, uuid);
        json_object_object_add(o, "id", json_object_new_string(uuid));
    } else {
        json_object_object_add(o, "id", json_object_new_int64(h->id));
    }
    json_object_object_add(o, "binary", json_object_new_string(BINARY));
    json_object_object_add(o, "host", json_object_new_string(h->name));
    json_object_object_add(o, "zone", json_object_new_string(ZONE));
    json_object_object_add(o, "status",
                           json_object_new_string(h->enabled ? "enabled" : "disabled"));
    json_object_object_add(o, "state",
                           json_object_new_string(h->up && !ss->forced_down ? "up" : "down"));
    json_object_object_add(o, "updated_at", api_time_json(h->last_seen_ms, false));
    json_object_object_add(o, "disabled_reason",
                           ss->has_reason ? json_object_new_string(ss->disabled_reason) : NULL);
    if (mv >= 11)
        json_object_object_add(o, "forced_down", json_object_new_boolean(ss->forced_down));
    return o;
}

static bool begin_admin(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp,
                        const char *rule, int *mv, cl_store **st)
{
    if (!api_compute_begin(ctx, req, resp, true, mv) || !api_require_admin(resp, rule))
        return false;
    *st = api_store(ctx, resp);
    return *st != NULL;
}

/* GET /v2.1/os-services[?host=&binary=] */
void api_services_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    _cleanup_free_ cl_host *hosts = NULL;
    const char *host = cl_http_req_query(req, "host");
    const char *binary = cl_http_req_query(req, "binary");
    json_object *body, *list;
    size_t n = 0;
    cl_store *st;
    int mv = API_MV_MIN;
    int rc;

    if (!begin_admin(ctx, req, resp, "os_compute_api:os-services:list", &mv, &st))
        return;
    rc = cl_store_host_list(st, &hosts, &n);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot list services (%s).", strerror(-rc));
        return;
    }
    body = json_object_new_object();
    list = json_object_new_array();
    for (size_t i = 0; i < n && (!binary || strcmp(binary, BINARY) == 0); i++) {
        cl_service_state ss;

        if (host && strcmp(host, hosts[i].name) != 0)
            continue;
        if (cl_store_service_get(st, hosts[i].name, &ss) < 0)
            memset(&ss, 0, sizeof(ss));
        json_object_array_add(list, service_json(&hosts[i], &ss, mv));
    }
    json_object_object_add(body, "services", list);
    cl_http_resp_json(resp, 200, body);
}

/* The host whose service id (integer before 2.53, UUID from it) is id. */
static int find_by_id(cl_store *st, const char *id, int mv, cl_host *out)
{
    _cleanup_free_ cl_host *hosts = NULL;
    size_t n = 0;
    int64_t num = -1;
    int rc = cl_store_host_list(st, &hosts, &n);

    if (rc < 0)
        return rc;
    if (mv < 53 && cl_parse_int64(id, &num) < 0)
        return -ENOENT;
    for (size_t i = 0; i < n; i++) {
        char uuid[CL_UUID_LEN];

        service_uuid(hosts[i].name, uuid);
        if ((mv >= 53 && strcmp(uuid, id) == 0) || (mv < 53 && hosts[i].id == num)) {
            *out = hosts[i];
            return 0;
        }
    }
    return -ENOENT;
}

static int apply(cl_store *st, const char *host, int status, const char *reason, int forced)
{
    int rc = 0;

    if (status >= 0)
        rc = cl_store_service_set_status(st, host, status == 1, reason);
    if (rc == 0 && forced >= 0)
        rc = cl_store_service_set_forced_down(st, host, forced == 1);
    if (rc == 0)
        cl_info(LOG_MOD, "service %s of %s:%s%s%s%s", BINARY, host,
                status < 0 ? "" : status ? " enabled" : " disabled",
                reason ? " (" : "", reason ? reason : "", reason ? ")" : "");
    return rc;
}

static bool reason_ok(const char *reason, cl_http_resp *resp)
{
    if (reason && (strlen(reason) < 1 || strlen(reason) > 255)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "Invalid input for field/attribute disabled_reason. The reason "
                            "must be 1 to 255 characters.");
        return false;
    }
    return true;
}

/* Legacy actions by host and binary (before 2.53). */
static void legacy_action(const char *action, api_ctx *ctx, const cl_http_req *req,
                          cl_http_resp *resp, cl_store *st, int mv)
{
    _cleanup_json_ json_object *root = NULL;
    const char *host = NULL, *binary = NULL, *reason = NULL;
    bool forced = false;
    cl_error err = {0};
    json_object *body, *o;
    int status = -1, force = -1;
    int rc;

    (void)ctx;
    if (cl_http_req_json(req, &root, &err) < 0 ||
        cl_json_get_str(root, "host", true, &host, &err) < 0 ||
        cl_json_get_str(root, "binary", true, &binary, &err) < 0 ||
        cl_json_get_str(root, "disabled_reason", false, &reason, &err) < 0 ||
        cl_json_get_bool(root, "forced_down", false, &forced, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    if (strcmp(action, "enable") == 0) {
        status = 1;
        reason = NULL;
    } else if (strcmp(action, "disable") == 0) {
        status = 0;
        reason = NULL;
    } else if (strcmp(action, "disable-log-reason") == 0) {
        status = 0;
        if (!reason) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Missing disabled reason field");
            return;
        }
    } else if (strcmp(action, "force-down") == 0 && mv >= 11) {
        force = forced ? 1 : 0;
    } else {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Unknown action");
        return;
    }
    if (!reason_ok(reason, resp))
        return;
    rc = strcmp(binary, BINARY) == 0 ? apply(st, host, status, reason, force) : -ENOENT;
    if (rc == -ENOENT) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Host '%.64s' is not mapped to any cell",
                            host);
        return;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot update the service (%s).",
                            strerror(-rc));
        return;
    }
    o = json_object_new_object();
    json_object_object_add(o, "host", json_object_new_string(host));
    json_object_object_add(o, "binary", json_object_new_string(binary));
    if (force >= 0) {
        json_object_object_add(o, "forced_down", json_object_new_boolean(force == 1));
    } else {
        json_object_object_add(o, "status",
                               json_object_new_string(status ? "enabled" : "disabled"));
        if (reason)
            json_object_object_add(o, "disabled_reason", json_object_new_string(reason));
    }
    body = json_object_new_object();
    json_object_object_add(body, "service", o);
    cl_http_resp_json(resp, 200, body);
}

/* PUT /v2.1/os-services/{id} {"status", "disabled_reason", "forced_down"} (2.53), or a
 * legacy action name as {id}. */
void api_services_update(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    _cleanup_json_ json_object *root = NULL;
    const char *id = cl_http_req_param(req, "id");
    const char *status = NULL, *reason = NULL;
    json_object *v;
    cl_service_state ss;
    cl_error err = {0};
    cl_host h;
    json_object *body;
    bool forced = false, has_forced;
    cl_store *st;
    int mv = API_MV_MIN;
    int rc;

    if (!begin_admin(ctx, req, resp, "os_compute_api:os-services:update", &mv, &st))
        return;
    if (!id)
        id = "";
    if (mv < 53) {
        legacy_action(id, ctx, req, resp, st, mv);
        return;
    }
    if (cl_http_req_json(req, &root, &err) < 0 ||
        cl_json_get_str(root, "status", false, &status, &err) < 0 ||
        cl_json_get_bool(root, "forced_down", false, &forced, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    json_object_object_foreach(root, k, val) {
        (void)val;
        if (strcmp(k, "status") && strcmp(k, "disabled_reason") && strcmp(k, "forced_down")) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute service. Additional "
                                "properties are not allowed ('%.64s' was unexpected)", k);
            return;
        }
    }
    if (json_object_object_get_ex(root, "disabled_reason", &v) &&
        !json_object_is_type(v, json_type_null)) {
        if (!json_object_is_type(v, json_type_string)) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute disabled_reason.");
            return;
        }
        reason = json_object_get_string(v);
    }
    has_forced = json_object_object_get_ex(root, "forced_down", NULL);
    if (status && strcmp(status, "enabled") != 0 && strcmp(status, "disabled") != 0) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "Invalid input for field/attribute status. Value: %.32s. '%.32s' "
                            "is not one of ['enabled', 'disabled']", status, status);
        return;
    }
    if (!status && !has_forced) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "At least one of 'status' or 'forced_down' should be specified.");
        return;
    }
    if (reason && (!status || strcmp(status, "disabled") != 0)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "Specifying 'disabled_reason' with status 'enabled' is invalid.");
        return;
    }
    if (!reason_ok(reason, resp))
        return;
    rc = find_by_id(st, id, mv, &h);
    if (rc == -ENOENT) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Service %.64s could not be found.", id);
        return;
    }
    if (rc == 0)
        rc = apply(st, h.name, status ? strcmp(status, "enabled") == 0 : -1, reason,
                   has_forced ? forced : -1);
    if (rc == 0)
        rc = cl_store_host_get(st, h.name, &h);
    if (rc == 0)
        rc = cl_store_service_get(st, h.name, &ss);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot update the service (%s).",
                            strerror(-rc));
        return;
    }
    body = json_object_new_object();
    json_object_object_add(body, "service", service_json(&h, &ss, mv));
    cl_http_resp_json(resp, 200, body);
}

static void az_common(const cl_http_req *req, cl_http_resp *resp, void *ud, bool detail)
{
    api_ctx *ctx = ud;
    _cleanup_free_ cl_host *hosts = NULL;
    json_object *body, *list, *zone, *state, *hmap = NULL;
    size_t n = 0;
    bool any_up = false;
    cl_store *st;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, NULL))
        return;
    if (detail && !api_require_admin(resp, "os_compute_api:os-availability-zone:detail"))
        return;
    st = api_store(ctx, resp);
    if (!st)
        return;
    rc = cl_store_host_list(st, &hosts, &n);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot list hosts (%s).", strerror(-rc));
        return;
    }
    if (detail)
        hmap = json_object_new_object();
    for (size_t i = 0; i < n; i++) {
        cl_service_state ss;
        bool up;

        if (cl_store_service_get(st, hosts[i].name, &ss) < 0)
            memset(&ss, 0, sizeof(ss));
        up = hosts[i].up && !ss.forced_down;
        any_up = any_up || (up && hosts[i].enabled);
        if (detail) {
            json_object *svc = json_object_new_object();
            json_object *info = json_object_new_object();

            json_object_object_add(info, "available", json_object_new_boolean(up));
            json_object_object_add(info, "active", json_object_new_boolean(hosts[i].enabled));
            json_object_object_add(info, "updated_at",
                                   api_time_json(hosts[i].last_seen_ms, false));
            json_object_object_add(svc, BINARY, info);
            json_object_object_add(hmap, hosts[i].name, svc);
        }
    }
    zone = json_object_new_object();
    state = json_object_new_object();
    json_object_object_add(zone, "zoneName", json_object_new_string(ZONE));
    json_object_object_add(state, "available", json_object_new_boolean(any_up));
    json_object_object_add(zone, "zoneState", state);
    json_object_object_add(zone, "hosts", hmap);
    list = json_object_new_array();
    json_object_array_add(list, zone);
    body = json_object_new_object();
    json_object_object_add(body, "availabilityZoneInfo", list);
    cl_http_resp_json(resp, 200, body);
}

/* GET /v2.1/os-availability-zone */
void api_availability_zones(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    az_common(req, resp, ud, false);
}

/* GET /v2.1/os-availability-zone/detail (admins) */
void api_availability_zones_detail(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    az_common(req, resp, ud, true);
}
