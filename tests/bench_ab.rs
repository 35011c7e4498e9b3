//! `tests/bench-ab --quick`: two runs (build A, then build B, here the same
//! build) each start a fresh three-node cluster on loopback, put through
//! it with `utopia bench put`, and report the servers' CPU and each node's
//! log fsyncs per 1,000 puts; the summary compares the two. No timing is
//! asserted: only that every figure is there, every put succeeded, and no
//! process the script started outlives it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::scripts::{self, number};
use common::UTOPIA;

const DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn quick_mode_runs_both_builds_and_compares_them() {
    let bin_dir = Path::new(UTOPIA).parent().expect("the binaries' directory");
    let dir = bin_dir.as_os_str();
    let (stdout, stderr) = scripts::run(
        "bench-ab",
        &["--quick".as_ref(), "--a".as_ref(), dir, "--b".as_ref(), dir],
        DEADLINE,
    );

    for build in ["A", "B"] {
        // "", pair, build, CPU by round, mean, puts/s, p50 / p99, fsyncs
        let cells = scripts::row(&stdout, &format!("| 1 | {build} |"));
        let row = cells.join(" | ");
        assert!(number(cells[4]) > 0.0, "no server CPU: {row}");
        assert!(number(cells[5]) > 0.0, "no throughput: {row}");
        // Every node synced its log for the puts it took: three figures.
        let syncs: Vec<f64> = cells[7].split('/').map(number).collect();
        assert_eq!(syncs.len(), 3, "fsyncs of three nodes: {row}");
        assert!(syncs.iter().all(|s| *s > 0.0), "a node never synced: {row}");
    }
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("Server CPU per 1,000 puts, mean of the runs: A "))
        .unwrap_or_else(|| panic!("no summary in\n{stdout}"));
    assert!(
        summary.contains("B ÷ A ") && summary.contains(" of 1 pairs"),
        "{summary}"
    );

    // Every process the script started is gone with its work directory.
    scripts::assert_left_nothing(&stderr);
}
