import FuzzSupport
import SyncEngine

// libFuzzer target: the snapshot manifest decoder (the JSON Lines inside every snapshot object). It
// must refuse bad input with an error; what it accepts must be usable as a session state.

runFuzzer { input in
    guard let manifest = try? SnapshotManifest.decode(input) else { return }
    _ = manifest.applied(to: manifest.files)
}
