/*
 * test_bus.c - the message bus over real ZeroMQ sockets on 127.0.0.1.
 *
 * Covers the envelope codec, reliable delivery both ways with acks, resends to a peer
 * that shows up late, deduplication of a message delivered twice (sent raw with a plain
 * zmq socket so the bus under test cannot cheat), the SQLite outbox surviving a restart
 * of the sender, concurrent senders, caps and bad frames, and routing by name over
 * per-socket routing ids (a restarted peer beside its old connection is served at once).
 * Ports are picked free by binding port 0; every wait polls its condition with a deadline.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "bus.h"
#include "json.h"
#include "log.h"

#define WAIT_MS 5000

static void nap(void)
{
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

/* Poll expr every 10 ms until it holds or WAIT_MS passed; yields its final value. */
#define WAIT_UNTIL(expr)                                                                   \
    ({                                                                                     \
        int64_t _deadline = cl_mono_ms() + WAIT_MS;                                        \
        bool _ok;                                                                          \
        while (!(_ok = (expr)) && cl_mono_ms() < _deadline)                                \
            nap();                                                                         \
        _ok;                                                                               \
    })

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void make_endpoint(char *buf, size_t len)
{
    snprintf(buf, len, "tcp://127.0.0.1:%d", free_port());
}

/* What a handler saw, shared with the test thread. */
#define MAX_SEEN 256
typedef struct recv_log {
    pthread_mutex_t lock;
    int count;
    int ticks;
    char last_type[64];
    char last_from[CL_BUS_NAME_MAX];
    char last_peer[CL_BUS_NAME_MAX];
    char last_req[80];
    char last_log_req[80]; /* cl_log_request_id() inside the handler */
    char last_body[256];
    char ids[MAX_SEEN][CL_UUID_LEN];
    /* optional: reply with a reliable "test.reply" to the sender */
    bool reply;
    int reply_failures; /* checked by the test thread: cmocka asserts only work there */
} recv_log;

static void log_init(recv_log *l)
{
    memset(l, 0, sizeof *l);
    pthread_mutex_init(&l->lock, NULL);
}

static int log_count(recv_log *l)
{
    pthread_mutex_lock(&l->lock);
    int n = l->count;
    pthread_mutex_unlock(&l->lock);
    return n;
}

static int log_ticks(recv_log *l)
{
    pthread_mutex_lock(&l->lock);
    int n = l->ticks;
    pthread_mutex_unlock(&l->lock);
    return n;
}

static void on_msg(cl_bus *bus, const cl_bus_msg *msg, void *ud)
{
    recv_log *l = ud;
    pthread_mutex_lock(&l->lock);
    if (l->count < MAX_SEEN)
        cl_strlcpy(l->ids[l->count], msg->id, CL_UUID_LEN);
    l->count++;
    cl_strlcpy(l->last_type, msg->type, sizeof l->last_type);
    cl_strlcpy(l->last_from, msg->from, sizeof l->last_from);
    cl_strlcpy(l->last_peer, msg->peer, sizeof l->last_peer);
    cl_strlcpy(l->last_req, msg->req, sizeof l->last_req);
    const char *lr = cl_log_request_id();
    cl_strlcpy(l->last_log_req, lr ? lr : "", sizeof l->last_log_req);
    cl_strlcpy(l->last_body, json_object_to_json_string_ext(msg->body, JSON_C_TO_STRING_PLAIN),
               sizeof l->last_body);
    bool reply = l->reply;
    pthread_mutex_unlock(&l->lock);
    /* Sending from the handler (the bus thread) must work; req NULL = inherit. */
    if (reply &&
        cl_bus_send(bus, msg->peer[0] ? msg->peer : NULL, "test.reply", NULL, NULL, true, NULL)) {
        pthread_mutex_lock(&l->lock);
        l->reply_failures++;
        pthread_mutex_unlock(&l->lock);
    }
}

static void on_tick(cl_bus *bus, void *ud)
{
    recv_log *l = ud;
    pthread_mutex_lock(&l->lock);
    l->ticks++;
    pthread_mutex_unlock(&l->lock);
}

/* What every delivery test starts from: a free endpoint and empty logs (NULL-ended). */
static void begin(char *ep, size_t len, recv_log *first, ...)
{
    make_endpoint(ep, len);
    va_list ap;
    va_start(ap, first);
    for (recv_log *l = first; l; l = va_arg(ap, recv_log *))
        log_init(l);
    va_end(ap);
}

