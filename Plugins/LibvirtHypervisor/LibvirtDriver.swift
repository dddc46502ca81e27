import CLibvirt
import PluginSDK

#if canImport(Glibc)
import Glibc
#endif

/// The libvirt hypervisor plugin's state: one libvirt connection (thread-safe, per
/// libvirt's documentation) and the options of the `[libvirt]` section.
///
/// Options: `connection_uri` (default `qemu:///system`; `test:///default` for libvirt's
/// built-in test driver), `virt_type` (`kvm` default, `qemu` for software emulation;
/// ignored for test:// URIs, whose domains are of type `test`), `shutdown_timeout`
/// (seconds a clean shutdown may take before power_off forces it, default 60).
final class LibvirtDriver: @unchecked Sendable {
    // Safe to share: `conn` is a virConnectPtr, which libvirt documents as usable from
    // several threads at once; every other property is immutable after init.
    let conn: virConnectPtr
    let host: PluginHostAPI
    let uri: String
    let domainType: String
    let shutdownTimeout: Double

    init(host: PluginHostAPI) throws(PluginFailure) {
        self.host = host
        uri = host.option("connection_uri") ?? "qemu:///system"
        let virtType = host.option("virt_type") ?? "kvm"
        guard ["kvm", "qemu"].contains(virtType) else {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "[libvirt] virt_type = '\(virtType)' is not supported (kvm or qemu)")
        }
        domainType = uri.hasPrefix("test:") ? "test" : virtType
        let t = host.option("shutdown_timeout") ?? "60"
        guard let timeout = Double(t), timeout >= 0 else {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "[libvirt] shutdown_timeout = '\(t)' is not a number of seconds")
        }
        shutdownTimeout = timeout
        // libvirt prints every error to stderr unless told otherwise.
        virSetErrorFunc(nil, { _, _ in })
        // Domain events need libvirt's event loop, registered before the connection opens
        // and run on a thread of its own.
        Self.startEventLoop()
        guard let c = virConnectOpen(uri) else {
            throw PluginFailure(CA_ERR_UNAVAILABLE, "cannot connect to \(uri): \(Self.lastError())")
        }
        conn = c
        host.log(CA_LOG_INFO, "connected to \(uri) (domain type \(domainType))")
        let opaque = Unmanaged.passUnretained(self).toOpaque()
        eventCallback = ca_register_lifecycle(c, { opaque, uuid, event, detail in
            guard let opaque, let uuid else { return }
            let d = Unmanaged<LibvirtDriver>.fromOpaque(opaque).takeUnretainedValue()
            d.host.emit(.object(["event": "lifecycle", "uuid": .string(String(cString: uuid)),
                                 "libvirt_event": .int(Int64(event)), "libvirt_detail": .int(Int64(detail))]))
        }, opaque)
        if eventCallback < 0 {
            host.log(CA_LOG_WARNING, "lifecycle events unavailable (\(Self.lastError())); the periodic power-state sync still runs")
        }
    }

    /// Set once in init (before any other thread sees the driver).
    private(set) var eventCallback: Int32 = -1

    deinit {
        if eventCallback >= 0 { virConnectDomainEventDeregisterAny(conn, eventCallback) }
        virConnectClose(conn)
    }

    private static let eventLoop: Void = {
        if virEventRegisterDefaultImpl() == 0 {
            let t = UnsafeMutablePointer<pthread_t>.allocate(capacity: 1)
            pthread_create(t, nil, { _ in
                while true { if virEventRunDefaultImpl() < 0 { usleep(100_000) } }
            }, nil)
        }
    }()

    static func startEventLoop() { _ = eventLoop }

    /// libvirt's last error on this thread: read it right after the failing call.
    static func lastError() -> String {
        guard let e = virGetLastError(), let m = e.pointee.message else { return "unknown libvirt error" }
        return String(cString: m)
    }

    static func lastErrorCode() -> Int32 { virGetLastError()?.pointee.code ?? 0 }

    func failure(_ what: String) -> PluginFailure {
        let code = Self.lastErrorCode()
        let status: ca_status
        switch Int(code) {
        case Int(VIR_ERR_NO_DOMAIN.rawValue): status = CA_ERR_NOT_FOUND
        case Int(VIR_ERR_OPERATION_INVALID.rawValue): status = CA_ERR_INVALID_STATE
        case Int(VIR_ERR_NO_SUPPORT.rawValue), Int(VIR_ERR_ARGUMENT_UNSUPPORTED.rawValue): status = CA_ERR_NOT_SUPPORTED
        default: status = CA_ERR_FAILED
        }
        return PluginFailure(status, "\(what): \(Self.lastError())")
    }

    // MARK: - Host

    func hostInfo() throws(PluginFailure) -> JSONValue {
        var info = virNodeInfo()
        guard virNodeGetInfo(conn, &info) == 0 else { throw failure("virNodeGetInfo") }
        var version: UInt = 0
        _ = virConnectGetVersion(conn, &version)
        let type = virConnectGetType(conn).map { String(cString: $0) } ?? "unknown"
        var hostname = "unknown"
        if let h = virConnectGetHostname(conn) { hostname = String(cString: h); free(h) }
        let memoryMB = Int64(info.memory / 1024)
        let free = virNodeGetFreeMemory(conn)
        let model = withUnsafeBytes(of: info.model) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return .object([
            "hypervisor_type": .string(type),
            "hypervisor_version": .int(Int64(version)),
            "hypervisor_hostname": .string(hostname),
            "vcpus": .int(Int64(info.cpus)),
            "memory_mb": .int(memoryMB),
            "memory_mb_free": .int(free > 0 ? Int64(free / 1024 / 1024) : memoryMB),
            "cpu_info": .object([
                "arch": .string(model), "mhz": .int(Int64(info.mhz)),
                "topology": .object([
                    "sockets": .int(Int64(info.sockets)), "cores": .int(Int64(info.cores)),
                    "threads": .int(Int64(info.threads)),
                ]),
                "numa_nodes": .int(Int64(info.nodes)),
            ]),
            "connection_uri": .string(uri),
            "domain_type": .string(domainType),
        ])
    }

    // MARK: - Domains

    /// nova/virt/libvirt/guest.py's mapping; a shut-off domain with a managed-save image
    /// is reported as SUSPENDED.
    static func powerState(_ state: UInt8, managedSave: Bool) -> Int64 {
        switch Int32(state) {
        case Int32(VIR_DOMAIN_RUNNING.rawValue), Int32(VIR_DOMAIN_BLOCKED.rawValue): return Int64(CA_POWER_RUNNING.rawValue)
        case Int32(VIR_DOMAIN_PAUSED.rawValue): return Int64(CA_POWER_PAUSED.rawValue)
        case Int32(VIR_DOMAIN_SHUTDOWN.rawValue), Int32(VIR_DOMAIN_SHUTOFF.rawValue):
            return Int64(managedSave ? CA_POWER_SUSPENDED.rawValue : CA_POWER_SHUTDOWN.rawValue)
        case Int32(VIR_DOMAIN_CRASHED.rawValue): return Int64(CA_POWER_CRASHED.rawValue)
        case Int32(VIR_DOMAIN_PMSUSPENDED.rawValue): return Int64(CA_POWER_SUSPENDED.rawValue)
        default: return Int64(CA_POWER_NOSTATE.rawValue)
        }
    }

    func describe(_ dom: virDomainPtr) throws(PluginFailure) -> JSONValue {
        var info = virDomainInfo()
        guard virDomainGetInfo(dom, &info) == 0 else { throw failure("virDomainGetInfo") }
        var uuid = [CChar](repeating: 0, count: Int(VIR_UUID_STRING_BUFLEN))
        _ = virDomainGetUUIDString(dom, &uuid)
        let name = virDomainGetName(dom).map { String(cString: $0) } ?? ""
        let managed = virDomainHasManagedSaveImage(dom, 0) == 1
        return .object([
            "uuid": .string(String(decoding: uuid.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)),
            "name": .string(name),
            "power_state": .int(Self.powerState(info.state, managedSave: managed)),
            "vcpus": .int(Int64(info.nrVirtCpu)),
            "memory_mb": .int(Int64(info.maxMem / 1024)),
            "cpu_time_ns": .int(Int64(truncatingIfNeeded: info.cpuTime)),
        ])
    }

    func listInstances() throws(PluginFailure) -> JSONValue {
        var doms: UnsafeMutablePointer<virDomainPtr?>?
        let n = virConnectListAllDomains(conn, &doms, 0)
        guard n >= 0 else { throw failure("virConnectListAllDomains") }
        defer { free(doms) }
        var out: [JSONValue] = []
        for i in 0..<Int(n) {
            guard let d = doms?[i] else { continue }
            defer { virDomainFree(d) }
            // A domain may vanish between listing and describing it: skip it.
            if let v = try? describe(d) { out.append(v) }
        }
        return .array(out)
    }

    func withDomain<T>(_ uuid: String, _ body: (virDomainPtr) throws(PluginFailure) -> T) throws(PluginFailure) -> T {
        guard let d = virDomainLookupByUUIDString(conn, uuid) else {
            if Int(Self.lastErrorCode()) == Int(VIR_ERR_NO_DOMAIN.rawValue) || Int(Self.lastErrorCode()) == Int(VIR_ERR_INVALID_ARG.rawValue) {
                throw PluginFailure(CA_ERR_NOT_FOUND, "no domain with uuid \(uuid)")
            }
            throw failure("lookup of \(uuid)")
        }
        defer { virDomainFree(d) }
        return try body(d)
    }

    func spawn(_ instance: JSONValue) throws(PluginFailure) {
        try defineAndStart(DomainXML.build(instance, domainType: domainType))
    }

    func info(_ uuid: String) throws(PluginFailure) -> JSONValue {
        try withDomain(uuid) { d throws(PluginFailure) in try describe(d) }
    }

    func destroy(_ uuid: String) throws(PluginFailure) {
        try withDomain(uuid) { d throws(PluginFailure) in
            if virDomainIsActive(d) == 1, virDomainDestroy(d) != 0 { throw failure("virDomainDestroy") }
            let flags = VIR_DOMAIN_UNDEFINE_MANAGED_SAVE.rawValue | VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA.rawValue
            if virDomainUndefineFlags(d, flags) != 0, virDomainUndefine(d) != 0 { throw failure("virDomainUndefine") }
        }
    }

    /// Clean shutdown for up to `shutdown_timeout` seconds, then a forced power-off.
    func powerOff(_ uuid: String) throws(PluginFailure) {
        try withDomain(uuid) { d throws(PluginFailure) in
            guard virDomainIsActive(d) == 1 else { return }
            if shutdownTimeout > 0, virDomainShutdown(d) == 0 {
                let deadline = Self.now() + shutdownTimeout
                while Self.now() < deadline {
                    if virDomainIsActive(d) != 1 { return }
                    usleep(100_000)
                }
                host.log(CA_LOG_WARNING, "domain \(uuid) did not shut down within \(shutdownTimeout) s; forcing power-off")
            }
            if virDomainIsActive(d) == 1, virDomainDestroy(d) != 0 { throw failure("virDomainDestroy") }
        }
    }

    func simple(_ uuid: String, _ what: String, _ op: (virDomainPtr) -> Int32) throws(PluginFailure) {
        try withDomain(uuid) { d throws(PluginFailure) in
            if op(d) != 0 { throw failure(what) }
        }
    }

    func reboot(_ uuid: String, hard: Bool) throws(PluginFailure) {
        try withDomain(uuid) { d throws(PluginFailure) in
            if !hard {
                if virDomainReboot(d, 0) == 0 { return }
                host.log(CA_LOG_WARNING, "soft reboot of \(uuid) failed (\(Self.lastError())); rebooting hard")
            }
            if virDomainIsActive(d) == 1, virDomainDestroy(d) != 0 { throw failure("virDomainDestroy") }
            if virDomainCreate(d) != 0 { throw failure("virDomainCreate") }
        }
    }

    // MARK: - ABI 1.1 operations

    /// Replaces the domain by one that boots from the rescue disk, with the instance's own
    /// disk attached second.
    func rescue(_ instance: JSONValue, _ rescue: JSONValue) throws(PluginFailure) {
        guard let uuid = instance["uuid"]?.stringValue else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "instance has no uuid") }
        try destroy(uuid)
        var disks: [String] = []
        if let r = rescue["rescue_disk_path"]?.stringValue { disks.append(r) }
        if let d = instance["disk_path"]?.stringValue, PluginFiles.exists(d) { disks.append(d) }
        try defineAndStart(DomainXML.build(instance, domainType: domainType, disks: disks, rescue: true))
    }

    /// Back to the instance's own domain.
    func unrescue(_ instance: JSONValue) throws(PluginFailure) {
        guard let uuid = instance["uuid"]?.stringValue else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "instance has no uuid") }
        try destroy(uuid)
        try spawn(instance)
    }

    /// Defines and starts a domain; a domain that fails to start is undefined again.
    private func defineAndStart(_ xml: String) throws(PluginFailure) {
        guard let dom = virDomainDefineXML(conn, xml) else { throw failure("defining the domain") }
        defer { virDomainFree(dom) }
        if virDomainCreate(dom) != 0 {
            let f = failure("starting the domain")
            _ = virDomainUndefine(dom)
            throw f
        }
    }

    /// Copies the domain's first file disk to `dest`, pausing a running domain while it
    /// copies so the copy is consistent, and resuming it afterwards.
    func snapshot(_ uuid: String, dest: String) throws(PluginFailure) -> JSONValue {
        try withDomain(uuid) { d throws(PluginFailure) in
            guard let raw = virDomainGetXMLDesc(d, 0) else { throw failure("virDomainGetXMLDesc") }
            let xml = String(cString: raw)
            free(raw)
            guard let source = DomainXML.firstDiskSource(xml), PluginFiles.exists(source) else {
                throw PluginFailure(CA_ERR_INVALID_STATE, "instance \(uuid) has no disk file to snapshot")
            }
            var info = virDomainInfo()
            _ = virDomainGetInfo(d, &info)
            let running = Int32(info.state) == Int32(VIR_DOMAIN_RUNNING.rawValue)
            if running, virDomainSuspend(d) != 0 { throw failure("pausing for the snapshot") }
            defer { if running { _ = virDomainResume(d) } }
            let size = try PluginFiles.atomicCopy(from: source, to: dest)
            return .object(["size": .int(Int64(size)), "disk_format": .string(DomainXML.firstDiskFormat(xml) ?? "raw")])
        }
    }

    /// Redefines the domain with the new vcpus/memory; a running domain is restarted to
    /// take them (as nova's resize restarts it), a stopped one stays stopped.
    func resize(_ instance: JSONValue) throws(PluginFailure) {
        guard let uuid = instance["uuid"]?.stringValue else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "instance has no uuid") }
        let wasActive = try withDomain(uuid) { d throws(PluginFailure) in virDomainIsActive(d) == 1 }
        let xml = try DomainXML.build(instance, domainType: domainType)
        guard let dom = virDomainDefineXML(conn, xml) else { throw failure("redefining the domain") }
        defer { virDomainFree(dom) }
        if wasActive {
            if virDomainDestroy(dom) != 0 { throw failure("virDomainDestroy") }
            if virDomainCreate(dom) != 0 { throw failure("virDomainCreate") }
        }
    }

    /// The tail of the console log the domain writes next to its disk (at most 100 KiB,
    /// as nova's MAX_CONSOLE_BYTES); empty if there is none yet.
    func consoleOutput(_ uuid: String) throws(PluginFailure) -> JSONValue {
        try withDomain(uuid) { d throws(PluginFailure) in
            guard let raw = virDomainGetXMLDesc(d, 0) else { throw failure("virDomainGetXMLDesc") }
            let xml = String(cString: raw)
            free(raw)
            guard let path = DomainXML.consoleLogPath(xml) else { return .object(["output": ""]) }
            return .object(["output": .string(PluginFiles.tail(path, maxBytes: 100 * 1024))])
        }
    }

    func diagnostics(_ uuid: String) throws(PluginFailure) -> JSONValue {
        try withDomain(uuid) { d throws(PluginFailure) in
            var info = virDomainInfo()
            guard virDomainGetInfo(d, &info) == 0 else { throw failure("virDomainGetInfo") }
            let power = Self.powerState(info.state, managedSave: false)
            return .object([
                "state": .string(["pending", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended"][min(Int(info.state), 7)]),
                "power_state": .int(power), "driver": "libvirt", "hypervisor": .string(domainType),
                "num_cpus": .int(Int64(info.nrVirtCpu)), "memory_mb": .int(Int64(info.maxMem / 1024)),
                "memory_used_mb": .int(Int64(info.memory / 1024)), "cpu_time_ns": .int(Int64(truncatingIfNeeded: info.cpuTime)),
            ])
        }
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
