import FoundationEssentials
import Logging
import NIOCore
import NIOHTTP1
import SessionArchive
import SyncEngine

/// The worker's routes (issue 14): `POST /sessions/{id}/flush|release|acquire|logout` and
/// `POST /sessions/release`, calling `SessionControl`. Open on the control socket; on TCP only
/// with the bearer token of `--control-token-file`, and answered 403 without one. A request
/// that is refused (no route is nil: the read routes answer it) reaches `control` never.
struct ControlRoutes: Sendable {
    enum Action: String, Sendable {
        case flush, release, acquire, logout
        /// `POST /sessions/release`.
        case releaseAll
    }

    let control: any SessionControl
    /// Opens the routes on TCP; nil: they are off there.
    let token: ControlToken?
    /// A flush, release or logout without a `timeout` parameter waits this long for the store;
    /// an acquire's restore has this long after its wait.
    var callTimeout = Self.defaultCallTimeout
    static let defaultCallTimeout = Duration.seconds(30)
    let logger: Logger
    /// Where the engine's work runs: Swift's pool, not the endpoint's thread (`respond`). Tests
    /// give their fake engine a thread of its own, which their neighbours cannot hold up.
    var engineExecutor: any TaskExecutor = globalConcurrentExecutor

    /// The longest `timeout` or `waitRelease` a request may ask for.
    static let longestWait = Duration.seconds(600)

    /// The action and the id's path segment (still percent-encoded) `path` names; nil for any
    /// other path.
    static func route(_ path: String) -> (action: Action, id: Substring?)? {
        let prefix = "/sessions/"
        guard path.hasPrefix(prefix) else { return nil }
        let segments = path.dropFirst(prefix.count).split(separator: "/", omittingEmptySubsequences: false)
        if segments == ["release"] { return (.releaseAll, nil) }
        guard segments.count == 2, !segments[0].isEmpty, let action = Action(rawValue: String(segments[1])),
            action != .releaseAll
        else { return nil }
        return (action, segments[0])
    }

    func allowance(for request: EndpointRequest) -> TimeAmount {
        guard let (action, _) = Self.route(request.path), let parameters = try? Parameters(request, for: action) else {
            return .zero
        }
        let wait = action == .acquire ? parameters.waitRelease + callTimeout : parameters.timeout ?? callTimeout
        return .nanoseconds(Int64(wait / .nanoseconds(1)))
    }

    /// The answer to a control route; nil when `request` names none.
    func respond(to request: EndpointRequest) async -> EndpointResponse? {
        guard let (action, idSegment) = Self.route(request.path) else { return nil }
        switch request.transport {
        case .unixSocket:
            break
        case .tcp:
            guard let token else {
                return Self.error(
                    .forbidden, "the control routes are off on TCP: use the control socket (--control-socket) or start the agent with --control-token-file",
                    reason: RefusalReason.controlOff.rawValue)
            }
            guard token.authorizes(request.headers) else {
                var answer = Self.error(.unauthorized, "a control route over TCP needs the agent's token as a bearer token (the Authorization header)", reason: RefusalReason.unauthorized.rawValue)
                answer.headers.append((name: "WWW-Authenticate", value: "Bearer"))
                return answer
            }
        }
        guard request.method == .POST else {
            var answer = Self.error(.methodNotAllowed, "\(request.path) takes POST", reason: RefusalReason.methodNotAllowed.rawValue)
            answer.headers.append((name: "Allow", value: "POST"))
            return answer
        }
        let session: SessionID?
        let parameters: Parameters
        do {
            session = try idSegment.map(Self.sessionID)
            parameters = try Parameters(request, for: action)
        } catch {
            return Self.error(.badRequest, error.description, reason: error.reason.rawValue)
        }
        // The engine's work (a flush's wait, an acquire's restore) runs on the pool, not on the
        // endpoint's thread, which keeps answering the other requests meanwhile.
        let answer = await withTaskExecutorPreference(engineExecutor) { await call(action, session, parameters) }
        logger.info("control", metadata: [
            "route": "\(action.rawValue)", "session": "\(session?.description ?? "-")", "status": "\(answer.status.code)",
        ])
        return answer
    }

