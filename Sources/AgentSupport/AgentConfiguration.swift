#if canImport(Glibc)
import Glibc
#endif

/// Everything the agent reads from `/etc/compute-agent/compute-agent.conf`.
///
/// Every option has a default (so an empty file is a valid configuration), a documented
/// meaning (`packaging/compute-agent.conf` lists them all) and a validation that names the
/// file, line and option on error. Sections named after a configured plugin
/// (`[libvirt]` for `compute_driver = libvirt`, …) belong to that plugin: the agent does
/// not interpret them, the plugin reads them through the host table.
public struct AgentConfiguration: Sendable {
    // [DEFAULT]
    public var host: String
    public var transportURL: String
    public var controlExchange: String
    public var reportInterval: Double
    public var periodicInterval: Double
    public var statePath: String
    public var pluginDir: String
    public var computeDriver: String
    public var imageFetcher: String
    public var networkPlugin: String
    public var debug: Bool
    public var pluginCallTimeout: Double
    public var pluginThreads: Int
    public var rpcResponseTimeout: Double
    // Resources and lifecycle (nova's names and defaults)
    public var cpuAllocationRatio: Double
    public var ramAllocationRatio: Double
    public var diskAllocationRatio: Double
    public var reservedHostMemoryMB: Int
    public var reservedHostDiskMB: Int
    public var maxConcurrentBuilds: Int
    public var updateResourcesInterval: Double
    public var syncPowerStateInterval: Double
    /// 0 = soft-deleted instances are kept until restored or terminated.
    public var reclaimInstanceInterval: Double
    /// nova's `shelved_offload_time` (nova dialect): 0 = a shelved server leaves the host at
    /// once; N > 0 = after N seconds (checked at each resources pass); -1 = only on request.
    public var shelvedOffloadTime: Int = 0
    public var softRebootTimeout: Double
    public var notificationDriver: String
    public var notificationTopic: String
    public var gracefulShutdownTimeout: Double
    /// `refuse` or `warn`: what to do when another agent already consumes `compute.<host>`.
    public var hostConflict: String
    /// Largest RPC message body taken in, and largest reply sent.
    public var rpcMaxMessageBytes: Int
    public var rpcMaxReplyBytes: Int
    /// nova's `service_down_time`: a service whose last heartbeat is older is down; the
    /// health check wants a confirmed heartbeat within half of it.
    public var serviceDownTime: Double
    // [oslo_messaging_rabbit]
    public var heartbeatTimeoutThreshold: Int
    public var qosPrefetchCount: Int
    public var quorumQueues: Bool
    public var transientQueuesTTL: Int
    public var durableQueues: Bool
    public var ssl: Bool
    public var sslCAFile: String?
    public var sslCertFile: String?
    public var sslKeyFile: String?
    /// "" (negotiate TLS 1.2 or newer), "TLSv1_2" or "TLSv1_3".
    public var sslVersion: String
    public var sslVerifyHostname: Bool
    public var retryInterval: Double
    public var retryBackoff: Double
    public var intervalMax: Double
    /// `[oslo_messaging_rabbit] quick_retry_window` (ours, not oslo's): seconds after a lost
    /// connection during which retries come every 0.1–0.5 s; 0 = oslo's schedule only.
    public var quickRetryWindow: Double
    /// `[oslo_messaging_rabbit] handback_wait_us` (ours): microseconds a connection thread
    /// stays awake after handing deliveries to the handlers, for their replies and acks
    /// (saves a thread wake-up per hop); 0 = always sleep in poll.
    public var handBackWaitMicroseconds: Int = 200
    // [image_cache] (nova's names and defaults)
    /// Seconds between cache manager passes; 0 = every `periodic_interval`; -1 = off.
    public var imageCacheManagerInterval: Int
    public var removeUnusedBaseImages: Bool
    public var removeUnusedOriginalMinimumAge: Int
    public var removeUnusedResizedMinimumAge: Int
    // [metrics]
    /// `host:port`, `[v6]:port` or `:port` for `/metrics` and `/healthz`; nil = no endpoint.
    public var metricsListen: String?
    /// `native` (the agent's own RPC API) or `nova` (drop-in for nova-compute 34).
    public var controlPlane: String = "native"
    /// nova's `my_ip`: the host address the nova dialect reports (`ComputeNode.host_ip`).
    public var myIP: String?
    /// With `control_plane = nova`: the raw options of nova's sections the nova dialect
    /// reads (`[placement]`, `[glance]`, `[neutron]`), by section.
    public var novaSections: [String: [String: String]] = [:]
    /// Options and sections the agent does not use, accepted because `control_plane = nova`
    /// reads nova's own files (logged once at start, one line each).
    public var warnings: [String] = []
    /// The file each option came from when several were given (nil: `sourceFile`).
    public var optionFiles: [String: String] = [:]

