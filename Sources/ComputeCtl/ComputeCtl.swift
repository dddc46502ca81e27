import AgentSupport
import ArgumentParser
import Messaging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// computectl: drives compute agents over the same oslo.messaging RPC protocol the
/// control plane uses.
@main
struct ComputeCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "computectl",
        abstract: "Drive ComputeAgent hosts over RabbitMQ (oslo.messaging RPC).",
        subcommands: [Ping.self, Boot.self, List.self, Show.self, Action.self, Reboot.self, Terminate.self,
                      Console.self, Diagnostics.self, Resources.self, Capabilities.self, ListenCapabilities.self,
                      BenchCalls.self, Health.self])
}

struct Connection: ParsableArguments {
    @Option(help: "Read transport_url, control_exchange and host from this agent config file.")
    var configFile: String?
    @Option(help: "Broker URL (rabbit://user:pass@host:5672/vhost). Overrides the config file.")
    var transportURL: String?
    @Option(help: "The agent's host name (its queue is compute.<host>). Default: from the config file.")
    var host: String?
    @Option(help: "Seconds to wait for a reply.")
    var timeout: Double = 30

    func resolve() throws -> (url: TransportURL, exchange: String, host: String) {
        let (url, exchange, host, _) = try resolveAll()
        return (url, exchange, host)
    }

    /// The broker, exchange and host, plus the agent's configuration (for the queue flags,
    /// which must match what the agent and every other service on the vhost declare).
    func resolveAll() throws -> (url: TransportURL, exchange: String, host: String, config: AgentConfiguration) {
        var c = AgentConfiguration.defaults()
        if let configFile { c = try AgentConfiguration.load(path: configFile) }
        let url = try TransportURL(parsing: transportURL ?? c.transportURL)
        return (url, c.controlExchange, host ?? c.host, c)
    }

    /// Runs `body` with a started client; prints remote errors the way an operator wants them.
    /// `--timeout` bounds the connection too: a closed port, a refused login or a broker
    /// that never answers ends the command after that long with the reason.
    /// `confirmPublishes`: casts return once the broker confirmed them (the agent's own
    /// lanes publish this way).
    func withClient<T>(confirmPublishes: Bool = false, _ body: (RPCClient, String) async throws -> T) async throws -> T {
        let (url, exchange, host, config) = try resolveAll()
        var options = RPCClient.Options(url: url, exchange: exchange, acceptsReplies: true,
                                        connectionName: "computectl", threadName: "computectl")
        options.confirmPublishes = confirmPublishes
        options.durableQueues = config.durableQueues
        options.quorumQueues = config.quorumQueues
        options.connection = AMQPWorker.ConnectionSettings(configuration: config)
        let lastFailure = LastFailure()
        let client = RPCClient(options: options) { event in
            if case .connectionFailed(let reason, _, _, _) = event { lastFailure.set(reason) }
        }
        // Unstructured on purpose: a task group would wait for the connect task it cannot
        // cancel, so the timeout would not end the wait.
        let connected = await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            let once = FirstAnswer(c)
            Task { await client.start(); once.answer(true) }
            Task { try? await Task.sleep(for: .milliseconds(Int(timeout * 1000))); once.answer(false) }
        }
        guard connected else {
            let why = lastFailure.get().map { ": \($0)" } ?? ""
            throw CtlError("cannot reach the broker at \(url) within \(timeout) s\(why)")
        }
        defer { Task { await client.stop() } }
        do {
            return try await body(client, host)
        } catch let f as RemoteFailure {
            throw CtlError("\(f.className): \(f.message)")
        }
    }

    func call(_ method: String, _ args: [String: JSONValue] = [:]) async throws -> JSONValue {
        try await withClient { c, host in
            try await c.call(topic: "compute", server: host, method: method, args: args, timeout: timeout)
        }
    }
}

/// The first of two racing tasks answers; the other's answer is dropped.
final class FirstAnswer: Sendable {
    private let continuation: Mutex<CheckedContinuation<Bool, Never>?>
    init(_ c: CheckedContinuation<Bool, Never>) { continuation = Mutex(c) }
    func answer(_ value: Bool) {
        let c = continuation.withLock { c -> CheckedContinuation<Bool, Never>? in
            defer { c = nil }
            return c
        }
        c?.resume(returning: value)
    }
}

/// The last reason a connection attempt failed, for the timeout message.
final class LastFailure: Sendable {
    private let reason = Mutex<String?>(nil)
    func set(_ r: String) { reason.withLock { $0 = r } }
    func get() -> String? { reason.withLock { $0 } }
}

