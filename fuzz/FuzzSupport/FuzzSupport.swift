import CFuzzer
import Foundation

/// The input handler libFuzzer's C callback forwards to, set once before libFuzzer starts.
@MainActor private var fuzzTest: ([UInt8]) -> Void = { _ in }

/// Runs libFuzzer with the process's arguments (corpus directories, -max_total_time...), feeding
/// each input to `test`; a failed precondition in `test` is a finding. With
/// `SYNC_AGENT_FUZZ_WRITE_SEEDS=<dir>` (scripts/fuzz --write-seeds) it calls `writeSeeds` with
/// that directory instead and exits: the seeds the real writers make.
@MainActor
public func runFuzzer(writeSeeds: ((String) throws -> Void)? = nil, _ test: @escaping ([UInt8]) -> Void) -> Never {
    if let directory = ProcessInfo.processInfo.environment["SYNC_AGENT_FUZZ_WRITE_SEEDS"] {
        guard let writeSeeds else { fatalError("this target has no seeds written by code: they are committed") }
        do { try writeSeeds(directory) } catch { fatalError("writing seeds into \(directory): \(error)") }
        exit(0)
    }
    fuzzTest = test
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, testOneInput))
}

/// The callback libFuzzer runs each input through. `-sanitize=fuzzer` also links libFuzzer's own
/// `main`, which refers to it by this name; SwiftPM points `main` at the target's main.swift
/// instead, which starts libFuzzer through `runFuzzer`.
@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    // libFuzzer runs every input on the thread that started it: the main thread.
    let input = Array(UnsafeBufferPointer(start: data, count: count))
    MainActor.assumeIsolated { fuzzTest(input) }
    return 0
}

/// Writes one seed file, failing loudly (a missing seed would silently weaken the corpus).
public func writeSeed(_ bytes: [UInt8], named name: String, into directory: String) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: "\(directory)/\(name)"))
}
