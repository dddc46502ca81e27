#pragma once
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdlib.h>

/* Lifecycle events without casting Swift closures to libvirt's generic callback type:
 * the trampoline below has the exact lifecycle signature and forwards the domain's uuid. */
typedef void (*ca_lifecycle_cb)(void *opaque, const char *uuid, int event, int detail);

typedef struct ca_lifecycle_ctx {
  ca_lifecycle_cb cb;
  void *opaque;
} ca_lifecycle_ctx;

static inline int ca_lifecycle_trampoline(virConnectPtr conn, virDomainPtr dom, int event, int detail,
                                          void *opaque) {
  (void)conn;
  ca_lifecycle_ctx *ctx = (ca_lifecycle_ctx *)opaque;
  char uuid[VIR_UUID_STRING_BUFLEN];
  if (virDomainGetUUIDString(dom, uuid) == 0) ctx->cb(ctx->opaque, uuid, event, detail);
  return 0;
}

/* Registers `cb` for VIR_DOMAIN_EVENT_ID_LIFECYCLE on `conn`; returns the callback id or -1. */
static inline int ca_register_lifecycle(virConnectPtr conn, ca_lifecycle_cb cb, void *opaque) {
  ca_lifecycle_ctx *ctx = (ca_lifecycle_ctx *)malloc(sizeof *ctx);
  if (!ctx) return -1;
  ctx->cb = cb;
  ctx->opaque = opaque;
  int id = virConnectDomainEventRegisterAny(conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                            VIR_DOMAIN_EVENT_CALLBACK(ca_lifecycle_trampoline), ctx, free);
  if (id < 0) free(ctx);
  return id;
}
