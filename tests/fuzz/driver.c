/*
 * driver.c - main() for the fuzz targets when the compiler is not clang (no libFuzzer).
 *
 *   fuzz_<name> [-n MUTATIONS] [-s SEED] PATH...
 *
 * Runs LLVMFuzzerTestOneInput over every file of the given corpus directories (or the
 * files given directly), then over MUTATIONS pseudo-random mutations of each (bit flips,
 * byte and token overwrites, insertions, deletions, duplicated runs and splices with
 * another corpus file), from a fixed seed so a failure reproduces run after run. This
 * is what `./deploy/run-tests` does with every target (suite 'fuzz'): the gcc +
 * ASan/UBSan build replays the seed corpus, including every crash ever found, and a
 * little more. Real coverage-guided fuzzing is deploy/run-fuzz (clang + libFuzzer).
 *
 * Each input is passed in a malloc'd buffer of exactly its size, as libFuzzer does, so
 * AddressSanitizer catches a read one byte past the end. Arguments starting with '-'
 * other than -n/-s are ignored, so libFuzzer-style flags do no harm.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "fuzz_common.h"

#define DRIVER_MAX_FILES 4096
#define DRIVER_MAX_INPUT (1024 * 1024)
#define DRIVER_DEFAULT_MUTATIONS 200

/* LLVMFuzzerInitialize is optional for a target, as with libFuzzer. */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

typedef struct input {
    char *path;
    uint8_t *data;
    size_t size;
} input;

static input inputs[DRIVER_MAX_FILES];
static size_t ninputs;

static int read_file(const char *path, uint8_t **out, size_t *out_size)
{
    FILE *f = fopen(path, "rbe");
    uint8_t *buf = NULL;
    size_t cap = 0, len = 0;

    if (!f)
        return -errno;
    for (;;) {
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 4096;
            uint8_t *nb;
            if (ncap > DRIVER_MAX_INPUT)
                ncap = DRIVER_MAX_INPUT;
            if (ncap == cap)
                break; /* larger inputs are cut: the targets cap their input anyway */
            nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                fclose(f);
                return -ENOMEM;
            }
            buf = nb;
            cap = ncap;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        if (n == 0)
            break;
        len += n;
    }
    fclose(f);
    *out = buf;
    *out_size = len;
    return 0;
}

static void add_file(const char *path)
{
    uint8_t *data = NULL;
    size_t size = 0;

    if (ninputs >= DRIVER_MAX_FILES) {
        fprintf(stderr, "driver: more than %d corpus files, ignoring %s\n",
                DRIVER_MAX_FILES, path);
        return;
    }
    if (read_file(path, &data, &size) < 0) {
        fprintf(stderr, "driver: cannot read %s\n", path);
        exit(2);
    }
    inputs[ninputs].path = strdup(path);
    inputs[ninputs].data = data;
    inputs[ninputs].size = size;
    if (!inputs[ninputs].path) {
        fprintf(stderr, "driver: out of memory\n");
        exit(2);
    }
    ninputs++;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Files of a directory, sorted so the mutation sequence does not depend on readdir. */
static void add_dir(const char *dir)
{
    DIR *d = opendir(dir);
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;

    if (!d) {
        fprintf(stderr, "driver: cannot open %s\n", dir);
        exit(2);
    }
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, cap * sizeof(*names));
            if (!nn)
                exit(2);
            names = nn;
        }
        names[n] = strdup(e->d_name);
        if (!names[n])
            exit(2);
        n++;
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof(*names), cmp_str);
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
            add_file(path);
        free(names[i]);
    }
    free(names);
}

static uint64_t rnd_state;

static uint64_t rnd(void)
{
    return fuzz_rand(&rnd_state);
}

static size_t rnd_below(size_t n)
{
    return n ? (size_t)(rnd() % n) : 0;
}

/* Bytes that matter to the parsers behind the targets (JSON, INI, YAML, HTTP). */
static const char tokens[] = "{}[]\":,\\0-1e.\n\r\t =[];#&*%/?~\x7f\xff";

