/*
 * noop — a network-setup plugin that plugs nothing.
 *
 * It is the worked example for plugin authors (docs/plugin-guide.md): plain C, only the
 * installed header, one exported entry symbol, a static descriptor and vtable. Use it
 * where networking is handled outside the agent, or in tests.
 *
 *   cc -shared -fPIC -o libcompute_network_noop.so noop.c \
 *      $(pkg-config --cflags compute-agent-plugin)
 */
#include <compute_agent_plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Per-plugin state: the host table, kept for logging. */
struct noop_state {
  const ca_host_api *host;
  int verbose;
};

static void say(struct noop_state *s, const char *what, const char *vif_json) {
  if (!s->verbose) return;
  char line[512];
  snprintf(line, sizeof line, "%s (nothing to do): %.400s", what, vif_json ? vif_json : "{}");
  s->host->log(s->host->host_context, CA_LOG_DEBUG, line);
}

static ca_status noop_init(const ca_host_api *host, void **state, ca_error *err) {
  if (!host || host->struct_size < sizeof(ca_host_api))
    return ca_error_set(err, CA_ERR_INVALID_ARGUMENT, "host table too old for this plugin");
  struct noop_state *s = calloc(1, sizeof *s);
  if (!s) return ca_error_set(err, CA_ERR_FAILED, "out of memory");
  s->host = host;
  /* [noop] verbose = true logs every plug/unplug. */
  const char *v = host->config_get(host->host_context, "verbose");
  s->verbose = v && (strcmp(v, "true") == 0 || strcmp(v, "1") == 0);
  *state = s;
  return CA_OK;
}

static void noop_shutdown(void *state) { free(state); }

static ca_status noop_plug(void *state, const char *instance_json, const char *vif_json,
                           ca_error *err) {
  (void)instance_json;
  (void)err;
  say(state, "plug", vif_json);
  return CA_OK;
}

static ca_status noop_unplug(void *state, const char *instance_json, const char *vif_json,
                             ca_error *err) {
  (void)instance_json;
  (void)err;
  say(state, "unplug", vif_json);
  return CA_OK;
}

static const ca_network_vtable noop_vtable = {
    .struct_size = sizeof(ca_network_vtable),
    .init = noop_init,
    .shutdown = noop_shutdown,
    .plug = noop_plug,
    .unplug = noop_unplug,
};

static const ca_plugin_descriptor noop_descriptor =
    CA_PLUGIN_DESCRIPTOR_INIT(CA_PLUGIN_KIND_NETWORK, "noop", "1.0.0",
                              "network plugin that plugs nothing (example for plugin authors)",
                              &noop_vtable);

__attribute__((visibility("default"))) const ca_plugin_descriptor *compute_agent_plugin_entry(void) {
  return &noop_descriptor;
}
