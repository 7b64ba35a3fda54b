/*
 * actions.c - the scheduler's side of server actions (actions.h).
 *
 *   nube-api --instance.action--> sched --instance.action--> agent (the instance's host)
 *   agent --instance.state (+addresses)--> sched        (sched.c records the states)
 *
 * nube-api has already checked the action against the instance's state and set its
 * task_state in the same transaction; the scheduler only routes. The message is re-encoded
 * from its decoded form, so an agent never sees fields the codec did not validate.
 * Idempotency is the agent's: it deduplicates by message id, and every action is safe to
 * repeat (stopping a stopped domain is a no-op).
 */
#include "scheduler/actions.h"

#include <errno.h>
#include <string.h>

#include "log.h"
#include "messages.h"
#include "model.h"
#include "store_actions.h"

#define LOG_MOD "sched.actions"

void sched_actions_on_action(cl_store *st, cl_bus *bus, const cl_bus_msg *msg)
{
    cl_msg_action m;
    cl_instance inst;
    cl_error err = {0};
    int r;

    if (cl_msg_action_decode(msg->body, &m, &err) < 0) {
        cl_warn(LOG_MOD, "bad instance.action from %s: %s", msg->peer, err.message);
        return;
    }
    r = cl_store_instance_get(st, m.instance_uuid, &inst);
    if (r < 0) {
        cl_warn(LOG_MOD, "instance.action %s for %s: cannot load the instance: %s",
                cl_action_name(m.action), m.instance_uuid, strerror(-r));
        return;
    }
    if (inst.vm_state == CL_VM_DELETED || inst.task_state == CL_TASK_DELETING) {
        cl_info(LOG_MOD, "instance %s is deleted or being deleted; %s dropped", inst.uuid,
                cl_action_name(m.action));
        return;
    }
    if (!inst.host[0]) {
        cl_warn(LOG_MOD, "instance %s has no host; %s dropped", inst.uuid,
                cl_action_name(m.action));
        cl_store_instance_set_state(st, inst.uuid, -1, CL_TASK_NONE, -1, NULL, 0);
        return;
    }
    json_object *body = cl_msg_action_encode(m.instance_uuid, m.action,
                                             m.has_instance ? &m.instance : NULL);
    r = body ? cl_bus_send(bus, inst.host, CL_MSG_INSTANCE_ACTION,
                           msg->req[0] ? msg->req : NULL, body, true, NULL)
             : -ENOMEM;
    if (r < 0) {
        cl_err(LOG_MOD, "cannot queue %s for %s on %s: %s", cl_action_name(m.action),
               inst.uuid, inst.host, strerror(-r));
        cl_store_instance_set_state(st, inst.uuid, -1, CL_TASK_NONE, -1, NULL, 0);
        return;
    }
    cl_info(LOG_MOD, "instance %s: %s sent to %s", inst.uuid, cl_action_name(m.action),
            inst.host);
}

void sched_actions_on_register(cl_store *st, const char *host, const cl_bus_msg *msg)
{
    char url[512];
    cl_error err = {0};

    if (cl_msg_host_get_agent_url(msg->body, url, sizeof(url), &err) < 0) {
        cl_warn(LOG_MOD, "host %s: %s", host, err.message);
        return;
    }
    if (!url[0])
        return;
    int r = cl_store_host_agent_url_set(st, host, url);
    if (r < 0)
        cl_err(LOG_MOD, "cannot record the agent URL of %s: %s", host, strerror(-r));
}

void sched_actions_on_state(cl_store *st, const char *uuid, const cl_bus_msg *msg)
{
    char addrs[CL_MSG_MAX_ADDRESSES][CL_MSG_ADDR_LEN];
    size_t n = 0;
    bool present = false;
    cl_error err = {0};

    if (cl_msg_state_get_addresses(msg->body, addrs, &n, &present, &err) < 0) {
        cl_warn(LOG_MOD, "instance %s: %s", uuid, err.message);
        return;
    }
    if (!present)
        return;
    int r = cl_store_instance_addresses_set(st, uuid, (const char (*)[CL_MSG_ADDR_LEN])addrs, n);
    if (r < 0 && r != -ENOENT)
        cl_err(LOG_MOD, "cannot record the addresses of %s: %s", uuid, strerror(-r));
}
