/*
 * image.c - image records of nube-image: the SQLite schema, reads and writes, the
 * visibility rules and the Glance v2 JSON document of an image.
 *
 * The database (image.db, nube-image's alone) holds one row per image; Glance's free
 * form properties and its tags are JSON text columns, since nothing queries inside them.
 * Shared images list their member projects in image_members.
 *
 * Visibility follows Glance v2: public images are seen and listed by everyone,
 * community images are seen by everyone but listed only when asked for
 * (visibility=community), shared images by their owner and accepted members, private
 * ones by their owner only; admin sees everything. img_can_see() is the single rule for
 * single images and the WHERE clause of img_db_list() is the same rule in SQL.
 * All functions here take a cl_db the caller serialises (the service lock).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "img.h"
#include "json.h"
#include "util.h"

static const char *const vis_names[IMG_VIS_MAX] = {
    [IMG_VIS_PRIVATE] = "private", [IMG_VIS_SHARED] = "shared",
    [IMG_VIS_COMMUNITY] = "community", [IMG_VIS_PUBLIC] = "public"};

/**
 * img_visibility_name - "private", "shared", "community" or "public".
 */
const char *img_visibility_name(img_visibility v)
{
    return (unsigned)v < IMG_VIS_MAX ? vis_names[v] : "private";
}

/**
 * img_visibility_parse - 0 and *out, or -EINVAL for other strings.
 */
int img_visibility_parse(const char *s, img_visibility *out)
{
    for (int i = 0; s && i < IMG_VIS_MAX; i++) {
        if (strcmp(s, vis_names[i]) == 0) {
            *out = (img_visibility)i;
            return 0;
        }
    }
    return -EINVAL;
}

/**
 * img_can_see - the read rule of Glance v2 (see the file comment).
 */
bool img_can_see(const img_identity *who, const char *owner, img_visibility vis,
                 bool is_member)
{
    if (who->is_admin || strcmp(who->project_id, owner) == 0)
        return true;
    switch (vis) {
    case IMG_VIS_PUBLIC:
    case IMG_VIS_COMMUNITY:
        return true;
    case IMG_VIS_SHARED:
        return is_member;
    default:
        return false;
    }
}

/**
 * img_can_modify - only the owner project (a member or admin there, not a reader) or an
 * admin changes or deletes an image.
 */
bool img_can_modify(const img_identity *who, const char *owner)
{
    return who->is_admin || (!who->read_only && strcmp(who->project_id, owner) == 0);
}

const cl_db_migration img_db_migrations[] = {
    {1, "CREATE TABLE images ("
        " id TEXT PRIMARY KEY,"
        " name TEXT,"
        " owner TEXT NOT NULL,"
        " status TEXT NOT NULL,"
        " visibility TEXT NOT NULL,"
        " disk_format TEXT,"
        " container_format TEXT,"
        " min_disk INTEGER NOT NULL DEFAULT 0,"
        " min_ram INTEGER NOT NULL DEFAULT 0,"
        " protected INTEGER NOT NULL DEFAULT 0,"
        " os_hidden INTEGER NOT NULL DEFAULT 0,"
        " size INTEGER,"
        " virtual_size INTEGER,"
        " checksum TEXT,"
        " os_hash_value TEXT,"
        " blob TEXT,"
        " reason TEXT,"
        " properties TEXT NOT NULL DEFAULT '{}',"
        " tags TEXT NOT NULL DEFAULT '[]',"
        " created_at INTEGER NOT NULL,"
        " updated_at INTEGER NOT NULL);"
        "CREATE INDEX images_owner ON images(owner);"
        "CREATE INDEX images_blob ON images(blob);"
        "CREATE TABLE image_members ("
        " image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,"
        " member TEXT NOT NULL,"
        " status TEXT NOT NULL DEFAULT 'pending',"
        " PRIMARY KEY (image_id, member));"},
    /* The members API reports when a membership was made and last changed. */
    {2, "ALTER TABLE image_members ADD COLUMN created_at INTEGER NOT NULL DEFAULT 0;"
        "ALTER TABLE image_members ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;"},
};
const size_t img_db_nmigrations = CL_ARRAY_SIZE(img_db_migrations);

