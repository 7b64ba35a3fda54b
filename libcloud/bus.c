/*
 * bus.c - the nube message bus: one ZeroMQ socket per endpoint, driven by one thread,
 * with at-least-once delivery (acks, resends, dedup) and an optional SQLite outbox.
 *
 * How it fits together (see bus.h for the contract):
 *
 *   any thread                         bus thread (owns socket, pending set, outbox)
 *   ----------                         --------------------------------------------
 *   cl_bus_send()                      zmq_poll([socket, eventfd], min(tick, resend))
 *     encode the envelope                -> drain the send queue: send, and keep reliable
 *     push onto queue (mutex, capped)       messages pending (+ outbox row)
 *     write(eventfd) -------- wakes -->  -> receive: ack   -> drop the pending message
 *                                                   other -> dedup, on_msg, ack
 *                                        -> resend pending messages that are due
 *                                        -> on_tick when due
 *
 * The libzmq C API is used directly (no CZMQ): a socket is not thread-safe, so only the
 * bus thread touches it after cl_bus_new() has set it up; other threads talk to it
 * through the queue and the eventfd, which zmq_poll() watches as a raw file descriptor.
 *
 * Frames: a ROUTER receives and sends [routing id][payload]; a DEALER sends and receives
 * [payload] alone (no empty delimiter frame, we are not emulating REQ/REP). Anything else
 * is counted in bad_frames and dropped. ROUTER_MANDATORY makes a send to a peer that is
 * not connected fail with EHOSTUNREACH instead of vanishing, so the message simply stays
 * pending and the resend timer tries again; on the DEALER side ZMQ_IMMEDIATE does the
 * same while no connection is up (instead of piling copies into a pipe that would be
 * flushed as a burst of duplicates on reconnect).
 *
 * Routes (ROUTER side): a DEALER's routing id is "<name>#<nonce>", a fresh 128-bit nonce
 * per socket, so a host's name is never "taken": a restarted agent, or an impostor, is
 * one more connection beside the others. Which connection a name is sent to is learned
 * only from accepted messages (with ZAP: those whose key maps to the name, bus_authorize)
 * and kept in routes (name -> routing id and key). Until a name has spoken, a send to it
 * fails like a send to an absent peer and the message waits; when the route changes, the
 * messages waiting for that name are made due at once. A route is dropped when its key
 * is revoked (checked on every send), when a refused message arrives on it, and when
 * ZeroMQ reports its connection gone; a DEALER's "hello" teaches it again even to a
 * peer that sends nothing else: the DEALER says it after every handshake (a socket
 * monitor reports them: first connection, reconnection, restarted ROUTER), resends it
 * until acked, and repeats it every BUS_HELLO_REFRESH_MS in case one was missed.
 * The nonce travels inside CURVE's encrypted handshake and is never logged: a
 * connection can only present another's routing id by knowing it.
 *
 * Pending reliable messages live in a list ordered by their next resend time (every
 * reschedule is "now + resend_ms" on a monotonic clock, so appending keeps the order)
 * and in a tsearch(3) tree keyed by id for the ack lookup. Ids already handled are
 * remembered in a json-c object used as a hash set, with a FIFO ring of dedup_cap ids
 * deciding which to forget.
 *
 * The outbox (optional) is touched only by the bus thread, after cl_bus_new() reloaded
 * it: a cl_db is single-threaded (db.h). A row is written when a reliable message leaves
 * the queue and deleted when its ack arrives or it is given up.
 *
 * Statistics: sent counts frames handed to ZeroMQ (first sends and resends, not acks),
 * resent the resends among them, received every valid envelope (acks and duplicates
 * included), acked the acks that matched a pending message, duplicates the messages not
 * handed to on_msg again, dropped the messages that never made it (an unreliable send
 * that failed, a reliable one past max_tries), bad_frames what could not be decoded.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <search.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/queue.h>
#include <sys/random.h>
#include <unistd.h>

#include <zmq.h>

#include "bus.h"
#include "bus_auth.h"
#include "db.h"
#include "json.h"
#include "log.h"

#define BUS_LOG "cl.bus"
#define BUS_ACK_TYPE "ack" /* CL_MSG_ACK in messages.h */
#define BUS_DEFAULT_RESEND_MS 2000
#define BUS_DEFAULT_DEDUP_CAP 4096
#define BUS_DEFAULT_PENDING_CAP 10000
#define BUS_TYPE_MAX 64
#define BUS_REQ_MAX 80
/* Messages received per wake before timers and the send queue get a turn. */
#define BUS_RECV_BATCH 256
/* ZMTP heartbeats: a peer silent for the timeout is disconnected, so a dead agent's pipe
 * goes away and ROUTER_MANDATORY reports it absent instead of queueing into the void. */
#define BUS_HEARTBEAT_IVL_MS 1000
#define BUS_HEARTBEAT_TIMEOUT_MS 5000
/* Routes kept at most (a plain-TCP ROUTER learns one per name anyone presents). */
#define BUS_ROUTES_MAX 65536
#define BUS_HELLO_TYPE "bus.hello"
/* A DEALER's hello: said at once after each handshake, retried this often while the
 * send fails (not connected), then every resend_ms until acked, then repeated every
 * BUS_HELLO_REFRESH_MS. */
#define BUS_HELLO_RETRY_MS 100
#define BUS_HELLO_REFRESH_MS 30000
#define BUS_MONITOR_EP "inproc://nube-bus-monitor"
#define BUS_NONCE_BYTES 16
#define BUS_OUTBOX_BUSY_MS 5000
/* ZMQ_ZAP_ENFORCE_DOMAIN is a draft option (zmq.h hides it without ZMQ_BUILD_DRAFT_API). */
#ifdef ZMQ_ZAP_ENFORCE_DOMAIN
#define BUS_ZAP_ENFORCE_DOMAIN ZMQ_ZAP_ENFORCE_DOMAIN
#else
#define BUS_ZAP_ENFORCE_DOMAIN 93
#endif

/* One outgoing message: queued by cl_bus_send(), then pending on the bus thread when it
 * is reliable. id must stay the first member: the tsearch tree stores the item pointer
 * and compares it as the id string. */
typedef struct bus_item {
    char id[CL_UUID_LEN];
    char peer[CL_BUS_NAME_MAX]; /* routing id on the ROUTER side, "" on the DEALER side */
    char *frame;                /* encoded envelope, NUL-terminated */
    size_t len;
    bool reliable;
    bool stored;                /* a row exists in the outbox */
    bool ack;                   /* a manual ack (cl_bus_ack): remember id, then send */
    int64_t next_resend;        /* monotonic ms */
    int tries;                  /* sends attempted */
    TAILQ_ENTRY(bus_item) link;
} bus_item;

TAILQ_HEAD(bus_list, bus_item);

struct cl_bus {
    /* Fixed after cl_bus_new(). */
    cl_bus_role role;
    char name[CL_BUS_NAME_MAX];
    int resend_ms;
    int max_tries;
    int tick_ms;
    size_t dedup_cap;
    size_t pending_cap;
    bool manual_ack;
    cl_bus_handler_fn on_msg;
    cl_bus_tick_fn on_tick;
    void *ud;
    void *zctx;
    void *sock;
    int efd;
    pthread_t thread;
    bool thread_started;

    /* Shared with senders: guarded by lock. */
    pthread_mutex_t lock;
    struct bus_list queue;
    size_t nqueued;
    size_t nreliable; /* queued reliable + pending: what pending_cap bounds */
    bool stop;
    cl_bus_stats stats;

    /* Bus thread only (cl_bus_new() before the thread starts). */
    struct bus_list pending;
    void *pending_index;   /* tsearch tree of bus_item*, keyed by id */
    json_object *seen;     /* set of handled ids (values are NULL) */
    char (*seen_ring)[CL_UUID_LEN];
    size_t seen_head, seen_count;
    cl_db *outbox;
    cl_bus_auth *auth;     /* ZAP handler (ROUTER with curve_allowed_dir), else NULL */
    /* ROUTER: name -> "<key> <routing id>" of the connection the name last spoke on and
     * the key it spoke with ("" without ZAP); see Routes above and bus_route_get(). */
    json_object *routes;
    /* DEALER: "<name>#<nonce>", and the hello that makes it known. */
    char routing_id[CL_BUS_NAME_MAX];
    char hello_id[CL_UUID_LEN];
    char *hello_frame;
    int64_t hello_next;
    void *mon;             /* PAIR receiving the DEALER socket's handshake events */
    int64_t next_tick;
};

