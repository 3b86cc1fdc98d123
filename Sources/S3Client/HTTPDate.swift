import CCurl
import FoundationEssentials
import Glibc

/// The two date spellings S3 uses: ISO 8601 in XML listings, RFC 1123 in headers.
enum HTTPDate {
    static func parseISO8601(_ text: String) -> Date? {
        (try? Date(text, strategy: .iso8601.year().month().day().time(includingFractionalSeconds: true)))
            ?? (try? Date(text, strategy: .iso8601))
    }

    /// libcurl's HTTP date parser: RFC 1123, and the older spellings servers still send.
    static func parseRFC1123(_ text: String) -> Date? {
        let seconds = curl_getdate(text, nil)
        return seconds == -1 ? nil : Date(timeIntervalSince1970: TimeInterval(seconds))
    }
}
