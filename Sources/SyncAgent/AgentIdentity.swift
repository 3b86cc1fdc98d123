import ArgumentParser
import FoundationEssentials
import Glibc
import SyncEngine

/// Who this agent is, for the commands that write (`watch`, `restore`, `backup`).
struct AgentOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "This agent's identity: heads name it as the holder of the sessions it claims (env SYNC_AGENT_ID; default HOST:SESSIONS_DIR, the host name and the sessions directory's absolute path). The same id restarted re-acquires its sessions at once; a new one waits for the old holder's lease.",
        valueName: "id"))
    var agentId: String?

    /// The agent id given or the default, and this process ("host/pid/random").
    func identity(sessionsDirectory: String) throws(UsageError) -> AgentIdentity {
        let host = ProcessInfo.processInfo.hostName
        let id = agentId ?? environment("SYNC_AGENT_ID") ?? AgentIdentity.defaultID(host: host, sessionsDirectory: sessionsDirectory)
        if let defect = AgentIdentity.defect(ofID: id) { throw UsageError(.unknownValue, "--agent-id: \(defect)") }
        return AgentIdentity(id: id, instance: "\(host)/\(getpid())/\(UInt32.random(in: 0...UInt32.max))")
    }
}

/// The lease of the commands that hold sessions (`watch`, an acquiring `restore`).
struct LeaseOptions: ParsableArguments {
    @Option(
        help: "How long another agent waits, after the lease stops being renewed, before it takes this agent's sessions; renewed every third of it (env SYNC_AGENT_LEASE_TTL; default 30s).",
        transform: DurationSetting.positive)
    var leaseTtl: Duration?

    var resolvedLeaseTTL: Duration {
        get throws(UsageError) { try DurationSetting.resolve(leaseTtl, variable: "SYNC_AGENT_LEASE_TTL", allowsZero: false) ?? .seconds(30) }
    }
}
