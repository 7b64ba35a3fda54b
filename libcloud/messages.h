/*
 * messages.h - the bodies of the bus messages nube daemons exchange. One codec, both
 * ends: encoders build the "body" object, decoders validate it and fill a struct.
 * Decoders return 0 or -EINVAL with err naming the bad field.
 *
 *  type              direction        body
 *  ----------------  ---------------  ---------------------------------------------------
 *  instance.schedule api -> sched     {"instance_uuid"}
 *  instance.delete   api -> sched     {"instance_uuid"}
 *  instance.spawn    sched -> agent   {"instance": {cl_msg_instance}}
 *  instance.destroy  sched -> agent   {"instance_uuid"}
 *  instance.state    agent -> sched   {"instance_uuid","host","vm_state","power_state",
 *                                      "task_state","fault"?}
 *  host.register     agent -> sched   {cl_msg_host, "instances":[{"uuid","power_state"}]}
 *  host.heartbeat    agent -> sched   {cl_msg_host}  (unreliable)
 *  ack               both             {} ; envelope id == id of the acknowledged message
 */
#ifndef CL_MESSAGES_H
#define CL_MESSAGES_H

#include <json-c/json.h>
#include <stdint.h>

#include "errors.h"
#include "model.h"
#include "util.h"

#define CL_MSG_INSTANCE_SCHEDULE "instance.schedule"
#define CL_MSG_INSTANCE_DELETE "instance.delete"
#define CL_MSG_INSTANCE_SPAWN "instance.spawn"
#define CL_MSG_INSTANCE_DESTROY "instance.destroy"
#define CL_MSG_INSTANCE_STATE "instance.state"
#define CL_MSG_HOST_REGISTER "host.register"
#define CL_MSG_HOST_HEARTBEAT "host.heartbeat"
#define CL_MSG_ACK "ack"

/* Body with only an instance uuid (schedule, delete, destroy). */
json_object *cl_msg_uuid_encode(const char *instance_uuid);
int cl_msg_uuid_decode(json_object *body, char out_uuid[CL_UUID_LEN], cl_error *err);

/* What an agent needs to build a domain. */
typedef struct cl_msg_instance {
    char uuid[CL_UUID_LEN];
    char name[CL_NAME_MAX];
    char project_id[CL_ID_MAX];
    char user_id[CL_ID_MAX];
    char image_ref[CL_ID_MAX];
    cl_flavor flavor;
} cl_msg_instance;
json_object *cl_msg_spawn_encode(const cl_msg_instance *inst);
int cl_msg_spawn_decode(json_object *body, cl_msg_instance *out, cl_error *err);

typedef struct cl_msg_state {
    char instance_uuid[CL_UUID_LEN];
    char host[CL_HOST_MAX];
    cl_vm_state vm_state;
    cl_power_state power_state;
    cl_task_state task_state;
    char fault[CL_FAULT_MAX]; /* "" when none */
} cl_msg_state;
json_object *cl_msg_state_encode(const cl_msg_state *st);
int cl_msg_state_decode(json_object *body, cl_msg_state *out, cl_error *err);

/* Host capacity as an agent reports it (register and heartbeat). */
typedef struct cl_msg_host {
    char host[CL_HOST_MAX];
    char hypervisor_type[32]; /* "QEMU", "KVM", "Xen", "LXC", "test" */
    char libvirt_uri[256];
    int64_t vcpus;
    int64_t ram_mb;
    int64_t disk_gb;
    int64_t running_vms;
} cl_msg_host;

typedef struct cl_msg_host_instance {
    char uuid[CL_UUID_LEN];
    cl_power_state power_state;
} cl_msg_host_instance;

/* instances/ninstances only for host.register (pass NULL/0 for heartbeats). */
json_object *cl_msg_host_encode(const cl_msg_host *h, const cl_msg_host_instance *instances,
                                size_t ninstances);
/* out_instances (may be NULL): malloc'd array, caller frees. */
int cl_msg_host_decode(json_object *body, cl_msg_host *out,
                       cl_msg_host_instance **out_instances, size_t *out_n, cl_error *err);

/* ---- appended by issue 5 (server actions, console, addresses) ----
 *
 *  instance.action   api -> sched -> agent
 *                    {"instance_uuid","action","instance":{cl_msg_instance}?}
 *                    "instance" is required for resize/revert_resize (the flavor to apply)
 *                    and optional otherwise.
 *  instance.state    + "addresses":["10.0.0.5", ...]? (the guest's fixed IPs, optional)
 *  host.register     + "agent_url":"http://127.0.0.1:8776"? (the agent's HTTP endpoint, for
 *                    synchronous reads such as the console log; optional)
 */
