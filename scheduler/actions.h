/*
 * actions.h - the scheduler's part of server actions (actions.c): route instance.action
 * from nube-api to the instance's host, and record what agents add to their reports
 * (the agent's HTTP endpoint in host.register, the guest's addresses in instance.state).
 *
 * Called from sched.c's dispatch on the bus thread, with the scheduler's store and bus.
 */
#ifndef SCHED_ACTIONS_H
#define SCHED_ACTIONS_H

#include "bus.h"
#include "store.h"

/* instance.action from nube-api: forward it to the instance's host (reliable; a host that
 * is away gets it when it comes back). An instance without a host, deleted or being
 * deleted gets nothing; its task_state is cleared so it does not hang. */
void sched_actions_on_action(cl_store *st, cl_bus *bus, const cl_bus_msg *msg);

/* host.register: remember the optional agent_url of host. */
void sched_actions_on_register(cl_store *st, const char *host, const cl_bus_msg *msg);

/* instance.state (already recorded by sched.c): store the optional addresses. */
void sched_actions_on_state(cl_store *st, const char *uuid, const cl_bus_msg *msg);

#endif
