import AgentMetrics
import AgentSupport
import Compute
import CoreMetrics
import Dispatch
import InstanceStore
import Logging
import Messaging
import NativeControlPlane
import NovaControlPlane
import PluginHost
import Prometheus
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// compute-agent: the per-host compute agent daemon.
///
///     compute-agent --config-file /etc/compute-agent/compute-agent.conf
///
/// Exit codes: 0 clean shutdown, 1 start-up failure (plugin refused, state path unusable),
/// 2 usage or configuration error.

let usage = """
    usage: compute-agent --config-file FILE [--config-file FILE …] [--debug] [--log-target auto|journald|stderr]
           compute-agent --version

    Consumes compute RPC messages from RabbitMQ and manages this host's instances
    through hypervisor, image-fetch and network plugins. With several --config-file,
    later files override earlier ones (nova's nova.conf first, then the agent's own file).
    See docs/operations.md.
    """

func fail(_ code: Int32, _ message: String) -> Never {
    FileHandleStderr.write("compute-agent: \(message)\n")
    exit(code)
}

enum FileHandleStderr {
    static func write(_ s: String) {
        var b = Array(s.utf8)
        _ = b.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

// glibc gives every thread that allocates its own malloc arena; the plugin-call and
// connection threads would each keep one, and a large plugin answer parsed on one of
// them would stay in its arena. Two arenas keep the resident size near what is used.
// A fixed mmap threshold (256 KiB) keeps every large buffer — a plugin's listing of
// 10,000 domains is ~1.5 MiB — in its own mapping, returned when freed; glibc's default
// raises the threshold after the first such free and the buffers then stay in the heap.
// (mallopt is not in Swift's Glibc module; M_ARENA_MAX is -8, M_MMAP_THRESHOLD -3 in <malloc.h>.)
if let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") {
    typealias MallOpt = @convention(c) (Int32, Int32) -> Int32
    let mallopt = unsafeBitCast(sym, to: MallOpt.self)
    _ = mallopt(-8, 2)
    _ = mallopt(-3, 256 * 1024)
}

var configPaths: [String] = []
var forceDebug = false
var logTarget = "auto"
var argv = CommandLine.arguments.dropFirst()
while let a = argv.popFirst() {
    switch a {
    case "--config-file":
        guard let p = argv.popFirst() else { fail(2, "--config-file needs a path\n\(usage)") }
        configPaths.append(p)
    case "--debug": forceDebug = true
    case "--log-target":
        guard let t = argv.popFirst(), ["auto", "journald", "stderr"].contains(t) else {
            fail(2, "--log-target takes auto, journald or stderr\n\(usage)")
        }
        logTarget = t
    case "--version": print("compute-agent \(ComputeManager.agentVersion) (RPC API \(ComputeManager.apiVersion), plugin ABI 1.2)"); exit(0)
    case "--help", "-h": print(usage); exit(0)
    default: fail(2, "unknown argument '\(a)'\n\(usage)")
    }
}
guard !configPaths.isEmpty else { fail(2, "--config-file is required\n\(usage)") }
let configPath = configPaths.joined(separator: ", ")

let config: AgentConfiguration
do { config = try AgentConfiguration.load(paths: configPaths) } catch { fail(2, "configuration error: \(error)") }
if config.controlPlane == "nova" {
    do { _ = try NovaControlPlane.placementEndpoint(config) } catch { fail(2, "configuration error: \(error)") }
}

LiveLogLevel.current = (config.debug || forceDebug) ? .debug : .info
// Under systemd (its journal on our standard error) log natively to journald, with fields.
let useJournal = logTarget == "journald" || (logTarget == "auto" && JournaldLogHandler.journalIsStandardError)
// Every entry made while an RPC request is handled carries its request id and method.
if useJournal {
    LoggingSystem.bootstrap({ label, provider in JournaldLogHandler(label: label, metadataProvider: provider) },
                            metadataProvider: RPCRequestContext.metadataProvider)
} else {
    LoggingSystem.bootstrap({ label, provider in StderrLogHandler(label: label, metadataProvider: provider) },
                            metadataProvider: RPCRequestContext.metadataProvider)
}
let logger: Logger = {
    var l = Logger(label: "compute-agent")
    l[metadataKey: "host"] = "\(config.host)"
    return l
}()

let url: TransportURL
do { url = try TransportURL(parsing: config.transportURL) } catch {
    fail(2, "configuration error: \(config.error(section: "DEFAULT", option: "transport_url", error.message))")
}

for dir in [config.statePath, config.statePath + "/instances"] {
    if mkdir(dir, 0o750) != 0 && errno != EEXIST {
        fail(1, "cannot create state directory \(dir): \(String(cString: strerror(errno)))")
    }
}

// One agent per state_path, for the life of the process: a second one would split the work
// and write the same journal.
do { try StateLock.acquire(statePath: config.statePath) } catch {
    logger.critical("refusing to start: \(error)")
    fail(1, "\(error)")
}

// The file holds the broker password: others must not read it.
for path in configPaths {
    if let warning = ConfigFilePermissions.warning(path: path, transportURL: url,
                                                   passwordFrom: config.optionFiles["DEFAULT.transport_url"] ?? configPaths.last) {
        logger.warning("\(warning)")
    }
}
// control_plane = nova reads nova's own files: what the agent does not use is named once.
for warning in config.warnings { logger.warning("\(warning)") }

// Metrics record from here on when the endpoint is configured (a plugin loaded below
// reports its calls). Libraries that use swift-metrics report into the same registry.
let metrics = AgentMetrics.shared
if config.metricsListen != nil {
    metrics.enable()
    MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: metrics.registry))
    ProcessMetrics.register(with: metrics)
}

