import AgentSupport
import HTTPShim
import JSON

#if canImport(Glibc)
import Glibc
#endif

/// Blocking JSON requests over libcurl (HTTPShim), made on one named thread of their
/// own, never on the cooperative pool.
final class RESTClient: Sendable {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    struct Response: Sendable {
        let status: Int
        let body: JSONValue?
    }

    let endpoint: String
    private let thread: SerialThread

    init(endpoint: String, threadName: String) {
        self.endpoint = endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint
        thread = SerialThread(name: threadName)
    }

    /// `method` on `endpoint + path` with `headers` ("Name: value"); the body and the
    /// answer are JSON. Failures name the method and path, never a header (tokens).
    func request(_ method: String, _ path: String, headers: [String], body: JSONValue? = nil) async throws(Failure) -> Response {
        let url = endpoint + path
        let text = body?.serialized()
        return try await thread.run { () throws(Failure) -> Response in
            var result = ca_http_result()
            var err = [CChar](repeating: 0, count: 512)
            var out: UnsafeMutablePointer<CChar>?
            let cheaders = headers.map { strdup($0) }
            defer { for h in cheaders { free(h) } }
            let constHeaders: [UnsafePointer<CChar>?] = cheaders.map { $0.map { UnsafePointer($0) } }
            let rc = constHeaders.withUnsafeBufferPointer { hb -> Int32 in
                var o = ca_http_options(connect_timeout: 10, stall_timeout: 30, cafile: nil, insecure: 0,
                                        headers: hb.baseAddress, header_count: hb.count)
                return ca_http_json(method, url, &o, text, "application/json", 16 << 20, &out, &result, &err, err.count)
            }
            defer { free(out) }
            guard rc == 0 else { throw Failure(description: "\(method) \(path): \(String(cString: err))") }
            let raw = out.map { String(cString: $0) } ?? ""
            let parsed = raw.isEmpty ? nil : try? JSONValue.parse(raw)
            return Response(status: Int(result.status), body: parsed)
        }
    }
}

/// A small placement REST client (`[placement] endpoint` and `token`, the admin_token
/// auth nova's own files use without keystone), on the `placement` thread.
final class PlacementClient: Sendable {
    typealias Failure = RESTClient.Failure
    typealias Response = RESTClient.Response

    let rest: RESTClient
    let token: String

    init(endpoint: String, token: String) {
        rest = RESTClient(endpoint: endpoint, threadName: "placement")
        self.token = token
    }

    var endpoint: String { rest.endpoint }

    /// One request at placement microversion `version`.
    func request(_ method: String, _ path: String, version: String, body: JSONValue? = nil,
                 requestID: String? = nil) async throws(Failure) -> Response
    {
        var headers = ["X-Auth-Token: \(token)", "Accept: application/json", "OpenStack-API-Version: placement \(version)"]
        if let requestID { headers.append("X-Openstack-Request-Id: \(requestID)") }
        do {
            return try await rest.request(method, path, headers: headers, body: body)
        } catch {
            throw Failure(description: "placement \(error.description)")
        }
    }

    /// A request that must answer 2xx; anything else names the status and placement's text.
    func expect(_ method: String, _ path: String, version: String, body: JSONValue? = nil) async throws(Failure) -> JSONValue? {
        let r = try await request(method, path, version: version, body: body)
        guard (200..<300).contains(r.status) else {
            let detail = r.body?["errors"]?.arrayValue?.first?["detail"]?.stringValue ?? r.body?.serialized() ?? ""
            throw Failure(description: "placement \(method) \(path) answered \(r.status): \(detail.prefix(300))")
        }
        return r.body
    }
}

/// What the nova dialect itself asks of glance (`[glance] api_servers`): deleting the
/// snapshot a shelved server was kept in once it is back on a host, as nova-compute does.
/// Images themselves are fetched and uploaded by the image plugin.
final class GlanceClient: Sendable {
    let rest: RESTClient

    init(endpoint: String) {
        rest = RESTClient(endpoint: endpoint, threadName: "glance")
    }

    /// `DELETE /v2/images/<id>` with the caller's token (nova uses the request's
    /// context); an image already gone is fine.
    func deleteImage(_ id: String, token: String?) async throws(RESTClient.Failure) {
        var headers = ["Accept: application/json"]
        if let token, !token.isEmpty { headers.append("X-Auth-Token: \(token)") }
        let r = try await rest.request("DELETE", "/v2/images/\(id)", headers: headers)
        guard (200..<300).contains(r.status) || r.status == 404 else {
            throw RESTClient.Failure(description: "glance DELETE /v2/images/\(id) answered \(r.status)")
        }
    }
}

extension GlanceClient {
    /// `GET /v2/images` with `query` (glance filters by custom properties given as query
    /// parameters), newest first.
    func images(_ query: [(String, String)], token: String?) async throws(RESTClient.Failure) -> [JSONValue] {
        var headers = ["Accept: application/json"]
        if let token, !token.isEmpty { headers.append("X-Auth-Token: \(token)") }
        let q = (query + [("sort_key", "created_at"), ("sort_dir", "desc")]).map { "\($0.0)=\(percentEncoded($0.1))" }
        let r = try await rest.request("GET", "/v2/images?" + q.joined(separator: "&"), headers: headers)
        guard r.status == 200, let images = r.body?["images"]?.arrayValue else {
            throw RESTClient.Failure(description: "glance GET /v2/images answered \(r.status)")
        }
        return images
    }
}

/// RFC 3986 percent-encoding of a query value (unreserved characters kept).
func percentEncoded(_ s: String) -> String {
    var out = ""
    for b in s.utf8 {
        switch b {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            out.unicodeScalars.append(Unicode.Scalar(b))
        default:
            let hex = Array("0123456789ABCDEF".utf8)
            out += "%" + String(decoding: [hex[Int(b >> 4)], hex[Int(b & 15)]], as: UTF8.self)
        }
    }
    return out
}
