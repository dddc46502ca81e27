import AgentMetrics
import AgentSupport
import Logging
import PluginABI

#if canImport(Glibc)
import Glibc
#endif

/// Makes plugin calls on the blocking executor and turns their status, error buffer and
/// JSON output into Swift values and `PluginError`s.
struct PluginCaller: Sendable {
    let info: PluginInfo
    let handle: PluginHandle
    let executor: BlockingExecutor
    let timeout: Double

    typealias StatusCall = @Sendable (PluginHandle, UnsafeMutablePointer<ca_error>) -> ca_status
    typealias JSONCall = @Sendable (PluginHandle, UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>, UnsafeMutablePointer<ca_error>) -> ca_status

    func call(_ operation: String, timeout: Double? = nil, _ body: @escaping StatusCall) async throws(PluginError) {
        let handle = self.handle
        let timeout = timeout ?? self.timeout
        let outcome: (ca_status, String)
        let started = monotonicSeconds()
        do {
            outcome = try await executor.run(timeout: timeout) {
                var err = ca_error()
                let s = body(handle, &err)
                return (s, s == CA_OK ? "" : errorText(&err))
            }
        } catch {
            record(operation, since: started, timedOut: true)
            throw PluginError(code: .timedOut, plugin: info.name, operation: operation,
                              message: "no answer within \(timeout) s (plugin_call_timeout)")
        }
        record(operation, since: started, failed: outcome.0 != CA_OK)
        if outcome.0 != CA_OK {
            throw PluginError.from(status: outcome.0, plugin: info.name, operation: operation, message: outcome.1)
        }
    }

    /// One call in the metrics (`operation` is one of the ABI's function names).
    private func record(_ operation: String, since started: Double, timedOut: Bool = false, failed: Bool = false) {
        AgentMetrics.shared.pluginCall(kind: info.kind.rawValue, function: operation, seconds: monotonicSeconds() - started,
                                       timedOut: timedOut, failed: failed)
    }

    func callJSON(_ operation: String, _ body: @escaping JSONCall) async throws(PluginError) -> JSONValue {
        try await callParsed(operation, body) { bytes throws(JSONParseError) in try JSONValue.parse(bytes: bytes) }
    }

    /// A call whose JSON answer `parse` turns into a `T` on the plugin-call thread.
    func callParsed<T: Sendable>(_ operation: String, _ body: @escaping JSONCall,
                                 parse: @escaping @Sendable (UnsafeBufferPointer<UInt8>) throws(JSONParseError) -> T)
        async throws(PluginError) -> T
    {
        let handle = self.handle
        // The JSON is parsed on the plugin-call thread, straight from the plugin's buffer:
        // a large answer (a list of 10,000 domains) neither costs a copy nor occupies the
        // cooperative pool.
        let outcome: (ca_status, String, Result<T, JSONParseError>?)
        let started = monotonicSeconds()
        do {
            outcome = try await executor.run(timeout: timeout) {
                var err = ca_error()
                var out: UnsafeMutablePointer<CChar>?
                let s = body(handle, &out, &err)
                let parsed = out.map { p in
                    p.withMemoryRebound(to: UInt8.self, capacity: strlen(p)) { bytes in
                        Result { () throws(JSONParseError) -> T in
                            try parse(UnsafeBufferPointer(start: bytes, count: strlen(p)))
                        }
                    }
                }
                free(out)
                return (s, s == CA_OK ? "" : errorText(&err), parsed)
            }
        } catch {
            record(operation, since: started, timedOut: true)
            throw PluginError(code: .timedOut, plugin: info.name, operation: operation,
                              message: "no answer within \(timeout) s (plugin_call_timeout)")
        }
        record(operation, since: started, failed: outcome.0 != CA_OK)
        if outcome.0 != CA_OK {
            throw PluginError.from(status: outcome.0, plugin: info.name, operation: operation, message: outcome.1)
        }
        switch outcome.2 {
        case nil:
            throw PluginError(code: .badOutput, plugin: info.name, operation: operation, message: "returned success but no JSON")
        case .success(let v)?: return v
        case .failure(let error)?:
            throw PluginError(code: .badOutput, plugin: info.name, operation: operation, message: "returned invalid JSON: \(error)")
        }
    }

    func unsupported(_ operation: String) -> PluginError {
        PluginError(code: .notSupported, plugin: info.name, operation: operation,
                    message: "operation '\(operation)' is not supported by this plugin")
    }
}

/// A loaded hypervisor plugin (ca_hypervisor_vtable), one async method per operation.
public final class HypervisorPlugin: Sendable {
    public var info: PluginInfo { caller.info }
    let caller: PluginCaller
    init(caller: PluginCaller) { self.caller = caller }

