/* Compile-time checks that the ABI-1.0 layout stays what released plugins were built
 * against. A change that moves any of these offsets breaks every existing plugin: append
 * fields instead. (SwiftPM also needs one C file in this target.) */
#include "compute_agent_plugin.h"

#include <stddef.h>

_Static_assert(offsetof(ca_plugin_descriptor, struct_size) == 0, "descriptor layout");
_Static_assert(offsetof(ca_plugin_descriptor, abi_major) == 4, "descriptor layout");
_Static_assert(offsetof(ca_plugin_descriptor, kind) == 8, "descriptor layout");
_Static_assert(offsetof(ca_plugin_descriptor, vtable) == 40, "descriptor layout");
_Static_assert(offsetof(ca_hypervisor_vtable, init) == 8, "vtable header layout");
_Static_assert(offsetof(ca_hypervisor_vtable, resume) == 14 * 8, "hypervisor vtable 1.0");
_Static_assert(offsetof(ca_network_vtable, unplug) == 4 * 8, "network vtable 1.0");
_Static_assert(offsetof(ca_image_fetch_vtable, fetch) == 4 * 8, "image vtable 1.0");
_Static_assert(offsetof(ca_hypervisor_vtable, rescue) == 15 * 8, "hypervisor vtable 1.1 appends");
_Static_assert(offsetof(ca_image_fetch_vtable, upload) == 5 * 8, "image vtable 1.1 appends");
_Static_assert(sizeof(ca_error) == CA_ERROR_MESSAGE_MAX, "error buffer");
