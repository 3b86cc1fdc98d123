import Foundation
import SessionCrypto
import TestSupport
import Testing

struct KeyTests {
    /// Bytes chosen so that standard base64 contains both `+` and `/`.
    static let keyBytes: [UInt8] = (0..<32).map { UInt8(truncatingIfNeeded: 251 &- $0 &* 7) }
    static var standardBase64: String { Data(keyBytes).base64EncodedString() }
    static var hex: String { keyBytes.map { String(format: "%02x", $0) }.joined() }

    @Test func parsesHexAndEveryBase64Variant() throws {
        let standard = Self.standardBase64
        #expect(standard.contains("+") && standard.contains("/") && standard.hasSuffix("="))
        let urlSafe = standard.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        let forms = [
            Self.hex, Self.hex.uppercased(), standard, String(standard.dropLast()),
            urlSafe, String(urlSafe.dropLast()), "  \n\t\(standard) \r\n", "\n\(Self.hex)\n",
        ]
        let expected = try EncryptionKey(parsing: Self.hex).id
        for form in forms {
            #expect(try EncryptionKey(parsing: form).id == expected, "form \(form.debugDescription)")
        }
        #expect(TestKeys.sequential.id != expected)
    }

    static let secretLooking = "c0ffee11c0ffee22c0ffee33c0ffee44c0ffee55c0ffee66c0ffee77c0ffee88"
    static let invalidKeys: [(String, String)] = [
        ("", "is empty"),
        ("   \n", "is empty"),
        (String(Self.secretLooking.dropLast()), "has 63 characters"),
        (Self.secretLooking + "99", "has 66 characters"),
        (String(Self.secretLooking.dropLast()) + "z", "is not hexadecimal"),
        (String(standardBase64.dropLast(2)) + "!=", "is not valid base64"),
        (Data(keyBytes.dropLast()).base64EncodedString(), "is not valid base64"),  // 31 bytes, 44 characters
        (Data(keyBytes + [1]).base64EncodedString(), "is not valid base64"),  // 33 bytes, 44 characters
        (Data(keyBytes + [1, 2, 3, 4]).base64EncodedString(), "has 48 characters"),
        (String(repeating: "é", count: 22), "is not valid base64"),
    ]

    @Test(arguments: invalidKeys)
    func invalidKeysAreRejectedWithoutEchoingThem(text: String, expectedReason: String) {
        let error = #expect(throws: CryptoError.self, "\(text.debugDescription)") { try EncryptionKey(parsing: text) }
        guard case .invalidKey(let reason)? = error else {
            Issue.record("\(text.debugDescription): \(String(describing: error))")
            return
        }
        #expect(reason.contains(expectedReason), "\(text.debugDescription): \(reason)")
        expectNoSubstring(of: text, in: "\(error!)")
    }

    @Test func keysNeverPrintTheirMaterial() throws {
        let key = try EncryptionKey(parsing: Self.hex)
        var dumped = ""
        dump(key, to: &dumped)
        for shown in ["\(key)", String(reflecting: key), dumped, "\(Keyring(primary: key))"] {
            #expect(shown.contains("\(key.id)"), "\(shown)")
            expectNoSubstring(of: Self.hex, in: shown)
            expectNoSubstring(of: Self.standardBase64, in: shown)
        }
    }

    @Test func generatedKeysAreFreshAndSurviveTheirPrintedForm() throws {
        let first = EncryptionKey.generate(), second = EncryptionKey.generate()
        #expect(first.id != second.id)
        let printed = first.base64EncodedString()
        #expect(printed.count == 44)
        #expect(Data(base64Encoded: printed)?.count == 32)
        #expect(try EncryptionKey(parsing: printed).id == first.id)
        #expect(try EncryptionKey(parsing: Self.hex).base64EncodedString() == Self.standardBase64)
    }

    @Test func keyIDIsShownAsSixteenHexDigits() {
        #expect(TestKeys.sequential.id.bytes.count == 8)
        #expect("\(TestKeys.sequential.id)" == TestKeys.sequential.id.bytes.map { String(format: "%02x", $0) }.joined())
    }

    // MARK: - Keyring loading

    @Test func environmentValueListsKeysPrimaryFirst() throws {
        let value = " \(TestKeys.other.base64EncodedString()) ,\(TestKeys.sequentialHex),, \(TestKeys.third.base64EncodedString())\n"
        let keyring = try Keyring.load(keyFiles: [], environmentValue: value)
        #expect(keyring.primary.id == TestKeys.other.id)
        #expect(keyring.keys.map(\.id) == [TestKeys.other.id, TestKeys.sequential.id, TestKeys.third.id])
        #expect(keyring.key(for: TestKeys.third.id)?.id == TestKeys.third.id)
    }

    @Test func duplicateKeysAreHarmless() throws {
        let keyring = try Keyring.load(keyFiles: [], environmentValue: "\(TestKeys.sequentialHex),\(TestKeys.sequentialHex)")
        let object = encrypt([1, 2, 3], key: keyring.primary, identity: identity)
        #expect(try decrypt(object, keyring: keyring, identity: identity) == [1, 2, 3])
    }

    @Test func noKeyConfigured() {
        #expect(throws: CryptoError.noKeyConfigured) { try Keyring.load(keyFiles: [], environmentValue: nil) }
        #expect(throws: CryptoError.noKeyConfigured) { try Keyring.load(keyFiles: [], environmentValue: " , ") }
    }

