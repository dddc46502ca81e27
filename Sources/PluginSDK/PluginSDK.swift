@_exported import JSON
@_exported import PluginABI

#if canImport(Glibc)
import Glibc
#endif

/// A failed plugin operation: the status to return and the message for the agent.
public struct PluginFailure: Error, Sendable {
    public let status: ca_status
    public let message: String
    public init(_ status: ca_status, _ message: String) {
        self.status = status
        self.message = message
    }
}

/// Helpers for writing a ComputeAgent plugin in Swift: they turn thrown `PluginFailure`s
/// into a status plus error buffer, hand JSON out as malloc'd strings, and build the
/// static descriptor. No Swift type crosses the ABI.
public enum PluginSDK {
    /// Runs `body`; a thrown failure fills `err` and becomes the returned status.
    public static func run(_ err: UnsafeMutablePointer<ca_error>?, _ body: () throws(PluginFailure) -> Void) -> ca_status {
        do {
            try body()
            return CA_OK
        } catch {
            return ca_error_set(err, error.status, error.message)
        }
    }

    /// Runs `body` and returns its JSON through `out` (malloc'd, freed by the agent).
    public static func runJSON(_ out: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
                               _ err: UnsafeMutablePointer<ca_error>?,
                               _ body: () throws(PluginFailure) -> JSONValue) -> ca_status
    {
        do {
            let json = try body().serialized()
            guard let out else { return ca_error_set(err, CA_ERR_INVALID_ARGUMENT, "no output pointer") }
            out.pointee = strdup(json)
            return CA_OK
        } catch {
            return ca_error_set(err, error.status, error.message)
        }
    }

    /// Parses a JSON argument, failing with CA_ERR_INVALID_ARGUMENT.
    public static func parse(_ text: UnsafePointer<CChar>?, what: String) throws(PluginFailure) -> JSONValue {
        guard let text else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "\(what) is NULL") }
        do { return try JSONValue.parse(String(cString: text)) } catch {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "\(what) is not valid JSON: \(error)")
        }
    }

    /// Builds the static descriptor the entry symbol returns. Call once, keep the pointer.
    public static func makeDescriptor(kind: ca_plugin_kind, name: String, version: String, description: String,
                                      vtable: UnsafeRawPointer) -> UnsafePointer<ca_plugin_descriptor>
    {
        let d = UnsafeMutablePointer<ca_plugin_descriptor>.allocate(capacity: 1)
        d.initialize(to: ca_plugin_descriptor(
            struct_size: UInt32(MemoryLayout<ca_plugin_descriptor>.size),
            abi_major: UInt16(CA_PLUGIN_ABI_MAJOR), abi_minor: UInt16(CA_PLUGIN_ABI_MINOR),
            kind: kind.rawValue, name: UnsafePointer(strdup(name)), version: UnsafePointer(strdup(version)),
            description: UnsafePointer(strdup(description)), vtable: vtable))
        return UnsafePointer(d)
    }
}

/// The agent's host table, as a plugin sees it.
public struct PluginHostAPI: @unchecked Sendable {
    // Safe to share: the agent guarantees the table and its functions are valid and
    // thread-safe from init until shutdown.
    let table: UnsafePointer<ca_host_api>

    public init(_ table: UnsafePointer<ca_host_api>) { self.table = table }

    public func log(_ level: ca_log_level, _ message: String) {
        table.pointee.log?(table.pointee.host_context, level, message)
    }

    /// An option from the plugin's config section, or nil.
    public func option(_ name: String) -> String? {
        table.pointee.config_get?(table.pointee.host_context, name).map { String(cString: $0) }
    }

    public func emit(_ event: JSONValue) {
        table.pointee.emit_event?(table.pointee.host_context, event.serialized())
    }
}
