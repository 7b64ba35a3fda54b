/*
 * test_image_inspect.c - the streaming format inspector of nube-image.
 *
 * Every malicious construction of the image CVE family is built here byte by byte
 * (qcow2 backing file, external data file, unknown incompatible features, version 1,
 * VMDK descriptor files and flat or path-naming extents, qcow2-in-raw, polyglot
 * ISO+qcow2, oversized virtual sizes) and must be refused with its own reason; genuine
 * raw, qcow2, vmdk, iso, kernel and ramdisk images must pass. Images are fed in odd-sized
 * chunks to exercise the streaming path. When /usr/bin/qemu-img exists the same
 * constructions are also made by qemu-img itself (skipped otherwise).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <spawn.h>
#include <fcntl.h>
#include <unistd.h>
#include <cmocka.h>

#include "image_inspect.h"

#define GiB (1024ULL * 1024 * 1024)
#define LIMIT (1024 * GiB)

typedef struct verdict {
    int rc;
    cl_img_format fmt;
    uint64_t vsize;
    char reason[CL_IMG_REASON_MAX];
} verdict;

/* Feed buf in chunks of `chunk` bytes, stop at the first refusal, then finish. */
static verdict inspect_chunked(cl_img_format declared, const void *buf, size_t len,
                               size_t chunk, uint64_t limit)
{
    verdict v = {.rc = 0, .fmt = CL_IMG_FMT_MAX, .vsize = 0};
    cl_img_inspector *insp = cl_img_inspector_new(declared, limit);
    const unsigned char *p = buf;

    assert_non_null(insp);
    for (size_t off = 0; off < len && v.rc == 0; off += chunk)
        v.rc = cl_img_inspector_feed(insp, p + off, len - off < chunk ? len - off : chunk);
    if (v.rc == 0)
        v.rc = cl_img_inspector_finish(insp, &v.fmt, &v.vsize);
    snprintf(v.reason, sizeof(v.reason), "%s", cl_img_inspector_reason(insp));
    cl_img_inspector_free(insp);
    return v;
}