/* ------------------------------------------------------------------ codec */

static bool bus_str_clean(const char *s, size_t len)
{
    /* json-c strings may hold \u0000; a C string would silently end there. */
    if (strlen(s) != len)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

/* Fetch the string member key of root into out[outlen]: required or optional, at least
 * min bytes, refused (not truncated) when it does not fit. */
static int bus_get_str(json_object *root, const char *key, bool required, size_t min,
                       char *out, size_t outlen, cl_error *err)
{
    json_object *o = NULL;
    if (!json_object_object_get_ex(root, key, &o) || !o) {
        if (required)
            return cl_error_set(err, CL_E_BAD_REQUEST, "bus envelope: missing '%s'", key);
        return 0;
    }
    if (!json_object_is_type(o, json_type_string))
        return cl_error_set(err, CL_E_BAD_REQUEST, "bus envelope: '%s' must be a string",
                            key);
    const char *s = json_object_get_string(o);
    size_t len = (size_t)json_object_get_string_len(o);
    if (len < min || len >= outlen || !bus_str_clean(s, len))
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "bus envelope: '%s' must be %zu..%zu printable bytes", key, min,
                            outlen - 1);
    memcpy(out, s, len + 1);
    return 0;
}

/* Serialise msg (its v is ignored: we always speak CL_BUS_VERSION). *out is a new
 * NUL-terminated string the caller frees. 0, -EINVAL (NULL arguments) or -ENOMEM.
 * Thread-safe as long as msg->body is not shared with another thread. */
int cl_bus_encode(const cl_bus_msg *msg, char **out)
{
    if (!msg || !out)
        return -EINVAL;
    _cleanup_json_ json_object *env = json_object_new_object();
    json_object *body = msg->body ? json_object_get(msg->body) : json_object_new_object();
    if (!env || !body) {
        json_object_put(body);
        return -ENOMEM;
    }
    /* json_object_object_add() takes over the value even when it returns an error. */
    if (json_object_object_add(env, "v", json_object_new_int(CL_BUS_VERSION)) < 0 ||
        json_object_object_add(env, "id", json_object_new_string(msg->id)) < 0 ||
        json_object_object_add(env, "type", json_object_new_string(msg->type)) < 0 ||
        json_object_object_add(env, "ts", json_object_new_int64(msg->ts)) < 0 ||
        json_object_object_add(env, "from", json_object_new_string(msg->from)) < 0 ||
        json_object_object_add(env, "req", json_object_new_string(msg->req)) < 0 ||
        json_object_object_add(env, "body", body) < 0)
        return -ENOMEM;
    const char *s = json_object_to_json_string_ext(env, JSON_C_TO_STRING_PLAIN |
                                                            JSON_C_TO_STRING_NOSLASHESCAPE);
    char *copy = s ? strdup(s) : NULL;
    if (!copy)
        return -ENOMEM;
    *out = copy;
    return 0;
}

/* Parse and validate one envelope (see bus.h). *out is written only on success and then
 * owns a reference to its body (release with cl_bus_msg_clear). peer is left "": the
 * bus fills it from the routing frame. 0 or -EINVAL with err. Thread-safe. */
int cl_bus_decode(const char *buf, size_t len, cl_bus_msg *out, cl_error *err)
{
    if (!buf || !out)
        return cl_error_set(err, CL_E_BAD_REQUEST, "bus envelope: no data");
    if (len > CL_BUS_MAX_FRAME)
        return cl_error_set(err, CL_E_BAD_REQUEST, "bus envelope: %zu bytes is over %d",
                            len, CL_BUS_MAX_FRAME);
    _cleanup_json_ json_object *root = NULL;
    if (cl_json_parse_object(buf, len, &root, err) < 0)
        return -EINVAL;

    cl_bus_msg m;
    memset(&m, 0, sizeof m);
    json_object *o = NULL;
    if (!json_object_object_get_ex(root, "v", &o) || !json_object_is_type(o, json_type_int) ||
        json_object_get_int64(o) != CL_BUS_VERSION)
        return cl_error_set(err, CL_E_BAD_REQUEST, "bus envelope: 'v' must be %d",
                            CL_BUS_VERSION);
    m.v = CL_BUS_VERSION;
    int r;
    if ((r = bus_get_str(root, "id", true, 36, m.id, sizeof m.id, err)) < 0)
        return r;
    if (!cl_uuid_valid(m.id))
        return cl_error_set(err, CL_E_BAD_REQUEST, "bus envelope: 'id' must be a UUID");
    if ((r = bus_get_str(root, "type", true, 1, m.type, sizeof m.type, err)) < 0 ||
        (r = bus_get_str(root, "from", true, 1, m.from, sizeof m.from, err)) < 0 ||
        (r = bus_get_str(root, "req", false, 0, m.req, sizeof m.req, err)) < 0)
        return r;
    if (json_object_object_get_ex(root, "ts", &o)) {
        if (!json_object_is_type(o, json_type_int))
            return cl_error_set(err, CL_E_BAD_REQUEST, "bus envelope: 'ts' must be an integer");
        m.ts = json_object_get_int64(o);
    }
    json_object *body = NULL;
    if (json_object_object_get_ex(root, "body", &body)) {
        if (!json_object_is_type(body, json_type_object))
            return cl_error_set(err, CL_E_BAD_REQUEST, "bus envelope: 'body' must be an object");
        m.body = json_object_get(body);
    } else {
        m.body = json_object_new_object();
        if (!m.body)
            return -ENOMEM;
    }
    *out = m;
    return 0;
}

/* Drop the body reference of msg; accepts NULL and a zeroed message. */
void cl_bus_msg_clear(cl_bus_msg *msg)
{
    if (!msg)
        return;
    json_object_put(msg->body);
    msg->body = NULL;
}

/* ------------------------------------------------------------------ helpers */

static void bus_free_nothing(void *p)
{
    (void)p; /* the tree does not own its items: the pending list does */
}

static void bus_item_free(bus_item *it)
{
    if (!it)
        return;
    free(it->frame);
    free(it);
}

static int bus_id_cmp(const void *a, const void *b)
{
    /* Both are bus_item* or a bare id string: the id is the first member. */
    return strcmp((const char *)a, (const char *)b);
}

static void bus_stat_add(cl_bus *b, uint64_t *counter)
{
    pthread_mutex_lock(&b->lock);
    (*counter)++;
    pthread_mutex_unlock(&b->lock);
}

/* One less reliable message in flight (acked or given up). */
static void bus_reliable_done(cl_bus *b, uint64_t *counter)
{
    pthread_mutex_lock(&b->lock);
    if (b->nreliable > 0)
        b->nreliable--;
    (*counter)++;
    pthread_mutex_unlock(&b->lock);
}

static void bus_wake(cl_bus *b)
{
    uint64_t one = 1;
    /* EAGAIN means the counter is already non-zero: the loop is awake anyway. */
    ssize_t n = write(b->efd, &one, sizeof one);
    (void)n;
}

static bool bus_type_valid(const char *type)
{
    if (!type)
        return false;
    size_t n = strlen(type);
    return n > 0 && n < BUS_TYPE_MAX && bus_str_clean(type, n);
}

/* ------------------------------------------------------------------ outbox */

static const cl_db_migration bus_outbox_migrations[] = {
    {1, "CREATE TABLE outbox(id TEXT PRIMARY KEY, peer TEXT, frame TEXT, created_ms INTEGER);"},
};

