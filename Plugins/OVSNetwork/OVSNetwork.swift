import NetlinkShim
import PluginSDK

#if canImport(Glibc)
import Glibc
#endif

/// The network plugin "ovs": each VIF becomes a port of the Open vSwitch integration bridge
/// with the `external_ids` Neutron's OVS agent looks for (`iface-id`, `attached-mac`,
/// `iface-status`, `vm-uuid`) and the network's MTU as `mtu_request` — what os-vif's ovs
/// plugin does with `create_port`. The port is a tap the plugin makes over rtnetlink (so it
/// works with the userspace `netdev` datapath, where OVS cannot make kernel taps itself),
/// handed to the domain as `<interface type='ethernet'>`.
///
/// It drives `ovs-vsctl` rather than speaking OVSDB's JSON-RPC itself: one command per plug
/// is atomic on the database side (`--may-exist`, one transaction), `ovs-vsctl` is on every
/// OVS host, and a plug is not a hot path (docs/operations.md). What the plugin makes is
/// marked (`external_ids:compute-agent=<port>` on the interface, the `compute-agent` alias
/// on the tap); unplug and reconcile only remove marked ports.
final class OVSNetwork: @unchecked Sendable {
    // Safe to share: immutable after init; each call runs its own ovs-vsctl.
    let host: PluginHostAPI
    let bridge: String
    let datapathType: String
    let vsctl: String
    let timeout: Int

    init(host: PluginHostAPI) throws(PluginFailure) {
        self.host = host
        bridge = host.option("integration_bridge") ?? "br-int"
        datapathType = host.option("datapath_type") ?? "system"
        guard ["system", "netdev"].contains(datapathType) else {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "[ovs] datapath_type = '\(datapathType)' is not system or netdev")
        }
        vsctl = host.option("ovs_vsctl") ?? "ovs-vsctl"
        timeout = Int(host.option("timeout") ?? "10") ?? 10
        guard bridge.utf8.count <= 15, !bridge.isEmpty else {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "[ovs] integration_bridge '\(bridge)' is not 1 to 15 bytes")
        }
    }

    struct VIF {
        var id: String, mac: String, tap: String, mtu: Int

        init(_ v: JSONValue) throws(PluginFailure) {
            guard let id = v["id"]?.stringValue, !id.isEmpty else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "the VIF has no 'id'") }
            self.id = id
            if let t = v["type"]?.stringValue, t != "ovs" {
                throw PluginFailure(CA_ERR_NOT_SUPPORTED, "VIF \(id) is of type '\(t)'; the ovs plugin plugs type 'ovs'")
            }
            guard let mac = v["address"]?.stringValue else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "VIF \(id) has no 'address' (MAC)") }
            self.mac = mac.lowercased()
            tap = v["devname"]?.stringValue ?? "tap" + String(id.prefix(11))
            mtu = v["network"]?["meta"]?["mtu"]?.intValue ?? 1500
        }
    }

    private func run(_ args: [String], what: String) throws(PluginFailure) -> String {
        let r = try Subprocess.run([vsctl, "--timeout=\(timeout)"] + args)
        guard r.status == 0 else {
            let why = r.errorOutput.trimmingLines()
            let status = why.contains("database connection failed") || why.contains("No such file") ? CA_ERR_UNAVAILABLE : CA_ERR_FAILED
            throw PluginFailure(status, "\(what): ovs-vsctl: \(why.isEmpty ? "exit \(r.status)" : why)")
        }
        return r.output
    }

    func plug(instance: JSONValue, vif json: JSONValue) throws(PluginFailure) -> JSONValue {
        let vif = try VIF(json)
        let uuid = instance["uuid"]?.stringValue ?? "?"
        var err = [CChar](repeating: 0, count: 512)
        if ca_nl_tap_ensure(vif.tap, "", Int32(vif.mtu), "compute-agent vif=\(vif.id) instance=\(uuid)", &err, err.count) != 0 {
            throw PluginFailure(CA_ERR_FAILED, "plugging VIF \(vif.id) (tap \(vif.tap)): \(String(cString: err))")
        }
        // A bridge the agent creates gets the configured datapath; an existing one is left as it is.
        let exists = try Subprocess.run([vsctl, "--timeout=\(timeout)", "br-exists", bridge]).status == 0
        var args: [String] = []
        if !exists { args += ["--", "add-br", bridge, "--", "set", "Bridge", bridge, "datapath_type=\(datapathType)"] }
        args += ["--", "--may-exist", "add-port", bridge, vif.tap, "--", "set", "Interface", vif.tap,
                 "external-ids:iface-id=\(vif.id)", "external-ids:attached-mac=\(vif.mac)",
                 "external-ids:iface-status=active", "external-ids:vm-uuid=\(uuid)",
                 "external-ids:compute-agent=\(vif.id)", "mtu_request=\(vif.mtu)"]
        _ = try run(args, what: "plugging VIF \(vif.id) into \(bridge)")
        host.log(CA_LOG_INFO, "plugged VIF \(vif.id): port \(vif.tap) on \(bridge) (datapath \(datapathType), mtu \(vif.mtu))")
        return .object(["type": "ethernet", "devname": .string(vif.tap), "bridge": .string(bridge),
                        "mtu": .int(Int64(vif.mtu)), "mac": .string(vif.mac)])
    }

    func unplug(instance: JSONValue, vif json: JSONValue) throws(PluginFailure) {
        let vif = try VIF(json)
        try removePort(vif.tap, port: vif.id)
        host.log(CA_LOG_INFO, "unplugged VIF \(vif.id) (port \(vif.tap))")
    }

    /// Deletes the OVS port and the tap, only if they carry the agent's mark.
    private func removePort(_ name: String, port: String) throws(PluginFailure) {
        let mark = try Subprocess.run([vsctl, "--timeout=\(timeout)", "--if-exists", "get", "Interface", name,
                                       "external-ids:compute-agent"])
        let owner = mark.output.trimmingLines().replacingQuotes()
        if mark.status == 0 && !owner.isEmpty {
            _ = try run(["--if-exists", "del-port", name], what: "unplugging port \(name)")
        } else if mark.status == 0 && !mark.output.trimmingLines().isEmpty {
            host.log(CA_LOG_WARNING, "port \(name) was not made by the agent; left alone")
            return
        }
        var link = ca_nl_link()
        var err = [CChar](repeating: 0, count: 512)
        if ca_nl_link_get(name, &link, &err, err.count) == 1 {
            let alias = withUnsafeBytes(of: link.alias) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if alias.hasPrefix("compute-agent"), ca_nl_link_delete(name, &err, err.count) != 0 {
                throw PluginFailure(CA_ERR_FAILED, "deleting tap \(name): \(String(cString: err))")
            }
        }
    }

    /// Removes the ports (and taps) the agent made for ports no instance has.
    func reconcile(_ req: JSONValue) throws(PluginFailure) -> JSONValue {
        let known = Set((req["ports"]?.arrayValue ?? []).compactMap(\.stringValue))
        let out = try run(["--format=csv", "--data=bare", "--no-headings", "--columns=name,external_ids", "find", "Interface",
                           "external_ids:compute-agent!=\"\""], what: "listing the agent's ports")
        var removed: [JSONValue] = []
        for line in out.split(separator: "\n") {
            let cols = line.split(separator: ",", maxSplits: 1)
            guard cols.count == 2 else { continue }
            let name = String(cols[0]).replacingQuotes()
            guard let mark = cols[1].split(separator: " ").first(where: { $0.contains("compute-agent=") }) else { continue }
            let port = String(mark.split(separator: "=", maxSplits: 1).last ?? "").replacingQuotes()
            if known.contains(port) { continue }
            try removePort(name, port: port)
            removed.append(.string(name))
            host.log(CA_LOG_WARNING, "removed port \(name): made for port \(port), which no instance has any more")
        }
        return .object(["removed": .array(removed)])
    }
}

