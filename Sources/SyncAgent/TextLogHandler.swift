import Logging
import SessionArchive

/// `--log-format text`: swift-log's stream format (`2026-… info sync-agent.watch: key=value …
/// [SyncEngine] message`), with control characters in the message and in every metadata value
/// escaped (`FileName.displayed`: `\n`, `\xNN`), so no value (a session's name, a file's, a
/// server's reply quoted in an error) can start a line of its own. Backslashes stay as they are:
/// names in errors are already shown escaped, and must not be escaped twice. JSON is escaped by
/// its encoder.
struct TextLogHandler: LogHandler {
    private var stream: StreamLogHandler

    static func standardError(label: String) -> TextLogHandler {
        TextLogHandler(stream: StreamLogHandler.standardError(label: label))
    }

    var logLevel: Logger.Level {
        get { stream.logLevel }
        set { stream.logLevel = newValue }
    }

    var metadata: Logger.Metadata {
        get { stream.metadata }
        set { stream.metadata = newValue.mapValues(Self.escaped) }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { stream[metadataKey: key] }
        set { stream[metadataKey: key] = newValue.map(Self.escaped) }
    }

    func log(event: LogEvent) {
        var event = event
        event.message = "\(FileName.displayed("\(event.message)", escapingBackslashes: false))"
        event.metadata = event.metadata?.mapValues(Self.escaped)
        stream.log(event: event)
    }

    private static func escaped(_ value: Logger.Metadata.Value) -> Logger.Metadata.Value {
        .string(FileName.displayed("\(value)", escapingBackslashes: false))
    }
}
