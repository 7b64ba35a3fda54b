/*
 * image_inspect.c - the streaming format inspector (see image_inspect.h for the contract).
 *
 * Why nube inspects images itself instead of asking `qemu-img info`: every image CVE of
 * OpenStack's history (CVE-2015-5163 qcow2 backing files, CVE-2022-47951 VMDK flat
 * descriptors, CVE-2024-32498 the qcow2 external data file, CVE-2024-40767 qcow2 data
 * declared raw) came from a tool that opens the files an image names or guesses the
 * format. Here the bytes are only ever compared with fixed signatures and decoded from a
 * bounded head buffer; nothing names a file, nothing is guessed.
 *
 * How a verdict is reached:
 *  1. every signature is looked for, independently (sniff());
 *  2. more than one match refuses the image, except a GPT inside a hybrid ISO, which is
 *     how every bootable distribution ISO is built;
 *  3. the detected format must be the declared one (raw also accepts a GPT disk);
 *  4. the detected format's own rules apply (qcow2_check(), vmdk_check());
 *  5. the virtual size must be within the limit.
 * Steps 1-4 run as soon as the head buffer is full, so a refused upload can be stopped
 * early; cl_img_inspector_finish() runs them for short images and adds the size checks.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "image_inspect.h"

/* QCOW2 header fields (docs/interop/qcow2.txt in QEMU), all big-endian. */
#define QCOW2_MAGIC "QFI\xfb"
#define QCOW2_OFF_VERSION 4
#define QCOW2_OFF_BACKING_OFFSET 8
#define QCOW2_OFF_CLUSTER_BITS 20
#define QCOW2_OFF_SIZE 24
#define QCOW2_OFF_CRYPT 32
#define QCOW2_OFF_INCOMPAT 72
#define QCOW2_V2_HEADER_LEN 72
#define QCOW2_V3_HEADER_LEN 104
/* Incompatible feature bits: 0 dirty, 1 corrupt, 2 external data file, 3 compression
 * type, 4 extended L2 entries. Dirty, compression type and extended L2 are harmless
 * (they change how qemu reads the image's own clusters); corrupt and the data file are
 * refused with their own reasons, anything above bit 4 is unknown and refused. */
#define QCOW2_INCOMPAT_DIRTY (1ULL << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ULL << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ULL << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ULL << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ULL << 4)
#define QCOW2_INCOMPAT_SAFE                                                                \
    (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_COMPRESSION | QCOW2_INCOMPAT_EXTL2)

/* VMDK hosted sparse extent header (VMware "Virtual Disk Format 5.0"), little-endian. */
#define VMDK_MAGIC "KDMV"
#define VMDK_OFF_CAPACITY 12
#define VMDK_OFF_DESC_OFFSET 28
#define VMDK_OFF_DESC_SIZE 36
#define VMDK_HEADER_LEN 512
#define VMDK_DESCRIPTOR_TEXT "# Disk DescriptorFile"

#define ISO_MAGIC "CD001"
#define GPT_MAGIC "EFI PART"
#define GPT_OFFSET 512
#define BZIMAGE_MAGIC "HdrS"
#define BZIMAGE_OFFSET 0x202
#define ARM64_IMAGE_MAGIC "ARM\x64"
#define ARM64_IMAGE_OFFSET 0x38

#define SECTOR 512ULL

struct cl_img_inspector {
    cl_img_format declared;
    uint64_t max_virtual_size;
    uint64_t total;       /* bytes fed */
    size_t head_len;      /* bytes of head[] filled */
    bool judged;          /* the head verdict has been reached */
    bool refused;
    cl_img_format detected;  /* valid once judged and not refused */
    uint64_t virtual_size; /* from the header; 0 = the file size (raw-like formats) */
    char reason[CL_IMG_REASON_MAX];
    unsigned char head[CL_IMG_INSPECT_HEAD];
};

static const char *const format_names[CL_IMG_FMT_MAX] = {
    [CL_IMG_FMT_RAW] = "raw", [CL_IMG_FMT_QCOW2] = "qcow2", [CL_IMG_FMT_VMDK] = "vmdk",
    [CL_IMG_FMT_ISO] = "iso", [CL_IMG_FMT_AKI] = "aki",     [CL_IMG_FMT_ARI] = "ari",
    [CL_IMG_FMT_GPT] = "gpt",
};

