import Foundation
import Glibc
@testable import SessionArchive
import XCTest

/// Kills a real replacement with SIGKILL at every step and checks that the target is always the
/// complete old or the complete new directory, before and after recovery.
///
/// The child is this test binary itself, re-run on `testChildReplacesThenDiesAtRequestedStep` with
/// the environment saying where to die; that test does nothing in a normal run.
final class CrashSafetyTests: XCTestCase {
    private static let killPointVariable = "SESSION_ARCHIVE_CRASH_KILL_POINT"
    private static let targetVariable = "SESSION_ARCHIVE_CRASH_TARGET"
    private static let exchangeVariable = "SESSION_ARCHIVE_CRASH_EXCHANGE"
    /// Dies in the middle of populating staging, after some files are written.
    private static let midPopulate = "midPopulate"
    private static let neverKilled = "none"

    static let oldFiles: [String: [UInt8]] = Dictionary(uniqueKeysWithValues: (1...30).map {
        ("pre-key-\($0).json", Array("old \($0)".utf8))
    }).merging(["creds.json": Array("{\"old\":true}".utf8)]) { $1 }

    static let newFiles: [String: [UInt8]] = Dictionary(uniqueKeysWithValues: (10...50).map {
        ("pre-key-\($0).json", Array("new \($0)".utf8))
    }).merging(["creds.json": Array("{\"new\":true}".utf8), "keys/app-state-sync-key-A.json": [1, 2]]) { $1 }

    func testChildReplacesThenDiesAtRequestedStep() throws {
        let environment = ProcessInfo.processInfo.environment
        guard let killPoint = environment[Self.killPointVariable], let target = environment[Self.targetVariable] else { return }
        try DirectorySwap.replace(
            target, allowExchange: environment[Self.exchangeVariable] == "1",
            onStep: { step in if step.rawValue == killPoint { raise(SIGKILL) } }
        ) { staging in
            for (index, (path, contents)) in Self.newFiles.sorted(by: { $0.key < $1.key }).enumerated() {
                try staging.writeFile(relativePath: path) { sink in try contents.withUnsafeBytes { try sink.write($0) } }
                if index == 10 && killPoint == Self.midPopulate { raise(SIGKILL) }
            }
        }
    }

    func testKilledAtEveryStepLeavesCompleteOldOrNew() throws {
        let root = try makeTemporaryDirectory(for: self)
        let scenarios: [(name: String, exchange: Bool, hasOld: Bool, swapSteps: [SwapStep])] = [
            ("exchange", true, true, [.exchanged, .parentSynced, .oldRemoved, .finished]),
            ("two renames", false, true, [.oldMovedAside, .newMovedIntoPlace, .parentSynced, .oldRemoved, .finished]),
            ("no previous directory", true, false, [.newMovedIntoPlace, .parentSynced, .finished]),
        ]
        let oldTree: TreeSnapshot? = TreeSnapshot(nodes: Self.tree(Self.oldFiles))
        let newTree: TreeSnapshot? = TreeSnapshot(nodes: Self.tree(Self.newFiles))

        for scenario in scenarios {
            let steps: [SwapStep] = [.stagingCreated, .stagingPopulated, .stagingSynced, .stagingSealed] + scenario.swapSteps
            let killPoints = [Self.midPopulate] + steps.map(\.rawValue) + [Self.neverKilled]
            for killPoint in killPoints {
                let label = "\(scenario.name), killed at \(killPoint)"
                let parent = root + "/" + UUID().uuidString
                let target = parent + "/account"
                try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: false)
                if scenario.hasOld {
                    try writeTree(Self.oldFiles, at: target)
                    XCTAssertEqual(chmod(target, 0o700), 0)
                    for path in Self.oldFiles.keys { XCTAssertEqual(chmod(target + "/" + path, 0o600), 0) }
                }
                let before = scenario.hasOld ? oldTree : nil

                let status = try runChild(killPoint: killPoint, target: target, exchange: scenario.exchange, log: root + "/child.log")
                if killPoint == Self.neverKilled {
                    XCTAssertEqual(status, .exited(0), label)
                } else {
                    XCTAssertEqual(status, .killed(SIGKILL), label)
                }

                // After the swap point the new directory must be there; before it, the old one.
                let swapped = killPoint == Self.neverKilled
                    || scenario.swapSteps.drop { $0 == .oldMovedAside }.map(\.rawValue).contains(killPoint)
                let expected = swapped ? newTree : before
                let atCrash = try TreeSnapshot(target)
                if killPoint == SwapStep.oldMovedAside.rawValue {
                    XCTAssertNil(atCrash, "\(label): between the two renames the target is missing until recovery")
                } else {
                    XCTAssertEqual(atCrash, expected, label)
                }

                try DirectorySwap.recoverLeftovers(in: parent)
                XCTAssertEqual(try TreeSnapshot(target), expected, "\(label), after recovery")
                let remaining = try FileManager.default.contentsOfDirectory(atPath: parent)
                XCTAssertEqual(remaining, expected == nil ? [] : ["account"], "\(label): no leftovers after recovery")
            }
        }
    }

    private static func tree(_ files: [String: [UInt8]]) -> [String: TreeSnapshot.Node] {
        var nodes = files.mapValues { TreeSnapshot.Node.file(mode: 0o600, contents: $0) }
        for path in files.keys where path.contains("/") {
            nodes[String(path[..<path.lastIndex(of: "/")!])] = .directory(mode: 0o700)
        }
        return nodes
    }

    private enum ChildStatus: Equatable {
        case exited(Int32)
        case killed(Int32)
    }

    private func runChild(killPoint: String, target: String, exchange: Bool, log: String) throws -> ChildStatus {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe")
        process.arguments = ["SessionArchiveTests.CrashSafetyTests/testChildReplacesThenDiesAtRequestedStep"]
        process.environment = ProcessInfo.processInfo.environment.merging([
            Self.killPointVariable: killPoint, Self.targetVariable: target, Self.exchangeVariable: exchange ? "1" : "0",
        ]) { $1 }
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let output = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        defer { try? output.close() }
        process.standardOutput = output
        process.standardError = output
        try process.run()
        process.waitUntilExit()
        return process.terminationReason == .uncaughtSignal ? .killed(process.terminationStatus) : .exited(process.terminationStatus)
    }
}