    @Test func badEntryInTheEnvironmentIsNamedByPosition() {
        let error = #expect(throws: CryptoError.self) {
            try Keyring.load(keyFiles: [], environmentValue: "\(TestKeys.sequentialHex),tooshort")
        }
        guard case .invalidKey(let reason)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(reason.contains("SESSION_ENCRYPTION_KEY, key 2"), "\(reason)")
        expectNoSubstring(of: "tooshort", in: "\(error!)")
        expectNoSubstring(of: TestKeys.sequentialHex, in: "\(error!)")
    }

    @Test func keyFileLinesCommentsAndPrecedenceOverTheEnvironment() throws {
        let temporary = try TemporaryDirectory()
        let directory = temporary.path
        let path = directory + "/keys"
        let contents = """
            # rotated 2024-06: new key first
            \(TestKeys.other.base64EncodedString())

            \(TestKeys.sequentialHex)
            """
        try writeFile(path, contents, mode: 0o600)
        #expect(try Keyring.keys(fromKeyFile: path).map(\.id) == [TestKeys.other.id, TestKeys.sequential.id])

        let keyring = try Keyring.load(keyFiles: [path], environmentValue: TestKeys.third.base64EncodedString())
        #expect(keyring.primary.id == TestKeys.other.id)
        #expect(keyring.keys.map(\.id) == [TestKeys.other.id, TestKeys.sequential.id, TestKeys.third.id])
    }

    @Test func keyFileAccessibleToGroupOrOthersIsRefused() throws {
        let temporary = try TemporaryDirectory()
        let directory = temporary.path
        let path = directory + "/key"
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660] {
            try writeFile(path, TestKeys.sequentialHex, mode: mode)
            #expect(throws: CryptoError.insecureKeyFile(path: path, mode: UInt32(mode))) { try Keyring.keys(fromKeyFile: path) }
        }
        let message = CryptoError.insecureKeyFile(path: path, mode: 0o644).description
        #expect(message.contains("key file \(path) is readable or writable by group or others (mode 0644); run: chmod 600 \(path)"), "\(message)")
        for mode in [0o600, 0o400] {
            try writeFile(path, TestKeys.sequentialHex, mode: mode)
            #expect(try Keyring.keys(fromKeyFile: path).map(\.id) == [TestKeys.sequential.id])
        }
    }

    @Test func symlinkedKeyFileIsJudgedByItsTarget() throws {
        let temporary = try TemporaryDirectory()
        let directory = temporary.path
        let target = directory + "/target", link = directory + "/link"
        try writeFile(target, TestKeys.sequentialHex, mode: 0o600)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        #expect(try Keyring.keys(fromKeyFile: link).map(\.id) == [TestKeys.sequential.id])
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: target)
        #expect(throws: CryptoError.insecureKeyFile(path: link, mode: 0o644)) { try Keyring.keys(fromKeyFile: link) }
    }

    @Test func unreadableEmptyOrBadKeyFiles() throws {
        let temporary = try TemporaryDirectory()
        let directory = temporary.path
        #expect(throws: CryptoError.keyFileUnreadable(path: directory + "/missing", reason: "No such file or directory")) {
            try Keyring.keys(fromKeyFile: directory + "/missing")
        }
        try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: directory)
        #expect(throws: CryptoError.keyFileUnreadable(path: directory, reason: "it is not a regular file")) {
            try Keyring.keys(fromKeyFile: directory)
        }

        let empty = directory + "/empty"
        try writeFile(empty, "# nothing yet\n\n", mode: 0o600)
        #expect(throws: CryptoError.invalidKey(reason: "key file \(empty) contains no key")) { try Keyring.keys(fromKeyFile: empty) }

        let bad = directory + "/bad"
        try writeFile(bad, "\(TestKeys.sequentialHex)\n\nnot-a-key\n", mode: 0o600)
        let badError = #expect(throws: CryptoError.self) { try Keyring.keys(fromKeyFile: bad) }
        if case .invalidKey(let reason)? = badError {
            #expect(reason.contains("key file \(bad), line 3"), "\(reason)")
            expectNoSubstring(of: "not-a-key", in: "\(badError!)")
        } else {
            Issue.record("\(String(describing: badError))")
        }

        let fifo = directory + "/fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        #expect(throws: CryptoError.keyFileUnreadable(path: fifo, reason: "it is not a regular file")) { try Keyring.keys(fromKeyFile: fifo) }

        let huge = directory + "/huge"
        try writeFile(huge, String(repeating: "#\n", count: 40_000), mode: 0o600)
        let hugeError = #expect(throws: CryptoError.self) { try Keyring.keys(fromKeyFile: huge) }
        guard case .keyFileUnreadable(huge, _)? = hugeError else { Issue.record("\(String(describing: hugeError))"); return }
    }
}

/// Fails if `message` contains any 6-character piece of `secret`.
func expectNoSubstring(of secret: String, in message: String, sourceLocation: SourceLocation = #_sourceLocation) {
    let characters = Array(secret.trimmingCharacters(in: .whitespacesAndNewlines))
    guard characters.count >= 6 else {
        if !characters.isEmpty { #expect(!message.contains(String(characters)), "\(message)", sourceLocation: sourceLocation) }
        return
    }
    for start in 0...(characters.count - 6) {
        let piece = String(characters[start..<start + 6])
        #expect(!message.contains(piece), "\(message) contains \(piece)", sourceLocation: sourceLocation)
    }
}