// Plugin events (libvirt lifecycle events) reach the manager through this stream once it exists.
let (pluginEvents, pluginEventSink) = AsyncStream<(String, JSONValue)>.makeStream(bufferingPolicy: .bufferingNewest(10_000))
let plugins: PluginSet
do {
    plugins = try PluginSet.load(configuration: config, logger: logger) { plugin, event in
        pluginEventSink.yield((plugin, event))
    }
} catch {
    logger.critical("refusing to start: \(error)")
    fail(1, "\(error)")
}

let store: InstanceStore
do { store = try InstanceStore(path: config.statePath + "/compute-agent.sqlite") } catch {
    logger.critical("refusing to start: \(error)")
    fail(1, "\(error)")
}

var settings = ComputeManager.Settings(host: config.host, statePath: config.statePath)
settings.resources.cpuAllocationRatio = config.cpuAllocationRatio
settings.resources.ramAllocationRatio = config.ramAllocationRatio
settings.resources.diskAllocationRatio = config.diskAllocationRatio
settings.resources.reservedHostMemoryMB = config.reservedHostMemoryMB
settings.resources.reservedHostDiskMB = config.reservedHostDiskMB
settings.maxConcurrentBuilds = config.maxConcurrentBuilds
settings.softRebootTimeout = config.softRebootTimeout
settings.removeUnusedBaseImages = config.removeUnusedBaseImages
settings.originalMinimumAge = config.removeUnusedOriginalMinimumAge
settings.resizedMinimumAge = config.removeUnusedResizedMinimumAge
let instanceNotifier = InstanceNotifier(driver: InstanceNotifier.Driver(rawValue: config.notificationDriver) ?? .noop,
                                        host: config.host, topic: config.notificationTopic, logger: logger)
let manager = ComputeManager(settings: settings, plugins: plugins, store: store, notifier: instanceNotifier, logger: logger)
do { try await manager.recover() } catch {
    logger.critical("refusing to start: cannot read the instance store: \(error)")
    fail(1, "cannot read the instance store: \(error)")
}
Task {
    for await (plugin, event) in pluginEvents {
        logger.debug("plugin event", metadata: ["plugin": "\(plugin)", "event": "\(event.serialized())"])
        if event["event"]?.stringValue == "lifecycle", let uuid = event["uuid"]?.stringValue {
            await manager.handleLifecycleEvent(uuid: uuid)
        } else if event["event"]?.stringValue == "progress", let uuid = event["uuid"]?.stringValue {
            await manager.recordProgress(uuid: uuid, event)
        }
    }
}

let brokerAttempts = SystemdService.BrokerAttempts()

