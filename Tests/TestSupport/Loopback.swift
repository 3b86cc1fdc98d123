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

/// A socket listening on 127.0.0.1, on a port the kernel chose.
func listenOnLoopback() throws -> (descriptor: Int32, port: Int) {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { throw ProgramFailure("socket: \(String(cString: strerror(errno)))") }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let listening = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
            bind(descriptor, raw, length) == 0 && listen(descriptor, 64) == 0 && getsockname(descriptor, raw, &length) == 0
        }
    }
    guard listening else {
        let reason = String(cString: strerror(errno))
        close(descriptor)
        throw ProgramFailure("cannot listen on 127.0.0.1: \(reason)")
    }
    return (descriptor, Int(UInt16(bigEndian: address.sin_port)))
}

/// A TCP connection to 127.0.0.1:`port`, or nil when nothing accepts it.
func connectToLoopback(port: Int) -> Int32? {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { return nil }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
        }
    }
    guard connected else {
        close(descriptor)
        return nil
    }
    return descriptor
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
        let port = Int.random(in: portsForServers)
        if isFree(port) { return port }
    }
    throw ProgramFailure("no free port found")
}

/// Two TCP ports on 127.0.0.1 free now, `port` and `port + 10000` (SeaweedFS puts gRPC there).
public func freePortPair() throws -> Int {
    for _ in 0..<200 {
        let port = Int.random(in: portsForServers.lowerBound...(portsForServers.upperBound - 10000))
        if isFree(port) && isFree(port + 10000) { return port }
    }
    throw ProgramFailure("no free port pair found")
}

/// Ports a test may hand to a server it starts: below the kernel's ephemeral range, which the
/// suite's own client connections draw from. A port chosen inside it was seen taken by one of
/// them between the check and the server's bind ("address already in use").
private let portsForServers: ClosedRange<Int> = {
    let range = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))?
        .split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
    let ephemeralStart = range?.first ?? 32768
    return 10000...max(ephemeralStart - 1, 25000)
}()

/// A client TCP connection to 127.0.0.1:`port` that a test drives byte by byte (a slow or
/// hostile client). Closed when released.
public final class LoopbackConnection: Sendable {
    private let descriptor: Int32

    public init(port: Int) throws {
        guard let descriptor = connectToLoopback(port: port) else { throw ProgramFailure("cannot connect to port \(port)") }
        self.descriptor = descriptor
    }

    deinit { close(descriptor) }

    /// Sends what the peer takes; a peer that closed makes the rest fail silently, as for a real client.
    public func send(_ text: String) {
        _ = Array(text.utf8).withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Whether the peer closed the connection (or reset it), waiting up to `timeout` for it.
    public func isClosedByPeer(timeout: Duration = .seconds(15)) async -> Bool {
        // Whatever the server answered (an error status) is read past; the end is what counts.
        await receiveUntilClosed(timeout: timeout) != nil
    }

    /// Everything the peer sent until it closed the connection (or reset it); nil when it is
    /// still open after `timeout`. The wait blocks a thread of its own: on a cooperative pool of
    /// two threads (two cores), a blocked one was seen to keep the server under test from
    /// answering at all.
    public func receiveUntilClosed(timeout: Duration = .seconds(15)) async -> [UInt8]? {
        await withCheckedContinuation { continuation in
            Thread { continuation.resume(returning: self.blockingReceiveUntilClosed(timeout: timeout)) }.start()
        }
    }

    private func blockingReceiveUntilClosed(timeout: Duration) -> [UInt8]? {
        var descriptors = [pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)]
        let deadline = ContinuousClock.now + timeout
        var buffer = [UInt8](repeating: 0, count: 4096)
        var received: [UInt8] = []
        while ContinuousClock.now < deadline {
            guard poll(&descriptors, 1, 100) > 0 else { continue }
            let count = recv(descriptor, &buffer, buffer.count, 0)
            if count > 0 { received += buffer[..<count] }
            if count == 0 || (count < 0 && errno == ECONNRESET) { return received }
        }
        return nil
    }
}
