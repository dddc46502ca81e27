// swift-tools-version:6.0
import PackageDescription

// ComputeAgent: the per-host compute agent. One module per concern:
//   Messaging      – AMQP transport (librabbitmq) and the oslo.messaging wire format
//   PluginABI      – the C header plugin authors build against (no Swift types cross it)
//   PluginHost     – dlopen loader, descriptor validation, blocking executor for plugin calls
//   PluginSDK      – helpers for writing a plugin in Swift
//   Compute        – the compute manager: lifecycle rules, state table, periodic tasks
//   InstanceStore  – the crash-safe records of instances and operations (SQLite, WAL)
//   JSON           – the JSON value type, parser and writer (wire format and plugin calls)
//   AgentSupport   – configuration file parsing, logging, threads shared by the executables
//   HTTPShim       – a small blocking HTTP client over libcurl (dlopen'ed) for placement and the image plugins
//   NetlinkShim    – rtnetlink link/address operations over libmnl for the network plugins
//   AgentMetrics   – Prometheus metrics (swift-prometheus), /metrics and /healthz responder
//   NativeControlPlane – the agent's own dialect behind Compute's ControlPlane seam
//   NovaControlPlane   – nova 34's dialect (conductor objects, placement, compute RPC 6.x)
let package = Package(
    name: "ComputeAgent",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "compute-agent", targets: ["ComputeAgentDaemon"]),
        .executable(name: "computectl", targets: ["ComputeCtl"]),
        // Plugins: each is a shared object that the agent dlopens from plugin_dir.
        .library(name: "compute_hypervisor_libvirt", type: .dynamic, targets: ["LibvirtHypervisor"]),
        .library(name: "compute_image_file", type: .dynamic, targets: ["FileImageFetcher"]),
        .library(name: "compute_image_glance", type: .dynamic, targets: ["GlanceImageFetcher"]),
        .library(name: "compute_network_noop", type: .dynamic, targets: ["NoopNetwork"]),
        .library(name: "compute_network_linuxbridge", type: .dynamic, targets: ["LinuxBridgeNetwork"]),
        .library(name: "compute_network_ovs", type: .dynamic, targets: ["OVSNetwork"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // System libraries and C glue
        .systemLibrary(name: "CRabbitMQ", pkgConfig: "librabbitmq",
                       providers: [.apt(["librabbitmq-dev"])]),
        .target(name: "RabbitMQShim", dependencies: ["CRabbitMQ"]),
        .systemLibrary(name: "CLibvirt", pkgConfig: "libvirt",
                       providers: [.apt(["libvirt-dev"])]),
        .target(name: "PluginABI"),
        // systemd's notify and native journal protocols, spoken directly (libsystemd would map
        // libgcrypt, liblz4, libzstd, liblzma and libcap for three calls).
        .target(name: "SystemdProtocol"),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3",
                       providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto",
                       providers: [.apt(["libssl-dev"])]),
        // libcurl's headers (libcurl4-openssl-dev) at build time; the library itself is
        // loaded with dlopen at the first request (docs/performance.md, idle memory).
        .target(name: "HTTPShim"),
        .systemLibrary(name: "CMnl", pkgConfig: "libmnl", providers: [.apt(["libmnl-dev"])]),
        .target(name: "NetlinkShim", dependencies: ["CMnl"]),

        // Agent modules
        .target(name: "JSON"),
        .target(name: "AgentSupport", dependencies: [
            "JSON", "SystemdProtocol",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "AgentMetrics", dependencies: [
            "AgentSupport",
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
        ]),
        .target(name: "Messaging", dependencies: [
            "CRabbitMQ", "RabbitMQShim", "AgentSupport", "AgentMetrics",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "PluginHost", dependencies: [
            "PluginABI", "AgentSupport", "AgentMetrics",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "InstanceStore", dependencies: ["CSQLite", "AgentSupport"]),
        .target(name: "Compute", dependencies: [
            "Messaging", "PluginHost", "AgentSupport", "InstanceStore", "AgentMetrics",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        // The control-plane dialects behind Compute's `ControlPlane` seam
        .target(name: "NativeControlPlane", dependencies: ["Compute", "Messaging", "JSON"]),
        .target(name: "NovaControlPlane", dependencies: [
            "Compute", "Messaging", "JSON", "AgentSupport", "HTTPShim", "PluginHost",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "ComputeAgentDaemon", dependencies: [
            "Compute", "Messaging", "PluginHost", "AgentSupport", "AgentMetrics", "NativeControlPlane", "NovaControlPlane",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .executableTarget(name: "ComputeCtl", dependencies: [
            "Messaging", "AgentSupport",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        // Plugin SDK and the shipped plugins
        .target(name: "PluginSDK", dependencies: ["PluginABI", "JSON", "CCrypto"]),
        .target(name: "LibvirtHypervisor", dependencies: ["PluginSDK", "PluginABI", "CLibvirt"],
                path: "Plugins/LibvirtHypervisor"),
        .target(name: "FileImageFetcher", dependencies: ["PluginSDK", "PluginABI"],
                path: "Plugins/FileImageFetcher"),
        .target(name: "GlanceImageFetcher", dependencies: ["PluginSDK", "PluginABI", "HTTPShim"],
                path: "Plugins/GlanceImageFetcher"),
        .target(name: "NoopNetwork", dependencies: ["PluginABI"], path: "Plugins/NoopNetwork"),
        .target(name: "LinuxBridgeNetwork", dependencies: ["PluginSDK", "PluginABI", "NetlinkShim"],
                path: "Plugins/LinuxBridgeNetwork"),
        .target(name: "OVSNetwork", dependencies: ["PluginSDK", "PluginABI", "NetlinkShim"], path: "Plugins/OVSNetwork"),

        // Unit tests (the integration tests against real parts live in Tests/integration)
        .testTarget(name: "MessagingTests", dependencies: ["Messaging", "AgentSupport"]),
        .testTarget(name: "ComputeTests", dependencies: ["Compute", "PluginHost", "InstanceStore"]),
        .testTarget(name: "AgentSupportTests", dependencies: ["AgentSupport"]),
        .testTarget(name: "AgentMetricsTests", dependencies: ["AgentMetrics"]),
    ],
    swiftLanguageModes: [.v6]
)
