/*
 * recnet — a test network plugin that records every plug and unplug (option record_file,
 * one line "plug <vif id>" / "unplug <vif id>" each) and refuses to plug a VIF whose JSON
 * has "fail_plug": true. The rollback tests read the record.
 */
#include "compute_agent_plugin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct recnet { char path[512]; } recnet;

static ca_status r_init(const ca_host_api *host, void **state, ca_error *err) {
  const char *p = host->config_get(host->host_context, "record_file");
  if (!p) return ca_error_set(err, CA_ERR_INVALID_ARGUMENT, "[recnet] record_file is required");
  recnet *r = calloc(1, sizeof *r);
  snprintf(r->path, sizeof r->path, "%s", p);
  *state = r;
  return CA_OK;
}

static void r_shutdown(void *state) { free(state); }

static void vif_id(const char *vif, char *out, size_t n) {
  const char *p = strstr(vif, "\"id\"");
  out[0] = 0;
  if (!p) { snprintf(out, n, "?"); return; }
  p = strchr(p + 4, '"');
  if (!p) return;
  p++;
  size_t i = 0;
  while (*p && *p != '"' && i + 1 < n) out[i++] = *p++;
  out[i] = 0;
}

static ca_status record(recnet *r, const char *what, const char *vif) {
  char id[128];
  vif_id(vif, id, sizeof id);
  FILE *f = fopen(r->path, "a");
  if (!f) return CA_ERR_FAILED;
  fprintf(f, "%s %s\n", what, id);
  fclose(f);
  return CA_OK;
}

static ca_status r_plug(void *state, const char *inst, const char *vif, ca_error *err) {
  (void)inst;
  if (strstr(vif, "fail_plug")) return ca_error_set(err, CA_ERR_FAILED, "recnet: cannot plug this VIF (bridge missing)");
  return record(state, "plug", vif);
}

static ca_status r_unplug(void *state, const char *inst, const char *vif, ca_error *err) {
  (void)inst; (void)err;
  return record(state, "unplug", vif);
}

static const ca_network_vtable vtable = {
    .struct_size = sizeof(ca_network_vtable), .init = r_init, .shutdown = r_shutdown,
    .plug = r_plug, .unplug = r_unplug,
};

static const ca_plugin_descriptor descriptor =
    CA_PLUGIN_DESCRIPTOR_INIT(CA_PLUGIN_KIND_NETWORK, "recnet", "1.0.0", "test network plugin that records", &vtable);

const ca_plugin_descriptor *compute_agent_plugin_entry(void) { return &descriptor; }
