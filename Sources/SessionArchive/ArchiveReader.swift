import CArchive
import Glibc
import SystemSupport

/// One entry of an archive, after validation: `path` is a safe relative path in canonical form
/// (components joined by "/", no trailing slash).
public struct ArchiveEntry: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        case file
        case directory
    }

    public let path: String
    public let kind: Kind
    public let size: Int64
    public let modificationTime: Int64
}

/// Reads a zstd-compressed tar from a `ByteSource` and hands each entry to a visitor, streaming.
/// This is the only archive reader: extraction into a staging directory, content verification and
/// delta application are all visitors.
///
/// Every entry is checked before its data is decompressed: path rules, entry type, duplicates and
/// the limits on entry count, entry size and total size (from the declared sizes, so a bomb is
/// refused at its header).
public final class ArchiveReader {
    private let archive: OpaquePointer
    private let input: ReaderInput
    private let limits: ExtractionLimits
    private var consumed = false

    /// Fails at once when the source is not zstd-compressed.
    public init(source: ByteSource, limits: ExtractionLimits = .sessionDirectory) throws {
        guard let archive = archive_read_new() else { fatalError("libarchive: out of memory") }
        self.archive = archive
        self.input = ReaderInput(source: source)
        self.limits = limits
        archive_read_support_filter_zstd(archive)
        archive_read_support_format_tar(archive)
        let status = archive_read_open(archive, Unmanaged.passUnretained(input).toOpaque(), nil, readFromSource, nil)
        if status != ARCHIVE_OK, let error = input.takeError() { throw error }
        if status != ARCHIVE_OK && input.isEmpty { throw ArchiveError(.truncated, detail: "empty payload") }
        try check(status, entry: nil)
        // A plain tar would also open (libarchive's "none" filter); the format says zstd.
        guard archive_filter_count(archive) == 2, archive_filter_code(archive, 0) == ARCHIVE_FILTER_ZSTD else {
            throw ArchiveError(.unsupportedFormat)
        }
    }

    deinit {
        archive_read_free(archive)
    }

    /// Calls `visit` for each entry in archive order. `data` streams the entry's contents and is
    /// valid only during the call; whatever the visitor leaves unread is read and discarded, so
    /// truncation is detected either way. Throws on the first refused entry, before visiting it.
    public func forEachEntry(_ visit: (ArchiveEntry, ArchiveEntryData) throws -> Void) throws {
        precondition(!consumed, "ArchiveReader.forEachEntry called twice")
        consumed = true
        var validator = EntryValidator(limits: limits)
        // Where the last entry's data (padded to 512-byte blocks) ends in the tar stream.
        var endOfLastEntry: Int64 = 0
        while true {
            var rawEntry: OpaquePointer?
            let status = inCLocale { archive_read_next_header(archive, &rawEntry) }
            if status == ARCHIVE_EOF {
                // libarchive accepts a tar that stops at an entry boundary without the two zero blocks
                // of the end-of-archive marker; we do not, so a cut archive cannot pass as a shorter one.
                guard archive_filter_bytes(archive, 0) >= endOfLastEntry + 512 else {
                    throw ArchiveError(.truncated, detail: "no end-of-archive marker")
                }
                return
            }
            try check(status, entry: nil)
            guard let rawEntry else { throw ArchiveError(.corrupt) }
            let entry = try validator.validate(rawEntry)
            let dataStart = archive_filter_bytes(archive, 0)
            let data = ArchiveEntryData(reader: self, entry: entry)
            defer { data.isValid = false }
            try visit(entry, data)
            try data.drain()
            endOfLastEntry = dataStart + (entry.size + 511) / 512 * 512
        }
    }

    fileprivate func readData(into buffer: UnsafeMutableRawBufferPointer, entry: String) throws -> Int {
        let count = archive_read_data(archive, buffer.baseAddress, buffer.count)
        if count < 0 { throw failure(entry: entry) }
        return count
    }

    /// Anything but ARCHIVE_OK fails: a warning means libarchive had to guess.
    private func check(_ status: Int32, entry: String?) throws {
        if status != ARCHIVE_OK { throw failure(entry: entry) }
    }

    /// A source error is rethrown as itself rather than as libarchive's message about it.
    private func failure(entry: String?) -> Error {
        if let error = input.takeError() { return error }
        let message = libarchiveMessage(archive)
        // libarchive has no error code for this; its messages say "Truncated tar archive",
        // "Truncated input file", etc.
        if message?.lowercased().contains("truncated") == true {
            return ArchiveError(.truncated, entry: entry, detail: message)
        }
        return ArchiveError(.corrupt, entry: entry, detail: message)
    }
}

/// The contents of the entry being visited.
public final class ArchiveEntryData: ByteSource {
    private let reader: ArchiveReader
    private let entry: ArchiveEntry
    fileprivate var isValid = true
    private var bytesRead: Int64 = 0

