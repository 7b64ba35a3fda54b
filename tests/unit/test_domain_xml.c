/*
 * test_domain_xml.c - the domain XML generator and the nube metadata parser.
 *
 * The generated XML for each hypervisor is compared byte for byte with
 * tests/unit/golden/domain_<hv>.xml (regenerate with NUBE_REGEN_GOLDEN=1 after an
 * intended change, and review the diff). Byte equality alone would happily freeze a
 * document libvirt refuses, so the test-driver XML is also defined on test:///default
 * (libvirt's own parser), and the QEMU/Xen ones are validated against libvirt's RNG
 * schema with virt-xml-validate when it is installed.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "domain_xml.h"

extern char **environ;

#define UUID1 "7c2f5d8e-1a2b-4c3d-8e9f-0123456789ab"
#define VALIDATOR "/usr/bin/virt-xml-validate"

static void quiet(void *ud, virErrorPtr e);

/* A spec with every XML special character in every user-provided field. */
static void make_spec(cl_msg_instance *m)
{
    memset(m, 0, sizeof(*m));
    snprintf(m->uuid, sizeof(m->uuid), "%s", UUID1);
    snprintf(m->name, sizeof(m->name), "%s", "web <1> & \"db\" 'x'");
    snprintf(m->project_id, sizeof(m->project_id), "%s", "proj&<>");
    snprintf(m->user_id, sizeof(m->user_id), "%s", "user\"'");
    snprintf(m->image_ref, sizeof(m->image_ref), "%s", "cirros-0.6 <raw>");
    snprintf(m->flavor.id, sizeof(m->flavor.id), "%s", "1");
    snprintf(m->flavor.name, sizeof(m->flavor.name), "%s", "m1.tiny \"&\"");
    m->flavor.vcpus = 2;
    m->flavor.ram_mb = 512;
    m->flavor.disk_gb = 1;
    m->flavor.ephemeral_gb = 0;
    m->flavor.swap_mb = 0;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        fwrite(chunk, 1, n, mem);
    fclose(f);
    fclose(mem);
    return buf;
}

