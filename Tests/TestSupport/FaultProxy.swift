import Foundation
import Synchronization
import Testing

/// A TCP proxy on 127.0.0.1 in front of an S3 server, for fault injection only (not a general
/// HTTP proxy): it forwards the HTTP/1.1 requests of each client connection one at a time and
/// applies the fault in force to each, so a test can make a real server look broken for a while.
///
/// It knows just enough HTTP/1.1 for that: requests are framed by their head and Content-Length
/// (the S3 client never sends chunked bodies nor `Expect: 100-continue`), and client connections
/// stay open between requests (keep-alive). Each request goes to the server on a fresh connection
/// with `Connection: close`, so a response is simply everything the server sends until it closes;
/// when the response frames itself (Content-Length or chunked), its `Connection: close` is dropped
/// before it goes back, so the client keeps its connection as it would with the server itself.
/// One thread per client connection, blocking POSIX sockets, like `FaultyHTTPServer`.
public final class FaultProxy: Sendable {
    public enum Fault: Sendable, Equatable, CustomTestStringConvertible {
        case passThrough
        /// Forwards the first half of the request's bytes, then closes both connections: the
        /// server sees a cut request, the client no answer.
        case dropMidRequest
        /// Forwards the request, then holds the response this long before sending it.
        case delayResponse(Duration)
        /// Forwards the request (the server acts on it), then sends the response's head and half
        /// its body (half its head when it has no body, as a PUT's) and closes: the client
        /// cannot know whether the request took effect.
        case cutResponseBody
        /// Answers without forwarding, with an S3 XML error document.
        case errorReply(status: Int, code: String)

        public static let internalError = Fault.errorReply(status: 500, code: "InternalError")
        public static let slowDown = Fault.errorReply(status: 503, code: "SlowDown")
        public static let accessDenied = Fault.errorReply(status: 403, code: "AccessDenied")

        public var testDescription: String {
            switch self {
            case .passThrough: "pass through"
            case .dropMidRequest: "connections dropped mid-request"
            case .delayResponse(let delay): "responses delayed \(delay)"
            case .cutResponseBody: "response bodies cut short"
            case .errorReply(let status, let code): "\(status) \(code)"
            }
        }
    }

    public let port: Int
    public var endpoint: String { "http://127.0.0.1:\(port)" }
    private let listener: Int32
    private let relay: Relay

    /// Requests the current and earlier faults hit.
    public var faultedRequests: Int { relay.injection.withLock { $0.faulted } }

    public init(upstreamPort: Int) throws {
        relay = Relay(upstreamPort: upstreamPort)
        (listener, port) = try listenOnLoopback()
        // The threads hold the relay, not the proxy, so releasing the proxy closes the listener
        // (deinit), which ends the accepting thread.
        Thread { [listener, relay] in
            while true {
                let client = accept(listener, nil, nil)
                guard client >= 0 else { return }
                Thread { relay.serve(client) }.start()
            }
        }.start()
    }

    public convenience init(upstream endpoint: String) throws {
        guard let port = URLComponents(string: endpoint)?.port else { throw ProgramFailure("no port in \(endpoint)") }
        try self.init(upstreamPort: port)
    }

    deinit {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    /// From the next request on, applies `fault` to one request in `every`; the others pass, so
    /// work can half succeed.
    public func inject(_ fault: Fault, every: Int = 1) {
        precondition(every >= 1)
        relay.injection.withLock {
            $0.fault = fault
            $0.every = every
            $0.requests = 0
        }
    }
}

/// What the connection threads share: where to forward, and the fault in force.
private final class Relay: Sendable {
    struct Injection {
        var fault = FaultProxy.Fault.passThrough
        var every = 1
        var requests = 0
        var faulted = 0
    }

    let upstreamPort: Int
    let injection = Mutex(Injection())

    init(upstreamPort: Int) {
        self.upstreamPort = upstreamPort
    }

    private func nextFault() -> FaultProxy.Fault {
        injection.withLock {
            $0.requests += 1
            guard $0.fault != .passThrough, $0.requests % $0.every == 0 else { return .passThrough }
            $0.faulted += 1
            return $0.fault
        }
    }

    func serve(_ client: Int32) {
        defer { close(client) }
        let connection = Connection(client)
        while let request = connection.readRequest() {
            let fault = nextFault()
            if case .errorReply(let status, let code) = fault {
                guard sendAll(client, errorReply(status: status, code: code, to: request)) else { return }
                continue
            }
            guard let upstream = connectToLoopback(port: upstreamPort) else { return }
            defer { close(upstream) }
            setReceiveTimeout(upstream, seconds: 60)
            if fault == .dropMidRequest {
                _ = sendAll(upstream, request.forwarded.prefix(request.forwarded.count / 2))
                return
            }
            guard sendAll(upstream, request.forwarded), var response = Response(readingToEnd: upstream) else { return }
            switch fault {
            case .delayResponse(let delay):
                Thread.sleep(forTimeInterval: Double(delay.components.seconds) + Double(delay.components.attoseconds) / 1e18)
            case .cutResponseBody:
                let bodyCount = response.bytes.count - response.headCount
                _ = sendAll(client, response.bytes.prefix(bodyCount > 0 ? response.headCount + bodyCount / 2 : response.headCount / 2))
                return
            default:
                break
            }
            let keepAlive = response.keepConnectionIfFramed(method: request.method)
            guard sendAll(client, response.bytes), keepAlive else { return }
        }
    }

