import XCTest

final class SyncAgentTestsPlaceholder: XCTestCase {}
