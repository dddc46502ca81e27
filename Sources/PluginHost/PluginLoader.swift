import AgentSupport
import Dispatch
import Logging
import PluginABI
import Synchronization

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
    /// How long a plugin's `init` may take (`plugin_call_timeout`): a hung init refuses
    /// the plugin instead of hanging the agent's start-up.
    public let initTimeout: Double

    public init(directory: String, logger: Logger, initTimeout: Double = 300) {
        self.directory = directory
        self.logger = logger
        self.initTimeout = initTimeout
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
        // Through symlinks too: every directory on the file's real path must be one only
        // root or the agent's user can change, or the file could be swapped under us.
        guard let real = realpath(path, nil) else { throw refuse("cannot resolve the path: \(String(cString: strerror(errno)))") }
        let realPath = String(cString: real)
        free(real)
        try checkDirectories(above: realPath, refuse)
        if let problem = ELFCheck.validate(realPath) { throw refuse(problem) }

        guard let lib = dlopen(realPath, RTLD_NOW | RTLD_LOCAL) else {
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
        guard let outcome = Self.runInit(header.pointee.`init`!, context.table, timeout: initTimeout, plugin: name) else {
            throw refuse("init did not return within \(initTimeout) s (plugin_call_timeout); the plugin is hung")
        }
        let state = outcome.state
        guard outcome.status == CA_OK else {
            throw refuse("init failed: \(PluginError.from(status: outcome.status, plugin: name, operation: "init", message: outcome.message).message)")
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

    /// Every directory from `/` down to the one holding `realPath`: owned by root or the
    /// agent's user, and not writable by others unless sticky (as `/tmp`: there only an
    /// entry's owner may replace it, and the next component is checked in turn).
    private func checkDirectories(above realPath: String, _ refuse: (String) -> PluginLoadError) throws(PluginLoadError) {
        var dir = ""
        let parts = realPath.split(separator: "/").dropLast()
        for part in [""] + parts.map(String.init) {
            dir = part.isEmpty ? "/" : (dir == "/" ? "/" + part : dir + "/" + part)
            var st = stat()
            guard stat(dir, &st) == 0 else { throw refuse("cannot access \(dir): \(String(cString: strerror(errno)))") }
            let me = geteuid()
            guard st.st_uid == 0 || st.st_uid == me else {
                throw refuse("directory \(dir) on the plugin's real path is owned by uid \(st.st_uid), not by root or the agent's user")
            }
            if st.st_mode & (S_IWGRP | S_IWOTH) != 0 && st.st_mode & S_ISVTX == 0 {
                let mode = String(st.st_mode & 0o7777, radix: 8)
                throw refuse("directory \(dir) on the plugin's real path is group- or world-writable (mode \(mode)); refusing code anyone could replace")
            }
        }
    }

    /// Runs a plugin's init on its own thread and waits at most `timeout`; nil if it did
    /// not return (the thread is left behind: the agent refuses to start anyway).
    static func runInit(_ initFn: @convention(c) (UnsafePointer<ca_host_api>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
                                                  UnsafeMutablePointer<ca_error>?) -> ca_status,
                        _ table: UnsafePointer<ca_host_api>, timeout: Double, plugin: String)
        -> (status: ca_status, state: UnsafeMutableRawPointer?, message: String)?
    {
        let box = InitOutcome()
        let done = DispatchSemaphore(value: 0)
        let call = InitCall(initFn: initFn, table: table)
        startDedicatedThread(name: "plugin-init") {
            var state: UnsafeMutableRawPointer?
            var err = ca_error()
            let status = call.initFn(call.table, &state, &err)
            box.set((status, state.map { UInt(bitPattern: $0) }, errorText(&err)))
            done.signal()
        }
        guard done.wait(timeout: .now() + timeout) == .success, let r = box.get() else { return nil }
        return (r.0, r.1.flatMap { UnsafeMutableRawPointer(bitPattern: $0) }, r.2)
    }

    static func minimumVTableSize(_ kind: PluginKind) -> Int {
        switch kind {
        // ABI 1.0's sizes: the offset of the first field 1.1 appended.
        case .hypervisor: return MemoryLayout<ca_hypervisor_vtable>.offset(of: \ca_hypervisor_vtable.rescue)!
        case .imageFetch: return MemoryLayout<ca_image_fetch_vtable>.offset(of: \ca_image_fetch_vtable.upload)!
        case .network: return MemoryLayout<ca_network_vtable>.offset(of: \ca_network_vtable.plug_vif)!
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

/// A plugin's init function and its host table, handed to the init thread.
private struct InitCall: @unchecked Sendable {
    // Safe: the host table lives as long as the plugin (its context is never freed), and
    // the function pointer is immutable code.
    let initFn: @convention(c) (UnsafePointer<ca_host_api>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
                                UnsafeMutablePointer<ca_error>?) -> ca_status
    let table: UnsafePointer<ca_host_api>
}

/// What init returned (the state pointer as an integer, so it can cross threads).
private final class InitOutcome: Sendable {
    private let value = Mutex<(ca_status, UInt?, String)?>(nil)
    func set(_ v: (ca_status, UInt?, String)) { value.withLock { $0 = v } }
    func get() -> (ca_status, UInt?, String)? { value.withLock { $0 } }
}

/// The NUL-terminated message in a ca_error.
func errorText(_ err: inout ca_error) -> String {
    withUnsafeBytes(of: &err.message) { raw in
        let bytes = raw.bindMemory(to: UInt8.self)
        let end = bytes.firstIndex(of: 0) ?? bytes.count
        return String(decoding: UnsafeBufferPointer(rebasing: bytes[..<end]), as: UTF8.self)
    }
}
