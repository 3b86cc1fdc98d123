import Crypto
import Foundation
import FuzzSupport
import SessionArchive

// libFuzzer target: ArchiveExtractor.restore over arbitrary bytes, with the production limits.
// The oracle is the restore contract: a refused archive leaves the target exactly as it was; an
// accepted one leaves only regular files (0600) and directories (0700) in it; either way nothing
// is left or written beside the target.

/// A private directory on tmpfs, where the restore's syncfs costs nothing; removed at exit.
let workspace: String = {
    var template = Array("/dev/shm/sync-agent-fuzz-archive.XXXXXX".utf8CString)
    guard let path = mkdtemp(&template) else { fatalError("mkdtemp: \(String(cString: strerror(errno)))") }
    return String(cString: path)
}()
atexit { try? FileManager.default.removeItem(atPath: workspace) }
let target = workspace + "/target"
let marker = (name: "marker.json", contents: Data("{\"before\":true}".utf8))

func expectRestoreContract(accepted: Bool) {
    let files = FileManager.default
    precondition(try! files.contentsOfDirectory(atPath: workspace) == ["target"], "something was left beside the target")
    guard accepted else {
        precondition(try! files.contentsOfDirectory(atPath: target) == [marker.name], "a refused archive changed the target")
        precondition(files.contents(atPath: "\(target)/\(marker.name)") == marker.contents, "a refused archive changed the target")
        return
    }
    for name in files.enumerator(atPath: target)!.compactMap({ $0 as? String }) {
        let attributes = try! files.attributesOfItem(atPath: "\(target)/\(name)")
        let mode = attributes[.posixPermissions] as! Int
        switch attributes[.type] as! FileAttributeType {
        case .typeRegular: precondition(mode == 0o600, "\(name) restored with mode \(String(mode, radix: 8))")
        case .typeDirectory: precondition(mode == 0o700, "\(name) restored with mode \(String(mode, radix: 8))")
        default: preconditionFailure("\(name) restored as \(attributes[.type]!)")
        }
    }
}

/// A snapshot payload as FORMAT.md lays it out (a few files of fixtures/sessions/small under
/// files/, one in a subdirectory, then manifest.jsonl), and an archive with no entries. The
/// reader's hostile fixtures are copied beside them by scripts/fuzz.
func writeSeeds(into directory: String) throws {
    let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("fixtures").path
    let session = "\(fixtures)/sessions/small"
    let time: Int64 = 1_700_000_000
    let snapshot = BufferSink()
    let writer = try ArchiveWriter(sink: snapshot)
    for name in try FileManager.default.contentsOfDirectory(atPath: session).sorted().prefix(4) {
        let contents = Array(FileManager.default.contents(atPath: "\(session)/\(name)")!)
        try writer.addFile(relativePath: "files/\(name)", contents: contents, modificationTime: time)
    }
    try writer.addDirectory(relativePath: "files/keys", modificationTime: time)
    try writer.addFile(relativePath: "files/keys/nested.json", contents: Array("{\"nested\":true}".utf8), modificationTime: time)
    let manifest = Array(FileManager.default.contents(atPath: "\(fixtures)/fuzz/manifest/base.json")!)
    try writer.addFile(relativePath: "manifest.jsonl", contents: manifest, modificationTime: time)
    try writer.finish()
    try writeSeed(snapshot.bytes, named: "snapshot.tar.zst", into: directory)

    let empty = BufferSink()
    try ArchiveWriter(sink: empty).finish()
    try writeSeed(empty.bytes, named: "empty.tar.zst", into: directory)
}

runFuzzer(writeSeeds: writeSeeds) { archive in
    let files = FileManager.default
    try? files.removeItem(atPath: target)
    try! files.createDirectory(atPath: target, withIntermediateDirectories: false)
    precondition(files.createFile(atPath: "\(target)/\(marker.name)", contents: marker.contents))
    let accepted = (try? ArchiveExtractor().restore(from: BufferSource(archive), replacing: target)) != nil
    expectRestoreContract(accepted: accepted)
}
