import CSodium

/// The one place that talks to libsodium: every other file in this module goes through
/// these wrappers, so the raw pointer handling for secrets lives here.
enum Sodium {
    /// `sodium_init` must run once before anything else; a `static let` initialiser runs
    /// exactly once and is thread-safe (swift_once), so every entry point just touches it.
    private static let initialized: Bool = sodium_init() >= 0

    static func ensureInitialized() {
        precondition(initialized, "libsodium could not be initialised (sodium_init failed)")
    }

    static func randomBytes(into buffer: UnsafeMutableRawBufferPointer) {
        ensureInitialized()
        randombytes_buf(buffer.baseAddress!, buffer.count)
    }

    /// `crypto_kdf_derive_from_key`; `context` must be exactly 8 bytes.
    static func deriveSubkey(
        into subkey: UnsafeMutableRawBufferPointer, id: UInt64, context: StaticString,
        masterKey: UnsafeRawBufferPointer
    ) {
        precondition(context.utf8CodeUnitCount == Int(crypto_kdf_CONTEXTBYTES))
        precondition(masterKey.count == Int(crypto_kdf_KEYBYTES))
        let status = context.withUTF8Buffer { context in
            context.withMemoryRebound(to: CChar.self) { context in
                crypto_kdf_derive_from_key(
                    subkey.bindMemory(to: UInt8.self).baseAddress!, subkey.count, id,
                    context.baseAddress!, masterKey.bindMemory(to: UInt8.self).baseAddress!)
            }
        }
        precondition(status == 0, "crypto_kdf_derive_from_key rejected a subkey length")
    }

    /// Decodes exactly `output.count` bytes of hex, or returns false.
    static func decodeHex(_ text: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Bool {
        var decodedCount = 0
        var end: UnsafePointer<CChar>?
        let status = text.withMemoryRebound(to: CChar.self) { text in
            sodium_hex2bin(
                output.bindMemory(to: UInt8.self).baseAddress!, output.count,
                text.baseAddress!, text.count, nil, &decodedCount, &end)
        }
        return status == 0 && decodedCount == output.count && end == endPointer(of: text)
    }

    /// Decodes exactly `output.count` bytes of base64 in any of libsodium's four variants
    /// (standard or URL-safe alphabet, with or without padding), or returns false.
    static func decodeBase64(_ text: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Bool {
        let variants = [
            sodium_base64_VARIANT_ORIGINAL, sodium_base64_VARIANT_ORIGINAL_NO_PADDING,
            sodium_base64_VARIANT_URLSAFE, sodium_base64_VARIANT_URLSAFE_NO_PADDING,
        ]
        return variants.contains { variant in
            var decodedCount = 0
            var end: UnsafePointer<CChar>?
            let status = text.withMemoryRebound(to: CChar.self) { text in
                sodium_base642bin(
                    output.bindMemory(to: UInt8.self).baseAddress!, output.count,
                    text.baseAddress!, text.count, nil, &decodedCount, &end, variant)
            }
            return status == 0 && decodedCount == output.count && end == endPointer(of: text)
        }
    }

    private static func endPointer(of text: UnsafeRawBufferPointer) -> UnsafePointer<CChar>? {
        text.baseAddress.map { ($0 + text.count).assumingMemoryBound(to: CChar.self) }
    }

    /// Standard base64 with padding: the form `sync-agent keygen` prints.
    static func encodeBase64(_ bytes: UnsafeRawBufferPointer) -> String {
        let variant = sodium_base64_VARIANT_ORIGINAL
        let capacity = sodium_base64_encoded_len(bytes.count, variant)
        let text = WipedBuffer(count: capacity)
        let encoded = text.bytes.withMemoryRebound(to: CChar.self) { text in
            sodium_bin2base64(
                text.baseAddress!, text.count,
                bytes.bindMemory(to: UInt8.self).baseAddress!, bytes.count, variant)!
        }
        return String(cString: encoded)
    }
}

/// Memory for secrets and plaintext, zeroed with `sodium_memzero` (which the optimiser may
/// not remove) when released, so nothing sensitive outlives its owner in freed heap pages.
final class WipedBuffer {
    /// Enough for every libsodium state, including BLAKE2b's 64-byte-aligned one.
    private static let alignment = 64
    let bytes: UnsafeMutableRawBufferPointer

    init(count: Int) {
        bytes = .allocate(byteCount: count, alignment: Self.alignment)
        bytes.initializeMemory(as: UInt8.self, repeating: 0)
    }

    func slice(_ range: Range<Int>) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: bytes[range])
    }

    deinit {
        sodium_memzero(bytes.baseAddress!, bytes.count)
        bytes.deallocate()
    }
}

