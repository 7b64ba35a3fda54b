/*
 * auth.h - who is calling: the identity a verified token carries, and the role checks
 * every nube HTTP service applies with it (admin / member / reader, as in Keystone's
 * default roles).
 *
 * Policy, in one place:
 *  - admin: sees and manages everything, in every project;
 *  - member: reads and manages its own project's resources;
 *  - reader: reads its own project's resources;
 *  - a project never sees another project's objects: such requests answer 404, as if the
 *    object did not exist.
 */
#ifndef CL_AUTH_H
#define CL_AUTH_H

#include <stdbool.h>
#include <stdint.h>

#include "model.h"

typedef enum { CL_ROLE_READER, CL_ROLE_MEMBER, CL_ROLE_ADMIN, CL_ROLE_MAX } cl_role;
#define CL_ROLE_BIT(r) (1u << (r))

typedef struct cl_auth {
    char user_id[CL_ID_MAX];
    char user_name[CL_NAME_MAX];
    char domain_id[CL_ID_MAX];   /* the user's domain ("default") */
    char project_id[CL_ID_MAX];  /* "" for unscoped tokens */
    char project_name[CL_NAME_MAX];
    unsigned roles;              /* CL_ROLE_BIT(...) set on the project */
    int64_t issued_ms, expires_ms;
    char audit_id[32];
} cl_auth;

static inline bool cl_auth_is_admin(const cl_auth *a)
{
    return (a->roles & CL_ROLE_BIT(CL_ROLE_ADMIN)) != 0;
}

/* May the caller read objects of project_id? */
static inline bool cl_auth_can_read(const cl_auth *a, const char *project_id)
{
    if (cl_auth_is_admin(a))
        return true;
    return a->roles != 0 && project_id && a->project_id[0] &&
           __builtin_strcmp(a->project_id, project_id) == 0;
}

/* May the caller create/change/delete objects of project_id? (member or admin) */
static inline bool cl_auth_can_write(const cl_auth *a, const char *project_id)
{
    if (cl_auth_is_admin(a))
        return true;
    return (a->roles & CL_ROLE_BIT(CL_ROLE_MEMBER)) && project_id && a->project_id[0] &&
           __builtin_strcmp(a->project_id, project_id) == 0;
}

#endif
