import XCTest
@testable import SessionArchive