#define COLS                                                                               \
    "id, name, owner, status, visibility, disk_format, container_format, min_disk,"        \
    " min_ram, protected, os_hidden, size, virtual_size, checksum, os_hash_value, blob,"   \
    " reason, properties, tags, created_at, updated_at"

/**
 * img_record_clear - release the JSON members of a record (the struct stays).
 */
void img_record_clear(img_record *r)
{
    if (r->properties)
        json_object_put(r->properties);
    if (r->tags)
        json_object_put(r->tags);
    r->properties = NULL;
    r->tags = NULL;
}

static int64_t column_int_or_null(sqlite3_stmt *st, int col)
{
    return sqlite3_column_type(st, col) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, col);
}

static json_object *column_json(sqlite3_stmt *st, int col, json_type want)
{
    const char *s = (const char *)sqlite3_column_text(st, col);
    json_object *o = NULL;

    if (s && cl_json_parse(s, strlen(s), &o, NULL) == 0 && json_object_is_type(o, want))
        return o;
    if (o)
        json_object_put(o);
    return want == json_type_array ? json_object_new_array() : json_object_new_object();
}

static void row_to_record(sqlite3_stmt *st, img_record *r)
{
    char vis[16];

    memset(r, 0, sizeof(*r));
    cl_db_column_text(st, 0, r->id, sizeof(r->id));
    cl_db_column_text(st, 1, r->name, sizeof(r->name));
    cl_db_column_text(st, 2, r->owner, sizeof(r->owner));
    cl_db_column_text(st, 3, r->status, sizeof(r->status));
    cl_db_column_text(st, 4, vis, sizeof(vis));
    if (img_visibility_parse(vis, &r->visibility) < 0)
        r->visibility = IMG_VIS_PRIVATE;
    cl_db_column_text(st, 5, r->disk_format, sizeof(r->disk_format));
    cl_db_column_text(st, 6, r->container_format, sizeof(r->container_format));
    r->min_disk = sqlite3_column_int64(st, 7);
    r->min_ram = sqlite3_column_int64(st, 8);
    r->protected_ = sqlite3_column_int(st, 9) != 0;
    r->os_hidden = sqlite3_column_int(st, 10) != 0;
    r->size = column_int_or_null(st, 11);
    r->virtual_size = column_int_or_null(st, 12);
    cl_db_column_text(st, 13, r->checksum, sizeof(r->checksum));
    cl_db_column_text(st, 14, r->os_hash_value, sizeof(r->os_hash_value));
    cl_db_column_text(st, 15, r->blob, sizeof(r->blob));
    cl_db_column_text(st, 16, r->reason, sizeof(r->reason));
    r->properties = column_json(st, 17, json_type_object);
    r->tags = column_json(st, 18, json_type_array);
    r->created_at = sqlite3_column_int64(st, 19);
    r->updated_at = sqlite3_column_int64(st, 20);
}

/**
 * img_db_get - load one image.
 */
int img_db_get(cl_db *db, const char *id, img_record *r)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc = cl_db_prepare(db, "SELECT " COLS " FROM images WHERE id = ?", &st);

    if (rc < 0)
        return rc;
    cl_db_bind_text(st, 1, id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return -ENOENT;
    if (rc != SQLITE_ROW)
        return cl_db_errno(rc);
    row_to_record(st, r);
    return 0;
}

static const char *empty_null(const char *s)
{
    return s && s[0] ? s : NULL;
}

static void bind_int_or_null(sqlite3_stmt *st, int idx, int64_t v)
{
    if (v < 0)
        sqlite3_bind_null(st, idx);
    else
        cl_db_bind_int64(st, idx, v);
}

