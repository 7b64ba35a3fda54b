/*
 * driver.h - the agent's hypervisor driver: a small interface over one libvirt connection.
 *
 * There is one implementation (driver_libvirt.c) because libvirt already abstracts the
 * hypervisors: the URI picks QEMU/KVM, Xen, LXC or the in-process test driver, and every
 * call below is the same for all of them. The interface exists so agent.c reads as
 * "spawn/destroy/state" and never as libvirt plumbing.
 *
 * Identity: a domain's UUID is the instance UUID and its name is "instance-<uuid>". A
 * domain belongs to nube when it carries the <nube:instance> metadata element
 * (domain_xml.h); domains without it are listed but never touched.
 *
 * Threads: one agent_driver holds one virConnectPtr for the whole process (the test
 * driver keeps its domains per connection, so a second connection would see an empty
 * host). libvirt connections are thread-safe, so every function here may be called from
 * any thread. Lifecycle events and keepalives need libvirt's event loop: the driver runs
 * virEventRunDefaultImpl() in a thread of its own while at least one driver is open.
 * A lost connection (libvirtd restarted) is logged by the close callback and reopened by
 * the next call.
 */
#ifndef AGENT_DRIVER_H
#define AGENT_DRIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "domain_xml.h"
#include "errors.h"
#include "messages.h"
#include "model.h"

typedef struct agent_driver agent_driver;

/* Called on libvirt's event thread when a nube domain changes power state: started or
 * resumed (RUNNING), suspended (PAUSED), stopped (SHUTDOWN), crashed (CRASHED),
 * pm-suspended (SUSPENDED). Must not block for long. */
typedef void (*agent_driver_event_fn)(const char *uuid, cl_power_state power, void *ud);

typedef struct agent_driver_opts {
    const char *uri;            /* "qemu:///system", "test:///default", ... */
    agent_virt_type virt_type;  /* for QEMU URIs */
    const char *instances_dir;  /* disks and console logs (domain_xml.h) */
    agent_driver_event_fn on_event; /* optional */
    void *ud;
    /* QEMU hosts (ignored by the test driver): */
    const char *image_dir;      /* local images: <image_dir>/<image_ref>/{kernel,ramdisk,
                                 * disk.qcow2,cmdline}; NULL/"" = no images (blank disks) */
    struct agent_image_cache *images; /* images from nube-image (image_cache.h), tried
                                 * before image_dir; NULL = image_dir only */
    const char *network;        /* libvirt NAT network to create/use; "" = user-mode NIC */
    int shutdown_timeout_s;     /* ACPI shutdown grace before destroy (stop, resize) */
    /* Define domains with vCPU/memory headroom (the host's vCPUs and up to 4x the
     * flavor's memory within the host's) so agent_driver_live_resize can grow them. */
    bool live_resize;
} agent_driver_opts;

typedef struct agent_capacity {
    int64_t vcpus;
    int64_t ram_mb;
    int64_t disk_gb;
} agent_capacity;

typedef struct agent_domain_info {
    char name[256];
    char uuid[CL_UUID_LEN];
    cl_power_state power;
    bool nube;                  /* carries nube metadata */
} agent_domain_info;

/* Open the connection (starting the event loop thread if needed), read the hypervisor
 * type and register for lifecycle events. Returns 0 and *out (free with
 * agent_driver_free), -ENOTSUP for a hypervisor nube does not drive, or -EIO with err
 * carrying libvirt's message. */
int agent_driver_open(const agent_driver_opts *opts, agent_driver **out, cl_error *err);

/* Deregister events, close the connection, stop the event thread when it was the last
 * driver. Accepts NULL. */
void agent_driver_free(agent_driver *drv);

/* The hypervisor: the enum, and its name as virConnectGetType() spells it, canonicalised
 * ("QEMU", "Test", "Xen", "LXC"; libvirt says "TEST"), which is what the agent reports as
 * hypervisor_type. */
agent_hv_type agent_driver_hv(const agent_driver *drv);
const char *agent_driver_hv_name(const agent_driver *drv);

/* The URI given to open. */
const char *agent_driver_uri(const agent_driver *drv);

/* True while the connection is believed alive (false after the close callback fired,
 * until a call reopened it). */
bool agent_driver_alive(agent_driver *drv);

/* Host capacity: vCPUs and memory from virNodeGetInfo, disk from statvfs of
 * instances_dir (or its nearest existing parent). Returns 0 or negative errno + err. */
int agent_driver_capacity(agent_driver *drv, agent_capacity *out, cl_error *err);

/* All domains (nube_only: only those with nube metadata). *out is malloc'd (caller
 * frees; NULL when *out_n is 0). Returns 0 or negative errno + err. */
int agent_driver_list(agent_driver *drv, bool nube_only, agent_domain_info **out,
                      size_t *out_n, cl_error *err);

/* Make the instance exist and run. Idempotent: when a domain with that uuid exists it
 * is started (or resumed) if it is not running, else left alone; otherwise it is defined
 * from agent_domain_xml() and started. Returns 0, or negative errno with err carrying
 * libvirt's message (the instance fault). */
int agent_driver_spawn(agent_driver *drv, const cl_msg_instance *inst, cl_error *err);