    fileprivate init(reader: ArchiveReader, entry: ArchiveEntry) {
        self.reader = reader
        self.entry = entry
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        precondition(isValid, "ArchiveEntryData read after its visit returned")
        let count = try reader.readData(into: buffer, entry: entry.path)
        bytesRead += Int64(count)
        if bytesRead > entry.size { throw ArchiveError(.corrupt, entry: entry.path, detail: "more data than declared") }
        if count == 0 && bytesRead < entry.size { throw ArchiveError(.truncated, entry: entry.path) }
        return count
    }
}

/// Applies the path, type, duplicate and limit rules to each header in turn.
private struct EntryValidator {
    let limits: ExtractionLimits
    private var entryCount = 0
    private var totalBytes: Int64 = 0
    private var seen: Set<NameKey> = []
    private var files: Set<NameKey> = []
    /// Directories implied by the paths seen so far: a file may not take one of these names.
    private var parents: Set<NameKey> = []

    init(limits: ExtractionLimits) {
        self.limits = limits
    }

    mutating func validate(_ rawEntry: OpaquePointer) throws -> ArchiveEntry {
        // The path's bytes as the archive holds them (read in the C locale, libarchive converts
        // nothing): a name of any bytes, as `FileName` maps it.
        guard let namePointer = archive_entry_pathname(rawEntry) else { throw ArchiveError(.unsafePath, entry: "") }
        let name = FileName.decode(UnsafeRawBufferPointer(start: namePointer, count: strlen(namePointer)))
        entryCount += 1
        guard entryCount <= limits.maxEntryCount else {
            throw ArchiveError(.tooManyEntries(limit: limits.maxEntryCount), entry: name)
        }
        let components = try ArchivePath.validatedComponents(of: name)
        let kind = try Self.kind(of: rawEntry, name: name)
        let path = components.joined(separator: "/")

        let pathBytes = NameKey(path)
        // Each directory the path goes through, as the path up to one of its slashes.
        let ancestors = pathBytes.bytes.indices.filter { pathBytes.bytes[$0] == UInt8(ascii: "/") }
            .map { NameKey(Array(pathBytes.bytes[..<$0])) }
        guard !ancestors.contains(where: files.contains), !(kind == .file && parents.contains(pathBytes)),
              seen.insert(pathBytes).inserted
        else {
            throw ArchiveError(.duplicateEntry, entry: name)
        }
        if kind == .file { files.insert(pathBytes) }
        parents.formUnion(ancestors)

        let size = archive_entry_size_is_set(rawEntry) != 0 ? archive_entry_size(rawEntry) : 0
        guard size >= 0 else { throw ArchiveError(.corrupt, entry: name, detail: "negative size") }
        guard size <= limits.maxEntryBytes else {
            throw ArchiveError(.entryTooLarge(limit: limits.maxEntryBytes), entry: name)
        }
        totalBytes += size
        guard totalBytes <= limits.maxTotalBytes else {
            throw ArchiveError(.totalSizeExceeded(limit: limits.maxTotalBytes), entry: name)
        }
        return ArchiveEntry(path: path, kind: kind, size: size, modificationTime: Int64(archive_entry_mtime(rawEntry)))
    }

    private static func kind(of rawEntry: OpaquePointer, name: String) throws -> ArchiveEntry.Kind {
        if archive_entry_hardlink(rawEntry) != nil {
            throw ArchiveError(.forbiddenEntryType("hard link"), entry: name)
        }
        let type: String
        switch mode_t(archive_entry_filetype(rawEntry)) {
        case S_IFREG: return .file
        case S_IFDIR: return .directory
        case S_IFLNK: type = "symbolic link"
        case S_IFCHR: type = "character device"
        case S_IFBLK: type = "block device"
        case S_IFIFO: type = "FIFO"
        case S_IFSOCK: type = "socket"
        default: type = "unknown"
        }
        throw ArchiveError(.forbiddenEntryType(type), entry: name)
    }
}

/// The libarchive client: what the read callback reaches through its context pointer.
private final class ReaderInput {
    let source: ByteSource
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: fileChunkSize, alignment: 16)
    private(set) var isEmpty = true
    private var error: Error?

    init(source: ByteSource) {
        self.source = source
    }

    deinit {
        buffer.deallocate()
    }

    func read() -> Int {
        do {
            let count = try source.read(into: buffer)
            if count > 0 { isEmpty = false }
            return count
        } catch {
            self.error = error
            return -1
        }
    }

    func takeError() -> Error? {
        defer { error = nil }
        return error
    }
}

private func readFromSource(
    _: OpaquePointer?, context: UnsafeMutableRawPointer?, bufferPointer: UnsafeMutablePointer<UnsafeRawPointer?>?
) -> la_ssize_t {
    let input = Unmanaged<ReaderInput>.fromOpaque(context!).takeUnretainedValue()
    bufferPointer?.pointee = UnsafeRawPointer(input.buffer.baseAddress)
    return input.read()
}

func libarchiveMessage(_ archive: OpaquePointer) -> String? {
    archive_error_string(archive).map { String(cString: $0) }
}
