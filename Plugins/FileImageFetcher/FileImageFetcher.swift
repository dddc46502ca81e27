import PluginSDK

#if canImport(Glibc)
import Glibc
#endif

/// The image-fetch plugin "file": copies `file:///path` (or a plain absolute path) images
/// to the instance's disk path. The copy is written to `<dest>.part`, hashed while it
/// streams, checked against the requested checksum and size limit, then renamed into
/// place, so a failed fetch never leaves a half-written disk behind.
final class FileImageFetcher: @unchecked Sendable {
    // Safe to share: immutable after init; each fetch uses only its own locals.
    let host: PluginHostAPI
    /// Where upload stores snapshots (`[file] upload_dir`).
    let uploadDir: String
    init(host: PluginHostAPI) throws(PluginFailure) {
        self.host = host
        uploadDir = host.option("upload_dir") ?? "/var/lib/compute-agent/images"
        guard uploadDir.hasPrefix("/") else {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "[file] upload_dir = '\(uploadDir)' must be an absolute path")
        }
    }

    /// Stores a snapshot as `<upload_dir>/<image_id>` (checksummed, fsynced, atomic) and
    /// returns a file:// reference that fetch accepts.
    func upload(_ req: JSONValue) throws(PluginFailure) -> JSONValue {
        guard let src = req["source_path"]?.stringValue, src.hasPrefix("/") else {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "source_path must be an absolute path")
        }
        guard let id = req["image_id"]?.stringValue, !id.isEmpty,
              id.utf8.allSatisfy({ $0 != UInt8(ascii: "/") && $0 != 0 }), id != ".", id != ".." else {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "image_id must be a plain name")
        }
        let dest = "\(uploadDir)/\(id)"
        if access(dest, F_OK) == 0 { throw PluginFailure(CA_ERR_INVALID_STATE, "image \(id) already exists in \(uploadDir)") }
        let r = try fetch(.object(["image_ref": .string(src), "dest_path": .string(dest)]))
        return .object(["image_ref": .string("file://" + dest), "size": r["size"] ?? .null, "checksum": r["checksum"] ?? .null])
    }

    static func sourcePath(_ ref: String) -> String? {
        if ref.hasPrefix("file://") {
            let p = String(ref.dropFirst(7))
            return p.hasPrefix("/") ? p : nil
        }
        return ref.hasPrefix("/") ? ref : nil
    }

    func fetch(_ req: JSONValue) throws(PluginFailure) -> JSONValue {
        guard let ref = req["image_ref"]?.stringValue, let src = Self.sourcePath(ref) else {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "image_ref must be a file:// URL or an absolute path")
        }
        guard let dest = req["dest_path"]?.stringValue, dest.hasPrefix("/") else {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "dest_path must be an absolute path")
        }
        let maxBytes = req["max_bytes"]?.intValue ?? 0
        var wanted = req["checksum"]?.stringValue
        if let w = wanted {
            guard w.hasPrefix("sha256:") else {
                throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "checksum '\(w)' is not of the form sha256:<hex>")
            }
            wanted = String(w.dropFirst(7)).lowercased()
        }

        try PluginFiles.makeDirectories(String(dest[..<(dest.lastIndex(of: "/") ?? dest.startIndex)]))
        // libcrypto's sha256 (through PluginSDK.Digest), not a hand-written one.
        let hasher = Digest("sha256")!
        var digest = ""
        let total = try PluginFiles.atomicCopy(from: src, to: dest, inspect: { chunk, total throws(PluginFailure) in
            if maxBytes > 0 && total > maxBytes {
                throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "image \(src) is larger than the limit of \(maxBytes) bytes")
            }
            hasher.update(chunk)
        }, verify: { () throws(PluginFailure) in
            digest = hasher.hex()
            if let wanted, wanted != digest {
                throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "checksum mismatch for \(src): expected sha256:\(wanted), got sha256:\(digest)")
            }
        })
        host.log(CA_LOG_INFO, "fetched \(src) to \(dest) (\(total) bytes, sha256:\(digest))")
        return .object(["size": .int(Int64(total)), "checksum": .string("sha256:" + digest)])
    }
}

nonisolated(unsafe) private let vtable: UnsafeMutablePointer<ca_image_fetch_vtable> = {
    // Written once here, read-only afterwards.
    let v = UnsafeMutablePointer<ca_image_fetch_vtable>.allocate(capacity: 1)
    v.initialize(to: ca_image_fetch_vtable(
        struct_size: UInt32(MemoryLayout<ca_image_fetch_vtable>.size),
        init: { host, state, err in
            PluginSDK.run(err) { () throws(PluginFailure) in
                guard let host else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "no host table") }
                state!.pointee = Unmanaged.passRetained(try FileImageFetcher(host: PluginHostAPI(host))).toOpaque()
            }
        },
        shutdown: { state in if let state { Unmanaged<FileImageFetcher>.fromOpaque(state).release() } },
        supports_ref: { _, ref in
            guard let ref else { return 0 }
            return FileImageFetcher.sourcePath(String(cString: ref)) != nil ? 1 : 0
        },
        fetch: { state, json, out, err in
            PluginSDK.runJSON(out, err) { () throws(PluginFailure) in
                let f = Unmanaged<FileImageFetcher>.fromOpaque(state!).takeUnretainedValue()
                return try f.fetch(PluginSDK.parse(json, what: "request"))
            }
        },
        upload: { state, json, out, err in
            PluginSDK.runJSON(out, err) { () throws(PluginFailure) in
                let f = Unmanaged<FileImageFetcher>.fromOpaque(state!).takeUnretainedValue()
                return try f.upload(PluginSDK.parse(json, what: "request"))
            }
        },
        cleanup_cache: nil))  // copies straight to the disk: no cache to clean
    return v
}()

nonisolated(unsafe) private let descriptor = PluginSDK.makeDescriptor(
    kind: CA_PLUGIN_KIND_IMAGE_FETCH, name: "file", version: "1.1.0",
    description: "copies file:// images (checksum-verified) to the instance disk", vtable: UnsafeRawPointer(vtable))

@_cdecl("compute_agent_plugin_entry")
public func computeAgentPluginEntry() -> UnsafePointer<ca_plugin_descriptor> { descriptor }