    /// Options of each plugin's own section, by section name.
    public var pluginSections: [String: [String: String]]

    /// Where each option came from (nil for defaults), for errors found after parsing.
    public var sourceFile: String
    public var optionLines: [String: Int]

    /// The configuration with every option at its default.
    public static func defaults() -> AgentConfiguration {
        AgentConfiguration(
            host: AgentConfiguration.systemHostName(),
            transportURL: "rabbit://guest:guest@localhost:5672/",
            controlExchange: "nova",
            reportInterval: 10, periodicInterval: 60,
            statePath: "/var/lib/compute-agent",
            pluginDir: "/usr/lib/compute-agent/plugins",
            computeDriver: "libvirt", imageFetcher: "file", networkPlugin: "noop",
            debug: false, pluginCallTimeout: 300, pluginThreads: 8, rpcResponseTimeout: 60,
            cpuAllocationRatio: 16.0, ramAllocationRatio: 1.5, diskAllocationRatio: 1.0,
            reservedHostMemoryMB: 512, reservedHostDiskMB: 0, maxConcurrentBuilds: 10,
            updateResourcesInterval: 60, syncPowerStateInterval: 600, reclaimInstanceInterval: 0,
            softRebootTimeout: 120, notificationDriver: "messagingv2", notificationTopic: "notifications",
            gracefulShutdownTimeout: 60, hostConflict: "refuse",
            rpcMaxMessageBytes: 8 << 20, rpcMaxReplyBytes: 8 << 20, serviceDownTime: 60,
            heartbeatTimeoutThreshold: 60, qosPrefetchCount: 64, quorumQueues: false,
            transientQueuesTTL: 1800, durableQueues: false,
            ssl: false, sslCAFile: nil, sslCertFile: nil, sslKeyFile: nil, sslVersion: "", sslVerifyHostname: true,
            retryInterval: 1, retryBackoff: 2, intervalMax: 30, quickRetryWindow: 10,
            imageCacheManagerInterval: 2400, removeUnusedBaseImages: true, removeUnusedOriginalMinimumAge: 86_400,
            removeUnusedResizedMinimumAge: 3600, metricsListen: nil,
            pluginSections: [:], sourceFile: "<defaults>", optionLines: [:])
    }

    /// The options the agent itself knows, per section. Anything else in these sections is
    /// an error (a typo must not silently fall back to a default).
    public static let knownOptions: [String: Set<String>] = [
        "DEFAULT": ["host", "transport_url", "control_exchange", "report_interval",
                    "periodic_interval", "state_path", "plugin_dir", "compute_driver",
                    "image_fetcher", "network_plugin", "debug", "plugin_call_timeout",
                    "plugin_threads", "rpc_response_timeout", "cpu_allocation_ratio",
                    "ram_allocation_ratio", "disk_allocation_ratio", "reserved_host_memory_mb",
                    "reserved_host_disk_mb", "max_concurrent_builds", "update_resources_interval",
                    "sync_power_state_interval", "reclaim_instance_interval", "soft_reboot_timeout", "shelved_offload_time",
                    "notification_driver", "notification_topic", "graceful_shutdown_timeout",
                    "host_conflict", "rpc_max_message_bytes", "rpc_max_reply_bytes", "service_down_time",
                    "control_plane", "my_ip"],
        "oslo_messaging_rabbit": ["heartbeat_timeout_threshold", "rabbit_qos_prefetch_count",
                                  "rabbit_quorum_queue", "rabbit_transient_queues_ttl",
                                  "amqp_durable_queues", "ssl", "ssl_ca_file", "ssl_cert_file", "ssl_key_file",
                                  "ssl_version", "ssl_enforce_fips_mode", "ssl_enforce_hostname_verification",
                                  "rabbit_retry_interval", "rabbit_retry_backoff", "rabbit_interval_max",
                                  "quick_retry_window", "handback_wait_us"],
        "image_cache": ["manager_interval", "remove_unused_base_images", "remove_unused_original_minimum_age_seconds",
                        "remove_unused_resized_minimum_age_seconds"],
        "metrics": ["listen"],
    ]

