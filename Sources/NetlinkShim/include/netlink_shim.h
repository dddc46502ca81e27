/* Link and address operations over rtnetlink (libmnl) for the network plugins: no `ip`,
 * no `brctl`, no shell. Every function opens its own netlink socket, so calls from several
 * plugin-call threads do not share state. Errors come back as text in `err`. */
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int ifindex;
    int master;          /* ifindex of the bridge it is enslaved to, 0 = none */
    int mtu;
    int up;
    char kind[32];       /* "bridge", "tun", "vlan", "veth", "" for a plain device */
    char alias[256];     /* IFLA_IFALIAS: how the agent marks what it made */
} ca_nl_link;

/* 1 and `out` filled when `name` exists, 0 when it does not, -1 on error. */
int ca_nl_link_get(const char *name, ca_nl_link *out, char *err, size_t err_len);

/* Creates a bridge with STP off and forward delay 0, sets MTU (if > 0) and alias, raises
 * it. An existing bridge is left as it is (0); an existing non-bridge is an error. */
int ca_nl_bridge_ensure(const char *name, int mtu, const char *alias, char *err, size_t err_len);

/* Creates a persistent tap (TUNSETIFF + TUNSETPERSIST), enslaves it to `master`, sets MTU
 * and alias, raises it. An existing tap is re-enslaved and raised (idempotent). */
int ca_nl_tap_ensure(const char *name, const char *master, int mtu, const char *alias, char *err, size_t err_len);

/* Creates VLAN `vlan_id` on `parent` as `name` (if absent), enslaves it to `master`, up. */
int ca_nl_vlan_ensure(const char *name, const char *parent, int vlan_id, const char *master, int mtu,
                      const char *alias, char *err, size_t err_len);

/* Deletes a link; one that does not exist is success. */
int ca_nl_link_delete(const char *name, char *err, size_t err_len);

/* Lists the links whose alias starts with `prefix`, as malloc'd text (caller frees): one
 * "<name>\t<alias>\n" line each. Returns 0, or -1 with `err`. */
int ca_nl_links_marked(const char *prefix, char **out, char *err, size_t err_len);

/* Adds an IPv4 address ("10.0.0.1/24") to a device; an address already there is success. */
int ca_nl_addr_add(const char *dev, const char *cidr, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif
