/*
 * memhv — a test hypervisor plugin for the integration tests (our own plugin ABI, in C).
 *
 * Its "domains" live in a text file (option state_file), rewritten atomically on every
 * change and re-read on every call, so that, like libvirtd's domains, they outlive the
 * agent process: the crash tests kill the agent and find the domains as they were. A
 * test may edit the file to simulate a domain that stopped by itself.
 *
 * Line format: <uuid> <power_state> <vcpus> <memory_mb> <name>
 *
 * Behaviour switches (by instance name, so one agent serves every case):
 *   name starting "fail-spawn"      spawn fails
 *   name starting "no-soft-reboot"  soft reboot fails (the agent must reboot hard)
 *   name starting "fail-resize"     resize fails
 *   name starting "slow-spawn"      spawn sleeps spawn_sleep_ms (option, default 1000)
 * Options: state_file (without it the domains live only in memory, for the scale
 * benchmarks), seed_count (start with that many running domains, uuids
 * 00000000-0000-4000-8000-<12-digit index>, 1 vcpu / 64 MB each), vcpus (default 8),
 * memory_mb (default 16384).
 * Every spawn and destroy is also appended to <state_file>.calls ("spawn <uuid>"), so a
 * test can count how many times an operation really ran.
 */
#include "compute_agent_plugin.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_DOMAINS 20000

typedef struct domain {
  char uuid[40];
  int power;
  int vcpus;
  int memory_mb;
  char name[128];
} domain;

typedef struct memhv {
  const ca_host_api *host;
  pthread_mutex_t lock;
  char state_file[512];
  int vcpus, memory_mb, spawn_sleep_ms;
  int bad_host_info; /* answer host info with the wrong types, as a broken driver might */
  domain *doms;
  int count;
  int cap; /* MAX_DOMAINS, or seed_count + MAX_DOMAINS when seeding more */
} memhv;

static void load(memhv *m) {
  if (!m->state_file[0]) return;
  m->count = 0;
  FILE *f = fopen(m->state_file, "r");
  if (!f) return;
  domain d;
  while (m->count < m->cap &&
         fscanf(f, "%39s %d %d %d %127[^\n]\n", d.uuid, &d.power, &d.vcpus, &d.memory_mb, d.name) == 5)
    m->doms[m->count++] = d;
  fclose(f);
}

static int save(memhv *m) {
  if (!m->state_file[0]) return 0;
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s.tmp", m->state_file);
  FILE *f = fopen(tmp, "w");
  if (!f) return -1;
  for (int i = 0; i < m->count; i++)
    fprintf(f, "%s %d %d %d %s\n", m->doms[i].uuid, m->doms[i].power, m->doms[i].vcpus, m->doms[i].memory_mb,
            m->doms[i].name);
  fflush(f);
  fsync(fileno(f));
  fclose(f);
  return rename(tmp, m->state_file);
}

static void log_call(memhv *m, const char *what, const char *uuid) {
  if (!m->state_file[0]) return;
  char path[600];
  snprintf(path, sizeof path, "%s.calls", m->state_file);
  FILE *f = fopen(path, "a");
  if (!f) return;
  fprintf(f, "%s %s\n", what, uuid);
  fclose(f);
}

static domain *find(memhv *m, const char *uuid) {
  for (int i = 0; i < m->count; i++)
    if (strcmp(m->doms[i].uuid, uuid) == 0) return &m->doms[i];
  return NULL;
}

static void emit(memhv *m, const char *uuid) {
  char ev[128];
  snprintf(ev, sizeof ev, "{\"event\": \"lifecycle\", \"uuid\": \"%s\"}", uuid);
  if (m->host->emit_event) m->host->emit_event(m->host->host_context, ev);
}

/* The string or integer value of "key" in a flat JSON object (enough for our own input). */
static int json_str(const char *json, const char *key, char *out, size_t n) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\"", key);
  const char *p = strstr(json, pat);
  if (!p) return -1;
  p += strlen(pat);
  while (*p == ' ' || *p == ':') p++;
  if (*p == '"') {
    p++;
    size_t i = 0;
    while (*p && *p != '"' && i + 1 < n) out[i++] = *p++;
    out[i] = 0;
    return 0;
  }
  size_t i = 0;
  while (*p && *p != ',' && *p != '}' && i + 1 < n) out[i++] = *p++;
  out[i] = 0;
  return 0;
}