    /// Reads and validates a configuration file.
    public static func load(path: String) throws(ConfigError) -> AgentConfiguration {
        try load(paths: [path])
    }

    /// Reads several files as oslo.config does with repeated `--config-file`: each later
    /// file's options override the earlier ones (`--config-file /etc/nova/nova.conf
    /// --config-file /etc/compute-agent/compute-agent.conf`). Errors name the file an
    /// option came from.
    public static func load(paths: [String]) throws(ConfigError) -> AgentConfiguration {
        var merged: IniFile?
        for path in paths {
            guard let text = readWholeFile(path) else {
                throw ConfigError(file: path, line: nil, section: nil, option: nil,
                                  message: "cannot read the file: \(String(cString: strerror(errno)))")
            }
            let ini = try IniFile(path: path, text: text)
            merged = merged.map { $0.overlaid(with: ini) } ?? ini
        }
        guard let merged else {
            throw ConfigError(file: "-", line: nil, section: nil, option: nil, message: "no configuration file given")
        }
        var c = try parse(merged)
        c.sourceFile = paths.last!
        return c
    }

    /// The sections nova's own files have that the nova dialect reads.
    public static let novaReadSections: Set<String> = ["placement", "glance", "neutron"]

    /// Validates an already parsed INI file.
    public static func parse(_ ini: IniFile) throws(ConfigError) -> AgentConfiguration {
        var c = AgentConfiguration.defaults()
        c.sourceFile = ini.path
        var reader = OptionReader(ini: ini)

        c.controlPlane = try reader.choice("DEFAULT", "control_plane", c.controlPlane, ["native", "nova"])
        let nova = c.controlPlane == "nova"
        c.host = try reader.hostName("DEFAULT", "host", c.host)
        c.transportURL = try reader.string("DEFAULT", "transport_url", c.transportURL, nonEmpty: true)
        c.controlExchange = try reader.string("DEFAULT", "control_exchange", c.controlExchange, nonEmpty: true)
        c.reportInterval = try reader.seconds("DEFAULT", "report_interval", c.reportInterval)
        c.periodicInterval = try reader.seconds("DEFAULT", "periodic_interval", c.periodicInterval)
        c.statePath = try reader.path("DEFAULT", "state_path", c.statePath)
        c.pluginDir = try reader.path("DEFAULT", "plugin_dir", c.pluginDir)
        if nova, let e = reader.raw("DEFAULT", "compute_driver"), e.value.contains(".") {
            // nova's driver class (`libvirt.LibvirtDriver`): the plugin of that family.
            let family = String(e.value.prefix { $0 != "." }).lowercased()
            guard family == "libvirt" else {
                throw reader.fail("DEFAULT", "compute_driver", e,
                                  "nova's driver '\(e.value)' has no compute-agent plugin; set compute_driver to a plugin name in the agent's own file")
            }
            c.computeDriver = family
        } else {
            c.computeDriver = try reader.pluginName("DEFAULT", "compute_driver", c.computeDriver)
        }
        c.imageFetcher = try reader.pluginName("DEFAULT", "image_fetcher", c.imageFetcher)
        c.networkPlugin = try reader.pluginName("DEFAULT", "network_plugin", c.networkPlugin)
        c.debug = try reader.bool("DEFAULT", "debug", c.debug)
        c.pluginCallTimeout = try reader.seconds("DEFAULT", "plugin_call_timeout", c.pluginCallTimeout)
        c.pluginThreads = try reader.int("DEFAULT", "plugin_threads", c.pluginThreads, range: 1...256)
        c.rpcResponseTimeout = try reader.seconds("DEFAULT", "rpc_response_timeout", c.rpcResponseTimeout)

        if nova {
            // nova's initial_*_allocation_ratio defaults, for options left unset.
            (c.cpuAllocationRatio, c.ramAllocationRatio) = (4.0, 1.0)
        }
        c.cpuAllocationRatio = try reader.ratio("DEFAULT", "cpu_allocation_ratio", c.cpuAllocationRatio)
        c.ramAllocationRatio = try reader.ratio("DEFAULT", "ram_allocation_ratio", c.ramAllocationRatio)
        c.diskAllocationRatio = try reader.ratio("DEFAULT", "disk_allocation_ratio", c.diskAllocationRatio)
        c.reservedHostMemoryMB = try reader.int("DEFAULT", "reserved_host_memory_mb", c.reservedHostMemoryMB, range: 0...(1 << 30))
        c.reservedHostDiskMB = try reader.int("DEFAULT", "reserved_host_disk_mb", c.reservedHostDiskMB, range: 0...(1 << 40))
        c.maxConcurrentBuilds = try reader.int("DEFAULT", "max_concurrent_builds", c.maxConcurrentBuilds, range: 1...1000)
        c.updateResourcesInterval = try reader.seconds("DEFAULT", "update_resources_interval", c.updateResourcesInterval)
        c.syncPowerStateInterval = try reader.seconds("DEFAULT", "sync_power_state_interval", c.syncPowerStateInterval)
        c.reclaimInstanceInterval = try reader.seconds("DEFAULT", "reclaim_instance_interval", c.reclaimInstanceInterval, allowZero: true)
        c.softRebootTimeout = try reader.seconds("DEFAULT", "soft_reboot_timeout", c.softRebootTimeout)
        c.shelvedOffloadTime = try reader.int("DEFAULT", "shelved_offload_time", c.shelvedOffloadTime, range: -1...Int(Int32.max))
        c.notificationDriver = try reader.choice("DEFAULT", "notification_driver", c.notificationDriver, ["messagingv2", "noop"])
        c.notificationTopic = try reader.string("DEFAULT", "notification_topic", c.notificationTopic, nonEmpty: true)
        c.gracefulShutdownTimeout = try reader.seconds("DEFAULT", "graceful_shutdown_timeout", c.gracefulShutdownTimeout)
        c.hostConflict = try reader.choice("DEFAULT", "host_conflict", c.hostConflict, ["refuse", "warn"])
        c.rpcMaxMessageBytes = try reader.int("DEFAULT", "rpc_max_message_bytes", c.rpcMaxMessageBytes, range: 4096...(512 << 20))
        c.rpcMaxReplyBytes = try reader.int("DEFAULT", "rpc_max_reply_bytes", c.rpcMaxReplyBytes, range: 4096...(512 << 20))
        c.serviceDownTime = try reader.seconds("DEFAULT", "service_down_time", c.serviceDownTime)
        if let e = reader.raw("DEFAULT", "my_ip"), !e.value.isEmpty { c.myIP = e.value }

        let r = "oslo_messaging_rabbit"
        c.heartbeatTimeoutThreshold = try reader.int(r, "heartbeat_timeout_threshold", c.heartbeatTimeoutThreshold, range: 0...3600)
        c.qosPrefetchCount = try reader.int(r, "rabbit_qos_prefetch_count", c.qosPrefetchCount, range: 1...65535)
        c.quorumQueues = try reader.bool(r, "rabbit_quorum_queue", c.quorumQueues)
        c.transientQueuesTTL = try reader.int(r, "rabbit_transient_queues_ttl", c.transientQueuesTTL, range: 1...Int(Int32.max / 1000))
        c.durableQueues = try reader.bool(r, "amqp_durable_queues", c.durableQueues)
        c.ssl = try reader.bool(r, "ssl", c.ssl)
        c.sslCAFile = try reader.readableFile(r, "ssl_ca_file")
        c.sslCertFile = try reader.readableFile(r, "ssl_cert_file")
        c.sslKeyFile = try reader.readableFile(r, "ssl_key_file")
        c.sslVersion = try reader.sslVersion(r, "ssl_version")
        c.sslVerifyHostname = try reader.bool(r, "ssl_enforce_hostname_verification", c.sslVerifyHostname)
        if try reader.bool(r, "ssl_enforce_fips_mode", false) {
            throw reader.fail(r, "ssl_enforce_fips_mode", reader.raw(r, "ssl_enforce_fips_mode")!,
                              "FIPS mode cannot be enforced by the agent (OpenSSL 3 removed FIPS_mode_set; oslo.messaging ignores the option too): configure FIPS in OpenSSL itself and set this to false")
        }
        if c.sslCertFile != nil && c.sslKeyFile == nil {
            throw reader.fail(r, "ssl_cert_file", reader.raw(r, "ssl_cert_file")!, "needs ssl_key_file too (the client certificate's key)")
        }
        c.retryInterval = try reader.seconds(r, "rabbit_retry_interval", c.retryInterval)
        c.retryBackoff = try reader.seconds(r, "rabbit_retry_backoff", c.retryBackoff, allowZero: true)
        c.intervalMax = try reader.seconds(r, "rabbit_interval_max", c.intervalMax)
        c.quickRetryWindow = try reader.seconds(r, "quick_retry_window", c.quickRetryWindow, allowZero: true)
        c.handBackWaitMicroseconds = try reader.int(r, "handback_wait_us", c.handBackWaitMicroseconds, range: 0...1000)

        let ic = "image_cache"
        c.imageCacheManagerInterval = try reader.int(ic, "manager_interval", c.imageCacheManagerInterval, range: -1...(86_400 * 30))
        c.removeUnusedBaseImages = try reader.bool(ic, "remove_unused_base_images", c.removeUnusedBaseImages)
        c.removeUnusedOriginalMinimumAge = try reader.int(ic, "remove_unused_original_minimum_age_seconds",
                                                          c.removeUnusedOriginalMinimumAge, range: 0...(86_400 * 365))
        c.removeUnusedResizedMinimumAge = try reader.int(ic, "remove_unused_resized_minimum_age_seconds",
                                                         c.removeUnusedResizedMinimumAge, range: 0...(86_400 * 365))

        if let e = reader.raw("metrics", "listen"), !e.value.isEmpty {
            guard ListenAddress(e.value) != nil else {
                throw reader.fail("metrics", "listen", e, "'\(e.value)' is not host:port, [ipv6]:port or :port (port 1 to 65535)")
            }
            c.metricsListen = e.value
        }

        // Plugin sections are free-form; any other section is unknown.
        let pluginNames: Set<String> = [c.computeDriver, c.imageFetcher, c.networkPlugin]
        // With control_plane = nova the agent reads nova's own files: what it does not use
        // is named once in the log instead of refused.
        for (section, entries) in ini.sections.sorted(by: { $0.key < $1.key }) {
            if let known = knownOptions[section] {
                for (option, entry) in entries.sorted(by: { $0.key < $1.key }) where !known.contains(option) {
                    let error = ConfigError(file: entry.file.isEmpty ? ini.path : entry.file, line: entry.line, section: section,
                                            option: option, message: "unknown option")
                    if nova { c.warnings.append("\(error.location): not used by compute-agent (control_plane = nova), ignored") } else { throw error }
                }
            } else if pluginNames.contains(section) {
                c.pluginSections[section] = entries.mapValues(\.value)
                for (option, entry) in entries {
                    c.optionLines["\(section).\(option)"] = entry.line
                    c.optionFiles["\(section).\(option)"] = entry.file
                }
            } else if nova && novaReadSections.contains(section) {
                c.novaSections[section] = entries.mapValues(\.value)
                for (option, entry) in entries {
                    c.optionLines["\(section).\(option)"] = entry.line
                    c.optionFiles["\(section).\(option)"] = entry.file
                }
            } else {
                let error = ConfigError(
                    file: ini.sectionFiles[section] ?? ini.path, line: ini.sectionLines[section], section: section, option: nil,
                    message: "unknown section (known: DEFAULT, oslo_messaging_rabbit, image_cache, metrics, and one per configured plugin: \(pluginNames.sorted().joined(separator: ", ")))")
                if nova { c.warnings.append("\(error.location): section not used by compute-agent (control_plane = nova), ignored") } else { throw error }
            }
        }
        c.optionLines.merge(reader.lines) { a, _ in a }
        c.optionFiles.merge(reader.files) { a, _ in a }
        return c
    }

