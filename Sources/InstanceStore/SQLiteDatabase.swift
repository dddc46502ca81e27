import CSQLite
#if canImport(Glibc)
import Glibc
#endif

/// A failure of the instance store, with SQLite's own message and the file concerned.
public struct StoreError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
    public init(_ message: String) { self.message = message }
}

/// A value bound to a statement parameter or read from a result column.
enum SQLValue: Sendable {
    case text(String), int(Int64), real(Double), null
}

/// A minimal SQLite connection: prepare, bind, step. Not thread-safe: the store uses it
/// from its one `SerialThread` only.
final class SQLiteDatabase {
    private var db: OpaquePointer?
    let path: String

    init(path: String) throws(StoreError) {
        self.path = path
        // The journal holds instance metadata and user data: owner only. SQLite gives its
        // -wal and -shm files the database file's mode, so creating it 0600 covers them.
        let created = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        if created >= 0 { _ = fchmod(created, 0o600); close(created) }
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK else {
            let m = db.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
            sqlite3_close(db)
            db = nil
            throw StoreError("cannot open the instance store \(path): \(m)")
        }
        sqlite3_busy_timeout(db, 5000)
    }

    deinit { sqlite3_close(db) }

    private func error(_ what: String) -> StoreError {
        StoreError("instance store \(path): \(what): \(String(cString: sqlite3_errmsg(db)))")
    }

    /// Runs statements that take no parameters and return nothing (schema, pragmas).
    func exec(_ sql: String) throws(StoreError) {
        var msg: UnsafeMutablePointer<CChar>?
        if sqlite3_exec(db, sql, nil, nil, &msg) != SQLITE_OK {
            let m = msg.map { String(cString: $0) } ?? "unknown error"
            sqlite3_free(msg)
            throw StoreError("instance store \(path): \(m)")
        }
    }

    /// Runs one statement with `params`; returns its rows, each as a list of column values.
    @discardableResult
    func query(_ sql: String, _ params: [SQLValue] = []) throws(StoreError) -> [[SQLValue]] {
        var stmt: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &stmt, nil) == SQLITE_OK else { throw error("preparing \(sql.prefix(40))") }
        defer { sqlite3_finalize(stmt) }
        for (i, p) in params.enumerated() {
            let idx = Int32(i + 1)
            let rc: Int32
            switch p {
            case .text(let s): rc = ca_sqlite_bind_text(stmt, idx, s)
            case .int(let n): rc = sqlite3_bind_int64(stmt, idx, n)
            case .real(let d): rc = sqlite3_bind_double(stmt, idx, d)
            case .null: rc = sqlite3_bind_null(stmt, idx)
            }
            guard rc == SQLITE_OK else { throw error("binding parameter \(idx)") }
        }
        var rows: [[SQLValue]] = []
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { throw error("running \(sql.prefix(40))") }
            var row: [SQLValue] = []
            for c in 0..<sqlite3_column_count(stmt) {
                switch sqlite3_column_type(stmt, c) {
                case SQLITE_INTEGER: row.append(.int(sqlite3_column_int64(stmt, c)))
                case SQLITE_FLOAT: row.append(.real(sqlite3_column_double(stmt, c)))
                case SQLITE_NULL: row.append(.null)
                default: row.append(.text(sqlite3_column_text(stmt, c).map { String(cString: $0) } ?? ""))
                }
            }
            rows.append(row)
        }
        return rows
    }

    /// Runs `body` in one transaction: all of its writes reach the disk, or none do.
    func transaction<T>(_ body: () throws(StoreError) -> T) throws(StoreError) -> T {
        try exec("BEGIN IMMEDIATE")
        do {
            let v = try body()
            try exec("COMMIT")
            return v
        } catch {
            try? exec("ROLLBACK")
            throw error
        }
    }
}

extension SQLValue {
    var text: String? { if case .text(let s) = self { return s } else { return nil } }
    var int: Int64? { if case .int(let n) = self { return n } else { return nil } }
}