struct CtlError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

func printJSON(_ v: JSONValue) { print(pretty(v)) }

func pretty(_ v: JSONValue, indent: String = "") -> String {
    switch v {
    case .object(let o) where !o.isEmpty:
        let inner = indent + "  "
        let lines = o.keys.sorted().map { k -> String in
            var key = ""
            JSONValue.writeString(k, to: &key)
            return "\(inner)\(key): \(pretty(o[k]!, indent: inner))"
        }
        return "{\n" + lines.joined(separator: ",\n") + "\n\(indent)}"
    case .array(let a) where !a.isEmpty:
        let inner = indent + "  "
        return "[\n" + a.map { inner + pretty($0, indent: inner) }.joined(separator: ",\n") + "\n\(indent)]"
    default: return v.serialized()
    }
}

func stateLine(_ v: JSONValue) -> String {
    let task = v["task_state"]?.stringValue ?? "-"
    var s = "\(v["uuid"]?.stringValue ?? "?")  vm_state=\(v["vm_state"]?.stringValue ?? "?")  task_state=\(task)"
    s += "  power_state=\(v["power_state_name"]?.stringValue ?? "?")"
    if let f = v["fault"]?.stringValue { s += "  fault=\"\(f)\"" }
    if let d = v["image_download"], let bytes = d["bytes"]?.intValue {
        let total = d["total"]?.intValue ?? 0
        s += total > 0 ? "  downloading image \(v["progress"]?.intValue ?? 0)% (\(bytes / 1_048_576) of \(total / 1_048_576) MiB)"
                       : "  downloading image (\(bytes / 1_048_576) MiB)"
    }
    return s
}

/// Waits until the instance has no task in progress; prints each state it passes.
func waitForInstance(_ client: RPCClient, host: String, uuid: String, timeout: Double, gone: Bool = false,
                     expect: String? = nil) async throws
{
    let deadline = monotonicSeconds() + timeout
    let settle = monotonicSeconds() + 2
    var last = ""
    while monotonicSeconds() < deadline {
        do {
            let v = try await client.call(topic: "compute", server: host, method: "get_instance_info",
                                          args: ["instance_uuid": .string(uuid)], timeout: 10)
            let line = stateLine(v)
            if line != last { print("  " + line); last = line }
            let idle = (v["task_state"]?.isNull ?? true) && v["vm_state"]?.stringValue != "building"
            if idle && (expect == nil || v["vm_state"]?.stringValue == expect) { return }
            if idle && monotonicSeconds() > settle {
                print("  (state unchanged: the agent refused the action or has not run it; see its log)")
                return
            }
        } catch let f as RemoteFailure where f.className == "InstanceNotFound" {
            if gone { print("  \(uuid)  deleted"); return }
            // A cast build is not visible until the agent has accepted it.
            if monotonicSeconds() > settle { throw f }
        }
        try await Task.sleep(for: .milliseconds(100))
    }
    throw CtlError("instance \(uuid) still busy after \(timeout) s")
}

struct Ping: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Call ping on an agent.")
    @OptionGroup var conn: Connection
    func run() async throws { printJSON(try await conn.call("ping")) }
}

struct Health: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask the local agent whether it is healthy (exit 0) or not (exit 1), as /healthz answers.",
        discussion: """
            Healthy: consuming its queues, and the broker confirmed a heartbeat within \
            service_down_time / 2. Asks the agent over <state_path>/health.sock (no HTTP \
            endpoint or broker needed) and prints its one-line reason.
            """)
    @Option(help: "The agent's config file (for state_path).") var configFile: String = "/etc/compute-agent/compute-agent.conf"
    @Option(help: "The agent's health socket (default: <state_path>/health.sock).") var socket: String?

    func run() throws {
        let path: String
        if let socket { path = socket } else {
            path = try AgentConfiguration.load(path: configFile).statePath + "/health.sock"
        }
        switch HealthProbe.ask(socketPath: path) {
        case .answer(let healthy, let reason):
            print(reason)
            if !healthy { throw ExitCode(1) }
        case .unreachable(let why):
            print("unhealthy: the agent does not answer on \(path): \(why)")
            throw ExitCode(1)
        }
    }
}

/// One `GET /healthz` over the agent's Unix socket, with a 5 s timeout.
enum HealthProbe {
    enum Result { case answer(healthy: Bool, reason: String), unreachable(String) }