    private static func vt(_ h: PluginHandle) -> ca_hypervisor_vtable {
        h.vtable.assumingMemoryBound(to: ca_hypervisor_vtable.self).pointee
    }

    public func hostInfo() async throws(PluginError) -> JSONValue {
        try await caller.callJSON("get_host_info") { h, out, err in Self.vt(h).get_host_info!(h.state, out, err) }
    }

    public func listInstances() async throws(PluginError) -> JSONValue {
        try await caller.callJSON("list_instances") { h, out, err in Self.vt(h).list_instances!(h.state, out, err) }
    }

    /// `list_instances`, kept small: each domain becomes a `DomainSummary` as it is parsed
    /// (entries without a string `uuid` are dropped). The periodic tasks use this one.
    public func listDomains() async throws(PluginError) -> [DomainSummary] {
        try await caller.callParsed("list_instances", { h, out, err in Self.vt(h).list_instances!(h.state, out, err) }) {
            bytes throws(JSONParseError) in try JSONValue.parseElements(bytes: bytes, DomainSummary.init(listed:))
        }
    }

    public func spawn(instance: JSONValue) async throws(PluginError) {
        let json = instance.serialized()
        try await caller.call("spawn") { h, err in Self.vt(h).spawn!(h.state, json, err) }
    }

    public func info(uuid: String) async throws(PluginError) -> JSONValue {
        try await caller.callJSON("get_info") { h, out, err in Self.vt(h).get_info!(h.state, uuid, out, err) }
    }

    public func destroy(uuid: String) async throws(PluginError) {
        try await caller.call("destroy") { h, err in Self.vt(h).destroy!(h.state, uuid, err) }
    }

    /// The simple power operations that take only a uuid.
    public enum PowerAction: String, Sendable {
        case powerOff = "power_off", powerOn = "power_on", pause, unpause, suspend, resume
    }

    public func perform(_ action: PowerAction, uuid: String) async throws(PluginError) {
        let v = Self.vt(caller.handle)
        let fn: (@convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, UnsafeMutablePointer<ca_error>?) -> ca_status)?
        switch action {
        case .powerOff: fn = v.power_off
        case .powerOn: fn = v.power_on
        case .pause: fn = v.pause
        case .unpause: fn = v.unpause
        case .suspend: fn = v.suspend
        case .resume: fn = v.resume
        }
        guard let fn else { throw caller.unsupported(action.rawValue) }
        try await caller.call(action.rawValue) { h, err in fn(h.state, uuid, err) }
    }

    /// An optional function appended after ABI 1.0: nil when the plugin's vtable is too
    /// short to hold it (built against an older minor) or the plugin left it NULL.
    private func appended<F>(_ field: KeyPath<ca_hypervisor_vtable, F?>) -> F? {
        guard let offset = MemoryLayout<ca_hypervisor_vtable>.offset(of: field),
              caller.handle.vtableSize >= offset + MemoryLayout<F?>.size else { return nil }
        return Self.vt(caller.handle)[keyPath: field]
    }

    /// Boots the instance from `rescue.rescue_disk_path` with its own disk attached.
    public func rescue(instance: JSONValue, rescue: JSONValue) async throws(PluginError) {
        guard let fn = appended(\.rescue) else { throw caller.unsupported("rescue") }
        let i = instance.serialized(), r = rescue.serialized()
        try await caller.call("rescue") { h, err in fn(h.state, i, r, err) }
    }

    public func unrescue(instance: JSONValue) async throws(PluginError) {
        guard let fn = appended(\.unrescue) else { throw caller.unsupported("unrescue") }
        let i = instance.serialized()
        try await caller.call("unrescue") { h, err in fn(h.state, i, err) }
    }

    /// Copies the root disk to `destPath`; returns {"size", "disk_format"}.
    public func snapshot(uuid: String, destPath: String) async throws(PluginError) -> JSONValue {
        guard let fn = appended(\.snapshot) else { throw caller.unsupported("snapshot") }
        return try await caller.callJSON("snapshot") { h, out, err in fn(h.state, uuid, destPath, out, err) }
    }

    /// Gives the domain the instance JSON's vcpus and memory_mb.
    public func resize(instance: JSONValue) async throws(PluginError) {
        guard let fn = appended(\.resize) else { throw caller.unsupported("resize") }
        let i = instance.serialized()
        try await caller.call("resize") { h, err in fn(h.state, i, err) }
    }

    public func consoleOutput(uuid: String) async throws(PluginError) -> JSONValue {
        guard let fn = appended(\.get_console_output) else { throw caller.unsupported("get_console_output") }
        return try await caller.callJSON("get_console_output") { h, out, err in fn(h.state, uuid, out, err) }
    }

    public func diagnostics(uuid: String) async throws(PluginError) -> JSONValue {
        guard let fn = appended(\.get_diagnostics) else { throw caller.unsupported("get_diagnostics") }
        return try await caller.callJSON("get_diagnostics") { h, out, err in fn(h.state, uuid, out, err) }
    }

    /// Reboots; `timeout` replaces plugin_call_timeout for this call (a soft reboot's
    /// limit before the agent reboots hard).
    public func reboot(uuid: String, hard: Bool, timeout: Double? = nil) async throws(PluginError) {
        guard let fn = Self.vt(caller.handle).reboot else { throw caller.unsupported("reboot") }
        try await caller.call("reboot", timeout: timeout) { h, err in fn(h.state, uuid, hard ? 1 : 0, err) }
    }
}