static int json_int(const char *json, const char *key, int dflt) {
  char buf[32];
  return json_str(json, key, buf, sizeof buf) == 0 ? atoi(buf) : dflt;
}

static ca_status m_init(const ca_host_api *host, void **state, ca_error *err) {
  memhv *m = calloc(1, sizeof *m);
  m->host = host;
  pthread_mutex_init(&m->lock, NULL);
  (void)err;
  const char *sf = host->config_get(host->host_context, "state_file");
  if (sf) snprintf(m->state_file, sizeof m->state_file, "%s", sf);
  const char *v = host->config_get(host->host_context, "vcpus");
  m->vcpus = v ? atoi(v) : 8;
  v = host->config_get(host->host_context, "memory_mb");
  m->memory_mb = v ? atoi(v) : 16384;
  v = host->config_get(host->host_context, "spawn_sleep_ms");
  m->spawn_sleep_ms = v ? atoi(v) : 1000;
  v = host->config_get(host->host_context, "bad_host_info");
  m->bad_host_info = v && strcmp(v, "true") == 0;
  v = host->config_get(host->host_context, "seed_count");
  int seed = v ? atoi(v) : 0;
  m->cap = seed > 0 ? seed + MAX_DOMAINS : MAX_DOMAINS;
  m->doms = calloc((size_t)m->cap, sizeof(domain));
  if (!m->doms) return ca_error_set(err, CA_ERR_FAILED, "memhv: out of memory for its domains");
  for (int i = 0; i < seed; i++) {
    domain *d = &m->doms[m->count++];
    snprintf(d->uuid, sizeof d->uuid, "00000000-0000-4000-8000-%012d", i);
    snprintf(d->name, sizeof d->name, "seed-%d", i);
    d->power = 1;
    d->vcpus = 1;
    d->memory_mb = 64;
  }
  *state = m;
  return CA_OK;
}

static void m_shutdown(void *state) {
  memhv *m = state;
  free(m->doms);
  free(m);
}

static ca_status m_host_info(void *state, char **out, ca_error *err) {
  (void)err;
  memhv *m = state;
  if (m->bad_host_info) {
    *out = strdup("{\"hypervisor_type\": \"memhv\", \"vcpus\": \"many\", \"memory_mb\": null}");
    return CA_OK;
  }
  char buf[512];
  snprintf(buf, sizeof buf,
           "{\"hypervisor_type\": \"memhv\", \"hypervisor_version\": 1, \"hypervisor_hostname\": \"memhv\", "
           "\"vcpus\": %d, \"memory_mb\": %d, \"memory_mb_free\": %d, \"cpu_info\": {}, \"domain_type\": \"memhv\"}",
           m->vcpus, m->memory_mb, m->memory_mb);
  *out = strdup(buf);
  return CA_OK;
}

static ca_status m_list(void *state, char **out, ca_error *err) {
  (void)err;
  memhv *m = state;
  pthread_mutex_lock(&m->lock);
  load(m);
  size_t cap = 64 + (size_t)m->count * 256, len = 0;
  char *buf = malloc(cap);
  len += snprintf(buf + len, cap - len, "[");
  for (int i = 0; i < m->count; i++)
    len += snprintf(buf + len, cap - len, "%s{\"uuid\": \"%s\", \"name\": \"%s\", \"power_state\": %d, \"vcpus\": %d, \"memory_mb\": %d}",
                    i ? ", " : "", m->doms[i].uuid, m->doms[i].name, m->doms[i].power, m->doms[i].vcpus, m->doms[i].memory_mb);
  snprintf(buf + len, cap - len, "]");
  pthread_mutex_unlock(&m->lock);
  *out = buf;
  return CA_OK;
}

