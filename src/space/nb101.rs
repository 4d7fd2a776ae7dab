//! NAS-Bench-101, restricted to NAS-Bench-1Shot1 search space 3 (the study's `nb1shot1c`).
//!
//! A cell has 7 vertices: the input (0), five op vertices (1..5) and the output (6). Vertex t
//! takes `NUM_PARENTS[t]` = [0, 1, 1, 1, 2, 2, 2][t] inputs among the earlier vertices; the
//! input never feeds the output directly and every vertex feeds a later one (no dangling
//! vertex). That leaves 395 topologies, times 3^5 op choices: 95,985 archset entries,
//! isomorphic duplicates kept (they share a NAS-Bench-101 hash and ground truth), in the
//! order of the study's `tools/generate_nb101_splits.py` (topology-major; each vertex's parent
//! set in `itertools.combinations` order, vertex 1 slowest; then the ops with op1 slowest).
//!
//! Encoding (the study's JSON of an arch: its `_build_arch_key` and its logs, which write the
//! pickle's numpy bool arrays as 0/1 integers): keys in sorted order
//! `input1..input6, op1..op5`; `op<t>` a one-hot list of 3 over [`OPS`], `input<t>` a 0/1 mask
//! of length t over the vertices 0..t-1 (index 0 is the cell input; for vertices 1..5 that
//! means the vertex's own 1x1 projection of it). Decoding also takes JSON booleans, as the
//! pickle holds them.

pub mod bench;
pub mod net;

pub use net::Nb101Net;

use super::Space;
use crate::rng::Rng;
use anyhow::{bail, Context};
use rand::Rng as _;
use serde_json::Value;

/// The candidate ops of vertices 1..5, in one-hot order (NAS-Bench-101's labels).
pub const OPS: [&str; 3] = ["conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3"];

/// Short op names for arch strings.
const OP_SHORT: [&str; 3] = ["conv3x3", "conv1x1", "maxpool3x3"];

/// Inputs per vertex (the study's `num_parents`).
pub const NUM_PARENTS: [usize; 7] = [0, 1, 1, 1, 2, 2, 2];

/// Vertices of a cell, the input and output included.
pub const VERTICES: usize = 7;

/// Op vertices (1..=5).
pub const OP_VERTICES: usize = 5;

/// Topologies of the space (395) and archset entries (95,985).
pub const TOPOLOGIES: usize = 395;
pub const ARCHSET_SIZE: usize = 95_985;

/// One cell of the space. Only [`Arch::new`] (and decoding, which calls it) builds one, so
/// every value is a valid member of the archset: the right number of parents per vertex, no
/// input -> output edge, no dangling vertex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch {
    /// Op index (into [`OPS`]) of vertices 1..5.
    ops: [u8; OP_VERTICES],
    /// `inputs[t - 1]`: bit j set when vertex j (< t) feeds vertex t, for t = 1..6.
    inputs: [u8; VERTICES - 1],
}

impl Arch {
    /// Checks a cell: `ops[v - 1]` is the op of vertex v, `inputs[t - 1]` the parent bits of
    /// vertex t (bit j = vertex j).
    pub fn new(ops: [u8; OP_VERTICES], inputs: [u8; VERTICES - 1]) -> anyhow::Result<Arch> {
        for (i, &o) in ops.iter().enumerate() {
            if o as usize >= OPS.len() {
                bail!("op{}: op index {o} is not one of 0..2", i + 1);
            }
        }
        for t in 1..VERTICES {
            let m = inputs[t - 1];
            if m >> t != 0 {
                bail!(
                    "input{t}: vertex {t} can only take inputs from vertices 0..{}",
                    t - 1
                );
            }
            let n = m.count_ones() as usize;
            if n != NUM_PARENTS[t] {
                bail!(
                    "input{t}: vertex {t} has {n} parents, the space needs {} (num_parents {:?})",
                    NUM_PARENTS[t],
                    NUM_PARENTS
                );
            }
        }
        if inputs[VERTICES - 2] & 1 != 0 {
            bail!("input6: the input vertex feeds the output directly, which space 3 excludes");
        }
        for v in 1..VERTICES - 1 {
            let used = (v + 1..VERTICES).any(|t| inputs[t - 1] >> v & 1 != 0);
            if !used {
                bail!("vertex {v} dangles: no later vertex takes it as input");
            }
        }
        Ok(Arch { ops, inputs })
    }

