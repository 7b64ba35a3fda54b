/*
 * simulate.c - N agent contexts in one process ([agent] simulate_hosts = N).
 *
 * Nothing here fakes the protocol: every simulated host is agent_start() on its own
 * libvirt test:/// connection, so the scheduler sees N real agents (host.register,
 * heartbeats, spawns that define and start test-driver domains, state reports). What is
 * generated per host:
 *   state_dir/sim/<host>-NNNN.xml  a libvirt test-driver node of the configured size
 *   state_dir/sim/instances/<host>-NNNN  its instances_dir
 * and the usual agent-<host>-NNNN.db / -outbox.db in state_dir.
 *
 * fail_spawns (tests only) makes the agent's spawn job fail before it reaches libvirt
 * (agent_sim_fail_spawns(), checked in agent.c), so every spawn reports ERROR with a
 * fault, exercising the scheduler's retries.
 *
 * Each agent costs a few threads and about a dozen file descriptors, so the soft
 * RLIMIT_NOFILE is raised to the hard limit before starting many.
 */
#include "simulate.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "log.h"
#include "model.h"
#include "util.h"

#define MOD "agent.sim"
#define SIM_MAX_HOSTS 10000

#define SKEY(key, type, def, lo, hi, field, help)                                          \
    {"agent", key, type, def, lo, hi, offsetof(agent_main_cfg, field), help}

static const cl_cfg_key sim_keys[] = {
    SKEY("simulate_hosts", CL_CFG_INT, "0", 0, SIM_MAX_HOSTS, simulate_hosts,
         "Run this many simulated hosts (libvirt test driver) in this process; 0 = a "
         "normal agent. Host names are <host>-NNNN."),
    SKEY("simulate_vcpus", CL_CFG_INT, "4", 1, 4096, simulate_vcpus,
         "vCPUs of each simulated host."),
    SKEY("simulate_ram_mb", CL_CFG_INT, "8192", 64, 16777216, simulate_ram_mb,
         "RAM in MB of each simulated host."),
    SKEY("simulate_disk_gb", CL_CFG_INT, "100", 1, 1048576, simulate_disk_gb,
         "Disk in GB of each simulated host."),
    SKEY("simulate_first", CL_CFG_INT, "0", 0, 1000000, simulate_first,
         "Number of the first simulated host (to run several simulating processes)."),
    SKEY("fail_spawns", CL_CFG_BOOL, "false", 0, -1, fail_spawns,
         "Tests only: every spawn on this process's hosts fails."),
};

int agent_main_keys(cl_cfg_key **out, size_t *out_n)
{
    size_t n = agent_cfg_nkeys + CL_ARRAY_SIZE(sim_keys);
    cl_cfg_key *k = calloc(n, sizeof(*k));

    if (!k)
        return -ENOMEM;
    memcpy(k, agent_cfg_keys, agent_cfg_nkeys * sizeof(*k));
    memcpy(k + agent_cfg_nkeys, sim_keys, sizeof(sim_keys));
    *out = k;
    *out_n = n;
    return 0;
}

/* Process-wide: a simulating process runs one kind of host (set once before start). */
static atomic_bool fail_spawns;

bool agent_sim_fail_spawns(void)
{
    return atomic_load(&fail_spawns);
}

void agent_sim_set_fail_spawns(bool on)
{
    atomic_store(&fail_spawns, on);
}

struct agent_sim {
    agent **agents;
    size_t n;
};

static int write_file(const char *path, const char *text)
{
    _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);

    if (fd < 0)
        return -errno;
    return cl_write_all(fd, text, strlen(text));
}

static int mkdir_p1(const char *path)
{
    if (mkdir(path, 0750) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

static void raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            cl_debug(MOD, "cannot raise RLIMIT_NOFILE: %s", strerror(errno));
    }
}

