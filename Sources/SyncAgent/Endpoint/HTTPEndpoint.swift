import FoundationEssentials
import Glibc
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import SystemSupport

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

/// Which kind of socket a request came in on: who can reach a Unix socket is decided by its
/// file's permissions, who can reach a TCP port is not.
enum EndpointTransport: Sendable {
    case tcp
    case unixSocket
}

/// A request as the routes see it: whole, its body already bounded by `Limits.bodyBytes`.
struct EndpointRequest: Sendable {
    var method: HTTPMethod
    /// The target's path, still percent-encoded.
    var path: String
    /// What follows "?" in the target, nil without one.
    var query: String?
    var headers: HTTPHeaders
    var body: [UInt8]
    var transport: EndpointTransport

    init(method: HTTPMethod, target: String, headers: HTTPHeaders = [:], body: [UInt8] = [], transport: EndpointTransport) {
        self.method = method
        let question = target.firstIndex(of: "?")
        path = String(target[..<(question ?? target.endIndex)])
        query = question.map { String(target[target.index(after: $0)...]) }
        self.headers = headers
        self.body = body
        self.transport = transport
    }
}

/// What the endpoint answers; `HTTPEndpoint` knows nothing of the routes.
struct EndpointResponse: Sendable {
    var status: HTTPResponseStatus
    var contentType: String
    var body: [UInt8]
    /// Beyond those every answer has (`Allow` for a 405, `WWW-Authenticate` for a 401).
    var headers: [(name: String, value: String)] = []

    static func text(_ status: HTTPResponseStatus, _ text: String) -> EndpointResponse {
        EndpointResponse(status: status, contentType: "text/plain; charset=utf-8", body: Array((text + "\n").utf8))
    }
}

protocol EndpointRoutes: Sendable {
    func respond(to request: EndpointRequest) async -> EndpointResponse
    /// How long answering `request` may take beyond the connection's lifetime: a route that
    /// waits on purpose (a control call bounded by its timeout) says so; others take none.
    func allowance(for request: EndpointRequest) -> TimeAmount
}

extension EndpointRoutes {
    func allowance(for request: EndpointRequest) -> TimeAmount { .zero }
}

/// The agent's HTTP/1.1 endpoint on swift-nio: NIO's parser and encoder, on NIO's event loop
/// threads rather than Swift's cooperative pool where uploads run, with limits that keep a slow
/// or hostile client from holding memory or connections for long. The loops are NIO's process
/// singletons (nothing else in the agent uses NIO): never shut down, so no channel outlives its
/// loop when the agent stops. Every connection NIO accepts is closed through its async channel
/// (`executeThenClose`), whenever the endpoint stops: one dropped unclosed traps the process.
final class HTTPEndpoint: Sendable {
    struct Limits: Sendable {
        /// Connections beyond this are closed on accept.
        var connections = 32
        /// A connection is closed this long after it was accepted: a client that trickles a
        /// request holds its slot no longer. A response being written then is finished first
        /// (a keep-alive client such as a Prometheus scraper must not get half an answer),
        /// within `responseGrace` (plus the route's allowance, for a control call that waits on
        /// purpose): a client that never reads its response is cut off then.
        var connectionLifetime: TimeAmount = .seconds(10)
        /// Also what a response under way gets when the endpoint stops (no allowance then: the
        /// engine a control call waits on has stopped).
        var responseGrace: TimeAmount = .seconds(5)
        /// Request line and headers; a larger head is refused by the parser.
        var headerBytes = 8 * 1024
        /// The read routes take no body and the control routes' parameters are a few words: a
        /// larger body is answered 413 and not read further.
        var bodyBytes = 1024
    }

    typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    /// Where it listens, with the port the kernel chose for port 0, or the socket's path.
    let boundAddress: String
    let transport: EndpointTransport
    private let limits: Limits
    private let server: NIOAsyncChannel<Connection, Never>
    private let connections: ConnectionRegistry
    /// The socket file `bind(_: ControlSocket)` made, removed when the endpoint stops.
    private let socketFile: (socket: ControlSocket, identity: (device: UInt64, inode: UInt64)?)?

    private init(
        boundAddress: String, transport: EndpointTransport, limits: Limits, server: NIOAsyncChannel<Connection, Never>,
        connections: ConnectionRegistry, socketFile: (socket: ControlSocket, identity: (device: UInt64, inode: UInt64)?)? = nil
    ) {
        self.boundAddress = boundAddress
        self.transport = transport
        self.limits = limits
        self.server = server
        self.connections = connections
        self.socketFile = socketFile
    }

