import FoundationEssentials
import Glibc
import Metrics
import NIOCore
import NIOHTTP1
import Prometheus
import ServiceLifecycle
import SyncEngine

/// The routes of `watch --listen` and `--control-socket`: the read routes, and the worker's
/// control routes (`ControlRoutes`, which decide who may call them).
struct AgentRoutes: EndpointRoutes {
    let sync: SyncService
    let registry: PrometheusCollectorRegistry
    let control: ControlRoutes

    func allowance(for request: EndpointRequest) -> TimeAmount { control.allowance(for: request) }

    func respond(to request: EndpointRequest) async -> EndpointResponse {
        if let answer = await control.respond(to: request) { return answer }
        guard request.method == .GET || request.method == .HEAD else {
            var answer = EndpointResponse.text(.methodNotAllowed, "only GET and HEAD")
            answer.headers.append((name: "Allow", value: "GET, HEAD"))
            return answer
        }
        let path = request.path
        switch path {
        case "/healthz":
            return .text(.ok, "ok")
        case "/readyz":
            let readiness = await sync.readiness()
            return .text(readiness.isReady ? .ok : .serviceUnavailable, readiness.reason)
        case "/metrics":
            await sync.publishGauges()
            return EndpointResponse(
                status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: registry.emitToBuffer())
        case "/sessions":
            let report = SessionsReport(generatedAt: Date().formatted(.iso8601), sessions: await sync.status())
            guard let body = try? SessionsReport.encoder.encode(report) else {
                return .text(.internalServerError, "cannot encode the sessions")
            }
            return EndpointResponse(status: .ok, contentType: "application/json", body: Array(body))
        default:
            return .text(.notFound, "no route \(path): use /healthz, /readyz, /metrics or /sessions (POST /sessions/ID/flush, /release, /acquire, /logout, POST /sessions/release)")
        }
    }
}

/// `/sessions` and `status --json`: the sessions as one agent sees them.
struct SessionsReport: Codable {
    var generatedAt: String
    var sessions: [SessionStatus]

    static let encoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()
}

/// Metrics go to a Prometheus registry that `/metrics` renders. Called once, before the engine
/// makes its first metric (swift-metrics binds each metric to the factory of its time).
func bootstrapPrometheus() -> PrometheusCollectorRegistry {
    let registry = PrometheusCollectorRegistry()
    var factory = PrometheusMetricsFactory(registry: registry)
    // The defaults top out at 10 s: an upload waits out a quiet period, a restore downloads.
    factory.durationHistogramBuckets = [
        EngineMetrics.replicationLagLabel: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900].map { Duration.seconds($0) },
        EngineMetrics.restoreDurationLabel: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300].map { Duration.seconds($0) },
    ]
    MetricsSystem.bootstrap(factory)
    return registry
}

/// Runs the endpoint under ServiceLifecycle beside the sidecar; it stops answering after the
/// sidecar has flushed (services shut down in reverse order), by `stop()` rather than by
/// cancellation, so that a worker's call under way then still gets its answer.
struct EndpointService: Service {
    let endpoint: HTTPEndpoint
    let routes: AgentRoutes

    func run() async throws {
        try await withGracefulShutdownHandler {
            try await endpoint.serve(routes)
        } onGracefulShutdown: { [endpoint] in
            endpoint.stop()
        }
    }
}