static cl_bus *bus_open(const cl_bus_opts *o)
{
    cl_bus *b = NULL;
    cl_error err = {0};
    int r = cl_bus_new(o, &b, &err);
    if (r < 0)
        fail_msg("cl_bus_new(%s): %d %s", o->name, r, err.message);
    return b;
}

static cl_bus *bus_start(cl_bus_role role, const char *ep, const char *name, recv_log *l,
                         const char *outbox)
{
    cl_bus_opts o = {
        .role = role,
        .endpoint = ep,
        .name = name,
        .resend_ms = 100,
        .on_msg = on_msg,
        .ud = l,
        .outbox_path = outbox,
    };
    return bus_open(&o);
}

/* A ROUTER "scheduler" that resends only after 30 s: a message seen within WAIT_MS was
 * routed right on its first try. */
static cl_bus_opts slow_router_opts(const char *ep, recv_log *l)
{
    return (cl_bus_opts){.role = CL_BUS_ROUTER, .endpoint = ep, .name = "scheduler",
                         .resend_ms = 30000, .on_msg = on_msg, .ud = l};
}

/* Send a reliable message without a body and wait until l has counted n in all. */
static void send_seen(cl_bus *from, const char *peer, const char *type, recv_log *l, int n)
{
    assert_int_equal(cl_bus_send(from, peer, type, NULL, NULL, true, NULL), 0);
    assert_true(WAIT_UNTIL(log_count(l) == n));
}

static cl_bus_stats stats_of(cl_bus *b)
{
    cl_bus_stats s;
    cl_bus_get_stats(b, &s);
    return s;
}

static bool acked_at_least(cl_bus *b, uint64_t n)
{
    return stats_of(b).acked >= n;
}

/* ------------------------------------------------------------------ codec */

static void test_codec_roundtrip(void **state)
{
    (void)state;
    cl_bus_msg m;
    memset(&m, 0, sizeof m);
    m.v = 1;
    cl_uuid_new(m.id);
    cl_strlcpy(m.type, "instance.spawn", sizeof m.type);
    m.ts = 1764137690123;
    cl_strlcpy(m.from, "scheduler", sizeof m.from);
    cl_strlcpy(m.req, "req-0b5c3a52-8d1e-4f4a-9a77-3e2d1c0b9a88", sizeof m.req);
    m.body = json_tokener_parse("{\"a\":[1,2,{\"b\":\"c/d\"}]}");
    assert_non_null(m.body);

    _cleanup_free_ char *s = NULL;
    assert_int_equal(cl_bus_encode(&m, &s), 0);
    assert_non_null(strstr(s, "\"v\":1"));

    cl_bus_msg d;
    cl_error err = {0};
    assert_int_equal(cl_bus_decode(s, strlen(s), &d, &err), 0);
    assert_int_equal(d.v, 1);
    assert_string_equal(d.id, m.id);
    assert_string_equal(d.type, m.type);
    assert_true(d.ts == m.ts);
    assert_string_equal(d.from, m.from);
    assert_string_equal(d.req, m.req);
    assert_string_equal(d.peer, "");
    assert_true(json_object_equal(d.body, m.body));
    cl_bus_msg_clear(&d);
    assert_null(d.body);
    cl_bus_msg_clear(&m);

    /* No body and no req: decoded as {} and "". */
    char id[CL_UUID_LEN];
    cl_uuid_new(id);
    char buf[256];
    snprintf(buf, sizeof buf, "{\"v\":1,\"id\":\"%s\",\"type\":\"ack\",\"from\":\"x\"}", id);
    assert_int_equal(cl_bus_decode(buf, strlen(buf), &d, &err), 0);
    assert_true(json_object_is_type(d.body, json_type_object));
    assert_int_equal(json_object_object_length(d.body), 0);
    assert_string_equal(d.req, "");
    cl_bus_msg_clear(&d);

    cl_bus_msg zero;
    memset(&zero, 0, sizeof zero);
    cl_bus_msg_clear(&zero);
    cl_bus_msg_clear(NULL);
}