    private static func httpPipeline(_ limits: Limits, _ connections: ConnectionRegistry) -> @Sendable (Channel) -> EventLoopFuture<Connection> {
        var decoderLimits = NIOHTTPDecoderLimitConfiguration()
        decoderLimits.maxHeaderFieldSize = limits.headerBytes
        decoderLimits.maxHeaderListSize = limits.headerBytes
        decoderLimits.maxHeaderFieldCount = 64
        return { [decoderLimits] channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                    withErrorHandling: true, withEncoderConfiguration: .init(),
                    withDecoderLimitConfiguration: decoderLimits)
                return try connections.wrap(channel)
            }
        }
    }

    /// Binds a Unix socket at `socket.path` (see `ControlSocket`: created with its mode, moved
    /// into place over a stale socket, never over anything else).
    static func bind(_ socket: ControlSocket, limits: Limits = Limits()) async throws -> HTTPEndpoint {
        let connections = ConnectionRegistry(limit: limits.connections, grace: limits.responseGrace)
        let server = try await socket.bind { path in
            try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 64)
                .bind(unixDomainSocketPath: path, childChannelInitializer: httpPipeline(limits, connections))
        } close: { server in
            await HTTPEndpoint(boundAddress: socket.path, transport: .unixSocket, limits: limits, server: server, connections: connections).close()
        }
        return HTTPEndpoint(
            boundAddress: socket.path, transport: .unixSocket, limits: limits, server: server, connections: connections,
            socketFile: (socket, ControlSocket.identity(of: socket.path)))
    }

    /// Binds now, so a bad address or a port in use stops the agent before it touches anything;
    /// connections wait in the backlog until `serve`.
    static func bind(_ address: ListenAddress, limits: Limits = Limits()) async throws -> HTTPEndpoint {
        let connections = ConnectionRegistry(limit: limits.connections, grace: limits.responseGrace)
        do {
            let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 64)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                // At IPPROTO_TCP: `.socketOption` sets SOL_SOCKET, where this number is SO_DEBUG,
                // which only CAP_NET_ADMIN may set (it ended an unprivileged agent on its first request).
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .bind(host: address.host, port: address.port, childChannelInitializer: httpPipeline(limits, connections))
            var bound = address
            bound.port = server.channel.localAddress?.port ?? address.port
            return HTTPEndpoint(boundAddress: bound.description, transport: .tcp, limits: limits, server: server, connections: connections)
        } catch {
            throw ConfigurationError(.cannotListen, "cannot listen on \(address): \(Self.reason(error))")
        }
    }

    static func reason(_ error: any Error) -> String {
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)).lowercased() }
        if let error = error as? SocketAddressError.UnknownHost { return "cannot resolve \"\(error.host)\": \(error.errorDescription.lowercased())" }
        if error is SocketAddressError { return "not an address this host can listen on" }
        return "\(error)"
    }

    /// Answers requests until `stop()`, then returns once every connection is closed: those not
    /// answered yet are closed unanswered, a response under way is finished first (within
    /// `responseGrace`). Cancelling the task stops it at once: the connections close without
    /// waiting for their answers.
    ///
    /// Requests are read and answered on a thread of the endpoint's own (`ThreadExecutor`): the
    /// engine's blocking work can hold the cooperative pool for seconds on a busy disk, and a
    /// liveness probe or a worker's call must not wait behind it (nor be cut off by its
    /// connection's lifetime meanwhile).
    func serve(_ routes: some EndpointRoutes) async throws {
        try await withTaskExecutorPreference(ThreadExecutor(label: "sync-agent.endpoint.\(transport)")) {
            do {
                try await withTaskCancellationHandler {
                    try await acceptUntilStopped { connection, lifetime in await self.handle(connection, lifetime, routes) }
                } onCancel: {
                    self.stop()
                }
            } catch is CancellationError {
                // The agent is stopping.
            }
        }
        removeSocketFile()
    }

    /// Stops taking connections and closes the listener, then the connections: see `serve`.
    func stop() {
        for lifetime in connections.stop() { lifetime.end() }
        server.channel.close(promise: nil)
    }

    /// Releases the socket of an endpoint that never served (start-up failed), closing whatever
    /// connections NIO accepted meanwhile.
    func close() async {
        stop()
        try? await acceptUntilStopped { _, _ in }
        removeSocketFile()
    }

    /// Takes the connections NIO accepted, until the listener's stream ends (the listener closed)
    /// and every connection taken ended; then closes those NIO made but never handed over.
    private func acceptUntilStopped(_ answer: @escaping @Sendable (Connection, ConnectionLifetime) async -> Void) async throws {
        do {
            try await withThrowingDiscardingTaskGroup { tasks in
                try await server.executeThenClose { accepted in
                    for try await connection in accepted {
                        guard let lifetime = connections.take(connection) else {
                            // Over the limit, or the endpoint stopped.
                            try? await connection.executeThenClose { _, _ in }
                            continue
                        }
                        tasks.addTask {
                            await answer(connection, lifetime)
                            self.connections.ended(connection)
                        }
                    }
                }
                // The listener's stream ended (stopped, or the listener failed): the connections'
                // time is up. An answer under way has the grace to be finished; past it, what
                // still answers is cancelled (a control call waiting on the engine, which has
                // stopped), so the agent's exit waits no longer.
                self.stop()
                let deadline = ContinuousClock.now + .nanoseconds(limits.responseGrace.nanoseconds)
                while connections.isServing, ContinuousClock.now < deadline {
                    do { try await Task.sleep(for: .milliseconds(20)) } catch { break }
                }
                tasks.cancelAll()
            }
        } catch {
            await closeUntaken()
            throw error
        }
        await closeUntaken()
    }

    private func closeUntaken() async {
        stop()
        for connection in connections.untaken() { try? await connection.executeThenClose { _, _ in } }
    }

    private func removeSocketFile() {
        if let socketFile { socketFile.socket.remove(ifStill: socketFile.identity) }
    }

    private func handle(_ connection: Connection, _ lifetime: ConnectionLifetime, _ routes: some EndpointRoutes) async {
        let deadline = connection.channel.eventLoop.scheduleTask(in: limits.connectionLifetime) { lifetime.end() }
        defer { deadline.cancel() }
        // Errors here are a client's (reset, malformed request, closed at the deadline): the
        // connection ends and nothing else is affected.
        try? await connection.executeThenClose { requests, responses in
            var head: HTTPRequestHead?
            var body: [UInt8] = []
            // After a 413, the rest of the body is read and dropped (within the connection's
            // lifetime), so the client reads the answer rather than a reset; then it closes.
            var refused = false
            for try await part in requests {
                switch part {
                case .head(let requestHead):
                    head = requestHead
                    body = []
                    let declared = requestHead.headers.first(name: "content-length").flatMap { Int($0) } ?? 0
                    if declared > limits.bodyBytes {
                        refused = true
                        try await refuseBody(of: requestHead, lifetime: lifetime, responses: responses)
                    }
                case .body(let buffer):
                    guard let request = head, !refused else { continue }
                    guard body.count + buffer.readableBytes <= limits.bodyBytes else {
                        refused = true
                        try await refuseBody(of: request, lifetime: lifetime, responses: responses)
                        continue
                    }
                    body += buffer.readableBytesView
                case .end:
                    guard let requestHead = head, !refused else { return }
                    head = nil
                    let request = EndpointRequest(
                        method: requestHead.method, target: requestHead.uri, headers: requestHead.headers, body: body,
                        transport: transport)
                    guard lifetime.beginResponse(allowance: routes.allowance(for: request)) else { return }
                    let response = await routes.respond(to: request)
                    try await write(response, for: requestHead, to: responses)
                    guard lifetime.endResponse(), requestHead.isKeepAlive else { return }
                }
            }
        }
    }

    /// A body over the limit: 413, and the connection ends once the request does.
    private func refuseBody(
        of request: HTTPRequestHead, lifetime: ConnectionLifetime, responses: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>
    ) async throws {
        guard lifetime.beginResponse(allowance: .zero) else { return }
        var closing = request
        closing.headers.replaceOrAdd(name: "connection", value: "close")
        let text = "request body over \(limits.bodyBytes) bytes"
        try await write(
            EndpointResponse(
                status: .payloadTooLarge, contentType: "application/json",
                body: ControlRoutes.errorBody(text, reason: ControlRoutes.RefusalReason.bodyTooLarge.rawValue)),
            for: closing, to: responses)
        _ = lifetime.endResponse()
    }

    private func write(
        _ response: EndpointResponse, for request: HTTPRequestHead, to responses: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>
    ) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: "\(response.body.count)")
        headers.add(name: "Cache-Control", value: "no-store")
        for header in response.headers { headers.add(name: header.name, value: header.value) }
        if !request.isKeepAlive { headers.add(name: "Connection", value: "close") }
        // One write, which reaches the event loop as one task: a close the connection's lifetime
        // schedules can come before the response or after it, never between its head and body.
        var parts: [HTTPServerResponsePart] = [.head(HTTPResponseHead(version: request.version, status: response.status, headers: headers))]
        if request.method != .HEAD { parts.append(.body(.byteBuffer(ByteBuffer(bytes: response.body)))) }
        parts.append(.end(nil))
        try await responses.write(contentsOf: parts)
    }
}

