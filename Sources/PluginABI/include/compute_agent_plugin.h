/*
 * compute_agent_plugin.h — ComputeAgent plugin ABI, version 1.
 *
 * A plugin is a shared object that exports one symbol, COMPUTE_AGENT_PLUGIN_ENTRY
 * ("compute_agent_plugin_entry"), a function returning a pointer to a static
 * ca_plugin_descriptor. The agent reads the descriptor before running any other plugin
 * code: it refuses a plugin whose ABI major differs from CA_PLUGIN_ABI_MAJOR, whose kind
 * is not the one configured, whose vtable is smaller than the ABI-1.0 vtable of its kind,
 * or whose required functions are NULL.
 *
 * Rules that keep the ABI stable and language-neutral:
 *  - Only plain C data crosses it: NUL-terminated UTF-8 strings, JSON documents as
 *    strings, integers, and the fixed structs below.
 *  - Every struct starts with a uint32_t struct_size. New fields are only ever appended
 *    (and bump CA_PLUGIN_ABI_MINOR); each side reads a field only if the other side's
 *    struct_size covers it.
 *  - Optional functions may be NULL: the agent answers "not supported" for them.
 *  - Every call returns a ca_status; on failure the plugin writes a NUL-terminated,
 *    human-readable message into err->message (truncated to CA_ERROR_MESSAGE_MAX).
 *  - JSON a plugin returns through a `char **out_json` is allocated with malloc(3) and
 *    freed by the agent with free(3).
 *  - Calls may block (libvirt does). The agent makes them from its own thread pool, never
 *    from an event loop, and several calls may run at once on different threads: plugin
 *    state must be thread-safe. A call that exceeds its deadline is abandoned by the agent
 *    (its thread keeps running until the plugin returns).
 */
#ifndef COMPUTE_AGENT_PLUGIN_H
#define COMPUTE_AGENT_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CA_PLUGIN_ABI_MAJOR 1
#define CA_PLUGIN_ABI_MINOR 2
#define COMPUTE_AGENT_PLUGIN_ENTRY "compute_agent_plugin_entry"
#define CA_ERROR_MESSAGE_MAX 1024

/* Which vtable a descriptor carries. */
typedef enum ca_plugin_kind {
  CA_PLUGIN_KIND_HYPERVISOR = 1,
  CA_PLUGIN_KIND_IMAGE_FETCH = 2,
  CA_PLUGIN_KIND_NETWORK = 3
} ca_plugin_kind;

/* Result of every plugin call. */
typedef enum ca_status {
  CA_OK = 0,
  CA_ERR_FAILED = 1,           /* generic failure; see err->message */
  CA_ERR_NOT_FOUND = 2,        /* the instance / image / object does not exist */
  CA_ERR_INVALID_ARGUMENT = 3, /* the request JSON was malformed or incomplete */
  CA_ERR_NOT_SUPPORTED = 4,    /* the plugin cannot do this (in this configuration) */
  CA_ERR_INVALID_STATE = 5,    /* the hypervisor refused: object in the wrong state */
  CA_ERR_UNAVAILABLE = 6       /* the backend (hypervisor, image service) is unreachable */
} ca_status;

/* Power states, as nova numbers them (nova/compute/power_state.py). */
typedef enum ca_power_state {
  CA_POWER_NOSTATE = 0,
  CA_POWER_RUNNING = 1,
  CA_POWER_PAUSED = 3,
  CA_POWER_SHUTDOWN = 4,
  CA_POWER_CRASHED = 6,
  CA_POWER_SUSPENDED = 7
} ca_power_state;

typedef enum ca_log_level {
  CA_LOG_DEBUG = 0,
  CA_LOG_INFO = 1,
  CA_LOG_WARNING = 2,
  CA_LOG_ERROR = 3
} ca_log_level;

/* Where a failing call writes its reason. */
typedef struct ca_error {
  char message[CA_ERROR_MESSAGE_MAX];
} ca_error;

/* Services the agent offers to a plugin. Valid from init until shutdown returns. */
typedef struct ca_host_api {
  uint32_t struct_size;
  void *host_context; /* pass back as the first argument of every host function */
  /* Logs through the agent's logger, tagged with the plugin's name. Thread-safe. */
  void (*log)(void *host_context, ca_log_level level, const char *message);
  /* Reads an option from the plugin's own config section ([<plugin name>]). Returns NULL
   * when unset. The string stays valid until shutdown. */
  const char *(*config_get)(void *host_context, const char *option);
  /* Reports an event the agent did not ask for, as JSON, e.g.
   * {"event": "lifecycle", "uuid": "...", "power_state": 4}. Thread-safe. */
  void (*emit_event)(void *host_context, const char *event_json);
} ca_host_api;

/* Every vtable begins with these members (in this order). */
#define CA_PLUGIN_VTABLE_HEADER                                                     \
  uint32_t struct_size;                                                             \
  /* Prepares the plugin; *state is passed to every later call. Required. */        \
  ca_status (*init)(const ca_host_api *host, void **state, ca_error *err);          \
  /* Releases everything init made. Required. */                                    \
  void (*shutdown)(void *state);