    private func call(_ action: Action, _ session: SessionID?, _ parameters: Parameters) async -> EndpointResponse {
        let timeout = parameters.timeout ?? callTimeout
        do throws(SessionControlError) {
            switch (action, session) {
            case (.releaseAll, _):
                return Self.json(.ok, await control.releaseAll(timeout: timeout))
            case (.flush, let session?):
                return Self.json(.ok, try await control.flush(session, timeout: timeout))
            case (.release, let session?):
                return Self.json(.ok, try await control.release(session, timeout: timeout))
            case (.logout, let session?):
                return Self.json(.ok, try await control.logout(session, timeout: timeout))
            case (.acquire, let session?):
                let report = try await control.acquire(
                    session, options: AcquireOptions(waitRelease: parameters.waitRelease, takeOver: parameters.takeOver))
                if let failure = report.failedSessions.first {
                    let status: HTTPResponseStatus = switch failure.reason {
                    case RestoreOutcome.Status.notFound.rawValue: .notFound
                    case RestoreOutcome.Status.loggedOut.rawValue: .conflict
                    default: .internalServerError
                    }
                    return Self.error(status, failure.error, reason: failure.reason)
                }
                return Self.json(.ok, report)
            case (_, nil):
                return Self.error(.notFound, "no session named", reason: SessionControlError.Reason.unknownSession.rawValue)
            }
        } catch {
            return Self.error(Self.status(of: error.reason), error.message, reason: error.reason.rawValue)
        }
    }

    static func status(of reason: SessionControlError.Reason) -> HTTPResponseStatus {
        switch reason {
        case .unknownSession: .notFound
        case .notCommitted: .gatewayTimeout
        case .fenced, .heldElsewhere, .released: .conflict
        case .restoreFailed: .internalServerError
        }
    }

    /// The stable words of the routes' own refusals, beside the engine's
    /// (`SessionControlError.Reason`).
    enum RefusalReason: String {
        case invalidSessionID = "invalid_session_id"
        case badParameter = "bad_parameter"
        case controlOff = "control_off"
        case unauthorized
        case methodNotAllowed = "method_not_allowed"
        case bodyTooLarge = "body_too_large"
    }

    /// A request the routes refuse: its message and the stable word clients branch on.
    struct Refusal: Error, CustomStringConvertible {
        let description: String
        let reason: RefusalReason
    }

    /// The id in a path segment: its percent-encoded bytes, which must be UTF-8 and the id as
    /// `SessionID.description` prints it (a name that is not UTF-8 is "~" and its bytes' hex).
    static func sessionID(_ segment: Substring) throws(Refusal) -> SessionID {
        guard let bytes = percentDecoded(segment) else {
            throw Refusal(description: "the session id in the path is not percent-encoded properly", reason: .invalidSessionID)
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw Refusal(
                description: "the session id in the path is not UTF-8: address such a name as \"~\" and the lowercase hex of its bytes, as /sessions prints it",
                reason: .invalidSessionID)
        }
        do {
            return try SessionID(parsing: text)
        } catch {
            throw Refusal(description: "\(FileName.displayed(text)): \(error.description)", reason: .invalidSessionID)
        }
    }

