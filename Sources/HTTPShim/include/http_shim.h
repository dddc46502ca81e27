/* A small, blocking HTTP client over libcurl for the image-fetch plugins.
 *
 * Swift cannot call curl_easy_setopt (it is variadic), so the few transfers the plugins
 * need are wrapped here: a GET whose body is streamed to a callback (never buffered), and
 * a PUT whose body is read from a file. The status, the headers the plugins care about and
 * a readable error come back in plain structs. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Called with each piece of the body as it arrives; return 0 to go on, non-zero to stop
 * the transfer (the call then fails with CA_HTTP_ABORTED). */
typedef int (*ca_http_body_fn)(const void *data, size_t len, void *ctx);

typedef struct {
    double connect_timeout;   /* seconds to establish the connection (0 = libcurl's default) */
    double stall_timeout;     /* abort when under 1 byte/s for this long (0 = never) */
    const char *cafile;       /* CA bundle for https, NULL = the system's */
    int insecure;             /* non-zero: do not verify the server's certificate */
    const char *const *headers; /* "Name: value" lines, or NULL */
    size_t header_count;
} ca_http_options;

typedef struct {
    long status;                   /* HTTP status, 0 when there was none */
    long long content_length;      /* -1 when the server sent none */
    char content_md5[80];          /* the Content-MD5 header, "" when absent */
    long long body_bytes;          /* bytes handed to the body callback */
} ca_http_result;

enum {
    CA_HTTP_OK = 0,
    CA_HTTP_TRANSPORT = 1,  /* connection refused, timeout, TLS, short read: see err */
    CA_HTTP_ABORTED = 2,    /* the body callback stopped the transfer */
};

/* GET `url`; the body goes to `body`. Returns CA_HTTP_OK when a response (any status) was
 * received in full. */
int ca_http_get(const char *url, const ca_http_options *opts, ca_http_body_fn body, void *ctx,
                ca_http_result *result, char *err, size_t err_len);

/* PUT the file at `path` to `url` as application/octet-stream. */
int ca_http_put_file(const char *url, const ca_http_options *opts, const char *path,
                     ca_http_result *result, char *err, size_t err_len);

/* Sends `method` (POST, PATCH, DELETE) with a small JSON body (may be NULL); the
 * response body is collected into a malloc'd buffer in *out (caller frees), at most
 * `max_bytes`. */
int ca_http_json(const char *method, const char *url, const ca_http_options *opts,
                 const char *body, const char *content_type, size_t max_bytes, char **out,
                 ca_http_result *result, char *err, size_t err_len);

/* Starts writeback of [offset, offset+len) of a file being downloaded
 * (sync_file_range SYNC_FILE_RANGE_WRITE), so the final fsync has little left to flush. */
void ca_start_writeback(int fd, long long offset, long long len);

#ifdef __cplusplus
}
#endif