/// The endpoint's connections, from the moment NIO makes one until it ends. NIO hands each to
/// `serve` through the listener's stream, and drops one it can no longer hand over (made while
/// the listener closed, or still buffered when a cancelled reader left the stream): a connection
/// dropped before its writer was finished traps the process. So each is held here from the
/// moment it is made until `serve` takes it, and those never taken are closed when it stops.
private final class ConnectionRegistry: Sendable {
    private struct State {
        var stopped = false
        /// Made by NIO, not taken by `serve` yet.
        var untaken: [ObjectIdentifier: HTTPEndpoint.Connection] = [:]
        /// Taken and being served.
        var served: [ObjectIdentifier: ConnectionLifetime] = [:]
    }

    private let state = Mutex(State())
    private let limit: Int
    private let grace: TimeAmount

    init(limit: Int, grace: TimeAmount) {
        self.limit = limit
        self.grace = grace
    }

    /// On the connection's event loop, as NIO accepts it: wraps it, or closes it when the
    /// endpoint stopped.
    func wrap(_ channel: Channel) throws -> HTTPEndpoint.Connection {
        try state.withLock { state in
            guard !state.stopped else {
                // NIO leaves a connection whose initializer failed open.
                channel.close(promise: nil)
                throw ChannelError.ioOnClosedChannel
            }
            let connection = try HTTPEndpoint.Connection(wrappingChannelSynchronously: channel)
            state.untaken[ObjectIdentifier(channel)] = connection
            return connection
        }
    }