/* What the user is told the detected content is, in refusal messages. */
static const char *const format_descr[CL_IMG_FMT_MAX] = {
    [CL_IMG_FMT_RAW] = "raw disk data",
    [CL_IMG_FMT_QCOW2] = "a qcow2 image",
    [CL_IMG_FMT_VMDK] = "a VMDK image",
    [CL_IMG_FMT_ISO] = "an ISO 9660 image",
    [CL_IMG_FMT_AKI] = "a Linux kernel",
    [CL_IMG_FMT_ARI] = "a compressed archive or initramfs (ramdisk)",
    [CL_IMG_FMT_GPT] = "a raw disk with a GPT partition table",
};

/**
 * cl_img_format_name - the short name of a format ("qcow2"), or NULL when out of range.
 */
const char *cl_img_format_name(cl_img_format fmt)
{
    return (unsigned)fmt < CL_IMG_FMT_MAX ? format_names[fmt] : NULL;
}

/**
 * cl_img_format_parse - map a Glance disk_format to the content nube expects for it.
 */
int cl_img_format_parse(const char *disk_format, cl_img_format *out)
{
    static const char *const refused[] = {"vhd", "vhdx", "vdi", "ploop"};

    if (!disk_format)
        return -EINVAL;
    if (strcmp(disk_format, "ami") == 0) {
        *out = CL_IMG_FMT_RAW;
        return 0;
    }
    for (size_t i = 0; i < CL_IMG_FMT_MAX; i++) {
        /* "gpt" is a detection result, not a disk_format a user declares. */
        if (i != CL_IMG_FMT_GPT && strcmp(disk_format, format_names[i]) == 0) {
            *out = (cl_img_format)i;
            return 0;
        }
    }
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        if (strcmp(disk_format, refused[i]) == 0)
            return -ENOTSUP;
    return -EINVAL;
}

/**
 * cl_img_inspector_new - a fresh inspector for an upload declared as `declared`.
 */
cl_img_inspector *cl_img_inspector_new(cl_img_format declared, uint64_t max_virtual_size)
{
    cl_img_inspector *insp = calloc(1, sizeof(*insp));

    if (!insp)
        return NULL;
    insp->declared = declared;
    insp->max_virtual_size = max_virtual_size;
    return insp;
}

/**
 * cl_img_inspector_free - release an inspector; accepts NULL.
 */
void cl_img_inspector_free(cl_img_inspector *insp)
{
    free(insp);
}