    static func ask(socketPath: String) -> Result {
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socketPath.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: a.sun_path) else { return .unreachable("the path is too long") }
        withUnsafeMutableBytes(of: &a.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b } }
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return .unreachable(String(cString: strerror(errno))) }
        defer { close(fd) }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let rc = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { return .unreachable(String(cString: strerror(errno))) }
        let request = Array("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else {
            return .unreachable(String(cString: strerror(errno)))
        }
        var response: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while response.count < 65536 {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 { return .unreachable("no answer: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            response.append(contentsOf: buf[0..<n])
        }
        let end = Array("\r\n\r\n".utf8)
        guard response.starts(with: Array("HTTP/1.1 ".utf8)),
              let at = (0..<max(0, response.count - 3)).first(where: { Array(response[$0..<($0 + 4)]) == end })
        else { return .unreachable("not an HTTP answer") }
        let status = String(decoding: response[..<at], as: UTF8.self)
        let body = String(decoding: response[(at + 4)...], as: UTF8.self)
        let reason = body.hasSuffix("\n") ? String(body.dropLast()) : String(body)
        return .answer(healthy: status.hasPrefix("HTTP/1.1 200"), reason: reason)
    }
}

struct Boot: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cast build_and_run_instance.")
    @OptionGroup var conn: Connection
    @Option(help: "Instance name.") var name: String
    @Option(help: "Instance UUID (default: a new one).") var uuid: String?
    @Option(help: "Virtual CPUs.") var vcpus: Int = 1
    @Option(help: "Memory in MiB.") var memory: Int = 64
    @Option(help: "Root disk in GiB.") var disk: Int = 1
    @Option(help: "Image reference: file:///path, a Glance image id, or an http(s):// URL.") var image: String?
    @Option(help: "A network interface as JSON in nova's network model (repeatable; see docs/rpc-api.md).")
    var vif: [String] = []
    @Flag(help: "Wait until the build has finished, printing each state.") var wait = false

    func run() async throws {
        let id = uuid ?? randomUUID()
        var instance: [String: JSONValue] = ["uuid": .string(id), "name": .string(name), "vcpus": .int(Int64(vcpus)),
                                             "memory_mb": .int(Int64(memory)), "root_gb": .int(Int64(disk))]
        if let image { instance["image_ref"] = .string(image) }
        if !vif.isEmpty {
            var vifs: [JSONValue] = []
            for text in vif {
                do { vifs.append(try JSONValue.parse(text)) } catch { throw ValidationError("--vif is not JSON: \(error)") }
            }
            instance["vifs"] = .array(vifs)
        }
        try await conn.withClient { c, host in
            try await c.cast(topic: "compute", server: host, method: "build_and_run_instance",
                             args: ["instance": .object(instance)])
            print("build_and_run_instance cast to compute.\(host): \(id)")
            if wait { try await waitForInstance(c, host: host, uuid: id, timeout: conn.timeout) }
        }
    }
}

struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the agent's instances.")
    @OptionGroup var conn: Connection
    func run() async throws {
        let v = try await conn.call("list_instances")
        let items = v.arrayValue ?? []
        if items.isEmpty { print("(no instances)") }
        for i in items { print("\(stateLine(i))  name=\(i["name"]?.stringValue ?? "")") }
    }
}

struct Show: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one instance (get_instance_info).")
    @OptionGroup var conn: Connection
    @Argument var uuid: String
    func run() async throws { printJSON(try await conn.call("get_instance_info", ["instance_uuid": .string(uuid)])) }
}