static void test_codec_reject(void **state)
{
    (void)state;
    char id[CL_UUID_LEN];
    cl_uuid_new(id);
    char longtype[100], longfrom[300], longreq[100];
    memset(longtype, 't', 64);
    longtype[64] = '\0';
    memset(longfrom, 'f', 256);
    longfrom[256] = '\0';
    memset(longreq, 'r', 80);
    longreq[80] = '\0';

    char cases[16][512];
    size_t n = 0;
#define CASE(...) snprintf(cases[n++], sizeof cases[0], __VA_ARGS__)
    CASE("not json");
    CASE("{\"v\":1,\"id\":\"%s\",\"type\":\"x\",\"from\":\"a\"", id); /* truncated */
    CASE("[1,2]");
    CASE("{\"v\":2,\"id\":\"%s\",\"type\":\"x\",\"from\":\"a\"}", id);
    CASE("{\"v\":\"1\",\"id\":\"%s\",\"type\":\"x\",\"from\":\"a\"}", id);
    CASE("{\"id\":\"%s\",\"type\":\"x\",\"from\":\"a\"}", id);
    CASE("{\"v\":1,\"id\":\"not-a-uuid\",\"type\":\"x\",\"from\":\"a\"}");
    CASE("{\"v\":1,\"id\":7,\"type\":\"x\",\"from\":\"a\"}");
    CASE("{\"v\":1,\"id\":\"%s\",\"from\":\"a\"}", id);
    CASE("{\"v\":1,\"id\":\"%s\",\"type\":\"\",\"from\":\"a\"}", id);
    CASE("{\"v\":1,\"id\":\"%s\",\"type\":\"%s\",\"from\":\"a\"}", id, longtype);
    CASE("{\"v\":1,\"id\":\"%s\",\"type\":\"x\",\"from\":\"%s\"}", id, longfrom);
    CASE("{\"v\":1,\"id\":\"%s\",\"type\":\"x\",\"from\":\"a\",\"req\":\"%s\"}", id, longreq);
    CASE("{\"v\":1,\"id\":\"%s\",\"type\":\"x\",\"from\":\"a\",\"body\":[1]}", id);
    CASE("{\"v\":1,\"id\":\"%s\",\"type\":\"x\",\"from\":\"a\",\"body\":\"s\"}", id);
    CASE("{\"v\":1,\"id\":\"%s\",\"type\":\"x\\u0000y\",\"from\":\"a\"}", id);
#undef CASE
    for (size_t i = 0; i < n; i++) {
        cl_bus_msg d;
        memset(&d, 0x5a, sizeof d);
        cl_error err = {0};
        int r = cl_bus_decode(cases[i], strlen(cases[i]), &d, &err);
        if (r != -EINVAL)
            fail_msg("case %zu accepted (%d): %s", i, r, cases[i]);
        assert_int_equal(err.code, CL_E_BAD_REQUEST);
        assert_true(err.message[0] != '\0');
        assert_int_equal((unsigned char)d.id[0], 0x5a); /* output untouched */
    }
    /* Over the frame cap, whatever the content. */
    size_t big = CL_BUS_MAX_FRAME + 1;
    char *huge = malloc(big);
    assert_non_null(huge);
    memset(huge, ' ', big);
    cl_bus_msg d;
    assert_int_equal(cl_bus_decode(huge, big, &d, NULL), -EINVAL);
    free(huge);
}

/* ------------------------------------------------------------------ delivery */

