/*
 * domain_xml.h - libvirt domain XML for nube instances, and the nube metadata inside it.
 *
 * One generator for every hypervisor the agent can drive: the libvirt URI decides the
 * hypervisor (virConnectGetType), the instance spec decides the rest. The generated
 * document carries a <metadata> element in nube's own namespace; that element is what
 * marks a libvirt domain as "ours" (the agent never touches domains without it) and what
 * lets a restarted agent adopt a domain it has no local record for.
 *
 * Pure functions, no libvirt calls: tested byte for byte against golden files.
 */
#ifndef AGENT_DOMAIN_XML_H
#define AGENT_DOMAIN_XML_H

#include <stdbool.h>
#include <stddef.h>

#include "errors.h"
#include "messages.h"

/* XML namespace of the <metadata> child nube writes, and the prefix it uses. */
#define NUBE_XMLNS "http://nube.dev/xmlns/instance/1.0"
#define NUBE_XMLNS_PREFIX "nube"

/* "instance-" + 36-character uuid + NUL. */
#define AGENT_DOMAIN_NAME_MAX 48

/* The hypervisor behind a libvirt connection. */
typedef enum {
    AGENT_HV_TEST, /* libvirt's in-process test driver (simulated hosts) */
    AGENT_HV_QEMU, /* qemu:///system: KVM or TCG */
    AGENT_HV_XEN,  /* xen:///system (libxl) */
    AGENT_HV_LXC,  /* lxc:///system: system containers */
    AGENT_HV_MAX
} agent_hv_type;

/* [agent] virt_type: how QEMU guests are accelerated. */
typedef enum { AGENT_VIRT_AUTO, AGENT_VIRT_KVM, AGENT_VIRT_QEMU, AGENT_VIRT_MAX } agent_virt_type;

/* Lower-case name ("test", "qemu", "xen", "lxc"); used for golden file names. */
const char *agent_hv_name(agent_hv_type hv);

/* Map virConnectGetType()'s answer ("Test", "QEMU", "Xen", "LXC"; case-insensitive) to a
 * type. Returns 0, or -ENOTSUP for hypervisors nube does not drive. */
int agent_hv_from_libvirt(const char *conn_type, agent_hv_type *out);

/* Parse "auto" / "kvm" / "qemu". Returns 0 or -EINVAL. */
int agent_virt_type_parse(const char *s, agent_virt_type *out);

/* The libvirt domain name of an instance: "instance-<uuid>" (as Nova's default
 * instance_name_template, with the uuid instead of the database id). */
void agent_domain_name(const char *uuid, char out[AGENT_DOMAIN_NAME_MAX]);

/* Build the domain XML of inst for hypervisor hv.
 * virt: only used for AGENT_HV_QEMU (kvm -> type='kvm', qemu/auto -> type='qemu').
 * instances_dir: the disk lives at <dir>/<uuid>/disk, the console log at
 * <dir>/<uuid>/console.log.
 * Every user-provided string is XML-escaped. Returns 0 and a malloc'd NUL-terminated
 * document in *out_xml (caller frees), or -EINVAL (bad uuid, vcpus/ram out of range,
 * unknown hv) with err filled, or -ENOMEM. */
int agent_domain_xml(const cl_msg_instance *inst, agent_hv_type hv, agent_virt_type virt,
                     const char *instances_dir, char **out_xml, cl_error *err);

/* What the host adds to a QEMU domain beyond the instance spec (agent_domain_xml_ex).
 * Every field is optional (NULL / 0); with all of them unset the document is exactly
 * agent_domain_xml()'s. */
typedef struct agent_boot {
    const char *kernel;   /* direct kernel boot (AMI-style): <os><kernel> */
    const char *ramdisk;  /* <os><initrd>, only with kernel */
    const char *cmdline;  /* <os><cmdline>, only with kernel */
    const char *network;  /* libvirt network name for a virtio NIC (<interface type='network'>) */
    bool user_net;        /* no network: a user-mode (slirp) virtio NIC instead */
    const char *mac;      /* the NIC's MAC ("52:54:00:..."), NULL = let libvirt choose */
    /* Xen: the image's vm_mode property. "xen" = paravirtualised (<os><type>xen</type>,
     * kernel/ramdisk/cmdline above, or pygrub when the image names no kernel); anything
     * else = HVM. */
    const char *vm_mode;
    /* LXC: the container's root file system (a directory the agent extracted), and its
     * init ("" / NULL = /sbin/init). */
    const char *rootfs;
    const char *init;
    /* Live resize headroom ([agent] live_resize): when above the flavor's, the domain is
     * defined with these maximums (<vcpu current=flavor>max</vcpu>, <memory>max</memory>
     * with <currentMemory> = flavor) so virDomainSetVcpusFlags / SetMemoryFlags can grow
     * it while it runs. 0 = no headroom. */
    int64_t max_vcpus;
    int64_t max_ram_mb;
} agent_boot;

/* Is a vm_mode paravirtualised Xen ("xen", case-insensitive)? */
bool agent_vm_mode_is_pv(const char *vm_mode);

/* agent_domain_xml with host extras (QEMU: kernel, NIC; Xen: vm_mode, kernel; LXC:
 * rootfs, init; all: live resize headroom). */
int agent_domain_xml_ex(const cl_msg_instance *inst, agent_hv_type hv, agent_virt_type virt,
                        const char *instances_dir, const agent_boot *boot, char **out_xml,
                        cl_error *err);

/* Build only the <nube:instance> metadata element (what virDomainGetMetadata returns for
 * NUBE_XMLNS, modulo libvirt's reformatting). Same ownership and errors as above. */
int agent_metadata_xml(const cl_msg_instance *inst, char **out_xml, cl_error *err);

/* Parse a <nube:instance> element (as returned by virDomainGetMetadata, which strips the
 * namespace) back into an instance spec. Elements must be in NUBE_XMLNS (any prefix) or
 * in no namespace. Returns 0, or -EINVAL (not XML, wrong element or namespace,
 * missing/invalid uuid) with err. */
int agent_metadata_parse(const char *xml, cl_msg_instance *out, cl_error *err);

/* Write s XML-escaped (& < > " ') into out (size > 0), NUL-terminated, truncating at a
 * character boundary. Returns the length the full escaped string needs (like snprintf).
 * Exposed for tests. */
size_t agent_xml_escape(const char *s, char *out, size_t size);

/* From virConnectGetCapabilities() XML: the host CPU's architecture (<host><cpu><arch>)
 * and model (<host><cpu><model>, "" when libvirt names none, as the test driver).
 * Returns 0 or -EINVAL (not capabilities XML). */
int agent_caps_parse(const char *xml, char *arch, size_t arch_len, char *model,
                     size_t model_len);

#endif
