//! DARTS-PTB: the recurrent cell of DARTS's language model, 8 steps each choosing an
//! activation and the earlier state it reads.
//!
//! Encoding (benchmark JSON, `benchmarks/ptb.csv`): keys `act/0 .. act/7` to activation
//! indices in [`ACTIVATIONS`] order and `switch/0 .. switch/7` to the state step i reads
//! (0 ..= i; state 0 is the cell's input state), all JSON integers. Arch string: one
//! `act@switch` per step, e.g. `tanh@0 relu@1 sigmoid@1 ...`.
//! The space has 4^8 * 8! (about 2.6e9) architectures and no enumerated archset; sampling
//! draws every key uniformly, keys in the study's order (`act/0..7`, then `switch/0..7`).
//!
//! The language model (embedding, cell, tied decoder) is in [`ptb_model`](super::ptb_model).

use super::Space;
use crate::rng::Rng;
use anyhow::{bail, Context};
use rand::Rng as _;

/// Steps of the cell.
pub const STEPS: usize = 8;

/// Candidate activations of a step, in the benchmark's index order.
pub const ACTIVATIONS: [&str; 4] = ["tanh", "relu", "sigmoid", "identity"];

/// A step's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Act {
    Tanh,
    Relu,
    Sigmoid,
    Identity,
}

impl Act {
    pub const ALL: [Act; 4] = [Act::Tanh, Act::Relu, Act::Sigmoid, Act::Identity];

    /// The benchmark index.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        ACTIVATIONS[self.index()]
    }

    pub fn from_index(i: u64) -> Option<Act> {
        Act::ALL.get(usize::try_from(i).ok()?).copied()
    }
}

/// One step of the cell: its activation and the state it reads (`switch <= step`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Step {
    pub act: Act,
    switch: u8,
}

impl Step {
    /// The state step `i` reads; `None` when `switch > i` (step i sees states 0..=i only).
    pub fn new(i: usize, act: Act, switch: usize) -> Option<Step> {
        (i < STEPS && switch <= i).then_some(Step {
            act,
            switch: switch as u8,
        })
    }

    /// Index of the state this step reads (0 = the cell's input state, j = step j-1's output).
    pub fn switch(self) -> usize {
        self.switch as usize
    }
}

/// An architecture: every step's activation and input. Built only through [`Step::new`] (or
/// [`Arch::new`]), so a switch index is always in range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch {
    steps: [Step; STEPS],
}

impl Arch {
    /// From activation indices and switches; `None` when any value is out of range.
    pub fn new(acts: [usize; STEPS], switches: [usize; STEPS]) -> Option<Arch> {
        let mut steps = [Step {
            act: Act::Tanh,
            switch: 0,
        }; STEPS];
        for i in 0..STEPS {
            steps[i] = Step::new(i, Act::from_index(acts[i] as u64)?, switches[i])?;
        }
        Some(Arch { steps })
    }

    pub fn steps(&self) -> &[Step; STEPS] {
        &self.steps
    }