static void test_dealer_to_router(void **state)
{
    (void)state;
    char ep[64];
    recv_log rl, dl;
    begin(ep, sizeof ep, &rl, &dl, NULL);
    rl.reply = true; /* the router answers each message reliably */
    cl_bus *router = bus_start(CL_BUS_ROUTER, ep, "scheduler", &rl, NULL);
    cl_bus *dealer = bus_start(CL_BUS_DEALER, ep, "compute-1", &dl, NULL);

    char id[CL_UUID_LEN];
    json_object *body = json_object_new_object();
    json_object_object_add(body, "n", json_object_new_int(42));
    assert_int_equal(cl_bus_send(dealer, NULL, "host.register", "req-abc", body, true, id), 0);
    assert_true(cl_uuid_valid(id));

    assert_true(WAIT_UNTIL(log_count(&rl) == 1));
    pthread_mutex_lock(&rl.lock);
    assert_string_equal(rl.ids[0], id);
    assert_string_equal(rl.last_type, "host.register");
    assert_string_equal(rl.last_from, "compute-1");
    assert_string_equal(rl.last_peer, "compute-1"); /* routing id = DEALER name */
    assert_string_equal(rl.last_req, "req-abc");
    assert_string_equal(rl.last_log_req, "req-abc"); /* log request id set for the handler */
    assert_string_equal(rl.last_body, "{\"n\":42}");
    pthread_mutex_unlock(&rl.lock);
    assert_true(WAIT_UNTIL(cl_bus_pending(dealer) == 0));
    assert_true(acked_at_least(dealer, 1));

    /* ROUTER -> DEALER: the reply, inheriting req from the handler's thread. */
    assert_true(WAIT_UNTIL(log_count(&dl) == 1));
    pthread_mutex_lock(&dl.lock);
    assert_string_equal(dl.last_type, "test.reply");
    assert_string_equal(dl.last_from, "scheduler");
    assert_string_equal(dl.last_peer, "");
    assert_string_equal(dl.last_req, "req-abc");
    pthread_mutex_unlock(&dl.lock);
    assert_true(WAIT_UNTIL(cl_bus_pending(router) == 0));
    assert_true(WAIT_UNTIL(acked_at_least(router, 1)));
    assert_int_equal(rl.reply_failures, 0);

    cl_bus_stats s = stats_of(dealer);
    assert_true(s.sent >= 1);
    assert_int_equal(s.duplicates, 0);
    assert_int_equal(s.bad_frames, 0);
    /* Unreliable messages are not counted as pending. */
    assert_int_equal(cl_bus_send(dealer, NULL, "host.heartbeat", NULL, NULL, false, NULL), 0);
    assert_true(WAIT_UNTIL(log_count(&rl) == 2));
    assert_int_equal(cl_bus_pending(dealer), 0);

    cl_bus_free(dealer);
    cl_bus_free(router);
}

static void test_send_validation(void **state)
{
    (void)state;
    char ep[64];
    recv_log l;
    begin(ep, sizeof ep, &l, NULL);
    cl_bus_opts o = {.role = CL_BUS_ROUTER, .endpoint = ep, .name = "sched",
                     .resend_ms = 100, .pending_cap = 3, .on_msg = on_msg, .ud = &l};
    cl_bus *router = NULL;
    cl_error err = {0};
    assert_int_equal(cl_bus_new(&o, &router, &err), 0);

    /* The port is taken now: a second ROUTER fails with an explanation. */
    cl_bus *again = NULL;
    assert_int_equal(cl_bus_new(&o, &again, &err), -EADDRINUSE);
    assert_null(again);
    assert_non_null(strstr(err.message, ep));

    assert_int_equal(cl_bus_send(router, NULL, "x.y", NULL, NULL, true, NULL), -EINVAL);
    assert_int_equal(cl_bus_send(router, "", "x.y", NULL, NULL, true, NULL), -EINVAL);
    assert_int_equal(cl_bus_send(router, "a", "", NULL, json_object_new_object(), true, NULL),
                     -EINVAL);
    assert_int_equal(cl_bus_send(router, "a", "ack", NULL, NULL, true, NULL), -EINVAL);
    assert_int_equal(cl_bus_send(router, "a", "x.y", NULL, json_object_new_array(), true, NULL),
                     -EINVAL);
    /* pending_cap: three reliable messages to an absent peer, the fourth is refused. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(cl_bus_send(router, "nobody", "x.y", NULL, NULL, true, NULL), 0);
    assert_int_equal(cl_bus_send(router, "nobody", "x.y", NULL, NULL, true, NULL), -ENOBUFS);
    assert_int_equal(cl_bus_pending(router), 3);

    cl_bus_opts bad = o;
    bad.name = "";
    assert_true(cl_bus_new(&bad, &again, &err) < 0);
    bad = o;
    bad.role = CL_BUS_ROLE_MAX;
    assert_true(cl_bus_new(&bad, &again, &err) < 0);
    assert_null(again);

    cl_bus_free(router); /* with pending messages: nothing may leak (ASan) */
    cl_bus_free(NULL);
}

