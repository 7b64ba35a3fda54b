/*
 * main.c - nube-api: the thin shell around libapi (api.c and friends).
 *
 * Options, the config file, logging and signals are cl_daemon_*; everything the API does
 * is api_start()/api_stop(), which the unit tests drive too. This file wires them and
 * refuses to run without the two secrets the static Identity needs.
 */
#include <stdio.h>

#include "api.h"
#include "daemon.h"
#include "errors.h"
#include "log.h"

static const cl_daemon_info api_daemon_info = {
    .name = "nube-api",
    .summary = "nube API: OpenStack Identity v3 and Compute v2.1 over HTTP",
    .description =
        "nube-api is the front door of a nube cloud. It serves two HTTP listeners on\n"
        "[api] listen:\n"
        "\n"
        "  Identity v3 on [api] identity_port (default 5000): version documents and\n"
        "  password authentication (POST /v3/auth/tokens) for the one admin user of\n"
        "  [auth]; the token returned in X-Subject-Token is [auth] admin_token, and the\n"
        "  service catalog points at both listeners through [api] public_host.\n"
        "\n"
        "  Compute v2.1 on [api] compute_port (default 8774): servers (create, list,\n"
        "  show, delete), flavors and hypervisors in Nova's JSON shapes, microversions\n"
        "  2.1 to 2.93 negotiated with OpenStack-API-Version. Every call except the\n"
        "  version documents needs X-Auth-Token.\n"
        "\n"
        "Both answer GET /healthz and GET /metrics (Prometheus). New servers are written\n"
        "to the controller database ([database] connection) and handed to nube-scheduler\n"
        "over the ZeroMQ bus ([bus] scheduler_endpoint) with at-least-once delivery.\n"
        "The stock `openstack` CLI works against it with OS_AUTH_URL pointing at\n"
        "http://<public_host>:<identity_port>/v3.\n"
        "\n"
        "[auth] admin_token and [auth] admin_password have no default: nube-api does not\n"
        "start while either is empty.",
    .default_config = "/etc/nube/nube-api.conf",
    .keys = api_cfg_keys,
    .nkeys = 0, /* set in main: api_cfg_nkeys is not a constant expression here */
};

int main(int argc, char **argv)
{
    cl_daemon_info info = api_daemon_info;
    api_cfg cfg;
    api_ctx *ctx = NULL;
    cl_error err = {0};
    int rc = 0;

    info.nkeys = api_cfg_nkeys;
    if (cl_daemon_init(&info, argc, argv, &cfg, &rc) <= 0)
        return rc;

    if (!cfg.admin_token || !*cfg.admin_token || !cfg.admin_password ||
        !*cfg.admin_password) {
        fprintf(stderr, "nube-api: [auth] admin_token and [auth] admin_password must be set "
                        "in the config file; refusing to start with an empty secret.\n");
        cl_daemon_done(&info, &cfg);
        return 1;
    }
    if (api_start(&cfg, &ctx, &err) < 0) {
        cl_err("api", "cannot start: %s", err.message);
        fprintf(stderr, "nube-api: cannot start: %s\n", err.message);
        cl_daemon_done(&info, &cfg);
        return 1;
    }
    cl_info("api", "identity on %s:%u, compute on %s:%u", cfg.listen,
            (unsigned)api_identity_port(ctx), cfg.listen, (unsigned)api_compute_port(ctx));
    cl_daemon_wait();
    api_stop(ctx);
    cl_daemon_done(&info, &cfg);
    return 0;
}
