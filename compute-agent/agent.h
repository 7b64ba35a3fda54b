/*
 * agent.h - nube-agent's logic as a context with start/stop, used by main.c and tests.
 *
 * An agent runs one hypervisor host: it connects to libvirt (driver.h), keeps a local
 * record of the instances this host must run (state_dir/agent-<host>.db), talks to the
 * scheduler over the bus (DEALER named after the host, outbox at
 * state_dir/agent-<host>-outbox.db), and serves /healthz, /metrics and GET /v1/domains.
 *
 * Threads: the bus thread (message handlers, heartbeat ticks), one worker thread (all
 * blocking libvirt work: spawn, destroy, sync), libvirt's event thread (lifecycle
 * events), and the HTTP server's threads. The struct itself is private to agent.c.
 */
#ifndef AGENT_AGENT_H
#define AGENT_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "daemon.h"
#include "errors.h"

/* Parsed nube-agent.conf (see /etc/nube/nube-agent.conf and agent_cfg_keys). */
typedef struct agent_cfg {
    cl_common_cfg common;       /* must be first: [DEFAULT] log_level, use_syslog, state_dir */
    /* [agent] */
    char *host;                 /* "" = gethostname() */
    char *libvirt_uri;
    int64_t heartbeat_interval_ms;
    char *instances_dir;
    char *virt_type;            /* auto | kvm | qemu */
    char *image_dir;            /* "" = <state_dir>/images */
    /* [image] nube-image and the local image cache (image_cache.h) */
    char *image_endpoint;       /* "" = local image_dir only */
    char *image_token;          /* static token (nube-image's admin token) */
    char *image_token_key_file; /* shared token key: mint per-project tokens */
    int64_t image_cache_max_idle_s;
    char *network;              /* libvirt NAT network name; "" = user-mode NIC */
    int64_t shutdown_timeout_s; /* ACPI grace before destroy */
    bool live_resize;           /* resize with an equal disk changes vCPUs/memory live */
    /* live migration (migrate.h) */
    char *migration_uri;        /* how peers' libvirtd reach this one; "" = from address */
    char *migration_address;    /* address of QEMU's migration stream; "" = default */
    int64_t migration_max_downtime_ms;
    int64_t migration_timeout_s;
    char *migration_timeout_action; /* abort | force_complete */
    bool migration_auto_converge;   /* throttle the guest's vCPUs when it dirties fast */
    bool migration_post_copy;       /* allow post-copy: force-complete switches to it */
    /* [bus] */
    char *scheduler_endpoint;
    int64_t resend_ms;
    char *curve_secret_key_file;   /* "" = plain TCP */
    char *curve_server_key_file;   /* the scheduler's public key file */
    /* [resources] 0 = detect */
    int64_t vcpus;
    int64_t ram_mb;
    int64_t disk_gb;
    /* [billing] */
    char *billing_endpoint;     /* "" = no usage samples */
    char *billing_curve_server_key_file; /* billing's public key file; "" = plain TCP */
    int64_t sample_interval_s;
    /* [http] */
    char *http_listen;
    int64_t http_port;          /* 0 = disabled */
} agent_cfg;

/* The key table of nube-agent.conf, for cl_daemon_init / cl_config_* . */
extern const cl_cfg_key agent_cfg_keys[];
extern const size_t agent_cfg_nkeys;

typedef struct agent agent;

/* Start an agent: open the local DB and libvirt, reconcile libvirt with the local
 * records (re-create missing domains, adopt unknown nube domains), start the worker,
 * the bus (sending host.register) and the HTTP server.
 * cfg is copied where needed; it may be freed after return.
 * Returns 0 and *out, or negative errno with err describing what failed (for the log). */
int agent_start(const agent_cfg *cfg, agent **out, cl_error *err);

/* Stop everything agent_start started, in reverse order, and free. Accepts NULL.
 * Queued but unstarted work is not lost: its local records make the next start redo it. */
void agent_stop(agent *a);

/* The HTTP port bound, 0 when HTTP is disabled ([http] port = 0). */
uint16_t agent_http_port(const agent *a);

/* The host name the agent registered as. */
const char *agent_host(const agent *a);

#endif
