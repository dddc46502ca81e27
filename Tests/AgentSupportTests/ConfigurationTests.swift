import Testing
@testable import AgentSupport

@Suite struct ConfigurationTests {
    func parse(_ text: String) throws(ConfigError) -> AgentConfiguration {
        try AgentConfiguration.parse(IniFile(path: "/etc/compute-agent/compute-agent.conf", text: text))
    }

    @Test func emptyFileGivesDefaults() throws {
        let c = try parse("")
        #expect(c.reportInterval == 10)
        #expect(c.periodicInterval == 60)
        #expect(c.controlExchange == "nova")
        #expect(c.computeDriver == "libvirt" && c.imageFetcher == "file" && c.networkPlugin == "noop")
        #expect(c.qosPrefetchCount == 64)
    }

    @Test func readsOptionsAndPluginSections() throws {
        let c = try parse("""
            # comment
            [DEFAULT]
            host = node-7
            report_interval = 2.5
            debug = true
            [libvirt]
            connection_uri = test:///default
            [oslo_messaging_rabbit]
            rabbit_quorum_queue = yes
            """)
        #expect(c.host == "node-7")
        #expect(c.reportInterval == 2.5)
        #expect(c.debug)
        #expect(c.quorumQueues)
        #expect(c.pluginSections["libvirt"]?["connection_uri"] == "test:///default")
    }

    @Test func badValueNamesFileLineAndOption() {
        #expect(throws: ConfigError(file: "/etc/compute-agent/compute-agent.conf", line: 3, section: "DEFAULT",
                                    option: "report_interval", message: "expected a decimal number of seconds such as 10 or 2.5, got 'often'")) {
            try parse("[DEFAULT]\nhost = a\nreport_interval = often\n")
        }
    }

    @Test func unknownOptionIsRefused() {
        do { _ = try parse("[DEFAULT]\nreport_intervall = 5\n"); Issue.record("accepted a typo") } catch {
            #expect(error.description == "/etc/compute-agent/compute-agent.conf:2: [DEFAULT] report_intervall: unknown option")
        }
    }

    @Test func unknownSectionIsRefused() {
        do { _ = try parse("[DEFAULT]\n\n[glance]\napi = x\n"); Issue.record("accepted an unknown section") } catch {
            #expect(error.line == 3)
            #expect(error.section == "glance")
            #expect(error.message.hasPrefix("unknown section"))
        }
    }

    @Test func outOfRangeAndMalformedLines() {
        #expect(throws: ConfigError.self) { try parse("[oslo_messaging_rabbit]\nrabbit_qos_prefetch_count = 0\n") }
        #expect(throws: ConfigError.self) { try parse("[DEFAULT]\njust words\n") }
        #expect(throws: ConfigError.self) { try parse("host = outside\n") }
        #expect(throws: ConfigError.self) { try parse("[DEFAULT]\nstate_path = relative/dir\n") }
        #expect(throws: ConfigError.self) { try parse("[DEFAULT]\ncompute_driver = ../evil\n") }
    }

    @Test func secretValuesAreNotEchoedForUnknownOptions() {
        do { _ = try parse("[DEFAULT]\ntransport_urll = rabbit://u:hunter2@h/\n") } catch {
            #expect(!error.description.contains("hunter2"))
        }
    }

    @Test func shelvedOffloadTimeIsMinusOneOrMore() throws {
        #expect(try parse("").shelvedOffloadTime == 0)
        #expect(try parse("[DEFAULT]\nshelved_offload_time = -1\n").shelvedOffloadTime == -1)
        #expect(try parse("[DEFAULT]\nshelved_offload_time = 3600\n").shelvedOffloadTime == 3600)
        do { _ = try parse("[DEFAULT]\nshelved_offload_time = -2\n"); Issue.record("accepted -2") } catch {
            #expect(error.line == 2 && error.option == "shelved_offload_time")
        }
    }

    @Test func handBackWaitIsZeroToOneMillisecond() throws {
        #expect(try parse("").handBackWaitMicroseconds == 200)
        #expect(try parse("[oslo_messaging_rabbit]\nhandback_wait_us = 0\n").handBackWaitMicroseconds == 0)
        do { _ = try parse("[oslo_messaging_rabbit]\nhandback_wait_us = 5000\n"); Issue.record("accepted 5000") } catch {
            #expect(error.line == 2 && error.option == "handback_wait_us")
        }
    }
}

