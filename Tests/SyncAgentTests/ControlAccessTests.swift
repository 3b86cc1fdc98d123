import Foundation
import NIOHTTP1
import Testing
import SystemSupport
import TestSupport

@testable import SyncAgent

/// Who can reach the control routes: the control socket's file and the token file.
@Suite("Control socket")
struct ControlSocketTests {
    /// The address of the Unix socket at `path` (shorter than `sun_path`).
    static func address(_ path: String) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            let bytes = Array(path.utf8)
            buffer.copyBytes(from: bytes)
            buffer[bytes.count] = 0
        }
        return address
    }

    static func connect(_ descriptor: Int32, _ path: String) -> Bool {
        var address = address(path)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
    }

    /// A socket file nothing accepts on: what a crashed agent leaves.
    static func makeStaleSocket(at path: String) throws {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = address(path)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
        close(descriptor)
        try #require(bound)
    }

    static func mode(_ path: String) -> mode_t? {
        var status = stat()
        guard lstat(path, &status) == 0 else { return nil }
        return status.st_mode
    }

    struct NoRoutes: EndpointRoutes {
        func respond(to request: EndpointRequest) async -> EndpointResponse { .text(.notFound, "none") }
    }

    /// Serves `endpoint` while `body` runs, then stops it as the agent does.
    static func serving(_ endpoint: HTTPEndpoint, _ body: () async throws -> Void) async throws {
        // Started on a thread of its own: the serving task's first steps would otherwise wait for the
        // cooperative pool, which other tests of a full run can hold for longer than a test waits.
        let serving = Task(executorPreference: try ThreadExecutor(label: "control-socket")) { try await endpoint.serve(NoRoutes()) }
        defer { serving.cancel() }
        try await body()
        endpoint.stop()
        try await serving.value
    }

    @Test(arguments: [(ControlSocket.Access.owner, mode_t(0o600)), (.group, 0o660)])
    func theSocketHasTheModeAskedAndGoesAwayWithTheAgent(access: ControlSocket.Access, mode: mode_t) async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("control.sock")
        let endpoint = try await HTTPEndpoint.bind(ControlSocket(path: path, access: access))
        let status = try #require(Self.mode(path))
        #expect(status & S_IFMT == S_IFSOCK)
        #expect(status & 0o7777 == mode)
        // Nothing else beside it: the private directory it was bound in is gone.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["control.sock"])
        try await Self.serving(endpoint) { #expect(ControlSocket.accepts(path)) }
        #expect(Self.mode(path) == nil)
    }

    @Test func aStaleSocketIsReplaced() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("control.sock")
        try Self.makeStaleSocket(at: path)
        #expect(!ControlSocket.accepts(path))
        let endpoint = try await HTTPEndpoint.bind(ControlSocket(path: path, access: .owner))
        #expect(try #require(Self.mode(path)) & 0o7777 == 0o600)
        try await Self.serving(endpoint) { #expect(ControlSocket.accepts(path)) }
    }

    @Test func aLiveSocketIsNotTakenOver() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("control.sock")
        let first = try await HTTPEndpoint.bind(ControlSocket(path: path, access: .owner))
        try await Self.serving(first) {
            await #expect(throws: ConfigurationError.self) {
                _ = try await HTTPEndpoint.bind(ControlSocket(path: path, access: .owner))
            }
            #expect(ControlSocket.accepts(path))
        }
    }

    @Test(arguments: ["file", "directory", "symlink"])
    func aPathThatIsNotASocketIsRefusedAndLeftAlone(kind: String) async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("control.sock")
        switch kind {
        case "file": try write("keep me", to: path)
        case "directory": try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        default: try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: directory.file("elsewhere"))
        }
        let before = try #require(Self.mode(path))
        do {
            _ = try await HTTPEndpoint.bind(ControlSocket(path: path, access: .owner))
            Issue.record("bound over a \(kind)")
        } catch let error as ConfigurationError {
            #expect(error.reason == .badControlSocket)
            #expect(error.description.contains("is not a socket"))
        }
        #expect(Self.mode(path) == before)
        if kind == "file" { #expect(try String(contentsOfFile: path, encoding: .utf8) == "keep me") }
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["control.sock"])
    }

    @Test func aPathTooLongForASocketIsRefused() async throws {
        let path = "/tmp/" + String(repeating: "s", count: 120)
        await #expect(throws: ConfigurationError.self) {
            _ = try await HTTPEndpoint.bind(ControlSocket(path: path, access: .owner))
        }
    }
}

