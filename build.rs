//! Compiles runner's oneDNN bridge (src/nn/onednn/shim.cpp) when the `onednn` feature is on and
//! oneDNN's headers are found; otherwise runner has only its own pure-Rust convolution (with the
//! feature on, it says so at build time). `DNNL_ROOT` points at a oneDNN install
//! (`include/`, `lib/`) other than the system one (Debian: `apt-get install libdnnl-dev`).
use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(runner_onednn)");
    println!("cargo::rerun-if-changed=src/nn/onednn/shim.cpp");
    println!("cargo::rerun-if-env-changed=DNNL_ROOT");
    if std::env::var_os("CARGO_FEATURE_ONEDNN").is_none() {
        return;
    }
    let root = std::env::var_os("DNNL_ROOT").map(PathBuf::from);
    let include = match &root {
        Some(r) => r.join("include"),
        None => PathBuf::from("/usr/include"),
    };
    if !include.join("oneapi/dnnl/dnnl.hpp").is_file() {
        println!(
            "cargo::warning=oneDNN not found ({}/oneapi/dnnl/dnnl.hpp): runner is built with its \
             pure-Rust convolution only (apt-get install libdnnl-dev, or set DNNL_ROOT)",
            include.display()
        );
        return;
    }
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .flag("-fopenmp")
        .include(&include)
        .file("src/nn/onednn/shim.cpp")
        .compile("runner_dnnl_shim");
    if let Some(r) = &root {
        println!(
            "cargo::rustc-link-search=native={}",
            r.join("lib").display()
        );
    }
    println!("cargo::rustc-link-lib=dylib=dnnl");
    println!("cargo::rustc-link-lib=dylib=gomp");
    println!("cargo::rustc-cfg=runner_onednn");
}
