/// A parsed INI file in the style of `nova.conf`: `[section]` headers, `option = value`
/// lines, `#` and `;` comments. Keeps the line of every option for error messages.
public struct IniFile: Sendable {
    public struct Entry: Sendable, Equatable {
        public var value: String
        public var line: Int
        /// The file the option came from (files given later override earlier ones).
        public var file: String = ""
    }

    public let path: String
    /// section name → option name → entry. Section and option names are kept as written.
    public private(set) var sections: [String: [String: Entry]] = [:]
    /// The line of each section header, for errors about a whole section.
    public private(set) var sectionLines: [String: Int] = [:]
    /// The file of each section header (the first file that has the section).
    public private(set) var sectionFiles: [String: String] = [:]

    /// Parses `text`. `path` is used only in error messages.
    public init(path: String, text: String) throws(ConfigError) {
        self.path = path
        var current: String?
        var lineNumber = 0
        // "\r\n" is one Character in Swift, so CRLF files split on it too (and a lone "\r"
        // left at a line end is trimmed below).
        for rawLine in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            lineNumber += 1
            let line = rawLine.trimmingWhitespace()
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]"), line.count > 2 else {
                    throw ConfigError(file: path, line: lineNumber, section: nil, option: nil,
                                      message: "malformed section header '\(line)'")
                }
                let name = String(line.dropFirst().dropLast()).trimmingWhitespace()
                current = name
                if sections[name] == nil { sections[name] = [:]; sectionLines[name] = lineNumber; sectionFiles[name] = path }
                continue
            }
            guard let eq = line.firstIndex(where: { $0 == "=" || $0 == ":" }) else {
                throw ConfigError(file: path, line: lineNumber, section: current, option: nil,
                                  message: "expected 'option = value'")
            }
            let option = String(line[..<eq]).trimmingWhitespace()
            let value = String(line[line.index(after: eq)...]).trimmingWhitespace()
            guard let section = current else {
                throw ConfigError(file: path, line: lineNumber, section: nil, option: option,
                                  message: "option outside of any [section]")
            }
            guard !option.isEmpty else {
                throw ConfigError(file: path, line: lineNumber, section: section, option: nil,
                                  message: "empty option name")
            }
            sections[section, default: [:]][option] = Entry(value: value, line: lineNumber, file: path)
        }
    }

    /// This file with `later`'s options laid over it, option by option, as oslo.config
    /// reads `--config-file a --config-file b`: an option set in both takes `b`'s value.
    public func overlaid(with later: IniFile) -> IniFile {
        var merged = self
        for (section, entries) in later.sections {
            if merged.sections[section] == nil {
                merged.sections[section] = [:]
                merged.sectionLines[section] = later.sectionLines[section]
                merged.sectionFiles[section] = later.sectionFiles[section]
            }
            for (option, entry) in entries { merged.sections[section]![option] = entry }
        }
        return merged
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s.removeLast() }
        return String(s)
    }
}
