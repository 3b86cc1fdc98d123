import FuzzSupport
import SyncEngine

// libFuzzer target: the head decoder (the JSON inside every head object, once decrypted: what
// every reader of a session trusts first). It must refuse bad input with a SnapshotError; a head it
// accepts must survive being written again unchanged.

runFuzzer { input in
    let head: SessionHead
    do {
        head = try SessionHead.decode(input)
    } catch is SnapshotError {
        return
    } catch {
        preconditionFailure("the head decoder threw an untyped error: \(error)")
    }
    let rewritten = try? SessionHead.decode(try head.encoded())
    precondition(rewritten == head, "an accepted head does not survive being written again")
}
