import Foundation
import TestSupport
import Testing

/// The real binary on a local store: sessions named by a phone number and with spaces and
/// non-ASCII letters leave no trace of their names in the store's paths; `locate` maps a name to
/// its prefix with the key only; `migrate` finds nothing to move in a store this version wrote.
@Suite("keyed names: locate and migrate")
struct KeyedNamesCommandTests {
    static let number = "4915112345678"

    @Test func noPathOfTheStoreNamesASessionAndLocateFindsEach() async throws {
        let names = [Self.number, "Zoë Müller"]
        let workspace = try Workspace(sessions: ["small", "medium"], renamedTo: ["small": names[0], "medium": names[1]])
        let store = try workspace.freshDirectory()
        let runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        let backup = try await runner.run("backup", ["--sessions-dir", workspace.sessions])
        #expect(backup.termination == .exited(0), "\(backup.standardError)")

        let paths = try #require(FileManager.default.subpaths(atPath: store))
        let number = Array(Self.number)
        let runs = (0...(number.count - 4)).map { String(number[$0..<($0 + 4)]) }
        for path in paths {
            // Tags, key ids and keyed ids are random or keyed hashes: their hex digits may meet a run by chance.
            let masked = path.replacing(/[0-9a-f]{16,32}/, with: "_")
            #expect(!names.contains { path.contains($0) } && !runs.contains { masked.contains($0) }, "\(path)")
        }

        for name in names {
            let located = try await runner.run("locate", [name])
            #expect(located.termination == .exited(0), "\(located.standardError)")
            let prefix = try #require(located.standardOutput.split(separator: "\t").dropFirst().first.map(String.init))
            #expect(prefix.wholeMatch(of: /sessions\/[0-9a-f]{32}\//) != nil, "\(located.standardOutput)")
            #expect(FileManager.default.fileExists(atPath: "\(store)/\(prefix)head"))
        }
        let listed = try await runner.run("snapshots", [])
        #expect(names.allSatisfy { name in listed.standardOutput.split(separator: "\n").contains { $0.hasPrefix(name + "\t") } }, "\(listed.standardOutput)")

        for arguments in [["--dry-run"], []] {
            let migrated = try await runner.run("migrate", arguments)
            #expect(migrated.termination == .exited(0) && migrated.standardOutput.isEmpty, "\(migrated.standardOutput) \(migrated.standardError)")
        }
        let target = try workspace.freshDirectory()
        let restored = try await runner.run("restore", ["--sessions-dir", target, "--all"])
        #expect(restored.termination == .exited(0), "\(restored.standardError)")
        for name in names { #expect(try directoryTree("\(target)/\(name)") == directoryTree(workspace.session(name))) }
    }
}
