import HTTPShim
import PluginSDK

#if canImport(Glibc)
import Glibc
#endif

/// The plugin's side of the libcurl shim: a GET streamed to a closure, and small JSON
/// requests. Blocking; called on the agent's plugin-call threads.
struct HTTP {
    var connectTimeout: Double
    var stallTimeout: Double
    var cafile: String?
    var insecure: Bool

    struct Response {
        var status: Int
        var contentLength: Int?
        var contentMD5: String?
        var bodyBytes: Int
        var body: String
    }

    enum Failure: Error {
        case transport(String)
        case aborted

        var message: String {
            switch self {
            case .transport(let why): return why
            case .aborted: return "the transfer was stopped"
            }
        }
    }

    /// GET `url`, the body handed to `body` piece by piece (never held in memory). A
    /// throwing `body` stops the transfer and its error is rethrown.
    func stream(_ url: String, headers: [String], body: (UnsafeRawBufferPointer) throws(PluginFailure) -> Void) throws -> Response {
        final class Sink {
            let body: (UnsafeRawBufferPointer) throws(PluginFailure) -> Void
            var failure: PluginFailure?
            init(_ body: @escaping (UnsafeRawBufferPointer) throws(PluginFailure) -> Void) { self.body = body }
        }
        return try withoutActuallyEscaping(body) { body in
            let sink = Sink(body)
            var result = ca_http_result()
            var err = [CChar](repeating: 0, count: 512)
            let rc = withOptions(headers) { opts in
                ca_http_get(url, opts, { data, len, ctx in
                    let s = Unmanaged<Sink>.fromOpaque(ctx!).takeUnretainedValue()
                    do throws(PluginFailure) { try s.body(UnsafeRawBufferPointer(start: data, count: len)) } catch {
                        s.failure = error
                        return 1
                    }
                    return 0
                }, Unmanaged.passUnretained(sink).toOpaque(), &result, &err, err.count)
            }
            if let f = sink.failure { throw f }
            if rc == Int32(CA_HTTP_TRANSPORT) { throw Failure.transport(String(cString: err)) }
            if rc != 0 { throw Failure.aborted }
            return Self.response(result, body: "")
        }
    }

    /// A small request (the image record, a PATCH); the answer at most 4 MiB.
    func request(_ method: String, _ url: String, headers: [String], body: String? = nil,
                 contentType: String? = nil) throws(Failure) -> Response
    {
        var result = ca_http_result()
        var err = [CChar](repeating: 0, count: 512)
        var out: UnsafeMutablePointer<CChar>?
        let rc = withOptions(headers) { opts in
            ca_http_json(method, url, opts, body, contentType, 4 << 20, &out, &result, &err, err.count)
        }
        defer { free(out) }
        guard rc == 0 else { throw .transport(String(cString: err)) }
        return Self.response(result, body: out.map { String(cString: $0) } ?? "")
    }

    func putFile(_ url: String, path: String, headers: [String]) throws(Failure) -> Response {
        var result = ca_http_result()
        var err = [CChar](repeating: 0, count: 512)
        let rc = withOptions(headers) { opts in ca_http_put_file(url, opts, path, &result, &err, err.count) }
        guard rc == 0 else { throw .transport(String(cString: err)) }
        return Self.response(result, body: "")
    }

    private func withOptions<T>(_ headers: [String], _ body: (UnsafePointer<ca_http_options>) -> T) -> T {
        let cheaders: [UnsafeMutablePointer<CChar>?] = headers.map { strdup($0) }
        defer { for h in cheaders { free(h) } }
        let ca: UnsafeMutablePointer<CChar>? = cafile.flatMap { strdup($0) }
        defer { free(ca) }
        let constHeaders: [UnsafePointer<CChar>?] = cheaders.map { $0.map { UnsafePointer($0) } }
        return constHeaders.withUnsafeBufferPointer { hb in
            var o = ca_http_options(connect_timeout: connectTimeout, stall_timeout: stallTimeout,
                                    cafile: UnsafePointer(ca), insecure: insecure ? 1 : 0,
                                    headers: hb.baseAddress, header_count: hb.count)
            return body(&o)
        }
    }

    private static func response(_ r: ca_http_result, body: String) -> Response {
        let md5 = withUnsafeBytes(of: r.content_md5) { raw -> String in
            let b = raw.bindMemory(to: UInt8.self)
            return String(decoding: b.prefix { $0 != 0 }, as: UTF8.self)
        }
        return Response(status: r.status, contentLength: r.content_length >= 0 ? Int(r.content_length) : nil,
                        contentMD5: md5.isEmpty ? nil : md5, bodyBytes: Int(r.body_bytes), body: body)
    }
}
