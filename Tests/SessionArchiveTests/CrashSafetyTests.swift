import Foundation
import Glibc
@testable import SessionArchive
import TestSupport
import Testing

/// Kills a real replacement with SIGKILL at every step and checks that the target is always the
/// complete old or the complete new directory, before and after recovery.
///
/// The child is an exit test: this test binary run again, replacing and dying where it is told.
struct CrashSafetyTests {
    /// Dies in the middle of populating staging, after some files are written.
    private static let midPopulate = "midPopulate"
    private static let neverKilled = "none"

    struct Scenario: Sendable, CustomTestStringConvertible {
        let name: String
        let exchange: Bool
        let hasOld: Bool
        let swapSteps: [SwapStep]
        var testDescription: String { name }
    }

    static let scenarios = [
        Scenario(name: "exchange", exchange: true, hasOld: true, swapSteps: [.exchanged, .parentSynced, .oldRemoved, .finished]),
        Scenario(
            name: "two renames", exchange: false, hasOld: true,
            swapSteps: [.oldMovedAside, .newMovedIntoPlace, .parentSynced, .oldRemoved, .finished]),
        Scenario(name: "no previous directory", exchange: true, hasOld: false, swapSteps: [.newMovedIntoPlace, .parentSynced, .finished]),
    ]

    static let oldFiles: [String: [UInt8]] = Dictionary(uniqueKeysWithValues: (1...30).map {
        ("pre-key-\($0).json", Array("old \($0)".utf8))
    }).merging(["creds.json": Array("{\"old\":true}".utf8)]) { $1 }

    static let newFiles: [String: [UInt8]] = Dictionary(uniqueKeysWithValues: (10...50).map {
        ("pre-key-\($0).json", Array("new \($0)".utf8))
    }).merging(["creds.json": Array("{\"new\":true}".utf8), "keys/app-state-sync-key-A.json": [1, 2]]) { $1 }

    /// What the child does: replaces `target` by `newFiles`, killing itself at `killPoint`.
    private static func replace(_ target: String, exchange: Bool, dyingAt killPoint: String) throws {
        try DirectorySwap.replace(
            target, allowExchange: exchange, onStep: { step in if step.rawValue == killPoint { raise(SIGKILL) } }
        ) { staging in
            for (index, (path, contents)) in newFiles.sorted(by: { $0.key < $1.key }).enumerated() {
                try staging.writeFile(relativePath: path) { sink in try contents.withUnsafeBytes { try sink.write($0) } }
                if index == 10 && killPoint == midPopulate { raise(SIGKILL) }
            }
        }
    }

    @Test(arguments: scenarios)
    func killedAtEveryStepLeavesCompleteOldOrNew(_ scenario: Scenario) async throws {
        let temporary = try TemporaryDirectory()
        let root = temporary.path
        let oldTree: TreeSnapshot? = TreeSnapshot(nodes: Self.tree(Self.oldFiles))
        let newTree: TreeSnapshot? = TreeSnapshot(nodes: Self.tree(Self.newFiles))

        let steps: [SwapStep] = [.stagingCreated, .stagingPopulated, .stagingSynced, .stagingSealed] + scenario.swapSteps
        let killPoints = [Self.midPopulate] + steps.map(\.rawValue) + [Self.neverKilled]
        for killPoint in killPoints {
            let label = "\(scenario.name), killed at \(killPoint)"
            let parent = root + "/" + UUID().uuidString
            let target = parent + "/account"
            try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: false)
            if scenario.hasOld {
                try writeTree(Self.oldFiles, at: target)
                #expect(chmod(target, 0o700) == 0)
                for path in Self.oldFiles.keys { #expect(chmod(target + "/" + path, 0o600) == 0) }
            }
            let before = scenario.hasOld ? oldTree : nil

            let exchange = scenario.exchange
            await #expect(processExitsWith: killPoint == Self.neverKilled ? .success : .signal(SIGKILL), "\(label)") {
                [target = target as String, exchange = exchange as Bool, killPoint = killPoint as String] in
                try Self.replace(target, exchange: exchange, dyingAt: killPoint)
            }

            // After the swap point the new directory must be there; before it, the old one.
            let swapped = killPoint == Self.neverKilled
                || scenario.swapSteps.drop { $0 == .oldMovedAside }.map(\.rawValue).contains(killPoint)
            let expected = swapped ? newTree : before
            let atCrash = try TreeSnapshot(target)
            if killPoint == SwapStep.oldMovedAside.rawValue {
                #expect(atCrash == nil, "\(label): between the two renames the target is missing until recovery")
            } else {
                #expect(atCrash == expected, "\(label)")
            }

            try DirectorySwap.recoverLeftovers(in: parent)
            #expect(try TreeSnapshot(target) == expected, "\(label), after recovery")
            let remaining = try FileManager.default.contentsOfDirectory(atPath: parent)
            #expect(remaining == (expected == nil ? [] : ["account"]), "\(label): no leftovers after recovery")
        }
    }

    private static func tree(_ files: [String: [UInt8]]) -> [String: TreeSnapshot.Node] {
        var nodes = files.mapValues { TreeSnapshot.Node.file(mode: 0o600, contents: $0) }
        for path in files.keys where path.contains("/") {
            nodes[String(path[..<path.lastIndex(of: "/")!])] = .directory(mode: 0o700)
        }
        return nodes
    }
}
