import PluginSDK

/// Builds libvirt domain XML from the instance JSON the agent passes to spawn.
enum DomainXML {
    static func build(_ i: JSONValue, domainType: String) throws(PluginFailure) -> String {
        func require(_ key: String) throws(PluginFailure) -> JSONValue {
            guard let v = i[key], !v.isNull else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "instance has no '\(key)'") }
            return v
        }
        guard let uuid = try require("uuid").stringValue else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "'uuid' must be a string") }
        let name = i["name"]?.stringValue ?? "instance-\(uuid)"
        guard let vcpus = try require("vcpus").intValue, vcpus > 0 else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "'vcpus' must be a positive integer") }
        guard let memory = try require("memory_mb").intValue, memory > 0 else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "'memory_mb' must be a positive integer") }
        let disk = i["disk_path"]?.stringValue
        let format = i["disk_format"]?.stringValue ?? "qcow2"

        var x = "<domain type='\(esc(domainType))'>\n"
        x += "  <name>\(esc(name))</name>\n  <uuid>\(esc(uuid))</uuid>\n"
        x += "  <memory unit='MiB'>\(memory)</memory>\n  <vcpu>\(vcpus)</vcpu>\n"
        x += "  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>\n"
        x += "  <features><acpi/></features>\n"
        x += "  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>\n"
        x += "  <devices>\n"
        if let disk {
            x += "    <disk type='file' device='disk'><driver name='qemu' type='\(esc(format))'/>"
            x += "<source file='\(esc(disk))'/><target dev='vda' bus='virtio'/></disk>\n"
        }
        for vif in i["vifs"]?.arrayValue ?? [] {
            guard let bridge = vif["bridge"]?.stringValue else { continue }
            x += "    <interface type='bridge'>"
            if let mac = vif["address"]?.stringValue { x += "<mac address='\(esc(mac))'/>" }
            x += "<source bridge='\(esc(bridge))'/>"
            if let dev = vif["devname"]?.stringValue { x += "<target dev='\(esc(dev))'/>" }
            if let mtu = vif["mtu"]?.intValue { x += "<mtu size='\(mtu)'/>" }
            x += "<model type='virtio'/></interface>\n"
        }
        if domainType != "test" {
            x += "    <serial type='pty'/><console type='pty'/>\n"
        }
        x += "  </devices>\n</domain>\n"
        return x
    }

    static func esc(_ s: String) -> String {
        var o = ""
        for c in s {
            switch c {
            case "&": o += "&amp;"
            case "<": o += "&lt;"
            case ">": o += "&gt;"
            case "'": o += "&apos;"
            case "\"": o += "&quot;"
            default: o.append(c)
            }
        }
        return o
    }
}