static int bus_outbox_insert(cl_bus *b, const bus_item *it)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int r = cl_db_prepare(b->outbox,
                          "INSERT OR IGNORE INTO outbox(id, peer, frame, created_ms) "
                          "VALUES(?, ?, ?, ?)", &st);
    if (r < 0)
        return r;
    if ((r = cl_db_bind_text(st, 1, it->id)) < 0 || (r = cl_db_bind_text(st, 2, it->peer)) < 0 ||
        (r = cl_db_bind_text(st, 3, it->frame)) < 0 ||
        (r = cl_db_bind_int64(st, 4, cl_now_ms())) < 0)
        return r;
    return cl_db_step_done(st);
}

static void bus_outbox_delete(cl_bus *b, bus_item *it)
{
    if (!b->outbox || !it->stored)
        return;
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int r = cl_db_prepare(b->outbox, "DELETE FROM outbox WHERE id = ?", &st);
    if (r == 0 && (r = cl_db_bind_text(st, 1, it->id)) == 0)
        r = cl_db_step_done(st);
    if (r < 0)
        /* The row comes back as a duplicate after a restart; dedup absorbs it. */
        cl_debug(BUS_LOG, "outbox: cannot delete %s: %d", it->id, r);
    it->stored = false;
}

/* Put a pending item in the id index and at the tail of the resend list. */
static bool bus_pending_add(cl_bus *b, bus_item *it)
{
    void **node = tsearch(it, &b->pending_index, bus_id_cmp);
    if (!node)
        return false;
    if (*node != it)
        return false; /* same id already pending */
    TAILQ_INSERT_TAIL(&b->pending, it, link);
    return true;
}

static void bus_pending_remove(cl_bus *b, bus_item *it)
{
    TAILQ_REMOVE(&b->pending, it, link);
    tdelete(it, &b->pending_index, bus_id_cmp);
}

/* Make the pending messages for name due now (its route changed: no need to wait for
 * their resend time). They move to the head of the resend list, whose order holds: every
 * item before the first one not yet due is due. */
static void bus_pending_due_now(cl_bus *b, const char *name)
{
    struct bus_list due = TAILQ_HEAD_INITIALIZER(due);
    int64_t now = cl_mono_ms();
    bus_item *it, *next;
    for (it = TAILQ_FIRST(&b->pending); it; it = next) {
        next = TAILQ_NEXT(it, link);
        if (it->next_resend <= now || strcmp(it->peer, name) != 0)
            continue;
        TAILQ_REMOVE(&b->pending, it, link);
        it->next_resend = now;
        TAILQ_INSERT_TAIL(&due, it, link);
    }
    TAILQ_CONCAT(&due, &b->pending, link);
    TAILQ_CONCAT(&b->pending, &due, link);
}

/* Reload the outbox rows as pending messages, due at once. Runs in cl_bus_new(). */
static int bus_outbox_load(cl_bus *b, cl_error *err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int r = cl_db_prepare(b->outbox,
                          "SELECT id, peer, frame FROM outbox ORDER BY created_ms, rowid", &st);
    if (r < 0)
        return cl_error_set(err, CL_E_INTERNAL, "bus outbox: cannot read: %s",
                            cl_db_errmsg(b->outbox));
    int64_t now = cl_mono_ms();
    size_t n = 0;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *frame = (const char *)sqlite3_column_text(st, 2);
        bus_item *it = calloc(1, sizeof *it);
        if (!it)
            return -ENOMEM;
        cl_db_column_text(st, 0, it->id, sizeof it->id);
        cl_db_column_text(st, 1, it->peer, sizeof it->peer);
        it->frame = frame ? strdup(frame) : NULL;
        it->len = it->frame ? strlen(it->frame) : 0;
        it->reliable = true;
        it->stored = true;
        it->next_resend = now;
        /* A row this bus cannot send (foreign role, damaged) would be retried forever. */
        bool ok = it->frame && cl_uuid_valid(it->id) && it->len <= CL_BUS_MAX_FRAME &&
                  ((b->role == CL_BUS_ROUTER) == (it->peer[0] != '\0'));
        if (!ok) {
            cl_debug(BUS_LOG, "outbox: dropping unusable row %s", it->id);
            bus_outbox_delete(b, it);
            bus_item_free(it);
            continue;
        }
        if (!bus_pending_add(b, it)) {
            bus_item_free(it);
            continue;
        }
        n++;
    }
    if (r != SQLITE_DONE)
        return cl_error_set(err, CL_E_INTERNAL, "bus outbox: cannot read: %s",
                            cl_db_errmsg(b->outbox));
    b->nreliable += n;
    cl_debug(BUS_LOG, "outbox: reloaded %zu pending messages", n);
    return 0;
}

/* ------------------------------------------------------------------ routes */

#define BUS_REFUSED_LEVEL(b) (cl_bus_auth_warn_due((b)->auth) ? CL_LOG_WARN : CL_LOG_DEBUG)

static void bus_pending_due_now(cl_bus *b, const char *name);

/* A route is one json string "<key> <routing id>" (key: 40 Z85 characters, which hold no
 * space, or "" without ZAP). Returns the routing id part of the route to name, or NULL,
 * and copies the key into key when it is not NULL. */
static const char *bus_route_get(cl_bus *b, const char *name, char key[CL_BUS_KEY_LEN])
{
    json_object *r = NULL;
    if (!json_object_object_get_ex(b->routes, name, &r) || !r)
        return NULL;
    const char *v = json_object_get_string(r);
    const char *sp = v ? strchr(v, ' ') : NULL;
    if (!sp || (size_t)(sp - v) >= CL_BUS_KEY_LEN)
        return NULL;
    if (key) {
        memcpy(key, v, (size_t)(sp - v));
        key[sp - v] = '\0';
    }
    return sp + 1;
}

/* Forget the route to name; only when it is conn, if conn is not NULL. */
static void bus_route_forget(cl_bus *b, const char *name, const char *conn)
{
    const char *cur = bus_route_get(b, name, NULL);
    if (!cur || (conn && strcmp(cur, conn) != 0))
        return;
    json_object_object_del(b->routes, name);
    cl_debug(BUS_LOG, "no route to '%s' until it speaks again", name);
}

/* The routing id of the connection name last spoke on, or NULL. With ZAP, only while the
 * key it spoke with is still allowed for name: a revoked host gets nothing more, even if
 * it stays silent. The string belongs to routes: use it before changing them. */
static const char *bus_route(cl_bus *b, const char *name)
{
    char key[CL_BUS_KEY_LEN];
    const char *conn = bus_route_get(b, name, key);
    if (conn && b->auth && !cl_bus_auth_allowed(b->auth, key, name)) {
        cl_log_write(BUS_REFUSED_LEVEL(b), BUS_LOG, "nothing more is sent to '%s': key %s "
                     "was revoked", name, key);
        json_object_object_del(b->routes, name);
        return NULL;
    }
    return conn;
}

/* name spoke on connection conn with key ("" without ZAP): route to it from now on, and
 * send what waited for name at once. */
static void bus_route_learn(cl_bus *b, const char *name, const char *conn, const char *key)
{
    const char *cur = bus_route_get(b, name, NULL);
    if (cur && strcmp(cur, conn) == 0)
        return; /* one connection, one key: nothing changed */
    bool known = cur != NULL;
    if (!known && json_object_object_length(b->routes) >= BUS_ROUTES_MAX) {
        /* Forget the oldest name (json-c iterates in insertion order); it is learned
         * again the next time it speaks. */
        char oldest[CL_BUS_NAME_MAX] = "";
        json_object_object_foreach(b->routes, k, v) {
            (void)v;
            cl_strlcpy(oldest, k, sizeof oldest);
            break;
        }
        json_object_object_del(b->routes, oldest);
    }
    char val[CL_BUS_KEY_LEN + 1 + CL_BUS_NAME_MAX];
    snprintf(val, sizeof val, "%s %s", key, conn);
    json_object *jv = json_object_new_string(val);
    if (!jv || json_object_object_add(b->routes, name, jv) < 0) {
        /* Out of memory: no route (the name gets nothing) rather than a stale one. */
        json_object_put(jv);
        json_object_object_del(b->routes, name);
        return;
    }
    cl_debug(BUS_LOG, "'%s' spoke on a %s connection: routing to it", name,
             known ? "new" : "first");
    bus_pending_due_now(b, name);
}

