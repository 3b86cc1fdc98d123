import XCTest

final class CryptoTestsPlaceholder: XCTestCase {}
