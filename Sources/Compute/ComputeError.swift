import AgentSupport
import Messaging

/// Errors the compute manager returns to RPC callers, serialized as the nova exception of
/// the same name (module `nova.exception`) so nova's own clients re-raise them as such.
public struct ComputeError: Error, RemoteFailureConvertible, CustomStringConvertible, Sendable, Equatable {
    public enum Code: String, Sendable {
        case invalidState = "InstanceInvalidState"
        case notFound = "InstanceNotFound"
        case exists = "InstanceExists"
        case invalidInput = "InvalidInput"
        case notSupported = "NotSupported"
        case hypervisorFailure = "HypervisorUnavailable"
        case buildFailed = "BuildAbortException"
        case resourcesUnavailable = "ComputeResourcesUnavailable"
        case locked = "InstanceIsLocked"
        case resizeError = "ResizeError"
        case storeFailure = "ComputeAgentStoreError"
    }

    public let code: Code
    public let message: String
    public let kwargs: [String: JSONValue]
    /// Set when the action could not be recorded: the cast goes back to the broker.
    public let requeueAfter: Double?

    public init(code: Code, message: String, kwargs: [String: JSONValue], requeueAfter: Double? = nil) {
        self.code = code
        self.message = message
        self.kwargs = kwargs
        self.requeueAfter = requeueAfter
    }

    public var description: String { "\(code.rawValue): \(message)" }

    public var remoteFailure: RemoteFailure {
        RemoteFailure(className: code.rawValue, module: code == .storeFailure ? "compute_agent.exception" : "nova.exception",
                      message: message, kwargs: kwargs)
    }

    /// nova's InstanceInvalidState message, word for word.
    public static func invalidState(uuid: String, method: String, attribute: String, state: String) -> ComputeError {
        ComputeError(code: .invalidState,
                     message: "Cannot '\(method)' instance \(uuid) while it is in \(attribute) \(state)",
                     kwargs: ["instance_uuid": .string(uuid), "method": .string(method), "attr": .string(attribute), "state": .string(state)])
    }

    public static func notFound(_ uuid: String) -> ComputeError {
        ComputeError(code: .notFound, message: "Instance \(uuid) could not be found.", kwargs: ["instance_id": .string(uuid)])
    }

    public static func invalidInput(_ reason: String) -> ComputeError {
        ComputeError(code: .invalidInput, message: "Invalid input received: \(reason)", kwargs: ["reason": .string(reason)])
    }

    /// nova's claim refusal: "Insufficient compute resources: Free vcpu 3.00 VCPU < requested 4 VCPU."
    public static func insufficient(_ reason: String) -> ComputeError {
        ComputeError(code: .resourcesUnavailable, message: "Insufficient compute resources: \(reason).",
                     kwargs: ["reason": .string(reason)])
    }

    public static func locked(_ uuid: String) -> ComputeError {
        ComputeError(code: .locked, message: "Instance \(uuid) is locked", kwargs: ["instance_uuid": .string(uuid)])
    }
}
