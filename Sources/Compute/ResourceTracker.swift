import AgentSupport

/// The host's capacity and what the agent's instances use of it, with nova's allocation
/// ratios and reservations. A build or resize is claimed against it before anything is
/// created; the claim is the instance record itself (a record in `building` holds its
/// flavor), so a failed build releases it by clearing `holdsResources`.
public struct ResourceTracker: Sendable {
    public struct Settings: Sendable {
        public var cpuAllocationRatio = 16.0
        public var ramAllocationRatio = 1.5
        public var diskAllocationRatio = 1.0
        public var reservedHostMemoryMB = 512
        public var reservedHostDiskMB = 0
        public init() {}
    }

    /// Physical figures of the host, from the hypervisor plugin and the instances file system.
    public struct Totals: Sendable, Equatable {
        public var vcpus: Int
        public var memoryMB: Int
        public var diskGB: Int
        public var diskFreeGB: Int
        public init(vcpus: Int, memoryMB: Int, diskGB: Int, diskFreeGB: Int) {
            self.vcpus = vcpus
            self.memoryMB = memoryMB
            self.diskGB = diskGB
            self.diskFreeGB = diskFreeGB
        }
    }

    public struct Usage: Sendable, Equatable {
        public var vcpus = 0
        public var memoryMB = 0
        public var diskGB = 0
        public var instances = 0
    }

    public var settings: Settings
    public var totals: Totals?

    public init(settings: Settings) { self.settings = settings }

    /// Usable capacity: physical × ratio, less the reservations.
    public func limits(_ t: Totals) -> (vcpus: Double, memoryMB: Double, diskGB: Double) {
        (Double(t.vcpus) * settings.cpuAllocationRatio,
         Double(t.memoryMB - settings.reservedHostMemoryMB) * settings.ramAllocationRatio,
         (Double(t.diskGB) - Double(settings.reservedHostDiskMB) / 1024) * settings.diskAllocationRatio)
    }

    /// What the records hold: every instance that is not deleted and still holds its
    /// claim, with both flavors of an unconfirmed resize.
    public static func usage<S: Sequence>(of records: S) -> Usage where S.Element == InstanceRecord {
        var u = Usage()
        for r in records where r.vmState != .deleted && r.holdsResources {
            u.instances += 1
            for f in [r.flavor] + (r.oldFlavor.map { [$0] } ?? []) {
                u.vcpus += f.vcpus
                u.memoryMB += f.memoryMB
                u.diskGB += f.rootGB
            }
        }
        return u
    }

    /// Refuses `request` when it does not fit next to `used`, naming the resource in
    /// nova's words.
    public func check(_ request: Flavor, used: Usage) throws(ComputeError) {
        guard let t = totals else { return }
        let l = limits(t)
        func test(_ type: String, _ unit: String, limit: Double, used: Int, requested: Int) throws(ComputeError) {
            let free = limit - Double(used)
            if Double(requested) > free {
                throw .insufficient("Free \(type) \(Self.twoDecimals(free)) \(unit) < requested \(requested) \(unit)")
            }
        }
        try test("memory", "MB", limit: l.memoryMB, used: used.memoryMB, requested: request.memoryMB)
        try test("disk", "GB", limit: l.diskGB, used: used.diskGB, requested: request.rootGB)
        try test("vcpu", "VCPU", limit: l.vcpus, used: used.vcpus, requested: request.vcpus)
    }

    static func twoDecimals(_ v: Double) -> String {
        let cents = Int((v * 100).rounded())
        let sign = cents < 0 ? "-" : ""
        let a = abs(cents)
        let frac = a % 100
        return "\(sign)\(a / 100).\(frac < 10 ? "0" : "")\(frac)"
    }
}

/// One run of the resource audit (`update_available_resource`): the host's figures,
/// what the records hold and what the hypervisor reports for the managed domains.
public struct ResourceAudit: Sendable {
    public var totals: ResourceTracker.Totals
    public var usage: ResourceTracker.Usage
    public var limits: (vcpus: Double, memoryMB: Double, diskGB: Double)
    /// Sum of vcpus / memory of the domains the hypervisor runs for our instances.
    public var hypervisorVCPUs: Int
    public var hypervisorMemoryMB: Int
    public var unmanagedDomains: [String]
    public var durationMS: Double
}