__attribute__((format(printf, 2, 3))) static int refuse(cl_img_inspector *insp,
                                                       const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(insp->reason, sizeof(insp->reason), fmt, ap);
    va_end(ap);
    insp->refused = true;
    return -EINVAL;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const unsigned char *p)
{
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* True when the head holds `magic` (n bytes) at offset off. */
static bool has(const cl_img_inspector *insp, size_t off, const char *magic, size_t n)
{
    return insp->head_len >= off + n && memcmp(insp->head + off, magic, n) == 0;
}

static bool is_ramdisk(const cl_img_inspector *insp)
{
    return has(insp, 0, "\x1f\x8b", 2) ||            /* gzip */
           has(insp, 0, "070701", 6) || has(insp, 0, "070702", 6) ||
           has(insp, 0, "070707", 6) ||              /* cpio newc / crc / odc */
           has(insp, 0, "\xfd" "7zXZ\0", 6) ||       /* xz */
           has(insp, 0, "\x28\xb5\x2f\xfd", 4) ||    /* zstd */
           has(insp, 0, "\x02\x21\x4c\x18", 4);      /* lz4 legacy (kernel initramfs) */
}

/* Step 1: a bit per format whose signature is present. */
static unsigned sniff(const cl_img_inspector *insp)
{
    unsigned m = 0;

    if (has(insp, 0, QCOW2_MAGIC, 4))
        m |= 1u << CL_IMG_FMT_QCOW2;
    if (has(insp, 0, VMDK_MAGIC, 4) || has(insp, 0, "COWD", 4) ||
        has(insp, 0, VMDK_DESCRIPTOR_TEXT, strlen(VMDK_DESCRIPTOR_TEXT)))
        m |= 1u << CL_IMG_FMT_VMDK;
    /* The primary volume descriptor is at sector 16; some mastering tools put a boot
     * record or supplementary descriptor first, so sectors 17 and 18 count too. */
    if (has(insp, 0x8001, ISO_MAGIC, 5) || has(insp, 0x8801, ISO_MAGIC, 5) ||
        has(insp, 0x9001, ISO_MAGIC, 5))
        m |= 1u << CL_IMG_FMT_ISO;
    if (has(insp, BZIMAGE_OFFSET, BZIMAGE_MAGIC, 4) ||
        has(insp, ARM64_IMAGE_OFFSET, ARM64_IMAGE_MAGIC, 4))
        m |= 1u << CL_IMG_FMT_AKI;
    if (is_ramdisk(insp))
        m |= 1u << CL_IMG_FMT_ARI;
    if (has(insp, GPT_OFFSET, GPT_MAGIC, 8))
        m |= 1u << CL_IMG_FMT_GPT;
    return m;
}

/* Step 4 for qcow2: the header must describe a self-contained image. */
static int qcow2_check(cl_img_inspector *insp)
{
    const unsigned char *h = insp->head;
    uint32_t version, cluster_bits;
    uint64_t incompat;

    if (insp->head_len < QCOW2_V2_HEADER_LEN)
        return refuse(insp, "The qcow2 header is truncated (%zu bytes); upload the "
                            "complete image", insp->head_len);
    version = be32(h + QCOW2_OFF_VERSION);
    if (version == 1)
        return refuse(insp, "qcow2 version 1 images are not accepted; convert with "
                            "'qemu-img convert -f qcow2 -O qcow2' to a current version");
    if (version != 2 && version != 3)
        return refuse(insp, "Unknown qcow2 version %" PRIu32 "; only versions 2 and 3 "
                            "are accepted", version);
    if (be64(h + QCOW2_OFF_BACKING_OFFSET) != 0)
        return refuse(insp, "The qcow2 image names a backing file; images must be "
                            "self-contained (flatten it with 'qemu-img convert')");
    cluster_bits = be32(h + QCOW2_OFF_CLUSTER_BITS);
    if (cluster_bits < 9 || cluster_bits > 21)
        return refuse(insp, "The qcow2 header has an invalid cluster size (2^%" PRIu32
                            "); the image is damaged", cluster_bits);
    if (be32(h + QCOW2_OFF_CRYPT) != 0)
        return refuse(insp, "Encrypted qcow2 images are not accepted; decrypt the image "
                            "before uploading it");
    if (version == 3) {
        if (insp->head_len < QCOW2_V3_HEADER_LEN)
            return refuse(insp, "The qcow2 v3 header is truncated; upload the complete "
                                "image");
        incompat = be64(h + QCOW2_OFF_INCOMPAT);
        if (incompat & QCOW2_INCOMPAT_DATA_FILE)
            return refuse(insp, "The qcow2 image uses an external data file; images "
                                "must keep their data inside the qcow2 file");
        if (incompat & QCOW2_INCOMPAT_CORRUPT)
            return refuse(insp, "The qcow2 image is marked corrupt; repair it with "
                                "'qemu-img check -r all' before uploading");
        if (incompat & ~(QCOW2_INCOMPAT_SAFE | QCOW2_INCOMPAT_CORRUPT |
                         QCOW2_INCOMPAT_DATA_FILE))
            return refuse(insp, "The qcow2 image uses unknown incompatible features "
                                "(0x%" PRIx64 "); convert it with a current qemu-img",
                          incompat);
    }
    insp->virtual_size = be64(h + QCOW2_OFF_SIZE);
    return 0;
}

/* Copy the next line of the descriptor text [*pos, end) into line, trimmed. */
static bool next_line(const char *text, size_t end, size_t *pos, char *line, size_t len)
{
    size_t s = *pos, e, n;

    if (s >= end)
        return false;
    e = s;
    while (e < end && text[e] != '\n')
        e++;
    *pos = e + 1;
    while (s < e && (text[s] == ' ' || text[s] == '\t'))
        s++;
    while (e > s && (text[e - 1] == ' ' || text[e - 1] == '\t' || text[e - 1] == '\r'))
        e--;
    n = e - s < len - 1 ? e - s : len - 1;
    memcpy(line, text + s, n);
    line[n] = '\0';
    return true;
}

/* One extent line: ACCESS SECTORS TYPE "FILE" [OFFSET]. Only a single SPARSE extent
 * whose file name is a bare name (the image itself) is allowed. */
static int vmdk_extent_check(cl_img_inspector *insp, const char *line)
{
    char access[16], type[16], file[256];
    const char *q1, *q2;

    if (sscanf(line, "%15s %*s %15s", access, type) != 2)
        return refuse(insp, "The VMDK descriptor has a malformed extent line");
    if (strcmp(type, "SPARSE") != 0)
        return refuse(insp, "The VMDK descriptor names a %s extent; only a single "
                            "SPARSE extent inside the image is accepted", type);
    q1 = strchr(line, '"');
    q2 = q1 ? strchr(q1 + 1, '"') : NULL;
    if (!q1 || !q2 || q2 == q1 + 1 || (size_t)(q2 - q1 - 1) >= sizeof(file))
        return refuse(insp, "The VMDK descriptor has an extent without a file name");
    memcpy(file, q1 + 1, (size_t)(q2 - q1 - 1));
    file[q2 - q1 - 1] = '\0';
    if (strchr(file, '/') || strchr(file, '\\') || strstr(file, ".."))
        return refuse(insp, "The VMDK extent '%s' names a path; extents must not refer "
                            "to other files", file);
    return 0;
}

/* Step 4 for vmdk: a hosted sparse extent with an embedded descriptor of type
 * monolithicSparse or streamOptimized, a single extent, no parent. */
static int vmdk_check(cl_img_inspector *insp)
{
    const unsigned char *h = insp->head;
    uint64_t doff, dsize, end;
    const char *text;
    char line[512];
    size_t pos = 0, tlen;
    bool type_ok = false;
    int extents = 0, rc;

    if (!has(insp, 0, VMDK_MAGIC, 4))
        return refuse(insp, "VMDK descriptor files and ESX sparse extents refer to other "
                          "files and are not accepted; convert with 'qemu-img convert -O "
                          "vmdk -o subformat=streamOptimized'");
    if (insp->head_len < VMDK_HEADER_LEN)
        return refuse(insp, "The VMDK header is truncated; upload the complete image");
    doff = le64(h + VMDK_OFF_DESC_OFFSET);
    dsize = le64(h + VMDK_OFF_DESC_SIZE);
    if (doff == 0 || dsize == 0)
        return refuse(insp, "The VMDK image has no embedded descriptor; only "
                            "monolithicSparse and streamOptimized images are accepted");
    if (doff > CL_IMG_INSPECT_HEAD / SECTOR || dsize > CL_IMG_INSPECT_HEAD / SECTOR ||
        (end = (doff + dsize) * SECTOR) > CL_IMG_INSPECT_HEAD)
        return refuse(insp, "The VMDK descriptor lies beyond the first %d KiB of the "
                            "image; convert it with qemu-img", CL_IMG_INSPECT_HEAD / 1024);
    if (end > insp->head_len)
        return refuse(insp, "The VMDK descriptor is truncated; upload the complete image");
    text = (const char *)h + doff * SECTOR;
    tlen = (size_t)(dsize * SECTOR);
    {
        const char *nul = memchr(text, '\0', tlen);
        if (nul)
            tlen = (size_t)(nul - text);
    }
    while (next_line(text, tlen, &pos, line, sizeof(line))) {
        if (line[0] == '#' || line[0] == '\0')
            continue;
        if (strncmp(line, "createType", 10) == 0) {
            if (strstr(line, "\"monolithicSparse\"") || strstr(line, "\"streamOptimized\""))
                type_ok = true;
            else
                return refuse(insp, "The VMDK createType is not accepted (%.64s); only "
                                    "monolithicSparse and streamOptimized are", line);
        } else if (strncmp(line, "parentFileNameHint", 18) == 0) {
            return refuse(insp, "The VMDK image is a delta of a parent disk; upload a "
                                "self-contained image");
        } else if (strncmp(line, "RW ", 3) == 0 || strncmp(line, "RDONLY ", 7) == 0 ||
                   strncmp(line, "NOACCESS ", 9) == 0) {
            rc = vmdk_extent_check(insp, line);
            if (rc < 0)
                return rc;
            extents++;
        }
    }
    if (!type_ok)
        return refuse(insp, "The VMDK descriptor has no accepted createType; only "
                            "monolithicSparse and streamOptimized are accepted");
    if (extents != 1)
        return refuse(insp, "The VMDK descriptor names %d extents; exactly one sparse "
                            "extent inside the image is accepted", extents);
    /* A capacity whose byte count wraps 2^64 would pass any size limit. */
    if (le64(h + VMDK_OFF_CAPACITY) > UINT64_MAX / SECTOR)
        return refuse(insp, "The VMDK capacity of %" PRIu64 " sectors is not a possible "
                            "disk size", le64(h + VMDK_OFF_CAPACITY));
    insp->virtual_size = le64(h + VMDK_OFF_CAPACITY) * SECTOR;
    return 0;
}

/* Steps 1-4 on the head. */
static int judge_head(cl_img_inspector *insp)
{
    unsigned m = sniff(insp);
    cl_img_format det = CL_IMG_FMT_RAW;
    char names[128] = "";
    int n = 0;

    insp->judged = true;
    /* A hybrid ISO (isohybrid, xorriso) carries an MBR and a GPT so it can boot from a
     * USB stick: that GPT belongs to the ISO. */
    if ((m & (1u << CL_IMG_FMT_ISO)) && (m & (1u << CL_IMG_FMT_GPT)))
        m &= ~(1u << CL_IMG_FMT_GPT);
    for (int i = 0; i < CL_IMG_FMT_MAX; i++) {
        if (!(m & (1u << i)))
            continue;
        det = (cl_img_format)i;
        size_t used = strlen(names);
        snprintf(names + used, sizeof(names) - used, "%s%s", n ? ", " : "", format_names[i]);
        n++;
    }
    if (n > 1)
        return refuse(insp, "The image matches more than one format (%s); such "
                            "polyglot images are refused", names);

    if (insp->declared == CL_IMG_FMT_RAW ? !(det == CL_IMG_FMT_RAW || det == CL_IMG_FMT_GPT)
                                      : det != insp->declared) {
        if (det == CL_IMG_FMT_RAW && (insp->declared == CL_IMG_FMT_AKI))
            return refuse(insp, "The image was declared disk_format 'aki' but has no "
                                "Linux kernel header (bzImage or arm64 Image)");
        if (det == CL_IMG_FMT_RAW && (insp->declared == CL_IMG_FMT_ARI))
            return refuse(insp, "The image was declared disk_format 'ari' but is not a "
                                "gzip, xz, zstd, lz4 or cpio ramdisk");
        return refuse(insp, "The image was declared disk_format '%s' but its content is "
                            "%s; create the image with the matching disk_format",
                      format_names[insp->declared], format_descr[det]);
    }
    insp->detected = det;
    if (det == CL_IMG_FMT_QCOW2)
        return qcow2_check(insp);
    if (det == CL_IMG_FMT_VMDK)
        return vmdk_check(insp);
    return 0;
}

/* Step 5. Formats without a header size are as large as their data. */
static int size_check(cl_img_inspector *insp)
{
    uint64_t vs = insp->virtual_size ? insp->virtual_size : insp->total;

    if (vs > insp->max_virtual_size)
        return refuse(insp, "The image's virtual size (%" PRIu64 " bytes) is above the "
                            "limit of %" PRIu64 " bytes", vs, insp->max_virtual_size);
    return 0;
}

/**
 * cl_img_inspector_feed - account a chunk; judge the head once it is complete.
 */
int cl_img_inspector_feed(cl_img_inspector *insp, const void *data, size_t len)
{
    if (insp->refused)
        return -EINVAL;
    if (insp->head_len < CL_IMG_INSPECT_HEAD) {
        size_t n = CL_IMG_INSPECT_HEAD - insp->head_len;
        if (n > len)
            n = len;
        memcpy(insp->head + insp->head_len, data, n);
        insp->head_len += n;
    }
    insp->total += len;
    if (!insp->judged && insp->head_len == CL_IMG_INSPECT_HEAD && judge_head(insp) < 0)
        return -EINVAL;
    if (insp->judged)
        return size_check(insp);
    return 0;
}

/**
 * cl_img_inspector_finish - the final verdict once every byte has been fed.
 */
int cl_img_inspector_finish(cl_img_inspector *insp, cl_img_format *out_fmt,
                         uint64_t *out_virtual_size)
{
    if (insp->refused)
        return -EINVAL;
    if (insp->total == 0)
        return refuse(insp, "The image is empty");
    if (!insp->judged && judge_head(insp) < 0)
        return -EINVAL;
    if (size_check(insp) < 0)
        return -EINVAL;
    *out_fmt = insp->detected;
    *out_virtual_size = insp->virtual_size ? insp->virtual_size : insp->total;
    return 0;
}

/**
 * cl_img_inspector_reason - why the image was refused, or "".
 */
const char *cl_img_inspector_reason(const cl_img_inspector *insp)
{
    return insp->reason;
}

/**
 * cl_img_inspector_bytes - how many bytes have been fed.
 */
uint64_t cl_img_inspector_bytes(const cl_img_inspector *insp)
{
    return insp->total;
}
