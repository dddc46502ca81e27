#define _GNU_SOURCE
#include "http_shim.h"

/* libcurl is loaded with dlopen when the first request is made, not linked: an agent
 * that never speaks HTTP (native control plane, file images) does not map libcurl and
 * the dozen libraries it brings (≈ 3.8 MiB resident). */
#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <sys/stat.h>

static struct {
    CURLcode (*global_init)(long);
    CURL *(*easy_init)(void);
    CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
    CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
    CURLcode (*easy_perform)(CURL *);
    void (*easy_cleanup)(CURL *);
    const char *(*easy_strerror)(CURLcode);
    struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
    void (*slist_free_all)(struct curl_slist *);
} curl;
static char load_error[256];

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static void global_init(void) {
    void *h = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(load_error, sizeof load_error, "cannot load libcurl.so.4 (install libcurl4): %s", dlerror());
        return;
    }
#define LOAD(field, name)                                                                          \
    if (!(*(void **)&curl.field = dlsym(h, name))) {                                               \
        snprintf(load_error, sizeof load_error, "libcurl.so.4 has no %s", name);                   \
        return;                                                                                    \
    }
    LOAD(global_init, "curl_global_init")
    LOAD(easy_init, "curl_easy_init")
    LOAD(easy_setopt, "curl_easy_setopt")
    LOAD(easy_getinfo, "curl_easy_getinfo")
    LOAD(easy_perform, "curl_easy_perform")
    LOAD(easy_cleanup, "curl_easy_cleanup")
    LOAD(easy_strerror, "curl_easy_strerror")
    LOAD(slist_append, "curl_slist_append")
    LOAD(slist_free_all, "curl_slist_free_all")
#undef LOAD
    curl.global_init(CURL_GLOBAL_DEFAULT);
}

/* Loads libcurl once; 0 when it is usable, else the reason is in err. */
static int ready(char *err, size_t err_len) {
    pthread_once(&init_once, global_init);
    if (load_error[0]) { snprintf(err, err_len, "%s", load_error); return 0; }
    return 1;
}

typedef struct {
    ca_http_body_fn body;
    void *ctx;
    ca_http_result *result;
    int aborted;
    /* for ca_http_json */
    char *buf;
    size_t len, cap, max;
    int too_big;
} transfer;

static size_t on_body(char *data, size_t size, size_t n, void *p) {
    transfer *t = p;
    size_t len = size * n;
    if (t->body) {
        if (t->body(data, len, t->ctx) != 0) { t->aborted = 1; return 0; }
    } else {
        if (t->len + len > t->max) { t->too_big = 1; return 0; }
        if (t->len + len + 1 > t->cap) {
            size_t cap = (t->len + len + 1) * 2;
            if (cap > t->max + 1) cap = t->max + 1;
            char *b = realloc(t->buf, cap);
            if (!b) return 0;
            t->buf = b;
            t->cap = cap;
        }
        memcpy(t->buf + t->len, data, len);
        t->len += len;
        t->buf[t->len] = 0;
    }
    t->result->body_bytes += (long long)len;
    return len;
}

static size_t on_header(char *line, size_t size, size_t n, void *p) {
    transfer *t = p;
    size_t len = size * n;
    static const char key[] = "content-md5:";
    if (len > sizeof key - 1 && strncasecmp(line, key, sizeof key - 1) == 0) {
        const char *v = line + sizeof key - 1;
        size_t vlen = len - (sizeof key - 1);
        while (vlen && (*v == ' ' || *v == '\t')) { v++; vlen--; }
        while (vlen && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' ')) vlen--;
        if (vlen >= sizeof t->result->content_md5) vlen = sizeof t->result->content_md5 - 1;
        memcpy(t->result->content_md5, v, vlen);
        t->result->content_md5[vlen] = 0;
    }
    return len;
}

static struct curl_slist *setup(CURL *c, const char *url, const ca_http_options *o, transfer *t) {
    curl.easy_setopt(c, CURLOPT_URL, url);
    curl.easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl.easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl.easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl.easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl.easy_setopt(c, CURLOPT_WRITEDATA, t);
    curl.easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl.easy_setopt(c, CURLOPT_HEADERDATA, t);
    curl.easy_setopt(c, CURLOPT_USERAGENT, "compute-agent-glance/1.0");
    /* Large receive buffer: fewer callbacks, larger writes and hash updates. */
    curl.easy_setopt(c, CURLOPT_BUFFERSIZE, 512L * 1024L);
    if (o) {
        if (o->connect_timeout > 0) curl.easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)(o->connect_timeout * 1000));
        if (o->stall_timeout > 0) {
            curl.easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
            curl.easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)o->stall_timeout);
        }
        if (o->cafile && *o->cafile) curl.easy_setopt(c, CURLOPT_CAINFO, o->cafile);
        if (o->insecure) {
            curl.easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
            curl.easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
        }
    }
    struct curl_slist *h = NULL;
    for (size_t i = 0; o && o->headers && i < o->header_count; i++) h = curl.slist_append(h, o->headers[i]);
    if (h) curl.easy_setopt(c, CURLOPT_HTTPHEADER, h);
    return h;
}

