import CArchive
import Glibc
import SystemSupport

/// Writes a zstd-compressed POSIX pax tar to a `ByteSink`, one entry at a time, streaming file
/// contents in chunks so memory stays bounded whatever the archive size.
///
/// Entries carry no owner, group or host permissions: files are stored as 0600 and directories as
/// 0700 with uid/gid 0 and empty user/group names, so an archive reveals nothing about the host and
/// the same files and times, with the same expected size, always give the same bytes. The caller
/// chooses the entry order (sorted, for reproducibility).
public final class ArchiveWriter {
    /// Whether the archive can hold an entry at `relativePath` (the reader's path rules: at most
    /// 1,024 bytes, components of 1 to 255). A caller that would rather leave one file out than
    /// fail the whole archive asks first.
    public static func accepts(relativePath: String) -> Bool { ArchivePath.isSafe(relativePath) }

    private let archive: OpaquePointer
    private let output: WriterOutput
    /// The compression layer: libarchive writes the tar, zstd here (contexts kept between archives).
    private let compression: ZstdCompressingSink
    /// One header and one read buffer for every entry: a snapshot is mostly files of a few
    /// hundred bytes, where allocating either per file costs as much as the file. The buffer
    /// only when files are read from descriptors (the agent hands over contents it has read).
    private let entry: OpaquePointer
    private var readBuffer: UnsafeMutableRawBufferPointer?
    private var finished = false

    /// An archive expected to hold at least this many bytes of file data is compressed on a
    /// zstd worker thread, overlapping compression with reading files, tar framing and
    /// encryption on the calling thread, as in `tar | zstd`. zstd hands its worker whole jobs of
    /// several MiB (four windows at level 3), so a smaller archive would gain nothing but a
    /// thread and the job buffers, a few MiB per archive (~35 MB for a large one: the sidecar,
    /// which holds many sessions, does not ask for it; a one-shot `backup` does).
    public static let workerThreadThreshold: Int64 = 32 << 20

    /// `compressionLevel` is a zstd level, 1 (fastest) to 22 (smallest). `expectedSize`: roughly
    /// how many bytes the tar will be (0: unknown); it sizes zstd's window and tables and, where
    /// `workerThreadAllowed`, picks the compression mode. The output is one zstd frame either
    /// way, which any zstd decoder reads.
    public init(
        sink: ByteSink, compressionLevel: Int = 3, expectedSize: Int64 = 0, workerThreadAllowed: Bool = false
    ) throws {
        guard (1...22).contains(compressionLevel) else {
            throw ArchiveError(.invalidCompressionLevel(compressionLevel))
        }
        // Before libarchive's handles, which nothing would free if this threw.
        compression = try ZstdCompressingSink(
            level: compressionLevel, workerThread: workerThreadAllowed && expectedSize >= Self.workerThreadThreshold,
            sizeHint: expectedSize, downstream: sink)
        guard let archive = archive_write_new(), let entry = archive_entry_new2(archive) else {
            fatalError("libarchive: out of memory")
        }
        self.archive = archive
        self.entry = entry
        self.output = WriterOutput(sink: compression)
        try check(archive_write_set_format_pax(archive))
        // No zero padding after the tar's end marker, so nothing follows the zstd frame either.
        try check(archive_write_set_bytes_in_last_block(archive, 1))
        try check(archive_write_open(archive, Unmanaged.passUnretained(output).toOpaque(), nil, writeToSink, nil))
    }

    deinit {
        // Abandoned without finish(): free without emitting an end-of-archive marker, so the sink
        // never receives something that looks like a complete archive.
        output.isDiscarding = true
        archive_entry_free(entry)
        archive_write_free(archive)
        readBuffer?.deallocate()
    }

    /// Adds a regular file whose contents are read from `fileDescriptor` (from its current offset).
    /// Reads exactly `size` bytes; if the file has become shorter, throws `sourceChanged`.
    public func addFile(relativePath: String, fileDescriptor: Int32, size: Int64, modificationTime: Int64) throws {
        try addEntry(relativePath: relativePath, type: S_IFREG, permissions: 0o600, size: size, modificationTime: modificationTime)
        let buffer = readBuffer ?? UnsafeMutableRawBufferPointer.allocate(byteCount: fileChunkSize, alignment: 16)
        readBuffer = buffer
        try readChunks(of: fileDescriptor, size: size, into: buffer, entry: relativePath) { chunk in
            try writeData(chunk, entry: relativePath)
        }
        try finishEntry(relativePath)
    }

    public func addFile(relativePath: String, contents: [UInt8], modificationTime: Int64) throws {
        try addFile(relativePath: relativePath, size: Int64(contents.count), modificationTime: modificationTime) { write in
            try contents.withUnsafeBytes { try write($0) }
        }
    }

    /// Adds a regular file of `size` bytes that `produce` writes, in as many pieces as it likes,
    /// through the function it is given: a large entry (a manifest) need not be in memory whole.
    public func addFile(
        relativePath: String, size: Int64, modificationTime: Int64,
        produce: ((UnsafeRawBufferPointer) throws -> Void) throws -> Void
    ) throws {
        try addEntry(relativePath: relativePath, type: S_IFREG, permissions: 0o600, size: size, modificationTime: modificationTime)
        var written: Int64 = 0
        try produce { bytes in
            written += Int64(bytes.count)
            guard written <= size else { throw ArchiveError(.writeFailed, entry: relativePath, detail: "data longer than the entry size") }
            var offset = 0
            while offset < bytes.count {
                let end = min(offset + fileChunkSize, bytes.count)
                try writeData(UnsafeRawBufferPointer(rebasing: bytes[offset..<end]), entry: relativePath)
                offset = end
            }
        }
        guard written == size else { throw ArchiveError(.writeFailed, entry: relativePath, detail: "data shorter than the entry size") }
        try finishEntry(relativePath)
    }

