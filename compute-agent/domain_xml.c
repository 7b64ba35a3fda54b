/*
 * domain_xml.c - from an instance spec to libvirt domain XML, and back from nube metadata.
 *
 * The document is written with open_memstream() in a fixed order and indentation so the
 * output is stable enough to compare byte for byte with golden files
 * (tests/unit/golden/domain_<hv>.xml). What differs between hypervisors:
 *
 *   test  type='test', hvm, the same disk/serial devices as QEMU (the test driver parses
 *         them like any other driver, so the XML path is exercised end to end).
 *   qemu  type='qemu' (TCG) or type='kvm'; virtio disk, serial to a file, virtio balloon
 *         with a stats period (billing samples read balloon.* later).
 *   xen   type='xen'. The image's vm_mode property picks the flavour: "xen" is
 *         paravirtualised (<os><type>xen</type>, the image's kernel/ramdisk booted
 *         directly, or pygrub reading the disk when the image names no kernel; no ACPI,
 *         console on the PV console), anything else is fully virtualised (hvm), which
 *         boots any image. libxl has no virtio block backend, so the disk is a Xen PV disk
 *         (xvda, bus='xen') served by qdisk, which reads qcow2.
 *   lxc   type='lxc', a system container: os type 'exe' running the image's init
 *         (/sbin/init unless the image says otherwise) in a root file system the agent
 *         extracted from a tar image (<filesystem type='mount'> of <uuid>/rootfs on '/');
 *         the console is a pty because the LXC driver supports no other console type.
 *
 * With live resize headroom (agent_boot.max_vcpus/max_ram_mb) the domain's maximums sit
 * above the flavor: <vcpu current='flavor'>max</vcpu> and <memory>max</memory> with
 * <currentMemory>flavor</currentMemory>, so vCPUs and memory can change while it runs.
 *
 * Every string that came from a user (instance name, ids, image ref) or from the operator
 * (instances_dir) goes through agent_xml_escape(). The metadata element is parsed back
 * with libxml2, matching elements by namespace URI, or by name alone when libvirt handed
 * the element back without its namespace (virDomainGetMetadata does that).
 */
#include "domain_xml.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "cleanup.h"
#include "util.h"

/* Bounds a flavor must respect to become a domain: libvirt refuses 0 and QEMU caps vCPUs
 * far below this; memory is capped at 16 TiB so MiB * 1024 never overflows anything. */
#define DOMXML_MAX_VCPUS 4096
#define DOMXML_MAX_RAM_MB (16LL * 1024 * 1024)

static const char *const hv_names[AGENT_HV_MAX] = {
    [AGENT_HV_TEST] = "test",
    [AGENT_HV_QEMU] = "qemu",
    [AGENT_HV_XEN] = "xen",
    [AGENT_HV_LXC] = "lxc",
};

static const char *const virt_names[AGENT_VIRT_MAX] = {
    [AGENT_VIRT_AUTO] = "auto",
    [AGENT_VIRT_KVM] = "kvm",
    [AGENT_VIRT_QEMU] = "qemu",
};

const char *agent_hv_name(agent_hv_type hv)
{
    return (unsigned)hv < AGENT_HV_MAX ? hv_names[hv] : "unknown";
}

int agent_hv_from_libvirt(const char *conn_type, agent_hv_type *out)
{
    if (!conn_type)
        return -ENOTSUP;
    for (int i = 0; i < AGENT_HV_MAX; i++) {
        if (strcasecmp(conn_type, hv_names[i]) == 0) {
            *out = (agent_hv_type)i;
            return 0;
        }
    }
    return -ENOTSUP;
}

int agent_virt_type_parse(const char *s, agent_virt_type *out)
{
    if (!s)
        return -EINVAL;
    for (int i = 0; i < AGENT_VIRT_MAX; i++) {
        if (strcasecmp(s, virt_names[i]) == 0) {
            *out = (agent_virt_type)i;
            return 0;
        }
    }
    return -EINVAL;
}

