import Foundation
import FuzzSupport
import SessionArchive
import SessionCrypto
@testable import SyncEngine
import SystemSupport

// libFuzzer target: the path every restore takes (`SessionRestorer.replace`: decrypt, unpack into
// a staging directory, check against the manifest, swap) over any snapshot payload, which the
// harness encrypts as a base snapshot object, with the production limits. The oracle is the
// restore contract: a refused payload leaves the target exactly as it was; an accepted one leaves
// only regular files (0600) and directories (0700) in it; either way nothing is left or written
// beside the target. (`debug` builds, which scripts/fuzz makes, allow the @testable import.)

/// A private directory on tmpfs, where the restore's syncfs costs nothing; removed at exit.
let workspace: String = {
    var template = Array("/dev/shm/sync-agent-fuzz-archive.XXXXXX".utf8CString)
    guard let path = mkdtemp(&template) else { fatalError("mkdtemp: \(String(cString: strerror(errno)))") }
    return String(cString: path)
}()
atexit { try? FileManager.default.removeItem(atPath: workspace) }
let target = workspace + "/sessions/fuzz"
let marker = (name: "marker.json", contents: Data("{\"before\":true}".utf8))
/// A fixed key, so that the seeds' manifests carry content ids under the key the harness encrypts with.
let keyring = Keyring(primary: try! EncryptionKey(parsing: String(repeating: "5a", count: 32)))
let session = SessionID("fuzz")!
let entry = SnapshotEntry(
    id: SnapshotID(sequence: 1, generation: 1, tag: SnapshotTag("00000000000000f0")!), kind: .base, parentTag: nil, size: 0,
    lastModified: nil)
let identity = SessionLayout.identity(session, objectName: SessionLayout.snapshotName(entry))
// The store is never read: the harness hands the object over as if downloaded.
let restorer = SessionRestorer(sessionStore: SessionStore(store: try! FileSystemStore(root: workspace + "/store"), keyring: keyring))

func expectRestoreContract(accepted: Bool) {
    let files = FileManager.default
    precondition(try! files.contentsOfDirectory(atPath: workspace + "/sessions") == ["fuzz"], "something was left beside the target")
    guard accepted else {
        precondition(try! files.contentsOfDirectory(atPath: target) == [marker.name], "a refused payload changed the target")
        precondition(files.contents(atPath: "\(target)/\(marker.name)") == marker.contents, "a refused payload changed the target")
        return
    }
    walk(target) { path, mode in
        switch mode & S_IFMT {
        case S_IFREG: precondition(mode & 0o7777 == 0o600, "\(FileName.displayed(path)) restored with mode \(String(mode, radix: 8))")
        case S_IFDIR: precondition(mode & 0o7777 == 0o700, "\(FileName.displayed(path)) restored with mode \(String(mode, radix: 8))")
        default: preconditionFailure("\(FileName.displayed(path)) restored with mode \(String(mode, radix: 8))")
        }
    }
}

/// Calls `visit` with the path and lstat mode of everything below `directory`, names of any
/// bytes included (FileManager would mangle those that are not UTF-8).
func walk(_ directory: String, _ visit: (String, mode_t) -> Void) {
    guard let stream = FileName.withPlatformPath(directory, { opendir($0) }) else { preconditionFailure("opendir \(directory)") }
    defer { closedir(stream) }
    while let entry = readdir(stream) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { FileName.decode($0.prefix { $0 != 0 }) }
        if name == "." || name == ".." { continue }
        let path = directory + "/" + name
        var status = stat()
        precondition(FileName.withPlatformPath(path) { lstat($0, &status) } == 0, "lstat \(FileName.displayed(path))")
        visit(path, status.st_mode)
        if status.st_mode & S_IFMT == S_IFDIR { walk(path, visit) }
    }
}

/// The payload of a base snapshot as the real writer makes it, under the harness's key: a few
/// files of fixtures/sessions/small, one three directories deep and one named with bytes that
/// are not UTF-8, then the manifest. The hostile payloads of fixtures/hostile are copied beside
/// it by scripts/fuzz.
func writeSeeds(into directory: String) throws {
    let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("fixtures").path
    let session = workspace + "/seed-session"
    try FileManager.default.createDirectory(atPath: session + "/keys/a/b", withIntermediateDirectories: true)
    for name in try FileManager.default.contentsOfDirectory(atPath: "\(fixtures)/sessions/small").sorted().prefix(4) {
        try FileManager.default.copyItem(atPath: "\(fixtures)/sessions/small/\(name)", toPath: "\(session)/\(name)")
    }
    try Data("{\"nested\":true}".utf8).write(to: URL(fileURLWithPath: session + "/keys/a/b/nested.json"))
    let notUTF8 = FileName.decode(Array("keys/".utf8) + [0xFF, 0xFE] + Array(".bin".utf8))
    let descriptor = FileName.withPlatformPath("\(session)/\(notUTF8)") { open($0, O_WRONLY | O_CREAT | O_EXCL, 0o600) }
    precondition(descriptor >= 0 && write(descriptor, "raw", 3) == 3)
    close(descriptor)

    let object = BufferSink()
    _ = try SnapshotWriter(keyring: keyring, compressionLevel: 3, largeBasesOnWorkerThread: false).write(
        session: SessionID("fuzz")!, directory: session, previous: SessionState(), kind: .base, id: entry.id, parent: nil,
        openSink: { object })
    let payload = BufferSink()
    try DecryptingSource(keyring: keyring, identity: identity, upstream: BufferSource(object.bytes)).copy(to: payload)
    try writeSeed(payload.bytes, named: "snapshot.tar.zst", into: directory)
}

runFuzzer(writeSeeds: writeSeeds) { payload in
    let files = FileManager.default
    try? files.removeItem(atPath: target)
    try! files.createDirectory(atPath: target, withIntermediateDirectories: true)
    precondition(files.createFile(atPath: "\(target)/\(marker.name)", contents: marker.contents))
    let object = BufferSink()
    let encryption = EncryptingSink(key: keyring.primary, identity: identity, downstream: object)
    try! payload.withUnsafeBytes { try encryption.write($0) }
    try! encryption.finish()
    let accepted = (try? restorer.replace(target, session: session, chain: [entry], objects: [.inMemory(object.bytes)])) != nil
    expectRestoreContract(accepted: accepted)
}
