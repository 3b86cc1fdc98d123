import SessionArchive
import SystemSupport

/// A duration setting: "250ms", "5s", "1m", "36h", "7d", "2w", or a bare number of
/// milliseconds (as in the environment variables). Whole units only, at most 100 years: a
/// longer value is a typo, and it would overflow the clock arithmetic it feeds.
///
/// The one parser of durations: the parser's `transform:` of a duration flag (`positive`,
/// `nonNegative`), so a bad flag is refused while parsing, and `resolve` for the environment
/// variable beside it. Not an `ExpressibleByArgument` type: its `init?(argument:)` cannot say
/// why a value is refused, and the parser alone would print only that it is invalid.
enum DurationSetting {
    private static let longest = Duration.seconds(100 * 365 * 86_400)
    private static let units: [(suffix: String, milliseconds: Int64)] = [
        ("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000), ("w", 604_800_000),
    ]

    /// A flag's duration, longer than 0.
    static func positive(_ text: String) throws(UsageError) -> Duration { try parse(text, allowsZero: false) }

    /// A flag's duration where 0 means something.
    static func nonNegative(_ text: String) throws(UsageError) -> Duration { try parse(text, allowsZero: true) }

    /// The flag's duration (already parsed), else the environment variable's; nil when neither
    /// is set. `allowsZero` as for the flag.
    static func resolve(_ flag: Duration?, variable: String, allowsZero: Bool) throws(UsageError) -> Duration? {
        if let flag { return flag }
        guard let text = environment(variable) else { return nil }
        do {
            return try parse(text, allowsZero: allowsZero)
        } catch {
            // The value as it was given, escaped: it stays one line whatever it holds.
            throw UsageError(error.reason, "\(variable) \"\(FileName.displayed(String(text.trimmingWhitespace())))\": \(error.description)")
        }
    }

    /// The duration `rawText` says; the error's message is why not, without the value (the
    /// parser shows it before the message, `resolve` names the variable and the value).
    private static func parse(_ rawText: String, allowsZero: Bool) throws(UsageError) -> Duration {
        let text = rawText.trimmingWhitespace()
        func isWholeNumber(_ number: Substring) -> Bool {
            let digits = number.hasPrefix("-") ? number.dropFirst() : number
            return !digits.isEmpty && digits.allSatisfy { $0.isASCII && $0.isNumber }
        }
        let unit = units.first { text.hasSuffix($0.suffix) && isWholeNumber(text.dropLast($0.suffix.count)) }
        let number = unit.map { text.dropLast($0.suffix.count) } ?? text[...]
        guard isWholeNumber(number) else {
            throw UsageError(.notADuration, "expected a duration such as 250ms, 5s, 1m, 36h, 7d or 2w")
        }
        guard !number.hasPrefix("-") else { throw UsageError(.negativeDuration, "a duration cannot be negative") }
        let tooLong = UsageError(.durationTooLong, "longer than 100 years")
        guard let value = Int64(number) else { throw tooLong }
        guard allowsZero || value > 0 else { throw UsageError(.zeroDuration, "must be longer than 0") }
        let (milliseconds, overflow) = value.multipliedReportingOverflow(by: unit?.milliseconds ?? 1)
        guard !overflow, Duration.milliseconds(milliseconds) <= longest else { throw tooLong }
        return .milliseconds(milliseconds)
    }
}
