import PluginSDK

/// Builds libvirt domain XML from the instance JSON the agent passes to spawn.
enum DomainXML {
    static func build(_ i: JSONValue, domainType: String, disks explicitDisks: [String]? = nil,
                      rescue: Bool = false) throws(PluginFailure) -> String {
        func require(_ key: String) throws(PluginFailure) -> JSONValue {
            guard let v = i[key], !v.isNull else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "instance has no '\(key)'") }
            return v
        }
        guard let uuid = try require("uuid").stringValue else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "'uuid' must be a string") }
        let name = i["name"]?.stringValue ?? "instance-\(uuid)"
        guard let vcpus = try require("vcpus").intValue, vcpus > 0 else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "'vcpus' must be a positive integer") }
        guard let memory = try require("memory_mb").intValue, memory > 0 else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "'memory_mb' must be a positive integer") }
        let disks = explicitDisks ?? (i["disk_path"]?.stringValue).map { [$0] } ?? []
        let format = i["disk_format"]?.stringValue ?? "qcow2"

        var x = "<domain type='\(esc(domainType))'>\n"
        x += "  <name>\(esc(name))</name>\n  <uuid>\(esc(uuid))</uuid>\n"
        x += "  <memory unit='MiB'>\(memory)</memory>\n  <vcpu>\(vcpus)</vcpu>\n"
        if let kernel = i["kernel_path"]?.stringValue, !rescue {
            // A three-part image: libvirt boots the cached kernel and ramdisk directly.
            x += "  <os><type arch='x86_64'>hvm</type><kernel>\(esc(kernel))</kernel>"
            if let initrd = i["ramdisk_path"]?.stringValue { x += "<initrd>\(esc(initrd))</initrd>" }
            x += "<cmdline>\(esc(i["kernel_cmdline"]?.stringValue ?? "root=/dev/vda console=tty0 console=ttyS0"))</cmdline></os>\n"
        } else {
            x += "  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>\n"
        }
        x += "  <features><acpi/></features>\n"
        x += "  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>\n"
        x += "  <devices>\n"
        for (n, disk) in disks.enumerated() {
            let dev = "vd" + String(UnicodeScalar(UInt8(97 + min(n, 25))))
            x += "    <disk type='file' device='disk'><driver name='qemu' type='\(esc(format))'/>"
            x += "<source file='\(esc(disk))'/><target dev='\(dev)' bus='virtio'/></disk>\n"
        }
        for vif in i["vifs"]?.arrayValue ?? [] { x += interfaceXML(vif) }
        if domainType != "test" {
            // The console is written next to the disk, where get_console_output reads it.
            if let dir = disks.last.map({ String($0[..<($0.lastIndex(of: "/") ?? $0.endIndex)]) }), !dir.isEmpty, !rescue {
                x += "    <serial type='file'><source path='\(esc(dir))/console.log'/></serial><console type='file'><source path='\(esc(dir))/console.log'/></console>\n"
            } else {
                x += "    <serial type='pty'/><console type='pty'/>\n"
            }
        }
        x += "  </devices>\n</domain>\n"
        return x
    }

    /// One VIF's `<interface>`: what the network plugin said the domain needs (`domain`,
    /// plugin ABI 1.2) — a tap it made (`ethernet`, libvirt neither creates nor deletes it),
    /// a bridge (libvirt makes the tap), or an Open vSwitch port — else the VIF's own
    /// `network.bridge` (or flat `bridge`). A VIF with neither gets no interface.
    static func interfaceXML(_ vif: JSONValue) -> String {
        let d = vif["domain"] ?? .null
        let mac = d["mac"]?.stringValue ?? vif["address"]?.stringValue
        let mtu = d["mtu"]?.intValue ?? vif["network"]?["meta"]?["mtu"]?.intValue ?? vif["mtu"]?.intValue
        let dev = d["devname"]?.stringValue ?? vif["devname"]?.stringValue
        var x: String
        if d["type"]?.stringValue == "ethernet", let dev {
            x = "    <interface type='ethernet'>"
            if let mac { x += "<mac address='\(esc(mac))'/>" }
            x += "<target dev='\(esc(dev))' managed='no'/>"
        } else if let bridge = d["bridge"]?.stringValue ?? vif["network"]?["bridge"]?.stringValue ?? vif["bridge"]?.stringValue {
            x = "    <interface type='bridge'>"
            if let mac { x += "<mac address='\(esc(mac))'/>" }
            x += "<source bridge='\(esc(bridge))'/>"
            if let vp = d["virtualport"], let type = vp["type"]?.stringValue {
                x += "<virtualport type='\(esc(type))'>"
                if let id = vp["interfaceid"]?.stringValue { x += "<parameters interfaceid='\(esc(id))'/>" }
                x += "</virtualport>"
            }
            if let dev { x += "<target dev='\(esc(dev))'/>" }
        } else {
            return ""
        }
        if let mtu { x += "<mtu size='\(mtu)'/>" }
        return x + "<model type='virtio'/></interface>\n"
    }

    /// The `file` attribute of the first `<source file=…>` of a disk in a domain's XML.
    static func firstDiskSource(_ xml: String) -> String? {
        attribute(after: "<disk type='file'", inside: xml, tag: "<source file='")
    }

    static func firstDiskFormat(_ xml: String) -> String? {
        attribute(after: "<disk type='file'", inside: xml, tag: "<driver name='qemu' type='")
    }

    /// The file a `<serial type='file'>` writes to.
    static func consoleLogPath(_ xml: String) -> String? {
        attribute(after: "<serial type='file'", inside: xml, tag: "<source path='")
    }

    /// The quoted value right after `tag`, searching from the first `anchor` on (libvirt
    /// writes its XML with single-quoted attributes, always in this form).
    private static func attribute(after anchor: String, inside xml: String, tag: String) -> String? {
        let b = Array(xml.utf8)
        guard let a = find(Array(anchor.utf8), in: b, from: 0),
              let t = find(Array(tag.utf8), in: b, from: a) else { return nil }
        let start = t + tag.utf8.count
        guard let end = b[start...].firstIndex(of: UInt8(ascii: "'")) else { return nil }
        return unescape(String(decoding: b[start..<end], as: UTF8.self))
    }

    private static func find(_ needle: [UInt8], in hay: [UInt8], from: Int) -> Int? {
        guard !needle.isEmpty, hay.count >= needle.count else { return nil }
        var i = from
        while i + needle.count <= hay.count {
            if hay[i] == needle[0] && Array(hay[i..<(i + needle.count)]) == needle { return i }
            i += 1
        }
        return nil
    }

    static func unescape(_ s: String) -> String {
        var out = ""
        var i = s.startIndex
        let entities: [(String, Character)] = [("&apos;", "'"), ("&quot;", "\""), ("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&")]
        outer: while i < s.endIndex {
            if s[i] == "&" {
                for (e, c) in entities where s[i...].hasPrefix(e) {
                    out.append(c)
                    i = s.index(i, offsetBy: e.count)
                    continue outer
                }
            }
            out.append(s[i])
            i = s.index(after: i)
        }
        return out
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
