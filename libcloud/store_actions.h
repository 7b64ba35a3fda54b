/*
 * store_actions.h - controller-store functions for server actions (schema step v5,
 * store_actions.c): state-checked task changes, same-host cold resize with its pending
 * record and allocation change, the agents' HTTP endpoints, and the guests' addresses.
 *
 * Every function that checks and changes runs under one BEGIN IMMEDIATE, so two API
 * workers racing on the same server can never both start an action, and a resize can
 * never overcommit its host. Return values follow store.h: 0 or negative errno, plus
 *   -EPERM  the instance's vm_state does not allow the action,
 *   -EBUSY  a task is in progress (out->task_state says which),
 *   -ENOSPC the host has no room for the new flavor.
 * On -EPERM/-EBUSY *out holds the instance as read, for the 409 message.
 */
#ifndef CL_STORE_ACTIONS_H
#define CL_STORE_ACTIONS_H

#include <stdbool.h>
#include <stddef.h>

#include "messages.h"
#include "model.h"
#include "store.h"

#define CL_VM_BIT(s) (1u << (s))

/* If the instance is live, its task_state is none and its vm_state is in allowed_vm
 * (CL_VM_BIT mask): set task_state to new_task (CL_TASK_NONE: change nothing) and fill
 * *out with the instance as it now is. */
int cl_store_action_begin(cl_store *st, const char *uuid, unsigned allowed_vm,
                          cl_task_state new_task, cl_instance *out);

/* Start a same-host cold resize to new_flavor: the instance must be active or stopped,
 * with no task, and placed on a host that has room for the difference. In one
 * transaction: the allocation and the instance's flavor become new_flavor, the old
 * flavor is kept as the pending resize (for revert), task_state becomes resize_prep.
 * *out receives the updated instance. -EINVAL when new_flavor equals the current one. */
int cl_store_resize_begin(cl_store *st, const char *uuid, const cl_flavor *new_flavor,
                          cl_instance *out);

/* Confirm: the instance must be resized (VERIFY_RESIZE) with no task. Drops the pending
 * resize; vm_state becomes active (stopped when the domain is shut down). */
int cl_store_resize_confirm(cl_store *st, const char *uuid, cl_instance *out);

/* Begin a revert: the instance must be resized with no task. The allocation and flavor go
 * back to the old flavor (capacity re-checked: -ENOSPC), the pending resize is dropped and
 * task_state becomes resize_prep until the agent reports. *out: the updated instance
 * (its flavor is the old one). */
int cl_store_resize_revert_begin(cl_store *st, const char *uuid, cl_instance *out);

/* 1 when a resize of uuid waits for confirm/revert (old flavor in *old if not NULL),
 * 0 when none, <0 errno. */
int cl_store_resize_pending(cl_store *st, const char *uuid, cl_flavor *old);

/* The HTTP endpoint an agent announced in host.register ("" = none). get: -ENOENT when
 * the host never announced one. */
int cl_store_host_agent_url_set(cl_store *st, const char *host, const char *url);
int cl_store_host_agent_url_get(cl_store *st, const char *host, char *out, size_t outlen);

/* The guest's fixed addresses as its host last reported them (replaces the previous
 * set; n = 0 clears). get: *out_n = 0 when none. */
int cl_store_instance_addresses_set(cl_store *st, const char *uuid,
                                    const char (*addrs)[CL_MSG_ADDR_LEN], size_t n);
int cl_store_instance_addresses_get(cl_store *st, const char *uuid,
                                    char (*out)[CL_MSG_ADDR_LEN], size_t cap, size_t *out_n);

#endif
