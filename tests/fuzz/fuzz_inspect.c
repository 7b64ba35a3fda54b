/*
 * fuzz_inspect.c - the streaming image format inspector (libcloud/image_inspect.h, used
 * by nube-image and the agent's image cache), which reads the bytes of every upload.
 *
 * Input layout: byte 0 picks the declared disk_format, byte 1 the virtual size limit,
 * the rest is the image. The image is fed twice: in one chunk, and in chunks of sizes
 * drawn from a PRNG seeded by a hash of the input (so a crash reproduces from the file
 * alone), including empty chunks. Invariants beyond "no crash":
 *  - the verdict does not depend on the chunking: same return code, format, virtual
 *    size and reason (a size refusal may name fewer bytes: those counted so far);
 *  - once feed() refused, it keeps refusing and finish() refuses too;
 *  - cl_img_inspector_bytes() counts every byte fed until a refusal;
 *  - a refusal has a reason, an acceptance has none and leaves outputs set;
 *  - an accepted image matches its declaration (raw also accepts GPT) and its virtual
 *    size is within the limit; for qcow2 and VMDK the size is the header's, computed
 *    without overflow (a VMDK capacity whose byte size wraps 2^64 must be refused).
 */
#include <errno.h>
#include <string.h>

#include "fuzz_common.h"
#include "image_inspect.h"

typedef struct verdict {
    int rc;
    cl_img_format fmt;
    uint64_t vsize;
    char reason[CL_IMG_REASON_MAX];
} verdict;

static void run(cl_img_format declared, uint64_t max, const uint8_t *img, size_t len,
                uint64_t seed, bool chunked, verdict *v)
{
    cl_img_inspector *insp = cl_img_inspector_new(declared, max);
    bool refused = false;
    size_t off = 0;

    FUZZ_CHECK(insp != NULL);
    FUZZ_CHECK(cl_img_inspector_reason(insp)[0] == '\0');
    if (len == 0)
        FUZZ_CHECK(cl_img_inspector_feed(insp, img, 0) == 0);
    while (off < len) {
        size_t n = len - off;
        if (chunked) {
            uint64_t x = fuzz_rand(&seed);
            /* Mostly small chunks, some large, some empty; both sides of the head end. */
            size_t lim = (x & 3) == 0 ? CL_IMG_INSPECT_HEAD : (x & 3) == 1 ? 1 : 4096;
            size_t want = (size_t)((x >> 8) % (lim + 1));
            if (want < n)
                n = want;
        }
        int r = cl_img_inspector_feed(insp, img + off, n);
        off += n;
        if (r == 0) {
            FUZZ_CHECK(cl_img_inspector_bytes(insp) == off);
            continue;
        }
        FUZZ_CHECK(r == -EINVAL);
        FUZZ_CHECK(cl_img_inspector_reason(insp)[0] != '\0');
        refused = true;
        /* The caller may stop reading here; if it goes on, the answer stays no. */
        FUZZ_CHECK(cl_img_inspector_feed(insp, img + off, len - off) == -EINVAL);
        FUZZ_CHECK(cl_img_inspector_feed(insp, img, 0) == -EINVAL);
        break;
    }
    v->fmt = CL_IMG_FMT_MAX;
    v->vsize = 0xDEADBEEF;
    v->rc = cl_img_inspector_finish(insp, &v->fmt, &v->vsize);
    if (refused)
        FUZZ_CHECK(v->rc == -EINVAL);
    if (v->rc < 0) {
        FUZZ_CHECK(v->rc == -EINVAL);
        FUZZ_CHECK(cl_img_inspector_reason(insp)[0] != '\0');
        FUZZ_CHECK(v->fmt == CL_IMG_FMT_MAX && v->vsize == 0xDEADBEEF);
    } else {
        FUZZ_CHECK(v->rc == 0);
        FUZZ_CHECK(cl_img_inspector_reason(insp)[0] == '\0');
    }
    FUZZ_CHECK(memchr(cl_img_inspector_reason(insp), '\0', CL_IMG_REASON_MAX) != NULL);
    snprintf(v->reason, sizeof(v->reason), "%s", cl_img_inspector_reason(insp));
    cl_img_inspector_free(insp);
}

static uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint64_t limits[] = {UINT64_MAX, 1ULL << 20, 64 * 1024, 10ULL << 30};
    verdict one, many;

    if (size < 2 || size > 4 * CL_IMG_INSPECT_HEAD)
        return 0;
    cl_img_format declared = (cl_img_format)(data[0] % CL_IMG_FMT_GPT); /* GPT is not declarable */
    uint64_t max = limits[data[1] % CL_ARRAY_SIZE(limits)];
    const uint8_t *img = data + 2;
    size_t len = size - 2;

    run(declared, max, img, len, 0, false, &one);
    run(declared, max, img, len, fuzz_hash(data, size), true, &many);
    if (one.rc != many.rc || strcmp(one.reason, many.reason) != 0)
        fprintf(stderr, "one chunk: %d '%s'; many chunks: %d '%s'\n", one.rc, one.reason,
                many.rc, many.reason);
    FUZZ_CHECK(one.rc == many.rc);
    /* A size refusal during the upload names the bytes counted so far, so only its
     * kind must agree; every other reason must be the same text. */
    static const char size_reason[] = "The image's virtual size";
    if (strncmp(one.reason, size_reason, sizeof(size_reason) - 1) != 0 ||
        strncmp(many.reason, size_reason, sizeof(size_reason) - 1) != 0)
        FUZZ_CHECK(strcmp(one.reason, many.reason) == 0);
    if (one.rc < 0)
        return 0;
    FUZZ_CHECK(one.fmt == many.fmt && one.vsize == many.vsize);

    FUZZ_CHECK((unsigned)one.fmt < CL_IMG_FMT_MAX);
    if (declared == CL_IMG_FMT_RAW)
        FUZZ_CHECK(one.fmt == CL_IMG_FMT_RAW || one.fmt == CL_IMG_FMT_GPT);
    else
        FUZZ_CHECK(one.fmt == declared);
    FUZZ_CHECK(one.vsize <= max);
    if (one.fmt == CL_IMG_FMT_QCOW2 && len >= 32 && be64(img + 24) != 0)
        FUZZ_CHECK(one.vsize == be64(img + 24));
    if (one.fmt == CL_IMG_FMT_VMDK && len >= 20) {
        uint64_t capacity = le64(img + 12);
        if (capacity > UINT64_MAX / 512)
            fprintf(stderr, "VMDK capacity %llu sectors (x512 wraps 2^64) accepted with "
                    "virtual size %llu\n", (unsigned long long)capacity,
                    (unsigned long long)one.vsize);
        FUZZ_CHECK(capacity <= UINT64_MAX / 512);
        if (capacity)
            FUZZ_CHECK(one.vsize == capacity * 512);
    }
    return 0;
}
