//! `tests/bench-vs-etcd --quick`: a three-node utopia cluster and a
//! three-member etcd cluster start on loopback, every workload runs against
//! both with `utopia bench --target utopia|etcd`, the table has a figure for
//! each, and no process the script started outlives it. No timing is
//! asserted: only that both systems answered every request.

mod common;

use std::path::Path;
use std::time::Duration;

use common::scripts::{self, number};
use common::UTOPIA;

/// Generous: the script may first have to install etcd from Debian.
const DEADLINE: Duration = Duration::from_secs(600);

const ROWS: [&str; 6] = [
    "put, 1 client",
    "put, 64 clients",
    "put, 256 clients",
    "linearizable get, 64 clients",
    "serializable get, 64 clients",
    "90% get / 10% put, 64 clients",
];

#[test]
fn quick_mode_drives_both_clusters_with_every_workload() {
    let bin_dir = Path::new(UTOPIA).parent().expect("the binaries' directory");
    let (stdout, stderr) = scripts::run(
        "bench-vs-etcd",
        &[
            "--quick".as_ref(),
            "--bin-dir".as_ref(),
            bin_dir.as_os_str(),
        ],
        DEADLINE,
    );

    for label in ROWS {
        let cells = scripts::row(&stdout, &format!("| {label} |"));
        let row = cells.join(" | ");
        // "", label, utopia ops/s, etcd ops/s, ratio, ...
        assert!(number(cells[2]) > 0.0, "utopia did no work: {row}");
        assert!(number(cells[3]) > 0.0, "etcd did no work: {row}");
        // The servers' CPU per 1,000 operations, "utopia / etcd", from /proc.
        let cpu: Vec<f64> = cells[8].split(" / ").map(number).collect();
        assert!(
            cpu.len() == 2 && cpu.iter().all(|c| *c > 0.0),
            "no server CPU for both systems: {row}"
        );
    }
    assert!(
        stdout.contains("Peak RSS per server over the run (VmHWM, MiB): utopia "),
        "no peak RSS line in\n{stdout}"
    );

    // Every process the script started is gone with its work directory.
    scripts::assert_left_nothing(&stderr);
}
