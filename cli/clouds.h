/*
 * clouds.h - where the nube CLI finds its credentials: clouds.yaml, as openstacksdk reads it.
 *
 * An operator who already has a clouds.yaml for the openstack client uses the same file
 * and the same cloud name with nube. Files are searched in openstacksdk's order
 * ($OS_CLIENT_CONFIG_FILE first, then ./clouds.yaml, ~/.config/openstack/clouds.yaml,
 * /etc/openstack/clouds.yaml); the first existing file that defines the cloud wins.
 * Without a cloud name, the usual OS_* environment variables describe the cloud instead.
 */
#ifndef CLI_CLOUDS_H
#define CLI_CLOUDS_H

#include <stddef.h>

#include "errors.h"

#define CLI_FIELD_MAX 1024 /* any one clouds.yaml value, bytes with the NUL */
#define CLI_PATH_MAX 4096
#define CLI_SEARCH_MAX 4   /* files in the search path */
#define CLI_CLOUDS_FILE_MAX (1024 * 1024) /* a clouds.yaml larger than this is refused */

typedef struct cli_cloud {
    char name[CLI_FIELD_MAX];      /* the cloud's key in clouds.yaml ("envvars" from OS_*) */
    char file[CLI_PATH_MAX];       /* the file it came from ("" for the environment) */
    char auth_url[CLI_FIELD_MAX];  /* as written; see cli_auth_url_normalize() */
    char username[CLI_FIELD_MAX];
    char user_id[CLI_FIELD_MAX];
    char password[CLI_FIELD_MAX];
    char project_name[CLI_FIELD_MAX];
    char project_id[CLI_FIELD_MAX];
    char user_domain_name[CLI_FIELD_MAX];
    char project_domain_name[CLI_FIELD_MAX];
    char region_name[CLI_FIELD_MAX]; /* "" = any region */
    char interface[CLI_FIELD_MAX];   /* "public" unless set */
} cli_cloud;

/* Fill paths[0..max) with the clouds.yaml search path for the current environment
 * (whether or not the files exist) and return how many were written. Reads
 * OS_CLIENT_CONFIG_FILE and HOME. */
size_t cli_clouds_search_path(char paths[][CLI_PATH_MAX], size_t max);

/* Read the cloud called name from one clouds.yaml file (libyaml document API).
 * Returns 0 and fills *out; -ENOENT when the file does not exist or does not define the
 * cloud; -EINVAL when the file is malformed or the entry lacks a required field
 * (auth.auth_url, auth.username or user_id, auth.password, auth.project_name or
 * project_id); another negative errno when it cannot be read. err (CL_E_BAD_REQUEST)
 * names the file and what is wrong in every failure case. *out is untouched on failure. */
int cli_clouds_load_file(const char *path, const char *name, cli_cloud *out,
                         cl_error *err);

/* Find the cloud called name along cli_clouds_search_path(). Returns 0, -ENOENT
 * ("Cloud 'x' was not found in ..." listing the files searched), or the error of the
 * first file that exists but cannot be used (a malformed file stops the search rather
 * than silently falling through to a different cloud). */
int cli_clouds_load(const char *name, cli_cloud *out, cl_error *err);

/* Describe the cloud from OS_AUTH_URL, OS_USERNAME / OS_USER_ID, OS_PASSWORD,
 * OS_PROJECT_NAME / OS_PROJECT_ID, OS_USER_DOMAIN_NAME, OS_PROJECT_DOMAIN_NAME,
 * OS_REGION_NAME and OS_INTERFACE (an openrc file). Returns 0, -ENOENT when OS_AUTH_URL
 * is unset, or -EINVAL when a required variable is missing; err says which. */
int cli_cloud_from_env(cli_cloud *out, cl_error *err);

/* Turn an auth_url into the Identity v3 base: trailing slashes dropped, "/v3" appended
 * unless the last path segment already names a version ("v3", "v2.0"). Returns 0 or
 * -EINVAL (empty, not http(s)://) / -ENAMETOOLONG (does not fit outlen). */
int cli_auth_url_normalize(const char *auth_url, char *out, size_t outlen);

#endif