    /// Op index of vertex `v` (1..=5).
    pub fn op(&self, v: usize) -> usize {
        self.ops[v - 1] as usize
    }

    /// Op indices of vertices 1..5.
    pub fn ops(&self) -> [u8; OP_VERTICES] {
        self.ops
    }

    /// Parent bits of vertex `t` (1..=6): bit j set when vertex j feeds it.
    pub fn input_mask(&self, t: usize) -> u8 {
        self.inputs[t - 1]
    }

    /// The parents of vertex `t` in vertex order.
    pub fn parents(&self, t: usize) -> impl Iterator<Item = usize> + '_ {
        let m = self.inputs[t - 1];
        (0..t).filter(move |j| m >> j & 1 != 0)
    }

    /// The 7 x 7 adjacency matrix (`[from][to]`).
    pub fn adjacency(&self) -> [[bool; VERTICES]; VERTICES] {
        let mut a = [[false; VERTICES]; VERTICES];
        for t in 1..VERTICES {
            for (j, row) in a.iter_mut().enumerate().take(t) {
                row[t] = self.input_mask(t) >> j & 1 != 0;
            }
        }
        a
    }

    /// The parent bits of a topology given as an adjacency matrix, if it is one of the space.
    fn inputs_of(adj: &[[bool; VERTICES]; VERTICES]) -> Option<[u8; VERTICES - 1]> {
        let mut inputs = [0u8; VERTICES - 1];
        for (from, row) in adj.iter().enumerate() {
            for (to, &e) in row.iter().enumerate() {
                if e {
                    if from >= to {
                        return None;
                    }
                    inputs[to - 1] |= 1 << from;
                }
            }
        }
        Some(inputs)
    }

    /// The cell with adjacency `adj` and ops `ops` (vertices 1..5), if it belongs to the
    /// space (upper triangular, the parent counts, no input -> output edge, no dangling vertex).
    pub fn from_adjacency(
        adj: &[[bool; VERTICES]; VERTICES],
        ops: [u8; OP_VERTICES],
    ) -> anyhow::Result<Arch> {
        let inputs =
            Self::inputs_of(adj).context("the adjacency matrix is not upper triangular")?;
        Arch::new(ops, inputs)
    }

    /// `conv3x3(0)+conv1x1(1)+maxpool3x3(0)+conv3x3(1,3)+conv1x1(2,4)+out(4,5)`: vertex t's op
    /// with its parents (0 = the cell input), vertices 1..5 then the output.
    pub fn to_arch_string(&self) -> String {
        let mut parts = vec![];
        for t in 1..VERTICES {
            let name = if t < VERTICES - 1 {
                OP_SHORT[self.op(t)]
            } else {
                "out"
            };
            let ps: Vec<String> = self.parents(t).map(|j| j.to_string()).collect();
            parts.push(format!("{name}({})", ps.join(",")));
        }
        parts.join("+")
    }
}

/// The encoding's keys in sorted (= encoding) order.
pub fn keys() -> Vec<String> {
    let mut k: Vec<String> = (1..VERTICES).map(|t| format!("input{t}")).collect();
    k.extend((1..VERTICES - 1).map(|t| format!("op{t}")));
    k
}

/// A 0/1 or boolean JSON list of length `len`, as bits (element i -> bit i).
fn bits_of(key: &str, v: &Value, len: usize, what: &str) -> anyhow::Result<u8> {
    let list = v
        .as_array()
        .with_context(|| format!("{key} must be a list of {len} {what}, got {v}"))?;
    if list.len() != len {
        bail!(
            "{key} must be a list of {len} {what}, got {} elements ({v})",
            list.len()
        );
    }
    let mut bits = 0u8;
    for (i, e) in list.iter().enumerate() {
        let on = match e {
            Value::Bool(b) => *b,
            Value::Number(n) if n.as_u64() == Some(0) => false,
            Value::Number(n) if n.as_u64() == Some(1) => true,
            other => bail!("{key}[{i}] = {other} is neither a boolean nor 0/1"),
        };
        if on {
            bits |= 1 << i;
        }
    }
    Ok(bits)
}

/// The space with its enumerated archset.
pub struct Nb101 {
    archset: Vec<Arch>,
}

impl Default for Nb101 {
    fn default() -> Self {
        Self::new()
    }
}

