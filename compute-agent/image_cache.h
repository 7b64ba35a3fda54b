/*
 * image_cache.h - the agent's per-host cache of base images fetched from nube-image.
 *
 * On spawn the agent asks nube-image (Image v2) what the instance's image_ref is. The
 * disk image, and for AMI-style images the kernel (kernel_id, disk_format aki) and
 * ramdisk (ramdisk_id, ari) it names, are downloaded with libcurl into a temp file of
 * the cache directory while three checks run on the bytes: the size, the sha512 the
 * store published (os_hash_value), and the format inspector of libcloud
 * (image_inspect.h) with the declared disk_format, so the agent never trusts the
 * store's word about a file it will hand to QEMU. Only then is the file fsynced, made
 * read-only and renamed to <cache_dir>/<sha256>: one copy per content, shared by every
 * instance of the host, whatever image ids name it.
 *
 * Which instance uses which entry is recorded in <cache_dir>/refs/<instance uuid>
 * (written before the instance's disk overlay is created). An entry is removed by
 * agent_image_cache_sweep() once no instance uses it (an instance stops using it when its
 * directory under instances_dir is gone) and it has been idle for max_idle_s.
 *
 * Authentication to nube-image: with token_key_file (the shared key nube-api seals
 * tokens with) the cache mints a token per request, valid 5 minutes, scoped to the
 * instance's project with the reader role, so an instance can only boot images its
 * project may see; otherwise it sends the static token (nube-image's admin token).
 *
 * Thread-safety: resolve and sweep may run on different threads (a mutex orders the
 * renames, refs and removals; downloads run outside it).
 */
#ifndef AGENT_IMAGE_CACHE_H
#define AGENT_IMAGE_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "domain_xml.h"
#include "errors.h"
#include "messages.h"

typedef struct agent_image_cache agent_image_cache;

typedef struct agent_image_cache_opts {
    const char *endpoint;       /* nube-image, e.g. "http://127.0.0.1:9292" */
    const char *token;          /* static token ("" = none) */
    const char *token_key_file; /* mint tokens with this key ("" = use token) */
    const char *cache_dir;      /* created (0700) when missing */
    const char *instances_dir;  /* <instances_dir>/<uuid> exists while an instance lives */
    int64_t max_idle_s;         /* unused entries older than this are removed */
    uint64_t max_virtual_size;  /* inspector limit, bytes (0 = 1 TiB) */
} agent_image_cache_opts;

/* The files an instance boots from. Paths are "" when the image has no such part. */
typedef struct agent_image_files {
    char kernel[4096];
    char ramdisk[4096];
    char disk[4096];
    char disk_format[16]; /* "qcow2" or "raw": the overlay's backing format (-F) */
    char cmdline[1024];   /* os_command_line property, default "console=ttyS0" */
} agent_image_files;

/* Open the cache: create the directories, remove temp files a crash left behind. Returns
 * 0 and *out, or negative errno with err (the key file unreadable, ...). */
int agent_image_cache_open(const agent_image_cache_opts *opts, agent_image_cache **out,
                           cl_error *err);

/* Free; accepts NULL. */
void agent_image_cache_free(agent_image_cache *c);

/* Resolve inst->image_ref through nube-image and make its files present and verified in
 * the cache, recorded as used by inst->uuid. Returns 0 and *out; -ENOENT when image_ref is
 * not a UUID or nube-image does not know it (the caller may look elsewhere); other
 * negative errno with err saying what failed (not active, hash mismatch, refused format,
 * store unreachable ...), meant as the instance's fault. Blocks for the downloads. */
int agent_image_cache_resolve(agent_image_cache *c, const cl_msg_instance *inst,
                              agent_image_files *out, cl_error *err);

/* The driver's hook (driver_libvirt.c, prepare_boot): resolve inst and fill the boot
 * description, paths[0..2] (kernel, ramdisk, base disk) and cmdline being the storage its
 * pointers refer to; *base and *base_fmt describe the overlay's backing file. Same
 * returns as agent_image_cache_resolve (-ENOENT: look in the local image_dir). */
int agent_image_cache_prepare(agent_image_cache *c, const cl_msg_instance *inst,
                              agent_boot *boot, char paths[3][4096], char *cmdline,
                              size_t cmdlen, const char **base, const char **base_fmt,
                              cl_error *err);

/* Forget the instances whose directory is gone, then remove the entries no instance uses
 * that were last used more than max_idle_s before now_ms. Returns how many entries were
 * removed. */
int agent_image_cache_sweep(agent_image_cache *c, int64_t now_ms);

/* Counters (metrics, tests): files downloaded, and files found in the cache. */
uint64_t agent_image_cache_downloads(const agent_image_cache *c);
uint64_t agent_image_cache_hits(const agent_image_cache *c);

#endif
