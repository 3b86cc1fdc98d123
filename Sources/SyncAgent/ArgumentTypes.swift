import ArgumentParser
import Logging
import S3Client
import SessionArchive
import SyncEngine

// The engine's and libraries' types as the parser reads them from flags (and from the
// environment variables beside them, through `resolve`).

/// A session id in either spelling (`SessionID(printed:)`).
extension SessionID: ExpressibleByArgument {
    public init?(argument: String) { self.init(printed: argument) }
}

extension StorageMode: ExpressibleByArgument {
    /// Any case: `CLOUD` is the mode people mean.
    public init?(argument: String) { self.init(rawValue: argument.lowercased()) }
}

extension DeletePolicy: ExpressibleByArgument {}
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
