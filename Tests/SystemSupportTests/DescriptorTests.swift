import Glibc
import SystemSupport
import Testing

@Suite struct DescriptorTests {
    /// A fresh empty directory, removed with everything in it after `body`.
    func withTemporaryDirectory(_ body: (String) throws -> Void) throws {
        var template = Array("/tmp/system-support-XXXXXX".utf8CString)
        let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        defer { _ = system("rm -rf '\(path)'") }
        try body(path)
    }

    func create(_ path: [UInt8]) {
        let descriptor = (path + [0]).withUnsafeBufferPointer { bytes in
            bytes.withMemoryRebound(to: CChar.self) { open($0.baseAddress!, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600) }
        }
        #expect(descriptor >= 0)
        close(descriptor)
    }

    @Test func listsEntriesTypedWithoutFollowingSymlinks() throws {
        try withTemporaryDirectory { root in
            create(Array("\(root)/file".utf8))
            #expect(mkdir("\(root)/directory", 0o700) == 0)
            #expect(symlink("\(root)/directory", "\(root)/link-to-directory") == 0)
            #expect(symlink("\(root)/file", "\(root)/link-to-file") == 0)
            // Not UTF-8: names are bytes.
            let oddName: [UInt8] = [0x66, 0xff, 0xfe, 0x0a]
            create(Array("\(root)/".utf8) + oddName)

            let entries = try root.withCString { try FileDescriptor.directoryEntries(atPath: $0, displayedAs: root) }
            let byName = Dictionary(uniqueKeysWithValues: entries.map { ($0.name, $0.kind) })
            #expect(byName.count == 5)
            #expect(byName[Array("file".utf8)] == .file)
            #expect(byName[Array("directory".utf8)] == .directory)
            #expect(byName[Array("link-to-directory".utf8)] == .other)
            #expect(byName[Array("link-to-file".utf8)] == .other)
            #expect(byName[oddName] == .file)
        }
    }

    /// Enough entries to fill readdir's buffer several times, with names of every length, so
    /// some record ends right at the buffer's end: reading a name past its record (the whole
    /// `d_name` array) crashed `watch` there, and an address-sanitized run reports it on any.
    @Test func listsEveryEntryOfADirectoryLargerThanReaddirsBuffer() throws {
        try withTemporaryDirectory { root in
            let names = (0..<3_000).map { index in Array("\(index)-".utf8) + Array(repeating: UInt8(ascii: "n"), count: index % 200) }
            for name in names { create(Array("\(root)/".utf8) + name) }
            let entries = try root.withCString { try FileDescriptor.directoryEntries(atPath: $0, displayedAs: root) }
            #expect(Set(entries.map(\.name)) == Set(names))
            #expect(entries.count == names.count)
        }
    }

    @Test func listsTheSameDescriptorTwice() throws {
        try withTemporaryDirectory { root in
            create(Array("\(root)/a".utf8))
            let raw = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            let directory = FileDescriptor(owning: raw, path: root)
            let first = try directory.directoryEntries().map(\.name)
            let second = try directory.directoryEntries().map(\.name)
            #expect(first == [Array("a".utf8)])
            #expect(second == first)
        }
    }

    @Test func reportsAMissingDirectoryAsOpendir() {
        let path = "/nonexistent/system-support"
        #expect(throws: SystemError("opendir", path: path, errno: ENOENT)) {
            try path.withCString { try FileDescriptor.directoryEntries(atPath: $0, displayedAs: path) }
        }
    }

    @Test func closesItsDescriptorWhenReleased() throws {
        var (first, second): (FileDescriptor?, FileDescriptor) = try FileDescriptor.socketPair(
            type: Int32(SOCK_STREAM.rawValue), path: "test")
        #expect(fcntl(first!.raw, F_GETFD) & FD_CLOEXEC != 0)
        var byte: UInt8 = 1
        #expect(send(second.raw, &byte, 1, Int32(MSG_NOSIGNAL)) == 1)
        first = nil
        // The other end closed: a socket pair has no reader left. (Checking the number itself
        // would race with tests running beside this one, which may be given it again.)
        #expect(send(second.raw, &byte, 1, Int32(MSG_NOSIGNAL)) == -1 && errno == EPIPE)
    }

    /// What is written at an offset reads back whole; a read running past the end returns what
    /// there was (an early end, told by the count), and one at the end returns nothing.
    @Test func writesAllAndReadsFullyAtOffsets() throws {
        try withTemporaryDirectory { root in
            let path = "\(root)/file"
            let file = FileDescriptor(owning: open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600), path: path)
            let bytes = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7919 >> 3) }
            try bytes.withUnsafeBytes { try file.writeAll($0, at: 10) }

            var read = [UInt8](repeating: 0, count: bytes.count)
            #expect(try read.withUnsafeMutableBytes { try file.readFully(into: $0, at: 10) } == bytes.count)
            #expect(read == bytes)
            var tail = [UInt8](repeating: 0, count: 100)
            #expect(try tail.withUnsafeMutableBytes { try file.readFully(into: $0, at: Int64(10 + bytes.count - 40)) } == 40)
            #expect(tail[..<40] == bytes[(bytes.count - 40)...])
            #expect(try tail.withUnsafeMutableBytes { try file.readFully(into: $0, at: Int64(10 + bytes.count)) } == 0)
            var start = [UInt8](repeating: 1, count: 10)
            #expect(try start.withUnsafeMutableBytes { try file.readFully(into: $0, at: 0) } == 10)
            #expect(start == [UInt8](repeating: 0, count: 10))
        }
    }

    @Test func reportsAFailedReadWithItsPath() throws {
        try withTemporaryDirectory { root in
            let directory = FileDescriptor(owning: open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC), path: root)
            var buffer = [UInt8](repeating: 0, count: 16)
            #expect(throws: SystemError("read", path: root, errno: EISDIR)) {
                try buffer.withUnsafeMutableBytes { _ = try directory.readFully(into: $0, at: 0) }
            }
        }
    }
}