#define CL_MSG_INSTANCE_ACTION "instance.action"

typedef enum {
    CL_ACTION_START, CL_ACTION_STOP, CL_ACTION_REBOOT_SOFT, CL_ACTION_REBOOT_HARD,
    CL_ACTION_PAUSE, CL_ACTION_UNPAUSE, CL_ACTION_SUSPEND, CL_ACTION_RESUME,
    CL_ACTION_RESIZE, CL_ACTION_REVERT_RESIZE, CL_ACTION_MAX
} cl_action;

/* "start", "stop", "reboot_soft", "reboot_hard", "pause", "unpause", "suspend",
 * "resume", "resize", "revert_resize". Parse returns 0 or -EINVAL. */
const char *cl_action_name(cl_action a);
int cl_action_parse(const char *s, cl_action *out);

typedef struct cl_msg_action {
    char instance_uuid[CL_UUID_LEN];
    cl_action action;
    bool has_instance;
    cl_msg_instance instance; /* valid when has_instance */
} cl_msg_action;
/* inst may be NULL (not for resize/revert_resize). New object or NULL. */
json_object *cl_msg_action_encode(const char *instance_uuid, cl_action action,
                                  const cl_msg_instance *inst);
/* -EINVAL when resize/revert_resize lack "instance" or its uuid differs. */
int cl_msg_action_decode(json_object *body, cl_msg_action *out, cl_error *err);

#define CL_MSG_MAX_ADDRESSES 8
#define CL_MSG_ADDR_LEN 64
/* Add "addresses" (n strings) to an instance.state body. 0 or -ENOMEM/-EINVAL. */
int cl_msg_state_set_addresses(json_object *body, const char (*addrs)[CL_MSG_ADDR_LEN],
                               size_t n);
/* Read "addresses": *out_present false (and *out_n 0) when the field is absent (the
 * sender said nothing about addresses); an empty array means "no address". At most
 * CL_MSG_MAX_ADDRESSES entries of printable text < CL_MSG_ADDR_LEN. 0 or -EINVAL. */
int cl_msg_state_get_addresses(json_object *body, char (*out)[CL_MSG_ADDR_LEN], size_t *out_n,
                               bool *out_present, cl_error *err);

/* Add / read "agent_url" of a host.register body. get: "" when absent; -EINVAL when it is
 * not an http:// URL that fits outlen. */
int cl_msg_host_set_agent_url(json_object *body, const char *url);
int cl_msg_host_get_agent_url(json_object *body, char *out, size_t outlen, cl_error *err);

/* ---- appended by issue 5 (hypervisors: image properties on instance.spawn) ----
 *
 *  instance.spawn    + "image_properties":{"vm_mode","hypervisor_type","architecture",
 *                    "container_format","disk_format","os_command_line","nube_init"
 *                    (strings), "nube_lxc" (bool)}? -- all optional; what the agent needs
 *                    of the image to build its domain (Xen PV vs HVM, LXC rootfs + init).
 */
typedef struct cl_msg_image_props {
    char vm_mode[16];           /* "xen" (PV), "hvm", "exe" (container); "" = unknown */
    char hypervisor_type[32];
    char architecture[32];
    char container_format[16];  /* "bare", "ami", "docker", ... */
    char disk_format[16];       /* "qcow2", "raw", "tar", ... */
    char os_command_line[256];  /* kernel command line of a direct-boot image */
    char init[128];             /* nube_init: the container's init path */
    bool lxc;                   /* nube_lxc: the image is a root file system */
} cl_msg_image_props;
/* Add "image_properties" (only the non-empty fields) to an instance.spawn body.
 * 0, -EINVAL, -ENOMEM. */
int cl_msg_spawn_set_image_props(json_object *body, const cl_msg_image_props *p);
/* Read "image_properties": all fields "" / false and *present false when absent.
 * 0 or -EINVAL with err (a field of the wrong type or too long). */
int cl_msg_spawn_get_image_props(json_object *body, cl_msg_image_props *out, bool *present,
                                 cl_error *err);
/* The properties ask for a container (nube_lxc, vm_mode "exe", hypervisor_type "lxc" or
 * container_format/disk_format "tar"). */
bool cl_msg_image_props_is_container(const cl_msg_image_props *p);

#endif
