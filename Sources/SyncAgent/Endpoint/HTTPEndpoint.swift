import FoundationEssentials
import Glibc
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// `HOST:PORT` as `--listen` takes it: an IPv4 address or name, or a bracketed IPv6 address.
/// Port 0 asks the kernel for a free port (the agent logs the one it got).
struct ListenAddress: Sendable, CustomStringConvertible {
    var host: String
    var port: Int

    init(parsing text: String) throws {
        let problem = ConfigurationError(.badListenAddress, "--listen \"\(text)\": expected HOST:PORT, e.g. 127.0.0.1:9797 or [::1]:9797")
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port)
        else { throw problem }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, !host.contains("/"), host.contains(":") == text.hasPrefix("[") else { throw problem }
        self.host = host
        self.port = port
    }

    var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// What the endpoint answers; `HTTPEndpoint` knows nothing of the routes.
struct EndpointResponse: Sendable {
    var status: HTTPResponseStatus
    var contentType: String
    var body: [UInt8]

    static func text(_ status: HTTPResponseStatus, _ text: String) -> EndpointResponse {
        EndpointResponse(status: status, contentType: "text/plain; charset=utf-8", body: Array((text + "\n").utf8))
    }
}

protocol EndpointRoutes: Sendable {
    func respond(to method: HTTPMethod, path: String) async -> EndpointResponse
}

/// The agent's HTTP/1.1 endpoint on swift-nio: NIO's parser and encoder, on NIO's event loop
/// threads rather than Swift's cooperative pool where uploads run, with limits that keep a slow
/// or hostile client from holding memory or connections for long. The loops are NIO's process
/// singletons (nothing else in the agent uses NIO): never shut down, so no channel outlives its
/// loop when the agent stops.
final class HTTPEndpoint: Sendable {
    struct Limits: Sendable {
        /// Connections beyond this are closed on accept.
        var connections = 32
        /// A connection is closed this long after it was accepted: a client that trickles a
        /// request holds its slot no longer. A response being written then is finished first
        /// (a keep-alive client such as a Prometheus scraper must not get half an answer),
        /// within `responseGrace`: a client that never reads its response is cut off then.
        var connectionLifetime: TimeAmount = .seconds(10)
        var responseGrace: TimeAmount = .seconds(5)
        /// Request line and headers; a larger head is refused by the parser.
        var headerBytes = 8 * 1024
        /// Every route is a GET: a request body is not read past this.
        var bodyBytes = 1024
    }

    typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    /// Where it listens, with the port the kernel chose for port 0.
    let boundAddress: String
    private let limits: Limits
    private let server: NIOAsyncChannel<Connection, Never>
    private let openConnections = Mutex(0)

    private init(boundAddress: String, limits: Limits, server: NIOAsyncChannel<Connection, Never>) {
        self.boundAddress = boundAddress
        self.limits = limits
        self.server = server
    }