    /// What S3 sends when it refuses a request: the status and an XML error document (without
    /// the body for HEAD, as S3 does).
    private func errorReply(status: Int, code: String, to request: Request) -> [UInt8] {
        let body = """
            <?xml version="1.0" encoding="UTF-8"?>
            <Error><Code>\(code)</Code><Message>injected by the test's fault proxy</Message>\
            <RequestId>fault-proxy</RequestId></Error>
            """
        let head = "HTTP/1.1 \(status) Injected\r\nContent-Type: application/xml\r\nContent-Length: \(body.utf8.count)\r\n\r\n"
        return Array(head.utf8) + (request.method == "HEAD" ? [] : Array(body.utf8))
    }
}

/// One request as read from the client, rewritten for the server.
private struct Request {
    var method: String
    /// The head with `Connection: close`, then the body.
    var forwarded: [UInt8]
}

/// A client connection's bytes, buffered: a keep-alive client may send the next request's
/// first bytes with the end of this one.
private final class Connection {
    let descriptor: Int32
    var buffered: [UInt8] = []

    init(_ descriptor: Int32) {
        self.descriptor = descriptor
        setReceiveTimeout(descriptor, seconds: 120)
    }

    /// The next request, or nil when the client closed (or sent something this proxy does not frame).
    func readRequest() -> Request? {
        guard let headEnd = readUntilHeadEnd(), let head = String(bytes: buffered[..<headEnd], encoding: .utf8) else {
            return nil
        }
        var lines = head.components(separatedBy: "\r\n").filter { !$0.isEmpty }
        guard let method = lines.first?.split(separator: " ").first.map(String.init) else { return nil }
        if header("Transfer-Encoding", in: lines) != nil { return nil }
        let bodyCount = header("Content-Length", in: lines).flatMap { Int($0) } ?? 0
        while buffered.count < headEnd + bodyCount {
            guard readMore() else { return nil }
        }
        lines.removeAll { $0.lowercased().hasPrefix("connection:") }
        let rewritten = Array((lines + ["Connection: close", "", ""]).joined(separator: "\r\n").utf8)
        let request = Request(method: method, forwarded: rewritten + buffered[headEnd..<headEnd + bodyCount])
        buffered.removeFirst(headEnd + bodyCount)
        return request
    }

    /// Where the head ends (after its blank line), reading until it does.
    private func readUntilHeadEnd() -> Int? {
        while true {
            if let end = headEnd(buffered) { return end }
            guard readMore() else { return nil }
        }
    }

    private func readMore() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        let count = receive(descriptor, &chunk)
        guard count > 0 else { return false }
        buffered += chunk[..<count]
        return true
    }
}

/// A server's whole response, read until it closed the connection.
private struct Response {
    var bytes: [UInt8]
    var headCount: Int

    init?(readingToEnd descriptor: Int32) {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let count = receive(descriptor, &chunk)
            if count < 0 { return nil }
            if count == 0 { break }
            bytes += chunk[..<count]
        }
        guard let headCount = headEnd(bytes) else { return nil }
        self.bytes = bytes
        self.headCount = headCount
    }

    /// Drops the server's `Connection: close` when the client can find the end of the response
    /// without it; returns whether the client connection may stay open.
    mutating func keepConnectionIfFramed(method: String) -> Bool {
        guard let head = String(bytes: bytes[..<headCount], encoding: .utf8) else { return false }
        let lines = head.components(separatedBy: "\r\n").filter { !$0.isEmpty }
        let framed = method == "HEAD" || header("Content-Length", in: lines) != nil
            || header("Transfer-Encoding", in: lines)?.lowercased() == "chunked"
        guard framed else { return false }
        let keptHead = Array((lines.filter { !$0.lowercased().hasPrefix("connection:") } + ["", ""]).joined(separator: "\r\n").utf8)
        bytes = keptHead + bytes[headCount...]
        headCount = keptHead.count
        return true
    }
}

private func header(_ name: String, in lines: [String]) -> String? {
    let prefix = name.lowercased() + ":"
    return lines.dropFirst().first { $0.lowercased().hasPrefix(prefix) }
        .map { $0.dropFirst(prefix.count).trimmingCharacters(in: .whitespaces) }
}

/// The index just past the blank line that ends an HTTP head, if the bytes hold one.
private func headEnd(_ bytes: [UInt8]) -> Int? {
    guard bytes.count >= 4 else { return nil }
    for index in 0...(bytes.count - 4) where bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 && bytes[index + 3] == 10 {
        return index + 4
    }
    return nil
}

private func receive(_ descriptor: Int32, _ buffer: inout [UInt8]) -> Int {
    while true {
        let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
        if count >= 0 || errno != EINTR { return count }
    }
}

/// Sends everything, or returns false once the peer is gone. MSG_NOSIGNAL: a client that hung
/// up must not raise SIGPIPE, which would kill the whole test process.
private func sendAll(_ descriptor: Int32, _ bytes: some Collection<UInt8>) -> Bool {
    var rest = Array(bytes)[...]
    while !rest.isEmpty {
        let sent = rest.withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if sent < 0 && errno == EINTR { continue }
        guard sent > 0 else { return false }
        rest = rest.dropFirst(sent)
    }
    return true
}

/// Bounds how long a read blocks, so a thread whose peer went silent ends rather than lingers.
private func setReceiveTimeout(_ descriptor: Int32, seconds: Int) {
    var timeout = timeval(tv_sec: seconds, tv_usec: 0)
    setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
}
