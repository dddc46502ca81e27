import Dispatch
import NetlinkShim
import PluginSDK
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The network plugin "linuxbridge": a Linux bridge per network and a tap per VIF, made
/// over rtnetlink (libmnl, `Sources/NetlinkShim`), never by running `ip` or `brctl`. The
/// domain gets the tap as `<interface type='ethernet'>` (libvirt neither creates nor
/// deletes it), so the tap's life is the plugin's: made at plug, deleted at unplug.
///
/// With `[linuxbridge] dhcp = true` the plugin also serves the networks it plugs: the
/// bridge gets the subnet's gateway address, and one dnsmasq per bridge (started,
/// supervised and stopped by the plugin) answers each VIF's MAC with its fixed address from
/// a hosts file, reloaded with SIGHUP when VIFs come and go — nova-network's way.
///
/// What the plugin makes carries the alias `compute-agent …` (IFLA_IFALIAS); unplug only
/// ever deletes a tap with that mark.
final class LinuxBridgeNetwork: @unchecked Sendable {
    // Safe to share: options are immutable; `networks` is behind a Mutex; netlink calls
    // open their own sockets.
    let host: PluginHostAPI
    let physicalInterface: String?
    let dhcp: Bool
    let stateDir: String
    let dnsmasq: String
    private let networks = Mutex<[String: BridgeNetwork]>([:])

    /// What the plugin serves on one bridge: its VIFs and their dnsmasq.
    struct BridgeNetwork {
        var vifs: [String: (mac: String, ip: String?)] = [:]
        var gatewayCIDR: String?
        var dnsmasqPID: pid_t = 0
    }

    static let mark = "compute-agent"

