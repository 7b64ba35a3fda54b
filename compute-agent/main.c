/*
 * main.c - nube-agent: thin glue between the shared daemon lifecycle (libcloud/daemon.h)
 * and the agent's logic (agent.h). Everything the agent does lives in agent.c so tests
 * link it without this file.
 */
#include <stdio.h>

#include "agent.h"
#include "cleanup.h"
#include "daemon.h"
#include "log.h"
#include "simulate.h"

static const cl_daemon_info info = {
    .name = "nube-agent",
    .summary = "nube compute agent: runs the instances of one hypervisor host",
    .description =
        "nube-agent runs on every hypervisor host. It connects to libvirt (the\n"
        "[agent] libvirt_uri picks QEMU/KVM, Xen, LXC or libvirt's test driver), reports\n"
        "the host's capacity to nube-scheduler over the bus (host.register, then a\n"
        "heartbeat every heartbeat_interval_ms) and carries out what the scheduler asks:\n"
        "instance.spawn defines and starts a libvirt domain named instance-<uuid>,\n"
        "instance.destroy destroys and undefines it, instance.action performs a server\n"
        "action (stop = ACPI shutdown then destroy after shutdown_timeout_s, start, soft/\n"
        "hard reboot, pause/unpause, suspend/resume by managed save, cold resize); every\n"
        "outcome is reported back as instance.state, with the guest's DHCP address once\n"
        "the NAT network [agent] network has leased one. QEMU guests boot AMI-style from\n"
        "[agent] image_dir/<image_ref>/{kernel,ramdisk,disk.qcow2} on a qcow2 overlay;\n"
        "virt_type=auto uses KVM only when a probe guest really runs under it.\n"
        "Domain lifecycle events (a guest shut down or crashed) are\n"
        "reported at once, and a periodic sync catches what events missed.\n"
        "\n"
        "The agent records the instances it must run in state_dir/agent-<host>.db before\n"
        "acknowledging a request. At start it reconciles libvirt with those records:\n"
        "missing domains are re-created, nube domains without a record are adopted\n"
        "(from the <nube:instance> metadata in their XML), and unfinished destroys are\n"
        "completed. Unacknowledged bus messages survive restarts in\n"
        "state_dir/agent-<host>-outbox.db.\n"
        "\n"
        "With [http] port set, it serves GET /healthz, GET /metrics (Prometheus) and\n"
        "GET /v1/domains (every libvirt domain, read live, with a nube flag) and\n"
        "GET /v1/instances/<uuid>/console?length=N (the serial console log, for\n"
        "nube-api's os-getConsoleOutput). With [billing] endpoint set it sends usage\n"
        "samples (usage.samples) every sample_interval_s and at every life-cycle change.",
    .default_config = "/etc/nube/nube-agent.conf",
    .keys = agent_cfg_keys,
    .nkeys = 0, /* set in main: agent_cfg_nkeys is not a constant expression */
};

int main(int argc, char **argv)
{
    cl_daemon_info di = info;
    agent_main_cfg cfg; /* agent_cfg plus [agent] simulate_* (simulate.h) */
    _cleanup_free_ cl_cfg_key *keys = NULL;
    cl_error err = {0};
    agent *a = NULL;
    agent_sim *sim = NULL;
    int rc = 0;

    if (agent_main_keys(&keys, &di.nkeys) < 0)
        return 1;
    di.keys = keys;
    if (cl_daemon_init(&di, argc, argv, &cfg, &rc) <= 0)
        return rc;
    agent_sim_set_fail_spawns(cfg.fail_spawns);
    if ((cfg.simulate_hosts > 0 ? agent_simulate_start(&cfg, &sim, &err)
                                : agent_start(&cfg.agent, &a, &err)) < 0) {
        cl_err("agent", "cannot start: %s", err.message);
        cl_daemon_done(&di, &cfg);
        return 1;
    }
    cl_daemon_wait();
    agent_simulate_stop(sim);
    agent_stop(a);
    cl_daemon_done(&di, &cfg);
    return 0;
}
