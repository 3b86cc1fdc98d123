import CCurl

// libcurl's unsafe surface lives in the Curl*.swift files: the handles' owners (this file's
// classes and `CurlMultiLoop`), the typed setopt shims and the C callbacks (here), bridged to
// the Swift `CurlTransfer` through Unmanaged, and the buffers curl fills (`CurlTransfer`).

/// Owns one curl easy handle: made by `init`, freed with the object. Used by one thread at a
/// time: the task setting up a transfer, then the loop thread running it.
final class CurlEasyHandle: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer

    init() throws(TransportError) {
        guard let pointer = curl_easy_init() else {
            throw TransportError(code: Int32(CURLE_OUT_OF_MEMORY.rawValue), message: "cannot make a curl handle")
        }
        self.pointer = pointer
    }

    deinit {
        curl_easy_cleanup(pointer)
    }

    /// The status of the last response received.
    var responseCode: Int {
        var status = 0
        _ = sa_curl_easy_getinfo_long(pointer, CURLINFO_RESPONSE_CODE, &status)
        return status
    }

    /// curl's default receive buffer, and the smallest upload buffer it takes.
    private static let smallBufferSize = 16 * 1024

    /// Sets the handle up, from its defaults, to run `transfer`, whose callbacks it calls.
    func configure(for transfer: CurlTransfer) throws(TransportError) {
        let request = transfer.request
        curl_easy_reset(pointer)
        try set(CURLOPT_URL, request.url)
        try set(CURLOPT_NOSIGNAL, 1)
        try set(CURLOPT_HTTPHEADER, transfer.headerList.pointer)
        try set(CURLOPT_ERRORBUFFER, UnsafeMutableRawPointer(transfer.errorBuffer))
        try set(CURLOPT_CONNECTTIMEOUT_MS, request.timeouts.connect.milliseconds)
        // A stalled transfer fails after `idle` with less than 1 byte/s; large objects
        // are not cut off by a total timeout unless one is configured.
        try set(CURLOPT_LOW_SPEED_LIMIT, 1)
        try set(CURLOPT_LOW_SPEED_TIME, max(1, request.timeouts.idle.milliseconds / 1000))
        if let total = request.timeouts.request {
            try set(CURLOPT_TIMEOUT_MS, total.milliseconds)
        }
        try set(CURLOPT_SSL_VERIFYPEER, request.tls.verifyCertificates ? 1 : 0)
        try set(CURLOPT_SSL_VERIFYHOST, request.tls.verifyCertificates ? 2 : 0)
        if let bundle = request.tls.caBundlePath {
            try set(CURLOPT_CAINFO, bundle)
        }
        // Large buffers move large objects faster (bench/s3-client), but curl allocates them for
        // every transfer, and in `watch` a block of 64 KiB or more is a mapping of its own
        // (`Allocator`): mapped, faulted in and unmapped twice per small PUT (strace). So only a
        // download into a file (a snapshot) or an upload of 512 KiB or more gets them; requests
        // answered in memory (heads, leases, lists) and smaller uploads take 16 KiB.
        let downloadsToFile = if case .file = request.destination { true } else { false }
        try set(CURLOPT_BUFFERSIZE, downloadsToFile ? 256 * 1024 : Self.smallBufferSize)
        try set(CURLOPT_UPLOAD_BUFFERSIZE, request.body.length >= 512 * 1024 ? 512 * 1024 : Self.smallBufferSize)
        try set(CURLOPT_TCP_NODELAY, 1)

        let userdata = Unmanaged.passUnretained(transfer).toOpaque()
        try set(CURLOPT_WRITEFUNCTION, writeCallback)
        try set(CURLOPT_WRITEDATA, userdata)
        try set(CURLOPT_HEADERFUNCTION, headerCallback)
        try set(CURLOPT_HEADERDATA, userdata)
        try set(CURLOPT_READFUNCTION, readCallback)
        try set(CURLOPT_READDATA, userdata)

        switch request.method {
        case "GET":
            try set(CURLOPT_HTTPGET, 1)
        case "HEAD":
            try set(CURLOPT_NOBODY, 1)
        case "PUT":
            try set(CURLOPT_UPLOAD, 1)
            try set(CURLOPT_INFILESIZE_LARGE, size: request.body.length)
        case "POST":
            try set(CURLOPT_POST, 1)
            try set(CURLOPT_POSTFIELDSIZE_LARGE, size: request.body.length)
        default:
            try set(CURLOPT_CUSTOMREQUEST, request.method)
        }
    }

    // The typed shims over curl's variadic `curl_easy_setopt`, which Swift cannot call.

    private func set(_ option: CURLoption, _ value: Int) throws(TransportError) {
        try check(sa_curl_easy_setopt_long(pointer, option, value))
    }

    private func set(_ option: CURLoption, size value: Int64) throws(TransportError) {
        try check(sa_curl_easy_setopt_off_t(pointer, option, curl_off_t(value)))
    }

    private func set(_ option: CURLoption, _ value: String) throws(TransportError) {
        try check(sa_curl_easy_setopt_string(pointer, option, value))
    }

    private func set(_ option: CURLoption, _ value: UnsafeMutableRawPointer) throws(TransportError) {
        try check(sa_curl_easy_setopt_pointer(pointer, option, value))
    }

    private func set(_ option: CURLoption, _ value: UnsafeMutablePointer<curl_slist>?) throws(TransportError) {
        try check(sa_curl_easy_setopt_slist(pointer, option, value))
    }

    private func set(_ option: CURLoption, _ value: sa_curl_data_callback) throws(TransportError) {
        try check(sa_curl_easy_setopt_data_callback(pointer, option, value))
    }

    private func check(_ code: CURLcode) throws(TransportError) {
        guard code == CURLE_OK else {
            throw TransportError(code: Int32(code.rawValue), message: String(cString: curl_easy_strerror(code)))
        }
    }
}

