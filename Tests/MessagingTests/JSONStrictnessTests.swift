import AgentSupport
import Testing

@Suite struct JSONStrictnessTests {
    @Test(arguments: ["01", "-01", "1.", ".5", "+1", "1e", "1e+", "-", "NaN", "Infinity", "-Infinity", "1e999", "[1,]", "{\"a\":1,}"])
    func notJSONByRFC8259(_ text: String) {
        #expect(throws: JSONParseError.self) { try JSONValue.parse(text) }
    }

    @Test(arguments: ["0", "-0", "10", "1.5", "-2.25e-3", "1E+2", "9223372036854775807", "1e300"])
    func numbersOfTheGrammarParse(_ text: String) throws {
        _ = try JSONValue.parse(text)
    }

    @Test func invalidUTF8IsAnErrorNotAReplacement() {
        for bytes: [UInt8] in [[0x22, 0xFF, 0x22], [0x22, 0xC3, 0x22], [0x22, 0x5C, 0x6E, 0xED, 0xA0, 0x80, 0x22]] {
            let r = bytes.withUnsafeBufferPointer { b in Result { () throws(JSONParseError) -> JSONValue in try JSONValue.parse(bytes: b) } }
            guard case .failure(let e) = r else { Issue.record("accepted \(bytes)"); continue }
            #expect(e.reason == "invalid UTF-8 in string")
        }
    }

    @Test func validUnicodeStillParses() throws {
        #expect(try JSONValue.parse("\"ñ\\u00e9\\ud83d\\ude00\"") == .string("ñé😀"))
    }
}

/// `parseElements`: a plugin's large listing is turned into what the caller keeps, one
/// element at a time, with the same strictness as `parse`.
@Suite struct JSONElementStreamTests {
    func elements(_ text: String) throws -> [String] {
        var copy = text
        return try copy.withUTF8 { buf in
            try JSONValue.parseElements(bytes: buf) { $0["uuid"]?.stringValue }
        }
    }

    @Test func eachElementIsTransformedAndNilsAreDropped() throws {
        #expect(try elements(#" [ {"uuid": "a", "x": [1, {"y": 2}]}, {"name": "no uuid"}, {"uuid": "b"} ] "#) == ["a", "b"])
        #expect(try elements("[]") == [])
    }

    @Test func aTopLevelThatIsNotAnArrayGivesNothing() throws {
        #expect(try elements(#"{"uuid": "a"}"#) == [])
        #expect(try elements("null") == [])
    }

    @Test func brokenOrTrailingTextIsRefused() {
        #expect(throws: JSONParseError.self) { try elements(#"[{"uuid": "a"},"#) }
        #expect(throws: JSONParseError.self) { try elements(#"[{"uuid": "a"}] x"#) }
        #expect(throws: JSONParseError.self) { try elements(#"[01]"#) }
        #expect(throws: JSONParseError.self) { try elements(#"{"a": "#) }
    }
}
