//! The README stays true to the code.

#[test]
fn readme_lists_every_setting() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let reference = utopia::config::reference();
    assert!(
        readme.contains(reference),
        "README.md's configuration section must contain config::reference() verbatim:\n{reference}"
    );
}

#[test]
fn readme_names_the_test_command_that_ci_runs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let ci = std::fs::read_to_string(format!("{root}/.ci/run")).unwrap();
    assert!(
        readme.contains("\ntests/run\n"),
        "the README gives tests/run as the test command"
    );
    assert!(
        ci.contains("exec tests/run"),
        ".ci/run runs the README's test command"
    );
}