    /// The bytes `%XX` escapes and plain characters spell; nil for a "%" not followed by two
    /// hex digits.
    static func percentDecoded(_ text: Substring) -> [UInt8]? {
        var bytes: [UInt8] = []
        var utf8 = text.utf8[...]
        while let byte = utf8.popFirst() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard utf8.count >= 2, let value = UInt8(String(decoding: utf8.prefix(2), as: UTF8.self), radix: 16) else { return nil }
            bytes.append(value)
            utf8 = utf8.dropFirst(2)
        }
        return bytes
    }

    /// What a request asks beyond its route, from the query (`?waitRelease=5s&takeOver=true`)
    /// or a JSON object body (`{"waitRelease": "5s", "takeOver": true}`; a number is
    /// milliseconds), not both: `timeout` (flush, release, logout, release all), `waitRelease`
    /// and `takeOver` (acquire). Anything else is refused.
    struct Parameters: Equatable {
        var timeout: Duration?
        var waitRelease = AcquireOptions().waitRelease
        var takeOver = false

        init(_ request: EndpointRequest, for action: Action) throws(Refusal) {
            let query = request.query.flatMap { $0.isEmpty ? nil : $0 }
            let body = request.body.allSatisfy { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\t") }
                ? nil : request.body
            var given: [(name: String, value: Value)] = []
            switch (query, body) {
            case (let query?, nil):
                for pair in query.split(separator: "&") {
                    let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                    guard let name = Self.text(parts[0]), let value = parts.count == 2 ? Self.text(parts[1]) : "" else {
                        throw Refusal(description: "the query is not percent-encoded properly", reason: .badParameter)
                    }
                    given.append((name, .text(value)))
                }
            case (nil, let body?):
                do {
                    given = try JSONDecoder().decode(JSONParameters.self, from: Data(body)).values
                } catch {
                    throw Refusal(
                        description: "the body is not a JSON object of parameters (strings, numbers, booleans)", reason: .badParameter)
                }
            case (nil, nil):
                break
            case (_?, _?):
                throw Refusal(description: "parameters in both the query and the body: pass them in one", reason: .badParameter)
            }
            let accepted = action == .acquire ? ["waitRelease", "takeOver"] : ["timeout"]
            for (name, value) in given {
                guard accepted.contains(name) else {
                    throw Refusal(
                        description: "\(FileName.displayed(name)): not a parameter of \(action.rawValue) (it takes \(accepted.joined(separator: ", ")))",
                        reason: .badParameter)
                }
                switch name {
                case "takeOver": takeOver = try value.bool(name)
                case "waitRelease": waitRelease = try value.duration(name, allowsZero: true)
                default: timeout = try value.duration(name, allowsZero: false)
                }
            }
        }

        private static func text(_ encoded: Substring) -> String? {
            percentDecoded(encoded).flatMap { String(validating: $0, as: UTF8.self) }
        }

        enum Value: Equatable {
            case text(String)
            case number(Double)
            case bool(Bool)

            func bool(_ name: String) throws(Refusal) -> Bool {
                switch self {
                case .bool(let value): return value
                case .text("true"), .text(""): return true
                case .text("false"): return false
                default: throw Refusal(description: "\(name): expected true or false", reason: .badParameter)
                }
            }

            func duration(_ name: String, allowsZero: Bool) throws(Refusal) -> Duration {
                let duration: Duration
                do throws(UsageError) {
                    switch self {
                    case .text(let text): duration = try DurationSetting.nonNegative(text)
                    case .number(let milliseconds) where milliseconds >= 0 && milliseconds == milliseconds.rounded() && milliseconds <= 1e12:
                        duration = .milliseconds(Int64(milliseconds))
                    default: throw UsageError(.notADuration, "expected a duration such as 500ms or 5s, or a number of milliseconds")
                    }
                } catch {
                    throw Refusal(description: "\(name): \(error.description)", reason: .badParameter)
                }
                guard allowsZero || duration > .zero else {
                    throw Refusal(description: "\(name): must be longer than 0", reason: .badParameter)
                }
                guard duration <= ControlRoutes.longestWait else {
                    throw Refusal(description: "\(name): at most \(ControlRoutes.longestWait)", reason: .badParameter)
                }
                return duration
            }
        }

        /// A JSON object's members, in any order, whatever their names (checked afterwards).
        private struct JSONParameters: Decodable {
            struct Name: CodingKey {
                let stringValue: String
                init(stringValue: String) { self.stringValue = stringValue }
                var intValue: Int? { nil }
                init?(intValue: Int) { nil }
            }

            var values: [(name: String, value: Value)] = []

            init(from decoder: any Decoder) throws {
                let object = try decoder.container(keyedBy: Name.self)
                for key in object.allKeys.sorted(by: { $0.stringValue < $1.stringValue }) {
                    if let bool = try? object.decode(Bool.self, forKey: key) {
                        values.append((key.stringValue, .bool(bool)))
                    } else if let number = try? object.decode(Double.self, forKey: key) {
                        values.append((key.stringValue, .number(number)))
                    } else {
                        values.append((key.stringValue, .text(try object.decode(String.self, forKey: key))))
                    }
                }
            }
        }
    }

    static let encoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }()

    static func json(_ status: HTTPResponseStatus, _ value: some Encodable) -> EndpointResponse {
        guard let body = try? encoder.encode(value) else {
            return error(.internalServerError, "cannot encode the answer", reason: "internal")
        }
        return EndpointResponse(status: status, contentType: "application/json", body: Array(body))
    }

    /// `{"error": message, "reason": reason}`.
    static func errorBody(_ message: String, reason: String) -> [UInt8] {
        struct Body: Encodable {
            var error: String
            var reason: String
        }
        return (try? encoder.encode(Body(error: message, reason: reason))).map(Array.init) ?? Array("{}".utf8)
    }

    static func error(_ status: HTTPResponseStatus, _ message: String, reason: String) -> EndpointResponse {
        EndpointResponse(status: status, contentType: "application/json", body: errorBody(message, reason: reason))
    }
}