/// A loaded image-fetch plugin (ca_image_fetch_vtable).
public final class ImageFetchPlugin: Sendable {
    public var info: PluginInfo { caller.info }
    let caller: PluginCaller
    init(caller: PluginCaller) { self.caller = caller }

    /// Fetches `request.image_ref` to `request.dest_path`; returns `{"size", "checksum"}`.
    public func fetch(_ request: JSONValue) async throws(PluginError) -> JSONValue {
        let json = request.serialized()
        guard let ref = request["image_ref"]?.stringValue else {
            throw PluginError(code: .invalidArgument, plugin: info.name, operation: "fetch", message: "no image_ref")
        }
        let supported = try await caller.callJSON("supports_ref") { h, out, _ in
            let v = h.vtable.assumingMemoryBound(to: ca_image_fetch_vtable.self).pointee
            out.pointee = strdup(v.supports_ref!(h.state, ref) != 0 ? "true" : "false")
            return CA_OK
        }
        guard supported.boolValue == true else {
            throw PluginError(code: .notSupported, plugin: info.name, operation: "fetch",
                              message: "image reference '\(ref)' is not supported by the '\(info.name)' image fetcher")
        }
        return try await caller.callJSON("fetch") { h, out, err in
            h.vtable.assumingMemoryBound(to: ca_image_fetch_vtable.self).pointee.fetch!(h.state, json, out, err)
        }
    }
}

extension ImageFetchPlugin {
    /// Stores a snapshot file through the plugin's upload side (ABI 1.1); returns
    /// {"image_ref", "size", "checksum"}.
    public func upload(_ request: JSONValue) async throws(PluginError) -> JSONValue {
        let field = \ca_image_fetch_vtable.upload
        guard let offset = MemoryLayout<ca_image_fetch_vtable>.offset(of: field),
              caller.handle.vtableSize >= offset + MemoryLayout<UnsafeRawPointer?>.size,
              let fn = caller.handle.vtable.assumingMemoryBound(to: ca_image_fetch_vtable.self).pointee.upload
        else { throw caller.unsupported("upload") }
        let json = request.serialized()
        return try await caller.callJSON("upload") { h, out, err in fn(h.state, json, out, err) }
    }
}

extension ImageFetchPlugin {
    /// The image cache's periodic cleanup (ABI 1.2); nil when the plugin keeps no cache.
    public func cleanupCache(_ request: JSONValue) async throws(PluginError) -> JSONValue? {
        let field = \ca_image_fetch_vtable.cleanup_cache
        guard let offset = MemoryLayout<ca_image_fetch_vtable>.offset(of: field),
              caller.handle.vtableSize >= offset + MemoryLayout<UnsafeRawPointer?>.size,
              let fn = caller.handle.vtable.assumingMemoryBound(to: ca_image_fetch_vtable.self).pointee.cleanup_cache
        else { return nil }
        let json = request.serialized()
        return try await caller.callJSON("cleanup_cache") { h, out, err in fn(h.state, json, out, err) }
    }
}

/// A loaded network-setup plugin (ca_network_vtable).
public final class NetworkPlugin: Sendable {
    public var info: PluginInfo { caller.info }
    let caller: PluginCaller
    init(caller: PluginCaller) { self.caller = caller }

    /// Plugs a VIF; returns what the domain needs for it when the plugin says (ABI 1.2
    /// `plug_vif`), nil for a plugin that only plugs.
    @discardableResult
    public func plug(instance: JSONValue, vif: JSONValue) async throws(PluginError) -> JSONValue? {
        try await plug(instanceJSON: instance.serialized(), vif: vif)
    }

