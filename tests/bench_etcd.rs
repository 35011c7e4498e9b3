//! `tests/bench-vs-etcd --quick`: a three-node utopia cluster and a
//! three-member etcd cluster start on loopback, every workload runs against
//! both with `utopia bench --target utopia|etcd`, the table has a figure for
//! each, and no process the script started outlives it. No timing is
//! asserted: only that both systems answered every request.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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

/// "12,345" → 12345.0
fn number(cell: &str) -> f64 {
    cell.trim()
        .replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("not a number: {cell:?} ({e})"))
}

#[test]
fn quick_mode_drives_both_clusters_with_every_workload() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bench-vs-etcd");
    let bin_dir = Path::new(UTOPIA).parent().expect("the binaries' directory");
    let child = Command::new(&script)
        .arg("--quick")
        .arg("--bin-dir")
        .arg(bin_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tests/bench-vs-etcd");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.expect("wait for the script"),
        Err(_) => {
            // SIGTERM lets the script stop its clusters; then make sure.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(_) => {}
                Err(_) => {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
            panic!("tests/bench-vs-etcd --quick did not finish within {DEADLINE:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tests/bench-vs-etcd --quick exited with {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );

    for label in ROWS {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {label} |")))
            .unwrap_or_else(|| panic!("no row {label:?} in\n{stdout}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
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
