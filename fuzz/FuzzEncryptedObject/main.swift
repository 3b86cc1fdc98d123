import FuzzSupport
import SessionCrypto
import SystemSupport

// libFuzzer target: DecryptingSource over arbitrary bytes. Anything but a CryptoError (or a
// crash, a hang, a sanitizer report) is a finding.

/// FORMAT.md's worked-example key and identity, so the seeds (made by the real writer with
/// them) authenticate before the fuzzer mutates them.
let keyring = Keyring(primary: try! EncryptionKey(parsing: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="))
let identity = ObjectIdentity(sessionID: "s1", objectName: "snap/1.manifest")

/// Two leading bytes choose how many bytes the upstream hands out per read and how many the
/// reader asks for per read (1 byte to 64 KiB each), so headers, lengths and chunks are split at
/// every offset, as a slow network splits them.
func readSize(_ byte: UInt8) -> Int { 1 << (Int(byte) % 17) }

final class TricklingSource: ByteSource {
    private let bytes: [UInt8]
    private let step: Int
    private var offset = 0

    init(_ bytes: ArraySlice<UInt8>, step: Int) {
        self.bytes = Array(bytes)
        self.step = step
    }

    var servedEverything: Bool { offset == bytes.count }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let count = min(step, buffer.count, bytes.count - offset)
        guard count > 0 else { return 0 }
        bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<offset + count])) }
        offset += count
        return count
    }
}

/// An empty object, FORMAT.md's `hi\n`, one full chunk, and a full chunk plus a short last one;
/// each after the prefix 16, 16 (64 KiB reads on both sides).
func writeSeeds(into directory: String) throws {
    let pattern = { (count: Int) in (0..<count).map { UInt8(truncatingIfNeeded: $0 * 7) } }
    let plaintexts = [
        "empty": [], "format-example": Array("hi\n".utf8), "one-chunk": pattern(64 << 10),
        "two-chunks": pattern((64 << 10) + 1000),
    ]
    for (name, plaintext) in plaintexts {
        try writeSeed([16, 16] + encrypt(plaintext, key: keyring.primary, identity: identity), named: name, into: directory)
    }
}

runFuzzer(writeSeeds: writeSeeds) { input in
    guard input.count >= 2 else { return }
    let upstream = TricklingSource(input.dropFirst(2), step: readSize(input[0]))
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: readSize(input[1]), alignment: 1)
    defer { buffer.deallocate() }
    do {
        let source = try DecryptingSource(keyring: keyring, identity: identity, upstream: upstream)
        while try source.read(into: buffer) > 0 {}
        precondition(upstream.servedEverything, "an object authenticated with bytes left after its final chunk")
    } catch is CryptoError {
    } catch {
        preconditionFailure("DecryptingSource threw something other than a CryptoError: \(error)")
    }
}
