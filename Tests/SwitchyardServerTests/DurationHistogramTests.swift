import Foundation
import Testing

@testable import Telemetry

/// The duration histograms behind `/metrics` (swift-metrics timers): buckets, sum, count and
/// the text exposition, recorded from several threads at once.
@Suite struct DurationHistogramTests {
    let histograms = DurationHistograms(bounds: [.microseconds(500), .milliseconds(1), .seconds(1)])

    private func exposition() -> [String] {
        var out = ""
        histograms.emit(into: &out)
        return out.split(separator: "\n").map(String.init)
    }

    @Test func bucketsAreCumulativeAndTheirBoundsInclusive() {
        let h = histograms.histogram("t_seconds", [("route", "api"), ("lane", "gray")])
        h.recordNanoseconds(500_000)  // exactly 0.0005 s: in the first bucket
        h.recordNanoseconds(500_001)
        h.recordNanoseconds(2_000_000_000)  // past every bound: +Inf only
        h.recordNanoseconds(-5)  // a clock that went back counts as 0
        #expect(
            exposition() == [
                "# TYPE t_seconds histogram",
                #"t_seconds_bucket{route="api",lane="gray",le="0.0005"} 2"#,
                #"t_seconds_bucket{route="api",lane="gray",le="0.001"} 3"#,
                #"t_seconds_bucket{route="api",lane="gray",le="1.0"} 3"#,
                #"t_seconds_bucket{route="api",lane="gray",le="+Inf"} 4"#,
                #"t_seconds_sum{route="api",lane="gray"} 2.001000001"#,
                #"t_seconds_count{route="api",lane="gray"} 4"#,
            ]
        )
    }

    @Test func theSameNameAndLabelsAreOneSeriesAndAFamilyHasOneTypeLine() {
        let a = histograms.histogram("t_seconds", [("route", "a")])
        #expect(histograms.histogram("t_seconds", [("route", "a")]) === a)
        let b = histograms.histogram("t_seconds", [("route", "b\"quoted\"")])
        #expect(b !== a)
        histograms.histogram("u_seconds", []).recordNanoseconds(1)
        let lines = exposition()
        #expect(lines.filter { $0.hasPrefix("# TYPE") } == ["# TYPE t_seconds histogram", "# TYPE u_seconds histogram"])
        #expect(lines.contains(#"t_seconds_count{route="b\"quoted\""} 0"#))
        #expect(lines.contains(#"u_seconds_bucket{le="+Inf"} 1"#))
        #expect(lines.contains("u_seconds_count 1"))
        histograms.remove(b)
        #expect(!exposition().contains { $0.contains("quoted") })
    }

    @Test func recordsFromManyThreadsAtOnceAreAllCounted() async {
        let h = histograms.histogram("t_seconds", [])
        await withTaskGroup(of: Void.self) { group in
            for thread in 0..<4 {
                group.addTask {
                    for i in 0..<25_000 { h.recordNanoseconds(Int64((i + thread) % 3) * 600_000) }
                }
            }
        }
        // 0, 0.6 ms and 1.2 ms in turn (33,334, 33,333 and 33,333 of them): none is lost.
        #expect(
            exposition() == [
                "# TYPE t_seconds histogram",
                #"t_seconds_bucket{le="0.0005"} 33334"#,
                #"t_seconds_bucket{le="0.001"} 66667"#,
                #"t_seconds_bucket{le="1.0"} 100000"#,
                #"t_seconds_bucket{le="+Inf"} 100000"#,
                "t_seconds_sum 59.9994",
                "t_seconds_count 100000",
            ]
        )
    }
}
