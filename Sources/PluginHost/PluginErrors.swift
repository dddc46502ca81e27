import PluginABI

/// A plugin could not be loaded. The agent refuses to start: it never runs half-configured.
public struct PluginLoadError: Error, CustomStringConvertible, Sendable {
    public let name: String
    public let path: String
    public let reason: String
    public var description: String { "plugin '\(name)' (\(path)): \(reason)" }
}

/// A plugin call failed. `code` is the plugin's status; `message` its explanation.
public struct PluginError: Error, CustomStringConvertible, Sendable {
    public enum Code: Sendable, Equatable {
        case failed, notFound, invalidArgument, notSupported, invalidState, unavailable
        case timedOut
        case badOutput
    }

    public let code: Code
    public let plugin: String
    public let operation: String
    public let message: String

    public init(code: Code, plugin: String, operation: String, message: String) {
        self.code = code
        self.plugin = plugin
        self.operation = operation
        self.message = message
    }

    public var description: String { "\(plugin).\(operation): \(message)" }

    static func from(status: ca_status, plugin: String, operation: String, message: String) -> PluginError {
        let code: Code
        switch status {
        case CA_ERR_NOT_FOUND: code = .notFound
        case CA_ERR_INVALID_ARGUMENT: code = .invalidArgument
        case CA_ERR_NOT_SUPPORTED: code = .notSupported
        case CA_ERR_INVALID_STATE: code = .invalidState
        case CA_ERR_UNAVAILABLE: code = .unavailable
        default: code = .failed
        }
        let text = message.isEmpty ? "failed with status \(status.rawValue) and no message" : message
        return PluginError(code: code, plugin: plugin, operation: operation, message: text)
    }
}