/* Bind every column in COLS order (?1 id ... ?21 updated_at). */
static void bind_record(sqlite3_stmt *st, const img_record *r)
{
    cl_db_bind_text(st, 1, r->id);
    cl_db_bind_text(st, 2, empty_null(r->name));
    cl_db_bind_text(st, 3, r->owner);
    cl_db_bind_text(st, 4, r->status);
    cl_db_bind_text(st, 5, img_visibility_name(r->visibility));
    cl_db_bind_text(st, 6, empty_null(r->disk_format));
    cl_db_bind_text(st, 7, empty_null(r->container_format));
    cl_db_bind_int64(st, 8, r->min_disk);
    cl_db_bind_int64(st, 9, r->min_ram);
    cl_db_bind_int64(st, 10, r->protected_);
    cl_db_bind_int64(st, 11, r->os_hidden);
    bind_int_or_null(st, 12, r->size);
    bind_int_or_null(st, 13, r->virtual_size);
    cl_db_bind_text(st, 14, empty_null(r->checksum));
    cl_db_bind_text(st, 15, empty_null(r->os_hash_value));
    cl_db_bind_text(st, 16, empty_null(r->blob));
    cl_db_bind_text(st, 17, empty_null(r->reason));
    cl_db_bind_text(st, 18, r->properties ? cl_json_dump(r->properties) : "{}");
    cl_db_bind_text(st, 19, r->tags ? cl_json_dump(r->tags) : "[]");
    cl_db_bind_int64(st, 20, r->created_at);
    cl_db_bind_int64(st, 21, r->updated_at);
}

/**
 * img_db_insert - store a new image row.
 */
int img_db_insert(cl_db *db, const img_record *r)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc = cl_db_prepare(db, "INSERT INTO images (" COLS ") VALUES (?,?,?,?,?,?,?,?,?,?,"
                               "?,?,?,?,?,?,?,?,?,?,?)", &st);

    if (rc < 0)
        return rc;
    bind_record(st, r);
    return cl_db_step_done(st);
}

/**
 * img_db_update - write a whole record back (created_at is kept as stored).
 */
int img_db_update(cl_db *db, const img_record *r)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc = cl_db_prepare(
        db,
        "UPDATE images SET name=?2, owner=?3, status=?4, visibility=?5, disk_format=?6,"
        " container_format=?7, min_disk=?8, min_ram=?9, protected=?10, os_hidden=?11,"
        " size=?12, virtual_size=?13, checksum=?14, os_hash_value=?15, blob=?16,"
        " reason=?17, properties=?18, tags=?19, updated_at=?21 WHERE id=?1",
        &st);

    if (rc < 0)
        return rc;
    bind_record(st, r);
    rc = cl_db_step_done(st);
    if (rc == 0 && sqlite3_changes(sqlite3_db_handle(st)) == 0)
        return -ENOENT;
    return rc;
}

/**
 * img_db_delete - remove an image row (members go with it).
 */
int img_db_delete(cl_db *db, const char *id)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc = cl_db_prepare(db, "DELETE FROM images WHERE id = ?", &st);

    if (rc < 0)
        return rc;
    cl_db_bind_text(st, 1, id);
    rc = cl_db_step_done(st);
    if (rc == 0 && cl_db_changes(db) == 0)
        return -ENOENT;
    return rc;
}

/**
 * img_db_set_status - move id from status `from` to `to` atomically (-EBUSY otherwise).
 */
int img_db_set_status(cl_db *db, const char *id, const char *from, const char *to,
                      const char *reason)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc = cl_db_prepare(db, "UPDATE images SET status=?3, reason=?4, updated_at=?5"
                               " WHERE id=?1 AND status=?2", &st);

    if (rc < 0)
        return rc;
    cl_db_bind_text(st, 1, id);
    cl_db_bind_text(st, 2, from);
    cl_db_bind_text(st, 3, to);
    cl_db_bind_text(st, 4, reason);
    cl_db_bind_int64(st, 5, cl_now_ms());
    rc = cl_db_step_done(st);
    if (rc == 0 && cl_db_changes(db) == 0)
        return -EBUSY;
    return rc;
}

