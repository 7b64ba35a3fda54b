/*
 * main.c - nube-scheduler: the thin shell around libsched (sched.c, placement.c).
 *
 * Everything a daemon shares (options, config file, logging, signals) is cl_daemon_*;
 * everything the scheduler does is sched_start()/sched_stop(), which the unit tests
 * drive too. This file only wires the two together.
 */
#include <stdio.h>

#include "daemon.h"
#include "errors.h"
#include "log.h"
#include "sched.h"

static const cl_daemon_info sched_daemon_info = {
    .name = "nube-scheduler",
    .summary = "nube compute scheduler: placement, claims and the agents' bus endpoint",
    .description =
        "nube-scheduler decides which compute host runs each new server and keeps the\n"
        "controller database in step with what the hosts report.\n"
        "\n"
        "It binds the ZeroMQ bus ([bus] listen) that every nube-agent and nube-api\n"
        "connect to. Agents register their capacity (host.register) and send heartbeats;\n"
        "a host silent for [scheduler] host_down_after_s seconds is marked down and gets\n"
        "no new servers. For each instance.schedule from nube-api the scheduler runs\n"
        "the [scheduler] enabled_filters (up/enabled, retry, availability zone, image\n"
        "properties, aggregate extra specs, same/different host, server group, instance\n"
        "count, vCPU, RAM, disk), weighs the survivors (*_weight_multiplier: spread by\n"
        "default, negative packs; build failures; soft group policies), claims in one\n"
        "database transaction that re-checks capacity and the group policy with a host\n"
        "generation compare-and-swap, and sends instance.spawn to that host's agent. A\n"
        "failed spawn moves to an alternate host, up to max_attempts. When no host fits,\n"
        "the server goes to ERROR with a fault naming the filters that removed the hosts\n"
        "and what the best host has free. State reports (instance.state) are recorded;\n"
        "deletes are routed to the host, or done at once when the host is down.\n"
        "\n"
        "With [http] port set, GET /healthz and GET /metrics (Prometheus: hosts up/down,\n"
        "claims by result, bus counters) are served on [http] listen.",
    .default_config = "/etc/nube/nube-scheduler.conf",
    .keys = sched_cfg_keys,
    .nkeys = 0, /* set in main: sched_cfg_nkeys is not a constant expression here */
};

int main(int argc, char **argv)
{
    cl_daemon_info info = sched_daemon_info;
    sched_cfg cfg;
    sched *s = NULL;
    cl_error err = {0};
    int rc = 0;

    info.nkeys = sched_cfg_nkeys;
    if (cl_daemon_init(&info, argc, argv, &cfg, &rc) <= 0)
        return rc;

    if (sched_start(&cfg, &s, &err) < 0) {
        cl_err("sched", "cannot start: %s", err.message);
        cl_daemon_done(&info, &cfg);
        return 1;
    }
    cl_daemon_wait();
    sched_stop(s);
    cl_daemon_done(&info, &cfg);
    return 0;
}
