@testable import SyncEngine
import Testing

@Suite("A file found missing: deleted, or between the renames of its replacement")
struct MissingFileTests {
    let second: Int64 = 1_000_000_000
    var now: Int64 { 100 * second }
    var timeout: Int64 { MissingFile.replacementTimeout }

    /// Baileys' rename of `name` to `name.bak` starts a replacement whatever the temporary is yet:
    /// none, or one written long before.
    @Test func aRecentRenameToTheBackupIsAReplacementWhateverTheTemporary() {
        #expect(MissingFile(movedToBackup: now - second).isBeingReplaced(now: now))
        #expect(MissingFile(temporaryWritten: now - 2 * timeout, movedToBackup: now - second).isBeingReplaced(now: now))
        #expect(MissingFile(temporaryWritten: now - second).isBeingReplaced(now: now))
        #expect(MissingFile(isBack: true).isBeingReplaced(now: now))
    }

    /// A writer that died between the renames: once both its temporary and its rename to the
    /// backup are older than the timeout, `name` is gone.
    @Test func aReplacementOlderThanTheTimeoutIsADeletion() {
        #expect(!MissingFile(temporaryWritten: now - timeout, movedToBackup: now - timeout).isBeingReplaced(now: now))
        #expect(MissingFile(temporaryWritten: now - timeout, movedToBackup: now - timeout + 1).isBeingReplaced(now: now))
        #expect(!MissingFile(movedToBackup: now - timeout - second).isBeingReplaced(now: now))
    }

    /// A `null` write: no temporary, no backup of the last version.
    @Test func nothingLeftIsADeletion() {
        #expect(!MissingFile().isBeingReplaced(now: now))
    }
}
