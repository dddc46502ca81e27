import PluginSDK

/// What `qemu-img info --output=json` says of a file.
struct QemuImageInfo {
    var format: String
    var virtualSize: Int
    var backingFile: String?
    var dataFile: String?

    static func of(_ path: String) throws(PluginFailure) -> QemuImageInfo {
        // -U (force-share): a base a running domain holds must still be readable.
        let r = try Subprocess.run(["qemu-img", "info", "-U", "--output=json", path])
        guard r.status == 0 else {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "qemu-img info \(path) failed: \(r.errorOutput.trimmingLines())")
        }
        guard let j = try? JSONValue.parse(r.output), let format = j["format"]?.stringValue,
              let size = j["virtual-size"]?.intValue else {
            throw PluginFailure(CA_ERR_FAILED, "qemu-img info \(path): unexpected output")
        }
        return QemuImageInfo(format: format, virtualSize: size, backingFile: j["backing-filename"]?.stringValue,
                             dataFile: j["format-specific"]?["data"]?["data-file"]?.stringValue)
    }

    static func run(_ argv: [String], what: String) throws(PluginFailure) {
        let r = try Subprocess.run(argv)
        guard r.status == 0 else { throw PluginFailure(CA_ERR_FAILED, "\(what) failed: \(r.errorOutput.trimmingLines())") }
    }
}

