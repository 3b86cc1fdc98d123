import SessionCrypto
import XCTest

final class KeyTests: XCTestCase {
    /// Bytes chosen so that standard base64 contains both `+` and `/`.
    static let keyBytes: [UInt8] = (0..<32).map { UInt8(truncatingIfNeeded: 251 &- $0 &* 7) }
    static var standardBase64: String { Data(keyBytes).base64EncodedString() }
    static var hex: String { keyBytes.map { String(format: "%02x", $0) }.joined() }

    func testParsesHexAndEveryBase64Variant() throws {
        let standard = Self.standardBase64
        XCTAssertTrue(standard.contains("+") && standard.contains("/") && standard.hasSuffix("="))
        let urlSafe = standard.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        let forms = [
            Self.hex, Self.hex.uppercased(), standard, String(standard.dropLast()),
            urlSafe, String(urlSafe.dropLast()), "  \n\t\(standard) \r\n", "\n\(Self.hex)\n",
        ]
        let expected = try EncryptionKey(parsing: Self.hex).id
        for form in forms {
            XCTAssertEqual(try EncryptionKey(parsing: form).id, expected, "form \(form.debugDescription)")
        }
        XCTAssertNotEqual(TestKeys.sequential.id, expected)
    }

    func testInvalidKeysAreRejectedWithoutEchoingThem() {
        let secretLooking = "c0ffee11c0ffee22c0ffee33c0ffee44c0ffee55c0ffee66c0ffee77c0ffee88"
        let cases: [(String, String)] = [
            ("", "is empty"),
            ("   \n", "is empty"),
            (String(secretLooking.dropLast()), "has 63 characters"),
            (secretLooking + "99", "has 66 characters"),
            (String(secretLooking.dropLast()) + "z", "is not hexadecimal"),
            (String(Self.standardBase64.dropLast(2)) + "!=", "is not valid base64"),
            (Data(Self.keyBytes.dropLast()).base64EncodedString(), "is not valid base64"),  // 31 bytes, 44 characters
            (Data(Self.keyBytes + [1]).base64EncodedString(), "is not valid base64"),  // 33 bytes, 44 characters
            (Data(Self.keyBytes + [1, 2, 3, 4]).base64EncodedString(), "has 48 characters"),
            (String(repeating: "é", count: 22), "is not valid base64"),
        ]
        for (text, expectedReason) in cases {
            XCTAssertThrowsError(try EncryptionKey(parsing: text), text.debugDescription) { error in
                guard case .invalidKey(let reason)? = error as? CryptoError else {
                    return XCTFail("\(text.debugDescription): \(error)")
                }
                XCTAssertTrue(reason.contains(expectedReason), "\(text.debugDescription): \(reason)")
                assertNoSubstring(of: text, in: "\(error)")
            }
        }
    }

    func testKeysNeverPrintTheirMaterial() throws {
        let key = try EncryptionKey(parsing: Self.hex)
        var dumped = ""
        dump(key, to: &dumped)
        for shown in ["\(key)", String(reflecting: key), dumped, "\(Keyring(primary: key))"] {
            XCTAssertTrue(shown.contains("\(key.id)"), shown)
            assertNoSubstring(of: Self.hex, in: shown)
            assertNoSubstring(of: Self.standardBase64, in: shown)
        }
    }

    func testGeneratedKeysAreFreshAndSurviveTheirPrintedForm() throws {
        let first = EncryptionKey.generate(), second = EncryptionKey.generate()
        XCTAssertNotEqual(first.id, second.id)
        let printed = first.base64EncodedString()
        XCTAssertEqual(printed.count, 44)
        XCTAssertEqual(Data(base64Encoded: printed)?.count, 32)
        XCTAssertEqual(try EncryptionKey(parsing: printed).id, first.id)
        XCTAssertEqual(try EncryptionKey(parsing: Self.hex).base64EncodedString(), Self.standardBase64)
    }

    func testKeyIDIsShownAsSixteenHexDigits() {
        XCTAssertEqual(TestKeys.sequential.id.bytes.count, 8)
        XCTAssertEqual("\(TestKeys.sequential.id)", TestKeys.sequential.id.bytes.map { String(format: "%02x", $0) }.joined())
    }

    // MARK: - Keyring loading

    func testEnvironmentValueListsKeysPrimaryFirst() throws {
        let value = " \(TestKeys.other.base64EncodedString()) ,\(TestKeys.sequentialHex),, \(TestKeys.third.base64EncodedString())\n"
        let keyring = try Keyring.load(keyFiles: [], environmentValue: value)
        XCTAssertEqual(keyring.primary.id, TestKeys.other.id)
        XCTAssertEqual(keyring.keys.map(\.id), [TestKeys.other.id, TestKeys.sequential.id, TestKeys.third.id])
        XCTAssertEqual(keyring.key(for: TestKeys.third.id)?.id, TestKeys.third.id)
    }

    func testDuplicateKeysAreHarmless() throws {
        let keyring = try Keyring.load(keyFiles: [], environmentValue: "\(TestKeys.sequentialHex),\(TestKeys.sequentialHex)")
        let object = encrypt([1, 2, 3], key: keyring.primary, identity: identity)
        XCTAssertEqual(try decrypt(object, keyring: keyring, identity: identity), [1, 2, 3])
    }

