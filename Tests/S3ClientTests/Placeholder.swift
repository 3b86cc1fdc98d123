import XCTest

final class S3ClientTestsPlaceholder: XCTestCase {}
