/*
 * inspect.h - streaming disk image format inspector of nube-image.
 *
 * Every byte of an upload passes through an img_inspector as it arrives. The inspector
 * keeps only the first IMG_INSPECT_HEAD bytes (every header nube needs to judge lies
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
#ifndef IMG_INSPECT_H
#define IMG_INSPECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes kept from the start of the image: covers the ISO 9660 volume descriptor at
 * 0x8001 and the embedded descriptor of the sparse VMDKs qemu-img and VMware write. */
#define IMG_INSPECT_HEAD (64 * 1024)
#define IMG_REASON_MAX 256

typedef enum {
    IMG_FMT_RAW,
    IMG_FMT_QCOW2,
    IMG_FMT_VMDK,
    IMG_FMT_ISO,
    IMG_FMT_AKI,
    IMG_FMT_ARI,
    IMG_FMT_GPT,
    IMG_FMT_MAX
} img_format;

/* "raw", "qcow2", ... (IMG_FMT_GPT is "gpt"); NULL for out-of-range values. */
const char *img_format_name(img_format fmt);

/* Map a Glance disk_format to the format the bytes must have. "ami" is a raw disk.
 * Returns 0, or -ENOTSUP for formats Glance knows but nube refuses (vhd, vhdx, vdi,
 * ploop), or -EINVAL for unknown names. */
int img_format_parse(const char *disk_format, img_format *out);

typedef struct img_inspector img_inspector;

/* New inspector for an upload declared as `declared`, refusing virtual sizes above
 * max_virtual_size bytes. Returns NULL on allocation failure. Free with
 * img_inspector_free(). */
img_inspector *img_inspector_new(img_format declared, uint64_t max_virtual_size);

/* Free; accepts NULL. */
void img_inspector_free(img_inspector *insp);

/* Feed the next chunk. Returns 0 to go on, or -EINVAL once the head is complete and the
 * image is already known to be refused (img_inspector_reason() says why): the caller
 * can stop reading the upload there. Calling again after a refusal keeps returning
 * -EINVAL. */
int img_inspector_feed(img_inspector *insp, const void *data, size_t len);

/* Judge the whole image after the last chunk. Returns 0 (accepted; *out_fmt is the
 * detected format, *out_virtual_size the guest-visible size) or -EINVAL with a reason.
 * Outputs are untouched on failure. */
int img_inspector_finish(img_inspector *insp, img_format *out_fmt,
                         uint64_t *out_virtual_size);

/* The refusal reason ("" when none). Valid while insp lives. */
const char *img_inspector_reason(const img_inspector *insp);

/* Bytes fed so far. */
uint64_t img_inspector_bytes(const img_inspector *insp);

#endif
