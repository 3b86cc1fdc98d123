import ArgumentParser

/// A value a command cannot take, from a flag or an environment variable: one line naming
/// where the value came from, and the usage-error exit code, before anything happens. As the
/// error of a parser's `transform:` (`DurationSetting`), only why: the parser names the flag
/// and the value before it.
struct UsageError: Error, CustomStringConvertible {
    enum Reason {
        case notADuration
        case negativeDuration
        case zeroDuration
        case durationTooLong
        case notATime
        case notACount
        /// A count outside the range a setting allows.
        case countOutOfRange
        /// Not one of a setting's values.
        case unknownValue
        /// A directory of the agent's own where it would be taken for a session.
        case insideSessionsDirectory
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