    /// `tanh@0 relu@1 ...`.
    pub fn to_arch_string(&self) -> String {
        self.steps
            .iter()
            .map(|s| format!("{}@{}", s.act.name(), s.switch))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The benchmark keys, in the study's order (its mutables: activations, then switches).
pub fn keys() -> Vec<String> {
    (0..STEPS)
        .map(|i| format!("act/{i}"))
        .chain((0..STEPS).map(|i| format!("switch/{i}")))
        .collect()
}

/// The space (stateless: no archset).
#[derive(Clone, Copy, Debug, Default)]
pub struct Ptb;

impl Space for Ptb {
    type Arch = Arch;
    const KIND: &'static str = "ptb";
    const BENCHMARK_SCORE: &'static str = "valid_ppl";

    fn encode(arch: &Arch) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (i, s) in arch.steps.iter().enumerate() {
            m.insert(format!("act/{i}"), serde_json::Value::from(s.act.index()));
            m.insert(format!("switch/{i}"), serde_json::Value::from(s.switch()));
        }
        serde_json::Value::Object(m)
    }

    fn decode(value: &serde_json::Value) -> anyhow::Result<Arch> {
        let obj = value
            .as_object()
            .context("PTB arch must be a JSON object")?;
        let want = keys();
        let missing: Vec<&String> = want.iter().filter(|k| !obj.contains_key(*k)).collect();
        let extra: Vec<&String> = obj.keys().filter(|k| !want.contains(k)).collect();
        if !missing.is_empty() || !extra.is_empty() {
            bail!(
                "PTB arch must have exactly the keys act/0..act/7 and switch/0..switch/7 (missing {missing:?}, unexpected {extra:?})"
            );
        }
        let int = |key: &str| -> anyhow::Result<u64> {
            let v = &obj[key];
            v.as_u64()
                .with_context(|| format!("PTB arch key {key:?}: {v} is not a non-negative integer"))
        };
        let mut steps = [Step {
            act: Act::Tanh,
            switch: 0,
        }; STEPS];
        for (i, step) in steps.iter_mut().enumerate() {
            let a = int(&format!("act/{i}"))?;
            let act = Act::from_index(a).with_context(|| {
                format!(
                    "PTB arch key \"act/{i}\": unknown activation {a} (expected 0..3: {})",
                    ACTIVATIONS
                        .iter()
                        .enumerate()
                        .map(|(j, n)| format!("{j} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            let s = int(&format!("switch/{i}"))?;
            *step = Step::new(i, act, s as usize)
                .filter(|_| s <= i as u64)
                .with_context(|| {
                    format!("PTB arch key \"switch/{i}\": {s} is out of range (step {i} reads one of the states 0..={i})")
                })?;
        }
        Ok(Arch { steps })
    }

    fn arch_string(arch: &Arch) -> String {
        arch.to_arch_string()
    }

    fn archset(&self) -> Option<&[Arch]> {
        None
    }

    fn sample(&self, rng: &mut Rng) -> Arch {
        let acts: Vec<usize> = (0..STEPS)
            .map(|_| rng.random_range(0..Act::ALL.len()))
            .collect();
        let mut steps = [Step {
            act: Act::Tanh,
            switch: 0,
        }; STEPS];
        for (i, step) in steps.iter_mut().enumerate() {
            step.act = Act::ALL[acts[i]];
        }
        for (i, step) in steps.iter_mut().enumerate() {
            step.switch = rng.random_range(0..=i) as u8;
        }
        Arch { steps }
    }

    /// One factor per key, `act/0..7` (activation indices 0..3) then `switch/0..7` (0..=i),
    /// each drawn with a `usize` range as [`Ptb::sample`] does.
    fn factors(&self) -> Option<super::factors::Factors> {
        use super::factors::{Draw, Factor, Factors};
        let acts = (0..STEPS).map(|i| {
            Factor::single(
                format!("act/{i}"),
                (0..Act::ALL.len() as u64).map(Into::into).collect(),
            )
        });
        let switches = (0..STEPS).map(|i| {
            Factor::single(
                format!("switch/{i}"),
                (0..=i as u64).map(Into::into).collect(),
            )
        });
        Some(Factors::new(acts.chain(switches).collect(), Draw::Usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn decode_str(s: &str) -> anyhow::Result<Arch> {
        Ptb::decode(&serde_json::from_str(s).unwrap())
    }

    const A: &str = r#"{"act/0":2,"act/1":0,"act/2":1,"act/3":1,"act/4":3,"act/5":1,"act/6":0,"act/7":2,"switch/0":0,"switch/1":1,"switch/2":1,"switch/3":0,"switch/4":1,"switch/5":3,"switch/6":0,"switch/7":6}"#;

    #[test]
    fn encoding_round_trips_byte_for_byte() {
        let a = decode_str(A).unwrap();
        assert_eq!(Ptb::encode(&a).to_string(), A);
        assert_eq!(a.steps()[0].act, Act::Sigmoid);
        assert_eq!(a.steps()[7].switch(), 6);
        assert_eq!(
            a.to_arch_string(),
            "sigmoid@0 tanh@1 relu@1 relu@0 identity@1 relu@3 tanh@0 sigmoid@6"
        );
        assert_eq!(
            Arch::new([2, 0, 1, 1, 3, 1, 0, 2], [0, 1, 1, 0, 1, 3, 0, 6]),
            Some(a)
        );
        assert_eq!(Arch::new([0; 8], [0, 2, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(Arch::new([4, 0, 0, 0, 0, 0, 0, 0], [0; 8]), None);
    }

    #[test]
    fn decode_errors_say_what_is_wrong() {
        let e = |s: &str| format!("{:#}", decode_str(s).unwrap_err());
        let msg = e(&A.replace(r#""act/3":1"#, r#""act/3":4"#));
        assert!(msg.contains("\"act/3\": unknown activation 4"), "{msg}");
        let msg = e(&A.replace(r#""act/3":1"#, r#""act/3":"relu""#));
        assert!(
            msg.contains("\"act/3\"") && msg.contains("not a non-negative integer"),
            "{msg}"
        );
        let msg = e(&A.replace(r#""switch/2":1"#, r#""switch/2":3"#));
        assert!(msg.contains("\"switch/2\": 3 is out of range"), "{msg}");
        let msg = e(&A.replace(r#""switch/2":1"#, r#""switch/2":-1"#));
        assert!(msg.contains("\"switch/2\""), "{msg}");
        let msg = e(&A.replace(r#","switch/7":6"#, ""));
        assert!(msg.contains("missing [\"switch/7\"]"), "{msg}");
        let msg = e(&A.replace(r#""act/0":2"#, r#""act/0":2,"act/8":1"#));
        assert!(msg.contains("unexpected [\"act/8\"]"), "{msg}");
        let msg = e("[1, 2]");
        assert!(msg.contains("JSON object"), "{msg}");
    }

    /// Every row of both shipped benchmark tables decodes and encodes back to its exact text.
    #[test]
    fn shipped_benchmarks_round_trip_every_row() {
        for (file, rows) in [("ptb.csv", 137), ("ptb-seed43.csv", 93)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("benchmarks")
                .join(file);
            let mut rdr = csv::Reader::from_path(&path).unwrap();
            let mut n = 0;
            for rec in rdr.records() {
                let rec = rec.unwrap();
                let a = decode_str(&rec[0]).unwrap();
                assert_eq!(Ptb::encode(&a).to_string(), &rec[0]);
                n += 1;
            }
            assert_eq!(n, rows, "{file}");
            let t = crate::space::benchmark::read::<Ptb>(&path, Ptb::BENCHMARK_SCORE).unwrap();
            assert_eq!(t.rows.len(), rows);
            assert_eq!(t.extra_columns, vec!["test_ppl".to_string()]);
        }
    }

    #[test]
    fn benchmark_reader_rejects_a_bad_row_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let bad = A.replace(r#""switch/5":3"#, r#""switch/5":6"#);
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let p = dir.path().join("b.csv");
        std::fs::write(
            &p,
            format!("architecture,valid_ppl\n{},60.1\n{},61.2\n", q(A), q(&bad)),
        )
        .unwrap();
        let e = format!(
            "{:#}",
            crate::space::benchmark::read::<Ptb>(&p, "valid_ppl").unwrap_err()
        );
        assert!(
            e.contains("b.csv:3") && e.contains("\"switch/5\": 6 is out of range"),
            "{e}"
        );
    }

    #[test]
    fn sampling_is_uniform_per_key_and_seeded() {
        let mut r = crate::rng::stream(0, "sample", &[]);
        let n = 40_000;
        let mut acts = [[0usize; 4]; STEPS];
        let mut sw: Vec<HashMap<usize, usize>> = vec![HashMap::new(); STEPS];
        for _ in 0..n {
            let a = Ptb.sample(&mut r);
            for (i, s) in a.steps().iter().enumerate() {
                acts[i][s.act.index()] += 1;
                *sw[i].entry(s.switch()).or_default() += 1;
            }
        }
        for i in 0..STEPS {
            for c in acts[i] {
                let f = c as f64 / n as f64;
                assert!((f - 0.25).abs() < 0.015, "act/{i}: {f}");
            }
            assert_eq!(sw[i].len(), i + 1, "switch/{i} takes every value 0..={i}");
            for (&v, &c) in &sw[i] {
                let f = c as f64 / n as f64;
                assert!(
                    (f - 1.0 / (i + 1) as f64).abs() < 0.015,
                    "switch/{i}={v}: {f}"
                );
            }
        }
        let mut a = crate::rng::stream(5, "sample", &[]);
        let mut b = crate::rng::stream(5, "sample", &[]);
        for _ in 0..10 {
            assert_eq!(Ptb.sample(&mut a), Ptb.sample(&mut b));
        }
    }
}