    /// The lifetime of a connection `serve` took, or nil when it is to be closed unanswered:
    /// over the limit, or the endpoint stopped.
    func take(_ connection: HTTPEndpoint.Connection) -> ConnectionLifetime? {
        let id = ObjectIdentifier(connection.channel)
        return state.withLock { state in
            state.untaken[id] = nil
            guard !state.stopped, state.served.count < limit else { return nil }
            let lifetime = ConnectionLifetime(channel: connection.channel, grace: grace)
            state.served[id] = lifetime
            return lifetime
        }
    }

    var isServing: Bool { state.withLock { !$0.served.isEmpty } }

    func ended(_ connection: HTTPEndpoint.Connection) {
        _ = state.withLock { $0.served.removeValue(forKey: ObjectIdentifier(connection.channel)) }
    }

    /// Takes no more connections; returns the lifetimes of those being served, to end them.
    func stop() -> [ConnectionLifetime] {
        state.withLock { state in
            state.stopped = true
            return Array(state.served.values)
        }
    }

    /// Once stopped and the listener's stream ended: those NIO made and never handed over.
    func untaken() -> [HTTPEndpoint.Connection] {
        state.withLock { state in
            precondition(state.stopped)
            defer { state.untaken = [:] }
            return Array(state.untaken.values)
        }
    }
}

/// Whether a connection's time is up (its lifetime ran out or the endpoint stopped), and
/// whether a response was being made then.
private final class ConnectionLifetime: Sendable {
    private struct State {
        /// The allowance of the response being made; nil between responses.
        var responding: TimeAmount?
        var expired = false
    }

    private let state = Mutex(State())
    private let channel: any Channel
    private let grace: TimeAmount

    init(channel: any Channel, grace: TimeAmount) {
        self.channel = channel
        self.grace = grace
    }

    /// The connection's time is up: it closes now between responses, else once the response
    /// being made is written (see `endResponse`), or after the grace and that response's
    /// allowance: a client that never reads its response is cut off then.
    func end() {
        let responding = state.withLock { state in
            state.expired = true
            return state.responding
        }
        guard let allowance = responding else { return channel.close(promise: nil) }
        channel.eventLoop.scheduleTask(in: grace + allowance) { [channel] in channel.close(promise: nil) }
    }

    /// False when the time is already up: answer no more requests.
    func beginResponse(allowance: TimeAmount) -> Bool {
        state.withLock { state in
            state.responding = state.expired ? nil : allowance
            return !state.expired
        }
    }

    /// False when the time ran out while the response was written.
    func endResponse() -> Bool {
        state.withLock { state in
            state.responding = nil
            return !state.expired
        }
    }
}
