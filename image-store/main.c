/*
 * main.c - nube-image: the image service (Image API v2) of nube.
 * Everything lives in img_lib (service.c and friends); this is the daemon lifecycle.
 */
#include <string.h>

#include "daemon.h"
#include "img.h"
#include "log.h"

static const cl_daemon_info info = {
    .name = "nube-image",
    .summary = "image service (Image API v2) with streaming format validation",
    .description =
        "nube-image stores the disk images servers boot from. It speaks the Image API v2 "
        "(Glance dialect) on [image] listen:port, streams uploads to a content-addressed "
        "blob store under <state_dir>/images/blobs while inspecting their format, and "
        "refuses images that could reach a host's files (qcow2 backing or data files, "
        "VMDK extents naming other files, formats other than declared).",
    .default_config = "/etc/nube/nube-image.conf",
    .keys = img_config_keys,
};

int main(int argc, char **argv)
{
    img_config cfg;
    img_service *svc = NULL;
    cl_error err = {0};
    cl_daemon_info di = info;
    int rc;

    memset(&cfg, 0, sizeof(cfg));
    di.nkeys = img_config_nkeys;
    if (cl_daemon_init(&di, argc, argv, &cfg, &rc) <= 0)
        return rc;
    if (img_service_start(&cfg, &svc, &err) < 0) {
        cl_err("image", "cannot start: %s", err.message);
        cl_daemon_done(&di, &cfg);
        return 1;
    }
    cl_daemon_wait();
    img_service_stop(svc);
    cl_daemon_done(&di, &cfg);
    return 0;
}
