import AgentSupport
import Logging
import PluginABI

#if canImport(Glibc)
import Glibc
#endif

/// What the agent gives one plugin: its logger, its config section, an event sink. Its
/// address is the `host_context` of the plugin's `ca_host_api`.
final class PluginHostContext: @unchecked Sendable {
    // Safe to share: every stored property is immutable after init; the C strings in
    // `options` are written once here and only read afterwards (they live as long as the
    // process, as the ABI promises the plugin).
    let pluginName: String
    let logger: Logger
    let options: [String: UnsafeMutablePointer<CChar>]
    let onEvent: @Sendable (_ plugin: String, _ event: JSONValue) -> Void
    let table: UnsafeMutablePointer<ca_host_api>

    init(pluginName: String, logger: Logger, options: [String: String],
         onEvent: @escaping @Sendable (String, JSONValue) -> Void)
    {
        self.pluginName = pluginName
        var l = logger
        l[metadataKey: "plugin"] = "\(pluginName)"
        self.logger = l
        self.options = options.mapValues { strdup($0)! }
        self.onEvent = onEvent
        table = .allocate(capacity: 1)
        table.initialize(to: ca_host_api(
            struct_size: UInt32(MemoryLayout<ca_host_api>.size),
            host_context: nil,
            log: { ctx, level, message in
                guard let ctx, let message else { return }
                let me = Unmanaged<PluginHostContext>.fromOpaque(ctx).takeUnretainedValue()
                let text = String(cString: message)
                switch level {
                case CA_LOG_DEBUG: me.logger.debug("\(text)")
                case CA_LOG_WARNING: me.logger.warning("\(text)")
                case CA_LOG_ERROR: me.logger.error("\(text)")
                default: me.logger.info("\(text)")
                }
            },
            config_get: { ctx, option in
                guard let ctx, let option else { return nil }
                let me = Unmanaged<PluginHostContext>.fromOpaque(ctx).takeUnretainedValue()
                return UnsafePointer(me.options[String(cString: option)])
            },
            emit_event: { ctx, json in
                guard let ctx, let json else { return }
                let me = Unmanaged<PluginHostContext>.fromOpaque(ctx).takeUnretainedValue()
                let text = String(cString: json)
                guard let event = try? JSONValue.parse(text) else {
                    me.logger.warning("plugin emitted an event that is not JSON; ignored")
                    return
                }
                me.onEvent(me.pluginName, event)
            }))
        // The context lives as long as the process: plugins may keep the pointer.
        table.pointee.host_context = Unmanaged.passRetained(self).toOpaque()
    }
}