    /// The options (as written in the file, `section.option` outside DEFAULT) whose values
    /// differ between `self` and `other`, plugin sections included.
    public func changedOptions(comparedTo other: AgentConfiguration) -> [String] {
        let mine = optionValues(), theirs = other.optionValues()
        var changed = Set(mine.keys).union(theirs.keys).filter { mine[$0] != theirs[$0] }
        for name in Set(pluginSections.keys).union(other.pluginSections.keys)
        where pluginSections[name] != other.pluginSections[name] {
            changed.insert("[\(name)]")
        }
        return changed.sorted()
    }

    /// The options that a SIGHUP reload applies without a restart.
    public static let liveOptions: Set<String> = [
        "debug", "report_interval", "periodic_interval", "update_resources_interval", "sync_power_state_interval",
        "reclaim_instance_interval", "image_cache.manager_interval",
    ]

    /// This configuration with the live options taken from `new`.
    public func applyingLiveOptions(from new: AgentConfiguration) -> AgentConfiguration {
        var c = self
        c.debug = new.debug
        c.reportInterval = new.reportInterval
        c.periodicInterval = new.periodicInterval
        c.updateResourcesInterval = new.updateResourcesInterval
        c.syncPowerStateInterval = new.syncPowerStateInterval
        c.reclaimInstanceInterval = new.reclaimInstanceInterval
        c.imageCacheManagerInterval = new.imageCacheManagerInterval
        return c
    }