func connectionLogger(_ lane: String) -> @Sendable (AMQPWorker.Event) -> Void {
    let logger = logger
    let attempts = brokerAttempts
    return { event in
        switch event {
        case .connected(let broker, let generation):
            if lane == "rpc" { attempts.failed.store(0, ordering: .relaxed) }
            metrics.brokerConnected(lane: lane, reconnect: generation > 1)
            logger.info(generation == 1 ? "connected to broker" : "reconnected to broker",
                        metadata: ["lane": "\(lane)", "broker": "\(broker)"])
        case .connectionFailed(let reason, let attempt, let retryIn, let quick):
            metrics.brokerConnectionFailed(lane: lane)
            if lane == "rpc" {
                attempts.failed.store(attempt, ordering: .relaxed)
                SystemdNotifier.status("reconnecting to broker (attempt \(attempt + 1) in \(Int(retryIn * 10) / 10) s)")
            }
            // Quick retries (several a second) are logged at the first and every tenth.
            let level: Logger.Level = !quick || attempt == 1 || attempt % 10 == 0 ? .error : .debug
            logger.log(level: level, "broker connection failed: \(reason)", metadata: [
                "lane": "\(lane)", "attempt": "\(attempt)", "retry_in_s": "\(Int(retryIn * 10) / 10)",
            ])
        case .returned: break
        case .gaveUp(let reason):
            // Retrying cannot help (a conflicting declare, access refused, the login refused
            // again and again): say why and exit non-zero, so systemd shows the failure
            // instead of an agent that loops for ever.
            logger.critical("the broker refused the agent and retrying cannot help: \(reason)", metadata: ["lane": "\(lane)"])
            SystemdNotifier.status("refused by the broker: \(reason)")
            SystemdNotifier.stopping()
            fail(1, "the broker refused the agent (\(lane) connection): \(reason)")
        }
    }
}

let connectionSettings = AMQPWorker.ConnectionSettings(configuration: config)

// The control plane's lane: heartbeats, capabilities, notifications (and in the nova
// dialect the conductor's calls and their replies), with publisher confirms.
let novaDialect = config.controlPlane == "nova"
var notifierOptions = RPCClient.Options(url: url, exchange: config.controlExchange, acceptsReplies: novaDialect,
                                        connectionName: "compute-agent:notify:\(config.host)", threadName: "amqp-notify")
notifierOptions.connection = connectionSettings
notifierOptions.durableQueues = config.durableQueues
notifierOptions.quorumQueues = config.quorumQueues
notifierOptions.confirmPublishes = true
/// A reply the agent could not read is logged with the reason (its call fails at once).
func unreadableReplyLogger(_ lane: String) -> @Sendable (String) -> Void {
    let logger = logger
    return { why in logger.error("rpc: \(why)", metadata: ["lane": "\(lane)"]) }
}
let notifier = RPCClient(options: notifierOptions, onConnectionEvent: connectionLogger("notify"),
                         onUnreadableReply: unreadableReplyLogger("notify"))

// The dialect: what the agent tells the control plane, and the RPC API it serves.
let controlPlane: ControlPlane
let endpoint: RPCEndpoint
var topics = ["compute"]
if novaDialect {
    let nova: NovaControlPlane
    var handlerOptions = notifierOptions
    handlerOptions.connectionName = "compute-agent:conductor:\(config.host)"
    handlerOptions.threadName = "amqp-conductor"
    let handlerClient = RPCClient(options: handlerOptions, onConnectionEvent: connectionLogger("conductor"),
                                  onUnreadableReply: unreadableReplyLogger("conductor"))
    do {
        nova = try NovaControlPlane(configuration: config, client: notifier, handlerClient: handlerClient, manager: manager,
                                    logger: logger)
    } catch {
        fail(2, "configuration error: \(error)")
    }
    controlPlane = nova
    endpoint = NovaComputeEndpoint(plane: nova, manager: manager, host: config.host, logger: logger)
    // Service version 74 makes the control plane send shutdown-safe calls to compute-alt.
    topics.append("compute-alt")
} else {
    controlPlane = NativeControlPlane(client: notifier, host: config.host)
    endpoint = manager
}

func rpcServer(topic: String) -> RPCServer {
    var o = RPCServer.Options(url: url, exchange: config.controlExchange, topic: topic, host: config.host)
    o.prefetch = config.qosPrefetchCount
    o.connection = connectionSettings
    o.durableQueues = config.durableQueues
    o.quorumQueues = config.quorumQueues
    o.transientQueuesTTL = config.transientQueuesTTL
    o.hostConflict = HostConflictPolicy(rawValue: config.hostConflict) ?? .refuse
    o.maxMessageBytes = config.rpcMaxMessageBytes
    o.maxReplyBytes = config.rpcMaxReplyBytes
    return RPCServer(options: o, endpoint: endpoint, logger: logger,
                     onConnectionEvent: connectionLogger(topic == "compute" ? "rpc" : topic))
}
let server = rpcServer(topic: "compute")
let altServers = topics.dropFirst().map { rpcServer(topic: $0) }
let periodic = PeriodicTasks(
    manager: manager, controlPlane: controlPlane, host: config.host,
    intervals: .init(report: config.reportInterval, capabilities: config.periodicInterval,
                     resources: config.updateResourcesInterval, powerSync: config.syncPowerStateInterval,
                     reclaim: config.reclaimInstanceInterval,
                     imageCache: imageCacheInterval(config)),
    logger: logger)