static ca_status m_spawn(void *state, const char *json, ca_error *err) {
  memhv *m = state;
  domain d = {0};
  if (json_str(json, "uuid", d.uuid, sizeof d.uuid) != 0) return ca_error_set(err, CA_ERR_INVALID_ARGUMENT, "no uuid");
  json_str(json, "name", d.name, sizeof d.name);
  d.vcpus = json_int(json, "vcpus", 1);
  d.memory_mb = json_int(json, "memory_mb", 64);
  d.power = 1;
  if (strncmp(d.name, "fail-spawn", 10) == 0) return ca_error_set(err, CA_ERR_FAILED, "memhv: the domain failed to start");
  if (strncmp(d.name, "slow-spawn", 10) == 0) usleep((useconds_t)m->spawn_sleep_ms * 1000);
  pthread_mutex_lock(&m->lock);
  load(m);
  domain *e = find(m, d.uuid);
  if (e) *e = d; else if (m->count < m->cap) m->doms[m->count++] = d;
  int rc = save(m);
  log_call(m, "spawn", d.uuid);
  pthread_mutex_unlock(&m->lock);
  if (rc != 0) return ca_error_set(err, CA_ERR_FAILED, "memhv: cannot write the state file");
  emit(m, d.uuid);
  return CA_OK;
}

static ca_status m_info(void *state, const char *uuid, char **out, ca_error *err) {
  memhv *m = state;
  pthread_mutex_lock(&m->lock);
  load(m);
  domain *d = find(m, uuid);
  if (!d) { pthread_mutex_unlock(&m->lock); return ca_error_set(err, CA_ERR_NOT_FOUND, "no domain with that uuid"); }
  char buf[512];
  snprintf(buf, sizeof buf, "{\"uuid\": \"%s\", \"power_state\": %d, \"vcpus\": %d, \"memory_mb\": %d, \"cpu_time_ns\": 0}",
           d->uuid, d->power, d->vcpus, d->memory_mb);
  pthread_mutex_unlock(&m->lock);
  *out = strdup(buf);
  return CA_OK;
}

static ca_status m_destroy(void *state, const char *uuid, ca_error *err) {
  memhv *m = state;
  pthread_mutex_lock(&m->lock);
  load(m);
  domain *d = find(m, uuid);
  if (!d) { pthread_mutex_unlock(&m->lock); return ca_error_set(err, CA_ERR_NOT_FOUND, "no domain with that uuid"); }
  *d = m->doms[--m->count];
  save(m);
  log_call(m, "destroy", uuid);
  pthread_mutex_unlock(&m->lock);
  emit(m, uuid);
  return CA_OK;
}

/* Sets the power state of a domain that must exist. */
static ca_status set_power(memhv *m, const char *uuid, int power, ca_error *err) {
  pthread_mutex_lock(&m->lock);
  load(m);
  domain *d = find(m, uuid);
  if (!d) { pthread_mutex_unlock(&m->lock); return ca_error_set(err, CA_ERR_NOT_FOUND, "no domain with that uuid"); }
  d->power = power;
  save(m);
  pthread_mutex_unlock(&m->lock);
  emit(m, uuid);
  return CA_OK;
}

static ca_status m_off(void *s, const char *u, ca_error *e) { return set_power(s, u, 4, e); }
static ca_status m_on(void *s, const char *u, ca_error *e) { return set_power(s, u, 1, e); }
static ca_status m_pause(void *s, const char *u, ca_error *e) { return set_power(s, u, 3, e); }
static ca_status m_suspend(void *s, const char *u, ca_error *e) { return set_power(s, u, 7, e); }

static ca_status m_reboot(void *state, const char *uuid, int hard, ca_error *err) {
  memhv *m = state;
  pthread_mutex_lock(&m->lock);
  load(m);
  domain *d = find(m, uuid);
  int refuse = d && !hard && strncmp(d->name, "no-soft-reboot", 14) == 0;
  pthread_mutex_unlock(&m->lock);
  if (refuse) return ca_error_set(err, CA_ERR_FAILED, "memhv: the guest ignored the ACPI reboot request");
  return set_power(m, uuid, 1, err);
}

