/*
 * image_inspect.h - the streaming disk image format inspector, shared by nube-image (every
 * upload, as it arrives) and nube-agent (every downloaded base image, again, before first
 * use: the agent trusts the bytes it holds, not the store's word about them).
 *
 * Every byte of an image passes through a cl_img_inspector as it arrives. The inspector
 * keeps only the first CL_IMG_INSPECT_HEAD bytes (every header nube needs to judge lies
 * there) and counts the rest, so its memory is fixed whatever the image size.
 * It recognises raw, qcow2, vmdk (sparse, embedded descriptor), iso, aki (kernel), ari
 * (ramdisk) and gpt, and refuses the constructions that let an image reach a host's
 * files or resources: qcow2 backing files, external data files, unknown incompatible
 * features and version 1; vmdk descriptor files, flat/split extents and extents naming
 * paths; images that match more than one format; a format other than the one declared;
 * virtual sizes over the limit. Each refusal carries a reason a user can act on.
 *
 * An inspector is used by one thread at a time.
 */
#ifndef CL_IMAGE_INSPECT_H
#define CL_IMAGE_INSPECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes kept from the start of the image: covers the ISO 9660 volume descriptor at
 * 0x8001 and the embedded descriptor of the sparse VMDKs qemu-img and VMware write. */
#define CL_IMG_INSPECT_HEAD (64 * 1024)
#define CL_IMG_REASON_MAX 256

typedef enum {
    CL_IMG_FMT_RAW,
    CL_IMG_FMT_QCOW2,
    CL_IMG_FMT_VMDK,
    CL_IMG_FMT_ISO,
    CL_IMG_FMT_AKI,
    CL_IMG_FMT_ARI,
    CL_IMG_FMT_GPT,
    CL_IMG_FMT_MAX
} cl_img_format;

/* "raw", "qcow2", ... (CL_IMG_FMT_GPT is "gpt"); NULL for out-of-range values. */
const char *cl_img_format_name(cl_img_format fmt);

/* Map a Glance disk_format to the format the bytes must have. "ami" is a raw disk.
 * Returns 0, or -ENOTSUP for formats Glance knows but nube refuses (vhd, vhdx, vdi,
 * ploop), or -EINVAL for unknown names. */
int cl_img_format_parse(const char *disk_format, cl_img_format *out);

typedef struct cl_img_inspector cl_img_inspector;

/* New inspector for an upload declared as `declared`, refusing virtual sizes above
 * max_virtual_size bytes. Returns NULL on allocation failure. Free with
 * cl_img_inspector_free(). */
cl_img_inspector *cl_img_inspector_new(cl_img_format declared, uint64_t max_virtual_size);

/* Free; accepts NULL. */
void cl_img_inspector_free(cl_img_inspector *insp);

/* Feed the next chunk. Returns 0 to go on, or -EINVAL once the head is complete and the
 * image is already known to be refused (cl_img_inspector_reason() says why): the caller
 * can stop reading the upload there. Calling again after a refusal keeps returning
 * -EINVAL. */
int cl_img_inspector_feed(cl_img_inspector *insp, const void *data, size_t len);

/* Judge the whole image after the last chunk. Returns 0 (accepted; *out_fmt is the
 * detected format, *out_virtual_size the guest-visible size) or -EINVAL with a reason.
 * Outputs are untouched on failure. */
int cl_img_inspector_finish(cl_img_inspector *insp, cl_img_format *out_fmt,
                         uint64_t *out_virtual_size);

/* The refusal reason ("" when none). Valid while insp lives. */
const char *cl_img_inspector_reason(const cl_img_inspector *insp);

/* Bytes fed so far. */
uint64_t cl_img_inspector_bytes(const cl_img_inspector *insp);

#endif