void agent_domain_name(const char *uuid, char out[AGENT_DOMAIN_NAME_MAX])
{
    snprintf(out, AGENT_DOMAIN_NAME_MAX, "instance-%s", uuid);
}

/* The escaped form of one byte, or NULL when it is written as is. XML 1.0 forbids most
 * C0 control characters even as references, and libvirt would refuse the whole document,
 * so they become '?' rather than an error: a name is not worth a failed boot. */
static const char *escape_of(unsigned char c)
{
    switch (c) {
    case '&': return "&amp;";
    case '<': return "&lt;";
    case '>': return "&gt;";
    case '"': return "&quot;";
    case '\'': return "&apos;";
    case '\t': case '\n': case '\r': return NULL;
    default: return c < 0x20 || c == 0x7f ? "?" : NULL;
    }
}

size_t agent_xml_escape(const char *s, char *out, size_t size)
{
    size_t need = 0, used = 0;
    bool full = false;

    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        const char *rep = escape_of(*p);
        size_t n = rep ? strlen(rep) : 1;
        /* Never cut an entity in half: stop at the first piece that does not fit. */
        if (!full && used + n < size) {
            if (rep)
                memcpy(out + used, rep, n);
            else
                out[used] = (char)*p;
            used += n;
        } else {
            full = true;
        }
        need += n;
    }
    if (size > 0)
        out[used] = '\0';
    return need;
}

/* Write s escaped to f, streaming (no size limit beyond the caller's string). */
static void put_esc(FILE *f, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        const char *rep = escape_of(*p);
        if (rep)
            fputs(rep, f);
        else
            fputc(*p, f);
    }
}

static int validate_spec(const cl_msg_instance *inst, cl_error *err)
{
    if (!cl_uuid_valid(inst->uuid))
        return cl_error_set(err, CL_E_BAD_REQUEST, "instance uuid '%.40s' is not a UUID",
                            inst->uuid);
    if (inst->flavor.vcpus < 1 || inst->flavor.vcpus > DOMXML_MAX_VCPUS)
        return cl_error_set(err, CL_E_BAD_REQUEST, "flavor vcpus %" PRId64
                            " is outside 1..%d", inst->flavor.vcpus, DOMXML_MAX_VCPUS);
    if (inst->flavor.ram_mb < 1 || inst->flavor.ram_mb > DOMXML_MAX_RAM_MB)
        return cl_error_set(err, CL_E_BAD_REQUEST, "flavor ram %" PRId64
                            " MB is outside 1..%lld", inst->flavor.ram_mb, DOMXML_MAX_RAM_MB);
    return 0;
}

/* The <nube:instance> element, indented by `indent` spaces. */
static void put_metadata(FILE *f, const cl_msg_instance *inst, int indent)
{
    const cl_flavor *fl = &inst->flavor;
    int in = indent + 2;

    fprintf(f, "%*s<" NUBE_XMLNS_PREFIX ":instance xmlns:" NUBE_XMLNS_PREFIX "=\"" NUBE_XMLNS
            "\">\n", indent, "");
    fprintf(f, "%*s<nube:uuid>", in, "");
    put_esc(f, inst->uuid);
    fprintf(f, "</nube:uuid>\n%*s<nube:name>", in, "");
    put_esc(f, inst->name);
    fprintf(f, "</nube:name>\n%*s<nube:project>", in, "");
    put_esc(f, inst->project_id);
    fprintf(f, "</nube:project>\n%*s<nube:user>", in, "");
    put_esc(f, inst->user_id);
    fprintf(f, "</nube:user>\n%*s<nube:flavor id=\"", in, "");
    put_esc(f, fl->id);
    fputs("\" name=\"", f);
    put_esc(f, fl->name);
    fprintf(f, "\" vcpus=\"%" PRId64 "\" ram_mb=\"%" PRId64 "\" disk_gb=\"%" PRId64
            "\" ephemeral_gb=\"%" PRId64 "\" swap_mb=\"%" PRId64 "\"/>\n",
            fl->vcpus, fl->ram_mb, fl->disk_gb, fl->ephemeral_gb, fl->swap_mb);
    fprintf(f, "%*s<nube:image>", in, "");
    put_esc(f, inst->image_ref);
    fprintf(f, "</nube:image>\n%*s</nube:instance>\n", indent, "");
}

