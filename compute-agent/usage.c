/*
 * usage.c - usage samples for nube-billing (usage.h).
 *
 * Billing's exactness rests on the rules of usage_msg.h; how this file keeps them:
 *  - counters are libvirt's cumulative values, summed over NICs and disks, never deltas;
 *  - boot_id names the counter base: "<host>/<uuid>/<libvirt domain id>". The domain id
 *    changes at every (re)start of the QEMU process — exactly when the counters restart
 *    — and not when the agent restarts, so an adopted domain keeps its boot_id;
 *  - samples go reliable over their own DEALER with an outbox
 *    (state_dir/agent-<host>-usage-outbox.db): the scheduler's bus and billing's never
 *    wait for each other, and unacknowledged samples survive restarts;
 *  - with [billing] curve_server_key_file the DEALER speaks CURVE with the agent's own key
 *    pair ([bus] curve_secret_key_file), and billing refuses samples whose host is not
 *    the one that key belongs to.
 * Sample ids are fresh UUIDs, so a resent batch is counted once by billing.
 */
#include "usage.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "bus_auth.h"
#include "log.h"
#include "util.h"

#define MOD "agent.usage"

struct agent_usage {
    cl_bus *bus;
    char host[CL_HOST_MAX];
    atomic_ullong sent;
};

static void on_msg(cl_bus *bus, const cl_bus_msg *msg, void *ud)
{
    (void)bus;
    (void)ud;
    cl_debug(MOD, "ignoring %s from billing", msg->type);
}

int agent_usage_start(const char *endpoint, const char *host, const char *outbox_path,
                      int resend_ms, const char *secret_key_file,
                      const char *server_key_file, agent_usage **out, cl_error *err)
{
    agent_usage *u = calloc(1, sizeof(*u));
    if (!u)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    cl_strlcpy(u->host, host, sizeof(u->host));
    cl_bus_opts o = {.role = CL_BUS_DEALER, .endpoint = endpoint, .name = host,
                     .resend_ms = resend_ms, .outbox_path = outbox_path, .on_msg = on_msg,
                     .ud = u};
    /* Billing's server key is what turns CURVE on for this bus: the agent's own key pair
     * (the scheduler bus's) is reused, so one key maps to one host on both buses. */
    bool curve = secret_key_file && *secret_key_file && server_key_file && *server_key_file;
    cl_bus_keys keys;
    int r = cl_bus_keys_apply(&keys, curve ? secret_key_file : NULL, server_key_file, true,
                              &o, err);
    if (r == 0)
        r = cl_bus_new(&o, &u->bus, err);
    explicit_bzero(&keys, sizeof keys);
    if (r < 0) {
        free(u);
        return r;
    }
    *out = u;
    return 0;
}

void agent_usage_stop(agent_usage *u)
{
    if (!u)
        return;
    cl_bus_free(u->bus);
    free(u);
}

unsigned long long agent_usage_sent(const agent_usage *u)
{
    return u ? atomic_load(&u->sent) : 0;
}

static void base_sample(agent_usage *u, const cl_msg_instance *spec, cl_usage_kind kind,
                        cl_usage_sample *s)
{
    memset(s, 0, sizeof(*s));
    cl_uuid_new(s->id);
    cl_strlcpy(s->instance_uuid, spec->uuid, sizeof(s->instance_uuid));
    cl_strlcpy(s->project_id, spec->project_id, sizeof(s->project_id));
    cl_strlcpy(s->host, u->host, sizeof(s->host));
    s->ts = cl_now_ms();
    s->kind = kind;
    s->has_gauges = true;
    s->gauges.vcpus = spec->flavor.vcpus;
    s->gauges.ram_mb = spec->flavor.ram_mb;
    s->gauges.disk_gb = spec->flavor.disk_gb;
    s->gauges.mem_used_mb = -1;
}

static void send_batch(agent_usage *u, const cl_usage_sample *v, size_t n)
{
    for (size_t off = 0; off < n; off += CL_USAGE_BATCH_MAX) {
        size_t k = n - off < CL_USAGE_BATCH_MAX ? n - off : CL_USAGE_BATCH_MAX;
        json_object *body = cl_usage_batch_encode(v + off, k);
        int r = body ? cl_bus_send(u->bus, NULL, CL_MSG_USAGE_SAMPLES, "", body, true, NULL)
                     : -ENOMEM;
        if (r < 0)
            cl_warn(MOD, "cannot queue %zu usage samples: %s", k, strerror(-r));
        else
            atomic_fetch_add(&u->sent, k);
    }
}

void agent_usage_event(agent_usage *u, const cl_msg_instance *spec, cl_usage_event ev)
{
    cl_usage_sample s;
    if (!u || !spec || ev == CL_USAGE_EV_NONE)
        return;
    base_sample(u, spec, CL_USAGE_EVENT, &s);
    s.event = ev;
    cl_strlcpy(s.flavor_id, spec->flavor.id, sizeof(s.flavor_id));
    send_batch(u, &s, 1);
    cl_debug(MOD, "instance %s: usage event %s", spec->uuid, cl_usage_event_name(ev));
}

void agent_usage_sample(agent_usage *u, agent_driver *drv, const cl_msg_instance *specs,
                        size_t n)
{
    agent_domain_stats *st = NULL;
    size_t nst = 0;
    cl_error err = {0};

    if (!u || n == 0)
        return;
    if (agent_driver_stats(drv, &st, &nst, &err) < 0) {
        cl_warn(MOD, "cannot read domain statistics: %s", err.message);
        return;
    }
    cl_usage_sample *v = calloc(2 * nst + 1, sizeof(*v));
    size_t k = 0;
    for (size_t i = 0; v && i < nst; i++) {
        const cl_msg_instance *spec = NULL;
        for (size_t j = 0; j < n && !spec; j++)
            if (strcmp(specs[j].uuid, st[i].uuid) == 0)
                spec = &specs[j];
        if (!spec || !st[i].running)
            continue;
        cl_usage_sample *c = &v[k++];
        base_sample(u, spec, CL_USAGE_COUNTER, c);
        c->has_gauges = false;
        c->has_counters = true;
        c->counters.cpu_ns = st[i].cpu_ns;
        c->counters.net_rx_bytes = st[i].net_rx_bytes;
        c->counters.net_tx_bytes = st[i].net_tx_bytes;
        c->counters.disk_rd_bytes = st[i].disk_rd_bytes;
        c->counters.disk_wr_bytes = st[i].disk_wr_bytes;
        snprintf(c->boot_id, sizeof(c->boot_id), "%.20s/%.36s/%d", u->host, spec->uuid,
                 st[i].id);
        cl_usage_sample *g = &v[k++];
        base_sample(u, spec, CL_USAGE_GAUGE, g);
        g->gauges.mem_used_mb = st[i].mem_used_mb;
    }
    if (k > 0)
        send_batch(u, v, k);
    free(v);
    free(st);
}
