import Foundation

/// Runs `body` on a TCP socket and 127.0.0.1:`port` as a `sockaddr`.
private func withLoopbackSocket<Result>(
    port: Int, _ body: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Result
) -> Result? {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { return nil }
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            body(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
public func isListening(_ port: Int) -> Bool {
    withLoopbackSocket(port: port) { connect($0, $1, $2) == 0 } ?? false
}

private func isFree(_ port: Int) -> Bool {
    withLoopbackSocket(port: port) { bind($0, $1, $2) == 0 } ?? false
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
public func freePort() throws -> Int {
    for _ in 0..<200 {
        let port = Int.random(in: 20000...50000)
        if isFree(port) { return port }
    }
    throw ProgramFailure("no free port found")
}

/// Two TCP ports on 127.0.0.1 free now, `port` and `port + 10000` (SeaweedFS puts gRPC there).
public func freePortPair() throws -> Int {
    for _ in 0..<200 {
        let port = Int.random(in: 20000...40000)
        if isFree(port) && isFree(port + 10000) { return port }
    }
    throw ProgramFailure("no free port pair found")
}