/// `[image_cache] manager_interval` as nova reads it: -1 off, 0 every `periodic_interval`.
func imageCacheInterval(_ c: AgentConfiguration) -> Double {
    switch c.imageCacheManagerInterval {
    case ..<0: return 0
    case 0: return c.periodicInterval
    case let n: return Double(n)
    }
}

/// The RPC server as a service: consumes until graceful shutdown. A shutdown while the
/// broker cannot be reached ends it at once (nothing runs yet).
struct RPCService: Service {
    let server: RPCServer
    let logger: Logger
    let url: TransportURL
    let host: String
    /// The `compute` server tells systemd the agent is ready; `compute-alt` only logs.
    var primary = true

    func run() async throws {
        logger.info("connecting to \(url)")
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await server.run() }
                group.addTask {
                    await server.waitUntilConnected()
                    guard server.isConnected else { return }
                    let topic = server.options.topic
                    logger.info(primary ? "consuming" : "consuming \(topic)", metadata: [
                        "queues": "\(topic), \(topic).\(host), \(server.fanoutQueue)", "exchange": "\(server.options.exchange)",
                    ])
                    // Plugins are loaded and the records recovered before this service starts.
                    if primary { SystemdNotifier.ready(status: "connected to \(url), consuming compute.\(host)") }
                }
            }
        }
        logger.info("RPC server stopped")
    }
}

/// Heartbeats, capability updates, the audits and the instance notifications, on their
/// own connection. A shutdown while it is still connecting ends it at once.
struct PeriodicService: Service {
    let periodic: PeriodicTasks
    let controlPlane: ControlPlane
    let instanceNotifier: InstanceNotifier

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await controlPlane.start()
            if Task.isCancelled { return }
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await periodic.run() }
                group.addTask { await instanceNotifier.run(plane: controlPlane) }
            }
        }
        await controlPlane.stop()
    }
}

// /healthz and (when configured) /metrics over TCP, and both on a Unix socket in the state
// path for `computectl health`. A port that cannot be had is logged; the agent goes on.
let serviceDownTime = config.serviceDownTime
let healthCheck: StatusServer.HealthCheck = {
    HealthRule.evaluate(consuming: server.isConnected, secondsSinceConfirmedHeartbeat: periodic.secondsSinceConfirmedHeartbeat,
                        serviceDownTime: serviceDownTime)
}
if metrics.isEnabled { registerAgentCollectors() }
let healthSocket = config.statePath + "/health.sock"
var statusServer: StatusServer?
do {
    statusServer = try StatusServer(tcp: config.metricsListen, unixPath: healthSocket, metrics: metrics, health: healthCheck)
    if let listen = config.metricsListen { logger.info("serving /metrics and /healthz on \(listen)") }
} catch {
    logger.error("metrics: \(error); /metrics and /healthz are off over TCP, the agent goes on without them",
                 metadata: ["option": "[metrics] listen"])
    do { statusServer = try StatusServer(tcp: nil, unixPath: healthSocket, metrics: metrics, health: healthCheck) } catch {
        logger.error("health socket: \(error); computectl health cannot ask this agent")
    }
}