/// `itertools.combinations(range(n), k)` for k in {1, 2}, in its order, as bit masks.
fn combinations(n: usize, k: usize) -> Vec<u8> {
    match k {
        0 => vec![0],
        1 => (0..n).map(|i| 1u8 << i).collect(),
        _ => {
            let mut out = vec![];
            for i in 0..n {
                for j in i + 1..n {
                    out.push((1u8 << i) | (1u8 << j));
                }
            }
            out
        }
    }
}

/// The 395 topologies (parent bits of vertices 1..6) in the study's enumeration order:
/// `itertools.product` over each vertex's parent combinations, vertex 1 slowest, keeping those
/// without an input -> output edge and without a dangling vertex.
pub fn topologies() -> Vec<[u8; VERTICES - 1]> {
    let per_vertex: Vec<Vec<u8>> = (1..VERTICES)
        .map(|t| combinations(t, NUM_PARENTS[t]))
        .collect();
    let mut out = vec![];
    let mut idx = [0usize; VERTICES - 1];
    'outer: loop {
        let mut inputs = [0u8; VERTICES - 1];
        for (t, i) in idx.iter().enumerate() {
            inputs[t] = per_vertex[t][*i];
        }
        if Arch::new([0; OP_VERTICES], inputs).is_ok() {
            out.push(inputs);
        }
        // Odometer: the last vertex varies fastest.
        for t in (0..VERTICES - 1).rev() {
            idx[t] += 1;
            if idx[t] < per_vertex[t].len() {
                continue 'outer;
            }
            idx[t] = 0;
        }
        break;
    }
    out
}

impl Nb101 {
    /// The archset in the study's enumeration order (topology-major, then ops with op1
    /// slowest), which is the order of its `nb1shot1c.pkl`.
    pub fn new() -> Self {
        let mut archset = Vec::with_capacity(ARCHSET_SIZE);
        for inputs in topologies() {
            for code in 0..3usize.pow(OP_VERTICES as u32) {
                let mut ops = [0u8; OP_VERTICES];
                let mut c = code;
                for o in ops.iter_mut().rev() {
                    *o = (c % 3) as u8;
                    c /= 3;
                }
                archset.push(Arch { ops, inputs });
            }
        }
        Self { archset }
    }

    /// The space with its archset in `order` (the rows of a user's `nb1shot1c.pkl`), which
    /// must hold every architecture of the space exactly once.
    pub fn with_order(order: Vec<Arch>) -> anyhow::Result<Self> {
        if order.len() != ARCHSET_SIZE {
            bail!(
                "{} architectures, the space has {ARCHSET_SIZE}",
                order.len()
            );
        }
        let mut sorted = order.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            bail!("architecture {} appears twice", w[0].to_arch_string());
        }
        Ok(Self { archset: order })
    }
}

impl Space for Nb101 {
    type Arch = Arch;
    const KIND: &'static str = "nb101";

    fn encode(arch: &Arch) -> Value {
        let mut m = serde_json::Map::new();
        for t in 1..VERTICES {
            let mask = arch.input_mask(t);
            let v: Vec<Value> = (0..t).map(|j| Value::from(mask >> j & 1)).collect();
            m.insert(format!("input{t}"), Value::Array(v));
        }
        for t in 1..VERTICES - 1 {
            let v: Vec<Value> = (0..OPS.len())
                .map(|k| Value::from(u8::from(arch.op(t) == k)))
                .collect();
            m.insert(format!("op{t}"), Value::Array(v));
        }
        Value::Object(m)
    }

    fn decode(value: &Value) -> anyhow::Result<Arch> {
        let obj = value
            .as_object()
            .with_context(|| format!("an NB101 arch must be a JSON object, got {value}"))?;
        let known = keys();
        if let Some(k) = obj.keys().find(|k| !known.contains(k)) {
            bail!("unknown key {k:?} (an NB101 arch has the keys op1..op5 and input1..input6)");
        }
        let get = |k: &str| {
            obj.get(k)
                .with_context(|| format!("the NB101 arch lacks key {k:?}"))
        };
        let mut ops = [0u8; OP_VERTICES];
        for (i, o) in ops.iter_mut().enumerate() {
            let key = format!("op{}", i + 1);
            let v = get(&key)?;
            let bits = bits_of(&key, v, OPS.len(), "one-hot entries")?;
            if bits.count_ones() != 1 {
                bail!("{key} must be one-hot over {OPS:?}, got {v}");
            }
            *o = bits.trailing_zeros() as u8;
        }
        let mut inputs = [0u8; VERTICES - 1];
        for (i, m) in inputs.iter_mut().enumerate() {
            let t = i + 1;
            let key = format!("input{t}");
            *m = bits_of(&key, get(&key)?, t, "0/1 entries")?;
        }
        Arch::new(ops, inputs)
    }