/**
 * img_db_blob_refs - how many images reference blob sha256.
 */
int img_db_blob_refs(cl_db *db, const char *sha256, int64_t *out)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc = cl_db_prepare(db, "SELECT count(*) FROM images WHERE blob = ?", &st);

    if (rc < 0)
        return rc;
    cl_db_bind_text(st, 1, sha256);
    if (sqlite3_step(st) != SQLITE_ROW)
        return -EIO;
    *out = sqlite3_column_int64(st, 0);
    return 0;
}

/**
 * img_db_usage - images and stored bytes of a project, for its quota.
 */
int img_db_usage(cl_db *db, const char *project, int64_t *out_count, int64_t *out_bytes)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc = cl_db_prepare(db, "SELECT count(*), coalesce(sum(size), 0) FROM images"
                               " WHERE owner = ?", &st);

    if (rc < 0)
        return rc;
    cl_db_bind_text(st, 1, project);
    if (sqlite3_step(st) != SQLITE_ROW)
        return -EIO;
    *out_count = sqlite3_column_int64(st, 0);
    *out_bytes = sqlite3_column_int64(st, 1);
    return 0;
}

/**
 * img_db_is_member - is project an accepted member of image id?
 */
bool img_db_is_member(cl_db *db, const char *id, const char *project)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;

    if (cl_db_prepare(db, "SELECT 1 FROM image_members WHERE image_id=? AND member=?"
                          " AND status='accepted'", &st) < 0)
        return false;
    cl_db_bind_text(st, 1, id);
    cl_db_bind_text(st, 2, project);
    return sqlite3_step(st) == SQLITE_ROW;
}

/**
 * img_db_add_member - add (or update) a member of an image.
 */
int img_db_add_member(cl_db *db, const char *id, const char *project, const char *status)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc = cl_db_prepare(db, "INSERT OR REPLACE INTO image_members (image_id, member,"
                               " status, created_at, updated_at) VALUES (?, ?, ?, ?4, ?4)",
                           &st);

    if (rc < 0)
        return rc;
    cl_db_bind_text(st, 1, id);
    cl_db_bind_text(st, 2, project);
    cl_db_bind_text(st, 3, status);
    cl_db_bind_int64(st, 4, cl_now_ms());
    return cl_db_step_done(st);
}

static void row_to_member(sqlite3_stmt *st, img_member *m)
{
    memset(m, 0, sizeof(*m));
    cl_db_column_text(st, 0, m->image_id, sizeof(m->image_id));
    cl_db_column_text(st, 1, m->member, sizeof(m->member));
    cl_db_column_text(st, 2, m->status, sizeof(m->status));
    m->created_at = sqlite3_column_int64(st, 3);
    m->updated_at = sqlite3_column_int64(st, 4);
}

#define MEMBER_COLS "image_id, member, status, created_at, updated_at"

/**
 * img_db_member_get - one membership of an image.
 */
int img_db_member_get(cl_db *db, const char *id, const char *member, img_member *out)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc = cl_db_prepare(db, "SELECT " MEMBER_COLS " FROM image_members"
                               " WHERE image_id = ? AND member = ?", &st);

    if (rc < 0)
        return rc;
    cl_db_bind_text(st, 1, id);
    cl_db_bind_text(st, 2, member);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return -ENOENT;
    if (rc != SQLITE_ROW)
        return cl_db_errno(rc);
    row_to_member(st, out);
    return 0;
}

/**
 * img_db_member_insert - a new membership, pending until the member accepts it.
 */
