//! Smoke test of `runner bench`: the harness runs every search space at the tiny shape
//! (runner's side only: the tests never need PyTorch), prints the table with all five spaces,
//! writes the JSON results, keeps the NB201 options of the older command, and refuses bad
//! requests with one line. No timing is asserted (the numbers only have to exist).

use std::process::Command;

fn runner() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
    // The PyTorch side stays off even where torch is installed.
    c.env_remove("RUNNER_BENCH_PYTHON");
    c
}

#[test]
fn every_space_runs_at_the_tiny_shape_and_the_table_lists_all_five() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let o = runner()
        .args([
            "bench",
            "--space",
            "all",
            "--shape",
            "tiny",
            "--no-pytorch",
            "--rounds",
            "1",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(
        "| space     | shape | what       | runner ms | PyTorch ms | PyTorch/runner | runner MB | PyTorch MB |"
    ), "{stdout}");
    for space in ["nb101", "nb201", "darts", "ptb", "proxyless"] {
        for what in ["train step", "evaluation"] {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&format!("| {space:<9} | tiny  | {what}")))
                .unwrap_or_else(|| panic!("no {space} {what} row in\n{stdout}"));
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // runner ms and MB are numbers; the PyTorch columns are empty.
            assert!(cells[4].parse::<f64>().unwrap() > 0.0, "{line}");
            assert_eq!((cells[5], cells[6]), ("-", "-"), "{line}");
            assert!(cells[7].parse::<f64>().unwrap() > 0.0, "{line}");
        }
        assert!(
            stderr.contains(&format!("bench {space} tiny: round 1/1 runner")),
            "{stderr}"
        );
    }
    assert!(
        stdout.contains("PyTorch not compared: --no-pytorch"),
        "{stdout}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 10);
    assert!(rows.iter().all(|r| r["runner_ms"].as_f64().unwrap() > 0.0
        && r["pytorch_ms"].is_null()
        && r["runner_samples_ms"].as_array().unwrap().len() == 1));
    assert_eq!(rows[6]["space"], "ptb");
    assert_eq!(rows[6]["spec"]["space"]["kind"], "ptb");
    assert_eq!(j["threads"], 1);
    assert!(j["problems"].as_array().unwrap().is_empty());
    // The default device is the CPU, whose memory is the process's and nothing else.
    assert_eq!(j["device"], "cpu");
    assert_eq!(j["gpu_memory_measured"]["runner"], false);
    assert!(rows.iter().all(|r| r["runner_gpu_peak_mib"].is_null()));
}

#[test]
fn device_cpu_is_the_default_table() {
    let args = [
        "bench",
        "--space",
        "nb201",
        "--shape",
        "tiny",
        "--no-pytorch",
        "--rounds",
        "1",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
    ];
    let o = runner()
        .args(args)
        .args(["--device", "cpu"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.starts_with("on the CPU; 1 thread(s); 1 round(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| space | shape | what       | runner ms | PyTorch ms | PyTorch/runner | runner MB | PyTorch MB |"),
        "{stdout}"
    );
    assert!(!stdout.contains("GPU"), "{stdout}");
    let o = runner()
        .args(args)
        .args(["--device", "cpu", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["device"], "cpu");
    assert!(j["rows"][0]["runner_ms"].as_f64().unwrap() > 0.0);
}

/// A CPU build asked for CUDA stops before it starts anything (no PyTorch lookup, no worker),
/// with one line that says how to get a CUDA build.
#[test]
fn device_cuda_on_a_cpu_build_fails_with_one_line() {
    if cfg!(feature = "cuda") {
        return; // a CUDA build may well have a device; scripts/gpu-check.sh covers that
    }
    let o = runner()
        .args([
            "bench", "--space", "nb201", "--shape", "tiny", "--device", "cuda",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert_eq!(
        lines[0],
        "error: --device cuda but this runner was built without the `cuda` feature (build one with scripts/build-cuda.sh, or --features cuda with a CUDA toolkit; or use --device cpu)"
    );
    // The worker refuses the same way when started by hand with a valid spec.
    let o = runner()
        .args([
            "bench",
            "--space",
            "nb201",
            "--shape",
            "tiny",
            "--no-pytorch",
        ])
        .args(["--rounds", "1", "--repeats", "1", "--warmup", "0", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let spec = serde_json::to_string(&j["rows"][0]["spec"]).unwrap();
    let o = runner()
        .args(["bench-worker", "--device", "cuda", "--spec", &spec])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(o.stdout.is_empty());
    assert!(
        err.trim_end().starts_with(
            "error: --device cuda but this runner was built without the `cuda` feature"
        ),
        "{err}"
    );
    let o = runner()
        .args(["bench", "--device", "tpu"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("[possible values: cpu, cuda]"));
}

#[test]
fn nb201_options_of_the_older_command_still_work() {
    let o = runner()
        .args([
            "bench",
            "--no-pytorch",
            "--rounds",
            "1",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--channels",
            "4",
            "--cells",
            "1",
            "--batch",
            "2",
            "--recal-steps",
            "1",
            "--recal-batch",
            "2",
            "--valid-images",
            "4",
            "--eval-batch",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let spec = &j["rows"][0]["spec"];
    assert_eq!(spec["shape"], "custom");
    assert_eq!(spec["space"]["kind"], "nb201");
    assert_eq!(
        (spec["space"]["channels"].as_u64(), spec["batch"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(spec["valid_batches"], 2);
}

#[test]
fn bad_requests_fail_with_one_line() {
    for (args, msg) in [
        (vec!["--space", "nb301"], "--space \"nb301\""),
        (vec!["--shape", "huge"], "--shape \"huge\""),
        (
            vec!["--space", "ptb", "--cells", "2"],
            "apply to nb201 only",
        ),
        (vec!["--rounds", "0"], "--rounds must be at least 1"),
    ] {
        let o = runner()
            .arg("bench")
            .arg("--no-pytorch")
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(
            err.lines()
                .any(|l| l.starts_with("error:") && l.contains(msg)),
            "{args:?}: {err}"
        );
    }
}
