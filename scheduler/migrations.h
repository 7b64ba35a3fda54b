/*
 * migrations.h - the scheduler's orchestration of live migrations (migrations.c).
 *
 * Called from sched.c's dispatch on the bus thread for every migration.* message
 * (libcloud/migration_msg.h), with the scheduler's store and bus.
 */
#ifndef SCHED_MIGRATIONS_H
#define SCHED_MIGRATIONS_H

#include <stdbool.h>

#include "bus.h"
#include "messages.h"
#include "model.h"
#include "store.h"

/* Handle msg when it is a migration.* message; false otherwise. */
bool sched_migrations_on_msg(cl_store *st, cl_bus *bus, const cl_bus_msg *msg);

/* host reports instance uuid that the controller places elsewhere: when it moved away
 * from host by a finished evacuation or live migration (the host was down, or its agent
 * re-created the domain from a stale record), destroy it there so it never runs twice.
 * True when a destroy was queued. */
bool sched_migrations_fence(cl_store *st, cl_bus *bus, const char *host, const char *uuid);

/* host (re)registered with its instances: live migrations it was the source of and that
 * have not settled lost their run (the agent was killed); settle them by asking the
 * destination (migration.check) with what the source now reports. */
void sched_migrations_on_register(cl_store *st, cl_bus *bus, const char *host,
                                  const cl_msg_host_instance *ri, size_t nri);

/* A state report from host about inst while a cold migration of it is in flight: an
 * ACTIVE report from the destination becomes RESIZED (VERIFY_RESIZE) in *vm_state; an
 * ERROR while moving sends the guest back to the source. true: handled, record nothing. */
bool sched_migrations_cold_report(cl_store *st, cl_bus *bus, const cl_instance *inst,
                                  const char *host, int *vm_state, const char *fault);

/* Confirm the cold migrations that waited in VERIFY_RESIZE for window_s seconds
 * (0 = never), and finish the confirms and reverts a killed scheduler left half-done.
 * Called from the scheduler's periodic tick. */
void sched_migrations_auto_confirm(cl_store *st, cl_bus *bus, int64_t window_s);

/* First tick after a start: send again the last commands of the cold migration confirms
 * and reverts that ended shortly before (they may have died with the previous run before
 * its bus stored them); a revert's start only while the server is as the revert left it. */
void sched_migrations_resume(cl_store *st, cl_bus *bus);

#endif
