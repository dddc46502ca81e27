/// A configuration problem, located by file, line, section and option so an operator can
/// go straight to it. Never carries an option's value when that value may be a secret.
public struct ConfigError: Error, CustomStringConvertible, Sendable, Equatable {
    public var file: String
    public var line: Int?
    public var section: String?
    public var option: String?
    public var message: String

    public init(file: String, line: Int?, section: String?, option: String?, message: String) {
        self.file = file
        self.line = line
        self.section = section
        self.option = option
        self.message = message
    }

    /// `file:line: [section] option`, without the message.
    public var location: String {
        var s = file
        if let line { s += ":\(line)" }
        if let section {
            s += ": [\(section)]"
            if let option { s += " \(option)" }
        }
        return s
    }

    public var description: String {
        var s = file
        if let line { s += ":\(line)" }
        if let section {
            s += ": [\(section)]"
            if let option { s += " \(option)" }
        }
        return s + ": " + message
    }
}