static void write_file(const char *path, const char *data)
{
    FILE *f = fopen(path, "we");
    assert_non_null(f);
    assert_int_equal(fputs(data, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static char *gen(agent_hv_type hv, agent_virt_type virt)
{
    cl_msg_instance m;
    cl_error err = {0};
    char *xml = NULL;
    make_spec(&m);
    assert_int_equal(agent_domain_xml(&m, hv, virt, "/var/lib/nube/instances", &xml, &err), 0);
    assert_non_null(xml);
    return xml;
}

static char *gen_ex(agent_hv_type hv, const agent_boot *boot)
{
    cl_msg_instance m;
    cl_error err = {0};
    char *xml = NULL;
    make_spec(&m);
    assert_int_equal(agent_domain_xml_ex(&m, hv, AGENT_VIRT_AUTO, "/var/lib/nube/instances",
                                         boot, &xml, &err), 0);
    assert_non_null(xml);
    return xml;
}

/* A Xen PV image (vm_mode=xen) with its own kernel and ramdisk, as an AMI-style image. */
static const agent_boot xen_pv_boot = {
    .vm_mode = "xen",
    .kernel = "/var/lib/nube/images/deb-pv/kernel",
    .ramdisk = "/var/lib/nube/images/deb-pv/ramdisk",
    .cmdline = "console=hvc0 root=/dev/xvda",
};

/* Compare xml (freed) with golden/domain_<name>.xml. */
static void check_golden_named(const char *name, char *xml)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/golden/domain_%s.xml", TEST_SRCDIR, name);
    const char *regen = getenv("NUBE_REGEN_GOLDEN");
    if (regen && strcmp(regen, "1") == 0) {
        write_file(path, xml);
        print_message("regenerated %s\n", path);
    }
    char *want = read_file(path);
    if (!want)
        fail_msg("golden file %s missing (run with NUBE_REGEN_GOLDEN=1)", path);
    if (strcmp(want, xml) != 0)
        fail_msg("%s differs from generated XML:\n%s", path, xml);
    free(want);
    free(xml);
}

static void check_golden(agent_hv_type hv)
{
    check_golden_named(agent_hv_name(hv), gen(hv, AGENT_VIRT_AUTO));
}

/* vm_mode=xen: PV with direct kernel boot, xvda, the PV console, no ACPI. */
static void test_golden_xen_pv(void **state)
{
    (void)state;
    check_golden_named("xen_pv", gen_ex(AGENT_HV_XEN, &xen_pv_boot));
}

/* vm_mode=hvm (or none) is the HVM document, the same as without properties. */
static void test_xen_hvm_mode(void **state)
{
    (void)state;
    agent_boot hvm = {.vm_mode = "hvm"};
    char *a = gen_ex(AGENT_HV_XEN, &hvm), *b = gen(AGENT_HV_XEN, AGENT_VIRT_AUTO);
    assert_string_equal(a, b);
    assert_non_null(strstr(a, ">hvm</type>"));
    free(a);
    free(b);
    /* PV without a kernel boots through pygrub. */
    agent_boot pv = {.vm_mode = "XEN"};
    a = gen_ex(AGENT_HV_XEN, &pv);
    assert_non_null(strstr(a, "<bootloader>/usr/lib/xen/bin/pygrub</bootloader>"));
    assert_non_null(strstr(a, "machine='xenpv'>xen</type>"));
    assert_null(strstr(a, "<kernel>"));
    free(a);
    assert_true(agent_vm_mode_is_pv("xen"));
    assert_false(agent_vm_mode_is_pv("hvm"));
    assert_false(agent_vm_mode_is_pv(NULL));
}

/* LXC: the extracted rootfs is mounted on '/', the image's init runs. */
static void test_lxc_rootfs_init(void **state)
{
    (void)state;
    agent_boot b = {.rootfs = "/srv/r<1>", .init = "/bin/sh"};
    char *x = gen_ex(AGENT_HV_LXC, &b);
    assert_non_null(strstr(x, "<init>/bin/sh</init>"));
    assert_non_null(strstr(x, "<source dir='/srv/r&lt;1&gt;'/>"));
    assert_non_null(strstr(x, "<filesystem type='mount'"));
    free(x);
}

/* Live resize headroom: maximums above the flavor, current values at the flavor. */
static void test_headroom(void **state)
{
    (void)state;
    agent_boot b = {.max_vcpus = 8, .max_ram_mb = 2048};
    char *x = gen_ex(AGENT_HV_TEST, &b);
    assert_non_null(strstr(x, "<memory unit='MiB'>2048</memory>"));
    assert_non_null(strstr(x, "<currentMemory unit='MiB'>512</currentMemory>"));
    assert_non_null(strstr(x, "<vcpu placement='static' current='2'>8</vcpu>"));
    free(x);
    /* Headroom below the flavor is no headroom. */
    agent_boot small = {.max_vcpus = 1, .max_ram_mb = 256};
    char *y = gen_ex(AGENT_HV_TEST, &small), *z = gen(AGENT_HV_TEST, AGENT_VIRT_AUTO);
    assert_string_equal(y, z);
    free(y);
    free(z);
}

/* Host CPU architecture and model out of capabilities XML. */
static void test_caps_parse(void **state)
{
    (void)state;
    char arch[32], model[64];
    assert_int_equal(agent_caps_parse("<capabilities><host><uuid>x</uuid><cpu><arch>x86_64"
                                      "</arch><model>Skylake-Client-IBRS</model><vendor>Intel"
                                      "</vendor></cpu></host><guest><arch name='i686'/></guest>"
                                      "</capabilities>", arch, sizeof(arch), model,
                                      sizeof(model)), 0);
    assert_string_equal(arch, "x86_64");
    assert_string_equal(model, "Skylake-Client-IBRS");
    assert_int_equal(agent_caps_parse("<capabilities><host><cpu><arch>i686</arch></cpu></host>"
                                      "</capabilities>", arch, sizeof(arch), model,
                                      sizeof(model)), 0);
    assert_string_equal(arch, "i686");
    assert_string_equal(model, "");
    assert_int_equal(agent_caps_parse("<domain/>", arch, sizeof(arch), model, sizeof(model)),
                     -EINVAL);
    assert_int_equal(agent_caps_parse("not xml", arch, sizeof(arch), model, sizeof(model)),
                     -EINVAL);

    /* The test driver's own capabilities parse. */
    virSetErrorFunc(NULL, quiet);
    virConnectPtr c = virConnectOpen("test:///default");
    assert_non_null(c);
    char *caps = virConnectGetCapabilities(c);
    assert_non_null(caps);
    assert_int_equal(agent_caps_parse(caps, arch, sizeof(arch), model, sizeof(model)), 0);
    assert_string_equal(arch, "i686");
    free(caps);
    assert_int_equal(virConnectClose(c), 0);
}

static void test_golden_test(void **state) { (void)state; check_golden(AGENT_HV_TEST); }
static void test_golden_qemu(void **state) { (void)state; check_golden(AGENT_HV_QEMU); }
static void test_golden_xen(void **state) { (void)state; check_golden(AGENT_HV_XEN); }
static void test_golden_lxc(void **state) { (void)state; check_golden(AGENT_HV_LXC); }

static void test_domain_types(void **state)
{
    (void)state;
    char *x;
    x = gen(AGENT_HV_QEMU, AGENT_VIRT_KVM);
    assert_non_null(strstr(x, "<domain type='kvm'>"));
    free(x);
    /* auto is TCG for now (KVM guests hang on the development hosts). */
    x = gen(AGENT_HV_QEMU, AGENT_VIRT_AUTO);
    assert_non_null(strstr(x, "<domain type='qemu'>"));
    free(x);
    x = gen(AGENT_HV_QEMU, AGENT_VIRT_QEMU);
    assert_non_null(strstr(x, "<domain type='qemu'>"));
    assert_non_null(strstr(x, "<name>instance-" UUID1 "</name>"));
    assert_non_null(strstr(x, "/var/lib/nube/instances/" UUID1 "/disk'"));
    assert_non_null(strstr(x, "/var/lib/nube/instances/" UUID1 "/console.log'"));
    assert_non_null(strstr(x, "<target dev='vda' bus='virtio'/>"));
    free(x);
    x = gen(AGENT_HV_LXC, AGENT_VIRT_AUTO);
    assert_non_null(strstr(x, "<type>exe</type>"));
    assert_non_null(strstr(x, "<init>/sbin/init</init>"));
    free(x);
    /* No raw user string leaks into any document. */
    for (int hv = 0; hv < AGENT_HV_MAX; hv++) {
        x = gen((agent_hv_type)hv, AGENT_VIRT_AUTO);
        assert_null(strstr(x, "<1>"));
        assert_null(strstr(x, "& "));
        assert_non_null(strstr(x, "web &lt;1&gt; &amp; &quot;db&quot; &apos;x&apos;"));
        free(x);
    }
}

static void test_bad_specs(void **state)
{
    (void)state;
    cl_msg_instance m;
    cl_error err = {0};
    char *xml = NULL;

    make_spec(&m);
    m.flavor.vcpus = 0;
    assert_int_equal(agent_domain_xml(&m, AGENT_HV_TEST, AGENT_VIRT_AUTO, "/x", &xml, &err),
                     -EINVAL);
    assert_null(xml);
    assert_non_null(strstr(err.message, "vcpus"));

    make_spec(&m);
    m.flavor.ram_mb = -5;
    assert_int_equal(agent_domain_xml(&m, AGENT_HV_QEMU, AGENT_VIRT_AUTO, "/x", &xml, &err),
                     -EINVAL);
    assert_non_null(strstr(err.message, "ram"));

    make_spec(&m);
    snprintf(m.uuid, sizeof(m.uuid), "%s", "not-a-uuid'/><evil/>");
    assert_int_equal(agent_domain_xml(&m, AGENT_HV_QEMU, AGENT_VIRT_AUTO, "/x", &xml, &err),
                     -EINVAL);
    assert_null(xml);
}

static void test_escape(void **state)
{
    (void)state;
    char buf[64];
    assert_int_equal(agent_xml_escape("a&b<c>d\"e'f", buf, sizeof(buf)),
                     strlen("a&amp;b&lt;c&gt;d&quot;e&apos;f"));
    assert_string_equal(buf, "a&amp;b&lt;c&gt;d&quot;e&apos;f");
    /* Truncation never cuts an entity; the return value tells the needed size. */
    char small[6];
    assert_int_equal(agent_xml_escape("ab&cd", small, sizeof(small)), 9);
    assert_string_equal(small, "ab");
    /* Control characters XML 1.0 cannot carry become '?', tabs/newlines stay. */
    assert_int_equal(agent_xml_escape("a\x01" "b\tc", buf, sizeof(buf)), 5);
    assert_string_equal(buf, "a?b\tc");
    assert_int_equal(agent_xml_escape("", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "");
}

static void test_names(void **state)
{
    (void)state;
    agent_hv_type hv;
    agent_virt_type vt;
    char name[AGENT_DOMAIN_NAME_MAX];

    assert_int_equal(agent_hv_from_libvirt("QEMU", &hv), 0);
    assert_int_equal(hv, AGENT_HV_QEMU);
    assert_int_equal(agent_hv_from_libvirt("Test", &hv), 0);
    assert_int_equal(hv, AGENT_HV_TEST);
    assert_int_equal(agent_hv_from_libvirt("Xen", &hv), 0);
    assert_int_equal(hv, AGENT_HV_XEN);
    assert_int_equal(agent_hv_from_libvirt("LXC", &hv), 0);
    assert_int_equal(hv, AGENT_HV_LXC);
    assert_int_equal(agent_hv_from_libvirt("VBOX", &hv), -ENOTSUP);
    assert_int_equal(agent_hv_from_libvirt(NULL, &hv), -ENOTSUP);
    assert_int_equal(agent_virt_type_parse("kvm", &vt), 0);
    assert_int_equal(vt, AGENT_VIRT_KVM);
    assert_int_equal(agent_virt_type_parse("auto", &vt), 0);
    assert_int_equal(vt, AGENT_VIRT_AUTO);
    assert_int_equal(agent_virt_type_parse("hvf", &vt), -EINVAL);
    agent_domain_name(UUID1, name);
    assert_string_equal(name, "instance-" UUID1);
}

static void assert_spec_equal(const cl_msg_instance *a, const cl_msg_instance *b)
{
    assert_string_equal(a->uuid, b->uuid);
    assert_string_equal(a->name, b->name);
    assert_string_equal(a->project_id, b->project_id);
    assert_string_equal(a->user_id, b->user_id);
    assert_string_equal(a->image_ref, b->image_ref);
    assert_string_equal(a->flavor.id, b->flavor.id);
    assert_string_equal(a->flavor.name, b->flavor.name);
    assert_int_equal(a->flavor.vcpus, b->flavor.vcpus);
    assert_int_equal(a->flavor.ram_mb, b->flavor.ram_mb);
    assert_int_equal(a->flavor.disk_gb, b->flavor.disk_gb);
}

static void test_metadata_roundtrip(void **state)
{
    (void)state;
    cl_msg_instance m, back;
    cl_error err = {0};
    char *xml = NULL;

    make_spec(&m);
    assert_int_equal(agent_metadata_xml(&m, &xml, &err), 0);
    assert_int_equal(agent_metadata_parse(xml, &back, &err), 0);
    assert_spec_equal(&m, &back);
    free(xml);

    /* Any prefix works: matching is by namespace URI. */
    const char *other = "<x:instance xmlns:x='" NUBE_XMLNS "'><x:uuid>" UUID1 "</x:uuid>"
                        "<x:name>n &amp; m</x:name><x:flavor id='f' vcpus='3'/></x:instance>";
    assert_int_equal(agent_metadata_parse(other, &back, &err), 0);
    assert_string_equal(back.uuid, UUID1);
    assert_string_equal(back.name, "n & m");
    assert_int_equal(back.flavor.vcpus, 3);

    /* Without namespace, as virDomainGetMetadata returns it. */
    assert_int_equal(agent_metadata_parse("<instance><uuid>" UUID1 "</uuid><user>u</user>"
                                          "</instance>", &back, &err), 0);
    assert_string_equal(back.user_id, "u");

    /* Wrong namespace, no uuid, not XML. */
    assert_int_equal(agent_metadata_parse("<instance xmlns='urn:other'><uuid>" UUID1
                                          "</uuid></instance>", &back, &err), -EINVAL);
    assert_int_equal(agent_metadata_parse("<n:instance xmlns:n='" NUBE_XMLNS "'/>", &back,
                                          &err), -EINVAL);
    assert_int_equal(agent_metadata_parse("<<<", &back, &err), -EINVAL);
    assert_int_equal(agent_metadata_parse(NULL, &back, &err), -EINVAL);
}

static void quiet(void *ud, virErrorPtr e)
{
    (void)ud;
    (void)e;
}

/* libvirt's own parser accepts the test-driver XML (and the Xen one, which the test
 * driver also defines), and the metadata survives libvirt's round trip. */
static void test_libvirt_accepts(void **state)
{
    (void)state;
    virSetErrorFunc(NULL, quiet);
    virConnectPtr c = virConnectOpen("test:///default");
    assert_non_null(c);

    char *xml = gen(AGENT_HV_TEST, AGENT_VIRT_AUTO);
    virDomainPtr d = virDomainDefineXML(c, xml);
    if (!d)
        fail_msg("test driver refused the XML: %s", virGetLastErrorMessage());
    char *md = virDomainGetMetadata(d, VIR_DOMAIN_METADATA_ELEMENT, NUBE_XMLNS, 0);
    assert_non_null(md);
    cl_msg_instance m, back;
    cl_error err = {0};
    make_spec(&m);
    assert_int_equal(agent_metadata_parse(md, &back, &err), 0);
    assert_spec_equal(&m, &back);
    free(md);
    assert_int_equal(virDomainCreate(d), 0);
    assert_int_equal(virDomainIsActive(d), 1);
    assert_int_equal(virDomainDestroy(d), 0);
    assert_int_equal(virDomainUndefine(d), 0);
    virDomainFree(d);
    free(xml);

    for (int pv = 0; pv < 2; pv++) {
        xml = pv ? gen_ex(AGENT_HV_XEN, &xen_pv_boot) : gen(AGENT_HV_XEN, AGENT_VIRT_AUTO);
        d = virDomainDefineXML(c, xml);
        if (!d)
            fail_msg("test driver refused the Xen %s XML: %s", pv ? "PV" : "HVM",
                     virGetLastErrorMessage());
        assert_int_equal(virDomainUndefine(d), 0);
        virDomainFree(d);
        free(xml);
    }
    assert_int_equal(virConnectClose(c), 0);
}

/* Run virt-xml-validate FILE domain; returns its exit status. */
static int run_validator(const char *file)
{
    char *argv[] = {(char *)VALIDATOR, (char *)file, (char *)"domain", NULL};
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int status = 0;
    posix_spawn_file_actions_init(&fa);
    /* It says "validates" / "fails to validate" on stderr: keep test output readable. */
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
    assert_int_equal(posix_spawn(&pid, VALIDATOR, &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_schema_validates(void **state)
{
    (void)state;
    if (access(VALIDATOR, X_OK) != 0)
        skip();
    char dir[] = "/tmp/nube-domxml-XXXXXX";
    assert_non_null(mkdtemp(dir));
    const agent_hv_type hvs[] = {AGENT_HV_QEMU, AGENT_HV_XEN, AGENT_HV_LXC, AGENT_HV_XEN};
    for (size_t i = 0; i < sizeof(hvs) / sizeof(hvs[0]); i++) {
        char path[256];
        /* The last one is the Xen PV document. */
        char *xml = i == 3 ? gen_ex(AGENT_HV_XEN, &xen_pv_boot) : gen(hvs[i], AGENT_VIRT_AUTO);
        snprintf(path, sizeof(path), "%s/%s.xml", dir, agent_hv_name(hvs[i]));
        write_file(path, xml);
        int rc = run_validator(path);
        if (rc != 0)
            fail_msg("virt-xml-validate rejected the %s XML (rc %d):\n%s",
                     agent_hv_name(hvs[i]), rc, xml);
        free(xml);
        assert_int_equal(unlink(path), 0);
    }
    /* The validator does fail on bad XML (so a pass above means something). */
    char bad[256];
    snprintf(bad, sizeof(bad), "%s/bad.xml", dir);
    write_file(bad, "<domain type='qemu'><name>x</name><bogus/></domain>\n");
    assert_int_not_equal(run_validator(bad), 0);
    assert_int_equal(unlink(bad), 0);
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_test),
        cmocka_unit_test(test_golden_qemu),
        cmocka_unit_test(test_golden_xen),
        cmocka_unit_test(test_golden_lxc),
        cmocka_unit_test(test_golden_xen_pv),
        cmocka_unit_test(test_xen_hvm_mode),
        cmocka_unit_test(test_lxc_rootfs_init),
        cmocka_unit_test(test_headroom),
        cmocka_unit_test(test_caps_parse),
        cmocka_unit_test(test_domain_types),
        cmocka_unit_test(test_bad_specs),
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_metadata_roundtrip),
        cmocka_unit_test(test_libvirt_accepts),
        cmocka_unit_test(test_schema_validates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
