import ArgumentParser
import SessionArchive
import SyncEngine

/// The retention policy, shared by `prune`, `backup` and `watch` so all three keep the same
/// snapshots. The environment variables let one deployment setting reach every one of them:
/// a `watch` or `backup` without the policy would delete, at each new base, history a `prune`
/// with a longer policy keeps.
struct RetentionOptions: ParsableArguments {
    @Option(help: "Keep the newest N snapshots of each session (env SYNC_AGENT_KEEP_LAST).")
    var keepLast: Int?
    @Option(help: "Keep the newest snapshot of each of the last N hours that have one (env SYNC_AGENT_KEEP_HOURLY).")
    var keepHourly: Int?
    @Option(help: "Likewise for days (env SYNC_AGENT_KEEP_DAILY).")
    var keepDaily: Int?
    @Option(help: "Likewise for ISO weeks (env SYNC_AGENT_KEEP_WEEKLY).")
    var keepWeekly: Int?
    @Option(
        help: "Keep every snapshot written within this long before the newest, e.g. 36h, 7d, 2w (env SYNC_AGENT_KEEP_WITHIN).",
        transform: DurationSetting.positive)
    var keepWithin: Duration?

    func validate() throws {
        try rejectingUsageErrors { _ = try policy() }
    }

    /// The configured policy; nil when no rule is set by a flag or the environment.
    func policy() throws -> RetentionPolicy? {
        func count(_ flag: Int?, _ name: String, _ variable: String) throws(UsageError) -> Int? {
            guard let text = flag.map(String.init) ?? environment(variable) else { return nil }
            guard let value = Int(text), value >= 1 else {
                throw UsageError(.notACount, "\(flag == nil ? variable : "--\(name)") \"\(FileName.displayed(text))\": expected a whole number, at least 1")
            }
            return value
        }
        let policy = RetentionPolicy(
            keepLast: try count(keepLast, "keep-last", "SYNC_AGENT_KEEP_LAST"),
            keepHourly: try count(keepHourly, "keep-hourly", "SYNC_AGENT_KEEP_HOURLY"),
            keepDaily: try count(keepDaily, "keep-daily", "SYNC_AGENT_KEEP_DAILY"),
            keepWeekly: try count(keepWeekly, "keep-weekly", "SYNC_AGENT_KEEP_WEEKLY"),
            keepWithin: try DurationSetting.resolve(keepWithin, variable: "SYNC_AGENT_KEEP_WITHIN", allowsZero: false))
        return policy == RetentionPolicy() ? nil : policy
    }

    /// What the replicator applies after each new base: the configured policy, or by default the
    /// current chain and the one before it.
    func compactionRetention() throws -> RetentionPolicy {
        try policy() ?? .compactionDefault
    }
}
