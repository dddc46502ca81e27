import AgentSupport

#if canImport(Glibc)
import Glibc
#endif

/// One state-changing request the agent has accepted, as the store keeps it from the
/// moment it is accepted until long after it ended (for redelivery detection).
public struct StoredOperation: Sendable, Equatable {
    public enum State: String, Sendable {
        /// Recorded, not started: the message may not have been acked yet.
        case accepted
        /// Started; `step` says how far it got.
        case running
        case done, failed
    }

    /// The message's `_unique_id`, or an id the agent made up (internal operations).
    public var id: String
    public var instanceUUID: String
    public var method: String
    public var args: JSONValue
    public var state: State
    public var step: String?
    /// How many times the agent has started this operation (restarts count).
    public var attempts: Int
    public var result: JSONValue?
    /// Store order (insertion sequence); 0 until stored.
    public var sequence: Int64 = 0

    public init(id: String, instanceUUID: String, method: String, args: JSONValue, state: State = .accepted,
                step: String? = nil, attempts: Int = 0, result: JSONValue? = nil)
    {
        self.id = id
        self.instanceUUID = instanceUUID
        self.method = method
        self.args = args
        self.state = state
        self.step = step
        self.attempts = attempts
        self.result = result
    }

    public var isFinished: Bool { state == .done || state == .failed }
}

/// The agent's crash-safe records: one JSON document per instance and a journal of
/// operations, in SQLite (WAL mode, `synchronous=FULL`: a write that returned is on the
/// disk and survives SIGKILL and power loss). Every call runs on the store's own thread.
public final class InstanceStore: Sendable {
    /// A change applied together with others in one transaction.
    public enum Change: Sendable {
        case putInstance(uuid: String, body: JSONValue)
        case deleteInstance(uuid: String)
        case putOperation(StoredOperation)
    }

    public static let schemaVersion = 1
    public let path: String
    private let thread: SerialThread
    // Used from `thread` only, which is what makes sharing the store safe.
    private nonisolated(unsafe) let db: SQLiteDatabase

    /// Opens (creating if needed) the store at `path`. Blocks: call it at start-up, off
    /// the cooperative pool.
    public init(path: String) throws(StoreError) {
        self.path = path
        let thread = SerialThread(name: "instance-store")
        self.thread = thread
        let opened: Result<UnsafeSendable<SQLiteDatabase>, StoreError> = thread.runBlocking {
            do throws(StoreError) {
                let db = try SQLiteDatabase(path: path)
                try Self.prepare(db)
                return .success(UnsafeSendable(db))
            } catch { return .failure(error) }
        }
        db = try opened.get().value
    }

    private static func prepare(_ db: SQLiteDatabase) throws(StoreError) {
        try db.exec("PRAGMA journal_mode=WAL")
        try db.exec("PRAGMA synchronous=FULL")
        let check = try db.query("PRAGMA quick_check")
        if let r = check.first?.first?.text, r != "ok" {
            throw StoreError("instance store \(db.path) is damaged (quick_check: \(r)); move it aside and restart to begin from the hypervisor's view")
        }
        try db.exec("""
            CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS instances(uuid TEXT PRIMARY KEY, body TEXT NOT NULL, updated REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS operations(
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL UNIQUE,
                uuid TEXT NOT NULL,
                method TEXT NOT NULL,
                args TEXT NOT NULL,
                state TEXT NOT NULL,
                step TEXT,
                attempts INTEGER NOT NULL,
                result TEXT,
                updated REAL NOT NULL);
            CREATE INDEX IF NOT EXISTS operations_open ON operations(uuid) WHERE state IN ('accepted', 'running');
            """)
        let version = try db.query("SELECT value FROM meta WHERE key = 'schema_version'").first?.first?.text
        switch version {
        case nil: try db.query("INSERT INTO meta(key, value) VALUES('schema_version', ?)", [.text("\(schemaVersion)")])
        case "\(schemaVersion)"?: break
        case let v?: throw StoreError("instance store \(db.path) has schema version \(v); this agent reads version \(schemaVersion)")
        }
    }

    // MARK: - Reads

    /// Every instance document.
    public func instances() async throws(StoreError) -> [JSONValue] {
        try await instances { $0 }
    }

    /// Every instance document, each handed to `transform` as soon as it is parsed (on the
    /// store's thread) and read 512 rows at a time: with 10,000 instances the parsed
    /// documents are never all in memory at once, only what `transform` makes of them.
    public func instances<T: Sendable>(_ transform: @escaping @Sendable (JSONValue) -> T) async throws(StoreError) -> [T] {
        let db = UnsafeSendable(self.db)
        return try await thread.run { () throws(StoreError) -> [T] in
            var out: [T] = []
            var after = ""
            while true {
                let rows = try db.value.query("SELECT uuid, body FROM instances WHERE uuid > ? ORDER BY uuid LIMIT 512",
                                              [.text(after)])
                for row in rows {
                    out.append(transform(try Self.decode(row[1].text ?? "", what: "an instance document")))
                }
                guard rows.count == 512, let last = rows.last?[0].text else { return out }
                after = last
            }
        }
    }

