//! The robustness harness (`cargo xtask fuzz`) at CI size: a few hundred seeded mutations
//! of a valid file per reader, run through the xtask binary so that its allocation bound
//! applies (an allocation over it, a panic or a stack overflow fails this test).
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

#[test]
fn every_reader_survives_mutated_files() {
    let failures = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["fuzz", "--cases", "300", "--seed", "7", "--failures"])
        .arg(failures.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // 21 readers (the 11 of before, 5 for the other datasets and predict's images, 4 for
    // convolutional checkpoints and training states, the input contract and export, and
    // the frame on a link between decoupled groups).
    assert!(stdout.contains("fuzz: 6300 cases, 0 panics, 0 accepted but different"), "{stdout}");
    // Every reader refused some inputs and accepted its valid one: the cases tested something.
    for line in stdout.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| reader") && !l.contains("---")) {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        assert!(cols[3].parse::<usize>().unwrap() > 0, "{line}");
    }
}

#[test]
fn killed_runs_resume_to_the_uninterrupted_files_and_leave_nothing() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["chaos", "--kills", "4", "--seed", "3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // The decoupled schedule's three groups as threads; as MPI ranks in .ci/run
    // (scripts/mpi-check.sh), whose build has the `mpi` feature.
    for scenario in ["smoke", "resume", "cnn", "decoupled"] {
        assert!(stdout.contains(&format!("chaos {scenario}: 4 kills")), "{stdout}");
    }
    assert_eq!(stdout.matches(" resumed a depth mid-way, 0 differences, 0 leftovers").count(), 4, "{stdout}");
}