/// Owns one `curl_slist` of request headers for the lifetime of a transfer.
final class CurlHeaderList {
    private(set) var pointer: UnsafeMutablePointer<curl_slist>?

    init(_ headers: [(name: String, value: String)]) {
        for (name, value) in headers {
            // "Name;" is curl's spelling for a header with an empty value.
            let line = value.isEmpty ? "\(name);" : "\(name): \(value)"
            pointer = curl_slist_append(pointer, line)
        }
    }

    deinit {
        curl_slist_free_all(pointer)
    }
}

// The C callbacks: curl hands back the transfer given as their userdata.

private func transfer(from userdata: UnsafeMutableRawPointer?) -> CurlTransfer {
    Unmanaged<CurlTransfer>.fromOpaque(userdata!).takeUnretainedValue()
}

private let writeCallback: sa_curl_data_callback = { buffer, size, count, userdata in
    let transfer = transfer(from: userdata)
    let length = size * count
    do {
        // Anything but `length` makes curl abort with CURLE_WRITE_ERROR.
        return try transfer.receive(UnsafeRawBufferPointer(start: buffer, count: length)) ? length : 0
    } catch {
        transfer.writeError = error
        return 0  // anything but `length` makes curl abort with CURLE_WRITE_ERROR
    }
}

private let headerCallback: sa_curl_data_callback = { buffer, size, count, userdata in
    let length = size * count
    let bytes = UnsafeRawBufferPointer(start: buffer, count: length)
    transfer(from: userdata).headerLine(bytes)
    return length
}

private let readCallback: sa_curl_data_callback = { buffer, size, count, userdata in
    let transfer = transfer(from: userdata)
    do {
        return try transfer.fillUpload(UnsafeMutableRawBufferPointer(start: buffer, count: size * count))
    } catch {
        transfer.uploadError = error
        return Int(CURL_READFUNC_ABORT)
    }
}
