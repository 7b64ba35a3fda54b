/*
 * model.c - names of the instance states, the API status derived from them, and the
 * free-capacity arithmetic of a host.
 *
 * An instance has three states, as in Nova: vm_state (what it is: building, active,
 * stopped ...), task_state (what is being done to it: spawning, rebooting ...) and
 * power_state (what the hypervisor last reported). The names are the ones Nova stores
 * and shows (nova/compute/vm_states.py, task_states.py, power_state.py), so clients and
 * operators read familiar values. The API "status" is derived as Nova's
 * nova/api/openstack/common.py _STATE_MAP does it.
 */
#include "model.h"

#include <errno.h>
#include <string.h>

static const char *const vm_names[CL_VM_STATE_MAX] = {
    [CL_VM_BUILDING] = "building", [CL_VM_ACTIVE] = "active",
    [CL_VM_STOPPED] = "stopped",   [CL_VM_PAUSED] = "paused",
    [CL_VM_SUSPENDED] = "suspended", [CL_VM_RESIZED] = "resized",
    [CL_VM_ERROR] = "error",       [CL_VM_DELETED] = "deleted",
};

/* Nova spells the power transitions with hyphens and the resize steps with underscores. */
static const char *const task_names[CL_TASK_STATE_MAX] = {
    [CL_TASK_NONE] = "none",
    [CL_TASK_SCHEDULING] = "scheduling",
    [CL_TASK_SPAWNING] = "spawning",
    [CL_TASK_POWERING_OFF] = "powering-off",
    [CL_TASK_POWERING_ON] = "powering-on",
    [CL_TASK_REBOOTING] = "rebooting",
    [CL_TASK_MIGRATING] = "migrating",
    [CL_TASK_RESIZE_PREP] = "resize_prep",
    [CL_TASK_RESIZE_MIGRATING] = "resize_migrating",
    [CL_TASK_RESIZE_FINISH] = "resize_finish",
    [CL_TASK_DELETING] = "deleting",
    [CL_TASK_PAUSING] = "pausing",
    [CL_TASK_UNPAUSING] = "unpausing",
    [CL_TASK_SUSPENDING] = "suspending",
    [CL_TASK_RESUMING] = "resuming",
    [CL_TASK_REBOOTING_HARD] = "rebooting_hard",
    [CL_TASK_RESIZE_REVERTING] = "resize_reverting",
    [CL_TASK_RESIZE_CONFIRMING] = "resize_confirming",
};

static const char *const power_names[CL_POWER_STATE_MAX] = {
    [CL_POWER_NOSTATE] = "nostate",   [CL_POWER_RUNNING] = "running",
    [CL_POWER_PAUSED] = "paused",     [CL_POWER_SHUTDOWN] = "shutdown",
    [CL_POWER_CRASHED] = "crashed",   [CL_POWER_SUSPENDED] = "suspended",
};

/* nova/compute/power_state.py: the gaps (2, 5) are states Nova retired. */
static const int power_codes[CL_POWER_STATE_MAX] = {
    [CL_POWER_NOSTATE] = 0, [CL_POWER_RUNNING] = 1, [CL_POWER_PAUSED] = 3,
    [CL_POWER_SHUTDOWN] = 4, [CL_POWER_CRASHED] = 6, [CL_POWER_SUSPENDED] = 7,
};

static const char *name_of(const char *const *table, unsigned n, unsigned v)
{
    return v < n ? table[v] : "unknown";
}

