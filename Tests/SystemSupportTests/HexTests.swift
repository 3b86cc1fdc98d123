import SystemSupport
import Testing

@Suite struct HexTests {
    @Test func roundTripsEveryByte() {
        let bytes = (0...255).map(UInt8.init)
        let text = bytes.lowercaseHex
        #expect(text.utf8.count == 512)
        #expect(text.hasPrefix("000102") && text.hasSuffix("fdfeff"))
        #expect(Hex.decode(text.utf8) == bytes)
    }

    @Test func appendsUppercaseWhenAsked() {
        var text: [UInt8] = Array("%".utf8)
        Hex.append([0xab, 0x0f], to: &text, uppercase: true)
        #expect(String(decoding: text, as: UTF8.self) == "%AB0F")
    }

    @Test func decodesUppercaseOnlyWhenAccepted() {
        #expect(Hex.decode("AB".utf8) == nil)
        #expect(Hex.decode("AB".utf8, acceptingUppercase: true) == [0xab])
        #expect(Hex.decode("ab".utf8, acceptingUppercase: true) == [0xab])
    }

    @Test func refusesOddCountsAndNonDigits() {
        #expect(Hex.decode("abc".utf8) == nil)
        #expect(Hex.decode("zz".utf8) == nil)
        #expect(Hex.decode("".utf8) == [])
    }

    @Test func digestsAreUnchanged() {
        // Stored digests depend on these spellings staying byte for byte.
        #expect(SHA256.hash(Array("abc".utf8)).lowercaseHex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(MD5.hash([UInt8]()).lowercaseHex == "d41d8cd98f00b204e9800998ecf8427e")
    }

    @Test func trimsWhitespaceAtBothEnds() {
        #expect(" \t key\n".trimmingWhitespace() == "key")
        #expect("  ".trimmingWhitespace() == "")
    }
}
