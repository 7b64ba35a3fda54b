/*
 * util.c - identifiers, clocks, bounded copies and number parsing.
 *
 * These are the few primitives that replace the banned libc calls (strcpy, atoi,
 * sprintf): every other module reaches for them, so they are small, total and
 * thread-safe. UUIDs come from libuuid (which reads the kernel's random source), clocks
 * from clock_gettime(2).
 */
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uuid/uuid.h>

void cl_uuid_new(char out[CL_UUID_LEN])
{
    uuid_t u;

    /* uuid_generate_random() always yields a version 4 UUID; uuid_generate() could fall
     * back to a time-based one, which leaks the MAC address and the creation time. */
    uuid_generate_random(u);
    uuid_unparse_lower(u, out);
}

bool cl_uuid_valid(const char *s)
{
    if (!s)
        return false;
    /* Canonical form only (8-4-4-4-12): uuid_parse() would also do, but its acceptance
     * of odd forms differs between libuuid versions, so check the shape ourselves. */
    for (size_t i = 0; i < CL_UUID_LEN - 1; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return false;
        } else if (!isxdigit((unsigned char)c)) {
            return false; /* also catches a NUL before position 36 */
        }
    }
    return s[CL_UUID_LEN - 1] == '\0';
}

static int64_t clock_ms(clockid_t id)
{
    struct timespec ts;

    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t cl_now_ms(void) { return clock_ms(CLOCK_REALTIME); }

int64_t cl_mono_ms(void) { return clock_ms(CLOCK_MONOTONIC); }

size_t cl_strlcpy(char *dst, const char *src, size_t size)
{
    size_t len = strlen(src);

    if (size > 0) {
        size_t n = len < size - 1 ? len : size - 1;
        memcpy(dst, src, n);
        dst[n] = '\0';
    }
    return len;
}

int cl_parse_int64(const char *s, int64_t *out)
{
    char *end = NULL;
    long long v;

    /* strtoll skips leading blanks and accepts an empty string as 0; neither is a
     * number a user meant, so reject both before asking it. */
    if (!s || *s == '\0' || isspace((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (end == s || *end != '\0')
        return -EINVAL;
    if (errno == ERANGE)
        return -ERANGE;
    *out = (int64_t)v;
    return 0;
}

void cl_time_iso8601(int64_t ms, bool with_z, char *out, size_t outlen)
{
    /* Floor division so times before 1970 still get a non-negative sub-second part. */
    int64_t secs = ms / 1000;
    int64_t rem = ms % 1000;
    time_t t;
    struct tm tm;
    char date[32];

    if (outlen == 0)
        return;
    if (rem < 0) {
        rem += 1000;
        secs -= 1;
    }
    t = (time_t)secs;
    if (!gmtime_r(&t, &tm)) {
        out[0] = '\0';
        return;
    }
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
    if (with_z)
        snprintf(out, outlen, "%sZ", date);
    else
        snprintf(out, outlen, "%s.%06d", date, (int)rem * 1000);
}

int cl_grow_array(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 16;
    void *p = reallocarray(*arr, ncap, elem);

    if (!p)
        return -ENOMEM;
    *arr = p;
    *cap = ncap;
    return 0;
}

int cl_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;

    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}