    /// `plug` with the instance already serialized: a build plugging N VIFs serializes the
    /// instance (which lists all N) once, not N times.
    @discardableResult
    public func plug(instanceJSON i: String, vif: JSONValue) async throws(PluginError) -> JSONValue? {
        let v = vif.serialized()
        let field = \ca_network_vtable.plug_vif
        if let offset = MemoryLayout<ca_network_vtable>.offset(of: field),
           caller.handle.vtableSize >= offset + MemoryLayout<UnsafeRawPointer?>.size,
           let fn = caller.handle.vtable.assumingMemoryBound(to: ca_network_vtable.self).pointee.plug_vif
        {
            return try await caller.callJSON("plug_vif") { h, out, err in fn(h.state, i, v, out, err) }
        }
        try await caller.call("plug") { h, err in
            h.vtable.assumingMemoryBound(to: ca_network_vtable.self).pointee.plug!(h.state, i, v, err)
        }
        return nil
    }

    /// Tells the plugin every port the agent has, so it removes what it made for others
    /// (ABI 1.2 `reconcile`); nil when the plugin has no such operation.
    public func reconcile(ports: [String]) async throws(PluginError) -> JSONValue? {
        let field = \ca_network_vtable.reconcile
        guard let offset = MemoryLayout<ca_network_vtable>.offset(of: field),
              caller.handle.vtableSize >= offset + MemoryLayout<UnsafeRawPointer?>.size,
              let fn = caller.handle.vtable.assumingMemoryBound(to: ca_network_vtable.self).pointee.reconcile
        else { return nil }
        let json = JSONValue.object(["ports": .array(ports.map { .string($0) })]).serialized()
        return try await caller.callJSON("reconcile") { h, out, err in fn(h.state, json, out, err) }
    }

    public func unplug(instance: JSONValue, vif: JSONValue) async throws(PluginError) {
        let i = instance.serialized(), v = vif.serialized()
        try await caller.call("unplug") { h, err in
            h.vtable.assumingMemoryBound(to: ca_network_vtable.self).pointee.unplug!(h.state, i, v, err)
        }
    }
}

/// The agent's three plugins, loaded together at start-up.
public struct PluginSet: Sendable {
    public let hypervisor: HypervisorPlugin
    public let imageFetcher: ImageFetchPlugin
    public let network: NetworkPlugin
    public let executor: BlockingExecutor

    public var infos: [PluginInfo] { [hypervisor.info, imageFetcher.info, network.info] }

    /// Loads the configured plugins. Any refusal aborts: the agent never runs with a
    /// missing or doubtful plugin.
    public static func load(configuration c: AgentConfiguration, logger: Logger,
                            onEvent: @escaping @Sendable (String, JSONValue) -> Void) throws(PluginLoadError) -> PluginSet
    {
        let loader = PluginLoader(directory: c.pluginDir, logger: logger, initTimeout: c.pluginCallTimeout)
        let executor = BlockingExecutor(threads: c.pluginThreads)
        func caller(_ kind: PluginKind, _ name: String) throws(PluginLoadError) -> PluginCaller {
            let (info, handle) = try loader.load(kind: kind, name: name, options: c.pluginSections[name] ?? [:], onEvent: onEvent)
            return PluginCaller(info: info, handle: handle, executor: executor, timeout: c.pluginCallTimeout)
        }
        return PluginSet(
            hypervisor: HypervisorPlugin(caller: try caller(.hypervisor, c.computeDriver)),
            imageFetcher: ImageFetchPlugin(caller: try caller(.imageFetch, c.imageFetcher)),
            network: NetworkPlugin(caller: try caller(.network, c.networkPlugin)),
            executor: executor)
    }
}

/// One domain of a hypervisor's `list_instances`, with only what the periodic tasks read.
public struct DomainSummary: Sendable {
    /// Lower-cased, as the records are keyed.
    public var uuid: String
    public var name: String
    /// nova's power state number, nil when the plugin gave none.
    public var powerState: Int?
    public var vcpus: Int
    public var memoryMB: Int

    init?(listed d: JSONValue) {
        guard let raw = d["uuid"]?.stringValue else { return nil }
        uuid = raw.utf8.contains(where: { $0 >= 0x41 && $0 <= 0x5A }) ? raw.lowercased() : raw
        name = d["name"]?.stringValue ?? ""
        powerState = d["power_state"]?.intValue
        vcpus = d["vcpus"]?.intValue ?? 0
        memoryMB = d["memory_mb"]?.intValue ?? 0
    }
}