/*
 * Hypervisor plugin. Instance JSON given to spawn:
 *   {"uuid": "...", "name": "...", "vcpus": 1, "memory_mb": 512, "root_gb": 1,
 *    "disk_path": "/var/lib/compute-agent/instances/<uuid>/disk",
 *    "vifs": [{"id": "...", "address": "fa:16:3e:..", "bridge": "br100", "mtu": 1500,
 *              "devname": "tap..."}]}
 * get_host_info returns {"hypervisor_type", "hypervisor_version", "hypervisor_hostname",
 *   "vcpus", "memory_mb", "memory_mb_free", "cpu_info": {...}}.
 * list_instances returns [{"uuid", "name", "power_state", "vcpus", "memory_mb"}...].
 * get_info returns {"uuid", "power_state", "vcpus", "memory_mb", "cpu_time_ns"}.
 * Any uuid that the hypervisor does not know: CA_ERR_NOT_FOUND.
 *
 * ABI 1.1 appends optional operations (the agent reads them only when the plugin's
 * struct_size covers them; a 1.0 plugin simply does not support them):
 *   rescue(instance_json, rescue_json): stop the instance and boot it from
 *     rescue_json's "rescue_disk_path" with its own disk attached second; the domain
 *     keeps the instance's uuid. unrescue(instance_json): back to the instance's own disk.
 *   snapshot(uuid, dest_path): write a point-in-time copy of the root disk to dest_path;
 *     returns {"size": <bytes>, "disk_format": "qcow2"|"raw"}. May pause the domain while
 *     copying; must leave it in the power state it found.
 *   resize(instance_json): give the domain the instance JSON's vcpus/memory_mb (the new
 *     flavor); a running domain ends running, a stopped one stopped.
 *   get_console_output(uuid): {"output": "<the console log's tail, at most 100 KiB>"}.
 *   get_diagnostics(uuid): a JSON object of figures (nova's get_diagnostics keys where
 *     they apply: "state", "driver", "cpu_time_ns", "memory_mb", "num_cpus", ...).
 */
typedef struct ca_hypervisor_vtable {
  CA_PLUGIN_VTABLE_HEADER
  /* required */
  ca_status (*get_host_info)(void *state, char **out_json, ca_error *err);
  ca_status (*list_instances)(void *state, char **out_json, ca_error *err);
  ca_status (*spawn)(void *state, const char *instance_json, ca_error *err);
  ca_status (*get_info)(void *state, const char *uuid, char **out_json, ca_error *err);
  ca_status (*destroy)(void *state, const char *uuid, ca_error *err);
  /* optional: NULL means not supported */
  ca_status (*power_off)(void *state, const char *uuid, ca_error *err);
  ca_status (*power_on)(void *state, const char *uuid, ca_error *err);
  ca_status (*reboot)(void *state, const char *uuid, int hard, ca_error *err);
  ca_status (*pause)(void *state, const char *uuid, ca_error *err);
  ca_status (*unpause)(void *state, const char *uuid, ca_error *err);
  ca_status (*suspend)(void *state, const char *uuid, ca_error *err);
  ca_status (*resume)(void *state, const char *uuid, ca_error *err);
  /* ABI 1.1, optional */
  ca_status (*rescue)(void *state, const char *instance_json, const char *rescue_json, ca_error *err);
  ca_status (*unrescue)(void *state, const char *instance_json, ca_error *err);
  ca_status (*snapshot)(void *state, const char *uuid, const char *dest_path, char **out_json,
                        ca_error *err);
  ca_status (*resize)(void *state, const char *instance_json, ca_error *err);
  ca_status (*get_console_output)(void *state, const char *uuid, char **out_json, ca_error *err);
  ca_status (*get_diagnostics)(void *state, const char *uuid, char **out_json, ca_error *err);
} ca_hypervisor_vtable;

/*
 * Image-fetch plugin. Request JSON given to fetch:
 *   {"image_ref": "file:///srv/images/cirros.qcow2", "dest_path": "/var/lib/.../disk",
 *    "checksum": "sha256:<hex>" (optional), "max_bytes": 0 (0 = no limit)}
 * fetch writes the image to dest_path (creating or replacing it) and returns
 *   {"size": <bytes>, "checksum": "sha256:<hex>"}.
 * supports_ref returns 1 when the plugin can fetch that image reference, else 0.
 *
 * ABI 1.1, optional: upload stores a snapshot. Request JSON:
 *   {"source_path": "...", "image_name": "...", "image_id": "<uuid>", "disk_format": "qcow2"}
 * returns {"image_ref": "<a reference fetch accepts>", "size": <bytes>, "checksum": "sha256:<hex>"}.
 */