/// One `crypto_secretstream_xchacha20poly1305` state: it holds the per-object key and
/// nonce, so it lives in wiped memory and is owned by exactly one encryptor or decryptor.
final class SecretStream {
    static let headerByteCount = Int(crypto_secretstream_xchacha20poly1305_headerbytes())
    static let overheadByteCount = Int(crypto_secretstream_xchacha20poly1305_abytes())
    static let tagMessage = crypto_secretstream_xchacha20poly1305_tag_message()
    static let tagFinal = crypto_secretstream_xchacha20poly1305_tag_final()

    private let storage: WipedBuffer
    private let state: UnsafeMutablePointer<crypto_secretstream_xchacha20poly1305_state>

    private init() {
        storage = WipedBuffer(count: crypto_secretstream_xchacha20poly1305_statebytes())
        state = storage.bytes.baseAddress!.bindMemory(
            to: crypto_secretstream_xchacha20poly1305_state.self, capacity: 1)
    }

    /// Starts an encrypting stream with a fresh random nonce, written into `header`.
    static func push(key: UnsafeRawBufferPointer, header: UnsafeMutableRawBufferPointer) -> SecretStream {
        Sodium.ensureInitialized()
        precondition(header.count == headerByteCount)
        let stream = SecretStream()
        crypto_secretstream_xchacha20poly1305_init_push(
            stream.state, header.bindMemory(to: UInt8.self).baseAddress!,
            key.bindMemory(to: UInt8.self).baseAddress!)
        return stream
    }

    static func pull(key: UnsafeRawBufferPointer, header: UnsafeRawBufferPointer) -> SecretStream {
        Sodium.ensureInitialized()
        precondition(header.count == headerByteCount)
        let stream = SecretStream()
        // init_pull only fails for header bytes it cannot parse, and it parses any 24 bytes.
        _ = crypto_secretstream_xchacha20poly1305_init_pull(
            stream.state, header.bindMemory(to: UInt8.self).baseAddress!,
            key.bindMemory(to: UInt8.self).baseAddress!)
        return stream
    }

    /// Encrypts one chunk into `output` (room for `message.count + overheadByteCount`);
    /// returns the ciphertext length.
    func seal(
        _ message: UnsafeRawBufferPointer, tag: UInt8, associatedData: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer
    ) -> Int {
        precondition(output.count >= message.count + Self.overheadByteCount)
        var sealedCount: UInt64 = 0
        let status = crypto_secretstream_xchacha20poly1305_push(
            state, output.bindMemory(to: UInt8.self).baseAddress!, &sealedCount,
            message.bindMemory(to: UInt8.self).baseAddress, UInt64(message.count),
            associatedData.bindMemory(to: UInt8.self).baseAddress, UInt64(associatedData.count), tag)
        precondition(status == 0, "crypto_secretstream_xchacha20poly1305_push failed")
        return Int(sealedCount)
    }

    /// Authenticates and decrypts one chunk into `output`; nil when authentication fails.
    func open(
        _ ciphertext: UnsafeRawBufferPointer, associatedData: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer
    ) -> (count: Int, tag: UInt8)? {
        precondition(output.count >= ciphertext.count - Self.overheadByteCount)
        var openedCount: UInt64 = 0
        var tag: UInt8 = 0
        let status = crypto_secretstream_xchacha20poly1305_pull(
            state, output.bindMemory(to: UInt8.self).baseAddress!, &openedCount, &tag,
            ciphertext.bindMemory(to: UInt8.self).baseAddress!, UInt64(ciphertext.count),
            associatedData.bindMemory(to: UInt8.self).baseAddress, UInt64(associatedData.count))
        guard status == 0 else { return nil }
        return (Int(openedCount), tag)
    }
}

/// A keyed BLAKE2b (`crypto_generichash`) computation in progress.
final class KeyedHash {
    private let storage: WipedBuffer
    /// The state type is 64-byte aligned in C, which Swift does not import: it is opaque here.
    private let state: OpaquePointer
    private let outputByteCount: Int
    private var finalized = false

    init(key: UnsafeRawBufferPointer, outputByteCount: Int) {
        Sodium.ensureInitialized()
        self.outputByteCount = outputByteCount
        storage = WipedBuffer(count: crypto_generichash_statebytes())
        state = OpaquePointer(storage.bytes.baseAddress!)
        let status = crypto_generichash_init(
            state, key.bindMemory(to: UInt8.self).baseAddress, key.count, outputByteCount)
        precondition(status == 0, "crypto_generichash_init rejected a key or output length")
    }

    func update(_ bytes: UnsafeRawBufferPointer) {
        precondition(!finalized, "hash updated after finalize()")
        guard let start = bytes.baseAddress else { return }
        crypto_generichash_update(state, start.assumingMemoryBound(to: UInt8.self), UInt64(bytes.count))
    }

    /// Finishes the hash; the state cannot be updated afterwards.
    func finalize() -> [UInt8] {
        precondition(!finalized, "hash finalized twice")
        finalized = true
        var digest = [UInt8](repeating: 0, count: outputByteCount)
        let status = crypto_generichash_final(state, &digest, outputByteCount)
        precondition(status == 0, "crypto_generichash_final failed")
        return digest
    }
}
