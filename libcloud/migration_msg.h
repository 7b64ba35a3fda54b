/*
 * migration_msg.h - the bus messages of a live migration (issue 8), shared by nube-api,
 * nube-scheduler and nube-agent. Header only: the bodies are small JSON objects built
 * and read in place with json-c by scheduler/migrations.c and compute-agent/migrate.c.
 *
 * Agents never talk to each other on the bus (every DEALER connects to the scheduler's
 * ROUTER), so the scheduler relays each step:
 *
 *  type                 direction      body
 *  -------------------  -------------  ----------------------------------------------------
 *  migration.live       api -> sched   {"instance_uuid","host"("" = pick),"block":"auto"|
 *                                       "true"|"false"}
 *  migration.prepare    sched -> dest  {"migration_uuid","source_host","block","instance":
 *                                       {spec}}
 *  migration.prepared   dest -> sched  {"migration_uuid","ok","fault","shared","uri",
 *                                       "address","instances_dir","image_dir","cache_dir"}
 *  migration.start      sched -> src   {"migration_uuid","instance_uuid","dest_host",
 *                                       "dest_uri","dest_address","dest_instances_dir",
 *                                       "dest_image_dir","dest_cache_dir","shared":bool}
 *  migration.progress   src -> sched   {"migration_uuid","elapsed_ms","memory_total",
 *                                       "memory_processed","memory_remaining","disk_total",
 *                                       "disk_processed","disk_remaining","downtime_ms"}
 *                                       (unreliable; only the latest matters)
 *  migration.done       src -> sched   {"migration_uuid","instance_uuid","source":"running"|
 *                                       "paused"|"shutoff"|"absent","fault"}
 *  migration.check      sched -> dest  {"migration_uuid","source_has":bool,"instance":{spec}}
 *  migration.checked    dest -> sched  {"migration_uuid","here":bool,"fault","downtime_ms",
 *                                       "elapsed_ms"}
 *  migration.cleanup    sched -> src   {"migration_uuid","instance_uuid"}  (moved away)
 *  migration.abort      api -> sched -> src
 *                                      {"migration_uuid","instance_uuid","action":"abort"|
 *                                       "force_complete"}
 *  migration.evacuate   api -> sched   {"instance_uuid","host"("" = pick)}: the source is
 *                                      down; claim elsewhere and instance.spawn there from
 *                                      the image. When the old host comes back and reports
 *                                      the instance, the scheduler destroys it there.
 *
 * The outcome is never the migrate call's return code: "done" says what the source
 * hypervisor holds, "check" asks the destination's, and only a domain that runs on the
 * destination and is gone from the source moves the instance.
 */
#ifndef CL_MIGRATION_MSG_H
#define CL_MIGRATION_MSG_H

#define CL_MSG_MIGRATION_LIVE "migration.live"
#define CL_MSG_MIGRATION_PREPARE "migration.prepare"
#define CL_MSG_MIGRATION_PREPARED "migration.prepared"
#define CL_MSG_MIGRATION_START "migration.start"
#define CL_MSG_MIGRATION_PROGRESS "migration.progress"
#define CL_MSG_MIGRATION_DONE "migration.done"
#define CL_MSG_MIGRATION_CHECK "migration.check"
#define CL_MSG_MIGRATION_CHECKED "migration.checked"
#define CL_MSG_MIGRATION_CLEANUP "migration.cleanup"
#define CL_MSG_MIGRATION_ABORT "migration.abort"
#define CL_MSG_MIGRATION_EVACUATE "migration.evacuate"

/* True for every type above (for dispatch). */
#define CL_MSG_IS_MIGRATION(t) (strncmp((t), "migration.", 10) == 0)

#endif
