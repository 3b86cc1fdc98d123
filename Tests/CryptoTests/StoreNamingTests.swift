import SessionCrypto
import Testing

/// Keyed names (FORMAT.md, "Keyed names"): the worked example, and what the ids reveal.
struct StoreNamingTests {
    let naming = StoreNaming(secret: Array(0..<32))!

    @Test func theWorkedExampleOfFormatMD() {
        #expect(naming.keyedID(.session, name: Array("4915112345678".utf8)) == "86f15cd681534aeea6b4d38cd5f0233e")
        #expect(naming.keyedID(.agent, name: Array("worker-1".utf8)) == "94622e189c9beebcb475084437afe39a")
    }

    /// Fixed length, lowercase hex, the same for the same name, and unrelated across names, domains and secrets.
    @Test func idsAreFixedLengthHexAndRevealNothingOfTheName() {
        let name = Array("4915112345678".utf8)
        let id = naming.keyedID(.session, name: name)
        #expect(StoreNaming.isKeyedID(id) && !StoreNaming.isKeyedID(id.uppercased()) && !StoreNaming.isKeyedID("4915112345678"))
        #expect(naming.keyedID(.session, name: name) == id)
        #expect(naming.keyedID(.session, name: name + [0x20]) != id)
        #expect(naming.keyedID(.agent, name: name) != id)
        #expect(StoreNaming.generate().keyedID(.session, name: name) != id)
        #expect(StoreNaming(secret: Array(0..<31)) == nil)
        #expect(!"\(naming)".contains("0001") && "\(naming)".contains("redacted"))
    }
}
