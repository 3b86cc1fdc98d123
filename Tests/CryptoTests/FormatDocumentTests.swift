import CSodium
import Foundation
import SessionCrypto
import TestSupport
import Testing

/// FORMAT.md is the contract: these tests read and write objects with nothing but raw
/// libsodium calls, following the document's offsets and rules, never this module's code.
struct FormatDocumentTests {
    static let masterKey: [UInt8] = Array(0..<32)  // TestKeys.sequential
    static let context = "syncagnt"

    init() {
        #expect(sodium_init() >= 0)
    }

    @Test func libsodiumConstantsAreTheDocumentedOnes() {
        #expect(crypto_secretstream_xchacha20poly1305_headerbytes() == 24)
        #expect(crypto_secretstream_xchacha20poly1305_abytes() == 17)
        #expect(crypto_secretstream_xchacha20poly1305_keybytes() == 32)
        #expect(crypto_secretstream_xchacha20poly1305_tag_message() == 0)
        #expect(crypto_secretstream_xchacha20poly1305_tag_final() == 3)
        #expect(crypto_kdf_contextbytes() == 8)
    }

    @Test(arguments: [0, 1, 1000, 64 * 1024, 64 * 1024 + 1, 3 * 64 * 1024 + 5])
    func objectsDecryptWithOnlyTheDocument(size: Int) throws {
        let plaintext = randomBytes(size, seed: UInt64(size))
        let object = encrypt(plaintext, key: TestKeys.sequential, identity: identity)
        #expect(try Self.documentedDecrypt(object, identity: identity) == plaintext, "size \(size)")
    }

    @Test(arguments: [0, 5, 64 * 1024, 2 * 64 * 1024 + 3])
    func objectsWrittenWithOnlyTheDocumentDecrypt(size: Int) throws {
        let plaintext = randomBytes(size, seed: UInt64(size) + 7)
        let object = Self.documentedEncrypt(plaintext, identity: identity)
        #expect(try decrypt(object, keyring: Keyring(primary: TestKeys.sequential), identity: identity) == plaintext)
    }

    @Test func keyIDAndContentIDDerivations() {
        #expect(TestKeys.sequential.id.bytes == Array(Self.subkey(id: 3, length: 16).prefix(8)))
        let content = Array("session-4915112345678.0.json".utf8)
        var expected = [UInt8](repeating: 0, count: 32)
        let contentKey = Self.subkey(id: 2, length: 32)
        crypto_generichash(&expected, 32, content, UInt64(content.count), contentKey, 32)
        #expect(TestKeys.sequential.contentID(of: content).bytes == expected)
    }

    @Test func kdfIsPlainBLAKE2bWithSaltAndPersonalisation() {
        // FORMAT.md restates crypto_kdf in BLAKE2b terms for implementations without libsodium.
        for (id, length) in [(1, 32), (2, 32), (3, 16)] {
            var salt = [UInt8](repeating: 0, count: 16)
            for byte in 0..<8 { salt[byte] = UInt8(truncatingIfNeeded: UInt64(id) >> (8 * UInt64(byte))) }
            let personal = Array(Self.context.utf8) + [UInt8](repeating: 0, count: 8)
            var output = [UInt8](repeating: 0, count: length)
            crypto_generichash_blake2b_salt_personal(&output, length, nil, 0, Self.masterKey, 32, salt, personal)
            #expect(output == Self.subkey(id: UInt64(id), length: length), "subkey \(id)")
        }
    }

    @Test func workedExampleInTheDocumentDecrypts() throws {
        let example = ObjectIdentity(sessionID: "s1", objectName: "snap/1.manifest")
        let object = try #require(Self.bytes(hex: Self.workedExample.joined()))
        let plaintext = Array("hi\n".utf8)
        #expect(try Self.documentedDecrypt(object, identity: example) == plaintext)
        #expect(try decrypt(object, keyring: Keyring(primary: TestKeys.sequential), identity: example) == plaintext)

        let format = try String(contentsOfFile: Self.formatDocumentPath, encoding: .utf8)
        let shown = Self.workedExample + [
            Self.hex(Self.masterKey), TestKeys.sequential.base64EncodedString(),
            Self.hex(Self.subkey(id: 1, length: 32)), Self.hex(Self.subkey(id: 2, length: 32)),
            Self.hex(Self.subkey(id: 3, length: 16)), "\(TestKeys.sequential.id)",
            "\(TestKeys.sequential.contentID(of: plaintext))",
            Self.hex(Array(object[0..<41])),
            "00000002 7331 0000000f \(Self.hex(Array("snap/1.manifest".utf8)))",
        ]
        for value in shown {
            #expect(format.contains(value), "FORMAT.md's worked example must show \(value)")
        }
    }

    // MARK: - FORMAT.md, implemented with raw libsodium

