#include "netlink_shim.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/if.h>
#include <linux/if_link.h>
#include <linux/if_tun.h>
#include <linux/rtnetlink.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#ifndef IFLA_BR_STP_STATE
#define IFLA_BR_STP_STATE 5
#endif
#ifndef IFLA_BR_FORWARD_DELAY
#define IFLA_BR_FORWARD_DELAY 1
#endif

static int fail(char *err, size_t len, const char *what, int code) {
    snprintf(err, len, "%s: %s", what, strerror(code));
    return -1;
}

/* Sends one request and reads the answers; `cb` (may be NULL) sees each. Returns 0, or
 * -errno (the kernel's NLMSG_ERROR). */
static int talk(struct nlmsghdr *nlh, mnl_cb_t cb, void *data) {
    struct mnl_socket *nl = mnl_socket_open(NETLINK_ROUTE);
    if (!nl) return -errno;
    if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) { int e = errno; mnl_socket_close(nl); return -e; }
    unsigned portid = mnl_socket_get_portid(nl);
    nlh->nlmsg_seq = (unsigned)time(NULL);
    nlh->nlmsg_flags |= NLM_F_ACK;
    if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) { int e = errno; mnl_socket_close(nl); return -e; }
    char buf[MNL_SOCKET_BUFFER_SIZE];
    int ret;
    for (;;) {
        ret = mnl_socket_recvfrom(nl, buf, sizeof buf);
        if (ret < 0) { ret = -errno; break; }
        ret = mnl_cb_run(buf, ret, nlh->nlmsg_seq, portid, cb, data);
        if (ret <= MNL_CB_STOP) { ret = ret < 0 ? -errno : 0; break; }
    }
    mnl_socket_close(nl);
    return ret;
}

static struct nlmsghdr *link_msg(char *buf, int type, int flags) {
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = type;
    nlh->nlmsg_flags = NLM_F_REQUEST | flags;
    struct ifinfomsg *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof *ifm);
    ifm->ifi_family = AF_UNSPEC;
    return nlh;
}

static int info_kind_cb(const struct nlattr *a, void *data) {
    ca_nl_link *l = data;
    if (mnl_attr_get_type(a) == IFLA_INFO_KIND) snprintf(l->kind, sizeof l->kind, "%s", mnl_attr_get_str(a));
    return MNL_CB_OK;
}

static int link_attr_cb(const struct nlattr *a, void *data) {
    ca_nl_link *l = data;
    switch (mnl_attr_get_type(a)) {
    case IFLA_MASTER: l->master = (int)mnl_attr_get_u32(a); break;
    case IFLA_MTU: l->mtu = (int)mnl_attr_get_u32(a); break;
    case IFLA_IFALIAS: snprintf(l->alias, sizeof l->alias, "%s", mnl_attr_get_str(a)); break;
    case IFLA_LINKINFO: mnl_attr_parse_nested(a, info_kind_cb, l); break;
    }
    return MNL_CB_OK;
}

static int link_cb(const struct nlmsghdr *nlh, void *data) {
    ca_nl_link *l = data;
    struct ifinfomsg *ifm = mnl_nlmsg_get_payload(nlh);
    l->ifindex = ifm->ifi_index;
    l->up = (ifm->ifi_flags & IFF_UP) != 0;
    mnl_attr_parse(nlh, sizeof *ifm, link_attr_cb, l);
    return MNL_CB_OK;
}

int ca_nl_link_get(const char *name, ca_nl_link *out, char *err, size_t err_len) {
    memset(out, 0, sizeof *out);
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = link_msg(buf, RTM_GETLINK, 0);
    mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
    int rc = talk(nlh, link_cb, out);
    if (rc == -ENODEV) return 0;
    if (rc < 0) return fail(err, err_len, "reading link", -rc);
    return out->ifindex > 0 ? 1 : 0;
}

