//! Ranking metrics between supernet scores and ground truth.
//!
//! Every function takes two equally long score vectors (higher is better where it matters) and
//! never panics: mismatched lengths, too few points, a NaN anywhere or a constant input give NaN,
//! mirroring what scipy reports as undefined. The formulas follow scipy 1.10 operation for
//! operation where that decides the last bits (Kendall's two square roots, the clamp to [-1, 1]).

use std::cmp::Ordering;

/// Numeric order for values already known not to be NaN; -0.0 and 0.0 compare equal, as in scipy.
fn cmp_f64(a: f64, b: f64) -> Ordering {
    if a < b {
        Ordering::Less
    } else if a > b {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

/// False when every metric on this pair is undefined for structural reasons.
fn usable(x: &[f64], y: &[f64]) -> bool {
    x.len() == y.len() && x.len() >= 2 && !x.iter().chain(y).any(|v| v.is_nan())
}

fn is_constant(v: &[f64]) -> bool {
    v.windows(2).all(|w| w[0] == w[1])
}

/// Number of pairs tied within runs of equal neighbours of an already sorted sequence.
fn tied_pairs<T>(sorted: &[T], eq: impl Fn(&T, &T) -> bool) -> u64 {
    let mut total = 0u64;
    let mut run = 1u64;
    for w in sorted.windows(2) {
        if eq(&w[0], &w[1]) {
            run += 1;
        } else {
            total += run * (run - 1) / 2;
            run = 1;
        }
    }
    total + run * (run - 1) / 2
}

/// Sorts `v` ascending with a merge sort and returns the number of strict inversions
/// (pairs i < j with v[i] > v[j]); equal values are not inversions.
fn merge_sort_inversions(v: &mut [f64]) -> u64 {
    let n = v.len();
    let mut buf = vec![0.0; n];
    let mut swaps = 0u64;
    // Bottom-up so that no recursion depth depends on the input size.
    let mut width = 1;
    while width < n {
        let mut start = 0;
        while start < n {
            let mid = (start + width).min(n);
            let end = (start + 2 * width).min(n);
            let (mut i, mut j, mut k) = (start, mid, start);
            while i < mid && j < end {
                if v[j] < v[i] {
                    buf[k] = v[j];
                    swaps += (mid - i) as u64;
                    j += 1;
                } else {
                    buf[k] = v[i];
                    i += 1;
                }
                k += 1;
            }
            buf[k..k + (mid - i)].copy_from_slice(&v[i..mid]);
            k += mid - i;
            buf[k..k + (end - j)].copy_from_slice(&v[j..end]);
            start = end;
        }
        v.copy_from_slice(&buf);
        width *= 2;
    }
    swaps
}

/// Kendall tau-b (ties in either ranking handled) in O(n log n) by Knight's algorithm; NaN when
/// undefined (lengths differ, n < 2, a NaN value, or one input constant).
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> f64 {
    if !usable(x, y) {
        return f64::NAN;
    }
    let n = x.len() as u64;
    let mut pairs: Vec<(f64, f64)> = x.iter().copied().zip(y.iter().copied()).collect();
    pairs.sort_by(|a, b| cmp_f64(a.0, b.0).then(cmp_f64(a.1, b.1)));
    let x_ties = tied_pairs(&pairs, |a, b| a.0 == b.0);
    let joint_ties = tied_pairs(&pairs, |a, b| a.0 == b.0 && a.1 == b.1);
    let mut ys: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    // Within a run of equal x the y are ascending, so every inversion is a discordant pair.
    let discordant = merge_sort_inversions(&mut ys);
    let y_ties = tied_pairs(&ys, |a, b| a == b);
    let total = n * (n - 1) / 2;
    if x_ties == total || y_ties == total {
        return f64::NAN;
    }
    let con_minus_dis =
        total as i64 - x_ties as i64 - y_ties as i64 + joint_ties as i64 - 2 * discordant as i64;
    let tau =
        con_minus_dis as f64 / ((total - x_ties) as f64).sqrt() / ((total - y_ties) as f64).sqrt();
    tau.clamp(-1.0, 1.0)
}

/// 1-based ranks with ties given the average of the ranks they span (scipy's `rankdata`).
fn average_ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| cmp_f64(v[a], v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && v[order[end]] == v[order[start]] {
            end += 1;
        }
        // Ranks start..end (0-based) share the mean of start+1 ..= end.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Spearman rho (Pearson on average ranks); NaN when undefined.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    if !usable(x, y) {
        return f64::NAN;
    }
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Pearson r; NaN when undefined (lengths differ, n < 2, a NaN value, or one input constant).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    if !usable(x, y) || is_constant(x) || is_constant(y) {
        return f64::NAN;
    }
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        let (da, db) = (a - mx, b - my);
        sxy += da * db;
        sxx += da * da;
        syy += db * db;
    }
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

/// Indices of the `k` largest values; ties are broken in favour of the lower index, so the
/// result is deterministic (a stable sort of the values in descending order).
fn top_indices(v: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| cmp_f64(v[b], v[a]));
    order.truncate(k);
    order
}