    fn arch_string(arch: &Arch) -> String {
        arch.to_arch_string()
    }

    fn archset(&self) -> Option<&[Arch]> {
        Some(&self.archset)
    }

    fn sample(&self, rng: &mut Rng) -> Arch {
        self.archset[rng.random_range(0..self.archset.len())]
    }

    fn choice_rank(key: &str, value: &Value) -> Option<usize> {
        // The reference numbers an op key's choices by the one-hot position (its structured
        // split: fold k holds `arch[key][k]`), the reverse of the sorted order of the lists.
        if !key.starts_with("op") {
            return None;
        }
        let list = value.as_array()?;
        list.iter()
            .position(|e| e.as_bool() == Some(true) || e.as_u64() == Some(1))
    }

    fn fair_keys() -> Option<Vec<String>> {
        // The reference's NB101 FairNAS permutes the op of each vertex; the inputs of each
        // path come from the architecture it samples.
        Some((1..VERTICES - 1).map(|t| format!("op{t}")).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn archset_has_395_topologies_and_95985_entries() {
        assert_eq!(topologies().len(), TOPOLOGIES);
        let s = Nb101::new();
        let set = s.archset().unwrap();
        assert_eq!(set.len(), ARCHSET_SIZE);
        let mut sorted = set.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ARCHSET_SIZE, "entries are distinct");
        // Every entry survives an encode/decode round trip.
        for a in set.iter().step_by(97) {
            assert_eq!(Nb101::decode(&Nb101::encode(a)).unwrap(), *a);
        }
    }

    /// Brute force over all 7 x 7 upper-triangular matrices with the parent counts: the same
    /// 395 topologies, independently of the odometer.
    #[test]
    fn topologies_match_a_brute_force_count() {
        let mut n = 0;
        for code in 0u32..(1 << 21) {
            let mut adj = [[false; VERTICES]; VERTICES];
            let mut b = 0;
            for to in 1..VERTICES {
                for row in adj.iter_mut().take(to) {
                    row[to] = code >> b & 1 != 0;
                    b += 1;
                }
            }
            let parents_ok =
                (1..VERTICES).all(|t| (0..t).filter(|&j| adj[j][t]).count() == NUM_PARENTS[t]);
            if !parents_ok || adj[0][6] {
                continue;
            }
            if (0..VERTICES - 1).all(|v| adj[v].iter().any(|&e| e)) {
                n += 1;
                assert!(Arch::from_adjacency(&adj, [0; 5]).is_ok());
            }
        }
        assert_eq!(n, TOPOLOGIES);
    }

    #[test]
    fn encoding_is_the_studys_arch_key() {
        let a = Nb101::new().archset().unwrap()[0];
        // The first topology: 1 <- 0, 2 <- 0, 3 <- 0, 4 <- {0, 1}, 5 <- {2, 3},
        // out <- {4, 5}; all ops conv3x3.
        assert_eq!(
            Nb101::encode(&a).to_string(),
            r#"{"input1":[1],"input2":[1,0],"input3":[1,0,0],"input4":[1,1,0,0],"input5":[0,0,1,1,0],"input6":[0,0,0,0,1,1],"op1":[1,0,0],"op2":[1,0,0],"op3":[1,0,0],"op4":[1,0,0],"op5":[1,0,0]}"#
        );
        assert_eq!(
            a.to_arch_string(),
            "conv3x3(0)+conv3x3(0)+conv3x3(0)+conv3x3(0,1)+conv3x3(2,3)+out(4,5)"
        );
        // Booleans (the pickle's numpy bool arrays) decode to the same arch, keys in any order.
        let b = json!({"op1": [true, false, false], "input1": [true], "op2": [true, false, false],
            "input2": [true, false], "op3": [true, false, false], "input3": [true, false, false],
            "op4": [true, false, false], "input4": [true, true, false, false],
            "op5": [true, false, false], "input5": [false, false, true, true, false],
            "input6": [false, false, false, false, true, true]});
        assert_eq!(Nb101::decode(&b).unwrap(), a);
    }

    fn bad(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
        let a = Nb101::new().archset().unwrap()[0];
        let Value::Object(mut m) = Nb101::encode(&a) else {
            unreachable!()
        };
        edit(&mut m);
        format!("{:#}", Nb101::decode(&Value::Object(m)).unwrap_err())
    }

    #[test]
    fn decode_errors_are_precise() {
        let e = bad(|m| {
            m.insert("op6".into(), json!([1, 0, 0]));
        });
        assert!(e.contains("unknown key \"op6\""), "{e}");
        let e = bad(|m| {
            m.remove("input3");
        });
        assert!(e.contains("lacks key \"input3\""), "{e}");
        let e = bad(|m| {
            m.insert("op2".into(), json!([1, 0]));
        });
        assert!(
            e.contains("op2 must be a list of 3") && e.contains("2 elements"),
            "{e}"
        );
        let e = bad(|m| {
            m.insert("op2".into(), json!([1, 1, 0]));
        });
        assert!(e.contains("op2 must be one-hot"), "{e}");
        let e = bad(|m| {
            m.insert("op2".into(), json!([2, 0, 0]));
        });
        assert!(e.contains("op2[0] = 2 is neither"), "{e}");
        let e = bad(|m| {
            m.insert("input4".into(), json!([1, 0, 0]));
        });
        assert!(e.contains("input4 must be a list of 4"), "{e}");
        let e = bad(|m| {
            m.insert("input2".into(), json!([1, 1]));
        });
        assert!(
            e.contains("input2: vertex 2 has 2 parents, the space needs 1"),
            "{e}"
        );
        let e = bad(|m| {
            m.insert("input5".into(), json!([0, 0, 1, 1, 1]));
        });
        assert!(e.contains("vertex 5 has 3 parents"), "{e}");
        // 0 -> out: the input feeds the output directly.
        let e = bad(|m| {
            m.insert("input6".into(), json!([1, 0, 0, 0, 0, 1]));
        });
        assert!(e.contains("feeds the output directly"), "{e}");
        // Vertex 4 unused: out <- {3, 5}, 5 <- {2, 3}.
        let e = bad(|m| {
            m.insert("input6".into(), json!([0, 0, 0, 1, 0, 1]));
        });
        assert!(
            e.contains("vertex 1 dangles") || e.contains("vertex 4 dangles"),
            "{e}"
        );
        let e = format!("{:#}", Nb101::decode(&json!([1, 2])).unwrap_err());
        assert!(e.contains("must be a JSON object"), "{e}");
    }

    #[test]
    fn with_order_needs_a_permutation_of_the_archset() {
        let mut order = Nb101::new().archset().unwrap().to_vec();
        order.reverse();
        let s = Nb101::with_order(order.clone()).unwrap();
        assert_eq!(s.archset().unwrap()[0], order[0]);
        let mut dup = order.clone();
        dup[1] = dup[0];
        assert!(Nb101::with_order(dup).is_err());
        order.pop();
        assert!(Nb101::with_order(order).is_err());
    }

    /// Positions in the study's enumeration, from tests/fixtures/gen_nb101_archset.py (which
    /// replays `generate_1shot1_candidates` of the study's tools/generate_nb101_splits.py).
    #[test]
    fn order_matches_the_studys_enumeration() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/nb101_archset.json"
        );
        let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(fx["count"], ARCHSET_SIZE);
        assert_eq!(fx["topologies"], TOPOLOGIES);
        let set = Nb101::new();
        let set = set.archset().unwrap();
        let entries = fx["entries"].as_array().unwrap();
        assert!(entries.len() >= 20);
        for e in entries {
            let i = e["index"].as_u64().unwrap() as usize;
            let want = Nb101::decode(&e["arch"]).unwrap();
            assert_eq!(set[i], want, "archset position {i}");
            // The fixture's arch key is the study's `_build_arch_key` (sort_keys, 0/1 ints).
            let key: Value = serde_json::from_str(e["arch_key"].as_str().unwrap()).unwrap();
            assert_eq!(Nb101::encode(&set[i]), key, "position {i}");
        }
    }
}