/* Sets master (by name, "" = none), MTU, alias and up on an existing link. */
static int link_set(const char *name, const char *master, int mtu, const char *alias, char *err, size_t err_len) {
    int master_index = 0;
    if (master && *master) {
        ca_nl_link m;
        int found = ca_nl_link_get(master, &m, err, err_len);
        if (found < 0) return -1;
        if (!found) { snprintf(err, err_len, "bridge %s does not exist", master); return -1; }
        master_index = m.ifindex;
    }
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = link_msg(buf, RTM_NEWLINK, 0);
    struct ifinfomsg *ifm = mnl_nlmsg_get_payload(nlh);
    ifm->ifi_flags = IFF_UP;
    ifm->ifi_change = IFF_UP;
    mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
    if (master_index) mnl_attr_put_u32(nlh, IFLA_MASTER, (uint32_t)master_index);
    if (mtu > 0) mnl_attr_put_u32(nlh, IFLA_MTU, (uint32_t)mtu);
    if (alias && *alias) mnl_attr_put_strz(nlh, IFLA_IFALIAS, alias);
    int rc = talk(nlh, NULL, NULL);
    if (rc < 0) {
        char what[96];
        snprintf(what, sizeof what, "configuring %s", name);
        return fail(err, err_len, what, -rc);
    }
    return 0;
}

int ca_nl_bridge_ensure(const char *name, int mtu, const char *alias, char *err, size_t err_len) {
    ca_nl_link l;
    int found = ca_nl_link_get(name, &l, err, err_len);
    if (found < 0) return -1;
    if (found) {
        if (strcmp(l.kind, "bridge") != 0) {
            snprintf(err, err_len, "%s exists and is not a bridge (kind '%s'): in use by something else", name, l.kind);
            return -1;
        }
        if (!l.up) return link_set(name, NULL, 0, NULL, err, err_len);
        return 0;
    }
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = link_msg(buf, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
    mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
    if (mtu > 0) mnl_attr_put_u32(nlh, IFLA_MTU, (uint32_t)mtu);
    struct nlattr *info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
    mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "bridge");
    struct nlattr *data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
    mnl_attr_put_u32(nlh, IFLA_BR_STP_STATE, 0);
    mnl_attr_put_u32(nlh, IFLA_BR_FORWARD_DELAY, 0);
    mnl_attr_nest_end(nlh, data);
    mnl_attr_nest_end(nlh, info);
    int rc = talk(nlh, NULL, NULL);
    if (rc < 0 && rc != -EEXIST) {
        char what[96];
        snprintf(what, sizeof what, "creating bridge %s", name);
        return fail(err, err_len, what, -rc);
    }
    return link_set(name, NULL, 0, alias, err, err_len);
}

int ca_nl_tap_ensure(const char *name, const char *master, int mtu, const char *alias, char *err, size_t err_len) {
    ca_nl_link l;
    int found = ca_nl_link_get(name, &l, err, err_len);
    if (found < 0) return -1;
    if (found && strcmp(l.kind, "tun") != 0) {
        snprintf(err, err_len, "%s exists and is not a tap (kind '%s'): in use by something else", name, l.kind);
        return -1;
    }
    if (!found) {
        int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
        if (fd < 0) return fail(err, err_len, "opening /dev/net/tun", errno);
        struct ifreq ifr;
        memset(&ifr, 0, sizeof ifr);
        ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
        snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", name);
        if (ioctl(fd, TUNSETIFF, &ifr) < 0) { int e = errno; close(fd); return fail(err, err_len, "creating the tap (TUNSETIFF)", e); }
        if (ioctl(fd, TUNSETPERSIST, 1) < 0) { int e = errno; close(fd); return fail(err, err_len, "keeping the tap (TUNSETPERSIST)", e); }
        close(fd);
    }
    return link_set(name, master, mtu, alias, err, err_len);
}

int ca_nl_vlan_ensure(const char *name, const char *parent, int vlan_id, const char *master, int mtu,
                      const char *alias, char *err, size_t err_len) {
    ca_nl_link l;
    int found = ca_nl_link_get(name, &l, err, err_len);
    if (found < 0) return -1;
    if (!found) {
        ca_nl_link p;
        int pf = ca_nl_link_get(parent, &p, err, err_len);
        if (pf < 0) return -1;
        if (!pf) { snprintf(err, err_len, "physical interface %s does not exist", parent); return -1; }
        char buf[MNL_SOCKET_BUFFER_SIZE];
        struct nlmsghdr *nlh = link_msg(buf, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
        mnl_attr_put_u32(nlh, IFLA_LINK, (uint32_t)p.ifindex);
        struct nlattr *info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
        mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "vlan");
        struct nlattr *data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
        mnl_attr_put_u16(nlh, IFLA_VLAN_ID, (uint16_t)vlan_id);
        mnl_attr_nest_end(nlh, data);
        mnl_attr_nest_end(nlh, info);
        int rc = talk(nlh, NULL, NULL);
        if (rc < 0 && rc != -EEXIST) {
            char what[96];
            snprintf(what, sizeof what, "creating VLAN interface %s", name);
            fail(err, err_len, what, -rc);
            if (rc == -EOPNOTSUPP) {
                size_t used = strlen(err);
                snprintf(err + used, err_len - used, " (this kernel has no 802.1Q VLAN support: load the 8021q module)");
            }
            return -1;
        }
    }
    return link_set(name, master, mtu, alias, err, err_len);
}