    private func optionValues() -> [String: String] {
        [
            "host": host, "transport_url": transportURL, "control_exchange": controlExchange,
            "report_interval": "\(reportInterval)", "periodic_interval": "\(periodicInterval)", "state_path": statePath,
            "plugin_dir": pluginDir, "compute_driver": computeDriver, "image_fetcher": imageFetcher,
            "network_plugin": networkPlugin, "debug": "\(debug)", "plugin_call_timeout": "\(pluginCallTimeout)",
            "plugin_threads": "\(pluginThreads)", "rpc_response_timeout": "\(rpcResponseTimeout)",
            "cpu_allocation_ratio": "\(cpuAllocationRatio)", "ram_allocation_ratio": "\(ramAllocationRatio)",
            "disk_allocation_ratio": "\(diskAllocationRatio)", "reserved_host_memory_mb": "\(reservedHostMemoryMB)",
            "reserved_host_disk_mb": "\(reservedHostDiskMB)", "max_concurrent_builds": "\(maxConcurrentBuilds)",
            "update_resources_interval": "\(updateResourcesInterval)", "sync_power_state_interval": "\(syncPowerStateInterval)",
            "reclaim_instance_interval": "\(reclaimInstanceInterval)", "soft_reboot_timeout": "\(softRebootTimeout)",
            "shelved_offload_time": "\(shelvedOffloadTime)",
            "notification_driver": notificationDriver, "notification_topic": notificationTopic,
            "graceful_shutdown_timeout": "\(gracefulShutdownTimeout)", "host_conflict": hostConflict,
            "rpc_max_message_bytes": "\(rpcMaxMessageBytes)", "rpc_max_reply_bytes": "\(rpcMaxReplyBytes)",
            "service_down_time": "\(serviceDownTime)", "metrics.listen": metricsListen ?? "",
            "oslo_messaging_rabbit.heartbeat_timeout_threshold": "\(heartbeatTimeoutThreshold)",
            "oslo_messaging_rabbit.rabbit_qos_prefetch_count": "\(qosPrefetchCount)",
            "oslo_messaging_rabbit.rabbit_quorum_queue": "\(quorumQueues)",
            "oslo_messaging_rabbit.rabbit_transient_queues_ttl": "\(transientQueuesTTL)",
            "oslo_messaging_rabbit.amqp_durable_queues": "\(durableQueues)",
            "oslo_messaging_rabbit.ssl": "\(ssl)", "oslo_messaging_rabbit.ssl_ca_file": sslCAFile ?? "",
            "oslo_messaging_rabbit.ssl_cert_file": sslCertFile ?? "", "oslo_messaging_rabbit.ssl_key_file": sslKeyFile ?? "",
            "oslo_messaging_rabbit.ssl_version": sslVersion,
            "oslo_messaging_rabbit.ssl_enforce_hostname_verification": "\(sslVerifyHostname)",
            "oslo_messaging_rabbit.rabbit_retry_interval": "\(retryInterval)",
            "oslo_messaging_rabbit.rabbit_retry_backoff": "\(retryBackoff)",
            "oslo_messaging_rabbit.rabbit_interval_max": "\(intervalMax)",
            "oslo_messaging_rabbit.quick_retry_window": "\(quickRetryWindow)",
            "oslo_messaging_rabbit.handback_wait_us": "\(handBackWaitMicroseconds)",
            "image_cache.manager_interval": "\(imageCacheManagerInterval)",
            "image_cache.remove_unused_base_images": "\(removeUnusedBaseImages)",
            "image_cache.remove_unused_original_minimum_age_seconds": "\(removeUnusedOriginalMinimumAge)",
            "image_cache.remove_unused_resized_minimum_age_seconds": "\(removeUnusedResizedMinimumAge)",
        ]
    }