@Suite("Control token file")
struct ControlTokenTests {
    static let token = "s3cr3t-t0ken-0123456789"

    static func tokenFile(_ content: String, mode: mode_t, in directory: TemporaryDirectory) throws -> String {
        let path = directory.file("token")
        try write(content, to: path)
        chmod(path, mode)
        return path
    }

    @Test(arguments: [mode_t(0o600), 0o400])
    func aPrivateFileGivesItsTokenWithoutTheLineBreak(mode: mode_t) throws {
        let directory = try TemporaryDirectory()
        let token = try ControlToken.read(from: Self.tokenFile(Self.token + "\n", mode: mode, in: directory))
        #expect(token.matches(Array(Self.token.utf8)))
        #expect(!token.matches(Array((Self.token + "\n").utf8)))
    }

    @Test(arguments: [mode_t(0o640), 0o604, 0o644, 0o660])
    func aFileOthersCanReadIsRefused(mode: mode_t) throws {
        let directory = try TemporaryDirectory()
        let path = try Self.tokenFile(Self.token, mode: mode, in: directory)
        #expect { try ControlToken.read(from: path) } throws: { error in
            let error = error as? ConfigurationError
            return error?.reason == .badControlToken && error?.description.contains("readable by others") == true
                && error?.description.contains(Self.token) == false
        }
    }

    @Test func aSymlinkIsRefusedEvenToAPrivateFile() throws {
        let directory = try TemporaryDirectory()
        let target = try Self.tokenFile(Self.token, mode: 0o600, in: directory)
        let link = directory.file("link")
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        #expect { try ControlToken.read(from: link) } throws: { error in
            (error as? ConfigurationError)?.description.contains("symbolic link") == true
        }
    }

    @Test(arguments: ["short", "two words here and there", "", String(repeating: "x", count: 5000)])
    func aTokenThatIsNotOneIsRefused(content: String) throws {
        let directory = try TemporaryDirectory()
        let path = try Self.tokenFile(content, mode: 0o600, in: directory)
        #expect(throws: ConfigurationError.self) { try ControlToken.read(from: path) }
    }

    @Test func aDirectoryOrNothingIsRefused() throws {
        let directory = try TemporaryDirectory()
        chmod(directory.path, 0o700)
        #expect(throws: ConfigurationError.self) { try ControlToken.read(from: directory.path) }
        #expect(throws: ConfigurationError.self) { try ControlToken.read(from: directory.file("absent")) }
    }

    @Test func theHeaderMustBeBearerAndTheWholeToken() {
        let token = ControlToken(bytes: Array(Self.token.utf8))
        func authorizes(_ values: [String]) -> Bool {
            token.authorizes(HTTPHeaders(values.map { ("Authorization", $0) }))
        }
        #expect(authorizes(["Bearer \(Self.token)"]))
        #expect(authorizes(["bearer \(Self.token)"]))
        #expect(!authorizes([]))
        #expect(!authorizes(["Basic \(Self.token)"]))
        #expect(!authorizes(["Bearer \(Self.token.dropLast())"]))
        #expect(!authorizes(["Bearer \(Self.token) "]))
        #expect(!authorizes(["Bearer \(Self.token)", "Bearer \(Self.token)"]))
        #expect(!authorizes([Self.token]))
    }
}
