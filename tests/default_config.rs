//! `/etc/utopia/utopiad.conf` is read when no `--config` is given, and
//! `--config` wins over it. In a test binary of its own: the file is the
//! machine's, so nothing else may start a server while it exists.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{temp_dir, wait_for, Server};

const DEFAULT_CONFIG: &str = "/etc/utopia/utopiad.conf";

/// Removes the file it wrote when dropped, even if the test fails.
struct Written(&'static str);

impl Drop for Written {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

fn logs_json(server: &Server) -> bool {
    server
        .stderr_log()
        .lines()
        .any(|l| l.starts_with('{') && l.contains("configuration read"))
}

#[test]
fn the_machine_configuration_is_read_unless_config_is_given() {
    assert!(
        !Path::new(DEFAULT_CONFIG).exists(),
        "{DEFAULT_CONFIG} exists on this machine; this test writes its own and will not \
         replace an operator's file"
    );
    std::fs::create_dir_all("/etc/utopia").unwrap();
    std::fs::write(DEFAULT_CONFIG, "log = { format = \"json\"; };\n").unwrap();
    let _written = Written(DEFAULT_CONFIG);

    let dir = temp_dir();
    let mut from_etc = Server::start(&dir.path().join("a"));
    wait_for(
        "a JSON log naming the file",
        Duration::from_secs(10),
        || logs_json(&from_etc).then_some(()),
    );
    assert!(from_etc.stderr_log().contains(DEFAULT_CONFIG));
    from_etc.terminate();

    let own = dir.path().join("own.conf");
    std::fs::write(&own, "log = { format = \"text\"; };\n").unwrap();
    let mut from_flag =
        Server::start_with(&dir.path().join("b"), &["--config", own.to_str().unwrap()]);
    let log = from_flag.stderr_log();
    assert!(!logs_json(&from_flag), "{log}");
    assert!(
        log.contains("configuration read") && log.contains("own.conf"),
        "{log}"
    );
    from_flag.terminate();
}
