import Foundation
import Glibc
@testable import SessionArchive
import SessionCrypto
import SystemSupport
import XCTest

final class DirectorySwapTests: XCTestCase {
    private var parent = ""
    private var target: String { parent + "/account" }

    override func setUpWithError() throws {
        parent = try makeTemporaryDirectory(for: self)
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

    func testReplacesExistingDirectoryWithAndWithoutExchange() throws {
        for allowExchange in [true, false] {
            try writeTree(["creds.json": [1]], at: target)
            var steps: [SwapStep] = []
            try DirectorySwap.replace(target, allowExchange: allowExchange, onStep: { steps.append($0) }, populate: populate(["creds.json": [2], "sub/x.json": [3]]))
            XCTAssertEqual(try TreeSnapshot(target), TreeSnapshot(nodes: [
                "creds.json": .file(mode: 0o600, contents: [2]), "sub": .directory(mode: 0o700), "sub/x.json": .file(mode: 0o600, contents: [3]),
            ]))
            XCTAssertEqual(try names(), ["account"])
            let swap: [SwapStep] = allowExchange ? [.exchanged] : [.oldMovedAside, .newMovedIntoPlace]
            XCTAssertEqual(steps, [.stagingCreated, .stagingPopulated, .stagingSynced, .stagingSealed] + swap + [.parentSynced, .oldRemoved, .finished])
            try FileManager.default.removeItem(atPath: target)
        }
    }

    func testCreatesMissingTarget() throws {
        var steps: [SwapStep] = []
        try DirectorySwap.replace(target, allowExchange: true, onStep: { steps.append($0) }, populate: populate(["creds.json": [2]]))
        XCTAssertEqual(try TreeSnapshot(target), TreeSnapshot(nodes: ["creds.json": .file(mode: 0o600, contents: [2])]))
        XCTAssertEqual(steps, [.stagingCreated, .stagingPopulated, .stagingSynced, .stagingSealed, .newMovedIntoPlace, .parentSynced, .finished])
    }

    func testFailureBeforeTheSwapLeavesTargetUntouched() throws {
        struct Interrupted: Error {}
        try writeTree(["creds.json": [1]], at: target)
        let before = try TreeSnapshot(target)
        XCTAssertThrowsError(try DirectorySwap.replace(target) { staging in
            try staging.writeFile(relativePath: "creds.json") { sink in try [UInt8](repeating: 9, count: 10).withUnsafeBytes { try sink.write($0) } }
            throw Interrupted()
        }) { XCTAssertTrue($0 is Interrupted) }
        XCTAssertEqual(try TreeSnapshot(target), before)
        XCTAssertEqual(try names(), ["account"])
    }

    func testStagingRefusesToWriteThroughSymlinksOrOverExistingFiles() throws {
        try DirectorySwap.replace(target) { staging in
            try staging.writeFile(relativePath: "a.json") { _ in }
            XCTAssertThrowsError(try staging.writeFile(relativePath: "a.json") { _ in }) {
                XCTAssertEqual(($0 as? SystemError)?.errno, EEXIST)
            }
            XCTAssertEqual(symlink(parent, staging.path + "/link"), 0)
            XCTAssertThrowsError(try staging.writeFile(relativePath: "link/escaped.json") { _ in })
            XCTAssertThrowsError(try staging.writeFile(relativePath: "link") { _ in })
            XCTAssertEqual(unlink(staging.path + "/link"), 0)
        }
        XCTAssertEqual(try names(), ["account"])
    }

    func testWorkingDirectoryNames() {
        XCTAssertTrue(DirectorySwap.isWorkingDirectoryName(".account.sync-agent-staging-0123456789abcdef"))
        XCTAssertTrue(DirectorySwap.isWorkingDirectoryName(".a.b.sync-agent-old-0123456789abcdef"))
        XCTAssertTrue(DirectorySwap.isWorkingDirectoryName("..sync-agent-ready-0123456789abcdef.sync-agent-ready-0123456789abcdef"))
        for name in ["account", ".account", ".sync-agent-old-0123456789abcdef", ".a.sync-agent-old-0123", ".a.sync-agent-new-0123456789abcdef", "a.sync-agent-old-0123456789abcdef"] {
            XCTAssertFalse(DirectorySwap.isWorkingDirectoryName(name), name)
        }
    }

    func testRecoveryPutsBackAMovedAsideTargetAndRemovesEverythingElse() throws {
        let old = ".account.sync-agent-old-00000000000000aa"
        try writeTree(["creds.json": [1], "pre-key-1.json": [2]], at: parent + "/" + old)
        try writeTree(["creds.json": [3]], at: parent + "/.account.sync-agent-ready-00000000000000aa")
        try writeTree(["creds.json": [4]], at: parent + "/.other.sync-agent-staging-00000000000000bb")
        try writeTree(["creds.json": [5]], at: parent + "/other")
        try writeTree(["x": [6]], at: parent + "/.unrelated")
        let expected = try XCTUnwrap(try TreeSnapshot(parent + "/" + old))

        let actions = try DirectorySwap.recoverLeftovers(in: parent)
        XCTAssertEqual(Set(actions), [
            .restoredPrevious(session: "account"),
            .removed(name: ".account.sync-agent-ready-00000000000000aa"),
            .removed(name: ".other.sync-agent-staging-00000000000000bb"),
        ])
        XCTAssertEqual(try TreeSnapshot(target), expected)
        XCTAssertEqual(try names(), [".unrelated", "account", "other"])
        XCTAssertEqual(try DirectorySwap.recoverLeftovers(in: parent), [], "idempotent")
    }

    func testRecoveryRemovesAPartlyRemovedOldDirectoryNextToItsTarget() throws {
        try writeTree(["creds.json": [1]], at: target)
        try writeTree(["sub/pre-key-2.json": [2]], at: parent + "/.account.sync-agent-old-00000000000000cc")
        XCTAssertEqual(symlink("/etc", parent + "/.account.sync-agent-old-00000000000000cc/sub/link"), 0)
        try DirectorySwap.recoverLeftovers(in: parent)
        XCTAssertEqual(try names(), ["account"])
        XCTAssertTrue(FileManager.default.fileExists(atPath: "/etc/passwd"), "symlinks are removed, not followed")
    }
}
