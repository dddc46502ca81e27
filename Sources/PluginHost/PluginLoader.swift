import AgentSupport
import Logging
import PluginABI

#if canImport(Glibc)
import Glibc
#endif

/// The three kinds of plugin and where the agent looks for them.
public enum PluginKind: String, Sendable, CaseIterable {
    case hypervisor, imageFetch = "image", network

    var abiValue: UInt32 {
        switch self {
        case .hypervisor: return CA_PLUGIN_KIND_HYPERVISOR.rawValue
        case .imageFetch: return CA_PLUGIN_KIND_IMAGE_FETCH.rawValue
        case .network: return CA_PLUGIN_KIND_NETWORK.rawValue
        }
    }

    /// The config option that names a plugin of this kind.
    public var configOption: String {
        switch self {
        case .hypervisor: return "compute_driver"
        case .imageFetch: return "image_fetcher"
        case .network: return "network_plugin"
        }
    }

    static func describe(_ raw: UInt32) -> String {
        switch raw {
        case CA_PLUGIN_KIND_HYPERVISOR.rawValue: return "a hypervisor plugin"
        case CA_PLUGIN_KIND_IMAGE_FETCH.rawValue: return "an image-fetch plugin"
        case CA_PLUGIN_KIND_NETWORK.rawValue: return "a network plugin"
        default: return "of unknown kind \(raw)"
        }
    }

    /// `lib<prefix><name>.so`: `libcompute_hypervisor_libvirt.so`.
    public func fileName(for name: String) -> String { "libcompute_\(rawValue)_\(name).so" }
}

/// Identity of a loaded plugin, as its descriptor states it.
public struct PluginInfo: Sendable, Equatable {
    public let kind: PluginKind
    public let name: String
    public let version: String
    public let description: String
    public let path: String
    public let abiMinor: Int
}

/// The raw pointers of a loaded plugin.
struct PluginHandle: @unchecked Sendable {
    // Safe to share: the plugin ABI requires plugin state to be thread-safe; the vtable
    // is static, immutable data inside the loaded object, which is never unloaded.
    let vtable: UnsafeRawPointer
    let vtableSize: Int
    let state: UnsafeMutableRawPointer?
}

/// Finds, validates and initialises plugins.
///
/// Before any plugin code runs, the file and its directory must be owned by root or by
/// the agent's user and must not be group- or world-writable (a writable plugin is code
/// anyone could replace). Then the descriptor must carry ABI major 1, the configured kind
/// and name, and a vtable no smaller than ABI 1.0's with every required function set.
public struct PluginLoader: Sendable {
    public let directory: String
    public let logger: Logger

    public init(directory: String, logger: Logger) {
        self.directory = directory
        self.logger = logger
    }

    func path(kind: PluginKind, name: String) -> String {
        (directory.hasSuffix("/") ? directory : directory + "/") + kind.fileName(for: name)
    }

    /// Loads and initialises a plugin; `options` is its config section.
    func load(kind: PluginKind, name: String, options: [String: String],
              onEvent: @escaping @Sendable (String, JSONValue) -> Void) throws(PluginLoadError) -> (PluginInfo, PluginHandle)
    {
        let path = self.path(kind: kind, name: name)
        func refuse(_ reason: String) -> PluginLoadError { PluginLoadError(name: name, path: path, reason: reason) }

        try checkOwnership(of: directory, isDirectory: true, refuse)
        try checkOwnership(of: path, isDirectory: false, refuse)
        try checkELF(path, refuse)

        guard let lib = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            throw refuse("dlopen failed: \(dlerror().map { String(cString: $0) } ?? "unknown error")")
        }
        // Plugins are never unloaded: threads they started may still run their code.
        guard let sym = dlsym(lib, COMPUTE_AGENT_PLUGIN_ENTRY) else {
            throw refuse("does not export the entry symbol '\(COMPUTE_AGENT_PLUGIN_ENTRY)'")
        }
        let entry = unsafeBitCast(sym, to: ca_plugin_entry_fn.self)
        guard let d = entry() else { throw refuse("the entry symbol returned no descriptor") }

        let headerSize = MemoryLayout<UInt32>.size + 2 * MemoryLayout<UInt16>.size + MemoryLayout<UInt32>.size
        guard Int(d.pointee.struct_size) >= headerSize else {
            throw refuse("descriptor struct_size \(d.pointee.struct_size) is too small to be a plugin descriptor")
        }
        let major = Int(d.pointee.abi_major), minor = Int(d.pointee.abi_minor)
        guard major == Int(CA_PLUGIN_ABI_MAJOR) else {
            throw refuse("built for plugin ABI \(major).\(minor); this agent supports ABI \(CA_PLUGIN_ABI_MAJOR).x")
        }
        guard Int(d.pointee.struct_size) >= MemoryLayout<ca_plugin_descriptor>.size else {
            throw refuse("descriptor struct_size \(d.pointee.struct_size) is smaller than ABI 1.0's \(MemoryLayout<ca_plugin_descriptor>.size)")
        }
        guard d.pointee.kind == kind.abiValue else {
            throw refuse("is \(PluginKind.describe(d.pointee.kind)), but \(kind.configOption) needs \(PluginKind.describe(kind.abiValue))")
        }
        let declaredName = d.pointee.name.map { String(cString: $0) } ?? ""
        guard declaredName == name else {
            throw refuse("its descriptor names it '\(declaredName)', not '\(name)'")
        }
        guard let vtable = d.pointee.vtable else { throw refuse("the descriptor has no vtable") }
        let vtableSize = Int(vtable.load(as: UInt32.self))
        let minimum = Self.minimumVTableSize(kind)
        guard vtableSize >= minimum else {
            throw refuse("vtable struct_size \(vtableSize) is smaller than ABI 1.0's \(minimum) for this kind")
        }
        if let missing = Self.missingRequiredFunction(kind: kind, vtable: vtable) {
            throw refuse("required function '\(missing)' is missing (NULL in the vtable)")
        }

