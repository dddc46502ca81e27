// libFuzzer entry points for every decoder that reads bytes from outside the agent. Each
// binary is this file plus the decoders' own sources, built by Fuzz/run.sh with
// `-sanitize=fuzzer,address` and one of the -D flags below. A target returns normally for
// every input (a refusal is a thrown, typed error); a crash, an ASan report or a timeout
// is a bug, and its input goes into the seed corpus and a regression test.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    #if FUZZ_JSON
    // The JSON reader: parse, and a parsed value must write out and read back equal.
    let whole = try? JSONValue.parse(bytes: bytes)
    if let v = whole {
        let again = try? JSONValue.parse(v.serialized())
        precondition(again == v || v.containsNaNFreeDoubleRounding, "write/read round trip changed the value")
    }
    // The element-by-element reader (plugin listings) accepts exactly what parse accepts,
    // and hands over the same elements.
    let streamed = try? JSONValue.parseElements(bytes: bytes) { $0 }
    precondition((streamed != nil) == (whole != nil), "parseElements and parse disagree on validity")
    if let streamed, case .array(let a)? = whole { precondition(streamed == a, "parseElements changed the elements") }
    #elseif FUZZ_OSLO
    // The oslo envelope and request decoder, and the byte scan for a too-large call.
    if let m = try? OsloMessage.unwrap(body: Array(bytes)) { _ = try? OsloMessage.request(from: m) }
    _ = OsloMessage.callAddress(scanning: Array(bytes))
    #elseif FUZZ_INI
    // The configuration parser, on text as a file would give it.
    let text = String(decoding: bytes, as: UTF8.self)
    _ = try? IniFile(path: "fuzz.conf", text: text)
    #elseif FUZZ_URL
    // transport_url: parse anything; and, with the text between the last ':' and the first
    // '@' replaced by a marker (the password's place), an error must never show the marker.
    let text = String(decoding: bytes, as: UTF8.self)
    _ = try? TransportURL(parsing: text)
    if let at = text.firstIndex(of: "@"), let colon = text[..<at].lastIndex(of: ":") {
        let marker = "PW7SECRET7PW"
        let probe = String(text[...colon]) + marker + String(text[at...])
        do { _ = try TransportURL(parsing: probe) } catch {
            precondition(!error.message.contains(marker), "error quotes the password: \(error.message)")
        }
    }
    #elseif FUZZ_ELF
    // The plugin file check, on an arbitrary file image.
    let image = Array(bytes)
    _ = ELFCheck.check(header: Array(image.prefix(64)) + Array(repeating: 0, count: max(0, 64 - image.count)), size: image.count) { off, n in
        guard off >= 0, n >= 0, off <= image.count, n <= image.count - off else { return nil }
        return Array(image[off..<(off + n)])
    }
    #endif
    return 0
}

#if FUZZ_JSON
extension JSONValue {
    /// Doubles may print shorter than they parsed (`1.0` → `1`); equality then compares an
    /// int with a double. Such values are accepted by the round-trip check.
    var containsNaNFreeDoubleRounding: Bool {
        switch self {
        case .double: return true
        case .array(let a): return a.contains { $0.containsNaNFreeDoubleRounding }
        case .object(let o): return o.values.contains { $0.containsNaNFreeDoubleRounding }
        default: return false
        }
    }
}
#endif
