import Glibc
import SessionArchive
import SystemSupport

/// inotify event bits, with the kernel's values (include/uapi/linux/inotify.h): some of the
/// composite macros are not imported into Swift, and one place for all of them keeps the types uniform.
struct InotifyMask: OptionSet, Hashable, Sendable {
    let rawValue: UInt32

    static let modify = InotifyMask(rawValue: 0x0000_0002)
    static let attributes = InotifyMask(rawValue: 0x0000_0004)
    static let closeWrite = InotifyMask(rawValue: 0x0000_0008)
    static let movedFrom = InotifyMask(rawValue: 0x0000_0040)
    static let movedTo = InotifyMask(rawValue: 0x0000_0080)
    static let create = InotifyMask(rawValue: 0x0000_0100)
    static let delete = InotifyMask(rawValue: 0x0000_0200)
    static let deleteSelf = InotifyMask(rawValue: 0x0000_0400)
    static let moveSelf = InotifyMask(rawValue: 0x0000_0800)
    static let unmount = InotifyMask(rawValue: 0x0000_2000)
    static let queueOverflow = InotifyMask(rawValue: 0x0000_4000)
    static let ignored = InotifyMask(rawValue: 0x0000_8000)
    static let onlyDirectory = InotifyMask(rawValue: 0x0100_0000)
    static let dontFollow = InotifyMask(rawValue: 0x0200_0000)
    static let excludeUnlinked = InotifyMask(rawValue: 0x0400_0000)
    static let isDirectory = InotifyMask(rawValue: 0x4000_0000)
}

/// One decoded `struct inotify_event`.
struct InotifyEvent: Equatable, Sendable {
    /// -1 for IN_Q_OVERFLOW, which belongs to no watch.
    var watch: Int32
    var mask: InotifyMask
    var cookie: UInt32
    /// The entry's name inside the watched directory (a `FileName` string); nil for events on the
    /// directory itself.
    var name: String?
}

/// The inotify instance: one non-blocking, close-on-exec descriptor, closed with its owner. All
/// the pointer work on inotify's variable-length records is in this file.
final class Inotify {
    let descriptor: FileDescriptor
    private var buffer: [UInt8]
    /// Tests only: `fs.inotify.max_user_watches` for this instance, which `addWatch` then enforces
    /// as the kernel does (ENOSPC for a new watch past it), without touching the system's limit.
    private let watchLimit: Int?
    private var watches: Set<Int32> = []

    init(watchLimit: Int? = nil) throws(WatcherError) {
        self.watchLimit = watchLimit
        let descriptor = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard descriptor >= 0 else { throw .lastSystemError("inotify_init1", path: "inotify") }
        self.descriptor = FileDescriptor(owning: descriptor, path: "inotify")
        // Room for many records: each is 16 bytes plus a name of at most NAME_MAX + 1 bytes, padded.
        buffer = [UInt8](repeating: 0, count: 64 * 1024)
    }

    /// Adds a watch, or returns the existing one when `path` is an inode already watched
    /// (its mask is then replaced by `mask`).
    func addWatch(_ path: String, mask: InotifyMask) throws(WatcherError) -> Int32 {
        let watch = FileName.withPlatformPath(path) { inotify_add_watch(descriptor.raw, $0, mask.rawValue) }
        guard watch >= 0 else { throw .lastSystemError("inotify_add_watch", path: path) }
        if let watchLimit, !watches.contains(watch), watches.count >= watchLimit {
            inotify_rm_watch(descriptor.raw, watch)
            throw WatcherError(.watchLimitReached, path: path)
        }
        watches.insert(watch)
        return watch
    }

    /// Removes a watch; the kernel then queues IN_IGNORED for it. A watch the kernel already
    /// dropped (its directory is gone) is no error.
    func removeWatch(_ watch: Int32) {
        _ = inotify_rm_watch(descriptor.raw, watch)
        watches.remove(watch)
    }

