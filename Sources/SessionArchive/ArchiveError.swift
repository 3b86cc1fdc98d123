/// Why an archive could not be written or read. The description names the entry concerned
/// (quoted and escaped with `FileName.displayed`, since hostile names may hold control characters
/// and bytes that are not UTF-8) but never file contents.
public struct ArchiveError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Reason: Equatable, Sendable {
        /// Absolute, empty, `.`/`..` component, empty component, NUL, or too long (in the name's bytes).
        case unsafePath
        /// Symlink, hard link, device, FIFO, socket: only regular files and directories are allowed.
        case forbiddenEntryType(String)
        /// The same path twice, or a path below an entry that is a file.
        case duplicateEntry
        case entryTooLarge(limit: Int64)
        case totalSizeExceeded(limit: Int64)
        case tooManyEntries(limit: Int)
        /// The payload is not zstd-compressed tar.
        case unsupportedFormat
        /// The stream ends before the tar end-of-archive marker, or mid-entry.
        case truncated
        /// libarchive refused the data (bad header, bad zstd frame...); its message is in `detail`.
        case corrupt
        /// libarchive could not write the archive; its message is in `detail`.
        case writeFailed
        /// A file being archived shrank between stat and read: it is being rewritten, try again.
        case sourceChanged
        case invalidCompressionLevel(Int)
    }

    public let reason: Reason
    /// The archive path of the entry concerned, when there is one.
    public let entry: String?
    public let detail: String?

    init(_ reason: Reason, entry: String? = nil, detail: String? = nil) {
        self.reason = reason
        self.entry = entry
        self.detail = detail
    }

    public var description: String {
        var message: String
        switch reason {
        case .unsafePath: message = "unsafe path (absolute, empty, '.' or '..' component, or too long)"
        case .forbiddenEntryType(let type): message = "forbidden entry type \(type) (only regular files and directories)"
        case .duplicateEntry: message = "duplicate entry, or entry below a file"
        case .entryTooLarge(let limit): message = "entry larger than the limit of \(limit) bytes"
        case .totalSizeExceeded(let limit): message = "archive expands past the limit of \(limit) bytes"
        case .tooManyEntries(let limit): message = "archive has more than \(limit) entries"
        case .unsupportedFormat: message = "not a zstd-compressed tar archive"
        case .truncated: message = "archive is truncated"
        case .corrupt: message = "archive is corrupt"
        case .writeFailed: message = "could not write the archive"
        case .sourceChanged: message = "file changed while being archived"
        case .invalidCompressionLevel(let level): message = "invalid zstd compression level \(level) (1...22)"
        }
        if let entry { message = "archive entry \"\(FileName.displayed(entry))\": " + message }
        if let detail { message += " (\(detail))" }
        return message
    }
}

/// Bounds on what a reader accepts, checked against each header before its data is
/// decompressed, so a decompression bomb is stopped while streaming.
public struct ExtractionLimits: Equatable, Sendable {
    public var maxTotalBytes: Int64
    public var maxEntryCount: Int
    public var maxEntryBytes: Int64

    public init(maxTotalBytes: Int64 = 1 << 30, maxEntryCount: Int = 200_000, maxEntryBytes: Int64 = 64 << 20) {
        self.maxTotalBytes = maxTotalBytes
        self.maxEntryCount = maxEntryCount
        self.maxEntryBytes = maxEntryBytes
    }

    /// Generous for Baileys session directories (tens of thousands of small JSON files).
    public static let sessionDirectory = ExtractionLimits()
}

/// The path rules shared by the writer (so we never produce what the reader refuses) and the reader.
enum ArchivePath {
    static let maxPathBytes = 1024
    static let maxComponentBytes = 255

    /// Whether the path is a safe relative path: not absolute, no NUL, no empty, `.` or `..`
    /// component, within the length limits. A single trailing slash is tolerated (tar writers
    /// mark directories that way). Lengths are the name's bytes on disk (`FileName`), not its
    /// escapes' UTF-8. One pass over the bytes, no allocation for a name that is UTF-8: the
    /// writer checks every file of every snapshot.
    static func isSafe(_ path: String) -> Bool {
        path.utf8.contains(0xF4) ? isSafe(bytes: FileName.bytes(of: path)) : isSafe(bytes: path.utf8)
    }

    private static func isSafe(bytes path: some BidirectionalCollection<UInt8>) -> Bool {
        var bytes = path[...]
        if bytes.last == UInt8(ascii: "/") { bytes = bytes.dropLast() }
        guard !bytes.isEmpty, path.count <= maxPathBytes else { return false }
        var componentLength = 0
        var componentIsDots = true
        func componentIsSafe() -> Bool {
            componentLength > 0 && componentLength <= maxComponentBytes && !(componentIsDots && componentLength <= 2)
        }
        for byte in bytes {
            switch byte {
            case 0: return false
            case UInt8(ascii: "/"):
                guard componentIsSafe() else { return false }
                (componentLength, componentIsDots) = (0, true)
            default:
                componentLength += 1
                componentIsDots = componentIsDots && byte == UInt8(ascii: ".")
            }
        }
        return componentIsSafe()
    }

    /// The path's components if it is a safe relative path (`isSafe`), nil otherwise.
    /// Split on the scalar "/", not the Character: a component may start with a combining mark,
    /// which Swift would join to the "/" before it into one Character.
    static func components(of path: String) -> [Substring]? {
        guard isSafe(path) else { return nil }
        var scalars = path.unicodeScalars[...]
        if scalars.last == "/" { scalars = scalars.dropLast() }
        return scalars.split(separator: "/", omittingEmptySubsequences: false).map(Substring.init)
    }

    static func validatedComponents(of path: String) throws -> [Substring] {
        guard let components = components(of: path) else { throw ArchiveError(.unsafePath, entry: path) }
        return components
    }
}