static int finish(CURL *c, CURLcode rc, transfer *t, ca_http_result *r, char *errbuf, char *err, size_t err_len) {
    long status = 0;
    curl.easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    r->status = status;
    curl_off_t cl = -1;
    curl.easy_getinfo(c, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
    r->content_length = cl;
    if (t->aborted) {
        snprintf(err, err_len, "transfer stopped by the receiver");
        return CA_HTTP_ABORTED;
    }
    if (rc != CURLE_OK) {
        snprintf(err, err_len, "%s", errbuf[0] ? errbuf : curl.easy_strerror(rc));
        return CA_HTTP_TRANSPORT;
    }
    return CA_HTTP_OK;
}

int ca_http_get(const char *url, const ca_http_options *opts, ca_http_body_fn body, void *ctx,
                ca_http_result *result, char *err, size_t err_len) {
    memset(result, 0, sizeof *result);
    result->content_length = -1;
    if (!ready(err, err_len)) return CA_HTTP_TRANSPORT;
    CURL *c = curl.easy_init();
    if (!c) { snprintf(err, err_len, "cannot create a libcurl handle"); return CA_HTTP_TRANSPORT; }
    transfer t = {.body = body, .ctx = ctx, .result = result};
    char errbuf[CURL_ERROR_SIZE] = {0};
    curl.easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    struct curl_slist *h = setup(c, url, opts, &t);
    CURLcode rc = curl.easy_perform(c);
    int out = finish(c, rc, &t, result, errbuf, err, err_len);
    curl.slist_free_all(h);
    curl.easy_cleanup(c);
    return out;
}

int ca_http_put_file(const char *url, const ca_http_options *opts, const char *path,
                     ca_http_result *result, char *err, size_t err_len) {
    memset(result, 0, sizeof *result);
    result->content_length = -1;
    if (!ready(err, err_len)) return CA_HTTP_TRANSPORT;
    FILE *f = fopen(path, "rb");
    if (!f) { snprintf(err, err_len, "cannot open %s", path); return CA_HTTP_TRANSPORT; }
    struct stat st;
    fstat(fileno(f), &st);
    CURL *c = curl.easy_init();
    if (!c) { fclose(f); snprintf(err, err_len, "cannot create a libcurl handle"); return CA_HTTP_TRANSPORT; }
    transfer t = {.result = result, .max = 1 << 20};
    char errbuf[CURL_ERROR_SIZE] = {0};
    curl.easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    struct curl_slist *h = setup(c, url, opts, &t);
    h = curl.slist_append(h, "Content-Type: application/octet-stream");
    curl.easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl.easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl.easy_setopt(c, CURLOPT_READDATA, f);
    curl.easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)st.st_size);
    CURLcode rc = curl.easy_perform(c);
    int out = finish(c, rc, &t, result, errbuf, err, err_len);
    free(t.buf);
    curl.slist_free_all(h);
    curl.easy_cleanup(c);
    fclose(f);
    return out;
}

int ca_http_json(const char *method, const char *url, const ca_http_options *opts,
                 const char *body, const char *content_type, size_t max_bytes, char **out,
                 ca_http_result *result, char *err, size_t err_len) {
    memset(result, 0, sizeof *result);
    result->content_length = -1;
    *out = NULL;
    if (!ready(err, err_len)) return CA_HTTP_TRANSPORT;
    CURL *c = curl.easy_init();
    if (!c) { snprintf(err, err_len, "cannot create a libcurl handle"); return CA_HTTP_TRANSPORT; }
    transfer t = {.result = result, .max = max_bytes};
    char errbuf[CURL_ERROR_SIZE] = {0};
    curl.easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    struct curl_slist *h = setup(c, url, opts, &t);
    curl.easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        char ct[128];
        snprintf(ct, sizeof ct, "Content-Type: %s", content_type ? content_type : "application/json");
        h = curl.slist_append(h, ct);
        curl.easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl.easy_setopt(c, CURLOPT_POSTFIELDS, body);
    }
    CURLcode rc = curl.easy_perform(c);
    int res = finish(c, rc, &t, result, errbuf, err, err_len);
    if (t.too_big) {
        snprintf(err, err_len, "response larger than %zu bytes", max_bytes);
        res = CA_HTTP_TRANSPORT;
    }
    if (res == CA_HTTP_OK) *out = t.buf ? t.buf : strdup("");
    else free(t.buf);
    curl.slist_free_all(h);
    curl.easy_cleanup(c);
    return res;
}

void ca_start_writeback(int fd, long long offset, long long len) {
    (void)sync_file_range(fd, (off_t)offset, (off_t)len, SYNC_FILE_RANGE_WRITE);
}