    /// A ConfigError located at an option of this configuration (for checks made after
    /// parsing, such as the transport URL's syntax or a plugin's refusal of its options).
    public func error(section: String, option: String?, _ message: String) -> ConfigError {
        let line = option.flatMap { optionLines["\(section).\($0)"] }
        let file = option.flatMap { optionFiles["\(section).\($0)"] }.flatMap { $0.isEmpty ? nil : $0 } ?? sourceFile
        return ConfigError(file: file, line: line, section: section, option: option, message: message)
    }

    public static func systemHostName() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        guard gethostname(&buf, buf.count - 1) == 0 else { return "localhost" }
        let name = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name
    }
}

/// Reads typed options out of an IniFile, remembering the line each came from.
private struct OptionReader {
    let ini: IniFile
    var lines: [String: Int] = [:]
    var files: [String: String] = [:]

    mutating func raw(_ section: String, _ option: String) -> IniFile.Entry? {
        guard let e = ini.sections[section]?[option] else { return nil }
        lines["\(section).\(option)"] = e.line
        files["\(section).\(option)"] = e.file
        return e
    }

    func fail(_ section: String, _ option: String, _ e: IniFile.Entry, _ message: String) -> ConfigError {
        ConfigError(file: e.file.isEmpty ? ini.path : e.file, line: e.line, section: section, option: option, message: message)
    }