/* ------------------------------------------------------------------ socket I/O */

/* Hand one frame to ZeroMQ without blocking, on the connection conn (ROUTER; ignored on a
 * DEALER). 0 or -errno (EHOSTUNREACH: not connected, EAGAIN: no connection / high-water
 * mark). */
static int bus_zsend_conn(cl_bus *b, const char *conn, const char *frame, size_t len)
{
    if (b->role == CL_BUS_ROUTER &&
        zmq_send(b->sock, conn, strlen(conn), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return -errno;
    if (zmq_send(b->sock, frame, len, ZMQ_DONTWAIT) < 0)
        return -errno;
    return 0;
}

/* Send one frame to peer: on a ROUTER, a name, sent to the connection it last spoke on
 * (-EHOSTUNREACH while there is none: the message waits). */
static int bus_zsend(cl_bus *b, const char *peer, const char *frame, size_t len)
{
    if (b->role != CL_BUS_ROUTER)
        return bus_zsend_conn(b, "", frame, len);
    const char *conn = bus_route(b, peer);
    if (!conn)
        return -EHOSTUNREACH;
    int r = bus_zsend_conn(b, conn, frame, len);
    if (r == -EHOSTUNREACH)
        /* That connection is gone. Should its routing id come back (the same socket
         * reconnecting), it is routed to once it has spoken again. */
        bus_route_forget(b, peer, NULL);
    return r;
}

/* Send (or resend) a message now. Reliable messages go back to the tail of the pending
 * list whatever the outcome; an unreliable one is freed. */
static void bus_transmit(cl_bus *b, bus_item *it, int64_t now)
{
    int r = bus_zsend(b, it->peer, it->frame, it->len);
    if (r == 0) {
        bus_stat_add(b, &b->stats.sent);
        if (it->tries > 0)
            bus_stat_add(b, &b->stats.resent);
    } else {
        cl_debug(BUS_LOG, "send %s to '%s' deferred: %s", it->id, it->peer, zmq_strerror(-r));
    }
    if (!it->reliable) {
        if (r < 0)
            bus_stat_add(b, &b->stats.dropped);
        bus_item_free(it);
        return;
    }
    it->tries++;
    it->next_resend = now + b->resend_ms;
    TAILQ_INSERT_TAIL(&b->pending, it, link);
}

static void bus_remember(cl_bus *b, const char *id);

/* Move what senders queued onto the wire (and reliable messages into the pending set and
 * the outbox, in one transaction per batch). */
static void bus_drain_queue(cl_bus *b)
{
    struct bus_list batch = TAILQ_HEAD_INITIALIZER(batch);

    pthread_mutex_lock(&b->lock);
    TAILQ_CONCAT(&batch, &b->queue, link);
    b->nqueued = 0;
    pthread_mutex_unlock(&b->lock);
    if (TAILQ_EMPTY(&batch))
        return;

    bool in_tx = b->outbox && cl_db_begin(b->outbox) == 0;
    int64_t now = cl_mono_ms();
    bus_item *it;
    while ((it = TAILQ_FIRST(&batch))) {
        TAILQ_REMOVE(&batch, it, link);
        if (it->ack) {
            /* Remembered first: a copy arriving from now on is acked, not handled. */
            bus_remember(b, it->id);
            int r = bus_zsend(b, it->peer, it->frame, it->len);
            if (r < 0)
                cl_debug(BUS_LOG, "ack %s to '%s' failed: %s", it->id, it->peer,
                         zmq_strerror(-r));
            bus_item_free(it);
            continue;
        }
        if (!it->reliable) {
            bus_transmit(b, it, now);
            continue;
        }
        if (tsearch(it, &b->pending_index, bus_id_cmp) == NULL) {
            /* Out of memory for the index: give the message up rather than lose track. */
            cl_warn(BUS_LOG, "dropping %s: out of memory", it->id);
            bus_reliable_done(b, &b->stats.dropped);
            bus_item_free(it);
            continue;
        }
        if (b->outbox) {
            int r = bus_outbox_insert(b, it);
            if (r < 0)
                cl_warn(BUS_LOG, "outbox: cannot store %s (%d): it will not survive a restart",
                        it->id, r);
            else
                it->stored = true;
        }
        bus_transmit(b, it, now);
    }
    if (in_tx && cl_db_commit(b->outbox) < 0) {
        cl_warn(BUS_LOG, "outbox: commit failed: %s", cl_db_errmsg(b->outbox));
        cl_db_rollback(b->outbox);
    }
}

/* Resend the pending messages that are due; give up those past max_tries. */
static void bus_resend_due(cl_bus *b, int64_t now)
{
    bus_item *it;
    while ((it = TAILQ_FIRST(&b->pending)) && it->next_resend <= now) {
        TAILQ_REMOVE(&b->pending, it, link);
        if (b->max_tries > 0 && it->tries >= b->max_tries) {
            cl_warn(BUS_LOG, "giving up message %s to '%s' after %d tries", it->id,
                    it->peer[0] ? it->peer : "(dealer)", it->tries);
            tdelete(it, &b->pending_index, bus_id_cmp);
            bus_outbox_delete(b, it);
            bus_reliable_done(b, &b->stats.dropped);
            bus_item_free(it);
            continue;
        }
        bus_transmit(b, it, now);
    }
}

/* Acknowledge msg back to where it came from (best effort: a lost ack means a resend,
 * which is acknowledged again as a duplicate). */
static void bus_send_ack(cl_bus *b, const cl_bus_msg *msg)
{
    cl_bus_msg ack;
    memset(&ack, 0, sizeof ack);
    ack.v = CL_BUS_VERSION;
    memcpy(ack.id, msg->id, sizeof ack.id);
    cl_strlcpy(ack.type, BUS_ACK_TYPE, sizeof ack.type);
    ack.ts = cl_now_ms();
    cl_strlcpy(ack.from, b->name, sizeof ack.from);
    cl_strlcpy(ack.req, msg->req, sizeof ack.req);
    _cleanup_free_ char *frame = NULL;
    if (cl_bus_encode(&ack, &frame) < 0)
        return;
    /* Back on the connection it came on: it was accepted there. */
    int r = bus_zsend_conn(b, msg->conn, frame, strlen(frame));
    if (r < 0)
        cl_debug(BUS_LOG, "ack %s to '%s' failed: %s", msg->id, msg->peer, zmq_strerror(-r));
}

static void bus_handle_ack(cl_bus *b, const cl_bus_msg *msg)
{
    if (b->role == CL_BUS_DEALER && strcmp(msg->id, b->hello_id) == 0) {
        b->hello_next = cl_mono_ms() + BUS_HELLO_REFRESH_MS;
        return;
    }
    void **node = tfind(msg->id, &b->pending_index, bus_id_cmp);
    if (!node) {
        cl_debug(BUS_LOG, "ack %s: nothing pending (late duplicate ack)", msg->id);
        return;
    }
    bus_item *it = *node;
    /* On a ROUTER only the peer it was sent to may acknowledge it. */
    if (b->role == CL_BUS_ROUTER && strcmp(it->peer, msg->peer) != 0) {
        cl_debug(BUS_LOG, "ack %s from '%s' but sent to '%s': ignored", msg->id, msg->peer,
                 it->peer);
        return;
    }
    bus_pending_remove(b, it);
    bus_outbox_delete(b, it);
    bus_reliable_done(b, &b->stats.acked);
    bus_item_free(it);
}

static bool bus_seen(cl_bus *b, const char *id)
{
    return json_object_object_get_ex(b->seen, id, NULL);
}

/* Remember id as handled; the oldest remembered id is forgotten once dedup_cap is hit. */
static void bus_remember(cl_bus *b, const char *id)
{
    if (b->seen_count == b->dedup_cap) {
        json_object_object_del(b->seen, b->seen_ring[b->seen_head]);
        b->seen_head = (b->seen_head + 1) % b->dedup_cap;
        b->seen_count--;
    }
    size_t slot = (b->seen_head + b->seen_count) % b->dedup_cap;
    cl_strlcpy(b->seen_ring[slot], id, CL_UUID_LEN);
    /* json-c copies the key; the value NULL is allowed and is all a set needs. */
    if (json_object_object_add(b->seen, id, NULL) == 0)
        b->seen_count++;
}

static void bus_handle_msg(cl_bus *b, cl_bus_msg *msg)
{
    if (strcmp(msg->type, BUS_ACK_TYPE) == 0) {
        bus_handle_ack(b, msg);
        return;
    }
    if (bus_seen(b, msg->id)) {
        bus_stat_add(b, &b->stats.duplicates);
        bus_send_ack(b, msg);
        return;
    }
    cl_log_set_request_id(msg->req[0] ? msg->req : NULL);
    if (b->on_msg)
        b->on_msg(b, msg, b->ud);
    cl_log_set_request_id(NULL);
    if (b->manual_ack)
        return; /* cl_bus_ack() remembers and acks once the receiver made it durable */
    /* With an outbox, what the handler queued is stored before the ack lets the sender
     * forget the message that caused it: a kill in between costs a resend (the handler
     * runs again), never a lost command (tests/crash/test_migrate_crash.py). */
    if (b->outbox)
        bus_drain_queue(b);
    bus_remember(b, msg->id);
    bus_send_ack(b, msg);
}

static void bus_zmsg_closep(zmq_msg_t *m)
{
    zmq_msg_close(m);
}

/* With a ZAP handler: the key a message came with (ZAP metadata) must still be allowed
 * and map to the name in the routing id the peer chose, so a host cannot pose as another
 * one or keep talking after its key was revoked. Fills msg->user_id and learns the route.
 * Refusals are logged at warning level at most every CL_BUS_AUTH_WARN_MS (a refused peer
 * resends every resend_ms). */
static bool bus_authorize(cl_bus *b, zmq_msg_t *payload, cl_bus_msg *msg)
{
    const char *user = zmq_msg_gets(payload, "User-Id");
    const char *key = zmq_msg_gets(payload, CL_BUS_AUTH_KEY_PROP);
    if (!user || !key || strcmp(user, msg->peer) != 0) {
        cl_log_write(BUS_REFUSED_LEVEL(b), BUS_LOG,
                     "refused %s '%s' from peer '%s': its key belongs to '%s'", msg->id,
                     msg->type, msg->peer, user ? user : "(none)");
        bus_route_forget(b, msg->peer, msg->conn);
        return false;
    }
    if (!cl_bus_auth_allowed(b->auth, key, user)) {
        cl_log_write(BUS_REFUSED_LEVEL(b), BUS_LOG, "refused %s '%s' from '%s': key %s was "
                     "revoked", msg->id, msg->type, user, key);
        cl_bus_auth_count_revoked(b->auth);
        bus_route_forget(b, msg->peer, msg->conn);
        return false;
    }
    cl_strlcpy(msg->user_id, user, sizeof msg->user_id);
    bus_route_learn(b, msg->peer, msg->conn, key);
    return true;
}

/* Receive one whole ZeroMQ message and handle it. false when nothing was waiting. */
static bool bus_recv_one(cl_bus *b)
{
    _cleanup_(bus_zmsg_closep) zmq_msg_t id;
    _cleanup_(bus_zmsg_closep) zmq_msg_t payload;
    zmq_msg_init(&id);
    zmq_msg_init(&payload);
    size_t want = b->role == CL_BUS_ROUTER ? 2 : 1;
    size_t nparts = 0;
    bool more = true;

    while (more) {
        zmq_msg_t *dst = nparts + 1 < want ? &id : &payload;
        if (nparts >= want) {
            /* Extra frames: read them to keep the stream aligned, then drop all. */
            zmq_msg_close(&payload);
            zmq_msg_init(&payload);
        }
        if (zmq_msg_recv(dst, b->sock, nparts == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            if (nparts == 0)
                return false;
            break;
        }
        nparts++;
        more = zmq_msg_more(dst);
    }

    bool ok = nparts == want;
    char conn[CL_BUS_NAME_MAX] = "", peer[CL_BUS_NAME_MAX] = "";
    if (ok && want == 2) {
        size_t idlen = zmq_msg_size(&id);
        const char *idp = zmq_msg_data(&id);
        /* Peers are addressed by name: an anonymous (binary) routing id cannot be. The
         * name is the routing id up to '#' (all of it for a peer without a nonce). */
        ok = idlen > 0 && idlen < CL_BUS_NAME_MAX && memchr(idp, '\0', idlen) == NULL;
        if (ok) {
            memcpy(conn, idp, idlen);
            conn[idlen] = '\0';
            size_t nlen = strcspn(conn, "#");
            memcpy(peer, conn, nlen);
            peer[nlen] = '\0';
            ok = nlen > 0;
        }
    }
    cl_error err = {0};
    cl_bus_msg msg;
    memset(&msg, 0, sizeof msg);
    if (ok)
        ok = cl_bus_decode(zmq_msg_data(&payload), zmq_msg_size(&payload), &msg, &err) == 0;
    if (!ok) {
        cl_debug(BUS_LOG, "dropping a bad message (%zu frames): %s", nparts, err.message);
        bus_stat_add(b, &b->stats.bad_frames);
        return true;
    }
    memcpy(msg.peer, peer, sizeof msg.peer);
    memcpy(msg.conn, conn, sizeof msg.conn);
    if (b->role == CL_BUS_ROUTER) {
        bool accepted = true;
        if (b->auth)
            accepted = bus_authorize(b, &payload, &msg);
        else
            bus_route_learn(b, msg.peer, msg.conn, ""); /* no keys: the name is the proof */
        if (!accepted) {
            cl_bus_msg_clear(&msg);
            bus_stat_add(b, &b->stats.bad_frames);
            return true;
        }
        if (strcmp(msg.type, BUS_HELLO_TYPE) == 0) {
            /* Bus-internal: the route is learned, the ack stops the resends. */
            bus_send_ack(b, &msg);
            cl_bus_msg_clear(&msg);
            return true;
        }
    } else if (strcmp(msg.type, BUS_ACK_TYPE) == 0 && strcmp(msg.id, b->hello_id) == 0) {
        bus_handle_ack(b, &msg); /* internal: not counted */
        cl_bus_msg_clear(&msg);
        return true;
    }
    bus_stat_add(b, &b->stats.received);
    bus_handle_msg(b, &msg);
    cl_bus_msg_clear(&msg);
    return true;
}

/* DEALER: say hello when it is due (see BUS_HELLO_*). */
static void bus_hello_due(cl_bus *b, int64_t now)
{
    if (b->role != CL_BUS_DEALER || now < b->hello_next)
        return;
    int r = bus_zsend_conn(b, "", b->hello_frame, strlen(b->hello_frame));
    int retry = b->resend_ms < BUS_HELLO_RETRY_MS ? b->resend_ms : BUS_HELLO_RETRY_MS;
    /* Sent: wait for the ack (bus_handle_ack moves the next one far out). */
    b->hello_next = now + (r == 0 ? b->resend_ms : retry);
}

/* ------------------------------------------------------------------ the loop */

static int bus_poll_timeout(cl_bus *b, int64_t now)
{
    int64_t deadline = INT64_MAX;
    if (b->tick_ms > 0)
        deadline = b->next_tick;
    bus_item *head = TAILQ_FIRST(&b->pending);
    if (head && head->next_resend < deadline)
        deadline = head->next_resend;
    if (b->role == CL_BUS_DEALER && b->hello_next < deadline)
        deadline = b->hello_next;
    if (deadline == INT64_MAX)
        return -1;
    int64_t t = deadline - now;
    if (t < 0)
        t = 0;
    if (t > 60000)
        t = 60000;
    return (int)t;
}

/* Read the socket monitor's events (two frames each: event id and value, endpoint).
 * True when a handshake succeeded: a (new) connection to the ROUTER is up. */
static bool bus_monitor_drain(cl_bus *b)
{
    bool up = false;
    for (int i = 0; i < BUS_RECV_BATCH; i++) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, b->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            break;
        }
        uint16_t ev = 0;
        if (zmq_msg_size(&m) >= sizeof ev && zmq_msg_more(&m))
            memcpy(&ev, zmq_msg_data(&m), sizeof ev);
        bool more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        while (more) { /* the endpoint frame */
            zmq_msg_init(&m);
            more = zmq_msg_recv(&m, b->mon, 0) >= 0 && zmq_msg_more(&m);
            zmq_msg_close(&m);
        }
        if (ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED)
            up = true;
    }
    return up;
}

static void *bus_thread_main(void *arg)
{
    cl_bus *b = arg;
    zmq_pollitem_t items[3] = {
        {.socket = b->sock, .events = ZMQ_POLLIN},
        {.socket = NULL, .fd = b->efd, .events = ZMQ_POLLIN},
        {.socket = b->mon, .events = ZMQ_POLLIN},
    };
    int nitems = b->mon ? 3 : 2;

    for (;;) {
        int64_t now = cl_mono_ms();
        if (b->tick_ms > 0 && now >= b->next_tick) {
            if (b->on_tick)
                b->on_tick(b, b->ud);
            now = cl_mono_ms();
            /* After a long handler, skip missed ticks instead of bursting them. */
            b->next_tick += b->tick_ms;
            if (b->next_tick <= now)
                b->next_tick = now + b->tick_ms;
        }
        bus_resend_due(b, now);
        bus_hello_due(b, now);

        int n = zmq_poll(items, nitems, bus_poll_timeout(b, cl_mono_ms()));
        if (n < 0 && errno != EINTR) {
            cl_debug(BUS_LOG, "zmq_poll: %s", zmq_strerror(errno));
            if (errno == ETERM)
                break;
        }
        if (n > 0 && nitems == 3 && (items[2].revents & ZMQ_POLLIN) && bus_monitor_drain(b)) {
            /* A connection is (again) up: say hello now. */
            b->hello_next = cl_mono_ms();
            bus_hello_due(b, b->hello_next);
        }
        if (n > 0 && (items[1].revents & ZMQ_POLLIN)) {
            uint64_t v;
            ssize_t rd = read(b->efd, &v, sizeof v);
            (void)rd;
        }
        bus_drain_queue(b);
        if (n > 0 && (items[0].revents & ZMQ_POLLIN))
            for (int i = 0; i < BUS_RECV_BATCH && bus_recv_one(b); i++)
                ;

        pthread_mutex_lock(&b->lock);
        bool stop = b->stop;
        pthread_mutex_unlock(&b->lock);
        if (stop) {
            /* Last call: whatever was queued reaches the outbox before we go. */
            bus_drain_queue(b);
            break;
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------ lifecycle */

static void bus_destroy(cl_bus *b)
{
    bus_item *it;
    if (b->sock)
        zmq_close(b->sock);
    if (b->mon)
        zmq_close(b->mon);
    /* zmq_ctx_term() waits for every socket of the context, the ZAP one included. */
    cl_bus_auth_stop(b->auth);
    if (b->zctx)
        zmq_ctx_term(b->zctx);
    while ((it = TAILQ_FIRST(&b->queue))) {
        TAILQ_REMOVE(&b->queue, it, link);
        bus_item_free(it);
    }
    /* Pending items are in both the list and the index: free them once, via the list. */
    while ((it = TAILQ_FIRST(&b->pending))) {
        bus_pending_remove(b, it);
        bus_item_free(it);
    }
    tdestroy(b->pending_index, bus_free_nothing);
    json_object_put(b->seen);
    json_object_put(b->routes);
    free(b->hello_frame);
    free(b->seen_ring);
    cl_db_close(b->outbox);
    if (b->efd >= 0)
        close(b->efd);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

static int bus_setopt(void *sock, int opt, const void *val, size_t len)
{
    return zmq_setsockopt(sock, opt, val, len) < 0 ? -errno : 0;
}

static int bus_setopt_int(void *sock, int opt, int v)
{
    return bus_setopt(sock, opt, &v, sizeof v);
}

static int bus_setopt_str(void *sock, int opt, const char *s)
{
    /* CURVE keys in Z85 are passed with their terminating NUL (zmq_setsockopt(3)). */
    return bus_setopt(sock, opt, s, strlen(s) + 1);
}

static bool bus_nonempty(const char *s)
{
    return s && s[0];
}

/* CURVE: a ROUTER with a secret key is a CURVE server; a DEALER with a server key is a
 * client authenticating the ROUTER. Which client keys a server accepts is the job of the
 * ZAP handler (zmq RFC 27, bus_auth.c) started here when curve_allowed_dir is set, before
 * the socket binds; ZAP_ENFORCE_DOMAIN makes a missing handler refuse, not admit. */
static int bus_setup_curve(cl_bus *b, const cl_bus_opts *o, cl_error *err)
{
    int r = 0;
    if (b->role == CL_BUS_ROUTER) {
        if (!bus_nonempty(o->curve_secret_key)) {
            if (bus_nonempty(o->curve_allowed_dir))
                return cl_error_set(err, CL_E_BAD_REQUEST, "bus: allowed keys without a "
                                    "CURVE secret key would authenticate nobody");
            return 0;
        }
        if (bus_nonempty(o->curve_allowed_dir)) {
            if ((r = cl_bus_auth_start(b->zctx, o->curve_allowed_dir, &b->auth, err)) < 0)
                return r;
            if ((r = bus_setopt(b->sock, ZMQ_ZAP_DOMAIN, CL_BUS_ZAP_DOMAIN,
                                 strlen(CL_BUS_ZAP_DOMAIN))) < 0)
                goto fail;
            /* No ROUTER_HANDOVER with client authentication: a second connection
             * presenting a routing id in use is refused rather than taking it over.
             * Routing ids carry a secret per-socket nonce, so only the socket's own
             * reconnect presents one again (after a network cut: it gets in once the
             * heartbeat timeout, BUS_HEARTBEAT_*, has freed the old connection); a
             * restarted agent has a new routing id and is served at once. */
            if ((r = bus_setopt_int(b->sock, ZMQ_ROUTER_HANDOVER, 0)) < 0)
                goto fail;
            /* A draft option: a stable libzmq build refuses it (EINVAL). Our handler is
             * bound before the socket, so the door is closed either way. */
            if (bus_setopt_int(b->sock, BUS_ZAP_ENFORCE_DOMAIN, 1) < 0)
                cl_debug(BUS_LOG, "ZMQ_ZAP_ENFORCE_DOMAIN not supported by this libzmq");
        }
        if ((r = bus_setopt_int(b->sock, ZMQ_CURVE_SERVER, 1)) < 0 ||
            (r = bus_setopt_str(b->sock, ZMQ_CURVE_SECRETKEY, o->curve_secret_key)) < 0 ||
            (bus_nonempty(o->curve_public_key) &&
             (r = bus_setopt_str(b->sock, ZMQ_CURVE_PUBLICKEY, o->curve_public_key)) < 0))
            goto fail;
        return 0;
    }
    if (!bus_nonempty(o->curve_server_key) && !bus_nonempty(o->curve_secret_key))
        return 0;
    if (!bus_nonempty(o->curve_server_key) || !bus_nonempty(o->curve_public_key) ||
        !bus_nonempty(o->curve_secret_key))
        return cl_error_set(err, CL_E_BAD_REQUEST, "bus: a CURVE client needs the server "
                            "key and its own public and secret keys");
    if ((r = bus_setopt_str(b->sock, ZMQ_CURVE_SERVERKEY, o->curve_server_key)) < 0 ||
        (r = bus_setopt_str(b->sock, ZMQ_CURVE_PUBLICKEY, o->curve_public_key)) < 0 ||
        (r = bus_setopt_str(b->sock, ZMQ_CURVE_SECRETKEY, o->curve_secret_key)) < 0)
        goto fail;
    return 0;
fail:
    cl_error_set(err, CL_E_BAD_REQUEST, "bus: bad CURVE key: %s", zmq_strerror(-r));
    return r;
}

static int bus_setup_socket(cl_bus *b, const cl_bus_opts *o, cl_error *err)
{
    int r;
    b->zctx = zmq_ctx_new();
    if (b->zctx)
        b->sock = zmq_socket(b->zctx, b->role == CL_BUS_ROUTER ? ZMQ_ROUTER : ZMQ_DEALER);
    if (!b->sock) {
        cl_error_set(err, CL_E_INTERNAL, "bus: cannot create a socket: %s",
                     zmq_strerror(errno));
        return -ENOMEM;
    }
    /* LINGER 0: cl_bus_free() must not hang on an absent peer; what matters is pending
     * (and in the outbox). MAXMSGSIZE: ZeroMQ drops the connection of a peer sending a
     * larger frame before buffering it. */
    int64_t maxmsg = CL_BUS_MAX_FRAME;
    if ((r = bus_setopt_int(b->sock, ZMQ_LINGER, 0)) < 0 ||
        (r = bus_setopt(b->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg)) < 0 ||
        (r = bus_setopt_int(b->sock, ZMQ_HEARTBEAT_IVL, BUS_HEARTBEAT_IVL_MS)) < 0 ||
        (r = bus_setopt_int(b->sock, ZMQ_HEARTBEAT_TIMEOUT, BUS_HEARTBEAT_TIMEOUT_MS)) < 0)
        goto fail;
    if (b->role == CL_BUS_ROUTER) {
        if ((r = bus_setopt_int(b->sock, ZMQ_ROUTER_MANDATORY, 1)) < 0 ||
            (r = bus_setopt_int(b->sock, ZMQ_ROUTER_HANDOVER, 1)) < 0)
            goto fail;
    } else {
        if ((r = bus_setopt(b->sock, ZMQ_ROUTING_ID, b->routing_id,
                            strlen(b->routing_id))) < 0 ||
            (r = bus_setopt_int(b->sock, ZMQ_IMMEDIATE, 1)) < 0)
            goto fail;
        /* Handshake events, so the hello goes out as soon as a connection is up (the
         * bus has its own context: the inproc name is private to it). Without them the
         * periodic hello still works, later. */
        if (zmq_socket_monitor(b->sock, BUS_MONITOR_EP, ZMQ_EVENT_HANDSHAKE_SUCCEEDED) == 0) {
            b->mon = zmq_socket(b->zctx, ZMQ_PAIR);
            int zero = 0;
            if (b->mon && (zmq_setsockopt(b->mon, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
                           zmq_connect(b->mon, BUS_MONITOR_EP) < 0)) {
                zmq_close(b->mon);
                b->mon = NULL;
            }
        }
        if (!b->mon)
            cl_debug(BUS_LOG, "no socket monitor: hello only on its timer");
    }
    if ((r = bus_setup_curve(b, o, err)) < 0)
        return r;
    if (b->role == CL_BUS_ROUTER) {
        if (zmq_bind(b->sock, o->endpoint) < 0) {
            r = -errno;
            cl_error_set(err, r == -EADDRINUSE ? CL_E_CONFLICT : CL_E_BAD_REQUEST,
                         "bus: cannot bind '%s': %s", o->endpoint, zmq_strerror(-r));
            return r;
        }
    } else if (zmq_connect(b->sock, o->endpoint) < 0) {
        r = -errno;
        cl_error_set(err, CL_E_BAD_REQUEST, "bus: cannot connect to '%s': %s", o->endpoint,
                     zmq_strerror(-r));
        return r;
    }
    return 0;
fail:
    cl_error_set(err, CL_E_INTERNAL, "bus: socket option: %s", zmq_strerror(-r));
    return r;
}

/* DEALER: a routing id of its own for this socket ("<name>#<nonce>") and the hello
 * that teaches it to the ROUTER (see Routes at the top). */
static int bus_dealer_identity(cl_bus *b, cl_error *err)
{
    unsigned char nonce[BUS_NONCE_BYTES];
    if (getrandom(nonce, sizeof nonce, 0) != (ssize_t)sizeof nonce) {
        int r = errno ? -errno : -EIO;
        cl_error_set(err, CL_E_INTERNAL, "bus: no random bytes: %s", strerror(-r));
        return r;
    }
    char hex[2 * BUS_NONCE_BYTES + 1];
    for (size_t i = 0; i < sizeof nonce; i++)
        snprintf(hex + 2 * i, 3, "%02x", nonce[i]);
    explicit_bzero(nonce, sizeof nonce);
    /* cl_bus_new() checked the name against CL_BUS_DEALER_NAME_MAX: it fits. */
    int n = snprintf(b->routing_id, sizeof b->routing_id, "%s#%s", b->name, hex);
    explicit_bzero(hex, sizeof hex);
    if (n < 0 || (size_t)n >= sizeof b->routing_id)
        return cl_error_set(err, CL_E_BAD_REQUEST, "bus: name too long");

    cl_bus_msg m;
    memset(&m, 0, sizeof m);
    m.v = CL_BUS_VERSION;
    cl_uuid_new(m.id);
    cl_strlcpy(m.type, BUS_HELLO_TYPE, sizeof m.type);
    cl_strlcpy(m.from, b->name, sizeof m.from);
    memcpy(b->hello_id, m.id, sizeof b->hello_id);
    int r = cl_bus_encode(&m, &b->hello_frame);
    if (r < 0)
        cl_error_set(err, CL_E_INTERNAL, "bus: out of memory");
    return r;
}

/* Create the bus described by opts (see bus.h): validate, set up the socket, reload the
 * outbox, start the bus thread. Returns 0 and *out (free with cl_bus_free), or a
 * negative errno with err filled (-EINVAL bad options, -EADDRINUSE, -EIO outbox ...). */
int cl_bus_new(const cl_bus_opts *opts, cl_bus **out, cl_error *err)
{
    if (!opts || !out || opts->role < 0 || opts->role >= CL_BUS_ROLE_MAX ||
        !bus_nonempty(opts->endpoint) || !bus_nonempty(opts->name) ||
        strlen(opts->name) > (opts->role == CL_BUS_DEALER ? CL_BUS_DEALER_NAME_MAX
                                                          : CL_BUS_NAME_MAX - 1) ||
        strchr(opts->name, '#') || opts->tick_ms < 0 || opts->resend_ms < 0 ||
        opts->max_tries < 0)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "bus: invalid options (role, endpoint, name 1..%d bytes without "
                            "'#', non-negative intervals)", CL_BUS_DEALER_NAME_MAX);

    cl_bus *b = calloc(1, sizeof *b);
    if (!b) {
        cl_error_set(err, CL_E_INTERNAL, "bus: out of memory");
        return -ENOMEM;
    }
    b->efd = -1;
    pthread_mutex_init(&b->lock, NULL);
    TAILQ_INIT(&b->queue);
    TAILQ_INIT(&b->pending);
    b->role = opts->role;
    cl_strlcpy(b->name, opts->name, sizeof b->name);
    b->resend_ms = opts->resend_ms > 0 ? opts->resend_ms : BUS_DEFAULT_RESEND_MS;
    b->max_tries = opts->max_tries;
    b->tick_ms = opts->tick_ms;
    b->dedup_cap = opts->dedup_cap > 0 ? opts->dedup_cap : BUS_DEFAULT_DEDUP_CAP;
    b->pending_cap = opts->pending_cap > 0 ? opts->pending_cap : BUS_DEFAULT_PENDING_CAP;
    b->manual_ack = opts->manual_ack;
    b->on_msg = opts->on_msg;
    b->on_tick = opts->on_tick;
    b->ud = opts->ud;

    int r;
    b->seen = json_object_new_object();
    b->seen_ring = calloc(b->dedup_cap, sizeof *b->seen_ring);
    if (!b->seen || !b->seen_ring) {
        cl_error_set(err, CL_E_INTERNAL, "bus: out of memory");
        r = -ENOMEM;
        goto fail;
    }
    b->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (b->efd < 0) {
        r = -errno;
        cl_error_set(err, CL_E_INTERNAL, "bus: eventfd: %s", strerror(-r));
        goto fail;
    }
    if (b->role == CL_BUS_ROUTER) {
        b->routes = json_object_new_object();
        if (!b->routes) {
            cl_error_set(err, CL_E_INTERNAL, "bus: out of memory");
            r = -ENOMEM;
            goto fail;
        }
    } else if ((r = bus_dealer_identity(b, err)) < 0) {
        goto fail;
    }
    if (bus_nonempty(opts->outbox_path)) {
        r = cl_db_open(opts->outbox_path, bus_outbox_migrations,
                       CL_ARRAY_SIZE(bus_outbox_migrations), BUS_OUTBOX_BUSY_MS, &b->outbox,
                       err);
        if (r < 0)
            goto fail;
        if ((r = bus_outbox_load(b, err)) < 0)
            goto fail;
    }
    if ((r = bus_setup_socket(b, opts, err)) < 0)
        goto fail;
    b->next_tick = cl_mono_ms() + b->tick_ms;
    b->hello_next = cl_mono_ms();
    r = -pthread_create(&b->thread, NULL, bus_thread_main, b);
    if (r < 0) {
        cl_error_set(err, CL_E_INTERNAL, "bus: cannot start thread: %s", strerror(-r));
        goto fail;
    }
    b->thread_started = true;
    *out = b;
    return 0;
fail:
    bus_destroy(b);
    return r;
}

/* Stop the bus thread (what was queued is sent once and kept in the outbox if there is
 * one), close the socket and free everything. Accepts NULL. Must not be called from the
 * bus thread (it joins it). */
void cl_bus_free(cl_bus *bus)
{
    if (!bus)
        return;
    if (bus->thread_started) {
        /* Joining ourselves would deadlock: a handler must not free its own bus. */
        assert(!pthread_equal(pthread_self(), bus->thread));
        pthread_mutex_lock(&bus->lock);
        bus->stop = true;
        pthread_mutex_unlock(&bus->lock);
        bus_wake(bus);
        pthread_join(bus->thread, NULL);
    }
    bus_destroy(bus);
}

/* Queue a message for the bus thread (see bus.h). body is taken over on every path.
 * Returns 0, -EINVAL (bad type, peer, or req longer than 79 bytes; "ack" is reserved),
 * -EMSGSIZE (encoded envelope over CL_BUS_MAX_FRAME), -ENOBUFS (pending_cap reached),
 * -ENOMEM. Thread-safe, callable from on_msg/on_tick. */
int cl_bus_send(cl_bus *bus, const char *peer, const char *type, const char *req,
                json_object *body, bool reliable, char out_id[CL_UUID_LEN])
{
    _cleanup_json_ json_object *owned = body;
    if (!bus || !bus_type_valid(type) || strcmp(type, BUS_ACK_TYPE) == 0 ||
        strcmp(type, BUS_HELLO_TYPE) == 0)
        return -EINVAL;
    if (bus->role == CL_BUS_ROUTER) {
        /* A name, not a routing id: which connection gets it is the bus's decision. */
        if (!bus_nonempty(peer) || strlen(peer) >= CL_BUS_NAME_MAX || strchr(peer, '#'))
            return -EINVAL;
    } else if (bus_nonempty(peer)) {
        return -EINVAL; /* a DEALER has one destination: the ROUTER it connected to */
    }
    if (!req)
        req = cl_log_request_id();
    if (!req)
        req = "";
    if (strlen(req) >= BUS_REQ_MAX)
        return -EINVAL;
    if (body && !json_object_is_type(body, json_type_object))
        return -EINVAL;

    cl_bus_msg m;
    memset(&m, 0, sizeof m);
    m.v = CL_BUS_VERSION;
    cl_uuid_new(m.id);
    cl_strlcpy(m.type, type, sizeof m.type);
    m.ts = cl_now_ms();
    cl_strlcpy(m.from, bus->name, sizeof m.from);
    cl_strlcpy(m.req, req, sizeof m.req);
    m.body = owned;

    _cleanup_free_ char *frame = NULL;
    int r = cl_bus_encode(&m, &frame);
    if (r < 0)
        return r;
    size_t len = strlen(frame);
    if (len > CL_BUS_MAX_FRAME)
        return -EMSGSIZE;

    bus_item *it = calloc(1, sizeof *it);
    if (!it)
        return -ENOMEM;
    memcpy(it->id, m.id, sizeof it->id);
    if (bus->role == CL_BUS_ROUTER)
        cl_strlcpy(it->peer, peer, sizeof it->peer);
    it->frame = TAKE_PTR(frame);
    it->len = len;
    it->reliable = reliable;

    pthread_mutex_lock(&bus->lock);
    /* Unreliable messages are bounded too: a stalled loop must not grow memory. */
    if (bus->nqueued >= bus->pending_cap || (reliable && bus->nreliable >= bus->pending_cap)) {
        pthread_mutex_unlock(&bus->lock);
        bus_item_free(it);
        return -ENOBUFS;
    }
    TAILQ_INSERT_TAIL(&bus->queue, it, link);
    bus->nqueued++;
    if (reliable)
        bus->nreliable++;
    pthread_mutex_unlock(&bus->lock);
    bus_wake(bus);
    if (out_id)
        memcpy(out_id, m.id, CL_UUID_LEN);
    return 0;
}

/* Queue the ack of a message handled in manual_ack mode (see bus.h). Thread-safe. */
int cl_bus_ack(cl_bus *bus, const char *peer, const char *id)
{
    if (!bus || !bus->manual_ack || !id || !cl_uuid_valid(id))
        return -EINVAL;
    if (bus->role == CL_BUS_ROUTER) {
        if (!bus_nonempty(peer) || strlen(peer) >= CL_BUS_NAME_MAX || strchr(peer, '#'))
            return -EINVAL;
    } else if (bus_nonempty(peer)) {
        return -EINVAL;
    }

    cl_bus_msg m;
    memset(&m, 0, sizeof m);
    m.v = CL_BUS_VERSION;
    cl_strlcpy(m.id, id, sizeof m.id);
    cl_strlcpy(m.type, BUS_ACK_TYPE, sizeof m.type);
    m.ts = cl_now_ms();
    cl_strlcpy(m.from, bus->name, sizeof m.from);
    _cleanup_free_ char *frame = NULL;
    int r = cl_bus_encode(&m, &frame);
    if (r < 0)
        return r;

    bus_item *it = calloc(1, sizeof *it);
    if (!it)
        return -ENOMEM;
    memcpy(it->id, m.id, sizeof it->id);
    if (bus->role == CL_BUS_ROUTER)
        cl_strlcpy(it->peer, peer, sizeof it->peer);
    it->len = strlen(frame);
    it->frame = TAKE_PTR(frame);
    it->ack = true;

    pthread_mutex_lock(&bus->lock);
    if (bus->nqueued >= bus->pending_cap) {
        pthread_mutex_unlock(&bus->lock);
        bus_item_free(it);
        return -ENOBUFS;
    }
    TAILQ_INSERT_TAIL(&bus->queue, it, link);
    bus->nqueued++;
    pthread_mutex_unlock(&bus->lock);
    bus_wake(bus);
    return 0;
}

/* Reliable messages queued or waiting for their ack. Thread-safe. */
size_t cl_bus_pending(cl_bus *bus)
{
    if (!bus)
        return 0;
    pthread_mutex_lock(&bus->lock);
    size_t n = bus->nreliable;
    pthread_mutex_unlock(&bus->lock);
    return n;
}

/* Copy the counters into *out (one consistent snapshot). Thread-safe. */
void cl_bus_get_stats(cl_bus *bus, cl_bus_stats *out)
{
    if (!out)
        return;
    if (!bus) {
        memset(out, 0, sizeof *out);
        return;
    }
    pthread_mutex_lock(&bus->lock);
    *out = bus->stats;
    pthread_mutex_unlock(&bus->lock);
}
