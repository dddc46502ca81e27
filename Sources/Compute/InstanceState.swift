/// nova's vm_state values (nova/compute/vm_states.py) that this agent uses.
public enum VMState: String, Sendable, CaseIterable {
    case building, active, stopped, paused, suspended, rescued, resized, softDeleted = "soft-delete", error, deleted
}

/// nova's task_state values (nova/compute/task_states.py) for the actions implemented.
public enum TaskState: String, Sendable, CaseIterable {
    case spawning, poweringOff = "powering-off", poweringOn = "powering-on", rebooting, rebootingHard = "rebooting_hard"
    case pausing, unpausing, suspending, resuming, rescuing, unrescuing
    case imageSnapshot = "image_snapshot", imageUploading = "image_uploading"
    case rebuilding, rebuildSpawning = "rebuild_spawning"
    case resizePrep = "resize_prep", resizeFinish = "resize_finish", resizeConfirming = "resize_confirming"
    case resizeReverting = "resize_reverting"
    case softDeleting = "soft-deleting", restoring, deleting
}

/// nova's power_state numbers (nova/compute/power_state.py), as plugins report them.
public enum PowerState: Int, Sendable, CaseIterable {
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

    /// Off in nova's sense (the domain is not executing and cannot be resumed as is).
    public var isOff: Bool { self == .shutdown || self == .crashed || self == .noState }
}

/// The instance actions and the rules for each: the vm_states it is allowed from, the
/// task_state while it runs, the vm_state it leaves and whether a lock stops it. The
/// rules are nova 34's (`check_instance_state` / `check_instance_lock` in
/// nova/compute/api.py). This table is the one place the lifecycle rules live; plugins
/// never decide whether an action is allowed.
public enum InstanceAction: String, Sendable, CaseIterable {
    case build, stop, start, softReboot = "reboot", hardReboot = "reboot_hard", pause, unpause, suspend, resume
    case rescue, unrescue, snapshot, rebuild, resize, confirmResize = "confirm_resize", revertResize = "revert_resize"
    case softDelete = "soft_delete", restore, terminate, lock, unlock

    /// vm_states the action may start from.
    public var allowedFrom: Set<VMState> {
        switch self {
        case .build: return []
        case .stop: return [.active, .error]
        case .start: return [.stopped]
        case .softReboot: return [.active]
        case .hardReboot: return [.active, .stopped, .paused, .suspended, .error]
        case .pause, .suspend: return [.active]
        case .unpause: return [.paused]
        case .resume: return [.suspended]
        case .rescue: return [.active, .stopped, .error]
        case .unrescue: return [.rescued]
        case .snapshot: return [.active, .stopped, .paused, .suspended]
        case .rebuild: return [.active, .stopped, .error]
        case .resize: return [.active, .stopped]
        case .confirmResize, .revertResize: return [.resized]
        case .softDelete: return Set(VMState.allCases).subtracting([.building, .deleted, .softDeleted])
        case .restore: return [.softDeleted]
        case .terminate, .lock, .unlock: return Set(VMState.allCases)
        }
    }

    /// task_states the action may start from (nil = no task in progress). A hard reboot
    /// may interrupt a soft one and the quick power actions (nova's ALLOW_REBOOT);
    /// terminate and lock/unlock may run whatever is in progress.
    public func allows(taskState: TaskState?) -> Bool {
        guard let t = taskState else { return true }
        switch self {
        case .hardReboot: return [.rebooting, .rebootingHard, .resuming, .unpausing, .pausing, .suspending].contains(t)
        case .terminate, .lock, .unlock: return true
        default: return false
        }
    }

    /// Whether a locked instance refuses this action for a non-admin caller (snapshot is
    /// not lock-checked in nova; unlock has its own rule).
    public var checksLock: Bool { ![.snapshot, .lock, .unlock, .build].contains(self) }

    /// Whether the action changes the hypervisor and is journalled as an operation.
    public var touchesHypervisor: Bool { ![.lock, .unlock, .confirmResize].contains(self) }

    public var taskState: TaskState? {
        switch self {
        case .build: return .spawning
        case .stop: return .poweringOff
        case .start: return .poweringOn
        case .softReboot: return .rebooting
        case .hardReboot: return .rebootingHard
        case .pause: return .pausing
        case .unpause: return .unpausing
        case .suspend: return .suspending
        case .resume: return .resuming
        case .rescue: return .rescuing
        case .unrescue: return .unrescuing
        case .snapshot: return .imageSnapshot
        case .rebuild: return .rebuilding
        case .resize: return .resizePrep
        case .confirmResize: return .resizeConfirming
        case .revertResize: return .resizeReverting
        case .softDelete: return .softDeleting
        case .restore: return .restoring
        case .terminate: return .deleting
        case .lock, .unlock: return nil
        }
    }

    /// The vm_state the action leaves (nil: unchanged, or decided by the power state).
    public var resultingState: VMState? {
        switch self {
        case .build, .start, .softReboot, .hardReboot, .unpause, .resume, .unrescue, .restore: return .active
        case .stop: return .stopped
        case .pause: return .paused
        case .suspend: return .suspended
        case .rescue: return .rescued
        case .resize: return .resized
        case .softDelete: return .softDeleted
        case .terminate: return .deleted
        case .snapshot, .rebuild, .confirmResize, .revertResize, .lock, .unlock: return nil
        }
    }

    /// The RPC method that requests this action.
    public var rpcMethod: String {
        switch self {
        case .build: return "build_and_run_instance"
        case .stop: return "stop_instance"
        case .start: return "start_instance"
        case .softReboot, .hardReboot: return "reboot_instance"
        case .pause: return "pause_instance"
        case .unpause: return "unpause_instance"
        case .suspend: return "suspend_instance"
        case .resume: return "resume_instance"
        case .rescue: return "rescue_instance"
        case .unrescue: return "unrescue_instance"
        case .snapshot: return "snapshot_instance"
        case .rebuild: return "rebuild_instance"
        case .resize: return "resize_instance"
        case .confirmResize: return "confirm_resize"
        case .revertResize: return "revert_resize"
        case .softDelete: return "soft_delete_instance"
        case .restore: return "restore_instance"
        case .terminate: return "terminate_instance"
        case .lock: return "lock_instance"
        case .unlock: return "unlock_instance"
        }
    }

    /// The legacy notification name: `compute.instance.<event>.start|end|error`.
    public var notificationEvent: String {
        switch self {
        case .build: return "create"
        case .stop: return "power_off"
        case .start: return "power_on"
        case .softReboot, .hardReboot: return "reboot"
        case .confirmResize: return "resize.confirm"
        case .revertResize: return "resize.revert"
        case .softDelete: return "soft_delete"
        case .terminate: return "delete"
        case .snapshot: return "snapshot"
        default: return rawValue
        }
    }

    /// The actions an RPC method may request (reboot_instance maps to two).
    public static let byMethod: [String: InstanceAction] = {
        var m: [String: InstanceAction] = [:]
        for a in allCases where a != .hardReboot { m[a.rpcMethod] = a }
        return m
    }()

    /// nil when the action may run now; otherwise the refusal.
    public func refusal(uuid: String, vmState: VMState, taskState: TaskState?) -> ComputeError? {
        if !allows(taskState: taskState), let t = taskState {
            return .invalidState(uuid: uuid, method: rpcMethod, attribute: "task_state", state: t.rawValue)
        }
        if !allowedFrom.contains(vmState) {
            return .invalidState(uuid: uuid, method: rpcMethod, attribute: "vm_state", state: vmState.rawValue)
        }
        return nil
    }
}