/* <dir>/<uuid>/<file>, escaped, as an attribute value. */
static void put_path(FILE *f, const char *dir, const char *uuid, const char *file)
{
    put_esc(f, dir);
    fputc('/', f);
    put_esc(f, uuid);
    fputc('/', f);
    put_esc(f, file);
}

static const char *domain_type(agent_hv_type hv, agent_virt_type virt)
{
    switch (hv) {
    case AGENT_HV_TEST: return "test";
    case AGENT_HV_XEN: return "xen";
    case AGENT_HV_LXC: return "lxc";
    case AGENT_HV_QEMU:
        /* The driver resolves auto at open by a probe boot (driver_libvirt.c): on the
         * hosts nube is developed on, /dev/kvm exists but type='kvm' guests hang before
         * the first BIOS byte (see the libvirt recipes, section 2). An unresolved auto
         * means TCG, the choice that always boots. */
        return virt == AGENT_VIRT_KVM ? "kvm" : "qemu";
    case AGENT_HV_MAX: break;
    }
    return NULL;
}

bool agent_vm_mode_is_pv(const char *vm_mode)
{
    return vm_mode && strcasecmp(vm_mode, "xen") == 0;
}

static bool is_xen_pv(agent_hv_type hv, const agent_boot *boot)
{
    return hv == AGENT_HV_XEN && boot && agent_vm_mode_is_pv(boot->vm_mode);
}

static void put_os(FILE *f, agent_hv_type hv, const agent_boot *boot)
{
    bool pv = is_xen_pv(hv, boot);
    bool kernel = boot && boot->kernel && *boot->kernel;

    if (hv == AGENT_HV_LXC) {
        fputs("  <os>\n    <type>exe</type>\n    <init>", f);
        put_esc(f, boot && boot->init && *boot->init ? boot->init : "/sbin/init");
        fputs("</init>\n  </os>\n", f);
        return;
    }
    /* A PV guest without a kernel of its own boots through pygrub, which reads the
     * kernel out of the guest's disk (the <bootloader> sits before <os>). */
    if (pv && !kernel)
        fputs("  <bootloader>/usr/lib/xen/bin/pygrub</bootloader>\n", f);
    fputs(pv ? "  <os>\n    <type arch='x86_64' machine='xenpv'>xen</type>\n"
             : "  <os>\n    <type arch='x86_64'>hvm</type>\n", f);
    if ((hv == AGENT_HV_QEMU || pv) && kernel) {
        /* Direct kernel boot: QEMU loads kernel and initrd itself, no bootloader. */
        fputs("    <kernel>", f);
        put_esc(f, boot->kernel);
        fputs("</kernel>\n", f);
        if (boot->ramdisk && *boot->ramdisk) {
            fputs("    <initrd>", f);
            put_esc(f, boot->ramdisk);
            fputs("</initrd>\n", f);
        }
        if (boot->cmdline && *boot->cmdline) {
            fputs("    <cmdline>", f);
            put_esc(f, boot->cmdline);
            fputs("</cmdline>\n", f);
        }
    } else if (!pv) {
        fputs("    <boot dev='hd'/>\n", f);
    }
    fputs("  </os>\n", f);
    if (hv == AGENT_HV_QEMU || (hv == AGENT_HV_XEN && !pv))
        fputs("  <features>\n    <acpi/>\n    <apic/>\n  </features>\n", f);
}

