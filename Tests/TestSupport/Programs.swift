import Foundation
import Subprocess
#if canImport(System)
import System
#else
import SystemPackage
#endif

public struct ProgramFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Runs a program to completion and returns its standard output; throws with its standard
/// error when it exits non-zero.
@discardableResult
public func runProgram(_ path: String, _ arguments: [String], environment: [String: String] = [:]) async throws
    -> String
{
    let result = try await run(
        .path(FilePath(path)), arguments: Arguments(arguments),
        environment: .inherit.updating(environment.reduce(into: [:]) { $0[.init(rawValue: $1.key)!] = $1.value }),
        output: .string(limit: 16 << 20), error: .string(limit: 1 << 20))
    guard result.terminationStatus.isSuccess else {
        throw ProgramFailure("\(path) \(arguments.joined(separator: " ")) ended with \(result.terminationStatus): \(result.standardError)")
    }
    return result.standardOutput
}

/// Runs `body` while a long-lived program (a server) runs, then stops it with SIGTERM.
public func withProgram<Result: Sendable>(
    _ path: String, _ arguments: [String], _ body: @Sendable () async throws -> Result
) async throws -> Result {
    let execution = try await run(
        .path(FilePath(path)), arguments: Arguments(arguments), input: .none, output: .discarded, error: .discarded
    ) { execution in
        defer { try? execution.send(signal: .terminate) }
        return try await body()
    }
    return execution.closureResult
}

public func randomHex(_ byteCount: Int) -> String {
    (0..<byteCount).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
}

/// Random bytes, eight at a time: byte by byte is far too slow for megabytes in a debug build.
public func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    return randomBytes(count, using: &generator)
}

/// The same bytes for the same seed, so a failing case reproduces.
public func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var generator = SplitMix64(seed: seed)
    return randomBytes(count, using: &generator)
}

public func randomBytes(_ count: Int, using generator: inout some RandomNumberGenerator) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    bytes.withUnsafeMutableBytes { buffer in
        var offset = 0
        while offset < buffer.count {
            var word = generator.next()
            let length = min(8, buffer.count - offset)
            withUnsafeBytes(of: &word) { buffer[offset..<offset + length].copyBytes(from: $0.prefix(length)) }
            offset += length
        }
    }
    return bytes
}

/// A temporary directory removed when the value is released.
public final class TemporaryDirectory: Sendable {
    public let path: String
    static let namePrefix = "sync-agent-test."

    /// In `parent`, by default the system's temporary directory.
    public init(in parent: String = NSTemporaryDirectory()) throws {
        var template = Array("\(parent)/\(Self.namePrefix)XXXXXX".utf8CString)
        guard let created = mkdtemp(&template) else { throw ProgramFailure("mkdtemp failed") }
        path = String(cString: created)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }

    public func file(_ name: String) -> String { "\(path)/\(name)" }

    /// A parent on tmpfs (/dev/shm) where there is one, for tests of process crashes rather than
    /// power cuts: fsync and syncfs cost nothing there, so the disk writes of other processes on
    /// the machine cannot stretch a test's timing (a restore of thousands of files waited seconds
    /// in syncfs under a parallel build).
    public static var memoryBackedParent: String {
        access("/dev/shm", W_OK | X_OK) == 0 ? "/dev/shm" : NSTemporaryDirectory()
    }
}