static void test_resend_to_late_peer(void **state)
{
    (void)state;
    char ep[64];
    recv_log rl, dl;
    begin(ep, sizeof ep, &rl, &dl, NULL);
    cl_bus *router = bus_start(CL_BUS_ROUTER, ep, "scheduler", &rl, NULL);
    char id[CL_UUID_LEN];
    assert_int_equal(cl_bus_send(router, "late-agent", "instance.spawn", "", NULL, true, id), 0);
    /* The peer is absent: the message stays pending and is retried. */
    assert_true(WAIT_UNTIL(stats_of(router).sent == 0 && cl_bus_pending(router) == 1));
    assert_int_equal(log_count(&dl), 0);

    cl_bus *dealer = bus_start(CL_BUS_DEALER, ep, "late-agent", &dl, NULL);
    assert_true(WAIT_UNTIL(log_count(&dl) >= 1));
    assert_true(WAIT_UNTIL(cl_bus_pending(router) == 0));
    pthread_mutex_lock(&dl.lock);
    assert_string_equal(dl.ids[0], id);
    pthread_mutex_unlock(&dl.lock);
    assert_int_equal(log_count(&dl), 1);
    assert_true(stats_of(router).acked == 1);

    cl_bus_free(dealer);
    cl_bus_free(router);
}

static void test_max_tries_drops(void **state)
{
    (void)state;
    char ep[64];
    recv_log l;
    begin(ep, sizeof ep, &l, NULL);
    cl_bus_opts o = {.role = CL_BUS_ROUTER, .endpoint = ep, .name = "sched",
                     .resend_ms = 20, .max_tries = 3, .tick_ms = 10,
                     .on_msg = on_msg, .on_tick = on_tick, .ud = &l};
    cl_bus *router = NULL;
    cl_error err = {0};
    assert_int_equal(cl_bus_new(&o, &router, &err), 0);
    assert_int_equal(cl_bus_send(router, "ghost", "x.y", NULL, NULL, true, NULL), 0);
    assert_true(WAIT_UNTIL(cl_bus_pending(router) == 0));
    assert_int_equal(stats_of(router).dropped, 1);
    assert_int_equal(stats_of(router).acked, 0);
    /* on_tick runs periodically on the bus thread. */
    assert_true(WAIT_UNTIL(log_ticks(&l) >= 3));
    cl_bus_free(router);
}

/* ------------------------------------------------------------------ dedup (raw peer) */

static void *raw_dealer(void *ctx, const char *ep, const char *name)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(s);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_ROUTING_ID, name, strlen(name));
    int tmo = WAIT_MS;
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    assert_int_equal(zmq_connect(s, ep), 0);
    return s;
}

/* Receive one frame from a raw socket and decode it. */
static void raw_recv(void *s, cl_bus_msg *out)
{
    char buf[4096];
    int n = zmq_recv(s, buf, sizeof buf, 0);
    assert_true(n > 0 && n < (int)sizeof buf);
    cl_error err = {0};
    assert_int_equal(cl_bus_decode(buf, (size_t)n, out, &err), 0);
}

static void test_dedup(void **state)
{
    (void)state;
    char ep[64];
    recv_log rl;
    begin(ep, sizeof ep, &rl, NULL);
    cl_bus *router = bus_start(CL_BUS_ROUTER, ep, "scheduler", &rl, NULL);

    void *ctx = zmq_ctx_new();
    void *raw = raw_dealer(ctx, ep, "raw-agent");
    cl_bus_msg m;
    memset(&m, 0, sizeof m);
    m.v = 1;
    cl_uuid_new(m.id);
    cl_strlcpy(m.type, "instance.state", sizeof m.type);
    cl_strlcpy(m.from, "raw-agent", sizeof m.from);
    _cleanup_free_ char *frame = NULL;
    assert_int_equal(cl_bus_encode(&m, &frame), 0);

    for (int i = 0; i < 2; i++) {
        assert_int_equal(zmq_send(raw, frame, strlen(frame), 0), (int)strlen(frame));
        cl_bus_msg ack;
        raw_recv(raw, &ack); /* each copy is acknowledged */
        assert_string_equal(ack.type, "ack");
        assert_string_equal(ack.id, m.id);
        assert_string_equal(ack.from, "scheduler");
        cl_bus_msg_clear(&ack);
    }
    assert_int_equal(log_count(&rl), 1); /* ... but handled once */
    assert_true(WAIT_UNTIL(stats_of(router).duplicates == 1));

    /* Garbage and wrong framing are counted and dropped; the bus keeps working. */
    zmq_send(raw, "{nope", 5, 0);
    zmq_send(raw, "a", 1, ZMQ_SNDMORE);
    zmq_send(raw, frame, strlen(frame), 0);
    assert_true(WAIT_UNTIL(stats_of(router).bad_frames == 2));
    assert_int_equal(log_count(&rl), 1);

    zmq_close(raw);
    zmq_ctx_term(ctx);
    cl_bus_free(router);
}