static void put_nic(FILE *f, const agent_boot *boot)
{
    if (boot->network && *boot->network) {
        fputs("    <interface type='network'>\n      <source network='", f);
        put_esc(f, boot->network);
        fputs("'/>\n", f);
    } else if (boot->user_net) {
        fputs("    <interface type='user'>\n", f);
    } else {
        return;
    }
    if (boot->mac && *boot->mac) {
        fputs("      <mac address='", f);
        put_esc(f, boot->mac);
        fputs("'/>\n", f);
    }
    fputs("      <model type='virtio'/>\n    </interface>\n", f);
}

static void put_devices(FILE *f, const cl_msg_instance *inst, agent_hv_type hv,
                        const char *dir, const agent_boot *boot)
{
    fputs("  <devices>\n", f);
    if (hv == AGENT_HV_LXC) {
        fputs("    <filesystem type='mount' accessmode='passthrough'>\n      <source dir='", f);
        if (boot && boot->rootfs && *boot->rootfs)
            put_esc(f, boot->rootfs);
        else
            put_path(f, dir, inst->uuid, "rootfs");
        fputs("'/>\n      <target dir='/'/>\n    </filesystem>\n"
              "    <console type='pty'>\n      <target type='lxc' port='0'/>\n"
              "    </console>\n  </devices>\n", f);
        return;
    }
    fputs("    <disk type='file' device='disk'>\n"
          "      <driver name='qemu' type='qcow2'/>\n      <source file='", f);
    put_path(f, dir, inst->uuid, "disk");
    fputs(hv == AGENT_HV_XEN ? "'/>\n      <target dev='xvda' bus='xen'/>\n"
                             : "'/>\n      <target dev='vda' bus='virtio'/>\n", f);
    if (is_xen_pv(hv, boot)) {
        /* A PV guest has no emulated UART: its console is the PV console. */
        fputs("    </disk>\n    <console type='pty'>\n      <target type='xen' port='0'/>\n"
              "    </console>\n  </devices>\n", f);
        return;
    }
    fputs("    </disk>\n    <serial type='file'>\n      <source path='", f);
    put_path(f, dir, inst->uuid, "console.log");
    fputs("' append='on'/>\n      <target port='0'/>\n    </serial>\n", f);
    if (hv == AGENT_HV_QEMU && boot)
        put_nic(f, boot);
    if (hv == AGENT_HV_QEMU)
        fputs("    <memballoon model='virtio'>\n      <stats period='10'/>\n"
              "    </memballoon>\n", f);
    fputs("  </devices>\n", f);
}

/* Close the memstream and hand over its buffer, or free it on a write error. */
static int finish_stream(FILE *f, char **buf, char **out_xml, cl_error *err)
{
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad) {
        free(*buf);
        *buf = NULL;
        return cl_error_set(err, CL_E_INTERNAL, "out of memory building domain XML");
    }
    *out_xml = TAKE_PTR(*buf);
    return 0;
}

int agent_domain_xml(const cl_msg_instance *inst, agent_hv_type hv, agent_virt_type virt,
                     const char *instances_dir, char **out_xml, cl_error *err)
{
    return agent_domain_xml_ex(inst, hv, virt, instances_dir, NULL, out_xml, err);
}