@Suite struct JSONValueTests {
    @Test func roundTripsNestedValues() throws {
        let text = #"{"a": [1, 2.5, "x\n\"y\"", true, null], "b": {"c": -3}, "u": "\u00e9\ud83d\ude00"}"#
        let v = try JSONValue.parse(text)
        #expect(v["a"]?.arrayValue?.count == 5)
        #expect(v["u"] == "é😀")
        #expect(try JSONValue.parse(v.serialized()) == v)
    }

    @Test func rejectsMalformedAndHostileInput() {
        #expect(throws: JSONParseError.self) { try JSONValue.parse("{\"a\": }") }
        #expect(throws: JSONParseError.self) { try JSONValue.parse("[1, 2") }
        #expect(throws: JSONParseError.self) { try JSONValue.parse("\"\\ud800\"") }
        #expect(throws: JSONParseError.self) { try JSONValue.parse(String(repeating: "[", count: 100_000)) }
        #expect(throws: JSONParseError.self) { try JSONValue.parse("{} trailing") }
    }
}

@Suite struct HostileConfigTests {
    @Test(arguments: ["*", "#", "a*", "a b", "a\tb", "a\u{0}b", "a\u{85}b", String(repeating: "h", count: 248)])
    func hostsThatCannotBeQueueNamesAreRefused(_ host: String) {
        #expect(AgentConfiguration.hostNameProblem(host) != nil)
    }

    @Test(arguments: ["compute-1", "node.example.org", "ñandú", String(repeating: "h", count: 247)])
    func ordinaryHostsAreAccepted(_ host: String) {
        #expect(AgentConfiguration.hostNameProblem(host) == nil)
    }

    @Test func crlfFilesAreReadLineByLine() throws {
        let ini = try IniFile(path: "x.conf", text: "[DEFAULT]\r\nhost = h1\r\nreport_interval = 5\r\n")
        #expect(ini.sections["DEFAULT"]?["host"] == IniFile.Entry(value: "h1", line: 2, file: "x.conf"))
        #expect(ini.sections["DEFAULT"]?["report_interval"]?.line == 3)
    }

    @Test func laterFilesOverrideEarlierOnesOptionByOption() throws {
        let nova = try IniFile(path: "nova.conf", text: "[DEFAULT]\nhost = n\nreport_interval = 10\n[placement]\nendpoint = http://p\n")
        let mine = try IniFile(path: "agent.conf", text: "[DEFAULT]\nreport_interval = 2\n[libvirt]\nconnection_uri = x\n")
        let merged = nova.overlaid(with: mine)
        #expect(merged.sections["DEFAULT"]?["host"] == IniFile.Entry(value: "n", line: 2, file: "nova.conf"))
        #expect(merged.sections["DEFAULT"]?["report_interval"] == IniFile.Entry(value: "2", line: 2, file: "agent.conf"))
        #expect(merged.sections["placement"]?["endpoint"]?.file == "nova.conf")
        #expect(merged.sectionFiles["libvirt"] == "agent.conf")
    }

    @Test(arguments: ["0x10", "1e3", "nan", "inf", "", "+", "1.2.3", "5s"])
    func onlyDecimalNumbers(_ text: String) {
        #expect(!isDecimal(text))
    }

    @Test func logValuesCannotForgeLines() {
        let forged = "vm\n2026-11-23T10:15:02.123Z ERROR [compute-agent] forged"
        let escaped = LogEscaping.escaped(forged)
        #expect(!escaped.contains("\n"))
        #expect(escaped.hasPrefix("vm\\n2026"))
        #expect(LogEscaping.escaped("plain text") == "plain text")
        #expect(LogEscaping.escaped("a\u{1B}[31mb") == "a\\u{1B}[31mb")
    }
}