    public func addDirectory(relativePath: String, modificationTime: Int64) throws {
        try addEntry(relativePath: relativePath, type: S_IFDIR, permissions: 0o700, size: 0, modificationTime: modificationTime)
        try finishEntry(relativePath)
    }

    /// Writes the tar end-of-archive marker and ends the zstd frame. The archive is complete only
    /// after this returns.
    public func finish() throws {
        guard !finished else { return }
        finished = true
        try check(archive_write_close(archive))
        try compression.finish()
    }

    private func addEntry(relativePath: String, type: mode_t, permissions: mode_t, size: Int64, modificationTime: Int64) throws {
        precondition(!finished, "ArchiveWriter used after finish()")
        guard ArchivePath.isSafe(relativePath), relativePath.utf8.last != UInt8(ascii: "/") else {
            throw ArchiveError(.unsafePath, entry: relativePath)
        }
        archive_entry_clear(entry)
        // The name's own bytes, never converted (FORMAT.md "Names"): libarchive's conversions
        // depend on the locale, and the UTF-8 one returns NULL for any name that is not ASCII in
        // the C locale the agent runs in (a crash in the pax writer's strlen).
        FileName.withPlatformPath(relativePath) { archive_entry_copy_pathname(entry, $0) }
        archive_entry_set_filetype(entry, UInt32(type))
        archive_entry_set_perm(entry, permissions)
        archive_entry_set_size(entry, size)
        archive_entry_set_mtime(entry, time_t(modificationTime), 0)
        archive_entry_set_uid(entry, 0)
        archive_entry_set_gid(entry, 0)
        let status = inCLocale { archive_write_header(archive, entry) }
        // A name with a byte above 0x7F cannot be translated from the C locale to UTF-8: the pax
        // writer says so with a warning and stores the name's bytes as they are, under
        // `hdrcharset=BINARY`, which is the documented format. Any other warning is a failure.
        if status == ARCHIVE_WARN, relativePath.utf8.contains(where: { $0 >= 0x80 }) { return }
        try check(status, entry: relativePath)
    }

    private func writeData(_ chunk: UnsafeRawBufferPointer, entry: String) throws {
        var remaining = chunk
        while !remaining.isEmpty {
            let written = archive_write_data(archive, remaining.baseAddress, remaining.count)
            if written < 0 { throw failure(Int32(truncatingIfNeeded: written), entry: entry) }
            // libarchive silently drops data past the size in the header; we never write any.
            guard written > 0 else { throw ArchiveError(.writeFailed, entry: entry, detail: "data longer than the entry size") }
            remaining = UnsafeRawBufferPointer(rebasing: remaining[written...])
        }
    }

    private func finishEntry(_ relativePath: String) throws {
        try check(archive_write_finish_entry(archive), entry: relativePath)
    }

    /// Anything but ARCHIVE_OK fails: a warning means libarchive changed what we asked for.
    private func check(_ status: Int32, entry: String? = nil) throws {
        if status != ARCHIVE_OK { throw failure(status, entry: entry) }
    }

    /// A sink error is rethrown as itself rather than as libarchive's message about it.
    private func failure(_ status: Int32, entry: String?) -> Error {
        output.takeError() ?? ArchiveError(.writeFailed, entry: entry, detail: libarchiveMessage(archive))
    }
}

/// The libarchive client: what the write callback reaches through its context pointer.
private final class WriterOutput {
    let sink: ByteSink
    var isDiscarding = false
    private var error: Error?

    init(sink: ByteSink) {
        self.sink = sink
    }

    func write(_ bytes: UnsafeRawBufferPointer) -> Int {
        if isDiscarding { return bytes.count }
        do {
            try sink.write(bytes)
            return bytes.count
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

private func writeToSink(_: OpaquePointer?, context: UnsafeMutableRawPointer?, buffer: UnsafeRawPointer?, length: Int) -> la_ssize_t {
    let output = Unmanaged<WriterOutput>.fromOpaque(context!).takeUnretainedValue()
    return output.write(UnsafeRawBufferPointer(start: buffer, count: length))
}

/// The C locale, in which libarchive reads every name as bytes it cannot translate: a name with a
/// byte above 0x7F is then stored and read as those bytes (`hdrcharset=BINARY`), never converted.
/// In a UTF-8 locale libarchive would rewrite some names that are not UTF-8 (a surrogate pair
/// encoded as two 3-byte sequences becomes one 4-byte sequence) without a word. Swift never calls
/// setlocale, so the process is in the C locale already; this holds even if something does.
nonisolated(unsafe) private let cLocale = newlocale(LC_CTYPE_MASK, "C", nil)

/// Runs `body` (libarchive calls that may convert names) with this thread in the C locale.
func inCLocale<Result>(_ body: () throws -> Result) rethrows -> Result {
    let previous = uselocale(cLocale)
    defer { uselocale(previous) }
    return try body()
}
