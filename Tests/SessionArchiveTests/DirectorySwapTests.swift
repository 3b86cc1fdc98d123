import Foundation
import Glibc
@testable import SessionArchive
import SessionCrypto
import SystemSupport
import TestSupport
import Testing

struct DirectorySwapTests {
    private let temporary: TemporaryDirectory
    private var parent: String { temporary.path }
    private var target: String { parent + "/account" }

    init() throws {
        temporary = try TemporaryDirectory()
    }

    private func names() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: parent).sorted()
    }

    private func populate(_ files: [String: [UInt8]]) -> (StagingDirectory) throws -> Void {
        { staging in
            for (path, contents) in files.sorted(by: { $0.key < $1.key }) {
                try staging.writeFile(relativePath: path) { sink in try contents.withUnsafeBytes { try sink.write($0) } }
            }
        }
    }

    @Test(arguments: [true, false])
    func replacesExistingDirectoryWithAndWithoutExchange(allowExchange: Bool) throws {
        try writeTree(["creds.json": [1]], at: target)
        var steps: [SwapStep] = []
        try DirectorySwap.replace(target, allowExchange: allowExchange, onStep: { steps.append($0) }, populate: populate(["creds.json": [2], "sub/x.json": [3]]))
        #expect(try TreeSnapshot(target) == TreeSnapshot(nodes: [
            "creds.json": .file(mode: 0o600, contents: [2]), "sub": .directory(mode: 0o700), "sub/x.json": .file(mode: 0o600, contents: [3]),
        ]))
        #expect(try names() == ["account"])
        let swap: [SwapStep] = allowExchange ? [.exchanged] : [.oldMovedAside, .newMovedIntoPlace]
        #expect(steps == [.stagingCreated, .stagingPopulated, .stagingSynced, .stagingSealed] + swap + [.parentSynced, .oldRemoved, .finished])
    }

    @Test func createsMissingTarget() throws {
        var steps: [SwapStep] = []
        try DirectorySwap.replace(target, allowExchange: true, onStep: { steps.append($0) }, populate: populate(["creds.json": [2]]))
        #expect(try TreeSnapshot(target) == TreeSnapshot(nodes: ["creds.json": .file(mode: 0o600, contents: [2])]))
        #expect(steps == [.stagingCreated, .stagingPopulated, .stagingSynced, .stagingSealed, .newMovedIntoPlace, .parentSynced, .finished])
    }

    @Test func failureBeforeTheSwapLeavesTargetUntouched() throws {
        struct Interrupted: Error {}
        try writeTree(["creds.json": [1]], at: target)
        let before = try TreeSnapshot(target)
        #expect(throws: Interrupted.self) {
            try DirectorySwap.replace(target) { staging in
                try staging.writeFile(relativePath: "creds.json") { sink in try [UInt8](repeating: 9, count: 10).withUnsafeBytes { try sink.write($0) } }
                throw Interrupted()
            }
        }
        #expect(try TreeSnapshot(target) == before)
        #expect(try names() == ["account"])
    }

    @Test func stagingRefusesToWriteThroughSymlinksOrOverExistingFiles() throws {
        try DirectorySwap.replace(target) { staging in
            try staging.writeFile(relativePath: "a.json") { _ in }
            let error = #expect(throws: SystemError.self) { try staging.writeFile(relativePath: "a.json") { _ in } }
            #expect(error?.errno == EEXIST)
            #expect(symlink(parent, staging.path + "/link") == 0)
            #expect(throws: (any Error).self) { try staging.writeFile(relativePath: "link/escaped.json") { _ in } }
            #expect(throws: (any Error).self) { try staging.writeFile(relativePath: "link") { _ in } }
            #expect(unlink(staging.path + "/link") == 0)
        }
        #expect(try names() == ["account"])
    }

    @Test func workingDirectoryNames() {
        #expect(DirectorySwap.isWorkingDirectoryName(".account.sync-agent-staging-0123456789abcdef"))
        #expect(DirectorySwap.isWorkingDirectoryName(".a.b.sync-agent-old-0123456789abcdef"))
        #expect(DirectorySwap.isWorkingDirectoryName("..sync-agent-ready-0123456789abcdef.sync-agent-ready-0123456789abcdef"))
        for name in ["account", ".account", ".sync-agent-old-0123456789abcdef", ".a.sync-agent-old-0123", ".a.sync-agent-new-0123456789abcdef", "a.sync-agent-old-0123456789abcdef"] {
            #expect(!DirectorySwap.isWorkingDirectoryName(name), "\(name)")
        }
    }

    @Test func recoveryPutsBackAMovedAsideTargetAndRemovesEverythingElse() throws {
        let old = ".account.sync-agent-old-00000000000000aa"
        try writeTree(["creds.json": [1], "pre-key-1.json": [2]], at: parent + "/" + old)
        try writeTree(["creds.json": [3]], at: parent + "/.account.sync-agent-ready-00000000000000aa")
        try writeTree(["creds.json": [4]], at: parent + "/.other.sync-agent-staging-00000000000000bb")
        try writeTree(["creds.json": [5]], at: parent + "/other")
        try writeTree(["x": [6]], at: parent + "/.unrelated")
        let expected = try #require(try TreeSnapshot(parent + "/" + old))

        let actions = try DirectorySwap.recoverLeftovers(in: parent)
        #expect(Set(actions) == [
            .restoredPrevious(session: "account"),
            .removed(name: ".account.sync-agent-ready-00000000000000aa"),
            .removed(name: ".other.sync-agent-staging-00000000000000bb"),
        ])
        #expect(try TreeSnapshot(target) == expected)
        #expect(try names() == [".unrelated", "account", "other"])
        #expect(try DirectorySwap.recoverLeftovers(in: parent) == [], "idempotent")
    }

    @Test func recoveryRemovesAPartlyRemovedOldDirectoryNextToItsTarget() throws {
        try writeTree(["creds.json": [1]], at: target)
        try writeTree(["sub/pre-key-2.json": [2]], at: parent + "/.account.sync-agent-old-00000000000000cc")
        #expect(symlink("/etc", parent + "/.account.sync-agent-old-00000000000000cc/sub/link") == 0)
        try DirectorySwap.recoverLeftovers(in: parent)
        #expect(try names() == ["account"])
        #expect(FileManager.default.fileExists(atPath: "/etc/passwd"), "symlinks are removed, not followed")
    }
}