static void test_dedup_cap_forgets_oldest(void **state)
{
    (void)state;
    char ep[64];
    recv_log rl;
    begin(ep, sizeof ep, &rl, NULL);
    cl_bus_opts o = {.role = CL_BUS_ROUTER, .endpoint = ep, .name = "sched",
                     .dedup_cap = 2, .on_msg = on_msg, .ud = &rl};
    cl_bus *router = NULL;
    assert_int_equal(cl_bus_new(&o, &router, NULL), 0);
    void *ctx = zmq_ctx_new();
    void *raw = raw_dealer(ctx, ep, "raw");

    char *frames[3];
    for (int i = 0; i < 3; i++) {
        cl_bus_msg m;
        memset(&m, 0, sizeof m);
        cl_uuid_new(m.id);
        cl_strlcpy(m.type, "t.t", sizeof m.type);
        cl_strlcpy(m.from, "raw", sizeof m.from);
        assert_int_equal(cl_bus_encode(&m, &frames[i]), 0);
    }
    /* 0, 1, 2 then 2 and 1 again (remembered) then 0 (forgotten: cap is 2). */
    int order[] = {0, 1, 2, 2, 1, 0};
    for (size_t i = 0; i < CL_ARRAY_SIZE(order); i++) {
        zmq_send(raw, frames[order[i]], strlen(frames[order[i]]), 0);
        cl_bus_msg ack;
        raw_recv(raw, &ack);
        cl_bus_msg_clear(&ack);
    }
    assert_int_equal(log_count(&rl), 4);
    assert_int_equal(stats_of(router).duplicates, 2);
    for (int i = 0; i < 3; i++)
        free(frames[i]);
    zmq_close(raw);
    zmq_ctx_term(ctx);
    cl_bus_free(router);
}

/* ------------------------------------------------------------------ outbox */

static void test_outbox_survives_restart(void **state)
{
    (void)state;
    char dir[] = "/tmp/nube-test-bus-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/outbox.db", dir);
    char ep[64];
    make_endpoint(ep, sizeof ep);

    recv_log dl, rl;
    log_init(&dl);
    log_init(&rl);
    /* No ROUTER exists: everything stays pending (and in the outbox). */
    cl_bus *dealer = bus_start(CL_BUS_DEALER, ep, "agent-x", &dl, path);
    char ids[5][CL_UUID_LEN];
    for (int i = 0; i < 5; i++) {
        json_object *b = json_object_new_object();
        json_object_object_add(b, "i", json_object_new_int(i));
        assert_int_equal(cl_bus_send(dealer, NULL, "usage.samples", NULL, b, true, ids[i]), 0);
    }
    assert_int_equal(cl_bus_pending(dealer), 5);
    cl_bus_free(dealer); /* the outbox is written by the bus thread before it exits */

    dealer = bus_start(CL_BUS_DEALER, ep, "agent-x", &dl, path);
    assert_int_equal(cl_bus_pending(dealer), 5); /* reloaded */
    cl_bus *router = bus_start(CL_BUS_ROUTER, ep, "billing", &rl, NULL);
    assert_true(WAIT_UNTIL(log_count(&rl) == 5));
    assert_true(WAIT_UNTIL(cl_bus_pending(dealer) == 0));
    pthread_mutex_lock(&rl.lock);
    for (int i = 0; i < 5; i++) {
        bool found = false;
        for (int j = 0; j < 5; j++)
            found |= strcmp(rl.ids[j], ids[i]) == 0;
        assert_true(found);
    }
    pthread_mutex_unlock(&rl.lock);
    cl_bus_free(dealer);

    /* Acked messages left the outbox: a new instance has nothing pending. */
    dealer = bus_start(CL_BUS_DEALER, ep, "agent-x", &dl, path);
    assert_int_equal(cl_bus_pending(dealer), 0);
    cl_bus_free(dealer);
    cl_bus_free(router);

    const char *suffix[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < CL_ARRAY_SIZE(suffix); i++) {
        char p[160];
        snprintf(p, sizeof p, "%s%s", path, suffix[i]);
        unlink(p);
    }
    assert_int_equal(rmdir(dir), 0);
}