    /// The events of one read(2), at most a buffer's worth, so that a flood of events cannot keep
    /// the caller from its other work; empty when none is queued (the descriptor never blocks).
    func readEvents() throws(WatcherError) -> [InotifyEvent] {
        try readOnce()?.events ?? []
    }

    /// Every event queued when called, however many reads that takes, and none queued after:
    /// a caller catching up reads to that point, and a writer going on cannot keep it reading.
    /// (A read can decode to no event at all, every one dropped as a write in place: the count
    /// of bytes, not the events, says when the queue is read.)
    func readQueued() throws(WatcherError) -> [InotifyEvent] {
        var queued: Int32 = 0
        guard ioctl(descriptor.raw, UInt(FIONREAD), &queued) == 0 else { throw .lastSystemError("ioctl FIONREAD", path: "inotify") }
        var events: [InotifyEvent] = []
        var remaining = Int(queued)
        while remaining > 0, let read = try readOnce(), read.byteCount > 0 {
            events += read.events
            remaining -= read.byteCount
        }
        return events
    }

    /// One read(2): its events and how many bytes it took; nil when nothing is queued.
    private func readOnce() throws(WatcherError) -> (events: [InotifyEvent], byteCount: Int)? {
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor.raw, $0.baseAddress, $0.count) }
            if count >= 0 {
                return (buffer.withUnsafeBytes { Inotify.decode(UnsafeRawBufferPointer(rebasing: $0[..<count])) }, count)
            }
            if errno == EAGAIN || errno == EWOULDBLOCK { return nil }
            if errno != EINTR { throw .lastSystemError("read", path: "inotify") }
        }
    }

    /// Decodes the records of one read(2). The kernel only returns whole records; a partial one
    /// at the end (never expected) is dropped rather than read past the buffer.
    static func decode(_ bytes: UnsafeRawBufferPointer) -> [InotifyEvent] {
        let headerSize = MemoryLayout<inotify_event>.size
        var events: [InotifyEvent] = []
        var offset = 0
        while offset + headerSize <= bytes.count {
            let header = bytes.loadUnaligned(fromByteOffset: offset, as: inotify_event.self)
            let nameLength = Int(header.len)
            guard offset + headerSize + nameLength <= bytes.count else { break }
            let nameBytes = bytes[(offset + headerSize)..<(offset + headerSize + nameLength)]
            // The name is NUL-terminated and padded with further NULs.
            let name = nameBytes.prefix { $0 != 0 }
            let mask = InotifyMask(rawValue: header.mask)
            offset += headerSize + nameLength
            // A write in place matters only to a SQLite database's WAL or journal (a commit, see
            // `WatchLoop.handle`); it is the busiest event (every write(2) of every file), and is
            // dropped here, before its name becomes a String.
            if mask == .modify, !SQLiteDatabase.commitSuffixes.contains(where: { name.reversed().starts(with: $0.utf8.reversed()) }) {
                continue
            }
            events.append(
                InotifyEvent(
                    watch: header.wd,
                    mask: mask,
                    cookie: header.cookie,
                    name: name.isEmpty ? nil : FileName.decode(name)
                ))
        }
        return events
    }

    /// Encodes events as the kernel would (for tests of the decoding and handling paths).
    static func encode(_ events: [InotifyEvent]) -> [UInt8] {
        var bytes: [UInt8] = []
        for event in events {
            var name = FileName.bytes(of: event.name ?? "")
            if !name.isEmpty {
                name.append(0)
                name += [UInt8](repeating: 0, count: (16 - name.count % 16) % 16)
            }
            var header = inotify_event()
            header.wd = event.watch
            header.mask = event.mask.rawValue
            header.cookie = event.cookie
            header.len = UInt32(name.count)
            withUnsafeBytes(of: &header) { bytes += $0 }
            bytes += name
        }
        return bytes
    }
}
