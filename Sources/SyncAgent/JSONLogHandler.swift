import FoundationEssentials
import Glibc
import Logging
import SessionCrypto
import Synchronization
import SystemSupport

/// `--log-format json`: one JSON object per line on standard error, for log collectors
/// (Loki, CloudWatch, Elasticsearch). Keys: time (ISO 8601, milliseconds), level, logger,
/// message, then each metadata field as a string; a metadata key never overrides those four.
struct JSONLogHandler: LogHandler {
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    private let label: String

    /// One line is one write(2): lines from concurrent tasks never interleave.
    private static let output = Mutex(FileDescriptorSink(fileDescriptor: STDERR_FILENO))

    static func standardError(label: String) -> JSONLogHandler { JSONLogHandler(label: label) }

    private init(label: String) { self.label = label }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var fields: [String: String] = [:]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
            fields[key] = "\(value)"
        }
        fields["time"] = Date.ISO8601FormatStyle(includingFractionalSeconds: true).format(Date())
        fields["level"] = event.level.rawValue
        fields["logger"] = label
        fields["message"] = "\(event.message)"
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard var line = try? encoder.encode(fields) else { return }
        line.append(UInt8(ascii: "\n"))
        Self.output.withLock { sink in line.withUnsafeBytes { try? sink.write($0) } }
    }
}
