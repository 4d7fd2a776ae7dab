//! `runner selftest`: the device check that `scripts/gpu-check.sh` runs on a GPU machine. On
//! this CPU-only CI it compares the native kernels with the portable ops (the path CUDA runs)
//! for every space, and `--device cuda` reports that it skipped.

use std::process::Command;

fn runner() -> Command {
    Command::new(env!("CARGO_BIN_EXE_runner"))
}

#[test]
fn portable_ops_agree_with_the_native_kernels_for_every_space() {
    let out = runner()
        .args(["selftest", "--device", "portable"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for space in ["nb201", "nb101", "darts", "proxyless", "ptb"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(space))
            .unwrap_or_else(|| panic!("no line for {space}:\n{text}"));
        assert!(line.contains(" ok "), "{line}");
    }
}

#[test]
fn a_tight_tolerance_fails_with_one_line_and_cuda_is_skipped_without_a_gpu() {
    let out = runner()
        .args(["selftest", "--device", "portable", "--tolerance", "1e-12"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("differs from the CPU kernels"), "{err}");

    let out = runner()
        .args(["selftest", "--device", "tpu"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    if !candle_core::utils::cuda_is_available() {
        let out = runner().args(["selftest"]).output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("selftest skipped"));
    }
}
