/*
 * usage.h - the agent's usage samples for nube-billing (usage.c): periodic counter and
 * gauge samples from virConnectGetAllDomainStats, and an event sample at every
 * life-cycle change, sent as usage.samples (libcloud/usage_msg.h) over a bus DEALER of
 * their own to [billing] endpoint, with an outbox so a restart or a billing outage loses
 * nothing.
 */
#ifndef AGENT_USAGE_H
#define AGENT_USAGE_H

#include <stddef.h>

#include "driver.h"
#include "errors.h"
#include "messages.h"
#include "usage_msg.h"

typedef struct agent_usage agent_usage;

/* Connect to billing at endpoint as host; pending samples live in outbox_path. With
 * secret_key_file and server_key_file (billing's public key file) both non-empty the
 * connection uses CURVE (billing then only accepts samples about host from this key);
 * otherwise plain TCP. */
int agent_usage_start(const char *endpoint, const char *host, const char *outbox_path,
                      int resend_ms, const char *secret_key_file,
                      const char *server_key_file, agent_usage **out, cl_error *err);
/* Accepts NULL. Unacknowledged samples stay in the outbox. */
void agent_usage_stop(agent_usage *u);

/* One event sample for spec (flavor snapshot in force from now). Thread-safe. */
void agent_usage_event(agent_usage *u, const cl_msg_instance *spec, cl_usage_event ev);

/* Counter + gauge samples of every running instance among specs (worker thread). */
void agent_usage_sample(agent_usage *u, agent_driver *drv, const cl_msg_instance *specs,
                        size_t n);

/* Samples queued so far (for /metrics and tests). */
unsigned long long agent_usage_sent(const agent_usage *u);

#endif
