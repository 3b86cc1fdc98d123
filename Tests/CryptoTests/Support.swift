import Foundation
import SessionCrypto
import SystemSupport

/// Fixed keys so failures reproduce; FORMAT.md's worked example uses `TestKeys.sequential`.
enum TestKeys {
    /// Bytes 00 01 02 … 1f.
    static let sequentialHex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    static let sequential = try! EncryptionKey(parsing: sequentialHex)
    static let other = try! EncryptionKey(parsing: String(repeating: "ab", count: 32))
    static let third = try! EncryptionKey(parsing: String(repeating: "5c", count: 32))
}

let chunk = 64 * 1024
let identity = ObjectIdentity(sessionID: "4915112345678", objectName: "snap/000123.base")

/// Encrypts through the sink, writing pieces of the given sizes in turn.
func encryptInPieces(
    _ plaintext: [UInt8], pieceSizes: [Int], key: EncryptionKey = TestKeys.sequential,
    identity: ObjectIdentity = identity
) throws -> [UInt8] {
    let object = BufferSink()
    let sink = EncryptingSink(key: key, identity: identity, downstream: object)
    var offset = 0
    var piece = 0
    try plaintext.withUnsafeBytes { bytes in
        while offset < bytes.count {
            let count = min(pieceSizes[piece % pieceSizes.count], bytes.count - offset)
            try sink.write(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count]))
            offset += count
            piece += 1
        }
    }
    try sink.finish()
    return object.bytes
}

/// Decrypts through the source with a read buffer of `bufferSize` bytes.
func decryptReading(
    _ object: [UInt8], bufferSize: Int, keyring: Keyring = Keyring(primary: TestKeys.sequential),
    identity: ObjectIdentity = identity
) throws -> [UInt8] {
    let source = try DecryptingSource(keyring: keyring, identity: identity, upstream: BufferSource(object))
    var plaintext: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: bufferSize)
    while true {
        let count = try buffer.withUnsafeMutableBytes { try source.read(into: $0) }
        if count == 0 { return plaintext }
        plaintext += buffer[0..<count]
    }
}

func writeFile(_ path: String, _ contents: String, mode: Int) throws {
    try contents.write(toFile: path, atomically: false, encoding: .utf8)
    try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
}
