import ArgumentParser
import Logging
import S3Client
import SessionArchive
import SyncEngine

// The engine's and libraries' types as the parser reads them from flags (and from the
// environment variables beside them, through `resolve`).

extension SnapshotLabel {
    /// `restore --snapshot`'s value, for the parser's `transform:`: a refused one says what a
    /// label looks like (an `ExpressibleByArgument` type could not say why).
    static func argument(_ text: String) throws(ValidationError) -> SnapshotLabel {
        guard let label = SnapshotLabel(parsing: text) else { throw ValidationError("expected SEQUENCE.GENERATION, e.g. 42.3") }
        return label
    }
}

extension StorageMode: ExpressibleByArgument {
    /// Any case: `CLOUD` is the mode people mean.
    public init?(argument: String) { self.init(rawValue: argument.lowercased()) }
}

extension DeletePolicy: ExpressibleByArgument {}
extension SessionFormat: ExpressibleByArgument {}
extension S3Configuration.Addressing: ExpressibleByArgument {}
extension Logger.Level: @retroactive ExpressibleByArgument {}

extension ExpressibleByArgument where Self: CaseIterable {
    /// The flag's value, else the environment variable's, else nil. The parser refuses a bad
    /// flag; a bad variable is refused here, one line naming it, with the same exit code.
    static func resolve(_ flag: Self?, variable: String) throws(UsageError) -> Self? {
        if let flag { return flag }
        guard let text = environment(variable) else { return nil }
        guard let value = Self(argument: text) else {
            let values = allValueStrings
            let choices = values.count > 1 ? values.dropLast().joined(separator: ", ") + " or " + values.last! : values.joined()
            throw UsageError(.unknownValue, "\(variable) \"\(FileName.displayed(text))\": use \(choices)")
        }
        return value
    }
}
