import ArgumentParser
import Foundation

/// Bad input found after parsing (a file's content, a snapshot the store does not have): one
/// line on standard error and the usage-error exit code, without the usage text ArgumentParser
/// prints for a `ValidationError`, which would point at the flags when the flags were fine.
func rejectInput(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("Error: \(message)\n".utf8))
    return ExitCode.validationFailure
}

/// Columns padded to their widest cell, for people; `--json` is for programs.
func printTable(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
    for row in [header] + rows {
        let cells = row.enumerated().map { column, cell in
            column == row.count - 1 ? cell : cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
        }
        print(cells.joined(separator: "  "))
    }
}

/// "1.2 MB": sizes for people.
func byteCount(_ bytes: Int64) -> String {
    bytes.formatted(.byteCount(style: .file))
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
        FileHandle.standardError.write(Data("\r\u{1B}[K\(label) \(done)/\(total)\(failures), \(seconds(since: started))".utf8))
    }

    /// Clears the line, so what follows starts on a clean one.
    func end() {
        if isShown && done > 0 { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
    }
}

/// "2.4 s" since `start`.
func seconds(since start: ContinuousClock.Instant) -> String {
    let elapsed = ContinuousClock.now - start
    return String(format: "%.1f s", Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
}
