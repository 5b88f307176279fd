//! The fast part of the fault matrix (`lateral-bench faults` runs all of it): a few faults on the short
//! timeline, each under eight client instances with their own embedded coordinators, on real backends and
//! agents over loopback. Pass criteria are counts, not timings: no panic anywhere in the process, losses
//! under a bound that a broken implementation exceeds by far (an accepted impostor or rogue stream would pull
//! fast-2's weight up and overload it; no shedding would time out most of the overload run), and under
//! overload the excess refused with a status rather than left to time out.

use indicatif::ProgressBar;
use lateral_examples::bench::faults::{self, Fault, MatrixOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_almost_nothing_and_overload_is_refused_not_timed_out() {
    let options = MatrixOptions::quick();
    let progress = ProgressBar::hidden();
    let run = faults::run_matrix(
        &[
            Fault::AgentKilled,
            Fault::GarbageFrames,
            Fault::RogueCa,
            Fault::Overload,
        ],
        options,
        &progress,
        |row| eprintln!("{row:?}"),
    );
    // Five runs of 6 s plus start-up; the bound only keeps a wedged run from hanging CI.
    let rows = tokio::time::timeout(std::time::Duration::from_secs(240), run)
        .await
        .expect("the fast fault matrix finished within its bound")
        .expect("every fault ran");
    eprintln!("{}", faults::markdown(&rows, &options));
    assert_eq!(rows.len(), 5);
    for row in &rows {
        assert_eq!(row.panics, 0, "{}: panics", row.fault);
        assert!(row.counted > 0, "{}: nothing counted", row.fault);
        if row.fault == Fault::Overload {
            continue;
        }
        let lost = row.lost as f64 / row.counted as f64;
        assert!(lost <= 0.02, "{}: lost {} of {}", row.fault, row.lost, row.counted);
    }
    let overload = rows
        .iter()
        .find(|r| r.fault == Fault::Overload)
        .expect("the overload row");
    assert!(
        overload.goodput_rps >= 0.85 * overload.capacity_rps,
        "goodput {:.0} req/s of {:.0}",
        overload.goodput_rps,
        overload.capacity_rps
    );
    assert!(overload.overloaded > 0, "the excess was refused as overload");
    assert!(
        overload.timeouts as f64 <= 0.01 * overload.counted as f64,
        "{} of {} timed out",
        overload.timeouts,
        overload.counted
    );
    assert!(
        overload.retries <= overload.retry_budget,
        "retries {} over the budget {}",
        overload.retries,
        overload.retry_budget
    );
}