    func testNoKeyConfigured() {
        assertThrows(.noKeyConfigured) { try Keyring.load(keyFiles: [], environmentValue: nil) }
        assertThrows(.noKeyConfigured) { try Keyring.load(keyFiles: [], environmentValue: " , ") }
    }

    func testBadEntryInTheEnvironmentIsNamedByPosition() {
        XCTAssertThrowsError(try Keyring.load(keyFiles: [], environmentValue: "\(TestKeys.sequentialHex),tooshort")) { error in
            guard case .invalidKey(let reason)? = error as? CryptoError else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("SESSION_ENCRYPTION_KEY, key 2"), reason)
            assertNoSubstring(of: "tooshort", in: "\(error)")
            assertNoSubstring(of: TestKeys.sequentialHex, in: "\(error)")
        }
    }

    func testKeyFileLinesCommentsAndPrecedenceOverTheEnvironment() throws {
        let directory = try makeTemporaryDirectory(for: self)
        let path = directory + "/keys"
        let contents = """
            # rotated 2024-06: new key first
            \(TestKeys.other.base64EncodedString())

            \(TestKeys.sequentialHex)
            """
        try writeFile(path, contents, mode: 0o600)
        XCTAssertEqual(try Keyring.keys(fromKeyFile: path).map(\.id), [TestKeys.other.id, TestKeys.sequential.id])

        let keyring = try Keyring.load(keyFiles: [path], environmentValue: TestKeys.third.base64EncodedString())
        XCTAssertEqual(keyring.primary.id, TestKeys.other.id)
        XCTAssertEqual(keyring.keys.map(\.id), [TestKeys.other.id, TestKeys.sequential.id, TestKeys.third.id])
    }

    func testKeyFileAccessibleToGroupOrOthersIsRefused() throws {
        let directory = try makeTemporaryDirectory(for: self)
        let path = directory + "/key"
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660] {
            try writeFile(path, TestKeys.sequentialHex, mode: mode)
            assertThrows(.insecureKeyFile(path: path, mode: UInt32(mode))) { try Keyring.keys(fromKeyFile: path) }
        }
        let message = CryptoError.insecureKeyFile(path: path, mode: 0o644).description
        XCTAssertTrue(message.contains("key file \(path) is readable or writable by group or others (mode 0644); run: chmod 600 \(path)"), message)
        for mode in [0o600, 0o400] {
            try writeFile(path, TestKeys.sequentialHex, mode: mode)
            XCTAssertEqual(try Keyring.keys(fromKeyFile: path).map(\.id), [TestKeys.sequential.id])
        }
    }

    func testSymlinkedKeyFileIsJudgedByItsTarget() throws {
        let directory = try makeTemporaryDirectory(for: self)
        let target = directory + "/target", link = directory + "/link"
        try writeFile(target, TestKeys.sequentialHex, mode: 0o600)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        XCTAssertEqual(try Keyring.keys(fromKeyFile: link).map(\.id), [TestKeys.sequential.id])
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: target)
        assertThrows(.insecureKeyFile(path: link, mode: 0o644)) { try Keyring.keys(fromKeyFile: link) }
    }

    func testUnreadableEmptyOrBadKeyFiles() throws {
        let directory = try makeTemporaryDirectory(for: self)
        assertThrows(.keyFileUnreadable(path: directory + "/missing", reason: "No such file or directory")) {
            try Keyring.keys(fromKeyFile: directory + "/missing")
        }
        try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: directory)
        assertThrows(.keyFileUnreadable(path: directory, reason: "it is not a regular file")) {
            try Keyring.keys(fromKeyFile: directory)
        }

        let empty = directory + "/empty"
        try writeFile(empty, "# nothing yet\n\n", mode: 0o600)
        assertThrows(.invalidKey(reason: "key file \(empty) contains no key")) { try Keyring.keys(fromKeyFile: empty) }

        let bad = directory + "/bad"
        try writeFile(bad, "\(TestKeys.sequentialHex)\n\nnot-a-key\n", mode: 0o600)
        XCTAssertThrowsError(try Keyring.keys(fromKeyFile: bad)) { error in
            guard case .invalidKey(let reason)? = error as? CryptoError else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("key file \(bad), line 3"), reason)
            assertNoSubstring(of: "not-a-key", in: "\(error)")
        }

        let fifo = directory + "/fifo"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        assertThrows(.keyFileUnreadable(path: fifo, reason: "it is not a regular file")) { try Keyring.keys(fromKeyFile: fifo) }

        let huge = directory + "/huge"
        try writeFile(huge, String(repeating: "#\n", count: 40_000), mode: 0o600)
        XCTAssertThrowsError(try Keyring.keys(fromKeyFile: huge)) { error in
            guard case .keyFileUnreadable(huge, _)? = error as? CryptoError else { return XCTFail("\(error)") }
        }
    }
}

/// Fails if `message` contains any 6-character piece of `secret`.
func assertNoSubstring(of secret: String, in message: String, file: StaticString = #filePath, line: UInt = #line) {
    let characters = Array(secret.trimmingCharacters(in: .whitespacesAndNewlines))
    guard characters.count >= 6 else {
        if !characters.isEmpty { XCTAssertFalse(message.contains(String(characters)), message, file: file, line: line) }
        return
    }
    for start in 0...(characters.count - 6) {
        let piece = String(characters[start..<start + 6])
        XCTAssertFalse(message.contains(piece), "\(message) contains \(piece)", file: file, line: line)
    }
}
