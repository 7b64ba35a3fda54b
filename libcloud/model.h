/*
 * model.h - the types every daemon shares: flavors, instances and their three states,
 * hosts. Enums carry a _MAX sentinel and a string table next to them.
 *
 * The API's "status" is derived from vm_state and task_state exactly as Nova does
 * (nova/api/openstack/common.py, _STATE_MAP): e.g. building -> BUILD, active + rebooting
 * -> REBOOT, active + migrating -> MIGRATING, error -> ERROR, deleted -> DELETED.
 */
#ifndef CL_MODEL_H
#define CL_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

#define CL_NAME_MAX 256  /* 255 characters, as Nova */
#define CL_ID_MAX 65     /* project/user/flavor/image ids */
#define CL_HOST_MAX 256
#define CL_FAULT_MAX 1024

typedef enum {
    CL_VM_BUILDING, CL_VM_ACTIVE, CL_VM_STOPPED, CL_VM_PAUSED, CL_VM_SUSPENDED,
    CL_VM_RESIZED, CL_VM_ERROR, CL_VM_DELETED, CL_VM_STATE_MAX
} cl_vm_state;

typedef enum {
    CL_TASK_NONE, CL_TASK_SCHEDULING, CL_TASK_SPAWNING, CL_TASK_POWERING_OFF,
    CL_TASK_POWERING_ON, CL_TASK_REBOOTING, CL_TASK_MIGRATING, CL_TASK_RESIZE_PREP,
    CL_TASK_RESIZE_MIGRATING, CL_TASK_RESIZE_FINISH, CL_TASK_DELETING,
    /* Appended later (names are what the DB stores, so the order is free): */
    CL_TASK_PAUSING, CL_TASK_UNPAUSING, CL_TASK_SUSPENDING, CL_TASK_RESUMING,
    CL_TASK_REBOOTING_HARD, CL_TASK_RESIZE_REVERTING, CL_TASK_RESIZE_CONFIRMING,
    CL_TASK_STATE_MAX
} cl_task_state;

typedef enum {
    CL_POWER_NOSTATE, CL_POWER_RUNNING, CL_POWER_PAUSED, CL_POWER_SHUTDOWN,
    CL_POWER_CRASHED, CL_POWER_SUSPENDED, CL_POWER_STATE_MAX
} cl_power_state;

/* Names as stored and shown ("building", "spawning", "running"); task NONE is "none"
 * in the DB and JSON null in the API. Parsers return 0 or -EINVAL. */
const char *cl_vm_state_name(cl_vm_state s);
const char *cl_task_state_name(cl_task_state s);
const char *cl_power_state_name(cl_power_state s);
int cl_vm_state_parse(const char *s, cl_vm_state *out);
int cl_task_state_parse(const char *s, cl_task_state *out);
int cl_power_state_parse(const char *s, cl_power_state *out);

/* Nova's numeric OS-EXT-STS:power_state (0 nostate, 1 running, 3 paused, 4 shutdown,
 * 6 crashed, 7 suspended). */
int cl_power_state_code(cl_power_state s);

/* API status (BUILD, ACTIVE, SHUTOFF, PAUSED, SUSPENDED, REBOOT, HARD_REBOOT, MIGRATING,
 * RESIZE, VERIFY_RESIZE, REVERT_RESIZE, ERROR, DELETED, UNKNOWN). */
const char *cl_instance_status(cl_vm_state vm, cl_task_state task);

typedef struct cl_flavor {
    char id[CL_ID_MAX];
    char name[CL_NAME_MAX];
    int64_t vcpus;
    int64_t ram_mb;
    int64_t disk_gb;
    int64_t ephemeral_gb;
    int64_t swap_mb;
    bool is_public;
    bool disabled;
} cl_flavor;

typedef struct cl_instance {
    char uuid[CL_UUID_LEN];
    char name[CL_NAME_MAX];
    char project_id[CL_ID_MAX];
    char user_id[CL_ID_MAX];
    char image_ref[CL_ID_MAX];
    cl_flavor flavor;            /* copied at create time, as Nova embeds it */
    char host[CL_HOST_MAX];      /* "" until scheduled */
    cl_vm_state vm_state;
    cl_task_state task_state;
    cl_power_state power_state;
    char fault[CL_FAULT_MAX];    /* "" when none */
    int fault_code;              /* HTTP-like code of the fault, 0 when none */
    int64_t fault_at_ms;
    char request_id[80];         /* of the create request */
    int64_t created_ms, updated_ms, launched_ms, deleted_ms; /* 0 = never */
} cl_instance;

typedef struct cl_host {
    char name[CL_HOST_MAX];
    char hypervisor_type[32];
    char libvirt_uri[256];
    int64_t id;                  /* stable small integer (Nova's hypervisor id) */
    int64_t vcpus, ram_mb, disk_gb;             /* totals reported by the agent */
    double cpu_ratio, ram_ratio, disk_ratio;    /* allocation ratios */
    int64_t reserved_vcpus, reserved_ram_mb, reserved_disk_gb;
    int64_t used_vcpus, used_ram_mb, used_disk_gb; /* sum of allocations */
    int64_t running_vms;         /* instances allocated here */
    bool up;                     /* heartbeats arriving */
    bool enabled;                /* operator may disable */
    int64_t last_seen_ms;
    int64_t created_ms;
} cl_host;

/* Free capacity of a host for one resource: total * ratio - reserved - used (floor). */
int64_t cl_host_free_vcpus(const cl_host *h);
int64_t cl_host_free_ram_mb(const cl_host *h);
int64_t cl_host_free_disk_gb(const cl_host *h);

#endif