extension String {
    func replacingQuotes() -> String { String(filter { $0 != "\"" }) }
}

nonisolated(unsafe) private let vtable: UnsafeMutablePointer<ca_network_vtable> = {
    // Written once here, read-only afterwards.
    let v = UnsafeMutablePointer<ca_network_vtable>.allocate(capacity: 1)
    v.initialize(to: ca_network_vtable(
        struct_size: UInt32(MemoryLayout<ca_network_vtable>.size),
        init: { host, state, err in
            PluginSDK.run(err) { () throws(PluginFailure) in
                guard let host else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "no host table") }
                state!.pointee = Unmanaged.passRetained(try OVSNetwork(host: PluginHostAPI(host))).toOpaque()
            }
        },
        shutdown: { state in if let state { Unmanaged<OVSNetwork>.fromOpaque(state).release() } },
        plug: { state, inst, vif, err in
            PluginSDK.run(err) { () throws(PluginFailure) in
                let p = Unmanaged<OVSNetwork>.fromOpaque(state!).takeUnretainedValue()
                _ = try p.plug(instance: PluginSDK.parse(inst, what: "instance"), vif: PluginSDK.parse(vif, what: "vif"))
            }
        },
        unplug: { state, inst, vif, err in
            PluginSDK.run(err) { () throws(PluginFailure) in
                let p = Unmanaged<OVSNetwork>.fromOpaque(state!).takeUnretainedValue()
                try p.unplug(instance: PluginSDK.parse(inst, what: "instance"), vif: PluginSDK.parse(vif, what: "vif"))
            }
        },
        plug_vif: { state, inst, vif, out, err in
            PluginSDK.runJSON(out, err) { () throws(PluginFailure) in
                let p = Unmanaged<OVSNetwork>.fromOpaque(state!).takeUnretainedValue()
                return try p.plug(instance: PluginSDK.parse(inst, what: "instance"), vif: PluginSDK.parse(vif, what: "vif"))
            }
        },
        reconcile: { state, req, out, err in
            PluginSDK.runJSON(out, err) { () throws(PluginFailure) in
                let p = Unmanaged<OVSNetwork>.fromOpaque(state!).takeUnretainedValue()
                return try p.reconcile(PluginSDK.parse(req, what: "request"))
            }
        }))
    return v
}()

nonisolated(unsafe) private let descriptor = PluginSDK.makeDescriptor(
    kind: CA_PLUGIN_KIND_NETWORK, name: "ovs", version: "1.0.0",
    description: "Open vSwitch integration-bridge ports with Neutron's external_ids", vtable: UnsafeRawPointer(vtable))

@_cdecl("compute_agent_plugin_entry")
public func computeAgentPluginEntry() -> UnsafePointer<ca_plugin_descriptor> { descriptor }
