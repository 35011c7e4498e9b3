//! The repository's scripts (the benchmarks in `tests/`) run from a test:
//! to completion within a deadline, and checked to leave nothing behind.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Runs `tests/<name>` with `args` to completion and returns its stdout
/// and stderr; the test fails if it exits unsuccessfully. Past `deadline`
/// it is sent SIGTERM (so that it stops what it started), then SIGKILL
/// after 30 seconds, and the test fails.
pub fn run(name: &str, args: &[&std::ffi::OsStr], deadline: Duration) -> (String, String) {
    let out = run_to_end(name, args, deadline);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "tests/{name} exited with {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );
    (stdout, stderr)
}

fn run_to_end(name: &str, args: &[&std::ffi::OsStr], deadline: Duration) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name);
    let child = Command::new(&script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run tests/{name}: {e}"));
    let pid = child.id().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => out.expect("wait for the script"),
        Err(_) => {
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            if rx.recv_timeout(Duration::from_secs(30)).is_err() {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
            panic!("tests/{name} did not finish within {deadline:?}");
        }
    }
}

/// Processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
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

/// Checks that the work directory a script named on stderr ("work dir:
/// PATH") is gone, and no process it started still runs from it.
pub fn assert_left_nothing(stderr: &str) {
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

/// The cells of the Markdown table row in `out` that starts with
/// `prefix` (its first cell, the empty one before the first `|`, included).
pub fn row<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    let row = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no row {prefix:?} in\n{out}"));
    row.split('|').map(str::trim).collect()
}

/// A table's number: "12,345.6" → 12345.6.
pub fn number(cell: &str) -> f64 {
    cell.trim()
        .replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("not a number: {cell:?} ({e})"))
}
