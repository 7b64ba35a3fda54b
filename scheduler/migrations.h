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
#include "store.h"

/* Handle msg when it is a migration.* message; false otherwise. */
bool sched_migrations_on_msg(cl_store *st, cl_bus *bus, const cl_bus_msg *msg);

/* host reports instance uuid that the controller places elsewhere: when it moved away
 * from host by a finished evacuation or live migration (the host was down, or its agent
 * re-created the domain from a stale record), destroy it there so it never runs twice.
 * True when a destroy was queued. */
bool sched_migrations_fence(cl_store *st, cl_bus *bus, const char *host, const char *uuid);

#endif
