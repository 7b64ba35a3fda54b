/*
 * cleanup.h - scope-bound ownership helpers used across nube.
 *
 * Every owned pointer or fd in nube is declared with one of these attributes so it is
 * released on every path out of its scope (the idiom of systemd's _cleanup_free_ and
 * GLib's g_autofree). TAKE_PTR() makes a hand-over of ownership visible at the call site.
 * Helpers for third-party types live next to the module that wraps them
 * (_cleanup_json_ in json.h, _cleanup_stmt_ in db.h, ...).
 */
#ifndef CL_CLEANUP_H
#define CL_CLEANUP_H

#include <stdlib.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))

static inline void cl_freep(void *p) { free(*(void **)p); }
static inline void cl_closep(int *fd)
{
    if (*fd >= 0)
        close(*fd);
}

#define _cleanup_free_ _cleanup_(cl_freep)
#define _cleanup_close_ _cleanup_(cl_closep)

/* Hand over ownership: returns the pointer and clears the variable, so its cleanup
 * attribute no longer frees it. */
#define TAKE_PTR(p)                                                                        \
    ({                                                                                     \
        __typeof__(p) _tp_ = (p);                                                          \
        (p) = NULL;                                                                        \
        _tp_;                                                                              \
    })

#define TAKE_FD(fd)                                                                        \
    ({                                                                                     \
        int _tfd_ = (fd);                                                                  \
        (fd) = -1;                                                                         \
        _tfd_;                                                                             \
    })

#define CL_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