/* Apply 1..4 random edits to buf (len bytes, capacity cap); returns the new length. */
static size_t mutate(uint8_t *buf, size_t len, size_t cap)
{
    unsigned edits = 1 + (unsigned)rnd_below(4);

    for (unsigned e = 0; e < edits; e++) {
        switch (rnd_below(8)) {
        case 0: /* flip a bit */
            if (len)
                buf[rnd_below(len)] ^= (uint8_t)(1u << rnd_below(8));
            break;
        case 1: /* random byte */
            if (len)
                buf[rnd_below(len)] = (uint8_t)rnd();
            break;
        case 2: /* a syntax byte */
            if (len)
                buf[rnd_below(len)] = (uint8_t)tokens[rnd_below(sizeof(tokens) - 1)];
            break;
        case 3: { /* insert a byte */
            if (len >= cap)
                break;
            size_t at = rnd_below(len + 1);
            memmove(buf + at + 1, buf + at, len - at);
            buf[at] = rnd_below(2) ? (uint8_t)tokens[rnd_below(sizeof(tokens) - 1)] : (uint8_t)rnd();
            len++;
            break;
        }
        case 4: { /* delete a run */
            if (!len)
                break;
            size_t at = rnd_below(len);
            size_t n = 1 + rnd_below(len - at < 16 ? len - at : 16);
            memmove(buf + at, buf + at + n, len - at - n);
            len -= n;
            break;
        }
        case 5: { /* duplicate a run */
            if (!len)
                break;
            size_t from = rnd_below(len);
            size_t n = 1 + rnd_below(len - from < 64 ? len - from : 64);
            if (len + n > cap)
                break;
            size_t at = rnd_below(len + 1);
            uint8_t tmp[64];
            memcpy(tmp, buf + from, n);
            memmove(buf + at + n, buf + at, len - at);
            memcpy(buf + at, tmp, n);
            len += n;
            break;
        }
        case 6: { /* splice a run of another corpus file over ours */
            const input *o = &inputs[rnd_below(ninputs)];
            if (!o->size || !len)
                break;
            size_t from = rnd_below(o->size);
            size_t n = 1 + rnd_below(o->size - from < 128 ? o->size - from : 128);
            size_t at = rnd_below(len);
            if (at + n > cap)
                n = cap - at;
            memcpy(buf + at, o->data + from, n);
            if (at + n > len)
                len = at + n;
            break;
        }
        default: /* truncate */
            len = rnd_below(len + 1);
            break;
        }
    }
    return len;
}

static void run_one(const uint8_t *data, size_t size)
{
    /* An exact-size copy: ASan sees reads past the end (malloc(0) is fine too). */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        exit(2);
    if (size)
        memcpy(copy, data, size);
    LLVMFuzzerTestOneInput(copy, size);
    free(copy);
}

int main(int argc, char **argv)
{
    unsigned long mutations = DRIVER_DEFAULT_MUTATIONS;
    unsigned long long seed = 0x6e756265; /* "nube" */
    const char *env = getenv("NUBE_FUZZ_MUTATIONS");
    unsigned long execs = 0;
    struct timespec t0, t1;

    if (env && *env)
        mutations = strtoul(env, NULL, 10);
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            if (!(env && *env))
                mutations = strtoul(argv[++i], NULL, 10);
            else
                i++;
            continue;
        }
        if (strcmp(argv[i], "-s") == 0 && i + 1 < argc) {
            seed = strtoull(argv[++i], NULL, 0);
            continue;
        }
        if (argv[i][0] == '-')
            continue;
        if (stat(argv[i], &st) < 0) {
            fprintf(stderr, "driver: %s: %s\n", argv[i], strerror(errno));
            return 2;
        }
        if (S_ISDIR(st.st_mode))
            add_dir(argv[i]);
        else
            add_file(argv[i]);
    }
    if (!ninputs) {
        fprintf(stderr, "usage: %s [-n MUTATIONS] [-s SEED] CORPUS_DIR_OR_FILE...\n", argv[0]);
        return 2;
    }

    clock_gettime(CLOCK_MONOTONIC, &t0);
    run_one((const uint8_t *)"", 0);
    execs++;
    for (size_t i = 0; i < ninputs; i++) {
        run_one(inputs[i].data, inputs[i].size);
        execs++;
    }
    size_t cap = 0;
    for (size_t i = 0; i < ninputs; i++)
        if (inputs[i].size > cap)
            cap = inputs[i].size;
    cap += 256;
    uint8_t *buf = malloc(cap);
    if (!buf)
        return 2;
    for (size_t i = 0; i < ninputs; i++) {
        /* One stream per file: adding a corpus file does not reshuffle the others. */
        rnd_state = (uint64_t)seed * 0x9E3779B97F4A7C15ULL + i + 1;
        for (unsigned long m = 0; m < mutations; m++) {
            size_t len = inputs[i].size;
            memcpy(buf, inputs[i].data, len);
            len = mutate(buf, len, cap);
            run_one(buf, len);
            execs++;
        }
    }
    free(buf);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%s: %zu corpus files, %lu executions in %.2f s, no failure\n", argv[0], ninputs,
           execs, (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    for (size_t i = 0; i < ninputs; i++) {
        free(inputs[i].path);
        free(inputs[i].data);
    }
    return 0;
}