    /// Binds now, so a bad address or a port in use stops the agent before it touches anything;
    /// connections wait in the backlog until `serve`.
    static func bind(_ address: ListenAddress, limits: Limits = Limits()) async throws -> HTTPEndpoint {
        do {
            let decoderLimits = {
                var decoderLimits = NIOHTTPDecoderLimitConfiguration()
                decoderLimits.maxHeaderFieldSize = limits.headerBytes
                decoderLimits.maxHeaderListSize = limits.headerBytes
                decoderLimits.maxHeaderFieldCount = 64
                return decoderLimits
            }()
            let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 64)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                // At the TCP level: `.socketOption` is SOL_SOCKET, where TCP_NODELAY's number is
                // SO_DEBUG, which needs CAP_NET_ADMIN (an agent not root died at its first request).
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .bind(host: address.host, port: address.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                            withErrorHandling: true, withEncoderConfiguration: .init(),
                            withDecoderLimitConfiguration: decoderLimits)
                        return try Connection(wrappingChannelSynchronously: channel)
                    }
                }
            var bound = address
            bound.port = server.channel.localAddress?.port ?? address.port
            return HTTPEndpoint(boundAddress: bound.description, limits: limits, server: server)
        } catch {
            throw ConfigurationError(.cannotListen, "cannot listen on \(address): \(Self.reason(error))")
        }
    }

    private static func reason(_ error: any Error) -> String {
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)).lowercased() }
        if let error = error as? SocketAddressError.UnknownHost { return "cannot resolve \"\(error.host)\": \(error.errorDescription.lowercased())" }
        if error is SocketAddressError { return "not an address this host can listen on" }
        return "\(error)"
    }

    /// Answers requests until the task is cancelled, then closes every connection.
    func serve(_ routes: some EndpointRoutes) async throws {
        do {
            try await withThrowingDiscardingTaskGroup { tasks in
                try await server.executeThenClose { connections in
                    for try await connection in connections {
                        guard admit() else {
                            // Through the async channel, which must finish its writer (NIO traps otherwise).
                            try? await connection.executeThenClose { _, _ in }
                            continue
                        }
                        tasks.addTask {
                            await self.handle(connection, routes)
                            self.openConnections.withLock { $0 -= 1 }
                        }
                    }
                }
                tasks.cancelAll()
            }
        } catch is CancellationError {
            // The agent is stopping.
        }
    }

    /// Releases the socket of an endpoint that never served (start-up failed).
    func close() async {
        // Through the async channel, so its stream is finished before the event loop stops.
        try? await server.executeThenClose { _ in }
    }

    private func admit() -> Bool {
        openConnections.withLock { count in
            guard count < limits.connections else { return false }
            count += 1
            return true
        }
    }

    private func handle(_ connection: Connection, _ routes: some EndpointRoutes) async {
        let channel = connection.channel
        let lifetime = ConnectionLifetime()
        let grace = limits.responseGrace
        let deadline = channel.eventLoop.scheduleTask(in: limits.connectionLifetime) {
            if lifetime.expire() {
                channel.close(promise: nil)
            } else {
                channel.eventLoop.scheduleTask(in: grace) { channel.close(promise: nil) }
            }
        }
        defer { deadline.cancel() }
        // Errors here are a client's (reset, malformed request, closed at the deadline): the
        // connection ends and nothing else is affected.
        try? await connection.executeThenClose { requests, responses in
            var head: HTTPRequestHead?
            var bodyBytes = 0
            for try await part in requests {
                switch part {
                case .head(let requestHead):
                    head = requestHead
                    bodyBytes = 0
                case .body(let buffer):
                    bodyBytes += buffer.readableBytes
                    if bodyBytes > limits.bodyBytes { return }
                case .end:
                    guard let request = head else { return }
                    head = nil
                    let path = String(request.uri.prefix { $0 != "?" })
                    guard lifetime.beginResponse() else { return }
                    let response = await routes.respond(to: request.method, path: path)
                    try await write(response, for: request, to: responses)
                    guard lifetime.endResponse(), request.isKeepAlive else { return }
                }
            }
        }
    }

    private func write(
        _ response: EndpointResponse, for request: HTTPRequestHead, to responses: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>
    ) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: "\(response.body.count)")
        headers.add(name: "Cache-Control", value: "no-store")
        if !request.isKeepAlive { headers.add(name: "Connection", value: "close") }
        try await responses.write(.head(HTTPResponseHead(version: request.version, status: response.status, headers: headers)))
        if request.method != .HEAD { try await responses.write(.body(.byteBuffer(ByteBuffer(bytes: response.body)))) }
        try await responses.write(.end(nil))
    }
}

/// Whether a connection's lifetime ran out, and whether a response was being written then.
private final class ConnectionLifetime: Sendable {
    private struct State {
        var responding = false
        var expired = false
    }

    private let state = Mutex(State())

    /// The lifetime ran out: true when the connection can close now, false when a response is
    /// being written (the connection ends once it is).
    func expire() -> Bool {
        state.withLock { state in
            state.expired = true
            return !state.responding
        }
    }

    /// False when the lifetime already ran out: answer no more requests.
    func beginResponse() -> Bool {
        state.withLock { state in
            state.responding = !state.expired
            return state.responding
        }
    }

    /// False when the lifetime ran out while the response was written.
    func endResponse() -> Bool {
        state.withLock { state in
            state.responding = false
            return !state.expired
        }
    }
}
