import AgentSupport
import Testing
@testable import Messaging

@Suite struct TransportURLSecrecyTests {
    @Test func brokersOfACluster() throws {
        let u = try TransportURL(parsing: "rabbit://a:p1@h1:5672,b:p%2F2@h2:5673/vh")
        #expect(u.brokers.map(\.host) == ["h1", "h2"])
        #expect(u.brokers[1].password == "p/2" && u.brokers[1].port == 5673)
        #expect(u.virtualHost == "vh")
        #expect(!u.description.contains("p1"))
    }

    @Test(arguments: ["rabbit://u:hun/ter2@h:5672/", "rabbit://u:hun,ter2@h:5672/", "rabbit://u:hunter2@h:99999/",
                      "rabbit://u:12/hunter2@h:5672/v", "rabbit://u:p@h:5672,/", "rabbit://u:hun?ter2@h:5672/x?y"])
    func errorsNeverQuoteTheCredentials(_ text: String) {
        #expect(throws: TransportURL.ParseError.self) { try TransportURL(parsing: text) }
        do { _ = try TransportURL(parsing: text) } catch {
            for part in ["hun", "ter2", "hunter2"] { #expect(!error.message.contains(part), "\(error.message)") }
        }
    }

    @Test func slashVirtualHostStillWorks() throws {
        #expect(try TransportURL(parsing: "rabbit://u:p@h:5672//").virtualHost == "/")
        #expect(try TransportURL(parsing: "rabbit://u:p@h:5672/").virtualHost == "/")
    }
}

@Suite struct ReplyAddressTests {
    @Test func callAddressIsFoundInAnEnvelopeWithoutParsingIt() {
        let body = OsloMessage.requestBody(RPCRequest(method: "ping", args: ["arg": .string(String(repeating: "x", count: 1000))],
                                                      messageID: "abc123", replyQueue: "reply_77"))
        let a = OsloMessage.callAddress(scanning: body)
        #expect(a?.messageID == "abc123" && a?.replyQueue == "reply_77")
    }

    @Test func castHasNoAddress() {
        #expect(OsloMessage.callAddress(scanning: OsloMessage.requestBody(RPCRequest(method: "ping", args: [:]))) == nil)
    }

    @Test func overlongReplyQueueIsRefused() {
        #expect(RPCServer.replyQueueProblem(String(repeating: "r", count: 256)) != nil)
        #expect(RPCServer.replyQueueProblem("") != nil)
        #expect(RPCServer.replyQueueProblem("reply_" + String(repeating: "a", count: 32)) == nil)
    }

    @Test func forgottenIDsAreAcceptedAgain() {
        var ids = RecentIDs(capacity: 4)
        let first = ids.insert("a"), again = ids.insert("a")
        ids.remove("a")
        let afterForget = ids.insert("a")
        #expect(first && !again && afterForget)
    }
}

@Suite struct ReconnectTests {
    @Test func retryDelaysFollowOslosOptionsWithJitter() {
        var s = AMQPWorker.ConnectionSettings()
        s.retryInterval = 1
        s.retryBackoff = 2
        s.maxInterval = 30
        for _ in 0..<200 {
            #expect((0...1).contains(AMQPWorker.retryDelay(attempt: 1, s)))
            #expect((1.5...3).contains(AMQPWorker.retryDelay(attempt: 2, s)))
            #expect((2.5...5).contains(AMQPWorker.retryDelay(attempt: 3, s)))
            #expect((15...30).contains(AMQPWorker.retryDelay(attempt: 40, s)))
        }
    }

    /// Within the quick window a rack retries every 0.1–0.5 s, spread (not in one instant).
    @Test func quickRetriesAreShortAndSpread() {
        let s = AMQPWorker.ConnectionSettings()
        let delays = (0..<200).map { _ in AMQPWorker.retryDelay(attempt: 0, quick: true, s) }
        #expect(delays.allSatisfy { (0.1...0.5).contains($0) })
        #expect((delays.max() ?? 0) - (delays.min() ?? 0) > 0.2)
    }

    @Test func hopelessRefusalsAreRecognised() {
        #expect(AMQPError("declare exchange 'amq.direct': server closed channel: 406 PRECONDITION_FAILED").isHopeless)
        #expect(AMQPError("h:5672: login: server closed connection: 403 ACCESS_REFUSED").isLoginRefusal)
        #expect(!AMQPError("h:5672: login: server closed connection: 403 ACCESS_REFUSED").isHopeless)
        #expect(!AMQPError("cannot connect to h:5672: a socket error occurred").isHopeless)
    }
}
