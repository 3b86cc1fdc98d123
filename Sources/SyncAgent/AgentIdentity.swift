import FoundationEssentials
import Glibc

/// "host/pid/random": who claimed a session, as a fenced agent's message names it.
func agentIdentity() -> String {
    let host = ProcessInfo.processInfo.hostName
    return "\(host)/\(getpid())/\(UInt32.random(in: 0...UInt32.max))"
}
