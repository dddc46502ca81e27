import Dispatch
import HTTPShim
import PluginSDK
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The image-fetch plugin "glance": images from a Glance v2 image service (and plain
/// http(s):// URLs), verified while they stream, kept in nova's `_base` cache, and given to
/// each instance as a qcow2 overlay on the cached base.
///
/// Options (`[glance]`, nova's names where nova has the option): `api_servers` (comma
/// list, tried in turn), `num_retries`, `cafile`, `insecure`, `timeout` (connect, and how
/// long a transfer may stall), `force_raw_images`, `use_cow_images`, `cache_dir`.
final class GlanceImageFetcher: @unchecked Sendable {
    // Safe to share: the options are immutable after init; `inFlight` is a Mutex; each
    // fetch uses only its own locals and the file locks.
    let host: PluginHostAPI
    let servers: [String]
    let retries: Int
    let http: HTTP
    let forceRaw: Bool
    let useCOW: Bool
    let cacheDir: String?
    /// One download per base file at a time in this process (the flock covers others).
    private let inFlight = Mutex<[String: DispatchSemaphore]>([:])
    /// Downloads made (for tests and the agent's metrics).
    let downloads = Atomic<Int>(0)

    init(host: PluginHostAPI) throws(PluginFailure) {
        self.host = host
        func flag(_ name: String, _ d: Bool) throws(PluginFailure) -> Bool {
            switch host.option(name)?.lowercased() {
            case nil: return d
            case "true", "1", "yes", "on": return true
            case "false", "0", "no", "off": return false
            case let v?: throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "[glance] \(name) = '\(v)' is not true or false")
            }
        }
        func number(_ name: String, _ d: Double) throws(PluginFailure) -> Double {
            guard let v = host.option(name) else { return d }
            guard let n = Double(v), n >= 0, n.isFinite else {
                throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "[glance] \(name) = '\(v)' is not a non-negative number")
            }
            return n
        }
        let list = (host.option("api_servers") ?? "http://127.0.0.1:9292")
            .split(separator: ",").map { String(String($0).trimmingCharacters()) }.filter { !$0.isEmpty }
        for s in list where !(s.hasPrefix("http://") || s.hasPrefix("https://")) {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "[glance] api_servers: '\(s)' is not an http(s):// URL")
        }
        guard !list.isEmpty else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "[glance] api_servers is empty") }
        servers = list.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
        retries = Int(try number("num_retries", 3))
        let timeout = try number("timeout", 30)
        let cafile = host.option("cafile").flatMap { $0.isEmpty ? nil : $0 }
        if let cafile, access(cafile, R_OK) != 0 {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "[glance] cafile \(cafile): \(String(cString: strerror(errno)))")
        }
        http = HTTP(connectTimeout: timeout, stallTimeout: timeout, cafile: cafile, insecure: try flag("insecure", false))
        forceRaw = try flag("force_raw_images", true)
        useCOW = try flag("use_cow_images", true)
        cacheDir = host.option("cache_dir")
        if let c = cacheDir, !c.hasPrefix("/") {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "[glance] cache_dir = '\(c)' must be an absolute path")
        }
    }

    static func isURL(_ ref: String) -> Bool { ref.hasPrefix("http://") || ref.hasPrefix("https://") }

    /// Glance ids are UUIDs; anything of their alphabet is tried, nothing that could
    /// change the request's path.
    static func isImageID(_ ref: String) -> Bool {
        !ref.isEmpty && ref.utf8.count <= 64 && ref.utf8.allSatisfy {
            ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x41 && $0 <= 0x5A) || $0 == 0x2D
        }
    }

    // MARK: - fetch

    func fetch(_ req: JSONValue) throws(PluginFailure) -> JSONValue {
        guard let ref = req["image_ref"]?.stringValue, Self.isURL(ref) || Self.isImageID(ref) else {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "image_ref must be a Glance image id or an http(s):// URL")
        }
        guard let dest = req["dest_path"]?.stringValue, dest.hasPrefix("/") else {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "dest_path must be an absolute path")
        }
        let token = req["auth_token"]?.stringValue
        let rootGB = req["root_gb"]?.intValue ?? 0
        let base = baseDirectory(for: dest) + "/" + Digest.hex("sha1", of: ref)
        try PluginFiles.makeDirectories(baseDirectory(for: dest))

        let started = monotonic()
        let progress = Progress(host: host, uuid: req["instance_uuid"]?.stringValue)
        let (record, downloaded, bytes) = try cached(base: base) { () throws(PluginFailure) -> (JSONValue?, Int) in
            try self.download(ref, to: base, token: token, expectedChecksum: req["checksum"]?.stringValue, progress: progress)
        }
        let seconds = monotonic() - started
        let info = try QemuImageInfo.of(base)
        if rootGB > 0 && info.virtualSize > rootGB << 30 {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT,
                                "FlavorDiskSmallerThanImage: the flavor's root disk (\(rootGB) GB) is smaller than the image (\(info.virtualSize) bytes virtual)")
        }
        let size = rootGB > 0 ? rootGB << 30 : info.virtualSize
        try? removeFile(dest)
        if useCOW {
            try QemuImageInfo.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "backing_file=\(base),backing_fmt=\(info.format)",
                                   dest, "\(size)"], what: "qemu-img create (overlay)")
        } else {
            try QemuImageInfo.run(["qemu-img", "convert", "-q", "-O", "qcow2", base, dest], what: "qemu-img convert (copy)")
            if rootGB > 0 { try QemuImageInfo.run(["qemu-img", "resize", "-q", dest, "\(size)"], what: "qemu-img resize") }
        }
        var out: [String: JSONValue] = [
            "base_path": .string(base), "downloaded": .bool(downloaded), "disk_format": "qcow2",
            "virtual_size": .int(Int64(info.virtualSize)), "seconds": .double((seconds * 1000).rounded() / 1000),
        ]
        if downloaded {
            out["bytes"] = .int(Int64(bytes))
            out["rate_mb_s"] = .double(seconds > 0 ? ((Double(bytes) / 1_048_576 / seconds) * 10).rounded() / 10 : 0)
        }
        // A three-part image: kernel and ramdisk are cached like any base and handed back
        // for a direct kernel boot. A cached root's record is read again for them.
        let rootRecord: JSONValue? = record ?? (Self.isURL(ref) ? nil : (try? imageRecordFromAny(ref, token: token)))
        if let r = rootRecord {
            for (key, path) in [("kernel_id", "kernel_path"), ("ramdisk_id", "ramdisk_path")] {
                guard let part = r[key]?.stringValue, Self.isImageID(part) else { continue }
                let partBase = baseDirectory(for: dest) + "/" + Digest.hex("sha1", of: part)
                _ = try cached(base: partBase) { () throws(PluginFailure) -> (JSONValue?, Int) in
                    try self.download(part, to: partBase, token: token, expectedChecksum: nil)
                }
                out[path] = .string(partBase)
            }
            if let cmd = r["os_command_line"]?.stringValue { out["kernel_cmdline"] = .string(cmd) }
        }
        if let r = record {
            out["size"] = r["size"] ?? .null
            if let algo = r["os_hash_algo"]?.stringValue, let v = r["os_hash_value"]?.stringValue { out["checksum"] = .string("\(algo):\(v)") }
            for k in ["kernel_id", "ramdisk_id", "os_command_line", "disk_format"] where r[k] != nil { out["image_" + k] = r[k]! }
        }
        host.log(CA_LOG_INFO, downloaded
                 ? "fetched \(ref) into \(base) (\(bytes) bytes in \(String(format3: seconds)) s) and made \(dest)"
                 : "image \(ref) already cached in \(base); made \(dest)")
        return .object(out)
    }

    /// The `_base` directory: `[glance] cache_dir`, else `_base` beside the instance
    /// directories (`<state_path>/instances/_base`, as nova's libvirt driver keeps it).
    func baseDirectory(for dest: String) -> String {
        if let c = cacheDir { return c }
        let instanceDir = dest[..<(dest.lastIndex(of: "/") ?? dest.endIndex)]
        let instances = instanceDir[..<(instanceDir.lastIndex(of: "/") ?? instanceDir.endIndex)]
        return String(instances) + "/_base"
    }

    /// Makes sure `base` exists: downloads it once however many builds ask at the same
    /// time (a semaphore per file in this process, a `flock` on `<base>.lock` across
    /// processes); the others wait and share it. A present base gets its mtime touched
    /// (in use, for the cache cleanup). Returns the record, whether this call downloaded,
    /// and the bytes.
    private func cached(base: String, _ download: () throws(PluginFailure) -> (JSONValue?, Int)) throws(PluginFailure)
        -> (JSONValue?, Bool, Int)
    {
        let gate = inFlight.withLock { m -> DispatchSemaphore in
            if let s = m[base] { return s }
            let s = DispatchSemaphore(value: 1)
            m[base] = s
            return s
        }
        gate.wait()
        defer { gate.signal() }
        let lockFD = open(base + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lockFD >= 0 else { throw PluginFailure(CA_ERR_FAILED, "cannot open \(base).lock: \(String(cString: strerror(errno)))") }
        defer { close(lockFD) }
        while flock(lockFD, LOCK_EX) != 0 && errno == EINTR {}
        if access(base, F_OK) == 0 {
            _ = utimensat(AT_FDCWD, base, nil, 0)
            return (nil, false, 0)
        }
        let (record, bytes) = try download()
        downloads.add(1, ordering: .relaxed)
        return (record, true, bytes)
    }

    // MARK: - Snapshot upload

    /// Stores a snapshot in Glance as nova does: the image record (disk_format qcow2,
    /// `image_type = snapshot`, the instance's uuid and base image), then the data — the
    /// instance's overlay flattened into a standalone qcow2 — streamed from the file. A
    /// failed upload deletes the record it created, so no half image stays behind.
    func upload(_ req: JSONValue) throws(PluginFailure) -> JSONValue {
        guard let source = req["source_path"]?.stringValue, source.hasPrefix("/") else {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "source_path must be an absolute path")
        }
        let name = req["image_name"]?.stringValue ?? "snapshot"
        let standalone = source + ".standalone"
        defer { unlink(standalone) }
        try QemuImageInfo.run(["qemu-img", "convert", "-q", "-O", "qcow2", source, standalone], what: "qemu-img convert (flatten)")
        var record: [String: JSONValue] = ["name": .string(name), "disk_format": "qcow2", "container_format": "bare",
                                           "image_type": "snapshot"]
        if let id = req["image_id"]?.stringValue, Self.isImageID(id), id.count == 36 { record["id"] = .string(id) }
        if let u = req["instance_uuid"]?.stringValue { record["instance_uuid"] = .string(u) }
        if let b = req["base_image_ref"]?.stringValue { record["base_image_ref"] = .string(b) }
        var headers = ["Accept: application/json"]
        if let token = req["auth_token"]?.stringValue, !token.isEmpty { headers.append("X-Auth-Token: \(token)") }
        var lastError = PluginFailure(CA_ERR_UNAVAILABLE, "no image service configured")
        for server in servers {
            let created: HTTP.Response
            do { created = try http.request("POST", "\(server)/v2/images", headers: headers, body: JSONValue.object(record).serialized()) } catch {
                lastError = PluginFailure(CA_ERR_UNAVAILABLE, "the image service at \(server) is unreachable: \(error.message)")
                continue
            }
            var id: String
            if created.status == 409, let given = record["id"]?.stringValue {
                // The control plane made the record already (nova-api creates the
                // snapshot's image before it casts snapshot_instance): fill it in.
                id = given
                try prepareQueued(id, server: server, headers: headers)
            } else {
                guard created.status == 201, let image = try? JSONValue.parse(created.body), let made = image["id"]?.stringValue else {
                    throw PluginFailure(CA_ERR_FAILED, "the image service refused the snapshot's record (\(created.status)): \(created.body.prefix(200))")
                }
                id = made
            }
            do {
                let put = try http.putFile("\(server)/v2/images/\(id)/file", path: standalone, headers: headers)
                guard put.status == 204 || put.status == 200 else {
                    throw PluginFailure(CA_ERR_FAILED, "uploading the snapshot's data answered \(put.status)")
                }
            } catch let f as PluginFailure {
                discard(id, server: server, headers: headers)
                throw f
            } catch {
                discard(id, server: server, headers: headers)
                throw PluginFailure(CA_ERR_UNAVAILABLE, "uploading the snapshot's data failed: \((error as? HTTP.Failure)?.message ?? "\(error)")")
            }
            let stored = try imageRecord(id, server: server, headers: headers)
            host.log(CA_LOG_INFO, "snapshot \(name) uploaded to \(server) as image \(id)")
            var out: [String: JSONValue] = ["image_ref": .string(id), "size": stored["size"] ?? .null]
            if let algo = stored["os_hash_algo"]?.stringValue, let v = stored["os_hash_value"]?.stringValue { out["checksum"] = .string("\(algo):\(v)") }
            return .object(out)
        }
        throw lastError
    }

    /// An existing record that is still `queued` gets the formats the data will have (a
    /// JSON patch, as nova's libvirt driver sets them before uploading).
    private func prepareQueued(_ id: String, server: String, headers: [String]) throws(PluginFailure) {
        let existing = try imageRecord(id, server: server, headers: headers, anyStatus: true)
        guard existing["status"]?.stringValue == "queued" else {
            throw PluginFailure(CA_ERR_INVALID_STATE, "image \(id) exists and is \(existing["status"]?.stringValue ?? "?"), not queued: it cannot take the snapshot")
        }
        var ops: [JSONValue] = []
        for (field, value) in [("disk_format", "qcow2"), ("container_format", "bare")] where existing[field]?.stringValue != value {
            ops.append(.object(["op": "replace", "path": .string("/\(field)"), "value": .string(value)]))
        }
        guard !ops.isEmpty else { return }
        let r: HTTP.Response
        do {
            r = try http.request("PATCH", "\(server)/v2/images/\(id)", headers: headers, body: JSONValue.array(ops).serialized(),
                                 contentType: "application/openstack-images-v2.1-json-patch")
        } catch { throw PluginFailure(CA_ERR_UNAVAILABLE, "updating image \(id) failed: \(error.message)") }
        guard r.status == 200 else { throw PluginFailure(CA_ERR_FAILED, "updating image \(id) answered \(r.status): \(r.body.prefix(200))") }
    }

    /// Deletes a record whose data could not be uploaded (best effort; logged).
    private func discard(_ id: String, server: String, headers: [String]) {
        if let r = try? http.request("DELETE", "\(server)/v2/images/\(id)", headers: headers), r.status == 204 {
            host.log(CA_LOG_WARNING, "snapshot upload failed: deleted its image record \(id)")
        } else {
            host.log(CA_LOG_ERROR, "snapshot upload failed and its image record \(id) could not be deleted")
        }
    }

    // MARK: - Cache cleanup

    /// nova's image cache manager pass over `_base`: 40-hex names are originals,
    /// `<sha1>_<n>` resized copies; in use = the sha1 of an image the host's instances use,
    /// or the real backing file of an instance disk (read from its qcow2 header: no
    /// process per disk, so it stays cheap at thousands of instances). An unused file is
    /// removed once older than its minimum age, under its lock (a fetch holding the lock
    /// keeps it), and its lock file with it.
    func cleanup(_ req: JSONValue) throws(PluginFailure) -> JSONValue {
        guard let instances = req["instances_path"]?.stringValue, instances.hasPrefix("/") else {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "instances_path must be an absolute path")
        }
        let dir = cacheDir ?? instances + "/_base"
        var inUse = Set((req["in_use"]?.arrayValue ?? []).compactMap(\.stringValue).map { Digest.hex("sha1", of: $0) })
        for disk in (req["instance_disks"]?.arrayValue ?? []).compactMap(\.stringValue) {
            if let backing = QCOW2.backingFile(of: disk), backing.hasPrefix(dir + "/") {
                inUse.insert(String(backing.dropFirst(dir.count + 1)))
            }
        }
        let removeUnused = req["remove_unused"]?.boolValue ?? true
        let originalAge = Double(req["original_min_age"]?.intValue ?? 86_400)
        let resizedAge = Double(req["resized_min_age"]?.intValue ?? 3600)
        guard let d = opendir(dir) else { return .object(["removed": [], "kept": 0, "in_use": 0, "bytes": 0]) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            names.append(name)
        }
        closedir(d)
        var removed: [JSONValue] = [], kept = 0, used = 0, bytes = 0
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        for name in names {
            let sha = String(name.prefix(40))
            guard sha.count == 40, sha.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) else { continue }
            let rest = name.dropFirst(40)
            let resized = rest.hasPrefix("_") && rest.dropFirst().allSatisfy(\.isNumber) && rest.count > 1
            guard rest.isEmpty || resized else { continue }  // .lock, .part, .converted
            let path = dir + "/" + name
            var st = stat()
            guard stat(path, &st) == 0 else { continue }
            if inUse.contains(name) || inUse.contains(sha) {
                used += 1; kept += 1; bytes += Int(st.st_size)
                continue
            }
            let age = Double(now.tv_sec - st.st_mtim.tv_sec)
            guard removeUnused, age >= (resized ? resizedAge : originalAge) else {
                kept += 1; bytes += Int(st.st_size)
                continue
            }
            // Under the base's lock: a fetch that holds it is using the file right now.
            let lockPath = dir + "/" + sha + ".lock"
            let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            guard fd >= 0, flock(fd, LOCK_EX | LOCK_NB) == 0 else {
                if fd >= 0 { close(fd) }
                kept += 1; bytes += Int(st.st_size)
                continue
            }
            if unlink(path) == 0 {
                removed.append(.string(name))
                if !resized { unlink(lockPath) }
                host.log(CA_LOG_INFO, "image cache: removed unused base \(name) (\(Int(age)) s old)")
            }
            close(fd)
        }
        return .object(["removed": .array(removed), "kept": .int(Int64(kept)), "in_use": .int(Int64(used)),
                        "bytes": .int(Int64(bytes))])
    }

    // MARK: - Download and verify

    private func download(_ ref: String, to base: String, token: String?, expectedChecksum: String?,
                          progress: Progress? = nil) throws(PluginFailure) -> (JSONValue?, Int) {
        var headers = ["Accept: application/octet-stream"]
        if let token, !token.isEmpty { headers.append("X-Auth-Token: \(token)") }
        let part = base + ".part"
        defer { unlink(part); unlink(base + ".converted") }
        var record: JSONValue?
        var bytes = 0
        if Self.isURL(ref) {
            bytes = try attempt(what: ref) { () throws(PluginFailure) in
                try self.stream(url: ref, to: part, headers: headers, verifier: try Verifier(expected: expectedChecksum, record: nil),
                                progress: progress)
            }
        } else {
            bytes = try attempt(what: "image \(ref)") { () throws(PluginFailure) in
                var lastError: PluginFailure?
                for server in self.servers {
                    do throws(PluginFailure) {
                        let r = try self.imageRecord(ref, server: server, headers: headers)
                        record = r
                        progress?.total = r["size"]?.intValue ?? 0
                        return try self.stream(url: "\(server)/v2/images/\(ref)/file", to: part, headers: headers,
                                               verifier: try Verifier(expected: nil, record: r), progress: progress)
                    } catch where error.status == CA_ERR_UNAVAILABLE {
                        lastError = error  // this server is down: the next one
                    }
                }
                throw lastError!
            }
        }
        try checkAndPlace(part: part, base: base, diskFormat: record?["disk_format"]?.stringValue)
        return (record, bytes)
    }

    /// Runs `body` up to 1 + num_retries times while it fails for reasons a retry can
    /// help (the image service unreachable, a transfer cut short).
    private func attempt(what: String, _ body: () throws(PluginFailure) -> Int) throws(PluginFailure) -> Int {
        var tries = 0
        while true {
            do throws(PluginFailure) { return try body() } catch {
                tries += 1
                guard error.status == CA_ERR_UNAVAILABLE, tries <= retries else { throw error }
                host.log(CA_LOG_WARNING, "fetching \(what) failed (\(error.message)); retry \(tries) of \(retries)")
                usleep(UInt32(min(2.0, 0.2 * Double(tries)) * 1_000_000))
            }
        }
    }

    /// The record from the first server that answers.
    private func imageRecordFromAny(_ id: String, token: String?) throws(PluginFailure) -> JSONValue {
        var headers = ["Accept: application/octet-stream"]
        if let token, !token.isEmpty { headers.append("X-Auth-Token: \(token)") }
        var last = PluginFailure(CA_ERR_UNAVAILABLE, "no image service configured")
        for server in servers {
            do throws(PluginFailure) { return try imageRecord(id, server: server, headers: headers) } catch {
                last = error
                if error.status != CA_ERR_UNAVAILABLE { throw error }
            }
        }
        throw last
    }

    /// The image's record; unless `anyStatus`, only an active image's (one that can be used).
    private func imageRecord(_ id: String, server: String, headers: [String], anyStatus: Bool = false) throws(PluginFailure) -> JSONValue {
        let r: HTTP.Response
        do { r = try http.request("GET", "\(server)/v2/images/\(id)", headers: ["Accept: application/json"] + headers.dropFirst()) } catch {
            throw PluginFailure(CA_ERR_UNAVAILABLE, "the image service at \(server) is unreachable: \(error.message)")
        }
        switch r.status {
        case 200: break
        case 404: throw PluginFailure(CA_ERR_NOT_FOUND, "image \(id) not found in the image service (404)")
        case 401, 403: throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "the image service refused access to image \(id) (\(r.status))")
        case 500...: throw PluginFailure(CA_ERR_UNAVAILABLE, "the image service answered \(r.status) for image \(id)")
        default: throw PluginFailure(CA_ERR_FAILED, "the image service answered \(r.status) for image \(id)")
        }
        guard let record = try? JSONValue.parse(r.body), record["id"] != nil else {
            throw PluginFailure(CA_ERR_FAILED, "the image service sent an unreadable record for image \(id)")
        }
        let status = record["status"]?.stringValue ?? "unknown"
        guard status == "active" || anyStatus else {
            throw PluginFailure(CA_ERR_INVALID_STATE, "image \(id) is \(status), not active: it cannot be used yet")
        }
        return record
    }

    /// Streams `url` into `part` (created fresh), hashing as it goes, then checks length
    /// and digest and fsyncs. Nothing of the image is held in memory beyond one chunk.
    private func stream(url: String, to part: String, headers: [String], verifier: Verifier,
                        progress: Progress? = nil) throws(PluginFailure) -> Int {
        let fd = open(part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw PluginFailure(CA_ERR_FAILED, "cannot create \(part): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let response: HTTP.Response
        var written = 0, flushedTo = 0
        do {
            response = try http.stream(url, headers: headers) { (chunk: UnsafeRawBufferPointer) throws(PluginFailure) in
                verifier.update(chunk)
                progress?.add(chunk.count)
                written += chunk.count
                // Start writing back every 16 MiB as it arrives, so the fsync at the end
                // does not have the whole image to flush at once.
                if written - flushedTo >= 16 << 20 {
                    ca_start_writeback(fd, Int64(flushedTo), Int64(written - flushedTo))
                    flushedTo = written
                }
                var off = 0
                while off < chunk.count {
                    let n = write(fd, chunk.baseAddress! + off, chunk.count - off)
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw PluginFailure(CA_ERR_FAILED, "writing \(part): \(String(cString: strerror(errno)))")
                    }
                    off += n
                }
            }
        } catch let f as PluginFailure {
            throw f
        } catch let f as HTTP.Failure {
            if case .transport(let why) = f {
                throw PluginFailure(CA_ERR_UNAVAILABLE, "downloading \(url) failed: \(why)")
            }
            throw PluginFailure(CA_ERR_FAILED, "downloading \(url) was stopped")
        } catch {
            throw PluginFailure(CA_ERR_FAILED, "downloading \(url): \(error)")
        }
        switch response.status {
        case 200: break
        case 204: throw PluginFailure(CA_ERR_INVALID_STATE, "the image service has no data for \(url) (204): the image was never uploaded")
        case 404: throw PluginFailure(CA_ERR_NOT_FOUND, "\(url) not found (404)")
        case 500...: throw PluginFailure(CA_ERR_UNAVAILABLE, "\(url) answered \(response.status)")
        default: throw PluginFailure(CA_ERR_FAILED, "\(url) answered \(response.status)")
        }
        if let expected = response.contentLength, expected != response.bodyBytes {
            throw PluginFailure(CA_ERR_UNAVAILABLE, "short read from \(url): \(response.bodyBytes) of \(expected) bytes")
        }
        try verifier.verify(contentMD5: response.contentMD5, what: url)
        guard fsync(fd) == 0 else { throw PluginFailure(CA_ERR_FAILED, "fsync \(part): \(String(cString: strerror(errno)))") }
        return response.bodyBytes
    }

    /// nova's fetch_to_raw checks, then the rename into the cache: refuse a backing file or
    /// a data-file inside the image and a format other than the record's `disk_format`;
    /// with `force_raw_images` convert to raw.
    private func checkAndPlace(part: String, base: String, diskFormat: String?) throws(PluginFailure) {
        let info = try QemuImageInfo.of(part)
        if let b = info.backingFile {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "the image has a backing file (\(b)): refused")
        }
        if let d = info.dataFile {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "the image has a data-file (\(d)): refused")
        }
        if let want = diskFormat, ["raw", "qcow2"].contains(want), want != info.format {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "the image's data is \(info.format) but its record says disk_format \(want): refused")
        }
        var ready = part
        if forceRaw && info.format != "raw" {
            let converted = base + ".converted"
            try QemuImageInfo.run(["qemu-img", "convert", "-q", "-f", info.format, "-O", "raw", part, converted],
                                  what: "qemu-img convert to raw")
            let fd = open(converted, O_RDONLY | O_CLOEXEC)
            if fd >= 0 { fsync(fd); close(fd) }
            ready = converted
        }
        guard rename(ready, base) == 0 else { throw PluginFailure(CA_ERR_FAILED, "rename into \(base): \(String(cString: strerror(errno)))") }
        let dir = open(String(base[..<base.lastIndex(of: "/")!]), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 { fsync(dir); close(dir) }
    }

    private func removeFile(_ path: String) throws(PluginFailure) {
        if unlink(path) != 0 && errno != ENOENT { throw PluginFailure(CA_ERR_FAILED, "cannot remove \(path)") }
    }

    private func monotonic() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// Reports a download's progress to the agent as `progress` events (at most twice a
