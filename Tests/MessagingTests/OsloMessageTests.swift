import AgentSupport
import Testing
@testable import Messaging

@Suite struct OsloMessageTests {
    // A cast captured from oslo.messaging 18.3.1 (shared/reference/oslo-messaging-wire.md).
    static let capturedCast = #"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"ping\", \"args\": {\"x\": 1, \"name\": \"vm-a\"}, \"version\": \"6.0\", \"_unique_id\": \"69983ec5f448403c877df14cf7c12074\", \"_context_user\": \"u-1\", \"_context_is_admin\": false, \"_context_request_id\": \"req-11111111-2222-3333-4444-555555555555\", \"_context_roles\": [\"member\"]}"}"#

    @Test func capturedCastUnwrapsIntoRequest() throws {
        let r = try OsloMessage.request(from: OsloMessage.unwrap(body: Array(Self.capturedCast.utf8)))
        #expect(r.method == "ping")
        #expect(r.args["x"] == 1)
        #expect(r.args["name"] == "vm-a")
        #expect(r.version == "6.0")
        #expect(r.uniqueID == "69983ec5f448403c877df14cf7c12074")
        #expect(r.requestID == "req-11111111-2222-3333-4444-555555555555")
        #expect(r.context["roles"] == ["member"])
        #expect(!r.isCall)
    }

    @Test func callKeysAreUnpacked() throws {
        let body = OsloMessage.requestBody(RPCRequest(method: "slow", args: ["seconds": 2.5], messageID: "abc",
                                                      replyQueue: "reply_1", callMonitorTimeout: 2))
        let r = try OsloMessage.request(from: OsloMessage.unwrap(body: body))
        #expect(r.isCall && r.messageID == "abc" && r.replyQueue == "reply_1" && r.callMonitorTimeout == 2)
        #expect(r.uniqueID?.count == 32)
    }

    @Test func envelopeDoubleEncodesTheInnerMessage() throws {
        let body = String(decoding: OsloMessage.envelope(inner: #"{"a": "b"}"#), as: UTF8.self)
        #expect(body == #"{"oslo.version": "2.0", "oslo.message": "{\"a\": \"b\"}"}"#)
    }

    @Test func replyCarriesResultFailureEndingInOsloOrder() throws {
        let body = String(decoding: OsloMessage.replyBody(result: ["pong": true], failure: nil, ending: true, messageID: "m1"), as: UTF8.self)
        let inner = try OsloMessage.unwrap(body: Array(body.utf8))
        #expect(inner["result"] == ["pong": true])
        #expect(inner["failure"] == .null)
        #expect(inner["ending"] == true)
        #expect(inner["_msg_id"] == "m1")
        let innerText = try JSONValue.parse(body)["oslo.message"]!.stringValue!
        #expect(innerText.hasPrefix(#"{"result": {"pong": true}, "failure": null, "ending": true, "_msg_id": "m1", "_unique_id": ""#))
    }

    @Test func failureIsSerializedAsOsloRemoteException() throws {
        let f = RemoteFailure.noSuchMethod("no_such")
        let o = try JSONValue.parse(f.serialized())
        #expect(o["class"] == "NoSuchMethod")
        #expect(o["module"] == "oslo_messaging.rpc.dispatcher")
        #expect(o["message"] == "Endpoint does not support RPC method no_such")
        #expect(o["args"] == ["Endpoint does not support RPC method no_such"])
        #expect(o["kwargs"] == [:])
        #expect(o["tb"]?.arrayValue?.isEmpty == false)
        #expect(RemoteFailure(serialized: f.serialized()) == f)
    }

    @Test func versionCompatibilityFollowsOslo() {
        #expect(OsloMessage.isCompatible(requested: "1.0", served: "1.0"))
        #expect(OsloMessage.isCompatible(requested: "1.0", served: "1.2"))
        #expect(!OsloMessage.isCompatible(requested: "1.3", served: "1.2"))
        #expect(!OsloMessage.isCompatible(requested: "2.0", served: "1.2"))
        #expect(!OsloMessage.isCompatible(requested: "6.0", served: "1.0"))
        #expect(!OsloMessage.isCompatible(requested: "x.y", served: "1.0"))
    }

    @Test func malformedBodiesSayWhy() {
        func reason(_ s: String) -> String? {
            do { _ = try OsloMessage.request(from: OsloMessage.unwrap(body: Array(s.utf8))); return nil } catch { return error.reason }
        }
        #expect(reason("not json")?.contains("not JSON") == true)
        #expect(reason("[1,2]")?.contains("not an object") == true)
        #expect(reason(#"{"args": {}}"#) == "message has no 'method'")
        #expect(reason(#"{"method": 5}"#)?.contains("not a method name") == true)
        #expect(reason(#"{"method": "ping", "args": [1]}"#)?.contains("'args' is a array") == true)
        #expect(reason(#"{"oslo.version": "3.0", "oslo.message": "{}"}"#)?.contains("unsupported envelope version") == true)
        #expect(reason(#"{"oslo.version": "2.0", "oslo.message": "{bad"}"#)?.contains("'oslo.message' is not JSON") == true)
    }

    @Test func oneDotZeroFormatPassesThrough() throws {
        let r = try OsloMessage.request(from: OsloMessage.unwrap(body: Array(#"{"method": "ping", "args": {}}"#.utf8)))
        #expect(r.method == "ping")
    }

    @Test func recentIDsDropRepeatsWithinWindow() {
        var ids = RecentIDs(capacity: 2)
        var seen: [Bool] = []
        for id in ["a", "a", "b", "c", "a"] { seen.append(ids.insert(id)) }  // "c" evicts "a"
        #expect(seen == [true, false, true, true, true])
    }
}

@Suite struct TransportURLTests {
    @Test func parsesClusterURLWithVhost() throws {
        let u = try TransportURL(parsing: "rabbit://nova:s%40cret@h1:5672,nova:s%40cret@h2:5673/prod")
        #expect(u.brokers.count == 2)
        #expect(u.brokers[0] == .init(host: "h1", port: 5672, user: "nova", password: "s@cret"))
        #expect(u.brokers[1].port == 5673)
        #expect(u.virtualHost == "prod")
    }

    @Test func descriptionNeverShowsThePassword() throws {
        let u = try TransportURL(parsing: "rabbit://nova:topsecret@h1:5672/")
        #expect(!u.description.contains("topsecret"))
        #expect(u.description == "rabbit://nova:***@h1:5672/")
    }

    @Test func refusesOtherTransportsAndBadPorts() {
        #expect(throws: TransportURL.ParseError.self) { try TransportURL(parsing: "kafka://h:1/") }
        #expect(throws: TransportURL.ParseError.self) { try TransportURL(parsing: "rabbit://u:p@h:99999/") }
        #expect(throws: TransportURL.ParseError.self) { try TransportURL(parsing: "localhost") }
    }
}
