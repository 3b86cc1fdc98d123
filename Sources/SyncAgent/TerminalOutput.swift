import ArgumentParser
import FoundationEssentials
import Glibc
import SystemSupport

/// Bad input found after parsing (a file's content, a snapshot the store does not have): one
/// line on standard error and the usage-error exit code, without the usage text ArgumentParser
/// prints for a `ValidationError`, which would point at the flags when the flags were fine.
func rejectInput(_ message: String) -> ExitCode {
    writeStandardError("Error: \(message)\n")
    return ExitCode.validationFailure
}

func writeStandardError(_ text: String) {
    // A standard error that cannot be written to loses the line: there is nowhere else to say so.
    Array(text.utf8).withUnsafeBytes { try? FileDescriptorSink(fileDescriptor: STDERR_FILENO).write($0) }
}

/// All of `source` (standard input, a file, a pipe), for `--sessions-from`; nil past `limit`
/// bytes, read no further: the list comes from another program and is bounded like any input.
func readAll(_ source: ByteSource, limit: Int) throws -> [UInt8]? {
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 64 << 10)
    while true {
        let count = try buffer.withUnsafeMutableBytes { try source.read(into: $0) }
        if count == 0 { return bytes }
        guard bytes.count + count <= limit else { return nil }
        bytes += buffer[0..<count]
    }
}

/// Columns padded to their widest cell, for people; `--json` is for programs.
func printTable(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
    for row in [header] + rows {
        let cells = row.enumerated().map { column, cell in
            column == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[column] - cell.count)
        }
        print(cells.joined(separator: "  "))
    }
}

/// "1.2 MB": decimal units, one decimal from 1 kB on.
func byteCount(_ bytes: Int64) -> String {
    var value = Double(bytes)
    for unit in ["B", "kB", "MB", "GB"] {
        if value < 999.95 || unit == "GB" { return unit == "B" ? "\(bytes) B" : "\(tenths(value)) \(unit)" }
        value /= 1000
    }
    return "\(bytes) B"
}

/// "2.4 s" since `start`.
func seconds(since start: ContinuousClock.Instant) -> String {
    let elapsed = (ContinuousClock.now - start).components
    return "\(tenths(Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18)) s"
}

/// One decimal, without Foundation's formatters (the agent links FoundationEssentials only).
private func tenths(_ value: Double) -> String {
    let tenths = Int((value * 10).rounded())
    return "\(tenths / 10).\(tenths % 10)"
}

/// One line on standard error, redrawn as work items finish, when standard error is a
/// terminal; nothing otherwise (logs and CI output stay line by line).
actor ProgressLine {
    nonisolated let isShown = isatty(STDERR_FILENO) == 1
    private let label: String
    private let total: Int
    private var done = 0
    private var failed = 0
    private let started = ContinuousClock.now

    init(_ label: String, total: Int) {
        self.label = label
        self.total = total
    }

    func finished(failed itFailed: Bool) {
        done += 1
        if itFailed { failed += 1 }
        guard isShown else { return }
        let failures = failed > 0 ? ", \(failed) failed" : ""
        writeStandardError("\r\u{1B}[K\(label) \(done)/\(total)\(failures), \(seconds(since: started))")
    }

    /// Clears the line, so what follows starts on a clean one.
    func end() {
        if isShown && done > 0 { writeStandardError("\r\u{1B}[K") }
    }
}
