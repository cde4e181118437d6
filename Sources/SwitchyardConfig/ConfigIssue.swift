// SwitchyardConfig: reads the YAML configuration into `SwitchyardConfiguration`,
// reporting every problem with its key path, line and the fix.

/// One problem in a configuration file.
public struct ConfigIssue: Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var message: String
    public var line: Int?

    public init(path: String, message: String, line: Int? = nil) {
        self.path = path
        self.message = message
        self.line = line
    }

    public var description: String {
        let location = path.isEmpty ? "" : "\(path): "
        return line.map { "\(location)\(message) (line \($0))" } ?? "\(location)\(message)"
    }
}

/// Every problem found in a configuration; thrown by `ConfigLoader`.
public struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    public var issues: [ConfigIssue]
    public init(_ issues: [ConfigIssue]) { self.issues = issues }
    public var description: String { issues.map(\.description).joined(separator: "\n") }
}
