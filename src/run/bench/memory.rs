//! Peak resident memory of this process, per benchmark phase.
//!
//! Linux keeps the RSS high-water mark in `/proc/self/status` (`VmHWM`) and resets it to the
//! current RSS when "5" is written to `/proc/self/clear_refs`; the PyTorch twins read and reset
//! it the same way (`benchmarks/pytorch/common.py`), so both sides' numbers mean the same:
//! the most memory resident at any moment of a phase, the model included.

/// Resets the high-water mark to the current RSS; false where the kernel does not allow it
/// (then the next reading covers everything since the process started).
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The RSS high-water mark in MiB, or `None` off Linux.
pub fn peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_hwm_kib(&status).map(|kib| kib as f64 / 1024.0)
}

fn parse_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_high_water_mark() {
        let s = "Name:\trunner\nVmPeak:\t  999 kB\nVmHWM:\t   204800 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_hwm_kib(s), Some(204_800));
        assert_eq!(parse_hwm_kib("VmRSS: 3 kB\n"), None);
    }

    #[test]
    fn the_peak_covers_a_fresh_allocation() {
        if peak_mib().is_none() {
            return; // not Linux
        }
        let before = peak_mib().unwrap();
        // 64 MiB touched page by page: resident at once, so the mark reaches at least that
        // (other tests' threads can only add to it).
        let v = vec![1u8; 64 << 20];
        assert!(v.iter().step_by(4096).all(|&b| b == 1));
        let after = peak_mib().unwrap();
        assert!(after >= 64.0 && after >= before, "{before} -> {after}");
    }
}
