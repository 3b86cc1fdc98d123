import Foundation
import Synchronization

/// A fake HTTP server for fault injection only: it answers each connection with raw bytes and
/// closes, so a test can send what no real S3 server would.
public final class FaultyHTTPServer: Sendable {
    public let port: Int
    private let listener: Int32
    private let connections = Mutex(0)

    public var connectionCount: Int { connections.withLock { $0 } }

    /// `response` is raw bytes, so it may hold what no String can (bytes that are not UTF-8).
    public convenience init(response: [UInt8]) throws {
        try self.init(responses: [response])
    }

    public convenience init(response: String) throws {
        try self.init(responses: [Array(response.utf8)])
    }

    /// Answers the first connection with the first response, the next with the next, and every
    /// connection after the last with the last.
    public init(responses: [[UInt8]]) throws {
        precondition(!responses.isEmpty, "a server answers something")
        (listener, port) = try listenOnLoopback()
        // The thread holds the server on purpose: it listens until the test process ends, so a
        // test that only reads its port (ARC may release a value after its last use) still has it.
        let thread = Thread { [self] in serve(responses) }
        thread.start()
    }

    deinit {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    private func serve(_ responses: [[UInt8]]) {
        while true {
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { return }
            let index = connections.withLock { count in
                defer { count += 1 }
                return count
            }
            let response = responses[min(index, responses.count - 1)]
            var request: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !request.ends(with: [13, 10, 13, 10]) {
                let count = read(connection, &buffer, buffer.count)
                if count <= 0 { break }
                request += buffer[0..<count]
            }
            _ = response.withUnsafeBytes { write(connection, $0.baseAddress, $0.count) }
            close(connection)
        }
    }
}

private extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}
