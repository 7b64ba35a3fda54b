/*
 * migrate.h - the agent's half of live migration (issue 8), kept apart from agent.c.
 *
 * The same module plays both roles (messages in libcloud/migration_msg.h):
 *   destination  migration.prepare -> instance dir + qcow2 overlay on the local base image
 *                (or nothing when the disk is already there: shared storage), reply with
 *                this host's migration URI/address and directories;
 *                migration.check -> is the domain running here? yes and the source has
 *                none: reply here=true and adopt it (agent.c keeps the record); otherwise
 *                destroy what arrived and remove the half-copied disk.
 *   source       migration.start -> a thread runs virDomainMigrateToURI3 (live, p2p,
 *                persist on the destination with the destination XML, undefine here,
 *                incremental disk copy unless shared) while it polls the job statistics,
 *                reports progress, raises the allowed downtime in steps and applies the
 *                completion timeout (abort, or force-complete by pausing the guest); then
 *                it asks its own hypervisor whether the domain is still here and sends
 *                migration.done; migration.abort aborts or force-completes;
 *                migration.cleanup (the destination has it) drops the record and disk.
 *
 * An instance with a migration in flight is "owned" here: agent.c ignores its lifecycle
 * events and leaves it out of the periodic sync (its domain vanishing from the source is
 * the expected outcome, not a crash).
 *
 * Threads: one per running migration (plus the libvirt call it waits for) and one worker
 * for the short destination/cleanup steps, so the bus thread never blocks.
 */
#ifndef AGENT_MIGRATE_H
#define AGENT_MIGRATE_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "bus.h"
#include "errors.h"
#include "http.h"
#include "messages.h"

typedef struct agent_mig agent_mig;

/* What the module needs from agent.c (called from the module's threads). */
typedef struct agent_mig_hooks {
    void *ud;
    /* Send a message to the scheduler (body taken over). 0 or negative errno. */
    int (*send)(void *ud, const char *type, json_object *body, bool reliable);
    /* Destination: the instance runs here now; record it and report its state. */
    void (*adopt)(void *ud, const cl_msg_instance *spec);
    /* Source: the instance left for another host; drop its record (no destroy). */
    void (*forget)(void *ud, const char *uuid);
    /* Cold migration's source: stop the guest (ACPI shutdown, then destroy). 0 or
     * negative errno + err. */
    int (*stop)(void *ud, const char *uuid, cl_error *err);
} agent_mig_hooks;

typedef struct agent_mig_opts {
    const char *libvirt_uri;       /* this host's connection (as the driver's) */
    const char *instances_dir;
    const char *image_dir;
    struct agent_image_cache *images; /* nube-image cache (image_cache.h), NULL = none:
                                       * the destination fetches the base image there */
    const char *cache_dir;         /* its directory ("" = none), rewritten in the XML */
    const char *migration_uri;     /* how other libvirtds reach this one (qemu+tcp://IP/
                                    * system); "" = qemu+tcp://<migration_address>/system */
    const char *migration_address; /* address QEMU's migration stream uses; "" = default */
    int64_t max_downtime_ms;       /* final allowed downtime (raised to in steps) */
    int64_t timeout_s;             /* completion timeout of one migration */
    bool force_on_timeout;         /* timeout: force-complete (pause) instead of abort */
    bool auto_converge;            /* VIR_MIGRATE_AUTO_CONVERGE */
    bool post_copy;                /* VIR_MIGRATE_POSTCOPY: force-complete starts it */
    int64_t progress_ms;           /* job statistics poll / progress report interval */
} agent_mig_opts;

/* Start the module (its worker thread). Strings are copied. 0 and *out, or -errno + err. */
int agent_mig_new(const agent_mig_opts *opts, const agent_mig_hooks *hooks, agent_mig **out,
                  cl_error *err);

/* Abort migrations still running (the guest stays on this host), join every thread and
 * free. Accepts NULL. */
void agent_mig_free(agent_mig *m);

/* Handle a migration.* message (bus thread; never blocks). False when msg is not one. */
bool agent_mig_on_msg(agent_mig *m, const cl_bus_msg *msg);

/* True while a migration of the instance is in flight on this host (either role). */
bool agent_mig_owns(agent_mig *m, const char *uuid);

/* Cold migration (issue 8; the scheduler's side is scheduler/migrations.c):
 *   source       migration.cold_export -> own the instance, stop the guest (hook stop),
 *                measure its overlay (size, sha256) and offer it to the holder of the
 *                move's token on GET /v1/migrations/{mid}/disk; reply cold_exported.
 *                migration.cold_release -> the offer ends (once the destination has
 *                the disk, and again at confirm: instance.destroy follows, or revert:
 *                instance.action start).
 *   destination  migration.cold_import -> the base image (nube-image cache, else
 *                image_dir), pull the overlay from the source's URL with the token
 *                (libcurl, streamed to <uuid>/disk.part, size and sha256 checked, format
 *                inspected), rebase it on the local base (qemu-img -f qcow2 -u under
 *                CPU/address-space limits), rename to <uuid>/disk; reply cold_imported.
 *                instance.spawn follows (the disk is kept and grown to the flavor).
 *                migration.cold_release (confirm or revert) -> the slot goes; with
 *                drop_disk (revert, failure) the disk this agent imported is removed
 *                when no domain uses it (never a disk it did not write: shared storage). */

/* The handler of GET /v1/migrations/{mid}/disk (agent.c's HTTP route): 200 with the
 * exported overlay for the right X-Nube-Migration-Token, 404 otherwise (no export of
 * that migration here, or a wrong token: both answer the same). */
void agent_mig_serve_disk(agent_mig *m, const cl_http_req *req, cl_http_resp *resp);

/* True when this host is the source of an unfinished migration of uuid, by the marker
 * <instances_dir>/<uuid>/migrating that survives an agent crash: the agent must neither
 * re-create the domain (it may run on the destination now) nor report it failed; the
 * scheduler settles it by asking both hosts when this host registers again. */
bool agent_mig_marked(const char *instances_dir, const char *uuid);

#endif
