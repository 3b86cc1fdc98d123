import Foundation
import Glibc
import Synchronization
@testable import SyncEngine
import TestSupport
import Testing

@Suite("StableFileReader")
struct StableFileReaderTests {
    @Test func completeJSONIsStableWithItsState() throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("creds.json")
        try write(#"{"a":1,"b":[true,null,"x"]}"#, to: path)
        chmod(path, 0o600)
        guard case .stable(let file) = try StableFileReader().read(path) else {
            Issue.record("expected a stable read")
            return
        }
        #expect(file.bytes == Array(#"{"a":1,"b":[true,null,"x"]}"#.utf8))
        #expect(file.state == SessionFiles.fileState(path))
        #expect(file.state.size == Int64(file.bytes.count))
        #expect(file.state.mode == 0o600)
    }

    @Test func tornOrEmptyJSONIsInvalid() throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("creds.json")
        for torn in [#"{"a":"#, #"{"a":1,"b""#, #"{"a":1}}"#, #"[1,2"#, ""] {
            try write(torn, to: path)
            let result = try StableFileReader().read(path)
            guard case .invalidJSON(let state) = result else {
                Issue.record("\(String(reflecting: torn)) read as \(result)")
                continue
            }
            #expect(state.size == Int64(torn.utf8.count))
        }
    }

    @Test func nonJSONFilesAreTakenAsTheyAre() throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("blob.bin")
        let bytes: [UInt8] = Array(#"{"a":"#.utf8) + [0, 0xff]
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(try StableFileReader().read(path) == .stable(StableFile(bytes: bytes, state: SessionFiles.fileState(path)!)))
        try write("", to: path)
        guard case .stable(let empty) = try StableFileReader().read(path) else {
            Issue.record("an empty non-JSON file must be stable")
            return
        }
        #expect(empty.bytes.isEmpty)
    }

    @Test func aFileRewrittenDuringTheReadIsUnstable() throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("session-1.json")
        try write(#"{"version":1}"#, to: path)
        var reader = StableFileReader()
        reader.afterRead = { try? write(#"{"version":22}"#, to: $0) }
        #expect(try reader.read(path) == .unstable)

        // Replaced by another file (renamed over it) of the same size: the inode tells.
        reader.afterRead = { path in
            try? write(#"{"version":33}"#, to: path + ".new")
            rename(path + ".new", path)
        }
        #expect(try reader.read(path) == .unstable)

        reader.afterRead = { unlink($0) }
        #expect(try reader.read(path) == .unstable)
        #expect(try reader.read(path) == .missing)
    }

    /// A writer rewrites the file in place (O_TRUNC, then the content in two writes, no fsync) as
    /// fast as it can while the reader reads: every stable read is one of the complete versions.
    @Test func aHammeredFileOnlyEverReadsAsACompleteVersion() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("pre-key-7.json")
        let versions = (0..<8).map { index in
            "{\"keyId\":\(index),\"padding\":\"" + String(repeating: "x", count: 1000 * (index + 1)) + "\"}"
        }
        try write(versions[0], to: path)
        let stop = Atomic(false)
        let writer = Task.detached {
            var index = 0
            while !stop.load(ordering: .relaxed) {
                index = (index + 1) % versions.count
                let bytes = Array(versions[index].utf8)
                let descriptor = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC)
                guard descriptor >= 0 else { continue }
                let half = bytes.count / 2
                bytes.withUnsafeBytes { buffer in
                    _ = Glibc.write(descriptor, buffer.baseAddress, half)
                    _ = Glibc.write(descriptor, buffer.baseAddress! + half, buffer.count - half)
                }
                close(descriptor)
            }
        }
        let complete = Set(versions.map { Array($0.utf8) })
        var results: [String: Int] = [:]
        for _ in 0..<3000 {
            let result = try StableFileReader().read(path)
            switch result {
            case .stable(let file):
                #expect(complete.contains(file.bytes))
                results["stable", default: 0] += 1
            case .unstable: results["unstable", default: 0] += 1
            case .invalidJSON: results["invalidJSON", default: 0] += 1
            case .missing: Issue.record("the file never disappears")
            }
        }
        stop.store(true, ordering: .relaxed)
        await writer.value
        print("hammered reads:", results.sorted { $0.key < $1.key })
    }

    @Test func symlinksAndSpecialFilesAreRefused() throws {
        let directory = try TemporaryDirectory()
        try write("{}", to: directory.file("target.json"))
        symlink(directory.file("target.json"), directory.file("link.json"))
        mkfifo(directory.file("fifo.json"), 0o600)
        for name in ["link.json", "fifo.json", "."] {
            let error = #expect(throws: WatcherError.self) { try StableFileReader().read(directory.file(name)) }
            #expect(error?.reason == .notRegularFile)
            #expect(error?.description.contains("not a regular file") == true)
        }
    }

    @Test func filesPastTheCapAreRefused() throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("big.bin")
        try Data(count: 4097).write(to: URL(fileURLWithPath: path))
        let error = #expect(throws: WatcherError.self) { try StableFileReader(maxFileSize: 4096).read(path) }
        #expect(error?.reason == .fileTooLarge(limit: 4096))
        #expect(error?.description.contains("4096") == true)
        try Data(count: 4096).write(to: URL(fileURLWithPath: path))
        guard case .stable(let file) = try StableFileReader(maxFileSize: 4096).read(path) else {
            Issue.record("a file of exactly the cap is read")
            return
        }
        #expect(file.bytes.count == 4096)
    }

    @Test func scanListsRegularFilesAtAnyDepthWithoutTemporaries() throws {
        let directory = try TemporaryDirectory()
        let names = [
            "creds.json", "pre-key-1.json", "a.tmp", "b.swp", "c~", ".#d", ".hidden", "sub/x.json", "sub/y.tmp",
            "sub/deeper/z.json", "sub/deeper/.hidden/v.json", ".dot/w.json",
        ]
        for name in names {
            try FileManager.default.createDirectory(
                atPath: (directory.file(name) as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try write("{}", to: directory.file(name))
        }
        symlink(directory.file("creds.json"), directory.file("link.json"))
        let files = try SessionFiles.scan(sessionDirectory: directory.path)
        #expect(files.map(\.name) == ["creds.json", "pre-key-1.json", "sub/deeper/z.json", "sub/x.json"])
        #expect(files.first?.state == SessionFiles.fileState(directory.file("creds.json")))

        #expect(try SessionFiles.sessionIDs(inRoot: directory.path).map(\.rawValue) == ["sub"])
        let error = #expect(throws: WatcherError.self) { try SessionFiles.scan(sessionDirectory: directory.file("missing")) }
        #expect(error?.description.contains("missing") == true)
    }
}