int img_db_member_insert(cl_db *db, const char *id, const char *member)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc = cl_db_prepare(db, "INSERT INTO image_members (image_id, member, status,"
                               " created_at, updated_at) VALUES (?, ?, 'pending', ?3, ?3)",
                           &st);

    if (rc < 0)
        return rc;
    cl_db_bind_text(st, 1, id);
    cl_db_bind_text(st, 2, member);
    cl_db_bind_int64(st, 3, cl_now_ms());
    return cl_db_step_done(st); /* -EEXIST on the primary key */
}

/**
 * img_db_member_set_status - accept, reject or reset a membership.
 */
int img_db_member_set_status(cl_db *db, const char *id, const char *member,
                             const char *status)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc = cl_db_prepare(db, "UPDATE image_members SET status = ?3, updated_at = ?4"
                               " WHERE image_id = ?1 AND member = ?2", &st);

    if (rc < 0)
        return rc;
    cl_db_bind_text(st, 1, id);
    cl_db_bind_text(st, 2, member);
    cl_db_bind_text(st, 3, status);
    cl_db_bind_int64(st, 4, cl_now_ms());
    rc = cl_db_step_done(st);
    if (rc == 0 && cl_db_changes(db) == 0)
        return -ENOENT;
    return rc;
}

/**
 * img_db_member_delete - end a membership.
 */
int img_db_member_delete(cl_db *db, const char *id, const char *member)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc = cl_db_prepare(db, "DELETE FROM image_members WHERE image_id = ? AND member = ?",
                           &st);

    if (rc < 0)
        return rc;
    cl_db_bind_text(st, 1, id);
    cl_db_bind_text(st, 2, member);
    rc = cl_db_step_done(st);
    if (rc == 0 && cl_db_changes(db) == 0)
        return -ENOENT;
    return rc;
}

/**
 * img_db_member_list - the memberships of an image, oldest first.
 */
int img_db_member_list(cl_db *db, const char *id, const char *member, json_object **out)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    json_object *arr;
    int rc = cl_db_prepare(db, "SELECT " MEMBER_COLS " FROM image_members WHERE image_id = ?1"
                               " AND (?2 IS NULL OR member = ?2) ORDER BY created_at, member",
                           &st);

    if (rc < 0)
        return rc;
    cl_db_bind_text(st, 1, id);
    cl_db_bind_text(st, 2, member);
    arr = json_object_new_array();
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        img_member m;
        row_to_member(st, &m);
        json_object_array_add(arr, img_member_to_json(&m));
    }
    if (rc != SQLITE_DONE) {
        json_object_put(arr);
        return cl_db_errno(rc);
    }
    *out = arr;
    return 0;
}

/**
 * img_member_to_json - a membership as Glance v2 shows it.
 */
json_object *img_member_to_json(const img_member *m)
{
    json_object *o = json_object_new_object();
    char ts[40];

    cl_time_iso8601(m->created_at, true, ts, sizeof(ts));
    json_object_object_add(o, "created_at", json_object_new_string(ts));
    cl_time_iso8601(m->updated_at, true, ts, sizeof(ts));
    json_object_object_add(o, "updated_at", json_object_new_string(ts));
    json_object_object_add(o, "image_id", json_object_new_string(m->image_id));
    json_object_object_add(o, "member_id", json_object_new_string(m->member));
    json_object_object_add(o, "status", json_object_new_string(m->status));
    json_object_object_add(o, "schema", json_object_new_string("/v2/schemas/member"));
    return o;
}

/* Sort keys a client may name, and the expression that sorts NULLs deterministically. */
static const struct {
    const char *key, *expr;
} sort_keys[] = {
    {"name", "coalesce(name, '')"},
    {"status", "status"},
    {"container_format", "coalesce(container_format, '')"},
    {"disk_format", "coalesce(disk_format, '')"},
    {"size", "coalesce(size, -1)"},
    {"virtual_size", "coalesce(virtual_size, -1)"},
    {"id", "id"},
    {"created_at", "created_at"},
    {"updated_at", "updated_at"},
    {"visibility", "visibility"},
    {"owner", "owner"},
    {"min_disk", "min_disk"},
    {"min_ram", "min_ram"},
};