struct Action: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "action",
        abstract: "Cast an action to an instance.",
        discussion: "Actions: \(Action.expected.keys.sorted().joined(separator: ", ")).")

    /// action → (RPC method, the vm_state it ends in; nil when it keeps the current one)
    static let expected: [String: (String, String?)] = [
        "stop": ("stop_instance", "stopped"), "start": ("start_instance", "active"),
        "pause": ("pause_instance", "paused"), "unpause": ("unpause_instance", "active"),
        "suspend": ("suspend_instance", "suspended"), "resume": ("resume_instance", "active"),
        "rescue": ("rescue_instance", "rescued"), "unrescue": ("unrescue_instance", "active"),
        "snapshot": ("snapshot_instance", nil), "rebuild": ("rebuild_instance", nil),
        "resize": ("resize_instance", "resized"), "confirm-resize": ("confirm_resize", nil),
        "revert-resize": ("revert_resize", nil), "soft-delete": ("soft_delete_instance", "soft-delete"),
        "restore": ("restore_instance", "active"), "lock": ("lock_instance", nil), "unlock": ("unlock_instance", nil),
    ]

    @OptionGroup var conn: Connection
    @Argument(help: "The action (see below).") var action: String
    @Argument var uuid: String
    @Option(help: "resize: the new flavor as VCPUS,MEMORY_MB,ROOT_GB.") var flavor: String?
    @Option(help: "rebuild: the new image; rescue: the rescue image.") var image: String?
    @Option(help: "snapshot: the image name.") var imageName: String?
    @Flag(help: "Send the request with an admin context (is_admin = true).") var admin = false
    @Flag(help: "Wait for the action to finish, printing each state.") var wait = false

    func run() async throws {
        guard let (method, expect) = Self.expected[action] else { throw ValidationError("unknown action '\(action)'") }
        var args: [String: JSONValue] = ["instance_uuid": .string(uuid)]
        if action == "resize" {
            let parts = (flavor ?? "").split(separator: ",").compactMap { Int($0) }
            guard parts.count == 3 else { throw ValidationError("resize needs --flavor VCPUS,MEMORY_MB,ROOT_GB") }
            args["flavor"] = .object(["vcpus": .int(Int64(parts[0])), "memory_mb": .int(Int64(parts[1])), "root_gb": .int(Int64(parts[2]))])
        }
        if let image { args[action == "rescue" ? "rescue_image_ref" : "image_ref"] = .string(image) }
        if let imageName { args["image_name"] = .string(imageName) }
        let context: [String: JSONValue] = admin ? ["is_admin": true] : [:]
        try await conn.withClient { c, host in
            try await c.cast(topic: "compute", server: host, method: method, args: args, context: context)
            print("\(method) cast to compute.\(host): \(uuid)")
            if wait { try await waitForInstance(c, host: host, uuid: uuid, timeout: conn.timeout, expect: expect) }
        }
    }
}

struct Console: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print an instance's console output.")
    @OptionGroup var conn: Connection
    @Argument var uuid: String
    @Option(help: "Only the last N lines.") var tailLength: Int?
    func run() async throws {
        var args: [String: JSONValue] = ["instance_uuid": .string(uuid)]
        if let tailLength { args["tail_length"] = .int(Int64(tailLength)) }
        print(try await conn.call("get_console_output", args).stringValue ?? "", terminator: "")
    }
}

struct Diagnostics: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print an instance's diagnostics.")
    @OptionGroup var conn: Connection
    @Argument var uuid: String
    func run() async throws { printJSON(try await conn.call("get_diagnostics", ["instance_uuid": .string(uuid)])) }
}

struct Resources: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the last resource audit (get_available_resource).")
    @OptionGroup var conn: Connection
    func run() async throws { printJSON(try await conn.call("get_available_resource")) }
}

struct Reboot: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cast reboot_instance (soft unless --hard).")
    @OptionGroup var conn: Connection
    @Argument var uuid: String
    @Flag var hard = false
    @Flag(help: "Wait for the reboot to finish.") var wait = false
    func run() async throws {
        try await conn.withClient { c, host in
            try await c.cast(topic: "compute", server: host, method: "reboot_instance",
                             args: ["instance_uuid": .string(uuid), "reboot_type": .string(hard ? "HARD" : "SOFT")])
            print("reboot_instance (\(hard ? "HARD" : "SOFT")) cast to compute.\(host): \(uuid)")
            if wait { try await waitForInstance(c, host: host, uuid: uuid, timeout: conn.timeout) }
        }
    }
}

struct Terminate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cast terminate_instance.")
    @OptionGroup var conn: Connection
    @Argument var uuid: String
    @Flag(help: "Wait until the instance is gone.") var wait = false
    func run() async throws {
        try await conn.withClient { c, host in
            try await c.cast(topic: "compute", server: host, method: "terminate_instance", args: ["instance_uuid": .string(uuid)])
            print("terminate_instance cast to compute.\(host): \(uuid)")
            if wait { try await waitForInstance(c, host: host, uuid: uuid, timeout: conn.timeout, gone: true) }
        }
    }
}

struct Capabilities: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Call get_host_capabilities.")
    @OptionGroup var conn: Connection
    func run() async throws { printJSON(try await conn.call("get_host_capabilities")) }
}

