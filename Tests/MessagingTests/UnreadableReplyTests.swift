import Testing
@testable import Messaging

@Suite struct UnreadableReplyTests {
    @Test func theMessageIDIsFoundInsideTheEnvelopesEscapedString() {
        let body = #"{"oslo.version": "2.0", "oslo.message": "{\"_msg_id\": \"6f1c0ae2b6d94a0b\", \"result\": NaN}"}"#
        #expect(RPCClient.messageID(in: Array(body.utf8)) == "6f1c0ae2b6d94a0b")
    }

    @Test func theMessageIDIsFoundInAPlainBody() {
        let body = #"{"_msg_id":"ab-12", "result": [1, 2"#
        #expect(RPCClient.messageID(in: Array(body.utf8)) == "ab-12")
    }

    @Test func noMessageIDMeansNil() {
        #expect(RPCClient.messageID(in: Array(#"{"result": 1"#.utf8)) == nil)
        #expect(RPCClient.messageID(in: Array(#"{"_msg_id": ""}"#.utf8)) == nil)
        #expect(RPCClient.messageID(in: []) == nil)
        #expect(RPCClient.messageID(in: Array("_msg_id".utf8)) == nil)
    }
}