/// Gauges read at scrape time: broker lanes, unacknowledged deliveries, handler load, the
/// heartbeat's age, instances by state (asked of the manager from the scraping thread,
/// which may block: it is not on the cooperative pool), plugins and the agent's version.
func registerAgentCollectors() {
    let (metrics, server, controlPlane, periodic, manager) = (metrics, server, controlPlane, periodic, manager)
    let rpcUp = metrics.gauge("compute_agent_broker_connected", [("lane", "rpc")],
                            help: "1 while the lane's connection to the broker is up")
    let notifyUp = metrics.gauge("compute_agent_broker_connected", [("lane", "notify")],
                               help: "1 while the lane's connection to the broker is up")
    for lane in ["rpc", "notify"] {
        metrics.declareCounter("compute_agent_broker_reconnects_total", [("lane", lane)],
                               help: "Connections made again after a connection was lost, by lane")
    }
    let unacked = metrics.gauge("compute_agent_rpc_unacked_messages", help: "Deliveries taken and not yet acknowledged to the broker")
    let running = metrics.gauge("compute_agent_rpc_handlers_running", help: "RPC handlers running now")
    let waiting = metrics.gauge("compute_agent_rpc_messages_waiting", help: "Messages waiting for a handler slot (prefetch)")
    let age = metrics.gauge("compute_agent_heartbeat_age_seconds",
                          help: "Seconds since the broker confirmed the last report_state heartbeat (since start if none yet)")
    let building = metrics.gauge("compute_agent_builds_in_progress", help: "Instances being built now")
    let vmGauges = Dictionary(uniqueKeysWithValues: VMState.allCases.map {
        ($0.rawValue, metrics.gauge("compute_agent_instances", [("vm_state", $0.rawValue)], help: "Instances on this host by vm_state"))
    })
    let powerGauges = Dictionary(uniqueKeysWithValues: PowerState.allCases.map {
        ($0.name, metrics.gauge("compute_agent_instances_by_power_state", [("power_state", $0.name)],
                              help: "Instances on this host by power_state"))
    })
    metrics.gauge("compute_agent_build_info", [("version", ComputeManager.agentVersion), ("rpc_api", ComputeManager.apiVersion)],
                help: "The agent's version and RPC API version (always 1)").set(1.0)
    for info in plugins.infos {
        metrics.gauge("compute_agent_plugin_info", [("kind", info.kind.rawValue), ("name", info.name), ("version", info.version)],
                    help: "The loaded plugins (always 1)").set(1.0)
    }
    for task in ["report_state", "update_capabilities", "update_available_resource", "sync_power_states", "image_cache_manager"] {
        metrics.declareCounter("compute_agent_periodic_task_failures_total", [("task", task)], help: "Periodic task runs that failed, by task")
    }
    let started = manager.uptime
    metrics.addCollector {
        rpcUp.set(server.isConnected ? 1.0 : 0.0)
        notifyUp.set(controlPlane.isConnected ? 1.0 : 0.0)
        unacked.set(Double(server.unacknowledged))
        let load = server.load
        running.set(Double(load.running))
        waiting.set(Double(load.waiting))
        age.set(periodic.secondsSinceConfirmedHeartbeat ?? (manager.uptime - started))
        // The manager is an actor: ask it from here and wait at most 2 s (a busy manager
        // leaves the last figures in place).
        let box = Mutex<(vmStates: [String: Int], powerStates: [String: Int], building: Int)?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task {
            let counts = await manager.stateCounts()
            box.withLock { $0 = counts }
            done.signal()
        }
        guard done.wait(timeout: .now() + 2) == .success, let counts = box.withLock({ $0 }) else { return }
        for (state, g) in vmGauges { g.set(Double(counts.vmStates[state] ?? 0)) }
        for (state, g) in powerGauges { g.set(Double(counts.powerStates[state] ?? 0)) }
        building.set(Double(counts.building))
    }
}

logger.info("compute-agent starting", metadata: [
    "version": "\(ComputeManager.agentVersion)", "config": "\(configPath)",
    "plugins": "\(plugins.infos.map { "\($0.kind.rawValue)=\($0.name) \($0.version)" }.joined(separator: ", "))",
])

let signals = SignalHandling(configPaths: configPaths, config: config, forceDebug: forceDebug, periodic: periodic,
                             logger: logger)
signals.install()

let group = ServiceGroup(configuration: .init(
    services: altServers.map { .init(service: RPCService(server: $0, logger: logger, url: url, host: config.host, primary: false)) } + [
        .init(service: RPCService(server: server, logger: logger, url: url, host: config.host)),
        .init(service: PeriodicService(periodic: periodic, controlPlane: controlPlane, instanceNotifier: instanceNotifier)),
        .init(service: SystemdService(server: server, attempts: brokerAttempts, periodic: periodic, manager: manager, url: url, logger: logger)),
    ],
    gracefulShutdownSignals: [.sigterm, .sigint],
    logger: logger))

do {
    try await group.run()
    logger.info("compute-agent stopped")
} catch {
    logger.critical("compute-agent failed: \(error)")
    exit(1)
}
