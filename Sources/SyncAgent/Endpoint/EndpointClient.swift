import FoundationEssentials
import Glibc
import NIOCore
import NIOHTTP1
import NIOPosix

/// A GET to a running agent's endpoint, for `status`: swift-nio's HTTP/1 client codec, plain
/// HTTP only (the endpoint listens on loopback or a pod network, never TLS).
struct EndpointClient {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    let baseURL: String
    var timeout: TimeAmount = .seconds(5)
    /// `/sessions` of many sessions is a few MB; anything far beyond is not our agent.
    var maxBodyBytes = 64 << 20

    /// The body of a 200 answer to GET `path`.
    func get(_ path: String) async throws -> [UInt8] {
        guard let url = URL(string: baseURL), url.scheme == "http", let host = url.host else {
            throw Failure(description: "--agent \"\(baseURL)\": expected http://HOST:PORT")
        }
        let port = url.port ?? 80
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(timeout)
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
                }
            }
        // An agent that accepts and never answers must not hang `status`.
        let deadline = channel.channel.eventLoop.scheduleTask(in: timeout) { [channel = channel.channel] in
            channel.close(promise: nil)
        }
        defer { deadline.cancel() }
        return try await channel.executeThenClose { responses, requests in
            var headers = HTTPHeaders()
            headers.add(name: "Host", value: "\(host):\(port)")
            headers.add(name: "Connection", value: "close")
            let target = url.path.hasSuffix("/") ? String(url.path.dropLast()) + path : url.path + path
            try await requests.write(.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: target, headers: headers)))
            try await requests.write(.end(nil))
            var status: HTTPResponseStatus?
            var body: [UInt8] = []
            for try await part in responses {
                switch part {
                case .head(let head):
                    status = head.status
                case .body(let buffer):
                    guard body.count + buffer.readableBytes <= maxBodyBytes else {
                        throw Failure(description: "\(baseURL)\(path) answered more than \(maxBodyBytes) bytes")
                    }
                    body += buffer.readableBytesView
                case .end:
                    guard status == .ok else {
                        throw Failure(description: "\(baseURL)\(path) answered \(status.map { "\($0.code)" } ?? "nothing")")
                    }
                    return body
                }
            }
            throw Failure(description: "\(baseURL)\(path) closed the connection before answering")
        }
    }
}
