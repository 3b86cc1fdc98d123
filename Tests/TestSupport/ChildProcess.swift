import Foundation
import Glibc
import Synchronization

/// How a child process ended.
public enum Termination: Equatable, Sendable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    public var description: String {
        switch self {
        case .exited(let code): "exit \(code)"
        case .signaled(let signal): "signal \(signal)"
        }
    }
}

/// A long-lived child process (an agent, a server) that a test signals, kills and restarts at
/// will. Started with posix_spawn, standard output and error going to files the test reads
/// while it runs; its end is polled with waitpid(WNOHANG), so no thread blocks on it.
/// Killed and reaped when released, so a failing test leaves no process behind.
public final class ChildProcess: Sendable {
    public let pid: pid_t
    public let executable: String
    public let standardOutputPath: String
    public let standardErrorPath: String
    private let termination = Mutex<Termination?>(nil)

    /// `environment` is the whole environment of the child; `standardInput` a file it reads.
    public init(
        _ executable: String, _ arguments: [String], environment: [String: String],
        standardInput: String = "/dev/null", standardOutput: String, standardError: String
    ) throws {
        self.executable = executable
        standardOutputPath = standardOutput
        standardErrorPath = standardError
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, standardInput, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, standardOutput, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, standardError, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        // Descriptors the test process leaked without O_CLOEXEC (another test's pipe) must not
        // live on in a child that outlasts them.
        _ = closeFrom?(&actions, 3)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Default signal dispositions and an empty mask, whatever the test runner set.
        var all = sigset_t()
        sigfillset(&all)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else {
            throw ProgramFailure("cannot start \(executable): \(String(cString: strerror(result)))")
        }
        self.pid = pid
    }

    deinit {
        if exitStatus == nil {
            Glibc.kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
    }

    /// How the process ended, or nil while it runs. Reaps it the first time it is seen ended.
    public var exitStatus: Termination? {
        termination.withLock { termination in
            if let termination { return termination }
            var status: Int32 = 0
            guard waitpid(pid, &status, WNOHANG) == pid else { return nil }
            let signal = status & 0x7f
            termination = signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
            return termination
        }
    }

    public var isRunning: Bool { exitStatus == nil }

    /// Resident memory (VmRSS in /proc/<pid>/status), or nil once the process is gone.
    public var residentBytes: Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kibibytes = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) })
        else { return nil }
        return kibibytes << 10
    }

    public func send(_ signal: Int32) {
        guard isRunning else { return }
        Glibc.kill(pid, signal)
    }

    /// Waits for the process to end on its own; kills it and fails after `timeout`. It looks once
    /// more after the deadline: a test process whose cooperative pool was held by other tests
    /// (the CPU-bound ones) can wake past the deadline of a child that ended long before it.
    @discardableResult
    public func waitForExit(timeout: Duration = .seconds(60)) async throws -> Termination {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let exitStatus { return exitStatus }
            try await Task.sleep(for: .milliseconds(20))
        }
        if let exitStatus { return exitStatus }
        send(SIGKILL)
        throw ProgramFailure("\(executable) (pid \(pid)) did not exit within \(timeout); killed it. Its stderr:\n\(standardError)")
    }

    /// SIGKILL, then reap.
    public func kill() async throws {
        send(SIGKILL)
        try await waitForExit(timeout: .seconds(30))
    }

    public var standardOutput: String { (try? String(contentsOfFile: standardOutputPath, encoding: .utf8)) ?? "" }
    public var standardError: String { (try? String(contentsOfFile: standardErrorPath, encoding: .utf8)) ?? "" }

    /// Runs a program to completion, with its output in files under `directory`.
    public static func run(
        _ executable: String, _ arguments: [String], environment: [String: String], outputIn directory: String,
        standardInput: String = "/dev/null", timeout: Duration = .seconds(60)
    ) async throws -> (termination: Termination, standardOutput: String, standardError: String) {
        let name = "run-\(randomHex(4))"
        let process = try ChildProcess(
            executable, arguments, environment: environment, standardInput: standardInput,
            standardOutput: "\(directory)/\(name).out",
            standardError: "\(directory)/\(name).err")
        let termination = try await process.waitForExit(timeout: timeout)
        return (termination, process.standardOutput, process.standardError)
    }
}

/// glibc's posix_spawn_file_actions_addclosefrom_np (2.34), which Swift's Glibc module does not
/// export (it is a GNU extension); nil where the C library lacks it.
private let closeFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else {
        return nil
    }
    return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
}()

/// Polls `condition` until it holds; fails with `message` after `timeout`.
public func waitUntil(
    timeout: Duration = .seconds(60), every interval: Duration = .milliseconds(50), _ message: @autoclosure () -> String,
    _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while true {
        if try await condition() { return }
        guard ContinuousClock.now < deadline else { throw ProgramFailure("timed out after \(timeout): \(message())") }
        try await Task.sleep(for: interval)
    }
}
