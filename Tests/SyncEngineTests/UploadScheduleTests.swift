@testable import SyncEngine
import Testing

struct UploadScheduleTests {
    let start = ContinuousClock.now
    let quiet = Duration.milliseconds(250)
    func at(_ milliseconds: Int) -> ContinuousClock.Instant { start + .milliseconds(milliseconds) }

    /// A schedule whose first upload failed at 0 ms and waits until 1,000 ms.
    func backingOff() -> UploadSchedule {
        var schedule = UploadSchedule()
        _ = schedule.changed()
        schedule.started()
        let decision1 = schedule.finished(.failed(backoff: .seconds(1)), at: at(0), unsettledRetryDelay: quiet) == .retry(at: at(1000))
        #expect(decision1)
        return schedule
    }

    @Test func changesDuringAnUploadRunItOnceMoreAfterwards() {
        var schedule = UploadSchedule()
        let decision2 = schedule.changed()
        #expect(decision2)
        schedule.started()
        let decision3 = schedule.changed()
        #expect(!decision3)
        let decision4 = schedule.finished(.succeeded(unsettled: false), at: at(0), unsettledRetryDelay: quiet)
        #expect(decision4 == .queue)
        schedule.started()
        let decision5 = schedule.finished(.succeeded(unsettled: false), at: at(10), unsettledRetryDelay: quiet)
        #expect(decision5 == .idle)
        #expect(schedule.isSettled)
    }

    @Test func changesDuringABackoffWaitForTheRetry() {
        var schedule = backingOff()
        let decision6 = schedule.changed()
        #expect(!decision6)
        let decision7 = schedule.retryDue(at: at(999))
        #expect(!decision7)
        let decision8 = schedule.retryDue(at: at(1000))
        #expect(decision8)
        schedule.started()
        #expect(schedule.failures == 1)
        let decision9 = schedule.finished(.succeeded(unsettled: false), at: at(1100), unsettledRetryDelay: quiet)
        #expect(decision9 == .idle)
        #expect(schedule.failures == 0)
    }

    @Test func aRemovalDropsTheRetrySoTheDirectoryComingBackUploadsAtOnce() {
        var schedule = backingOff()
        schedule.removed()
        #expect(schedule.isSettled)
        #expect(schedule.failures == 0)
        // The cancelled timer, had it fired, finds nothing due.
        let decision10 = schedule.retryDue(at: at(1000))
        #expect(!decision10)
        let decision11 = schedule.changed()
        #expect(decision11)
    }

    @Test func filesMidWriteAreRetriedAfterTheQuietPeriodOrAtTheNextChange() {
        var schedule = UploadSchedule()
        _ = schedule.changed()
        schedule.started()
        let decision12 = schedule.finished(.succeeded(unsettled: true), at: at(0), unsettledRetryDelay: quiet) == .retry(at: at(250))
        #expect(decision12)
        #expect(!schedule.isSettled)
        let decision13 = schedule.retryDue(at: at(250))
        #expect(decision13)

        schedule.started()
        _ = schedule.finished(.succeeded(unsettled: true), at: at(300), unsettledRetryDelay: quiet)
        // A change does not wait for the retry of files mid-write.
        let decision14 = schedule.changed()
        #expect(decision14)
        #expect(schedule.retryAt == nil)
    }

    @Test func changesDuringAnUploadThatLeftFilesMidWriteAreQueuedAtOnce() {
        var schedule = UploadSchedule()
        _ = schedule.changed()
        schedule.started()
        _ = schedule.changed()
        let decision15 = schedule.finished(.succeeded(unsettled: true), at: at(0), unsettledRetryDelay: quiet)
        #expect(decision15 == .queue)
    }

    @Test func shutdownRunsABackoffOrAFileMidWriteAtOnceAndRetriesNothingAfter() {
        var failing = backingOff()
        let decision16 = failing.stop()
        #expect(decision16)
        failing.started()
        let decision17 = failing.finished(.failed(backoff: .seconds(1)), at: at(10), unsettledRetryDelay: quiet)
        #expect(decision17 == .idle)
        #expect(!failing.isSettled)

        var midWrite = UploadSchedule()
        _ = midWrite.changed()
        midWrite.started()
        _ = midWrite.finished(.succeeded(unsettled: true), at: at(0), unsettledRetryDelay: quiet)
        let decision18 = midWrite.stop()
        #expect(decision18)
        midWrite.started()
        // Still mid-write: left pending, so shutdown names the session.
        let decision19 = midWrite.finished(.succeeded(unsettled: true), at: at(10), unsettledRetryDelay: quiet)
        #expect(decision19 == .idle)
        #expect(!midWrite.isSettled)

        // Changes that came while the last upload ran still run once.
        var changedDuringTheLastUpload = UploadSchedule()
        _ = changedDuringTheLastUpload.changed()
        changedDuringTheLastUpload.started()
        let queuedAtStop = changedDuringTheLastUpload.stop()
        #expect(!queuedAtStop)
        _ = changedDuringTheLastUpload.changed()
        let lastRun = changedDuringTheLastUpload.finished(.succeeded(unsettled: true), at: at(20), unsettledRetryDelay: quiet)
        #expect(lastRun == .queue)

        var settled = UploadSchedule()
        let decision20 = settled.stop()
        #expect(!decision20)
        #expect(settled.isSettled)
    }

    @Test func aFencedSessionHasNothingLeftToUpload() {
        var schedule = backingOff()
        let decision21 = schedule.retryDue(at: at(1000))
        #expect(decision21)
        schedule.started()
        _ = schedule.changed()
        let decision22 = schedule.finished(.fenced, at: at(1100), unsettledRetryDelay: quiet)
        #expect(decision22 == .idle)
        #expect(schedule.isSettled)
    }

    @Test func theBackoffDoublesUpToItsCeilingWithTheSecondHalfJittered() {
        let base = Duration.milliseconds(500)
        let ceiling = Duration.seconds(30)
        #expect(UploadSchedule.backoff(failures: 1, base: base, ceiling: ceiling, jitter: 0) == .milliseconds(250))
        #expect(UploadSchedule.backoff(failures: 1, base: base, ceiling: ceiling, jitter: 1) == .milliseconds(500))
        #expect(UploadSchedule.backoff(failures: 3, base: base, ceiling: ceiling, jitter: 1) == .seconds(2))
        #expect(UploadSchedule.backoff(failures: 60, base: base, ceiling: ceiling, jitter: 0.5) == .milliseconds(22_500))
    }
}