    mutating func string(_ s: String, _ o: String, _ d: String, nonEmpty: Bool = false) throws(ConfigError) -> String {
        guard let e = raw(s, o) else { return d }
        if nonEmpty && e.value.isEmpty { throw fail(s, o, e, "must not be empty") }
        return e.value
    }

    /// The agent's `host`: it becomes the queue name `compute.<host>` and a routing key, so
    /// AMQP wildcards (`*`, `#`), whitespace and control characters are refused (a `host = *`
    /// would bind `compute.*` and take other hosts' messages), and so is a name the broker
    /// cannot hold as a queue name (255 bytes with the `compute.` prefix).
    mutating func hostName(_ s: String, _ o: String, _ d: String) throws(ConfigError) -> String {
        guard let e = raw(s, o) else { return d }
        if let problem = AgentConfiguration.hostNameProblem(e.value) { throw fail(s, o, e, problem) }
        return e.value
    }

    /// An optional file the agent must be able to read (a certificate or key); an empty
    /// value means unset, as in oslo.
    mutating func readableFile(_ s: String, _ o: String) throws(ConfigError) -> String? {
        guard let e = raw(s, o), !e.value.isEmpty else { return nil }
        guard e.value.hasPrefix("/") else { throw fail(s, o, e, "must be an absolute path, got '\(e.value)'") }
        guard access(e.value, R_OK) == 0 else {
            throw fail(s, o, e, "cannot read \(e.value): \(String(cString: strerror(errno)))")
        }
        return e.value
    }

    /// oslo's `ssl_version`, limited to what is still safe: TLS 1.2 and 1.3.
    mutating func sslVersion(_ s: String, _ o: String) throws(ConfigError) -> String {
        guard let e = raw(s, o), !e.value.isEmpty else { return "" }
        switch e.value.lowercased() {
        case "sslv23", "tls": return ""
        case "tlsv1_2": return "TLSv1_2"
        case "tlsv1_3": return "TLSv1_3"
        case "tlsv1", "tlsv1_1", "sslv2", "sslv3":
            throw fail(s, o, e, "\(e.value) is not offered (insecure; OpenSSL refuses it): use TLSv1_2, TLSv1_3 or leave it empty to negotiate")
        default:
            throw fail(s, o, e, "'\(e.value)' is not one of: TLSv1_2, TLSv1_3, SSLv23 (negotiate)")
        }
    }

    mutating func path(_ s: String, _ o: String, _ d: String) throws(ConfigError) -> String {
        guard let e = raw(s, o) else { return d }
        guard e.value.hasPrefix("/") else { throw fail(s, o, e, "must be an absolute path, got '\(e.value)'") }
        return e.value
    }

    mutating func pluginName(_ s: String, _ o: String, _ d: String) throws(ConfigError) -> String {
        guard let e = raw(s, o) else { return d }
        let ok = !e.value.isEmpty && e.value.utf8.allSatisfy {
            ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F || $0 == 0x2D
        }
        guard ok else { throw fail(s, o, e, "'\(e.value)' is not a plugin name (lower-case letters, digits, '_' and '-')") }
        return e.value
    }