int ca_nl_link_delete(const char *name, char *err, size_t err_len) {
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = link_msg(buf, RTM_DELLINK, 0);
    mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
    int rc = talk(nlh, NULL, NULL);
    if (rc == -ENODEV || rc == 0) return 0;
    char what[96];
    snprintf(what, sizeof what, "deleting %s", name);
    return fail(err, err_len, what, -rc);
}

int ca_nl_addr_add(const char *dev, const char *cidr, char *err, size_t err_len) {
    char ip[64];
    snprintf(ip, sizeof ip, "%s", cidr);
    char *slash = strchr(ip, '/');
    int prefix = 32;
    if (slash) { *slash = 0; prefix = atoi(slash + 1); }
    struct in_addr a;
    if (inet_pton(AF_INET, ip, &a) != 1 || prefix < 0 || prefix > 32) {
        snprintf(err, err_len, "'%s' is not an IPv4 address/prefix", cidr);
        return -1;
    }
    ca_nl_link l;
    int found = ca_nl_link_get(dev, &l, err, err_len);
    if (found <= 0) { if (found == 0) snprintf(err, err_len, "%s does not exist", dev); return -1; }
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = RTM_NEWADDR;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL;
    struct ifaddrmsg *ifa = mnl_nlmsg_put_extra_header(nlh, sizeof *ifa);
    ifa->ifa_family = AF_INET;
    ifa->ifa_prefixlen = (unsigned char)prefix;
    ifa->ifa_index = (unsigned)l.ifindex;
    mnl_attr_put_u32(nlh, IFA_LOCAL, a.s_addr);
    mnl_attr_put_u32(nlh, IFA_ADDRESS, a.s_addr);
    int rc = talk(nlh, NULL, NULL);
    if (rc < 0 && rc != -EEXIST) {
        char what[96];
        snprintf(what, sizeof what, "adding %s to %s", cidr, dev);
        return fail(err, err_len, what, -rc);
    }
    return 0;
}

typedef struct {
    const char *prefix;
    char *buf;
    size_t len, cap;
} marked_list;

static int marked_cb(const struct nlmsghdr *nlh, void *data) {
    marked_list *m = data;
    ca_nl_link l;
    memset(&l, 0, sizeof l);
    struct ifinfomsg *ifm = mnl_nlmsg_get_payload(nlh);
    l.ifindex = ifm->ifi_index;
    char name[IFNAMSIZ] = {0};
    struct nlattr *a;
    mnl_attr_for_each(a, nlh, sizeof *ifm) {
        if (mnl_attr_get_type(a) == IFLA_IFNAME) snprintf(name, sizeof name, "%s", mnl_attr_get_str(a));
    }
    mnl_attr_parse(nlh, sizeof *ifm, link_attr_cb, &l);
    if (!name[0] || strncmp(l.alias, m->prefix, strlen(m->prefix)) != 0) return MNL_CB_OK;
    size_t need = strlen(name) + strlen(l.alias) + 3;
    if (m->len + need + 1 > m->cap) {
        size_t cap = (m->len + need + 1) * 2;
        char *b = realloc(m->buf, cap);
        if (!b) return MNL_CB_ERROR;
        m->buf = b;
        m->cap = cap;
    }
    m->len += (size_t)sprintf(m->buf + m->len, "%s\t%s\n", name, l.alias);
    return MNL_CB_OK;
}

int ca_nl_links_marked(const char *prefix, char **out, char *err, size_t err_len) {
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = link_msg(buf, RTM_GETLINK, NLM_F_DUMP);
    marked_list m = {.prefix = prefix};
    int rc = talk(nlh, marked_cb, &m);
    if (rc < 0) { free(m.buf); return fail(err, err_len, "listing links", -rc); }
    *out = m.buf ? m.buf : strdup("");
    return 0;
}
