import ArgumentParser
import SessionArchive
import SystemSupport

/// A value a command cannot take, from a flag or an environment variable: one line naming
/// where the value came from, and the usage-error exit code, before anything happens.
struct UsageError: Error, CustomStringConvertible {
    enum Reason {
        case notADuration
        case negativeDuration
        case zeroDuration
        case durationTooLong
        /// Shorter than another setting it must not be shorter than.
        case durationTooShort
        case notATime
        case notACount
        /// Not one of a setting's values.
        case unknownValue
    }

    let reason: Reason
    let description: String

    init(_ reason: Reason, _ description: String) {
        self.reason = reason
        self.description = description
    }
}

/// Runs a command's checks, turning a `UsageError` into one line on standard error and exit
/// 64 (a `ValidationError` would add the usage text, which points at the flags even when the
/// bad value came from the environment).
func rejectingUsageErrors(_ checks: () throws -> Void) throws {
    do {
        try checks()
    } catch let error as UsageError {
        throw rejectInput(error.description)
    }
}

/// A duration setting: "250ms", "5s", "1m", "36h", "7d", "2w", or a bare number of
/// milliseconds (as in the environment variables). Whole units only, at most 100 years: a
/// longer value is a typo, and it would overflow the clock arithmetic it feeds.
enum DurationSetting {
    private static let longest = Duration.seconds(100 * 365 * 86_400)
    private static let units: [(suffix: String, milliseconds: Int64)] = [
        ("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000), ("w", 604_800_000),
    ]

    /// The duration of the flag, else of the environment variable; nil when neither is set. `allowsZero`: whether 0 means something for this setting (it must be longer otherwise).
    static func resolve(flag: String?, _ flagName: String, variable: String? = nil, allowsZero: Bool) throws(UsageError) -> Duration? {
        let source: (name: String, text: String)
        if let flag {
            source = (flagName, flag)
        } else if let variable, let text = environment(variable) {
            source = (variable, text)
        } else {
            return nil
        }
        return try parse(source.text, name: source.name, allowsZero: allowsZero)
    }

    private static func parse(_ rawText: String, name: String, allowsZero: Bool) throws(UsageError) -> Duration {
        let text = rawText.trimmingWhitespace()
        func isWholeNumber(_ number: Substring) -> Bool {
            let digits = number.hasPrefix("-") ? number.dropFirst() : number
            return !digits.isEmpty && digits.allSatisfy { $0.isASCII && $0.isNumber }
        }
        let unit = units.first { text.hasSuffix($0.suffix) && isWholeNumber(text.dropLast($0.suffix.count)) }
        let number = unit.map { text.dropLast($0.suffix.count) } ?? text[...]
        // The value as it was given, escaped: it stays one line whatever it holds.
        let shown = "\(name) \"\(FileName.displayed(String(text)))\""
        guard isWholeNumber(number) else {
            throw UsageError(.notADuration, "\(shown): expected a duration such as 250ms, 5s, 1m, 36h, 7d or 2w")
        }
        guard !number.hasPrefix("-") else { throw UsageError(.negativeDuration, "\(shown): a duration cannot be negative") }
        let tooLong = UsageError(.durationTooLong, "\(shown): longer than 100 years")
        guard let value = Int64(number) else { throw tooLong }
        guard allowsZero || value > 0 else { throw UsageError(.zeroDuration, "\(shown): must be longer than 0") }
        let (milliseconds, overflow) = value.multipliedReportingOverflow(by: unit?.milliseconds ?? 1)
        guard !overflow, Duration.milliseconds(milliseconds) <= longest else { throw tooLong }
        return .milliseconds(milliseconds)
    }
}
