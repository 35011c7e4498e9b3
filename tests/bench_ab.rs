//! `tests/bench-ab --quick`: two runs (build A, then build B, here the same
//! build) each start a fresh three-node cluster on loopback, put through
//! it with `utopia bench put`, and report the servers' CPU and each node's
//! log fsyncs per 1,000 puts; the summary compares the two. No timing is
//! asserted: only that every figure is there, every put succeeded, and no
//! process the script started outlives it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::UTOPIA;

const DEADLINE: Duration = Duration::from_secs(300);

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!(
                    "{}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    found
}

fn number(cell: &str) -> f64 {
    cell.trim()
        .parse()
        .unwrap_or_else(|e| panic!("not a number: {cell:?} ({e})"))
}

#[test]
fn quick_mode_runs_both_builds_and_compares_them() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bench-ab");
    let bin_dir = Path::new(UTOPIA).parent().expect("the binaries' directory");
    let child = Command::new(&script)
        .arg("--quick")
        .arg("--a")
        .arg(bin_dir)
        .arg("--b")
        .arg(bin_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tests/bench-ab");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.expect("wait for the script"),
        Err(_) => {
            // SIGTERM lets the script stop its cluster; then make sure.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            if rx.recv_timeout(Duration::from_secs(30)).is_err() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            panic!("tests/bench-ab --quick did not finish within {DEADLINE:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tests/bench-ab --quick exited with {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );

    for build in ["A", "B"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| 1 | {build} |")))
            .unwrap_or_else(|| panic!("no row for build {build} in\n{stdout}"));
        // "", pair, build, CPU by round, mean, puts/s, p50 / p99, fsyncs
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
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
    let work = stderr
        .lines()
        .find_map(|l| l.strip_prefix("work dir: "))
        .unwrap_or_else(|| panic!("the script did not name its work dir:\n{stderr}"))
        .trim()
        .to_string();
    assert!(!Path::new(&work).exists(), "{work} was not removed");
    let left = processes_mentioning(&work);
    assert!(left.is_empty(), "still running: {left:?}");
}