    init(host: PluginHostAPI) throws(PluginFailure) {
        self.host = host
        physicalInterface = host.option("physical_interface").flatMap { $0.isEmpty ? nil : $0 }
        switch host.option("dhcp")?.lowercased() {
        case nil, "false", "no", "0", "off": dhcp = false
        case "true", "yes", "1", "on": dhcp = true
        case let v?: throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "[linuxbridge] dhcp = '\(v)' is not true or false")
        }
        stateDir = host.option("state_dir") ?? "/var/lib/compute-agent/linuxbridge"
        dnsmasq = host.option("dnsmasq") ?? "/usr/sbin/dnsmasq"
        if dhcp {
            // A missing dnsmasq is not fatal at start: instances without DHCP still plug,
            // and each VIF that needs it gets a fault naming it (see `serve`).
            if access(dnsmasq, X_OK) != 0 {
                host.log(CA_LOG_WARNING, "[linuxbridge] dhcp = true needs dnsmasq, but \(dnsmasq) cannot be run: \(String(cString: strerror(errno))) (install dnsmasq-base); VIFs that need DHCP will fail to plug")
            }
            if mkdir(stateDir, 0o750) != 0 && errno != EEXIST {
                throw PluginFailure(CA_ERR_FAILED, "cannot create \(stateDir): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// One VIF of the request, in nova's network model.
    struct VIF {
        var id: String
        var mac: String
        var tap: String
        var bridge: String
        var mtu: Int
        var vlan: Int?
        var fixedIP: String?
        var gatewayCIDR: String?

        init(_ v: JSONValue) throws(PluginFailure) {
            guard let id = v["id"]?.stringValue, !id.isEmpty else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "the VIF has no 'id'") }
            self.id = id
            if let t = v["type"]?.stringValue, t != "bridge" {
                throw PluginFailure(CA_ERR_NOT_SUPPORTED, "VIF \(id) is of type '\(t)'; the linuxbridge plugin plugs type 'bridge'")
            }
            guard let mac = v["address"]?.stringValue else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "VIF \(id) has no 'address' (MAC)") }
            self.mac = mac.lowercased()
            tap = v["devname"]?.stringValue ?? "tap" + String(id.prefix(11))
            let net = v["network"]
            guard let br = net?["bridge"]?.stringValue ?? v["bridge"]?.stringValue else {
                throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "VIF \(id) names no bridge (network.bridge)")
            }
            bridge = br
            mtu = net?["meta"]?["mtu"]?.intValue ?? v["mtu"]?.intValue ?? 1500
            vlan = net?["meta"]?["vlan"]?.intValue
            for s in net?["subnets"]?.arrayValue ?? [] {
                guard let cidr = s["cidr"]?.stringValue, !cidr.contains(":"), let slash = cidr.firstIndex(of: "/") else { continue }
                let prefix = cidr[cidr.index(after: slash)...]
                if let ip = s["ips"]?.arrayValue?.first?["address"]?.stringValue { fixedIP = ip }
                if let gw = s["gateway"]?["address"]?.stringValue { gatewayCIDR = "\(gw)/\(prefix)" }
                break
            }
            for name in [tap, bridge] where name.utf8.count > 15 || name.isEmpty {
                throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "interface name '\(name)' of VIF \(id) is not 1 to 15 bytes")
            }
        }
    }

    // MARK: - plug / unplug

    func plug(instance: JSONValue, vif json: JSONValue) throws(PluginFailure) -> JSONValue {
        let vif = try VIF(json)
        let uuid = instance["uuid"]?.stringValue ?? "?"
        var err = [CChar](repeating: 0, count: 512)
        func check(_ rc: Int32, _ what: String) throws(PluginFailure) {
            if rc != 0 {
                let why = String(cString: err)
                let denied = why.contains("Operation not permitted") || why.contains("Permission denied")
                let hint = denied ? " (the agent needs CAP_NET_ADMIN to plug VIFs: run it as root or grant the capability)" : ""
                throw PluginFailure(denied ? CA_ERR_INVALID_STATE : CA_ERR_FAILED, "plugging VIF \(vif.id) (\(what)): \(why)\(hint)")
            }
        }
        try check(ca_nl_bridge_ensure(vif.bridge, Int32(vif.mtu), Self.mark, &err, err.count), "bridge \(vif.bridge)")
        if let vlan = vif.vlan, let phys = physicalInterface {
            let name = String("\(phys).\(vlan)".prefix(15))
            try check(ca_nl_vlan_ensure(name, phys, Int32(vlan), vif.bridge, Int32(vif.mtu), Self.mark, &err, err.count),
                      "VLAN \(vlan) on \(phys)")
        }
        try check(ca_nl_tap_ensure(vif.tap, vif.bridge, Int32(vif.mtu), "\(Self.mark) vif=\(vif.id) instance=\(uuid)", &err, err.count),
                  "tap \(vif.tap)")
        if dhcp { try serve(vif) }
        host.log(CA_LOG_INFO, "plugged VIF \(vif.id): tap \(vif.tap) in bridge \(vif.bridge) (mtu \(vif.mtu))")
        return .object(["type": "ethernet", "devname": .string(vif.tap), "bridge": .string(vif.bridge),
                        "mtu": .int(Int64(vif.mtu)), "mac": .string(vif.mac)])
    }

    func unplug(instance: JSONValue, vif json: JSONValue) throws(PluginFailure) {
        let vif = try VIF(json)
        var link = ca_nl_link()
        var err = [CChar](repeating: 0, count: 512)
        let found = ca_nl_link_get(vif.tap, &link, &err, err.count)
        if found < 0 { throw PluginFailure(CA_ERR_FAILED, "unplugging VIF \(vif.id): \(String(cString: err))") }
        if found == 1 {
            let alias = withUnsafeBytes(of: link.alias) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if alias.hasPrefix(Self.mark) {
                if ca_nl_link_delete(vif.tap, &err, err.count) != 0 {
                    throw PluginFailure(CA_ERR_FAILED, "unplugging VIF \(vif.id): \(String(cString: err))")
                }
            } else {
                host.log(CA_LOG_WARNING, "VIF \(vif.id): \(vif.tap) was not made by the agent (no '\(Self.mark)' alias); left alone")
            }
        }
        if dhcp { forget(vif) }
        host.log(CA_LOG_INFO, "unplugged VIF \(vif.id) (tap \(vif.tap))")
    }

    /// Removes the taps this plugin made (alias `compute-agent vif=<port> …`) for ports the
    /// agent no longer has — what a crash between unplug and the journal left behind.
    /// Nothing without the mark is touched.
    func reconcile(_ req: JSONValue) throws(PluginFailure) -> JSONValue {
        let known = Set((req["ports"]?.arrayValue ?? []).compactMap(\.stringValue))
        var out: UnsafeMutablePointer<CChar>?
        var err = [CChar](repeating: 0, count: 512)
        guard ca_nl_links_marked("\(Self.mark) vif=", &out, &err, err.count) == 0, let out else {
            throw PluginFailure(CA_ERR_FAILED, "listing the agent's interfaces: \(String(cString: err))")
        }
        let listing = String(cString: out)
        free(out)
        var removed: [JSONValue] = []
        for line in listing.split(separator: "\n") {
            let parts = line.split(separator: "\t", maxSplits: 1)
            guard parts.count == 2, let vifField = parts[1].split(separator: " ").first(where: { $0.hasPrefix("vif=") }) else { continue }
            let port = String(vifField.dropFirst(4))
            if known.contains(port) { continue }
            let name = String(parts[0])
            if ca_nl_link_delete(name, &err, err.count) == 0 {
                removed.append(.string(name))
                host.log(CA_LOG_WARNING, "removed \(name): the agent made it for port \(port), which no instance has any more")
            } else {
                host.log(CA_LOG_ERROR, "could not remove \(name) (port \(port)): \(String(cString: err))")
            }
        }
        return .object(["removed": .array(removed)])
    }

    // MARK: - DHCP for the networks the plugin serves

    private func serve(_ vif: VIF) throws(PluginFailure) {
        guard let ip = vif.fixedIP, let gw = vif.gatewayCIDR else {
            host.log(CA_LOG_WARNING, "VIF \(vif.id) has no fixed IPv4 address and gateway: no DHCP entry")
            return
        }
        guard access(dnsmasq, X_OK) == 0 else {
            throw PluginFailure(CA_ERR_UNAVAILABLE, "plugging VIF \(vif.id): DHCP on bridge \(vif.bridge) needs dnsmasq, but \(dnsmasq) cannot be run: \(String(cString: strerror(errno))) (install dnsmasq-base, or set [linuxbridge] dhcp = false)")
        }
        var err = [CChar](repeating: 0, count: 512)
        if ca_nl_addr_add(vif.bridge, gw, &err, err.count) != 0 {
            throw PluginFailure(CA_ERR_FAILED, "plugging VIF \(vif.id): gateway \(gw) on \(vif.bridge): \(String(cString: err))")
        }
        let (pid, net) = networks.withLock { n -> (pid_t, BridgeNetwork) in
            n[vif.bridge, default: BridgeNetwork()].vifs[vif.id] = (vif.mac, ip)
            n[vif.bridge]!.gatewayCIDR = gw
            return (n[vif.bridge]!.dnsmasqPID, n[vif.bridge]!)
        }
        try writeHosts(vif.bridge, net)
        if pid > 0 && kill(pid, 0) == 0 {
            kill(pid, SIGHUP)
        } else {
            try startDnsmasq(vif.bridge, gateway: gw)
        }
    }

    private func forget(_ vif: VIF) {
        let (pid, net, empty) = networks.withLock { n -> (pid_t, BridgeNetwork?, Bool) in
            n[vif.bridge]?.vifs[vif.id] = nil
            guard let b = n[vif.bridge] else { return (0, nil, false) }
            if b.vifs.isEmpty { n[vif.bridge] = nil }
            return (b.dnsmasqPID, b, b.vifs.isEmpty)
        }
        guard let net else { return }
        if empty {
            if pid > 0 { kill(pid, SIGTERM) }
            unlink(hostsPath(vif.bridge))
            unlink(leasesPath(vif.bridge))
            host.log(CA_LOG_INFO, "bridge \(vif.bridge) has no VIFs left: stopped its dnsmasq")
        } else {
            try? writeHosts(vif.bridge, net)
            if pid > 0 { kill(pid, SIGHUP) }
        }
    }

    private func hostsPath(_ bridge: String) -> String { "\(stateDir)/\(bridge).hosts" }
    private func leasesPath(_ bridge: String) -> String { "\(stateDir)/\(bridge).leases" }

    private func writeHosts(_ bridge: String, _ net: BridgeNetwork) throws(PluginFailure) {
        let text = net.vifs.values.compactMap { v in v.ip.map { "\(v.mac),\($0)\n" } }.sorted().joined()
        let path = hostsPath(bridge), tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw PluginFailure(CA_ERR_FAILED, "cannot write \(tmp): \(String(cString: strerror(errno)))") }
        var bytes = Array(text.utf8)
        _ = bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        guard rename(tmp, path) == 0 else { throw PluginFailure(CA_ERR_FAILED, "cannot replace \(path)") }
    }

    /// Starts dnsmasq for `bridge` in the foreground as the agent's child, and a thread
    /// that reaps it and starts it again if it dies while the bridge still has VIFs.
    private func startDnsmasq(_ bridge: String, gateway: String) throws(PluginFailure) {
        let gwIP = String(gateway.prefix { $0 != "/" })
        let argv = [dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--bind-interfaces",
                    "--interface=\(bridge)", "--except-interface=lo", "--listen-address=\(gwIP)",
                    "--dhcp-range=\(gwIP),static,\(Self.netmask(gateway)),1h", "--dhcp-hostsfile=\(hostsPath(bridge))",
                    "--dhcp-leasefile=\(leasesPath(bridge))", "--no-ping", "--no-resolv", "--no-hosts",
                    "--pid-file=\(stateDir)/\(bridge).pid", "--log-dhcp", "--log-facility=\(stateDir)/\(bridge).log",
                    // Stay the agent's user (dnsmasq would drop to `nobody`, who cannot read
                    // the hosts file in the agent's state directory).
                    "--user=\(Self.userName())"]
        var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let rc = posix_spawn(&pid, dnsmasq, &actions, nil, &cargs, environ)
        guard rc == 0 else { throw PluginFailure(CA_ERR_UNAVAILABLE, "cannot start dnsmasq for \(bridge): \(String(cString: strerror(rc)))") }
        networks.withLock { $0[bridge]?.dnsmasqPID = pid }
        host.log(CA_LOG_INFO, "started dnsmasq (pid \(pid)) for bridge \(bridge), gateway \(gateway)")
        let supervisor = Supervisor(plugin: self, bridge: bridge, gateway: gateway, pid: pid)
        let thread = DispatchQueue(label: "dnsmasq-\(bridge)")
        thread.async { supervisor.watch() }
    }

    fileprivate func dnsmasqExited(_ bridge: String, gateway: String, pid: pid_t, status: Int32) {
        let stillServing = networks.withLock { n -> Bool in
            guard n[bridge]?.dnsmasqPID == pid else { return false }
            n[bridge]?.dnsmasqPID = 0
            return !(n[bridge]?.vifs.isEmpty ?? true)
        }
        guard stillServing else { return }
        host.log(CA_LOG_ERROR, "dnsmasq for bridge \(bridge) exited (status \(status)); starting it again")
        sleep(1)
        do { try startDnsmasq(bridge, gateway: gateway) } catch {
            host.log(CA_LOG_ERROR, "dnsmasq for bridge \(bridge) could not be started again: \(error.message)")
        }
    }

    static func userName() -> String {
        guard let pw = getpwuid(geteuid()), let name = pw.pointee.pw_name else { return "root" }
        return String(cString: name)
    }

    static func netmask(_ cidr: String) -> String {
        let prefix = Int(cidr.split(separator: "/").last ?? "24") ?? 24
        let mask: UInt32 = prefix == 0 ? 0 : ~UInt32(0) << (32 - UInt32(prefix))
        return [24, 16, 8, 0].map { String((mask >> UInt32($0)) & 0xFF) }.joined(separator: ".")
    }
}

