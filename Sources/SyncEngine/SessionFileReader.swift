import Foundation

/// Lists and reads a session directory's files without ever capturing a torn one.
struct SessionFileReader: Sendable {
    enum Read {
        /// The complete content, and how the file looked while it was read.
        case settled([UInt8], FileFingerprint)
        /// Being written (changed while read, or JSON that does not parse): try again later.
        case unsettled
        /// Gone since it was listed.
        case vanished
    }

    func scan(_ directory: String) throws -> [String: FileFingerprint] {
        fatalError("replaced by the watcher's StableFileReader")
    }

    func read(directory: String, name: String) throws -> Read {
        fatalError("replaced by the watcher's StableFileReader")
    }
}