int agent_simulate_start(const agent_main_cfg *cfg, agent_sim **out, cl_error *err)
{
    const char *sd = cfg->agent.common.state_dir;
    char base[PATH_MAX], inst_root[PATH_MAX], prefix[128];
    agent_sim *sim;
    int r;

    if (!sd || !*sd)
        return cl_error_set(err, CL_E_BAD_REQUEST, "[DEFAULT] state_dir is empty"), -EINVAL;
    if (cfg->agent.host && *cfg->agent.host)
        cl_strlcpy(prefix, cfg->agent.host, sizeof(prefix));
    else if (gethostname(prefix, sizeof(prefix)) < 0)
        cl_strlcpy(prefix, "sim", sizeof(prefix));
    if ((size_t)snprintf(base, sizeof(base), "%s/sim", sd) >= sizeof(base) ||
        (size_t)snprintf(inst_root, sizeof(inst_root), "%s/instances", base) >=
            sizeof(inst_root))
        return cl_error_set(err, CL_E_BAD_REQUEST, "state_dir path too long"), -ENAMETOOLONG;
    if ((r = mkdir_p1(sd)) < 0 || (r = mkdir_p1(base)) < 0 || (r = mkdir_p1(inst_root)) < 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot create %s: %s", base, strerror(-r)), r;
    agent_sim_set_fail_spawns(cfg->fail_spawns);
    raise_nofile();

    sim = calloc(1, sizeof(*sim));
    if (!sim || !(sim->agents = calloc((size_t)cfg->simulate_hosts, sizeof(agent *)))) {
        free(sim);
        return cl_error_set(err, CL_E_INTERNAL, "out of memory"), -ENOMEM;
    }
    for (int64_t i = 0; i < cfg->simulate_hosts; i++) {
        char name[CL_HOST_MAX], xml_path[PATH_MAX], uri[PATH_MAX + 16], idir[PATH_MAX];
        char xml[1024];
        agent_cfg ac = cfg->agent;
        int64_t num = cfg->simulate_first + i;

        if ((size_t)snprintf(name, sizeof(name), "%s-%04lld", prefix, (long long)num) >=
                sizeof(name) ||
            (size_t)snprintf(xml_path, sizeof(xml_path), "%s/%s.xml", base, name) >=
                sizeof(xml_path) ||
            (size_t)snprintf(uri, sizeof(uri), "test://%s", xml_path) >= sizeof(uri) ||
            (size_t)snprintf(idir, sizeof(idir), "%s/%s",
                             inst_root, name) >= sizeof(idir)) {
            r = cl_error_set(err, CL_E_BAD_REQUEST, "simulated host path too long");
            r = -ENAMETOOLONG;
            goto fail;
        }
        snprintf(xml, sizeof(xml),
                 "<node>\n  <cpu><mhz>2600</mhz><model>x86_64</model><nodes>1</nodes>"
                 "<sockets>1</sockets><cores>%lld</cores><threads>1</threads>"
                 "<active>%lld</active></cpu>\n  <memory>%lld</memory>\n</node>\n",
                 (long long)cfg->simulate_vcpus, (long long)cfg->simulate_vcpus,
                 (long long)cfg->simulate_ram_mb * 1024);
        r = write_file(xml_path, xml);
        if (r < 0) {
            cl_error_set(err, CL_E_INTERNAL, "cannot write %s: %s", xml_path, strerror(-r));
            goto fail;
        }
        ac.host = name;
        ac.libvirt_uri = uri;
        ac.instances_dir = idir;
        ac.vcpus = cfg->simulate_vcpus;
        ac.ram_mb = cfg->simulate_ram_mb;
        ac.disk_gb = cfg->simulate_disk_gb;
        ac.http_port = 0; /* N HTTP servers would only cost threads and ports */
        r = agent_start(&ac, &sim->agents[sim->n], err);
        if (r < 0)
            goto fail;
        sim->n++;
    }
    cl_info(MOD, "%zu simulated hosts up (%s-%04lld..), %lld vCPUs, %lld MB, %lld GB each%s",
            sim->n, prefix, (long long)cfg->simulate_first, (long long)cfg->simulate_vcpus,
            (long long)cfg->simulate_ram_mb, (long long)cfg->simulate_disk_gb,
            cfg->fail_spawns ? ", every spawn fails" : "");
    *out = sim;
    return 0;

fail:
    agent_simulate_stop(sim);
    return r;
}

void agent_simulate_stop(agent_sim *sim)
{
    if (!sim)
        return;
    for (size_t i = sim->n; i > 0; i--)
        agent_stop(sim->agents[i - 1]);
    free(sim->agents);
    free(sim);
}

size_t agent_simulate_count(const agent_sim *sim)
{
    return sim ? sim->n : 0;
}