/* ------------------------------------------------------------------ CURVE */

static void test_curve(void **state)
{
    (void)state;
    if (!zmq_has("curve"))
        skip();
    char srv_pub[41], srv_sec[41], cli_pub[41], cli_sec[41];
    assert_int_equal(zmq_curve_keypair(srv_pub, srv_sec), 0);
    assert_int_equal(zmq_curve_keypair(cli_pub, cli_sec), 0);
    char ep[64];
    recv_log rl, dl;
    begin(ep, sizeof ep, &rl, &dl, NULL);
    cl_bus_opts ro = {.role = CL_BUS_ROUTER, .endpoint = ep, .name = "sched", .resend_ms = 100,
                      .on_msg = on_msg, .ud = &rl, .curve_public_key = srv_pub,
                      .curve_secret_key = srv_sec};
    cl_bus_opts dopt = {.role = CL_BUS_DEALER, .endpoint = ep, .name = "secure-agent",
                        .resend_ms = 100, .on_msg = on_msg, .ud = &dl,
                        .curve_public_key = cli_pub, .curve_secret_key = cli_sec,
                        .curve_server_key = srv_pub};
    cl_bus *router = NULL, *dealer = NULL;
    cl_error err = {0};
    assert_int_equal(cl_bus_new(&ro, &router, &err), 0);
    assert_int_equal(cl_bus_new(&dopt, &dealer, &err), 0);
    send_seen(dealer, NULL, "host.register", &rl, 1);
    assert_true(WAIT_UNTIL(cl_bus_pending(dealer) == 0));
    cl_bus_free(dealer);

    /* A client missing half of its keys is refused at creation. */
    dopt.curve_secret_key = "";
    assert_int_equal(cl_bus_new(&dopt, &dealer, &err), -EINVAL);
    cl_bus_free(router);
}

/* ------------------------------------------------------------------ threads */

#define SENDERS 4
#define PER_SENDER 50

static void *sender_main(void *arg)
{
    cl_bus *b = arg;
    for (int i = 0; i < PER_SENDER; i++)
        if (cl_bus_send(b, NULL, "t.concurrent", NULL, NULL, true, NULL) != 0)
            return (void *)1;
    return NULL;
}

static void test_concurrent_senders(void **state)
{
    (void)state;
    char ep[64];
    recv_log rl, dl;
    begin(ep, sizeof ep, &rl, &dl, NULL);
    cl_bus *router = bus_start(CL_BUS_ROUTER, ep, "scheduler", &rl, NULL);
    cl_bus *dealer = bus_start(CL_BUS_DEALER, ep, "busy", &dl, NULL);
    pthread_t t[SENDERS];
    for (int i = 0; i < SENDERS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, sender_main, dealer), 0);
    for (int i = 0; i < SENDERS; i++) {
        void *res = (void *)1;
        pthread_join(t[i], &res);
        assert_null(res);
    }
    assert_true(WAIT_UNTIL(cl_bus_pending(dealer) == 0));
    /* Resends may duplicate on the wire, never in the handler. */
    assert_int_equal(log_count(&rl), SENDERS * PER_SENDER);
    assert_int_equal(stats_of(dealer).acked, SENDERS * PER_SENDER);
    cl_bus_free(dealer);
    cl_bus_free(router);
}

/* Peers are names; each DEALER socket has a routing id of its own, "<name>#<nonce>".
 * Two processes of one host (the old one still connected, the restarted one) do not
 * compete for an id: the host is routed to the one that spoke last, at once. */