int agent_domain_xml_ex(const cl_msg_instance *inst, agent_hv_type hv, agent_virt_type virt,
                        const char *instances_dir, const agent_boot *boot, char **out_xml,
                        cl_error *err)
{
    const char *type = domain_type(hv, virt);
    char name[AGENT_DOMAIN_NAME_MAX];
    char *buf = NULL;
    size_t len = 0;
    int r;

    if (!type)
        return cl_error_set(err, CL_E_INTERNAL, "unknown hypervisor type %d", (int)hv);
    r = validate_spec(inst, err);
    if (r < 0)
        return r;
    if (!instances_dir || !*instances_dir)
        return cl_error_set(err, CL_E_INTERNAL, "instances_dir is empty");

    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory building domain XML");

    agent_domain_name(inst->uuid, name);
    fprintf(f, "<domain type='%s'>\n  <name>%s</name>\n  <uuid>%s</uuid>\n", type, name,
            inst->uuid);
    fputs("  <metadata>\n", f);
    put_metadata(f, inst, 4);
    fputs("  </metadata>\n", f);
    int64_t max_ram = inst->flavor.ram_mb, max_vcpus = inst->flavor.vcpus;
    if (boot && boot->max_ram_mb > max_ram)
        max_ram = boot->max_ram_mb < DOMXML_MAX_RAM_MB ? boot->max_ram_mb : DOMXML_MAX_RAM_MB;
    if (boot && boot->max_vcpus > max_vcpus)
        max_vcpus = boot->max_vcpus < DOMXML_MAX_VCPUS ? boot->max_vcpus : DOMXML_MAX_VCPUS;
    fprintf(f, "  <memory unit='MiB'>%" PRId64 "</memory>\n"
            "  <currentMemory unit='MiB'>%" PRId64 "</currentMemory>\n",
            max_ram, inst->flavor.ram_mb);
    if (max_vcpus > inst->flavor.vcpus)
        fprintf(f, "  <vcpu placement='static' current='%" PRId64 "'>%" PRId64 "</vcpu>\n",
                inst->flavor.vcpus, max_vcpus);
    else
        fprintf(f, "  <vcpu placement='static'>%" PRId64 "</vcpu>\n", inst->flavor.vcpus);
    put_os(f, hv, boot);
    fputs("  <clock offset='utc'/>\n  <on_poweroff>destroy</on_poweroff>\n"
          "  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n", f);
    put_devices(f, inst, hv, instances_dir, boot);
    fputs("</domain>\n", f);
    return finish_stream(f, &buf, out_xml, err);
}

int agent_metadata_xml(const cl_msg_instance *inst, char **out_xml, cl_error *err)
{
    char *buf = NULL;
    size_t len = 0;

    if (!cl_uuid_valid(inst->uuid))
        return cl_error_set(err, CL_E_BAD_REQUEST, "instance uuid is not a UUID");
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory building metadata XML");
    put_metadata(f, inst, 0);
    return finish_stream(f, &buf, out_xml, err);
}

/* ---- parsing the metadata back ---- */

static void xml_freep(xmlChar **p)
{
    if (*p)
        xmlFree(*p);
}
static void xml_doc_freep(xmlDocPtr *p)
{
    if (*p)
        xmlFreeDoc(*p);
}

/* An element of ours: in NUBE_XMLNS, or in no namespace at all, because
 * virDomainGetMetadata() returns the element with its namespace stripped (the caller
 * already chose the namespace). Another namespace is someone else's element. */
static bool is_nube(const xmlNode *n, const char *local)
{
    if (n->type != XML_ELEMENT_NODE || strcmp((const char *)n->name, local) != 0)
        return false;
    return !n->ns || (n->ns->href && strcmp((const char *)n->ns->href, NUBE_XMLNS) == 0);
}

static void copy_content(xmlNode *n, char *out, size_t outlen)
{
    _cleanup_(xml_freep) xmlChar *c = xmlNodeGetContent(n);
    cl_strlcpy(out, c ? (const char *)c : "", outlen);
}

static void copy_attr(xmlNode *n, const char *attr, char *out, size_t outlen)
{
    _cleanup_(xml_freep) xmlChar *c = xmlGetProp(n, (const xmlChar *)attr);
    cl_strlcpy(out, c ? (const char *)c : "", outlen);
}

/* Integer attribute; absent or malformed reads as 0 (the spec is rebuilt best effort). */
static int64_t int_attr(xmlNode *n, const char *attr)
{
    _cleanup_(xml_freep) xmlChar *c = xmlGetProp(n, (const xmlChar *)attr);
    int64_t v = 0;
    if (c)
        (void)cl_parse_int64((const char *)c, &v);
    return v;
}