static int parse_in(const char *const *table, unsigned n, const char *s, int *out)
{
    if (!s)
        return -EINVAL;
    for (unsigned i = 0; i < n; i++) {
        if (strcmp(table[i], s) == 0) {
            *out = (int)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *cl_vm_state_name(cl_vm_state s) { return name_of(vm_names, CL_VM_STATE_MAX, s); }

const char *cl_task_state_name(cl_task_state s)
{
    return name_of(task_names, CL_TASK_STATE_MAX, s);
}

const char *cl_power_state_name(cl_power_state s)
{
    return name_of(power_names, CL_POWER_STATE_MAX, s);
}

int cl_vm_state_parse(const char *s, cl_vm_state *out)
{
    int v;
    int r = parse_in(vm_names, CL_VM_STATE_MAX, s, &v);

    if (r == 0)
        *out = (cl_vm_state)v;
    return r;
}

int cl_task_state_parse(const char *s, cl_task_state *out)
{
    int v;
    int r = parse_in(task_names, CL_TASK_STATE_MAX, s, &v);

    if (r == 0)
        *out = (cl_task_state)v;
    return r;
}

int cl_power_state_parse(const char *s, cl_power_state *out)
{
    int v;
    int r = parse_in(power_names, CL_POWER_STATE_MAX, s, &v);

    if (r == 0)
        *out = (cl_power_state)v;
    return r;
}

int cl_power_state_code(cl_power_state s)
{
    return (unsigned)s < CL_POWER_STATE_MAX ? power_codes[s] : 0;
}

static bool is_resize_task(cl_task_state task)
{
    return task == CL_TASK_RESIZE_PREP || task == CL_TASK_RESIZE_MIGRATING ||
           task == CL_TASK_RESIZE_FINISH;
}

/*
 * Nova's _STATE_MAP, restricted to the states nube has: the task state refines the
 * status only where Nova lets it (an ACTIVE server being rebooted shows REBOOT; a
 * stopped one being resized shows RESIZE), otherwise the vm_state decides alone.
 */
const char *cl_instance_status(cl_vm_state vm, cl_task_state task)
{
    switch (vm) {
    case CL_VM_BUILDING:
        return "BUILD";
    case CL_VM_ACTIVE:
        if (task == CL_TASK_REBOOTING)
            return "REBOOT";
        if (task == CL_TASK_REBOOTING_HARD)
            return "HARD_REBOOT";
        if (task == CL_TASK_MIGRATING)
            return "MIGRATING";
        if (is_resize_task(task))
            return "RESIZE";
        return "ACTIVE";
    case CL_VM_STOPPED:
        return is_resize_task(task) ? "RESIZE" : "SHUTOFF";
    case CL_VM_PAUSED:
        return "PAUSED";
    case CL_VM_SUSPENDED:
        return "SUSPENDED";
    case CL_VM_RESIZED:
        /* Nova shows REVERT_RESIZE while reverting; confirming keeps VERIFY_RESIZE. */
        return task == CL_TASK_RESIZE_REVERTING ? "REVERT_RESIZE" : "VERIFY_RESIZE";
    case CL_VM_ERROR:
        return "ERROR";
    case CL_VM_DELETED:
        return "DELETED";
    case CL_VM_STATE_MAX:
        break;
    }
    return "UNKNOWN";
}

/*
 * floor(total * ratio) - reserved - used. The result is negative when the host is
 * overcommitted beyond its ratio (an operator lowered the ratio, or the agent reported
 * less than before); we return the real value so callers can tell "full" from "over".
 * The epsilon keeps 100 * 0.29 (28.999999999999996 in binary) at 29.
 */
static int64_t free_of(int64_t total, double ratio, int64_t reserved, int64_t used)
{
    double cap = (double)total * ratio + 1e-9;
    int64_t whole = (int64_t)cap; /* truncates toward zero ... */

    if ((double)whole > cap)
        whole--; /* ... so step down for negatives: floor without libm */
    return whole - reserved - used;
}

int64_t cl_host_free_vcpus(const cl_host *h)
{
    return free_of(h->vcpus, h->cpu_ratio, h->reserved_vcpus, h->used_vcpus);
}

int64_t cl_host_free_ram_mb(const cl_host *h)
{
    return free_of(h->ram_mb, h->ram_ratio, h->reserved_ram_mb, h->used_ram_mb);
}

int64_t cl_host_free_disk_gb(const cl_host *h)
{
    return free_of(h->disk_gb, h->disk_ratio, h->reserved_disk_gb, h->used_disk_gb);
}
