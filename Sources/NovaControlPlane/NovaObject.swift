import JSON

/// One oslo.versionedobjects primitive as nova sends it: `nova_object.name`, `.namespace`
/// (`nova`), `.version`, `.data` (a field absent from `data` is "not set", not null) and
/// `.changes`. Nested objects stay primitives inside `data`; fields the agent does not know
/// are carried back unchanged.
struct NovaObject: Sendable {
    var name: String
    var version: String
    var data: [String: JSONValue]
    var changes: Set<String> = []

    init(name: String, version: String, data: [String: JSONValue] = [:], changes: Set<String> = []) {
        self.name = name
        self.version = version
        self.data = data
        self.changes = changes
    }

    /// Reads a primitive; nil when `value` is not one.
    init?(primitive value: JSONValue) {
        guard let name = value["nova_object.name"]?.stringValue, let version = value["nova_object.version"]?.stringValue,
              let data = value["nova_object.data"]?.objectValue
        else { return nil }
        self.name = name
        self.version = version
        self.data = data
        changes = Set((value["nova_object.changes"]?.arrayValue ?? []).compactMap(\.stringValue))
    }

    var primitive: JSONValue {
        var o: [String: JSONValue] = [
            "nova_object.name": .string(name), "nova_object.namespace": "nova",
            "nova_object.version": .string(version), "nova_object.data": .object(data),
        ]
        if !changes.isEmpty { o["nova_object.changes"] = .array(changes.sorted().map { .string($0) }) }
        return .object(o)
    }

    subscript(_ field: String) -> JSONValue? {
        get { data[field] }
    }

    /// Sets a field and marks it changed.
    mutating func set(_ field: String, _ value: JSONValue) {
        data[field] = value
        changes.insert(field)
    }

    /// Applies the `updates` half of an `object_action` reply (`obj_what_changed` is not
    /// a field) and clears the changes, as oslo does after a remotable method.
    mutating func apply(updates: JSONValue?) {
        for (k, v) in updates?.objectValue ?? [:] where k != "obj_what_changed" { data[k] = v }
        changes = []
    }
}

/// nova's timestamp format in object fields.
func novaTimestamp(_ seconds: Double = wallClock()) -> String {
    var t = time_t(seconds)
    var tm = tm()
    gmtime_r(&t, &tm)
    func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
    return "\(tm.tm_year + 1900)-\(two(tm.tm_mon + 1))-\(two(tm.tm_mday))T\(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec))Z"
}

/// Seconds since the epoch of a nova timestamp (`2026-12-02T10:20:55`, with optional
/// fraction and `Z` or `+00:00`, UTC); nil when it is not one.
func parseNovaTimestamp(_ text: String) -> Double? {
    let digits = Array(text.utf8)
    guard digits.count >= 19 else { return nil }
    func num(_ from: Int, _ n: Int) -> Int? {
        var v = 0
        for b in digits[from..<(from + n)] {
            guard b >= 48 && b <= 57 else { return nil }
            v = v * 10 + Int(b - 48)
        }
        return v
    }
    guard let y = num(0, 4), let mo = num(5, 2), let d = num(8, 2), let h = num(11, 2), let mi = num(14, 2), let sec = num(17, 2),
          digits[4] == 45, digits[7] == 45, digits[10] == 84 || digits[10] == 32, digits[13] == 58, digits[16] == 58,
          (1...12).contains(mo), (1...31).contains(d), h < 24, mi < 60, sec < 61
    else { return nil }
    var tm = tm()
    tm.tm_year = Int32(y - 1900)
    tm.tm_mon = Int32(mo - 1)
    tm.tm_mday = Int32(d)
    tm.tm_hour = Int32(h)
    tm.tm_min = Int32(mi)
    tm.tm_sec = Int32(sec)
    return Double(timegm(&tm))
}

func wallClock() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

#if canImport(Glibc)
import Glibc
#endif
