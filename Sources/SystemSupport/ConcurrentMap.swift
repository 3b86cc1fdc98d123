extension Collection where Self: Sendable, Element: Sendable {
    /// `transform` applied to every element, at most `limit` at once, the results in the
    /// elements' order. The first error thrown cancels the transforms still running and is
    /// rethrown once they have ended; no new one starts after it.
    public func concurrentMap<Transformed: Sendable>(
        limit: Int, _ transform: @escaping @Sendable (Element) async throws -> Transformed
    ) async throws -> [Transformed] {
        precondition(limit > 0, "a limit lets at least one through")
        let elements = Array(self)
        var results = [Transformed?](repeating: nil, count: elements.count)
        try await withThrowingTaskGroup(of: (Int, Transformed).self) { group in
            var next = 0
            func start() {
                let index = next
                next += 1
                group.addTask { (index, try await transform(elements[index])) }
            }
            for _ in 0..<Swift.min(limit, elements.count) { start() }
            while let (index, result) = try await group.next() {
                results[index] = result
                if next < elements.count { start() }
            }
        }
        return results.map { $0! }
    }
}