        let info = PluginInfo(
            kind: kind, name: name,
            version: d.pointee.version.map { String(cString: $0) } ?? "unknown",
            description: d.pointee.description.map { String(cString: $0) } ?? "",
            path: path, abiMinor: minor)

        let context = PluginHostContext(pluginName: name, logger: logger, options: options, onEvent: onEvent)
        let header = vtable.assumingMemoryBound(to: ca_network_vtable.self)  // every vtable starts alike
        var state: UnsafeMutableRawPointer?
        var err = ca_error()
        let status = header.pointee.`init`!(context.table, &state, &err)
        guard status == CA_OK else {
            throw refuse("init failed: \(PluginError.from(status: status, plugin: name, operation: "init", message: errorText(&err)).message)")
        }
        logger.info("plugin loaded", metadata: [
            "plugin": "\(name)", "kind": "\(kind.rawValue)", "version": "\(info.version)",
            "abi": "\(major).\(minor)", "path": "\(path)",
        ])
        return (info, PluginHandle(vtable: vtable, vtableSize: vtableSize, state: state))
    }

    private func checkOwnership(of path: String, isDirectory: Bool, _ refuse: (String) -> PluginLoadError) throws(PluginLoadError) {
        var st = stat()
        guard stat(path, &st) == 0 else {
            let what = isDirectory ? "plugin directory \(path)" : "file"
            throw refuse("cannot access the \(what): \(String(cString: strerror(errno)))")
        }
        let type = st.st_mode & S_IFMT
        if isDirectory {
            guard type == S_IFDIR else { throw refuse("plugin directory \(path) is not a directory") }
        } else {
            guard type == S_IFREG else { throw refuse("is not a regular file") }
        }
        let what = isDirectory ? "plugin directory \(path)" : "file"
        let me = geteuid()
        guard st.st_uid == 0 || st.st_uid == me else {
            throw refuse("the \(what) is owned by uid \(st.st_uid), not by root or the agent's user (uid \(me))")
        }
        if st.st_mode & (S_IWGRP | S_IWOTH) != 0 {
            let mode = String(st.st_mode & 0o777, radix: 8)
            throw refuse("the \(what) is group- or world-writable (mode \(mode)); refusing code anyone could replace")
        }
    }

    private func checkELF(_ path: String, _ refuse: (String) -> PluginLoadError) throws(PluginLoadError) {
        guard let f = fopen(path, "rb") else { throw refuse("cannot open: \(String(cString: strerror(errno)))") }
        defer { fclose(f) }
        var magic = [UInt8](repeating: 0, count: 4)
        let n = fread(&magic, 1, 4, f)
        guard n == 4, magic == [0x7F, 0x45, 0x4C, 0x46] else {
            throw refuse("is not a shared object (no ELF header)")
        }
    }

    static func minimumVTableSize(_ kind: PluginKind) -> Int {
        switch kind {
        // ABI 1.0's sizes: the offset of the first field 1.1 appended.
        case .hypervisor: return MemoryLayout<ca_hypervisor_vtable>.offset(of: \ca_hypervisor_vtable.rescue)!
        case .imageFetch: return MemoryLayout<ca_image_fetch_vtable>.offset(of: \ca_image_fetch_vtable.upload)!
        case .network: return MemoryLayout<ca_network_vtable>.size
        }
    }

    static func missingRequiredFunction(kind: PluginKind, vtable: UnsafeRawPointer) -> String? {
        switch kind {
        case .hypervisor:
            let v = vtable.assumingMemoryBound(to: ca_hypervisor_vtable.self).pointee
            let required: [(String, Bool)] = [
                ("init", v.`init` != nil), ("shutdown", v.shutdown != nil), ("get_host_info", v.get_host_info != nil),
                ("list_instances", v.list_instances != nil), ("spawn", v.spawn != nil),
                ("get_info", v.get_info != nil), ("destroy", v.destroy != nil),
            ]
            return required.first { !$0.1 }?.0
        case .imageFetch:
            let v = vtable.assumingMemoryBound(to: ca_image_fetch_vtable.self).pointee
            let required: [(String, Bool)] = [
                ("init", v.`init` != nil), ("shutdown", v.shutdown != nil),
                ("supports_ref", v.supports_ref != nil), ("fetch", v.fetch != nil),
            ]
            return required.first { !$0.1 }?.0
        case .network:
            let v = vtable.assumingMemoryBound(to: ca_network_vtable.self).pointee
            let required: [(String, Bool)] = [
                ("init", v.`init` != nil), ("shutdown", v.shutdown != nil), ("plug", v.plug != nil), ("unplug", v.unplug != nil),
            ]
            return required.first { !$0.1 }?.0
        }
    }
}

/// The NUL-terminated message in a ca_error.
func errorText(_ err: inout ca_error) -> String {
    withUnsafeBytes(of: &err.message) { raw in
        let bytes = raw.bindMemory(to: UInt8.self)
        let end = bytes.firstIndex(of: 0) ?? bytes.count
        return String(decoding: UnsafeBufferPointer(rebasing: bytes[..<end]), as: UTF8.self)
    }
}
