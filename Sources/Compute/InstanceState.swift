/// nova's vm_state values (nova/compute/vm_states.py) that this agent uses.
public enum VMState: String, Sendable, CaseIterable {
    case building, active, stopped, paused, suspended, error, deleted
}

/// nova's task_state values (nova/compute/task_states.py) for the actions implemented.
public enum TaskState: String, Sendable, CaseIterable {
    case spawning, poweringOff = "powering-off", poweringOn = "powering-on", rebooting, rebootingHard = "rebooting_hard"
    case pausing, unpausing, suspending, resuming, deleting
}

/// nova's power_state numbers (nova/compute/power_state.py), as plugins report them.
public enum PowerState: Int, Sendable {
    case noState = 0, running = 1, paused = 3, shutdown = 4, crashed = 6, suspended = 7

    public var name: String {
        switch self {
        case .noState: return "NOSTATE"
        case .running: return "RUNNING"
        case .paused: return "PAUSED"
        case .shutdown: return "SHUTDOWN"
        case .crashed: return "CRASHED"
        case .suspended: return "SUSPENDED"
        }
    }
}

/// The instance actions and the rules for each: the vm_states it is allowed from, the
/// task_state while it runs and the vm_state it leaves. This table is the one place the
/// lifecycle rules live; plugins never decide whether an action is allowed.
public enum InstanceAction: String, Sendable, CaseIterable {
    case stop, start, softReboot = "reboot", hardReboot = "reboot_hard", pause, unpause, suspend, resume, terminate

    /// vm_states the action may start from (with no task in progress).
    public var allowedFrom: Set<VMState> {
        switch self {
        case .stop: return [.active, .paused, .suspended, .error]
        case .start: return [.stopped]
        case .softReboot: return [.active]
        case .hardReboot: return [.active, .stopped, .paused, .suspended, .error]
        case .pause: return [.active]
        case .unpause: return [.paused]
        case .suspend: return [.active]
        case .resume: return [.suspended]
        case .terminate: return Set(VMState.allCases)
        }
    }

    /// Whether the action may interrupt another one in progress (only terminate may, as in nova).
    public var ignoresTaskState: Bool { self == .terminate }

    public var taskState: TaskState {
        switch self {
        case .stop: return .poweringOff
        case .start: return .poweringOn
        case .softReboot: return .rebooting
        case .hardReboot: return .rebootingHard
        case .pause: return .pausing
        case .unpause: return .unpausing
        case .suspend: return .suspending
        case .resume: return .resuming
        case .terminate: return .deleting
        }
    }

    public var resultingState: VMState {
        switch self {
        case .stop: return .stopped
        case .start, .softReboot, .hardReboot, .unpause, .resume: return .active
        case .pause: return .paused
        case .suspend: return .suspended
        case .terminate: return .deleted
        }
    }

    /// The RPC method that requests this action.
    public var rpcMethod: String {
        switch self {
        case .stop: return "stop_instance"
        case .start: return "start_instance"
        case .softReboot, .hardReboot: return "reboot_instance"
        case .pause: return "pause_instance"
        case .unpause: return "unpause_instance"
        case .suspend: return "suspend_instance"
        case .resume: return "resume_instance"
        case .terminate: return "terminate_instance"
        }
    }

    /// nil when the action may run now; otherwise the refusal.
    public func refusal(uuid: String, vmState: VMState, taskState: TaskState?) -> ComputeError? {
        if let t = taskState, !ignoresTaskState {
            return .invalidState(uuid: uuid, method: rpcMethod, attribute: "task_state", state: t.rawValue)
        }
        if !allowedFrom.contains(vmState) {
            return .invalidState(uuid: uuid, method: rpcMethod, attribute: "vm_state", state: vmState.rawValue)
        }
        return nil
    }
}
