extension StringProtocol {
    /// Without leading and trailing whitespace (Unicode's, as `Character.isWhitespace` says).
    public func trimmingWhitespace() -> Substring {
        var text = Substring(self)
        while let first = text.first, first.isWhitespace { text = text.dropFirst() }
        while let last = text.last, last.isWhitespace { text = text.dropLast() }
        return text
    }
}