struct ListenCapabilities: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "listen-capabilities",
        abstract: "Listen on scheduler_fanout, as the scheduler does, and print the capabilities agents fan out.")
    @OptionGroup var conn: Connection
    @Option(help: "Stop after this many messages.") var count = 1

    func run() async throws {
        let (url, _, _) = try conn.resolve()
        let queue = "scheduler_fanout_computectl_\(randomHex(bytes: 6))"
        let (stream, cont) = AsyncStream<AMQPDelivery>.makeStream()
        let worker = AMQPWorker(
            options: .init(url: url, connectionName: "computectl-listen", threadName: "computectl-listen"),
            setup: { c throws(AMQPError) in
                try c.declareExchange("scheduler_fanout", type: "fanout", durable: false, autoDelete: true)
                try c.declareQueue(queue, durable: false, exclusive: true, autoDelete: true)
                try c.bindQueue(queue, exchange: "scheduler_fanout", routingKey: "scheduler")
                try c.consume(queue: queue, consumerTag: "1")
            },
            onDelivery: { cont.yield($0) })
        worker.start()
        await worker.waitUntilConnected()
        print("listening on scheduler_fanout (queue \(queue))")
        flushOutput()
        var seen = 0
        let timeout = conn.timeout
        let timer = Task { try await Task.sleep(for: .seconds(timeout)); cont.finish() }
        for await d in stream {
            worker.ack(d)
            guard let m = try? OsloMessage.request(from: OsloMessage.unwrap(body: d.body)) else { continue }
            print("\(m.method) from host \(m.args["host"]?.stringValue ?? "?"):")
            printJSON(m.args["capabilities"] ?? .object(m.args))
            flushOutput()
            seen += 1
            if seen >= count { break }
        }
        timer.cancel()
        await worker.stop()
        if seen < count { throw CtlError("received \(seen) of \(count) capability updates within \(timeout) s") }
    }
}

/// Flushes standard output so a reader on a pipe sees each line at once.
func flushOutput() { fflush(nil) }

struct BenchCalls: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-calls",
        abstract: "Time ping calls (the native client of the benchmarks); prints JSON.")
    @OptionGroup var conn: Connection
    @Option(help: "Calls to time (in all).") var count = 2000
    @Option(help: "Calls before timing starts.") var warmup = 100
    @Option(help: "Bytes of padding the reply carries.") var replyBytes = 0
    @Option(help: "Callers running at once, each making count/concurrency calls in sequence.") var concurrency = 1
    @Flag(help: "Publisher confirms on, with confirmed ping casts in flight alongside the calls (as on the agent's own lanes, where replies arrive while a publish waits for its confirm).")
    var withConfirmedCasts = false

    func run() async throws {
        guard count > 0, concurrency > 0 else { throw ValidationError("--count and --concurrency must be positive") }
        let args: [String: JSONValue] = replyBytes > 0 ? ["reply_bytes": .int(Int64(replyBytes))] : [:]
        let (count, concurrency, timeout, warmup) = (self.count, self.concurrency, conn.timeout, self.warmup)
        try await conn.withClient(confirmPublishes: withConfirmedCasts) { c, host in
            let casting = !withConfirmedCasts ? nil : Task {
                var sent = 0
                while !Task.isCancelled {
                    try await c.cast(topic: "compute", server: host, method: "ping", args: [:])
                    sent += 1
                }
                return sent
            }
            for _ in 0..<warmup { _ = try await c.call(topic: "compute", server: host, method: "ping", args: args, timeout: timeout) }
            let start = monotonicSeconds()
            var samples = try await withThrowingTaskGroup(of: [Double].self) { group in
                for _ in 0..<concurrency {
                    group.addTask {
                        var mine: [Double] = []
                        for _ in 0..<(count / concurrency) {
                            let t = monotonicSeconds()
                            _ = try await c.call(topic: "compute", server: host, method: "ping", args: args, timeout: timeout)
                            mine.append((monotonicSeconds() - t) * 1000)
                        }
                        return mine
                    }
                }
                var all: [Double] = []
                for try await part in group { all += part }
                return all
            }
            let total = monotonicSeconds() - start
            casting?.cancel()
            let casts = try await casting?.value
            samples.sort()
            func pct(_ p: Double) -> Double { samples[min(samples.count - 1, Int(Double(samples.count) * p))] }
            let result: JSONValue = .object([
                "count": .int(Int64(samples.count)), "concurrency": .int(Int64(concurrency)),
                "p50_ms": .double(pct(0.5)), "p99_ms": .double(pct(0.99)),
                "min_ms": .double(samples.first!), "max_ms": .double(samples.last!),
                "mean_ms": .double(samples.reduce(0, +) / Double(samples.count)),
                "calls_per_s": .double(Double(samples.count) / total),
                "confirmed_casts": .int(Int64(casts ?? 0)),
            ])
            print(result.serialized())
        }
    }
}
