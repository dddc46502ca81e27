import CLibvirt
import PluginSDK

/// The hypervisor plugin "libvirt": the vtable of C-convention functions that forward to
/// a `LibvirtDriver` kept behind the opaque state pointer.
private func driver(_ state: UnsafeMutableRawPointer?) -> LibvirtDriver {
    Unmanaged<LibvirtDriver>.fromOpaque(state!).takeUnretainedValue()
}

private func uuidArg(_ uuid: UnsafePointer<CChar>?) throws(PluginFailure) -> String {
    guard let uuid else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "uuid is NULL") }
    return String(cString: uuid)
}

nonisolated(unsafe) private let vtable: UnsafeMutablePointer<ca_hypervisor_vtable> = {
    // Written once here, read-only afterwards.
    let v = UnsafeMutablePointer<ca_hypervisor_vtable>.allocate(capacity: 1)
    v.initialize(to: ca_hypervisor_vtable(
        struct_size: UInt32(MemoryLayout<ca_hypervisor_vtable>.size),
        init: { host, state, err in
            PluginSDK.run(err) { () throws(PluginFailure) in
                guard let host else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "no host table") }
                let d = try LibvirtDriver(host: PluginHostAPI(host))
                state!.pointee = Unmanaged.passRetained(d).toOpaque()
            }
        },
        shutdown: { state in
            if let state { Unmanaged<LibvirtDriver>.fromOpaque(state).release() }
        },
        get_host_info: { s, out, err in PluginSDK.runJSON(out, err) { () throws(PluginFailure) in try driver(s).hostInfo() } },
        list_instances: { s, out, err in PluginSDK.runJSON(out, err) { () throws(PluginFailure) in try driver(s).listInstances() } },
        spawn: { s, json, err in
            PluginSDK.run(err) { () throws(PluginFailure) in try driver(s).spawn(PluginSDK.parse(json, what: "instance")) }
        },
        get_info: { s, uuid, out, err in
            PluginSDK.runJSON(out, err) { () throws(PluginFailure) in try driver(s).info(uuidArg(uuid)) }
        },
        destroy: { s, uuid, err in PluginSDK.run(err) { () throws(PluginFailure) in try driver(s).destroy(uuidArg(uuid)) } },
        power_off: { s, uuid, err in PluginSDK.run(err) { () throws(PluginFailure) in try driver(s).powerOff(uuidArg(uuid)) } },
        power_on: { s, uuid, err in
            PluginSDK.run(err) { () throws(PluginFailure) in try driver(s).simple(uuidArg(uuid), "virDomainCreate") { virDomainCreate($0) } }
        },
        reboot: { s, uuid, hard, err in
            PluginSDK.run(err) { () throws(PluginFailure) in try driver(s).reboot(uuidArg(uuid), hard: hard != 0) }
        },
        pause: { s, uuid, err in
            PluginSDK.run(err) { () throws(PluginFailure) in try driver(s).simple(uuidArg(uuid), "virDomainSuspend") { virDomainSuspend($0) } }
        },
        unpause: { s, uuid, err in
            PluginSDK.run(err) { () throws(PluginFailure) in try driver(s).simple(uuidArg(uuid), "virDomainResume") { virDomainResume($0) } }
        },
        suspend: { s, uuid, err in
            PluginSDK.run(err) { () throws(PluginFailure) in try driver(s).simple(uuidArg(uuid), "virDomainManagedSave") { virDomainManagedSave($0, 0) } }
        },
        resume: { s, uuid, err in
            PluginSDK.run(err) { () throws(PluginFailure) in try driver(s).simple(uuidArg(uuid), "virDomainCreate") { virDomainCreate($0) } }
        },
        rescue: { s, inst, resc, err in
            PluginSDK.run(err) { () throws(PluginFailure) in
                try driver(s).rescue(PluginSDK.parse(inst, what: "instance"), PluginSDK.parse(resc, what: "rescue"))
            }
        },
        unrescue: { s, inst, err in
            PluginSDK.run(err) { () throws(PluginFailure) in try driver(s).unrescue(PluginSDK.parse(inst, what: "instance")) }
        },
        snapshot: { s, uuid, dest, out, err in
            PluginSDK.runJSON(out, err) { () throws(PluginFailure) in
                guard let dest else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "dest_path is NULL") }
                return try driver(s).snapshot(uuidArg(uuid), dest: String(cString: dest))
            }
        },
        resize: { s, inst, err in
            PluginSDK.run(err) { () throws(PluginFailure) in try driver(s).resize(PluginSDK.parse(inst, what: "instance")) }
        },
        get_console_output: { s, uuid, out, err in
            PluginSDK.runJSON(out, err) { () throws(PluginFailure) in try driver(s).consoleOutput(uuidArg(uuid)) }
        },
        get_diagnostics: { s, uuid, out, err in
            PluginSDK.runJSON(out, err) { () throws(PluginFailure) in try driver(s).diagnostics(uuidArg(uuid)) }
        }))
    return v
}()

nonisolated(unsafe) private let descriptor = PluginSDK.makeDescriptor(
    kind: CA_PLUGIN_KIND_HYPERVISOR, name: "libvirt", version: "1.1.0",
    description: "libvirt hypervisor (qemu/kvm, test:///default)", vtable: UnsafeRawPointer(vtable))

@_cdecl("compute_agent_plugin_entry")
public func computeAgentPluginEntry() -> UnsafePointer<ca_plugin_descriptor> { descriptor }
