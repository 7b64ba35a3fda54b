/*
 * fuzz_common.h - what every nube fuzz target shares: the libFuzzer entry points, the
 * invariant check that turns a silent wrong answer into a crash the fuzzer can see, and
 * a memfd helper for the decoders that only read from a path.
 *
 * A fuzz target here asserts more than "does not crash": a decoder that accepts an input
 * must hand back something its own encoder reproduces, a decoder that refuses must say
 * why in the cl_error and leave the output alone. FUZZ_CHECK() aborts (a crash for both
 * libFuzzer and the standalone driver) naming the line of the broken invariant.
 */
#ifndef NUBE_FUZZ_COMMON_H
#define NUBE_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cleanup.h"
#include "errors.h"

/* The libFuzzer interface; driver.c provides main() for builds without libFuzzer. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

__attribute__((noreturn)) static inline void fuzz_fail(const char *file, int line,
                                                       const char *what)
{
    fprintf(stderr, "fuzz invariant broken at %s:%d: %s\n", file, line, what);
    abort();
}

#define FUZZ_CHECK(cond)                                                                   \
    do {                                                                                   \
        if (!(cond))                                                                       \
            fuzz_fail(__FILE__, __LINE__, #cond);                                          \
    } while (0)

/* A fixed char array holds a terminated string. */
#define FUZZ_STR_OK(arr) FUZZ_CHECK(memchr((arr), '\0', sizeof(arr)) != NULL)

/* An error path described itself: a catalogue code and a non-empty, terminated message. */
static inline void fuzz_check_error(const cl_error *e)
{
    FUZZ_CHECK(e->code > CL_E_OK && e->code < CL_E_MAX);
    FUZZ_CHECK(memchr(e->message, '\0', sizeof(e->message)) != NULL);
    FUZZ_CHECK(e->message[0] != '\0');
}

/* An anonymous in-memory file holding data, and a path that opens it
 * ("/proc/self/fd/N"). Returns the fd (close it when done) or -1. */
static inline int fuzz_memfd(const uint8_t *data, size_t size, char *path, size_t pathlen)
{
    int fd = memfd_create("nube-fuzz", MFD_CLOEXEC);
    size_t off = 0;

    if (fd < 0)
        return -1;
    while (off < size) {
        ssize_t n = write(fd, data + off, size - off);
        if (n <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)n;
    }
    snprintf(path, pathlen, "/proc/self/fd/%d", fd);
    return fd;
}

/* FNV-1a of the input: seeds the target's own choices (chunk sizes) from the data, so a
 * crash reproduces from the input file alone. */
static inline uint64_t fuzz_hash(const uint8_t *data, size_t size)
{
    uint64_t h = 1469598103934665603ULL;

    for (size_t i = 0; i < size; i++) {
        h ^= data[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static inline uint64_t fuzz_rand(uint64_t *state)
{
    /* xorshift64*: small, good enough to pick chunk sizes. */
    uint64_t x = *state ? *state : 0x9E3779B97F4A7C15ULL;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

#endif
