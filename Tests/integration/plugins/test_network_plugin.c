/* A network plugin for the loader tests, built with gcc against the installed header.
 * Compile-time switches make it wrong in one way each:
 *   -DBAD_MAJOR     descriptor claims ABI major 99
 *   -DWRONG_KIND    descriptor says hypervisor
 *   -DMISSING_UNPLUG  the required unplug function is NULL
 *   -DFAIL_INIT     init refuses with a message
 *   -DHANG_INIT     init never returns
 */
#include <compute_agent_plugin.h>
#include <unistd.h>

#ifndef PLUGIN_NAME
#define PLUGIN_NAME "testnet"
#endif

static ca_status t_init(const ca_host_api *host, void **state, ca_error *err) {
  (void)host;
  *state = 0;
#ifdef HANG_INIT
  for (;;) pause();
#endif
#ifdef FAIL_INIT
  return ca_error_set(err, CA_ERR_UNAVAILABLE, "test plugin refuses to start: no uplink");
#else
  (void)err;
  return CA_OK;
#endif
}
static void t_shutdown(void *state) { (void)state; }
static ca_status t_plug(void *s, const char *i, const char *v, ca_error *e) {
  (void)s; (void)i; (void)v; (void)e;
  return CA_OK;
}

static const ca_network_vtable vt = {
    .struct_size = sizeof(ca_network_vtable),
    .init = t_init,
    .shutdown = t_shutdown,
    .plug = t_plug,
#ifndef MISSING_UNPLUG
    .unplug = t_plug,
#endif
};

static const ca_plugin_descriptor d = {
    sizeof(ca_plugin_descriptor),
#ifdef BAD_MAJOR
    99,
#else
    CA_PLUGIN_ABI_MAJOR,
#endif
    CA_PLUGIN_ABI_MINOR,
#ifdef WRONG_KIND
    CA_PLUGIN_KIND_HYPERVISOR,
#else
    CA_PLUGIN_KIND_NETWORK,
#endif
    PLUGIN_NAME, "0.0.1", "loader test plugin", &vt};

__attribute__((visibility("default"))) const ca_plugin_descriptor *compute_agent_plugin_entry(void) { return &d; }