static verdict inspect(cl_img_format declared, const void *buf, size_t len)
{
    return inspect_chunked(declared, buf, len, 4093, LIMIT);
}

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void put_be64(unsigned char *p, uint64_t v)
{
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

#define IMG_LEN (192 * 1024)

/* A qcow2 header as qemu-img writes it (64 KiB clusters), followed by zero clusters. */
static unsigned char *make_qcow2(uint32_t version, uint64_t backing, uint64_t incompat,
                                 uint64_t size)
{
    unsigned char *b = calloc(1, IMG_LEN);

    assert_non_null(b);
    memcpy(b, "QFI\xfb", 4);
    put_be32(b + 4, version);
    put_be64(b + 8, backing);
    if (backing)
        put_be32(b + 16, 9);
    put_be32(b + 20, 16);
    put_be64(b + 24, size);
    put_be32(b + 36, 1);
    put_be64(b + 40, 3 * 65536);
    put_be64(b + 48, 65536);
    put_be32(b + 56, 1);
    if (version >= 3) {
        put_be64(b + 72, incompat);
        put_be32(b + 96, 4);
        put_be32(b + 100, 104);
    }
    if (backing)
        memcpy(b + backing, "/etc/passwd", 11);
    return b;
}

static void assert_refused(verdict v, const char *needle)
{
    assert_int_equal(v.rc, -EINVAL);
    if (!strstr(v.reason, needle))
        fail_msg("reason '%s' lacks '%s'", v.reason, needle);
}

static void test_format_parse(void **state)
{
    cl_img_format f;

    assert_int_equal(cl_img_format_parse("qcow2", &f), 0);
    assert_int_equal(f, CL_IMG_FMT_QCOW2);
    assert_int_equal(cl_img_format_parse("ami", &f), 0);
    assert_int_equal(f, CL_IMG_FMT_RAW);
    assert_int_equal(cl_img_format_parse("vhd", &f), -ENOTSUP);
    assert_int_equal(cl_img_format_parse("gpt", &f), -EINVAL);
    assert_int_equal(cl_img_format_parse("bogus", &f), -EINVAL);
    assert_string_equal(cl_img_format_name(CL_IMG_FMT_ARI), "ari");
    assert_null(cl_img_format_name(CL_IMG_FMT_MAX));
}

static void test_qcow2_genuine(void **state)
{
    for (uint32_t ver = 2; ver <= 3; ver++) {
        unsigned char *b = make_qcow2(ver, 0, ver == 3 ? 1 /* dirty: harmless */ : 0,
                                      10 * GiB);
        verdict v = inspect(CL_IMG_FMT_QCOW2, b, IMG_LEN);
        assert_int_equal(v.rc, 0);
        assert_int_equal(v.fmt, CL_IMG_FMT_QCOW2);
        assert_int_equal(v.vsize, 10 * GiB);
        /* Byte-at-a-time feeding reaches the same verdict. */
        v = inspect_chunked(CL_IMG_FMT_QCOW2, b, IMG_LEN, 1, LIMIT);
        assert_int_equal(v.rc, 0);
        free(b);
    }
}

static void test_qcow2_backing_file(void **state)
{
    unsigned char *b = make_qcow2(3, 512, 0, GiB);
    assert_refused(inspect(CL_IMG_FMT_QCOW2, b, IMG_LEN), "backing file");
    free(b);
    b = make_qcow2(2, 512, 0, GiB);
    assert_refused(inspect(CL_IMG_FMT_QCOW2, b, IMG_LEN), "backing file");
    free(b);
}

static void test_qcow2_data_file(void **state)
{
    unsigned char *b = make_qcow2(3, 0, 1ULL << 2, GiB);
    assert_refused(inspect(CL_IMG_FMT_QCOW2, b, IMG_LEN), "external data file");
    free(b);
}

static void test_qcow2_features_and_version(void **state)
{
    unsigned char *b = make_qcow2(3, 0, 1ULL << 9, GiB);
    assert_refused(inspect(CL_IMG_FMT_QCOW2, b, IMG_LEN), "unknown incompatible features");
    free(b);
    b = make_qcow2(3, 0, 1ULL << 1, GiB);
    assert_refused(inspect(CL_IMG_FMT_QCOW2, b, IMG_LEN), "marked corrupt");
    free(b);
    b = make_qcow2(3, 0, (1ULL << 3) | (1ULL << 4), GiB); /* zstd + extended L2: fine */
    assert_int_equal(inspect(CL_IMG_FMT_QCOW2, b, IMG_LEN).rc, 0);
    free(b);
    b = make_qcow2(1, 0, 0, GiB);
    assert_refused(inspect(CL_IMG_FMT_QCOW2, b, IMG_LEN), "version 1");
    free(b);
    b = make_qcow2(4, 0, 0, GiB);
    assert_refused(inspect(CL_IMG_FMT_QCOW2, b, IMG_LEN), "Unknown qcow2 version");
    free(b);
    b = make_qcow2(3, 0, 0, GiB);
    put_be32(b + 32, 1); /* AES */
    assert_refused(inspect(CL_IMG_FMT_QCOW2, b, IMG_LEN), "Encrypted");
    free(b);
    /* A truncated header cannot be judged, so it is refused. */
    b = make_qcow2(3, 0, 0, GiB);
    assert_refused(inspect(CL_IMG_FMT_QCOW2, b, 80), "truncated");
    free(b);
}

static void test_qcow2_declared_raw(void **state)
{
    /* CVE-2024-40767: qcow2 bytes behind a raw declaration. */
    unsigned char *b = make_qcow2(3, 0, 0, GiB);
    assert_refused(inspect(CL_IMG_FMT_RAW, b, IMG_LEN), "declared disk_format 'raw'");
    assert_refused(inspect(CL_IMG_FMT_ISO, b, IMG_LEN), "qcow2");
    free(b);
}

static void test_qcow2_virtual_size(void **state)
{
    unsigned char *b = make_qcow2(3, 0, 0, 2048 * GiB);
    assert_refused(inspect(CL_IMG_FMT_QCOW2, b, IMG_LEN), "virtual size");
    free(b);
    b = make_qcow2(3, 0, 0, UINT64_MAX);
    assert_refused(inspect(CL_IMG_FMT_QCOW2, b, IMG_LEN), "virtual size");
    free(b);
}

static void test_polyglot_iso_qcow2(void **state)
{
    unsigned char *b = make_qcow2(3, 0, 0, GiB);
    memcpy(b + 0x8001, "CD001", 5);
    assert_refused(inspect(CL_IMG_FMT_QCOW2, b, IMG_LEN), "more than one format");
    assert_refused(inspect(CL_IMG_FMT_ISO, b, IMG_LEN), "qcow2, iso");
    assert_refused(inspect(CL_IMG_FMT_RAW, b, IMG_LEN), "more than one format");
    free(b);
}

static void test_iso_and_hybrid(void **state)
{
    unsigned char *b = calloc(1, IMG_LEN);
    verdict v;

    assert_non_null(b);
    memcpy(b + 0x8001, "CD001", 5);
    v = inspect(CL_IMG_FMT_ISO, b, IMG_LEN);
    assert_int_equal(v.rc, 0);
    assert_int_equal(v.fmt, CL_IMG_FMT_ISO);
    assert_int_equal(v.vsize, IMG_LEN);
    /* isohybrid: MBR + GPT in front of the ISO is still an ISO. */
    b[510] = 0x55;
    b[511] = 0xaa;
    memcpy(b + 512, "EFI PART", 8);
    v = inspect(CL_IMG_FMT_ISO, b, IMG_LEN);
    assert_int_equal(v.rc, 0);
    assert_int_equal(v.fmt, CL_IMG_FMT_ISO);
    assert_refused(inspect(CL_IMG_FMT_RAW, b, IMG_LEN), "ISO 9660");
    free(b);
}

static void test_raw_and_gpt(void **state)
{
    unsigned char *b = calloc(1, IMG_LEN);
    verdict v;

    assert_non_null(b);
    for (size_t i = 0; i < IMG_LEN; i++)
        b[i] = (unsigned char)(i * 7 + 3);
    b[0] = 0; /* not a gzip magic by chance */
    v = inspect(CL_IMG_FMT_RAW, b, IMG_LEN);
    assert_int_equal(v.rc, 0);
    assert_int_equal(v.fmt, CL_IMG_FMT_RAW);
    assert_int_equal(v.vsize, IMG_LEN);
    memcpy(b + 512, "EFI PART", 8);
    v = inspect(CL_IMG_FMT_RAW, b, IMG_LEN);
    assert_int_equal(v.rc, 0);
    assert_int_equal(v.fmt, CL_IMG_FMT_GPT);
    /* A raw disk over the limit: its size is its virtual size. */
    assert_refused(inspect_chunked(CL_IMG_FMT_RAW, b, IMG_LEN, 65536, 100 * 1024),
                   "virtual size");
    /* A tiny raw image (shorter than every header) is raw. */
    v = inspect(CL_IMG_FMT_RAW, "hello", 5);
    assert_int_equal(v.rc, 0);
    assert_int_equal(v.vsize, 5);
    assert_refused(inspect(CL_IMG_FMT_RAW, "", 0), "empty");
    assert_refused(inspect(CL_IMG_FMT_QCOW2, b, IMG_LEN), "declared disk_format 'qcow2'");
    free(b);
}

static void test_kernel_ramdisk(void **state)
{
    unsigned char *b = calloc(1, IMG_LEN);
    verdict v;

    assert_non_null(b);
    b[510] = 0x55;
    b[511] = 0xaa;
    memcpy(b + 0x202, "HdrS", 4);
    v = inspect(CL_IMG_FMT_AKI, b, IMG_LEN);
    assert_int_equal(v.rc, 0);
    assert_int_equal(v.fmt, CL_IMG_FMT_AKI);
    assert_refused(inspect(CL_IMG_FMT_RAW, b, IMG_LEN), "Linux kernel");
    memset(b, 0, IMG_LEN);
    put_be32(b + 0x38, 0x41524d64); /* arm64 Image: "ARM\x64" */
    assert_int_equal(inspect(CL_IMG_FMT_AKI, b, IMG_LEN).rc, 0);
    memset(b, 0, IMG_LEN);
    assert_refused(inspect(CL_IMG_FMT_AKI, b, IMG_LEN), "no Linux kernel header");
    assert_refused(inspect(CL_IMG_FMT_ARI, b, IMG_LEN), "not a gzip");

    static const struct {
        const char *bytes;
        size_t len;
    } magics[] = {{"\x1f\x8b\x08", 3}, {"070701", 6}, {"\xfd" "7zXZ", 6}, {"\x28\xb5\x2f\xfd", 4}};
    for (size_t i = 0; i < sizeof(magics) / sizeof(magics[0]); i++) {
        memset(b, 0, IMG_LEN);
        memcpy(b, magics[i].bytes, magics[i].len);
        v = inspect(CL_IMG_FMT_ARI, b, 4096);
        assert_int_equal(v.rc, 0);
        assert_int_equal(v.fmt, CL_IMG_FMT_ARI);
    }
    free(b);
}

/* A monolithicSparse VMDK: header in sector 0, descriptor text in sectors 1..20. */
static unsigned char *make_vmdk(const char *create_type, const char *extent,
                                const char *extra)
{
    unsigned char *b = calloc(1, IMG_LEN);

    assert_non_null(b);
    memcpy(b, "KDMV", 4);
    b[4] = 1;
    put_le64(b + 12, 2 * 1024 * 1024); /* capacity: 1 GiB in sectors */
    put_le64(b + 20, 128);
    put_le64(b + 28, 1);
    put_le64(b + 36, 20);
    snprintf((char *)b + 512, 20 * 512,
             "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
             "createType=\"%s\"\n%s\n# Extent description\n%s\n\n"
             "# The Disk Data Base\nddb.virtualHWVersion = \"4\"\n",
             create_type, extra, extent);
    return b;
}

static void test_vmdk(void **state)
{
    unsigned char *b = make_vmdk("monolithicSparse", "RW 2097152 SPARSE \"disk.vmdk\"", "");
    verdict v = inspect(CL_IMG_FMT_VMDK, b, IMG_LEN);
    assert_int_equal(v.rc, 0);
    assert_int_equal(v.fmt, CL_IMG_FMT_VMDK);
    assert_int_equal(v.vsize, GiB);
    free(b);
    b = make_vmdk("streamOptimized", "RW 2097152 SPARSE \"disk.vmdk\"", "");
    assert_int_equal(inspect(CL_IMG_FMT_VMDK, b, IMG_LEN).rc, 0);
    free(b);

    /* CVE-2022-47951 family: flat extents, paths, other create types, parents. */
    b = make_vmdk("monolithicSparse", "RW 2097152 FLAT \"/etc/shadow\" 0", "");
    assert_refused(inspect(CL_IMG_FMT_VMDK, b, IMG_LEN), "FLAT extent");
    free(b);
    b = make_vmdk("monolithicSparse", "RW 2097152 SPARSE \"/var/lib/nova/x.vmdk\"", "");
    assert_refused(inspect(CL_IMG_FMT_VMDK, b, IMG_LEN), "names a path");
    free(b);
    b = make_vmdk("monolithicSparse", "RW 2097152 SPARSE \"../x.vmdk\"", "");
    assert_refused(inspect(CL_IMG_FMT_VMDK, b, IMG_LEN), "names a path");
    free(b);
    b = make_vmdk("monolithicSparse",
                  "RW 1048576 SPARSE \"a.vmdk\"\nRW 1048576 SPARSE \"b.vmdk\"", "");
    assert_refused(inspect(CL_IMG_FMT_VMDK, b, IMG_LEN), "2 extents");
    free(b);
    b = make_vmdk("twoGbMaxExtentSparse", "RW 2097152 SPARSE \"disk-s001.vmdk\"", "");
    assert_refused(inspect(CL_IMG_FMT_VMDK, b, IMG_LEN), "createType is not accepted");
    free(b);
    b = make_vmdk("monolithicSparse", "RW 2097152 SPARSE \"d.vmdk\"",
                  "parentFileNameHint=\"base.vmdk\"");
    assert_refused(inspect(CL_IMG_FMT_VMDK, b, IMG_LEN), "delta of a parent");
    free(b);
    b = make_vmdk("monolithicSparse", "RW 2097152 SPARSE \"disk.vmdk\"", "");
    put_le64(b + 28, 4096); /* descriptor at 2 MiB: beyond what is inspected */
    assert_refused(inspect(CL_IMG_FMT_VMDK, b, IMG_LEN), "beyond the first");
    free(b);
    /* A capacity whose byte size wraps 2^64 (x512 = 1 GiB mod 2^64) must not slip under
     * the virtual size limit (found by tests/fuzz/fuzz_inspect). */
    b = make_vmdk("monolithicSparse", "RW 2097152 SPARSE \"disk.vmdk\"", "");
    put_le64(b + 12, (1ULL << 55) + 2 * 1024 * 1024);
    assert_refused(inspect(CL_IMG_FMT_VMDK, b, IMG_LEN), "not a possible disk size");
    free(b);

    /* A descriptor-only VMDK (monolithicFlat, twoGbMaxExtent*) is text. */
    static const char desc[] = "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\n"
                               "RW 2097152 FLAT \"/etc/passwd\" 0\n";
    assert_refused(inspect(CL_IMG_FMT_VMDK, desc, sizeof(desc) - 1), "descriptor files");
    assert_refused(inspect(CL_IMG_FMT_RAW, desc, sizeof(desc) - 1), "VMDK");
}

/* Early refusal: once the head is in, feed() already says no. */
static void test_early_refusal(void **state)
{
    unsigned char *b = make_qcow2(3, 512, 0, GiB);
    cl_img_inspector *insp = cl_img_inspector_new(CL_IMG_FMT_QCOW2, LIMIT);
    assert_int_equal(cl_img_inspector_feed(insp, b, CL_IMG_INSPECT_HEAD - 1), 0);
    assert_int_equal(cl_img_inspector_feed(insp, b + CL_IMG_INSPECT_HEAD - 1, 1), -EINVAL);
    assert_int_equal(cl_img_inspector_feed(insp, b, 10), -EINVAL);
    assert_non_null(strstr(cl_img_inspector_reason(insp), "backing file"));
    cl_img_inspector_free(insp);
    free(b);
}

/* ---- the same constructions made by qemu-img itself ---- */

#define QEMU_IMG "/usr/bin/qemu-img"

static int run(char *const argv[])
{
    pid_t pid;
    int status;
    posix_spawn_file_actions_t fa;

    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    if (posix_spawn(&pid, argv[0], &fa, NULL, argv, NULL) != 0) {
        posix_spawn_file_actions_destroy(&fa);
        return -1;
    }
    posix_spawn_file_actions_destroy(&fa);
    if (waitpid(pid, &status, 0) < 0)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static verdict inspect_file(cl_img_format declared, const char *path)
{
    FILE *f = fopen(path, "rbe");
    unsigned char buf[65521]; /* odd size on purpose */
    cl_img_inspector *insp = cl_img_inspector_new(declared, LIMIT);
    verdict v = {.rc = 0};
    size_t n;

    assert_non_null(f);
    while (v.rc == 0 && (n = fread(buf, 1, sizeof(buf), f)) > 0)
        v.rc = cl_img_inspector_feed(insp, buf, n);
    fclose(f);
    if (v.rc == 0)
        v.rc = cl_img_inspector_finish(insp, &v.fmt, &v.vsize);
    snprintf(v.reason, sizeof(v.reason), "%s", cl_img_inspector_reason(insp));
    cl_img_inspector_free(insp);
    return v;
}

static void test_qemu_img_constructions(void **state)
{
    char dir[] = "/tmp/nube-inspect-XXXXXX";
    char base[128], img[128], data[128], opt[160];

    if (access(QEMU_IMG, X_OK) != 0)
        skip();
    assert_non_null(mkdtemp(dir));
    snprintf(base, sizeof(base), "%s/base.raw", dir);
    snprintf(img, sizeof(img), "%s/img", dir);
    snprintf(data, sizeof(data), "%s/data.raw", dir);

    char *create_base[] = {QEMU_IMG, "create", "-f", "raw", base, "1M", NULL};
    assert_int_equal(run(create_base), 0);
    assert_int_equal(inspect_file(CL_IMG_FMT_RAW, base).rc, 0);

    char *genuine[] = {QEMU_IMG, "create", "-f", "qcow2", img, "1G", NULL};
    assert_int_equal(run(genuine), 0);
    verdict v = inspect_file(CL_IMG_FMT_QCOW2, img);
    assert_int_equal(v.rc, 0);
    assert_int_equal(v.vsize, GiB);
    assert_refused(inspect_file(CL_IMG_FMT_RAW, img), "qcow2");

    char *backing[] = {QEMU_IMG, "create", "-f", "qcow2", "-b", base, "-F", "raw", img, NULL};
    assert_int_equal(run(backing), 0);
    assert_refused(inspect_file(CL_IMG_FMT_QCOW2, img), "backing file");

    snprintf(opt, sizeof(opt), "data_file=%s", data);
    char *datafile[] = {QEMU_IMG, "create", "-f", "qcow2", "-o", opt, img, "1M", NULL};
    assert_int_equal(run(datafile), 0);
    assert_refused(inspect_file(CL_IMG_FMT_QCOW2, img), "external data file");

    char *v2[] = {QEMU_IMG, "create", "-f", "qcow2", "-o", "compat=0.10", img, "1M", NULL};
    assert_int_equal(run(v2), 0);
    assert_int_equal(inspect_file(CL_IMG_FMT_QCOW2, img).rc, 0);

    char *flat[] = {QEMU_IMG, "create", "-f", "vmdk", "-o", "subformat=monolithicFlat",
                    img, "1M", NULL};
    assert_int_equal(run(flat), 0);
    assert_refused(inspect_file(CL_IMG_FMT_VMDK, img), "descriptor files");

    char *split[] = {QEMU_IMG, "create", "-f", "vmdk", "-o",
                     "subformat=twoGbMaxExtentSparse", img, "1M", NULL};
    assert_int_equal(run(split), 0);
    assert_refused(inspect_file(CL_IMG_FMT_VMDK, img), "descriptor files");

    char *sparse[] = {QEMU_IMG, "create", "-f", "vmdk", img, "1M", NULL};
    assert_int_equal(run(sparse), 0);
    assert_int_equal(inspect_file(CL_IMG_FMT_VMDK, img).rc, 0);

    char *rm[] = {"/bin/rm", "-rf", dir, NULL};
    assert_int_equal(run(rm), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_parse),
        cmocka_unit_test(test_qcow2_genuine),
        cmocka_unit_test(test_qcow2_backing_file),
        cmocka_unit_test(test_qcow2_data_file),
        cmocka_unit_test(test_qcow2_features_and_version),
        cmocka_unit_test(test_qcow2_declared_raw),
        cmocka_unit_test(test_qcow2_virtual_size),
        cmocka_unit_test(test_polyglot_iso_qcow2),
        cmocka_unit_test(test_iso_and_hybrid),
        cmocka_unit_test(test_raw_and_gpt),
        cmocka_unit_test(test_kernel_ramdisk),
        cmocka_unit_test(test_vmdk),
        cmocka_unit_test(test_early_refusal),
        cmocka_unit_test(test_qemu_img_constructions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