    /// The worked example object in FORMAT.md, field by field as the document lists it.
    static let workedExample = [
        "53594e4341454e43", "01", "2119518612db2763", "7362388a116a1536c35b34bd9cca7958aaf85f5c03ebe71c",
        "00000014", "113fda63dfb5c52d9db14549b1558577a1a9e5e8",
    ]

    static var formatDocumentPath: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("FORMAT.md").path
    }

    /// crypto_kdf_derive_from_key(length, id, "syncagnt", master key).
    static func subkey(id: UInt64, length: Int) -> [UInt8] {
        var subkey = [UInt8](repeating: 0, count: length)
        #expect(crypto_kdf_derive_from_key(&subkey, length, id, context, masterKey) == 0)
        return subkey
    }

    static func associatedData(header: ArraySlice<UInt8>, identity: ObjectIdentity) -> [UInt8] {
        let session = Array(identity.sessionID.utf8), name = Array(identity.objectName.utf8)
        return Array(header) + bigEndian(UInt32(session.count)) + session + bigEndian(UInt32(name.count)) + name
    }

    static func bigEndian(_ value: UInt32) -> [UInt8] {
        (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * UInt32($0))) }
    }

    struct FormatViolation: Error { let reason: String }

    static func documentedDecrypt(_ object: [UInt8], identity: ObjectIdentity) throws -> [UInt8] {
        guard object.count >= 41 else { throw FormatViolation(reason: "short header") }
        guard object[0..<8].elementsEqual("SYNCAENC".utf8) else { throw FormatViolation(reason: "magic") }
        guard object[8] == 1 else { throw FormatViolation(reason: "version") }
        guard object[9..<17].elementsEqual(subkey(id: 3, length: 16).prefix(8)) else { throw FormatViolation(reason: "key id") }
        let streamKey = subkey(id: 1, length: 32)
        let additional = associatedData(header: object[0..<41], identity: identity)

        var state = crypto_secretstream_xchacha20poly1305_state()
        guard crypto_secretstream_xchacha20poly1305_init_pull(&state, Array(object[17..<41]), streamKey) == 0 else {
            throw FormatViolation(reason: "init_pull")
        }
        var plaintext: [UInt8] = []
        var offset = 41
        while true {
            guard offset + 4 <= object.count else { throw FormatViolation(reason: "missing chunk length") }
            let length = Int(object[offset..<offset + 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
            offset += 4
            guard (17...65553).contains(length), offset + length <= object.count else {
                throw FormatViolation(reason: "chunk length \(length)")
            }
            var message = [UInt8](repeating: 0, count: length - 17)
            var messageLength: UInt64 = 0
            var tag: UInt8 = 0
            let sealed = Array(object[offset..<offset + length])
            guard crypto_secretstream_xchacha20poly1305_pull(
                &state, &message, &messageLength, &tag, sealed, UInt64(length), additional, UInt64(additional.count)) == 0
            else { throw FormatViolation(reason: "authentication at \(offset)") }
            offset += length
            plaintext += message
            if tag == 3 {
                guard offset == object.count else { throw FormatViolation(reason: "bytes after FINAL") }
                return plaintext
            }
            guard tag == 0, length == 65553 else { throw FormatViolation(reason: "tag \(tag), length \(length)") }
        }
    }

    static func documentedEncrypt(_ plaintext: [UInt8], identity: ObjectIdentity) -> [UInt8] {
        var header = Array("SYNCAENC".utf8) + [1] + subkey(id: 3, length: 16).prefix(8)
        var streamHeader = [UInt8](repeating: 0, count: 24)
        var state = crypto_secretstream_xchacha20poly1305_state()
        crypto_secretstream_xchacha20poly1305_init_push(&state, &streamHeader, subkey(id: 1, length: 32))
        header += streamHeader
        let additional = associatedData(header: header[...], identity: identity)

        var object = header
        var offset = 0
        repeat {
            let count = min(65536, plaintext.count - offset)
            let isLast = offset + count == plaintext.count
            var sealed = [UInt8](repeating: 0, count: count + 17)
            var sealedLength: UInt64 = 0
            crypto_secretstream_xchacha20poly1305_push(
                &state, &sealed, &sealedLength, Array(plaintext[offset..<offset + count]), UInt64(count),
                additional, UInt64(additional.count), isLast ? 3 : 0)
            object += bigEndian(UInt32(sealedLength)) + sealed
            offset += count
            if isLast { return object }
        } while true
    }

    static func hex(_ bytes: [UInt8]) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    static func bytes(hex: String) -> [UInt8]? {
        let digits = Array(hex.utf8)
        guard digits.count % 2 == 0 else { return nil }
        return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(decoding: digits[$0..<$0 + 2], as: UTF8.self), radix: 16) }
            .reduce(into: [UInt8]?([])) { result, byte in
                if let byte { result?.append(byte) } else { result = nil }
            }
    }
}
