import AgentSupport
import HTTPShim
import JSON

#if canImport(Glibc)
import Glibc
#endif

/// A small placement REST client (`[placement] endpoint` and `token`, the admin_token
/// auth nova's own files use without keystone). Requests are blocking libcurl calls made
/// on the `placement` thread, never on the cooperative pool.
final class PlacementClient: Sendable {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    struct Response: Sendable {
        let status: Int
        let body: JSONValue?
    }

    let endpoint: String
    let token: String
    private let thread = SerialThread(name: "placement")

    init(endpoint: String, token: String) {
        self.endpoint = endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint
        self.token = token
    }

    /// One request at placement microversion `version`; the body and the answer are JSON.
    func request(_ method: String, _ path: String, version: String, body: JSONValue? = nil,
                 requestID: String? = nil) async throws(Failure) -> Response
    {
        let url = endpoint + path
        var headers = ["X-Auth-Token: \(token)", "Accept: application/json", "OpenStack-API-Version: placement \(version)"]
        if let requestID { headers.append("X-Openstack-Request-Id: \(requestID)") }
        let text = body?.serialized()
        let lines = headers
        return try await thread.run { () throws(Failure) -> Response in
            var result = ca_http_result()
            var err = [CChar](repeating: 0, count: 512)
            var out: UnsafeMutablePointer<CChar>?
            let cheaders = lines.map { strdup($0) }
            defer { for h in cheaders { free(h) } }
            let constHeaders: [UnsafePointer<CChar>?] = cheaders.map { $0.map { UnsafePointer($0) } }
            let rc = constHeaders.withUnsafeBufferPointer { hb -> Int32 in
                var o = ca_http_options(connect_timeout: 10, stall_timeout: 30, cafile: nil, insecure: 0,
                                        headers: hb.baseAddress, header_count: hb.count)
                return ca_http_json(method, url, &o, text, "application/json", 16 << 20, &out, &result, &err, err.count)
            }
            defer { free(out) }
            guard rc == 0 else { throw Failure(description: "placement \(method) \(path): \(String(cString: err))") }
            let raw = out.map { String(cString: $0) } ?? ""
            let parsed = raw.isEmpty ? nil : try? JSONValue.parse(raw)
            return Response(status: Int(result.status), body: parsed)
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
