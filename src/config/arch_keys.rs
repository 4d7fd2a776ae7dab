//! The encoding keys of the spaces without an enumerated archset (DARTS, DARTS-PTB,
//! ProxylessNAS) with the values each takes, so that `tricks.pruned` is checked against them
//! before any work starts (file, line and key in the error). They are the spaces' own
//! `Space::factors` (a test in `space::factors` keeps both in step); the config layer cannot
//! ask the spaces, which sit above it.

use serde_json::Value;

/// DARTS op names, in the study's `PRIMITIVES` order.
const DARTS_OPS: [&str; 7] = [
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
];

fn ints(n: u64) -> Vec<Value> {
    (0..n).map(Value::from).collect()
}

/// Every key of space `kind` with its values, in the space's sampling order; `None` for the
/// spaces with an archset.
pub fn keys(kind: &str) -> Option<Vec<(String, Vec<Value>)>> {
    let mut v = vec![];
    match kind {
        "darts" => {
            let ops: Vec<Value> = DARTS_OPS.iter().map(|&o| o.into()).collect();
            for cell in ["normal", "reduce"] {
                for node in 2..=5u64 {
                    for slot in 0..2 {
                        v.push((format!("{cell}/{node}/{slot}/op"), ops.clone()));
                        v.push((format!("{cell}/{node}/{slot}/input"), ints(node)));
                    }
                }
            }
        }
        "ptb" => {
            for i in 0..8 {
                v.push((format!("act/{i}"), ints(4)));
            }
            for i in 0..8u64 {
                v.push((format!("switch/{i}"), ints(i + 1)));
            }
        }
        "proxyless" => {
            for (s, cells) in [4, 4, 4, 4, 4, 1].into_iter().enumerate() {
                for c in 0..cells {
                    v.push((
                        format!("stage{s}_cell{c}"),
                        ints(if c == 0 { 6 } else { 7 }),
                    ));
                }
            }
        }
        _ => return None,
    }
    Some(v)
}

/// DARTS: the nodes whose allowed inputs leave no two distinct ones (both slots allowed only
/// the same single state), as `(node, input)`, e.g. `("normal/3", 1)`.
pub fn darts_nodes_without_distinct_inputs(
    allowed: &std::collections::BTreeMap<String, Vec<Value>>,
) -> Vec<(String, Value)> {
    let mut bad = vec![];
    for cell in ["normal", "reduce"] {
        for node in 2..=5 {
            let get = |slot: usize| allowed.get(&format!("{cell}/{node}/{slot}/input"));
            if let (Some([a]), Some([b])) = (get(0).map(Vec::as_slice), get(1).map(Vec::as_slice)) {
                if a == b {
                    bad.push((format!("{cell}/{node}"), a.clone()));
                }
            }
        }
    }
    bad
}
