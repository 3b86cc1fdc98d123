import FoundationEssentials
import Glibc
import Metrics

/// Every metric the engine emits, through swift-metrics: the engine knows no exporter (the agent
/// bootstraps Prometheus; a library user may bootstrap anything, or nothing). Names and labels
/// follow Prometheus conventions, and live here only, so the README's table has one source.
///
/// Metric objects are looked up at each use rather than kept: swift-metrics binds an object to
/// the factory bootstrapped when it is created, and a kept one created before the bootstrap
/// would report nowhere.
public enum EngineMetrics {
    /// A snapshot written to a store. `store` is "local" or "s3"; in hybrid mode the mirror's
    /// copies to S3 count as uploads to "s3".
    static func uploaded(mode: StorageMode, store: any ObjectStore, bytes: Int64) {
        let dimensions = [("mode", mode.rawValue), ("store", storeLabel(store))]
        Counter(label: "sync_agent_uploads_total", dimensions: dimensions).increment()
        Counter(label: "sync_agent_uploaded_bytes_total", dimensions: dimensions).increment(by: bytes)
    }

    /// A commit to the primary store: its time, and how long its oldest change waited.
    static func committed(lag: Duration?) {
        Gauge(label: "sync_agent_last_upload_timestamp_seconds").record(Date().timeIntervalSince1970)
        if let lag { Timer(label: replicationLagLabel).record(duration: lag) }
    }

    /// The two histograms, for an exporter to give them buckets that fit.
    public static let replicationLagLabel = "sync_agent_replication_lag_seconds"
    public static let restoreDurationLabel = "sync_agent_restore_duration_seconds"

    /// An S3 request that failed after the client's retries, by S3 error code.
    package static func s3Error(code: String) {
        Counter(label: "sync_agent_s3_errors_total", dimensions: [("code", code)]).increment()
    }

    /// A snapshot that found no pause in its session's writes within its patience (`WritePause`).
    static func takenWhileWritten() {
        Counter(label: "sync_agent_snapshots_taken_while_written_total").increment()
    }

    /// A claim's look in the state cache (`StateCache`): a hit spared it reading the session's chain.
    static func stateCacheRead(hit: Bool) {
        Counter(label: "sync_agent_state_cache_reads_total", dimensions: [("result", hit ? "hit" : "miss")]).increment()
    }

    /// A state cache not written (the next claim of the session reads its chain).
    static func stateCacheWriteFailed() {
        Counter(label: "sync_agent_state_cache_write_failures_total").increment()
    }

    static func rescan(_ reason: String) {
        Counter(label: "sync_agent_rescans_total", dimensions: [("reason", reason)]).increment()
        if reason == "queue_overflow" { Counter(label: "sync_agent_inotify_overflows_total").increment() }
    }

    static func watchedDirectories(_ count: Int) {
        Gauge(label: "sync_agent_watched_directories").record(count)
    }

    /// Directories the inotify watch limit left unwatched, compared every `rescanInterval` instead.
    static func unwatchedDirectories(_ count: Int) {
        Gauge(label: "sync_agent_unwatched_directories").record(count)
    }

    /// The gauges that describe the sessions as a whole, refreshed from the engine's state.
    static func sessions(
        pending: Int, oldestPendingChangeAge: Double, fenced: Int, released: Int, failing: Int, skippedFiles: Int,
        refused: [Refusal: Int]
    ) {
        Gauge(label: "sync_agent_pending_sessions").record(pending)
        Gauge(label: "sync_agent_oldest_pending_change_age_seconds").record(oldestPendingChangeAge)
        Gauge(label: "sync_agent_fenced_sessions").record(fenced)
        Gauge(label: "sync_agent_released_sessions").record(released)
        Gauge(label: "sync_agent_failing_sessions").record(failing)
        Gauge(label: "sync_agent_skipped_files").record(skippedFiles)
        // Every reason, zeros included, so an alert on the series sees it return to 0.
        for reason in Refusal.allCases {
            Gauge(label: "sync_agent_refused_sessions", dimensions: [("reason", reason.rawValue)]).record(refused[reason] ?? 0)
        }
    }

    /// Sessions by whether they are registered (`unknown`: no identity known, or a format
    /// without one) and flagged `identity_changed`, every pair present; and the largest
    /// session's file count (Baileys' unbounded pre-keys show there first).
    static func sessionHealth(_ statuses: [SessionStatus]) {
        var counts: [String: [Bool: Int]] = [:]
        for status in statuses where status.state != .refused && status.state != .tombstoned {
            let registered = status.registered.map { "\($0)" } ?? "unknown"
            counts[registered, default: [:]][status.identityChangedAt != nil, default: 0] += 1
        }
        for registered in ["true", "false", "unknown"] {
            for changed in [false, true] {
                Gauge(label: "sync_agent_sessions", dimensions: [("registered", registered), ("identity_changed", "\(changed)")])
                    .record(counts[registered]?[changed] ?? 0)
            }
        }
        Gauge(label: "sync_agent_session_files_max").record(statuses.compactMap(\.files).max() ?? 0)
    }

    /// A session's registered identity replaced (by none, an unregistered or another one).
    /// How long a SQLite capture held its read transaction (a WAL checkpoint cannot pass it meanwhile).
    static func sqliteReadTransaction(_ duration: Duration) {
        Timer(label: "sync_agent_sqlite_read_transaction_seconds").record(duration: duration)
    }

    static func identityChanged() {
        Counter(label: "sync_agent_identity_changes_total").increment()
    }

    static func restored(status: String, duration: Duration) {
        Counter(label: "sync_agent_restores_total", dimensions: [("status", status)]).increment()
        Timer(label: restoreDurationLabel).record(duration: duration)
    }

    static func storeLabel(_ store: any ObjectStore) -> String {
        store.location.hasPrefix("s3://") ? "s3" : "local"
    }

    static func seconds(_ duration: Duration) -> Double {
        let (whole, fraction) = duration.components
        return Double(whole) + Double(fraction) / 1e18
    }
}