    mutating func bool(_ s: String, _ o: String, _ d: Bool) throws(ConfigError) -> Bool {
        guard let e = raw(s, o) else { return d }
        switch e.value.lowercased() {
        case "true", "yes", "on", "1": return true
        case "false", "no", "off", "0": return false
        default: throw fail(s, o, e, "expected true or false, got '\(e.value)'")
        }
    }

    mutating func int(_ s: String, _ o: String, _ d: Int, range: ClosedRange<Int>) throws(ConfigError) -> Int {
        guard let e = raw(s, o) else { return d }
        guard isDecimal(e.value, fraction: false), let v = Int(e.value) else {
            throw fail(s, o, e, "expected a decimal integer such as 10, got '\(e.value)'")
        }
        guard range.contains(v) else { throw fail(s, o, e, "\(v) is out of range \(range.lowerBound)...\(range.upperBound)") }
        return v
    }

    mutating func seconds(_ s: String, _ o: String, _ d: Double, allowZero: Bool = false) throws(ConfigError) -> Double {
        guard let e = raw(s, o) else { return d }
        guard isDecimal(e.value), let v = Double(e.value), v.isFinite else {
            throw fail(s, o, e, "expected a decimal number of seconds such as 10 or 2.5, got '\(e.value)'")
        }
        if allowZero && v == 0 { return 0 }
        guard v > 0 && v <= 86_400 * 30 else {
            throw fail(s, o, e, "\(e.value) s is out of range \(allowZero ? "[0" : "(0"), 2592000]")
        }
        return v
    }

    mutating func ratio(_ s: String, _ o: String, _ d: Double) throws(ConfigError) -> Double {
        guard let e = raw(s, o) else { return d }
        guard isDecimal(e.value), let v = Double(e.value), v.isFinite else {
            throw fail(s, o, e, "expected a decimal number such as 1.5, got '\(e.value)'")
        }
        guard v > 0 && v <= 1000 else { throw fail(s, o, e, "\(e.value) is out of range (0, 1000]") }
        return v
    }

    mutating func choice(_ s: String, _ o: String, _ d: String, _ allowed: [String]) throws(ConfigError) -> String {
        guard let e = raw(s, o) else { return d }
        guard allowed.contains(e.value) else {
            throw fail(s, o, e, "'\(e.value)' is not one of: \(allowed.joined(separator: ", "))")
        }
        return e.value
    }
}

/// Plain decimal notation only: digits with an optional sign and (when `fraction`) one
/// decimal point. Swift's own parsers would also take `0x10`, `1e3`, `nan` or `inf`.
func isDecimal(_ text: String, fraction: Bool = true) -> Bool {
    var digits = 0, points = 0
    for (i, b) in text.utf8.enumerated() {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digits += 1
        case UInt8(ascii: "."): points += 1
        case UInt8(ascii: "-"), UInt8(ascii: "+"): if i != 0 { return false }
        default: return false
        }
    }
    return digits > 0 && points <= (fraction ? 1 : 0)
}

extension AgentConfiguration {
    /// Why `name` cannot be this agent's `host`, or nil when it can.
    public static func hostNameProblem(_ name: String) -> String? {
        if name.isEmpty { return "must not be empty" }
        let limit = 255 - "compute.".utf8.count
        if name.utf8.count > limit {
            return "is \(name.utf8.count) bytes; at most \(limit) (it becomes the queue name compute.<host>, 255 bytes at most)"
        }
        for u in name.unicodeScalars {
            if u == "*" || u == "#" {
                return "must not contain the AMQP wildcard '\(u)' (the queue compute.<host> is bound by that key)"
            }
            if u.properties.isWhitespace || u.value < 0x20 || u.value == 0x7F || (0x80...0x9F).contains(u.value) {
                return "must not contain whitespace or control characters (U+\(String(u.value, radix: 16, uppercase: true)))"
            }
        }
        return nil
    }
}

public func readWholeFile(_ path: String) -> String? {
    guard let f = fopen(path, "rb") else { return nil }
    defer { fclose(f) }
    var data = [UInt8]()
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&chunk, 1, chunk.count, f)
        if n > 0 { data.append(contentsOf: chunk[0..<n]) }
        if n < chunk.count { break }
    }
    if ferror(f) != 0 { return nil }
    return String(decoding: data, as: UTF8.self)
}