/* Make the instance's domain exist without starting it (as spawn, disk kept and grown to
 * the flavor; an existing domain is left as it is): a stopped server that moved to this
 * host (cold migration). 0 or negative errno + err. */
int agent_driver_define(agent_driver *drv, const cl_msg_instance *inst, cl_error *err);

/* Make the instance not exist: destroy (if running) and undefine. An absent domain is
 * success. Returns 0 or negative errno + err. */
int agent_driver_destroy(agent_driver *drv, const char *uuid, cl_error *err);

/* Power state of the instance's domain. Returns 0, -ENOENT when no such domain, or
 * negative errno + err. */
int agent_driver_state(agent_driver *drv, const char *uuid, cl_power_state *out,
                       cl_error *err);

/* The spec recorded in a domain's nube metadata (for adopting domains the agent has no
 * record of). Returns 0, -ENOENT (no domain, or no nube metadata), or -EINVAL/-EIO. */
int agent_driver_metadata(agent_driver *drv, const char *uuid, cl_msg_instance *out,
                          cl_error *err);

/* ---- issue 5: actions, observation, addresses ---- */

/* The resolved QEMU acceleration (kvm or qemu after the probe; auto for other
 * hypervisors). */
agent_virt_type agent_driver_virt(const agent_driver *drv);

/* Perform a server action on the instance's domain (see driver_libvirt.c for each):
 * stop = ACPI shutdown, destroy after shutdown_timeout_s; start; soft reboot = ACPI
 * shutdown then start (hard reboot when the guest does not shut down in time); hard reboot = destroy + redefine + start; pause /
 * unpause = suspend / resume; suspend / resume = managed save / start; resize and
 * revert_resize = stop if running, redefine with spec's flavor, start again if it ran.
 * spec: the instance (required for resize/revert, used by hard reboot when given).
 * Idempotent where the target state already holds. 0, -ENOENT (no domain), or negative
 * errno + err. */
int agent_driver_action(agent_driver *drv, const char *uuid, cl_action action,
                        const cl_msg_instance *spec, cl_error *err);

/* Power state plus whether a shut-off domain holds a managed save image (a suspended
 * instance). 0, -ENOENT, or negative errno + err. */
int agent_driver_observe(agent_driver *drv, const char *uuid, cl_power_state *power,
                         bool *saved, cl_error *err);

/* The guest's IPv4/IPv6 addresses from the network's DHCP leases (NAT network only;
 * *out_n = 0 otherwise). 0 or negative errno. */
int agent_driver_addresses(agent_driver *drv, const char *uuid,
                           char (*out)[CL_MSG_ADDR_LEN], size_t cap, size_t *out_n);

/* Bulk statistics of one nube domain (virConnectGetAllDomainStats), for usage samples.
 * Counters are cumulative since the domain started; fields libvirt did not report are 0
 * (mem_used_mb -1). */
typedef struct agent_domain_stats {
    char uuid[CL_UUID_LEN];
    bool running;
    int id;                     /* libvirt domain id (-1 when not running) */
    int64_t cpu_ns;
    int64_t net_rx_bytes, net_tx_bytes;
    int64_t disk_rd_bytes, disk_wr_bytes;
    int64_t mem_used_mb;
} agent_domain_stats;

/* Stats of every nube domain: *out malloc'd (caller frees), *out_n entries.
 * 0 or negative errno + err. */
int agent_driver_stats(agent_driver *drv, agent_domain_stats **out, size_t *out_n,
                       cl_error *err);

/* "network:<name>", "user" or "none": how guests are connected (for logs and tests). */
const char *agent_driver_net_mode(const agent_driver *drv);

/* ---- issue 5: capabilities, image properties, LXC, live resize ---- */

/* What the host is, for host.register (the scheduler's ImagePropertiesFilter). */
typedef struct agent_host_caps {
    int64_t hypervisor_version; /* virConnectGetVersion: major * 1e6 + minor * 1e3 + micro */
    char cpu_arch[32];          /* "x86_64" (capabilities <host><cpu><arch>, or node info) */
    char cpu_model[64];         /* "Skylake-Client-IBRS"; "" when libvirt names none */
} agent_host_caps;

/* Read the capabilities. 0 or negative errno + err. */
int agent_driver_host_caps(agent_driver *drv, agent_host_caps *out, cl_error *err);

/* Remember an instance's image properties for the domains defined from now on (kept in
 * <instances_dir>/<uuid>/image_properties.json, so a restarted agent that re-creates the
 * domain builds the same one; the test driver keeps none). Xen: vm_mode picks PV/HVM;
 * LXC: nube_init picks the init. 0 or negative errno + err. */
int agent_driver_set_image_props(agent_driver *drv, const char *uuid,
                                 const cl_msg_image_props *props, cl_error *err);

/* Change a domain's vCPUs and memory to spec's flavor without stopping it
 * (virDomainSetVcpusFlags / SetMemoryFlags, LIVE|CONFIG when it runs, CONFIG otherwise),
 * and record the new flavor in its nube metadata. -ERANGE (err says which maximum) when
 * the flavor exceeds the domain's maximums (it was defined without headroom: use a cold
 * resize), -ENOENT, -ENOTSUP (the hypervisor refused a live change), or negative errno +
 * err. */
int agent_driver_live_resize(agent_driver *drv, const cl_msg_instance *spec, cl_error *err);

#endif
