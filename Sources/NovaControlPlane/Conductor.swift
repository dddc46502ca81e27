import AgentSupport
import JSON
import Messaging

/// nova-conductor's object API (`object_class_action_versions`, `object_action`) over RPC
/// calls to topic `conductor`, version 3.0, on the control plane's own connection.
struct Conductor: Sendable {
    let client: RPCClient
    let timeout: Double

    /// The versions the agent understands, by class, sent with every class action so the
    /// conductor backports what it returns.
    static let versions: [String: JSONValue] = [
        "Service": "1.22", "ComputeNode": "1.19", "HVSpec": "1.2", "PciDevicePoolList": "1.1", "PciDevicePool": "1.1",
        "InstanceActionEvent": "1.4", "InstanceFault": "1.2", "Instance": "2.8", "InstanceList": "2.6",
        "Migration": "1.8", "MigrationList": "1.5",
    ]

    /// The context of the agent's own work (heartbeat, start-up, periodic tasks): admin,
    /// no user or project, a fresh request id, as nova's `get_admin_context`.
    static func adminContext() -> [String: JSONValue] {
        [
            "user": .null, "project_id": .null, "system_scope": .null, "project": .null, "domain": .null,
            "user_domain": .null, "project_domain": .null, "is_admin": true, "read_only": false,
            "show_deleted": false, "auth_token": .null, "request_id": .string("req-" + randomUUID()),
            "global_request_id": .null, "resource_uuid": .null, "roles": .array([]),
            "user_identity": "- - - - -", "is_admin_project": true, "user_id": .null, "read_deleted": "no",
            "remote_address": .null, "timestamp": .string(contextTimestamp()), "quota_class": .null,
            "user_name": .null, "service_catalog": .array([]), "project_name": .null,
        ]
    }

    static func contextTimestamp() -> String {
        let now = wallClock()
        let micros = Int((now - now.rounded(.down)) * 1_000_000)
        var s = String(novaTimestamp(now).dropLast())
        let m = String(micros)
        s += "." + String(repeating: "0", count: 6 - m.count) + m
        return s
    }

    /// `object_class_action_versions`: a class method (`Service.get_by_host_and_binary`).
    func classAction(_ objname: String, _ method: String, args: [JSONValue] = [], kwargs: [String: JSONValue] = [:],
                     context: [String: JSONValue]) async throws -> JSONValue
    {
        try await retryingTransient {
            try await client.call(topic: "conductor", method: "object_class_action_versions", args: [
                "objname": .string(objname), "objmethod": .string(method), "object_versions": .object(Self.versions),
                "args": .array(args), "kwargs": .object(kwargs),
            ], version: "3.0", timeout: timeout, context: context)
        }
    }

    /// A database error the conductor's database may clear by itself (a lock or a deadlock
    /// between concurrent writers: SQLite's "database is locked", MySQL's deadlock).
    static func isTransient(_ error: Error) -> Bool {
        guard let f = error as? RemoteFailure else { return false }
        return ["DBDeadlock", "DBConnectionError"].contains(f.className)
            || f.message.contains("database is locked") || f.message.contains("Deadlock found")
    }

    /// Runs a conductor call again (up to 5 times, 0.2 … 1 s apart) while it fails with a
    /// transient database error. Every call the agent makes writes the same values again,
    /// so a repeat is harmless.
    func retryingTransient<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        var attempt = 0
        while true {
            do { return try await body() } catch where Self.isTransient(error) && attempt < 5 {
                attempt += 1
                try? await Task.sleep(for: .milliseconds(200 * attempt))
            }
        }
    }

    /// `object_action`: a method on an object (`Instance.save`); applies the updates the
    /// conductor returns and gives back the method's own return value.
    @discardableResult
    func objectAction(_ object: inout NovaObject, _ method: String, args: [JSONValue] = [], kwargs: [String: JSONValue] = [:],
                      context: [String: JSONValue]) async throws -> JSONValue
    {
        let primitive = object.primitive
        let reply = try await retryingTransient {
            try await client.call(topic: "conductor", method: "object_action", args: [
                "objinst": primitive, "objmethod": .string(method), "args": .array(args), "kwargs": .object(kwargs),
            ], version: "3.0", timeout: timeout, context: context)
        }
        let pair = reply.arrayValue ?? []
        object.apply(updates: pair.first)
        return pair.count > 1 ? pair[1] : .null
    }
}
