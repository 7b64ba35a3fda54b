/*
 * store_schema.h - the controller database's schema steps, one per concern.
 *
 * store.c applies them in version order (PRAGMA user_version). Each concern owns its
 * step in its own file next to the store functions that use those tables, so work on
 * identity, the compute API, placement and server actions can grow the schema without
 * editing each other's files. Versions are fixed here; a step is never edited after it
 * has shipped — later changes are new, higher versions.
 */
#ifndef CL_STORE_SCHEMA_H
#define CL_STORE_SCHEMA_H

/* v2: domains, projects, users, roles, role assignments, revoked tokens (store_identity.c) */
extern const char cl_store_schema_identity[];
/* v3: key pairs, quotas, server groups, instance metadata (store_compute.c) */
extern const char cl_store_schema_compute[];
/* v4: placement: host generations, aggregates, availability zones, migrations (store_placement.c) */
extern const char cl_store_schema_placement[];
/* v5: server actions: pending resizes, console, instance events (store_actions.c) */
extern const char cl_store_schema_actions[];

#endif
