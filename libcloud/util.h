/*
 * util.h - small helpers every daemon needs: identifiers, clocks, bounded string copies.
 *
 * nube bans strcpy/sprintf/atoi: bounded copies go through cl_strlcpy(), numbers through
 * cl_parse_int64() which rejects trailing garbage and overflow.
 */
#ifndef CL_UTIL_H
#define CL_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CL_UUID_LEN 37 /* 36 characters and the terminating NUL */

/* Write a new random (v4) UUID in lower-case canonical form into out. Thread-safe. */
void cl_uuid_new(char out[CL_UUID_LEN]);

/* True when s is a canonical 36-character UUID (either case). */
bool cl_uuid_valid(const char *s);

/* Wall clock in milliseconds since the epoch (CLOCK_REALTIME). */
int64_t cl_now_ms(void);

/* Monotonic clock in milliseconds (CLOCK_MONOTONIC), for deadlines and timeouts. */
int64_t cl_mono_ms(void);

/* Copy at most size-1 bytes of src into dst and NUL-terminate (size > 0).
 * Returns strlen(src), so truncation is detectable as a return value >= size. */
size_t cl_strlcpy(char *dst, const char *src, size_t size);

/* Parse a base-10 integer; the whole string must be consumed and fit in int64.
 * Returns 0 and writes *out, or -EINVAL / -ERANGE leaving *out untouched. */
int cl_parse_int64(const char *s, int64_t *out);

/* Format a unix-ms time as ISO 8601 UTC. with_z: "2026-11-26T06:14:50Z";
 * without: "2026-11-26T06:14:50.000000" (the two forms Nova mixes). */
void cl_time_iso8601(int64_t ms, bool with_z, char *out, size_t outlen);

/* Make room for element n of a malloc'd array *arr of capacity *cap (elements of size
 * elem): doubles the capacity (16 at first) when n reaches it. 0 or -ENOMEM, leaving
 * *arr and *cap untouched on failure. For loops that collect query rows. */
int cl_grow_array(void **arr, size_t *cap, size_t n, size_t elem);

/* Write all len bytes of buf to fd, retrying short writes and EINTR. 0 or -errno. */
int cl_write_all(int fd, const void *buf, size_t len);

/* Sleep-free wait helper for tests and loops is deliberately absent: wait on events. */

#endif