/// second, and at the end), which `get_instance_info` turns into nova's `progress`.
final class Progress {
    let host: PluginHostAPI
    let uuid: String?
    var total = 0
    private var bytes = 0
    private var lastSent = 0.0

    init(host: PluginHostAPI, uuid: String?) {
        self.host = host
        self.uuid = uuid
    }

    func add(_ n: Int) {
        bytes += n
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let now = Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        guard let uuid, now - lastSent >= 0.5 || (total > 0 && bytes >= total) else { return }
        lastSent = now
        host.emit(.object(["event": "progress", "uuid": .string(uuid), "bytes": .int(Int64(bytes)), "total": .int(Int64(total))]))
    }
}

/// Verifies a download as glanceclient does: `os_hash_value` with `os_hash_algo` when the
/// record has them, else md5 against `checksum`, else md5 against `Content-MD5`; for a
/// plain URL the requested `algo:hex` checksum, else `Content-MD5`.
final class Verifier {
    private let expected: (algorithm: String, hex: String, source: String)?
    private let digest: Digest

    init(expected requested: String?, record: JSONValue?) throws(PluginFailure) {
        if let r = record, let algo = r["os_hash_algo"]?.stringValue, let v = r["os_hash_value"]?.stringValue, !v.isEmpty {
            expected = (algo, v.lowercased(), "os_hash_value")
        } else if let c = record?["checksum"]?.stringValue, !c.isEmpty {
            expected = ("md5", c.lowercased(), "checksum")
        } else if let req = requested {
            let parts = req.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "checksum '\(req)' is not algo:hex") }
            expected = (String(parts[0]), parts[1].lowercased(), "the requested checksum")
        } else {
            expected = nil
        }
        let algo = expected?.algorithm ?? "md5"
        guard let d = Digest(algo) else { throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "unknown hash algorithm '\(algo)'") }
        digest = d
    }

    func update(_ chunk: UnsafeRawBufferPointer) {
        digest.update(chunk)
    }

    func verify(contentMD5: String?, what: String) throws(PluginFailure) {
        let got = digest.hex()
        if let e = expected {
            guard got == e.hex else {
                throw PluginFailure(CA_ERR_INVALID_ARGUMENT,
                                    "checksum mismatch for \(what): \(e.algorithm) \(got), but \(e.source) says \(e.hex); the download was discarded")
            }
        } else if let m = contentMD5?.lowercased(), !m.isEmpty {
            guard got == m else {
                throw PluginFailure(CA_ERR_INVALID_ARGUMENT,
                                    "checksum mismatch for \(what): md5 \(got), but Content-MD5 says \(m); the download was discarded")
            }
        }
    }
}

