import FoundationEssentials
import Glibc
import NIOCore
import NIOHTTP1
import NIOPosix
import SystemSupport

/// A request to a running agent's endpoint, for `status` and the control commands: swift-nio's
/// HTTP/1 client codec, plain HTTP over TCP (the endpoint listens on loopback or a pod
/// network, never TLS) or over the agent's control socket.
struct EndpointClient {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    enum Target {
        /// `http://HOST:PORT`, perhaps with a path prefix.
        case url(String)
        /// A Unix socket's path.
        case socket(String)
    }

    let target: Target
    /// Sent as `Authorization: Bearer` (the control routes over TCP).
    var token: String?
    var timeout: TimeAmount = .seconds(5)
    /// `/sessions` of many sessions is a few MB; anything far beyond is not our agent.
    var maxBodyBytes = 64 << 20

    init(baseURL: String) { target = .url(baseURL) }
    init(_ target: Target) { self.target = target }

    /// What the agent is called in errors.
    var name: String {
        switch target {
        case .url(let url): url
        case .socket(let path): "the control socket \(path)"
        }
    }

    /// The body of a 200 answer to GET `path`.
    func get(_ path: String) async throws -> [UInt8] {
        let (status, body) = try await send(.GET, path)
        guard status == .ok else { throw Failure(description: "\(name)\(path) answered \(status.code)") }
        return body
    }

    /// Any answer to `method` `path`: its status and body.
    ///
    /// Made on a thread of the client's own: the agent closes a connection whose request has not
    /// come 10 s after it accepted it, and a process whose cooperative pool is held that long
    /// (a test run, a busy worker) would lose the connection between its connect and its request.
    func send(_ method: HTTPMethod, _ path: String, body: [UInt8] = []) async throws -> (status: HTTPResponseStatus, body: [UInt8]) {
        try await withTaskExecutorPreference(ThreadExecutor(label: "sync-agent.endpoint-client")) { () async throws in
            try await sendNow(method, path, body: body)
        }
    }

    private func sendNow(_ method: HTTPMethod, _ path: String, body: [UInt8]) async throws -> (status: HTTPResponseStatus, body: [UInt8]) {
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connectTimeout(timeout)
        let initializer: @Sendable (Channel) -> EventLoopFuture<NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>> = { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHTTPClientHandlers()
                return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
            }
        }
        let channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
        let host: String
        let target: String
        switch self.target {
        case .url(let baseURL):
            guard let url = URL(string: baseURL), url.scheme == "http", let urlHost = url.host else {
                throw Failure(description: "--agent \"\(baseURL)\": expected http://HOST:PORT")
            }
            let port = url.port ?? 80
            host = "\(urlHost):\(port)"
            target = url.path.hasSuffix("/") ? String(url.path.dropLast()) + path : url.path + path
            channel = try await bootstrap.connect(host: urlHost, port: port, channelInitializer: initializer)
        case .socket(let socketPath):
            host = "localhost"
            target = path
            do {
                channel = try await bootstrap.connect(unixDomainSocketPath: socketPath, channelInitializer: initializer)
            } catch {
                throw Failure(description: "cannot connect to \(name): \(HTTPEndpoint.reason(error))")
            }
        }
        // An agent that accepts and never answers must not hang the command.
        let started = ContinuousClock.now
        let deadline = channel.channel.eventLoop.scheduleTask(in: timeout) { [channel = channel.channel] in
            channel.close(promise: nil)
        }
        defer { deadline.cancel() }
        do {
            return try await exchange(method, target, host: host, body: body, over: channel)
        } catch {
            // Our own deadline closed the connection, or the agent did: say which, not NIO's words.
            let limit = Duration.nanoseconds(timeout.nanoseconds)
            if ContinuousClock.now - started >= limit {
                throw Failure(description: "\(name) did not answer \(path) within \(limit)")
            }
            if let closed = error as? ChannelError, closed == .ioOnClosedChannel || closed == .eof {
                throw Failure(description: "\(name) closed the connection before answering \(path)")
            }
            throw error
        }
    }

    /// Sends the request and reads the answer on `channel`, closing it after.
    private func exchange(
        _ method: HTTPMethod, _ target: String, host: String, body: [UInt8],
        over channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
    ) async throws -> (status: HTTPResponseStatus, body: [UInt8]) {
        let path = target
        return try await channel.executeThenClose { responses, requests in
            var headers = HTTPHeaders()
            headers.add(name: "Host", value: host)
            headers.add(name: "Connection", value: "close")
            if let token { headers.add(name: "Authorization", value: "Bearer \(token)") }
            if method == .POST {
                headers.add(name: "Content-Length", value: "\(body.count)")
                if !body.isEmpty { headers.add(name: "Content-Type", value: "application/json") }
            }
            try await requests.write(.head(HTTPRequestHead(version: .http1_1, method: method, uri: target, headers: headers)))
            if !body.isEmpty { try await requests.write(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
            try await requests.write(.end(nil))
            var status: HTTPResponseStatus?
            var answer: [UInt8] = []
            for try await part in responses {
                switch part {
                case .head(let head):
                    status = head.status
                case .body(let buffer):
                    guard answer.count + buffer.readableBytes <= maxBodyBytes else {
                        throw Failure(description: "\(name)\(path) answered more than \(maxBodyBytes) bytes")
                    }
                    answer += buffer.readableBytesView
                case .end:
                    guard let status else { break }
                    return (status, answer)
                }
            }
            throw Failure(description: "\(name) closed the connection before answering \(path)")
        }
    }
}