static ca_status m_rescue(void *s, const char *inst, const char *rescue, ca_error *e) {
  (void)rescue;
  char uuid[40];
  if (json_str(inst, "uuid", uuid, sizeof uuid) != 0) return ca_error_set(e, CA_ERR_INVALID_ARGUMENT, "no uuid");
  return set_power(s, uuid, 1, e);
}

static ca_status m_unrescue(void *s, const char *inst, ca_error *e) { return m_rescue(s, inst, NULL, e); }

static ca_status m_snapshot(void *state, const char *uuid, const char *dest, char **out, ca_error *err) {
  (void)state;
  FILE *f = fopen(dest, "w");
  if (!f) return ca_error_set(err, CA_ERR_FAILED, "memhv: cannot write the snapshot");
  int n = fprintf(f, "memhv snapshot of %s\n", uuid);
  fclose(f);
  char buf[96];
  snprintf(buf, sizeof buf, "{\"size\": %d, \"disk_format\": \"raw\"}", n);
  *out = strdup(buf);
  return CA_OK;
}

static ca_status m_resize(void *state, const char *inst, ca_error *err) {
  memhv *m = state;
  char uuid[40];
  if (json_str(inst, "uuid", uuid, sizeof uuid) != 0) return ca_error_set(err, CA_ERR_INVALID_ARGUMENT, "no uuid");
  pthread_mutex_lock(&m->lock);
  load(m);
  domain *d = find(m, uuid);
  if (!d) { pthread_mutex_unlock(&m->lock); return ca_error_set(err, CA_ERR_NOT_FOUND, "no domain with that uuid"); }
  if (strncmp(d->name, "fail-resize", 11) == 0) {
    pthread_mutex_unlock(&m->lock);
    return ca_error_set(err, CA_ERR_FAILED, "memhv: the domain cannot take the new flavor");
  }
  d->vcpus = json_int(inst, "vcpus", d->vcpus);
  d->memory_mb = json_int(inst, "memory_mb", d->memory_mb);
  save(m);
  pthread_mutex_unlock(&m->lock);
  return CA_OK;
}

static ca_status m_console(void *state, const char *uuid, char **out, ca_error *err) {
  (void)state; (void)err;
  char buf[256];
  snprintf(buf, sizeof buf, "{\"output\": \"boot %s\\nline 2\\nlogin: \\n\"}", uuid);
  *out = strdup(buf);
  return CA_OK;
}

static ca_status m_diag(void *state, const char *uuid, char **out, ca_error *err) {
  memhv *m = state;
  pthread_mutex_lock(&m->lock);
  load(m);
  domain *d = find(m, uuid);
  if (!d) { pthread_mutex_unlock(&m->lock); return ca_error_set(err, CA_ERR_NOT_FOUND, "no domain with that uuid"); }
  char buf[256];
  snprintf(buf, sizeof buf, "{\"driver\": \"memhv\", \"num_cpus\": %d, \"memory_mb\": %d, \"power_state\": %d}",
           d->vcpus, d->memory_mb, d->power);
  pthread_mutex_unlock(&m->lock);
  *out = strdup(buf);
  return CA_OK;
}

static const ca_hypervisor_vtable vtable = {
    .struct_size = sizeof(ca_hypervisor_vtable),
    .init = m_init, .shutdown = m_shutdown,
    .get_host_info = m_host_info, .list_instances = m_list, .spawn = m_spawn, .get_info = m_info,
    .destroy = m_destroy, .power_off = m_off, .power_on = m_on, .reboot = m_reboot, .pause = m_pause,
    .unpause = m_on, .suspend = m_suspend, .resume = m_on,
    .rescue = m_rescue, .unrescue = m_unrescue, .snapshot = m_snapshot, .resize = m_resize,
    .get_console_output = m_console, .get_diagnostics = m_diag,
};

static const ca_plugin_descriptor descriptor =
    CA_PLUGIN_DESCRIPTOR_INIT(CA_PLUGIN_KIND_HYPERVISOR, "memhv", "1.0.0",
                              "test hypervisor: domains in a state file", &vtable);

const ca_plugin_descriptor *compute_agent_plugin_entry(void) { return &descriptor; }