/* The visibility rule as SQL: ?1 is_admin, ?2 project, ?3 asking for community. */
#define VISIBLE_SQL                                                                        \
    "(?1 OR owner = ?2 OR visibility = 'public'"                                           \
    " OR (visibility = 'community' AND ?3)"                                                \
    " OR (visibility = 'shared' AND EXISTS (SELECT 1 FROM image_members m"                 \
    "     WHERE m.image_id = images.id AND m.member = ?2 AND m.status = 'accepted')))"

/**
 * img_db_list - one page of the images who may list, filtered and sorted.
 */
int img_db_list(cl_db *db, const img_identity *who, const img_list_query *q,
                json_object **out, bool *more)
{
    const char *expr = NULL;
    char sql[2048];
    size_t n;
    sqlite3_value *marker_val = NULL;
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    json_object *arr;
    int64_t count = 0;
    int rc;
    bool community = q->visibility && strcmp(q->visibility, "community") == 0;

    for (size_t i = 0; i < CL_ARRAY_SIZE(sort_keys); i++)
        if (strcmp(q->sort_key, sort_keys[i].key) == 0)
            expr = sort_keys[i].expr;
    if (!expr)
        return -EINVAL;

    if (q->marker) {
        _cleanup_stmt_ sqlite3_stmt *ms = NULL;
        snprintf(sql, sizeof(sql), "SELECT %s FROM images WHERE id = ?4 AND " VISIBLE_SQL,
                 expr);
        rc = cl_db_prepare(db, sql, &ms);
        if (rc < 0)
            return rc;
        sqlite3_bind_int(ms, 1, who->is_admin);
        cl_db_bind_text(ms, 2, who->project_id);
        sqlite3_bind_int(ms, 3, 1);
        cl_db_bind_text(ms, 4, q->marker);
        if (sqlite3_step(ms) != SQLITE_ROW)
            return -ENOENT;
        marker_val = sqlite3_value_dup(sqlite3_column_value(ms, 0));
        if (!marker_val)
            return -ENOMEM;
    }

    n = (size_t)snprintf(sql, sizeof(sql), "SELECT " COLS " FROM images WHERE " VISIBLE_SQL
                         " AND status != 'deleted'"
                         " AND (?4 IS NULL OR name = ?4) AND (?5 IS NULL OR status = ?5)"
                         " AND (?6 IS NULL OR visibility = ?6) AND (?7 IS NULL OR owner = ?7)");
    if (!community && !q->visibility)
        n += (size_t)snprintf(sql + n, sizeof(sql) - n, " AND visibility != 'community'");
    if (!q->visibility || strcmp(q->visibility, "all") != 0)
        n += (size_t)snprintf(sql + n, sizeof(sql) - n, " AND os_hidden = 0");
    if (marker_val)
        n += (size_t)snprintf(sql + n, sizeof(sql) - n,
                              " AND (%s %s ?8 OR (%s = ?8 AND id %s ?9))", expr,
                              q->sort_desc ? "<" : ">", expr, q->sort_desc ? "<" : ">");
    snprintf(sql + n, sizeof(sql) - n, " ORDER BY %s %s, id %s LIMIT ?10", expr,
             q->sort_desc ? "DESC" : "ASC", q->sort_desc ? "DESC" : "ASC");

    rc = cl_db_prepare(db, sql, &st);
    if (rc < 0) {
        sqlite3_value_free(marker_val);
        return rc;
    }
    sqlite3_bind_int(st, 1, who->is_admin);
    cl_db_bind_text(st, 2, who->project_id);
    sqlite3_bind_int(st, 3, community);
    cl_db_bind_text(st, 4, q->name);
    cl_db_bind_text(st, 5, q->status);
    cl_db_bind_text(st, 6, q->visibility && strcmp(q->visibility, "all") != 0
                               ? q->visibility : NULL);
    cl_db_bind_text(st, 7, q->owner);
    if (marker_val) {
        sqlite3_bind_value(st, 8, marker_val);
        cl_db_bind_text(st, 9, q->marker);
    }
    cl_db_bind_int64(st, 10, q->limit + 1); /* one more tells whether a next page exists */
    sqlite3_value_free(marker_val);

    arr = json_object_new_array();
    *more = false;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        img_record r;
        if (count == q->limit) {
            *more = true;
            break;
        }
        row_to_record(st, &r);
        json_object_array_add(arr, img_record_to_json(&r));
        img_record_clear(&r);
        count++;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        json_object_put(arr);
        return cl_db_errno(rc);
    }
    *out = arr;
    return 0;
}