int agent_metadata_parse(const char *xml, cl_msg_instance *out, cl_error *err)
{
    cl_msg_instance m;
    memset(&m, 0, sizeof(m));

    if (!xml)
        return cl_error_set(err, CL_E_BAD_REQUEST, "no nube metadata");
    /* NONET: never fetch anything; no entity expansion beyond the predefined five. */
    _cleanup_(xml_doc_freep) xmlDocPtr doc =
        xmlReadMemory(xml, (int)strnlen(xml, 1 << 20), "metadata.xml", NULL,
                      XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc)
        return cl_error_set(err, CL_E_BAD_REQUEST, "nube metadata is not well-formed XML");
    xmlNode *root = xmlDocGetRootElement(doc);
    if (!root || !is_nube(root, "instance"))
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "metadata root is not <instance xmlns='" NUBE_XMLNS "'>");

    for (xmlNode *n = root->children; n; n = n->next) {
        if (is_nube(n, "uuid"))
            copy_content(n, m.uuid, sizeof(m.uuid));
        else if (is_nube(n, "name"))
            copy_content(n, m.name, sizeof(m.name));
        else if (is_nube(n, "project"))
            copy_content(n, m.project_id, sizeof(m.project_id));
        else if (is_nube(n, "user"))
            copy_content(n, m.user_id, sizeof(m.user_id));
        else if (is_nube(n, "image"))
            copy_content(n, m.image_ref, sizeof(m.image_ref));
        else if (is_nube(n, "flavor")) {
            copy_attr(n, "id", m.flavor.id, sizeof(m.flavor.id));
            copy_attr(n, "name", m.flavor.name, sizeof(m.flavor.name));
            m.flavor.vcpus = int_attr(n, "vcpus");
            m.flavor.ram_mb = int_attr(n, "ram_mb");
            m.flavor.disk_gb = int_attr(n, "disk_gb");
            m.flavor.ephemeral_gb = int_attr(n, "ephemeral_gb");
            m.flavor.swap_mb = int_attr(n, "swap_mb");
        }
    }
    if (!cl_uuid_valid(m.uuid))
        return cl_error_set(err, CL_E_BAD_REQUEST, "nube metadata has no valid uuid");
    *out = m;
    return 0;
}

/* ---- host capabilities ---- */

int agent_caps_parse(const char *xml, char *arch, size_t arch_len, char *model,
                     size_t model_len)
{
    if (arch_len)
        arch[0] = '\0';
    if (model_len)
        model[0] = '\0';
    if (!xml)
        return -EINVAL;
    _cleanup_(xml_doc_freep) xmlDocPtr doc =
        xmlReadMemory(xml, (int)strnlen(xml, 1 << 24), "capabilities.xml", NULL,
                      XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc)
        return -EINVAL;
    xmlNode *root = xmlDocGetRootElement(doc);
    if (!root || strcmp((const char *)root->name, "capabilities") != 0)
        return -EINVAL;
    for (xmlNode *h = root->children; h; h = h->next) {
        if (h->type != XML_ELEMENT_NODE || strcmp((const char *)h->name, "host") != 0)
            continue;
        for (xmlNode *c = h->children; c; c = c->next) {
            if (c->type != XML_ELEMENT_NODE || strcmp((const char *)c->name, "cpu") != 0)
                continue;
            for (xmlNode *n = c->children; n; n = n->next) {
                if (n->type != XML_ELEMENT_NODE)
                    continue;
                if (strcmp((const char *)n->name, "arch") == 0)
                    copy_content(n, arch, arch_len);
                else if (strcmp((const char *)n->name, "model") == 0)
                    copy_content(n, model, model_len);
            }
        }
    }
    return arch_len && arch[0] ? 0 : -EINVAL;
}