    /// Operations not finished (accepted or running), oldest first.
    public func openOperations() async throws(StoreError) -> [StoredOperation] {
        try await operations(where: "state IN ('accepted', 'running') ORDER BY seq", [])
    }

    /// The operation recorded under `id`, if any.
    public func operation(id: String) async throws(StoreError) -> StoredOperation? {
        try await operations(where: "id = ?", [.text(id)]).first
    }

    /// The newest operations on one instance, newest first.
    public func operations(instance uuid: String, limit: Int = 20) async throws(StoreError) -> [StoredOperation] {
        try await operations(where: "uuid = ? ORDER BY seq DESC LIMIT ?", [.text(uuid), .int(Int64(limit))])
    }

    private func operations(where clause: String, _ params: [SQLValue]) async throws(StoreError) -> [StoredOperation] {
        let db = UnsafeSendable(self.db)
        let sql = "SELECT seq, id, uuid, method, args, state, step, attempts, result FROM operations WHERE " + clause
        let rows = try await thread.run { () throws(StoreError) -> [[SQLValue]] in try db.value.query(sql, params) }
        var out: [StoredOperation] = []
        for r in rows {
            guard let state = r[5].text.flatMap(StoredOperation.State.init(rawValue:)) else {
                throw StoreError("instance store \(path): operation \(r[1].text ?? "?") has an unknown state")
            }
            var op = StoredOperation(
                id: r[1].text ?? "", instanceUUID: r[2].text ?? "", method: r[3].text ?? "",
                args: try Self.decode(r[4].text ?? "null", what: "operation arguments"), state: state,
                step: r[6].text, attempts: Int(r[7].int ?? 0),
                result: try r[8].text.map { s throws(StoreError) in try Self.decode(s, what: "an operation result") })
            op.sequence = r[0].int ?? 0
            out.append(op)
        }
        return out
    }

    // MARK: - Writes

    /// Applies `changes` in one transaction and waits until they are on the disk.
    public func write(_ changes: [Change]) async throws(StoreError) {
        let db = UnsafeSendable(self.db)
        try await thread.run { () throws(StoreError) in
            let now = Double(time(nil))
            try db.value.transaction { () throws(StoreError) in
                for c in changes {
                    switch c {
                    case .putInstance(let uuid, let body):
                        try db.value.query("INSERT INTO instances(uuid, body, updated) VALUES(?, ?, ?) ON CONFLICT(uuid) DO UPDATE SET body = excluded.body, updated = excluded.updated",
                                           [.text(uuid), .text(body.serialized()), .real(now)])
                    case .deleteInstance(let uuid):
                        try db.value.query("DELETE FROM instances WHERE uuid = ?", [.text(uuid)])
                    case .putOperation(let op):
                        try db.value.query("""
                            INSERT INTO operations(id, uuid, method, args, state, step, attempts, result, updated)
                            VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)
                            ON CONFLICT(id) DO UPDATE SET state = excluded.state, step = excluded.step,
                              attempts = excluded.attempts, result = excluded.result, updated = excluded.updated
                            """, [.text(op.id), .text(op.instanceUUID), .text(op.method), .text(op.args.serialized()),
                                  .text(op.state.rawValue), op.step.map { .text($0) } ?? .null, .int(Int64(op.attempts)),
                                  op.result.map { .text($0.serialized()) } ?? .null, .real(now)])
                    }
                }
            }
        }
    }

    /// Forgets finished operations beyond the newest `keep` (they only serve to recognise
    /// redelivered messages, which arrive within minutes).
    public func pruneOperations(keep: Int) async throws(StoreError) {
        let db = UnsafeSendable(self.db)
        try await thread.run { () throws(StoreError) in
            _ = try db.value.query("""
                DELETE FROM operations WHERE state IN ('done', 'failed')
                AND seq <= (SELECT COALESCE(MAX(seq), 0) FROM operations) - ?
                """, [.int(Int64(keep))])
        }
    }

    private static func decode(_ text: String, what: String) throws(StoreError) -> JSONValue {
        do { return try JSONValue.parse(text) } catch { throw StoreError("instance store holds \(what) that is not JSON: \(error)") }
    }
}

/// Carries a non-Sendable value to the store's own thread. Safe because the value is
/// only ever touched on that one thread (or before the thread's first job, in `init`).
struct UnsafeSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