/// Fraction of the top `k` by `x` that are also in the top `k` by `y` (higher is better).
/// `k` is capped at the length. Ties at the cut are broken by index (lower index ranks first)
/// in both rankings. NaN when lengths differ, the input is empty, `k` is 0 or a value is NaN.
pub fn top_k_overlap(x: &[f64], y: &[f64], k: usize) -> f64 {
    if x.len() != y.len() || x.is_empty() || k == 0 || x.iter().chain(y).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let k = k.min(x.len());
    let mut in_y = vec![false; y.len()];
    for i in top_indices(y, k) {
        in_y[i] = true;
    }
    let shared = top_indices(x, k).into_iter().filter(|&i| in_y[i]).count();
    shared as f64 / k as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Case {
        name: String,
        x: Vec<f64>,
        y: Vec<f64>,
        kendall: Option<f64>,
        spearman: Option<f64>,
        pearson: Option<f64>,
        top_k: Vec<(usize, f64)>,
    }

    #[derive(Deserialize)]
    struct Fixture {
        cases: Vec<Case>,
    }

    fn check(name: &str, what: &str, got: f64, want: Option<f64>, tol: f64) {
        match want {
            None => assert!(got.is_nan(), "{name} {what}: expected NaN, got {got}"),
            Some(w) => assert!(
                (got - w).abs() <= tol,
                "{name} {what}: got {got}, scipy {w}, diff {}",
                (got - w).abs()
            ),
        }
    }

    #[test]
    fn matches_scipy_fixture() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/metrics.json");
        let text = std::fs::read_to_string(path).unwrap();
        let fixture: Fixture = serde_json::from_str(&text).unwrap();
        assert_eq!(fixture.cases.len(), 10);
        for c in &fixture.cases {
            let tol = if c.x.len() > 100 { 1e-9 } else { 1e-12 };
            check(
                &c.name,
                "kendall",
                kendall_tau_b(&c.x, &c.y),
                c.kendall,
                tol,
            );
            check(&c.name, "spearman", spearman(&c.x, &c.y), c.spearman, tol);
            check(&c.name, "pearson", pearson(&c.x, &c.y), c.pearson, tol);
            for &(k, want) in &c.top_k {
                let got = top_k_overlap(&c.x, &c.y, k);
                assert_eq!(got, want, "{} top-{k}", c.name);
            }
        }
    }

    /// O(n^2) definition of tau-b, to cross-check the merge-sort counting on awkward inputs.
    fn kendall_naive(x: &[f64], y: &[f64]) -> f64 {
        let (mut con, mut dis, mut tx, mut ty) = (0i64, 0i64, 0i64, 0i64);
        for i in 0..x.len() {
            for j in i + 1..x.len() {
                let (dx, dy) = (x[i] - x[j], y[i] - y[j]);
                if dx == 0.0 && dy == 0.0 {
                } else if dx == 0.0 {
                    tx += 1;
                } else if dy == 0.0 {
                    ty += 1;
                } else if (dx > 0.0) == (dy > 0.0) {
                    con += 1;
                } else {
                    dis += 1;
                }
            }
        }
        let denom = (((con + dis + tx) * (con + dis + ty)) as f64).sqrt();
        (con - dis) as f64 / denom
    }

    #[test]
    fn kendall_agrees_with_pairwise_definition() {
        // A small deterministic generator: many ties and every length from 2 to 40.
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % 7) as f64
        };
        for n in 2..40 {
            let x: Vec<f64> = (0..n).map(|_| next()).collect();
            let y: Vec<f64> = (0..n).map(|_| next()).collect();
            let fast = kendall_tau_b(&x, &y);
            let slow = kendall_naive(&x, &y);
            if slow.is_nan() {
                assert!(fast.is_nan(), "n={n}");
            } else {
                assert!((fast - slow).abs() < 1e-12, "n={n}: {fast} vs {slow}");
            }
        }
    }

    #[test]
    fn undefined_inputs_give_nan() {
        type Metric = fn(&[f64], &[f64]) -> f64;
        let metrics: [Metric; 3] = [kendall_tau_b, spearman, pearson];
        for f in metrics {
            assert!(f(&[], &[]).is_nan());
            assert!(f(&[1.0], &[2.0]).is_nan());
            assert!(f(&[1.0, 2.0, 3.0], &[1.0, 2.0]).is_nan());
            assert!(f(&[1.0, 2.0, 3.0], &[4.0, 4.0, 4.0]).is_nan());
            assert!(f(&[1.0, f64::NAN, 3.0], &[1.0, 2.0, 3.0]).is_nan());
        }
        assert!(top_k_overlap(&[], &[], 3).is_nan());
        assert!(top_k_overlap(&[1.0, 2.0], &[1.0], 1).is_nan());
        assert!(top_k_overlap(&[1.0, 2.0], &[1.0, 2.0], 0).is_nan());
    }

    #[test]
    fn top_k_ties_and_caps() {
        // Ties at the cut go to the lower index: top-2 of x is {0, 1}, of y is {1, 2}.
        let x = [5.0, 5.0, 5.0, 1.0];
        let y = [0.0, 3.0, 3.0, 2.0];
        assert_eq!(top_k_overlap(&x, &y, 2), 0.5);
        // k beyond n is capped, so everything overlaps.
        assert_eq!(top_k_overlap(&x, &y, 10), 1.0);
        assert_eq!(top_k_overlap(&y, &x, 1), 0.0);
    }

    #[test]
    fn average_ranks_match_rankdata() {
        assert_eq!(
            average_ranks(&[3.0, 1.0, 3.0, 2.0, 3.0]),
            vec![4.0, 1.0, 4.0, 2.0, 4.0]
        );
        assert_eq!(average_ranks(&[0.0, -0.0]), vec![1.5, 1.5]);
    }
}
