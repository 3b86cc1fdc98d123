import XCTest

final class SessionArchiveTestsPlaceholder: XCTestCase {}
