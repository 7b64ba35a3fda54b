/*
 * simulate.h - many simulated hosts in one nube-agent process, for scale tests and
 * benchmarks ([agent] simulate_hosts = N).
 *
 * Each simulated host is a full agent context (agent.h): its own bus identity
 * "<host>-NNNN", its own libvirt test:/// connection opened on a generated node XML of
 * the configured size, its own local records and outbox in state_dir. A 1,000-host cloud
 * then fits in one process on one small machine. [agent] fail_spawns = true (test only)
 * makes every spawn of this process's hosts fail, to exercise the scheduler's retries.
 */
#ifndef AGENT_SIMULATE_H
#define AGENT_SIMULATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent.h"
#include "config.h"
#include "errors.h"

/* nube-agent.conf as main.c parses it: the agent's keys plus the simulation keys. */
typedef struct agent_main_cfg {
    agent_cfg agent;            /* must be first: the agent's key offsets apply as they are */
    int64_t simulate_hosts;     /* [agent] simulate_hosts, 0 = a normal agent */
    int64_t simulate_vcpus;     /* [agent] simulate_vcpus */
    int64_t simulate_ram_mb;    /* [agent] simulate_ram_mb */
    int64_t simulate_disk_gb;   /* [agent] simulate_disk_gb */
    int64_t simulate_first;     /* [agent] simulate_first: number of the first host */
    bool fail_spawns;           /* [agent] fail_spawns (tests only) */
} agent_main_cfg;

/* The combined key table (malloc'd; free with free()). */
int agent_main_keys(cl_cfg_key **out, size_t *out_n);

typedef struct agent_sim agent_sim;

/* Start cfg->simulate_hosts agents. Returns 0 and *out, or negative errno with err
 * (agents already started are stopped). */
int agent_simulate_start(const agent_main_cfg *cfg, agent_sim **out, cl_error *err);

/* Stop every simulated agent and free. Accepts NULL. */
void agent_simulate_stop(agent_sim *sim);

/* Whether spawns must fail in this process ([agent] fail_spawns; tests only). */
bool agent_sim_fail_spawns(void);
void agent_sim_set_fail_spawns(bool on);

/* Number of running simulated hosts. */
size_t agent_simulate_count(const agent_sim *sim);

#endif
