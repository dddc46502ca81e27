import AgentMetrics
import AgentSupport
import XCTest

final class AgentMetricsTests: XCTestCase {
    func testHealthRuleWantsConsumingAndARecentConfirmedHeartbeat() {
        XCTAssertTrue(HealthRule.evaluate(consuming: true, secondsSinceConfirmedHeartbeat: 3, serviceDownTime: 60).healthy)
        let stale = HealthRule.evaluate(consuming: true, secondsSinceConfirmedHeartbeat: 31, serviceDownTime: 60)
        XCTAssertFalse(stale.healthy)
        XCTAssertTrue(stale.reason.contains("more than service_down_time / 2 (30.0 s)"), stale.reason)
        XCTAssertFalse(HealthRule.evaluate(consuming: true, secondsSinceConfirmedHeartbeat: nil, serviceDownTime: 60).healthy)
        let down = HealthRule.evaluate(consuming: false, secondsSinceConfirmedHeartbeat: 1, serviceDownTime: 60)
        XCTAssertFalse(down.healthy)
        XCTAssertTrue(down.reason.hasPrefix("not consuming"))
    }

    func testListenAddresses() {
        XCTAssertEqual(ListenAddress("127.0.0.1:9178"), ListenAddress("127.0.0.1:9178"))
        XCTAssertEqual(ListenAddress("127.0.0.1:9178")?.port, 9178)
        XCTAssertEqual(ListenAddress(":9178")?.host, "0.0.0.0")
        XCTAssertEqual(ListenAddress("[::1]:9178")?.isIPv6, true)
        XCTAssertEqual(ListenAddress("[::1]:9178")?.host, "::1")
        XCTAssertEqual(ListenAddress("[::]:80")?.description, "[::]:80")
        for bad in ["9178", "localhost:9178", "1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:+80", "::1:9178", "[::1]9178", "1.2.3.4:0x50", ""] {
            XCTAssertNil(ListenAddress(bad), bad)
        }
    }

    func testExpositionHasHelpTypeAndLabelledSeries() {
        let m = AgentMetrics()
        m.rpcMessage(method: "ping", kind: "call", outcome: .ok, seconds: 0.002)
        XCTAssertFalse(String(decoding: m.exposition(), as: UTF8.self).contains("compute_agent_rpc_messages_total"),
                       "a disabled registry must not record")
        m.enable()
        m.rpcMessage(method: "ping", kind: "call", outcome: .ok, seconds: 0.002)
        m.rpcMessage(method: "ping", kind: "call", outcome: .ok, seconds: 0.2)
        m.pluginCall(kind: "hypervisor", function: "spawn", seconds: 301, timedOut: true, failed: false)
        let text = String(decoding: m.exposition(), as: UTF8.self)
        XCTAssertTrue(text.contains("# TYPE compute_agent_rpc_messages_total counter"), text)
        XCTAssertTrue(text.contains("# HELP compute_agent_rpc_messages_total "), text)
        XCTAssertTrue(text.contains(#"compute_agent_rpc_messages_total{method="ping",kind="call",outcome="ok"} 2"#), text)
        XCTAssertTrue(text.contains(#"compute_agent_rpc_handling_seconds_count{method="ping"} 2"#), text)
        XCTAssertTrue(text.contains(#"compute_agent_plugin_call_timeouts_total{kind="hypervisor",function="spawn"} 1"#), text)
    }

    func testProcessSampleReadsProc() {
        let s = ProcessMetrics.sample()
        XCTAssertGreaterThan(s.residentBytes, 1_048_576)
        XCTAssertGreaterThan(s.openFDs, 2)
        XCTAssertGreaterThanOrEqual(s.threads, 1)
        XCTAssertGreaterThan(s.startTimeSeconds, 1_600_000_000)
        XCTAssertLessThanOrEqual(s.startTimeSeconds, wallClockSeconds() + 1)
    }
}