/// Waits for one dnsmasq to exit (it is the agent's child) and tells the plugin.
private final class Supervisor: @unchecked Sendable {
    // Safe: immutable after init; used by the one thread that waits.
    let plugin: LinuxBridgeNetwork
    let bridge: String
    let gateway: String
    let pid: pid_t

    init(plugin: LinuxBridgeNetwork, bridge: String, gateway: String, pid: pid_t) {
        self.plugin = plugin
        self.bridge = bridge
        self.gateway = gateway
        self.pid = pid
    }

    func watch() {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        plugin.dnsmasqExited(bridge, gateway: gateway, pid: pid, status: status)
    }
}

nonisolated(unsafe) private let vtable: UnsafeMutablePointer<ca_network_vtable> = {
    // Written once here, read-only afterwards.
    let v = UnsafeMutablePointer<ca_network_vtable>.allocate(capacity: 1)
    v.initialize(to: ca_network_vtable(
        struct_size: UInt32(MemoryLayout<ca_network_vtable>.size),
        init: { host, state, err in
            PluginSDK.run(err) { () throws(PluginFailure) in
                guard let host else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "no host table") }
                state!.pointee = Unmanaged.passRetained(try LinuxBridgeNetwork(host: PluginHostAPI(host))).toOpaque()
            }
        },
        shutdown: { state in if let state { Unmanaged<LinuxBridgeNetwork>.fromOpaque(state).release() } },
        plug: { state, inst, vif, err in
            PluginSDK.run(err) { () throws(PluginFailure) in
                let p = Unmanaged<LinuxBridgeNetwork>.fromOpaque(state!).takeUnretainedValue()
                _ = try p.plug(instance: PluginSDK.parse(inst, what: "instance"), vif: PluginSDK.parse(vif, what: "vif"))
            }
        },
        unplug: { state, inst, vif, err in
            PluginSDK.run(err) { () throws(PluginFailure) in
                let p = Unmanaged<LinuxBridgeNetwork>.fromOpaque(state!).takeUnretainedValue()
                try p.unplug(instance: PluginSDK.parse(inst, what: "instance"), vif: PluginSDK.parse(vif, what: "vif"))
            }
        },
        plug_vif: { state, inst, vif, out, err in
            PluginSDK.runJSON(out, err) { () throws(PluginFailure) in
                let p = Unmanaged<LinuxBridgeNetwork>.fromOpaque(state!).takeUnretainedValue()
                return try p.plug(instance: PluginSDK.parse(inst, what: "instance"), vif: PluginSDK.parse(vif, what: "vif"))
            }
        },
        reconcile: { state, req, out, err in
            PluginSDK.runJSON(out, err) { () throws(PluginFailure) in
                let p = Unmanaged<LinuxBridgeNetwork>.fromOpaque(state!).takeUnretainedValue()
                return try p.reconcile(PluginSDK.parse(req, what: "request"))
            }
        }))
    return v
}()

nonisolated(unsafe) private let descriptor = PluginSDK.makeDescriptor(
    kind: CA_PLUGIN_KIND_NETWORK, name: "linuxbridge", version: "1.0.0",
    description: "Linux bridge + tap per VIF over rtnetlink, optional dnsmasq DHCP", vtable: UnsafeRawPointer(vtable))

@_cdecl("compute_agent_plugin_entry")
public func computeAgentPluginEntry() -> UnsafePointer<ca_plugin_descriptor> { descriptor }
