import ArgumentParser
import FoundationEssentials
import NIOCore
import NIOHTTP1
import SyncEngine

/// How the control commands (`flush`, `release`, `acquire`, `logout`) reach the running agent,
/// and what they do with its answer: print it (JSON) on standard output, or its error in one
/// line on standard error with the exit code of its reason.
struct ControlClientOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "The agent's control socket (env SYNC_AGENT_CONTROL_SOCKET); without it, --agent.", valueName: "path"))
    var controlSocket: String?
    @Option(help: "The agent's endpoint over TCP (env SYNC_AGENT_URL; default http://127.0.0.1:9797); needs --control-token-file.")
    var agent: String?
    @Option(help: ArgumentHelp(
        "The token for the control routes over TCP (0600 or stricter, not a symlink; env SYNC_AGENT_CONTROL_TOKEN_FILE).",
        valueName: "file"))
    var controlTokenFile: String?

    func validate() throws {
        if controlSocket != nil && agent != nil { throw ValidationError("--control-socket and --agent: pass one") }
    }

    /// The exit codes of the control commands, one per failure.
    enum Exit {
        /// `release --all` released some sessions and not others.
        static let someFailed: Int32 = 3
        static func code(forReason reason: String) -> Int32 {
            switch reason {
            case SessionControlError.Reason.notCommitted.rawValue: 5
            case SessionControlError.Reason.heldElsewhere.rawValue: 6
            case SessionControlError.Reason.fenced.rawValue: 7
            case SessionControlError.Reason.released.rawValue: 8
            case SessionControlError.Reason.unknownSession.rawValue, RestoreOutcome.Status.notFound.rawValue,
                RestoreOutcome.Status.loggedOut.rawValue:
                9
            case ControlRoutes.RefusalReason.invalidSessionID.rawValue, ControlRoutes.RefusalReason.badParameter.rawValue:
                ExitCode.validationFailure.rawValue
            // The restore of an acquire failed: a reason of restore's table.
            case SessionControlError.Reason.restoreFailed.rawValue: 4
            // The agent refused the caller (control_off, unauthorized) or the request.
            default: 1
            }
        }
    }

    /// The client for a call that may take `allowance` on the agent's side.
    func client(allowance: Duration) throws -> EndpointClient {
        var client: EndpointClient
        if let socket = controlSocket ?? (agent == nil ? environment("SYNC_AGENT_CONTROL_SOCKET") : nil) {
            client = EndpointClient(.socket(socket))
        } else {
            client = EndpointClient(.url(agent ?? environment("SYNC_AGENT_URL") ?? "http://127.0.0.1:9797"))
            client.token = try (controlTokenFile ?? environment("SYNC_AGENT_CONTROL_TOKEN_FILE")).map(ControlToken.read(from:))?.secret
        }
        // The agent's own bound, and time to connect and answer.
        client.timeout = .seconds(Int64((allowance + .seconds(15)) / .seconds(1)))
        return client
    }

    /// POSTs to `path` (`/sessions/ID/ACTION`), prints the answer; returns its body, or throws
    /// the exit code of its failure.
    @discardableResult
    func post(_ path: String, parameters: [String: String] = [:], allowance: Duration) async throws -> [UInt8] {
        let client = try client(allowance: allowance)
        let query = parameters.sorted { $0.key < $1.key }.map { "\($0.key)=\(Self.percentEncoded($0.value))" }.joined(separator: "&")
        let answer: (status: HTTPResponseStatus, body: [UInt8])
        do {
            answer = try await client.send(.POST, query.isEmpty ? path : path + "?" + query)
        } catch {
            writeStandardError("Error: \(error)\n")
            throw ExitCode(1)
        }
        guard answer.status == .ok else {
            struct Refusal: Decodable {
                var error: String
                var reason: String
            }
            guard let refusal = try? JSONDecoder().decode(Refusal.self, from: Data(answer.body)) else {
                writeStandardError("Error: \(client.name) answered \(answer.status.code) to \(path)\n")
                throw ExitCode(1)
            }
            writeStandardError("Error: \(refusal.error) (\(refusal.reason))\n")
            throw ExitCode(Exit.code(forReason: refusal.reason))
        }
        print(String(decoding: answer.body, as: UTF8.self))
        return answer.body
    }

    /// `/sessions/ID/ACTION` with the id as it prints, percent-encoded.
    static func path(_ session: SessionID, _ action: String) -> String {
        "/sessions/\(percentEncoded(session.description))/\(action)"
    }

    /// Every byte outside RFC 3986's unreserved set as "%XX".
    static func percentEncoded(_ text: String) -> String {
        var encoded = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                encoded.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                encoded += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return encoded
    }

    /// A duration flag as the agent's parameters take it ("1500ms"; flags hold whole milliseconds).
    static func parameter(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        return "\(seconds * 1000 + attoseconds / 1_000_000_000_000_000)ms"
    }
}

private extension String {
    func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}

/// The `--timeout` of a call that commits (flush, release, logout), and the call.
struct CommitCallOptions: ParsableArguments {
    @Option(help: "How long the agent waits for the store (default the agent's, 30s).", transform: DurationSetting.positive)
    var timeout: Duration?

    /// POSTs `path` through `connection` with this timeout; returns the answer's body.
    @discardableResult
    func post(_ path: String, via connection: ControlClientOptions) async throws -> [UInt8] {
        try await connection.post(
            path, parameters: timeout.map { ["timeout": ControlClientOptions.parameter($0)] } ?? [:],
            allowance: timeout ?? ControlRoutes.defaultCallTimeout)
    }
}