typedef struct ca_image_fetch_vtable {
  CA_PLUGIN_VTABLE_HEADER
  /* required */
  int (*supports_ref)(void *state, const char *image_ref);
  ca_status (*fetch)(void *state, const char *request_json, char **out_json, ca_error *err);
  /* ABI 1.1, optional */
  ca_status (*upload)(void *state, const char *request_json, char **out_json, ca_error *err);
  /* ABI 1.2, optional: the image cache's periodic cleanup (nova's image cache manager).
   * Request: {"instances_path": "...", "in_use": ["<image ref>", ...], "instance_disks":
   * ["<path>", ...], "remove_unused": true, "original_min_age": 86400, "resized_min_age":
   * 3600}. A cached base is in use when it caches one of `in_use` or backs one of
   * `instance_disks`; an unused one older than its minimum age is removed (never one a
   * fetch holds). Returns {"removed": [...], "kept": n, "in_use": n, "bytes": n}. */
  ca_status (*cleanup_cache)(void *state, const char *request_json, char **out_json, ca_error *err);
} ca_image_fetch_vtable;

/*
 * Network-setup plugin. plug/unplug get the instance JSON (as for spawn) and one VIF
 * JSON object from its "vifs" list (nova's network model: {"id", "address", "type",
 * "devname"?, "network": {"id", "bridge", "meta": {"mtu"?, "vlan"?}, "subnets": [...]}}).
 * Both must be idempotent: plugging a plugged VIF or unplugging a missing one succeeds.
 *
 * ABI 1.2, optional: plug_vif is plug that also says what the hypervisor must put in the
 * domain for this VIF, as JSON through out_json (malloc'd):
 *   {"type": "ethernet", "devname": "tap…", "mtu": 1500, "mac": "…"}   a tap the plugin made
 *   {"type": "bridge", "bridge": "br100", "devname": "tap…", "mtu": 1500}   libvirt makes the tap
 *   {"type": "bridge", "bridge": "br-int", "devname": "tap…",
 *    "virtualport": {"type": "openvswitch", "interfaceid": "<port id>"}}
 * The agent keeps it with the VIF (the hypervisor plugin sees it as the VIF's "domain")
 * and calls plug_vif instead of plug when the plugin has it.
 *
 * ABI 1.2, optional: reconcile runs at start-up, after the agent has plugged again the
 * VIFs of its instances. Request: {"ports": ["<port id>", ...]} (every VIF the agent has);
 * the plugin removes what it made for any other port (only what it marked as its own) and
 * returns {"removed": ["<interface>", ...]}.
 */
typedef struct ca_network_vtable {
  CA_PLUGIN_VTABLE_HEADER
  /* required */
  ca_status (*plug)(void *state, const char *instance_json, const char *vif_json,
                    ca_error *err);
  ca_status (*unplug)(void *state, const char *instance_json, const char *vif_json,
                      ca_error *err);
  /* ABI 1.2, optional */
  ca_status (*plug_vif)(void *state, const char *instance_json, const char *vif_json,
                        char **out_json, ca_error *err);
  ca_status (*reconcile)(void *state, const char *request_json, char **out_json, ca_error *err);
} ca_network_vtable;

/* What the entry symbol returns. Static: readable before init and for the whole life of
 * the loaded object. */
typedef struct ca_plugin_descriptor {
  uint32_t struct_size;     /* sizeof(ca_plugin_descriptor) */
  uint16_t abi_major;       /* CA_PLUGIN_ABI_MAJOR the plugin was built against */
  uint16_t abi_minor;       /* CA_PLUGIN_ABI_MINOR the plugin was built against */
  uint32_t kind;            /* a ca_plugin_kind */
  const char *name;         /* short name, as written in the config: "libvirt" */
  const char *version;      /* the plugin's own version: "1.2.0" */
  const char *description;  /* one line for `computectl plugins` and the logs */
  const void *vtable;       /* the ca_*_vtable matching `kind` */
} ca_plugin_descriptor;

typedef const ca_plugin_descriptor *(*ca_plugin_entry_fn)(void);

/* Builds the descriptor fields a plugin must fill in with the ABI it was built against. */
#define CA_PLUGIN_DESCRIPTOR_INIT(kind_, name_, version_, description_, vtable_ptr) \
  {sizeof(ca_plugin_descriptor), CA_PLUGIN_ABI_MAJOR, CA_PLUGIN_ABI_MINOR, (kind_),  \
   (name_), (version_), (description_), (const void *)(vtable_ptr)}

/* Copies a message into err (truncating, always NUL-terminated) and returns status. */
static inline ca_status ca_error_set(ca_error *err, ca_status status, const char *message) {
  if (err) {
    size_t n = 0;
    if (message)
      while (message[n] && n < CA_ERROR_MESSAGE_MAX - 1) n++;
    for (size_t i = 0; i < n; i++) err->message[i] = message[i];
    err->message[n] = '\0';
  }
  return status;
}

#ifdef __cplusplus
}
#endif
#endif /* COMPUTE_AGENT_PLUGIN_H */