static json_object *str_or_null(const char *s)
{
    return s && s[0] ? json_object_new_string(s) : NULL;
}

static json_object *int_or_null(int64_t v)
{
    return v < 0 ? NULL : json_object_new_int64(v);
}

/**
 * img_record_to_json - the image as Glance v2 shows it: custom properties at top
 * level next to the core attributes, nulls where Glance has them.
 */
json_object *img_record_to_json(const img_record *r)
{
    json_object *o = json_object_new_object();
    char ts[40], link[128];
    bool active = strcmp(r->status, "active") == 0;

    if (r->properties) {
        json_object_object_foreach(r->properties, k, v)
            json_object_object_add(o, k, json_object_get(v));
    }
    json_object_object_add(o, "name", str_or_null(r->name));
    json_object_object_add(o, "disk_format", str_or_null(r->disk_format));
    json_object_object_add(o, "container_format", str_or_null(r->container_format));
    json_object_object_add(o, "visibility",
                           json_object_new_string(img_visibility_name(r->visibility)));
    json_object_object_add(o, "size", int_or_null(r->size));
    json_object_object_add(o, "virtual_size", int_or_null(r->virtual_size));
    json_object_object_add(o, "status", json_object_new_string(r->status));
    json_object_object_add(o, "checksum", str_or_null(r->checksum));
    json_object_object_add(o, "protected", json_object_new_boolean(r->protected_));
    json_object_object_add(o, "min_ram", json_object_new_int64(r->min_ram));
    json_object_object_add(o, "min_disk", json_object_new_int64(r->min_disk));
    json_object_object_add(o, "owner", json_object_new_string(r->owner));
    json_object_object_add(o, "os_hidden", json_object_new_boolean(r->os_hidden));
    json_object_object_add(o, "os_hash_algo", active ? json_object_new_string("sha512") : NULL);
    json_object_object_add(o, "os_hash_value", str_or_null(r->os_hash_value));
    json_object_object_add(o, "id", json_object_new_string(r->id));
    cl_time_iso8601(r->created_at, true, ts, sizeof(ts));
    json_object_object_add(o, "created_at", json_object_new_string(ts));
    cl_time_iso8601(r->updated_at, true, ts, sizeof(ts));
    json_object_object_add(o, "updated_at", json_object_new_string(ts));
    json_object_object_add(o, "tags", r->tags ? json_object_get(r->tags)
                                              : json_object_new_array());
    if (r->reason[0])
        json_object_object_add(o, "nube_status_reason", json_object_new_string(r->reason));
    snprintf(link, sizeof(link), "/v2/images/%s", r->id);
    json_object_object_add(o, "self", json_object_new_string(link));
    snprintf(link, sizeof(link), "/v2/images/%s/file", r->id);
    json_object_object_add(o, "file", json_object_new_string(link));
    json_object_object_add(o, "schema", json_object_new_string("/v2/schemas/image"));
    return o;
}