/// Reads a qcow2 image's backing file name from its header (magic `QFI\xfb`, then the
/// big-endian offset and length of the name at bytes 8 and 16).
enum QCOW2 {
    static func backingFile(of path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var h = [UInt8](repeating: 0, count: 20)
        guard h.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, 20, 0) }) == 20, h[0..<4] == [0x51, 0x46, 0x49, 0xFB] else { return nil }
        let offset = h[8..<16].reduce(0) { $0 << 8 | Int($1) }
        let length = h[16..<20].reduce(0) { $0 << 8 | Int($1) }
        guard offset > 0, length > 0, length < 4096 else { return nil }
        var name = [UInt8](repeating: 0, count: length)
        guard name.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, length, off_t(offset)) }) == length else { return nil }
        return String(decoding: name, as: UTF8.self)
    }
}

extension String {
    init(format3 value: Double) { self = "\((value * 1000).rounded() / 1000)" }

    func trimmingCharacters() -> Substring {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return s
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
                state!.pointee = Unmanaged.passRetained(try GlanceImageFetcher(host: PluginHostAPI(host))).toOpaque()
            }
        },
        shutdown: { state in if let state { Unmanaged<GlanceImageFetcher>.fromOpaque(state).release() } },
        supports_ref: { _, ref in
            guard let ref else { return 0 }
            let r = String(cString: ref)
            return GlanceImageFetcher.isURL(r) || GlanceImageFetcher.isImageID(r) ? 1 : 0
        },
        fetch: { state, json, out, err in
            PluginSDK.runJSON(out, err) { () throws(PluginFailure) in
                let f = Unmanaged<GlanceImageFetcher>.fromOpaque(state!).takeUnretainedValue()
                return try f.fetch(PluginSDK.parse(json, what: "request"))
            }
        },
        upload: { state, json, out, err in
            PluginSDK.runJSON(out, err) { () throws(PluginFailure) in
                let f = Unmanaged<GlanceImageFetcher>.fromOpaque(state!).takeUnretainedValue()
                return try f.upload(PluginSDK.parse(json, what: "request"))
            }
        },
        cleanup_cache: { state, json, out, err in
            PluginSDK.runJSON(out, err) { () throws(PluginFailure) in
                let f = Unmanaged<GlanceImageFetcher>.fromOpaque(state!).takeUnretainedValue()
                return try f.cleanup(PluginSDK.parse(json, what: "request"))
            }
        }))
    return v
}()

nonisolated(unsafe) private let descriptor = PluginSDK.makeDescriptor(
    kind: CA_PLUGIN_KIND_IMAGE_FETCH, name: "glance", version: "1.0.0",
    description: "Glance v2 and http(s) images, verified while streamed, cached in _base with qcow2 overlays",
    vtable: UnsafeRawPointer(vtable))

@_cdecl("compute_agent_plugin_entry")
public func computeAgentPluginEntry() -> UnsafePointer<ca_plugin_descriptor> { descriptor }