static void test_routing_ids(void **state)
{
    (void)state;
    char ep[64];
    recv_log rl, old_l, new_l;
    begin(ep, sizeof ep, &rl, &old_l, &new_l, NULL);
    cl_bus_opts o = slow_router_opts(ep, &rl);
    cl_bus *router = bus_open(&o);
    cl_error err = {0};

    /* Names: no '#', and a DEALER's leaves room for the nonce. */
    assert_int_equal(cl_bus_send(router, "compute-1#x", "x.y", NULL, NULL, true, NULL),
                     -EINVAL);
    assert_int_equal(cl_bus_send(router, "compute-1", "bus.hello", NULL, NULL, true, NULL),
                     -EINVAL);
    cl_bus *bad = NULL;
    cl_bus_opts d = {.role = CL_BUS_DEALER, .endpoint = ep, .name = "a#b"};
    assert_int_equal(cl_bus_new(&d, &bad, &err), -EINVAL);
    char longname[CL_BUS_DEALER_NAME_MAX + 2];
    memset(longname, 'h', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    d.name = longname;
    assert_int_equal(cl_bus_new(&d, &bad, &err), -EINVAL);
    longname[CL_BUS_DEALER_NAME_MAX] = '\0'; /* the longest allowed */
    assert_int_equal(cl_bus_new(&d, &bad, &err), 0);
    cl_bus_free(bad);

    /* A command waits for a peer that has not spoken; its bus's hello (not handed to
     * on_msg) is enough. */
    cl_bus *old = bus_start(CL_BUS_DEALER, ep, "compute-1", &old_l, NULL);
    send_seen(router, "compute-1", "c.one", &old_l, 1);
    assert_true(WAIT_UNTIL(cl_bus_pending(router) == 0));
    assert_int_equal(log_count(&rl), 0);
    send_seen(old, NULL, "host.register", &rl, 1);
    pthread_mutex_lock(&rl.lock);
    assert_string_equal(rl.last_peer, "compute-1");
    pthread_mutex_unlock(&rl.lock);

    /* The "restarted" process connects while the old one is still up. */
    cl_bus *fresh = bus_start(CL_BUS_DEALER, ep, "compute-1", &new_l, NULL);
    send_seen(fresh, NULL, "host.register", &rl, 2);
    send_seen(router, "compute-1", "c.two", &new_l, 1);
    assert_true(WAIT_UNTIL(cl_bus_pending(router) == 0));
    assert_int_equal(log_count(&old_l), 1);
    pthread_mutex_lock(&new_l.lock);
    assert_string_equal(new_l.last_type, "c.two");
    pthread_mutex_unlock(&new_l.lock);

    /* The old one speaks again: it is the route again (the last that spoke). */
    send_seen(old, NULL, "host.heartbeat", &rl, 3);
    send_seen(router, "compute-1", "c.three", &old_l, 2);
    assert_int_equal(log_count(&new_l), 1);

    cl_bus_free(fresh);
    cl_bus_free(old);
    cl_bus_free(router);
}

/* The ROUTER restarts (a new socket on the same port, knowing no route): a DEALER that
 * sends nothing itself is known again as soon as it has reconnected (its hello follows
 * each handshake), not after the next resend (30 s) or hello refresh. */
static void test_router_restart_relearns(void **state)
{
    (void)state;
    char ep[64];
    recv_log rl, dl;
    begin(ep, sizeof ep, &rl, &dl, NULL);
    cl_bus_opts o = slow_router_opts(ep, &rl);
    cl_bus *router = bus_open(&o);
    cl_error err = {0};
    cl_bus *dealer = bus_start(CL_BUS_DEALER, ep, "quiet-host", &dl, NULL);
    send_seen(router, "quiet-host", "c.one", &dl, 1);
    cl_bus_free(router);

    router = NULL;
    assert_true(WAIT_UNTIL(cl_bus_new(&o, &router, &err) == 0));
    int64_t t0 = cl_mono_ms();
    send_seen(router, "quiet-host", "c.two", &dl, 2);
    assert_true(WAIT_UNTIL(cl_bus_pending(router) == 0));
    assert_true(cl_mono_ms() - t0 < WAIT_MS);
    assert_int_equal(log_count(&rl), 0); /* hellos only */
    cl_bus_free(dealer);
    cl_bus_free(router);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codec_roundtrip),
        cmocka_unit_test(test_codec_reject),
        cmocka_unit_test(test_dealer_to_router),
        cmocka_unit_test(test_send_validation),
        cmocka_unit_test(test_resend_to_late_peer),
        cmocka_unit_test(test_max_tries_drops),
        cmocka_unit_test(test_dedup),
        cmocka_unit_test(test_dedup_cap_forgets_oldest),
        cmocka_unit_test(test_outbox_survives_restart),
        cmocka_unit_test(test_curve),
        cmocka_unit_test(test_concurrent_senders),
        cmocka_unit_test(test_routing_ids),
        cmocka_unit_test(test_router_restart_relearns),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
