//! Supernet-training tricks of the study, composable through `[tricks]`.
//!
//! Each trick has its own file and config struct (`crate::config::schema`, defaults = the
//! study's); [`TRICKS`] names them with the spaces each supports, and the config validation
//! refuses unsupported spaces and incompatible combinations before any work starts. The
//! pipeline calls the hooks of one [`TrickSet`]:
//!
//! | hook | method | tricks |
//! |---|---|---|
//! | training archset (and the validation subset drawn from it) | [`TrickSet::archset`], [`TrickSet::eval_archs`] | augmented, omniscience, train_split, pruned, focus_branch |
//! | sampler | [`TrickSet::sample`], [`TrickSet::paths`] | the filters above; multipath (k paths, FairNAS permutations) |
//! | learning rate | [`TrickSet::lr`], [`TrickSet::warmup_lr`] (ProxylessNAS), [`TrickSet::constant_lr`] (PTB) | cosine_restarts |
//! | after an evaluation | [`TrickSet::focus_due`], [`TrickSet::focus_decide`] | focus_branch |
//! | supernet construction | [`replicate_copies`] | augmented with `replicate` |
//!
//! Filters apply in this order: augmented (one architecture), omniscience or train_split
//! (a subset of the archset), pruned (the reference's mutator filters the chosen subset by
//! `pruned`), then the focus-branch decisions taken so far. Architectures are compared through
//! their benchmark JSON encoding (`Space::encode`), so every filter works for any space with an
//! enumerated archset. Spaces without one (DARTS, PTB, ProxylessNAS) describe their sampler as
//! independent factors (`Space::factors`): `pruned` restricts those, FairNAS permutes their
//! `Space::fair_keys`, and the archset filters are refused at config time.

pub mod augmented;
pub mod cosine_restarts;
pub mod focus_branch;
pub mod multipath;
pub mod omniscience;
pub mod pruned;
pub mod train_split;

pub use crate::config::schema::{TrickInfo, TRICKS};

use crate::config::{self, Config};
use crate::rng::Rng;
use crate::space::factors::{Factors, Size};
use crate::space::{GroundTruth, Space};
use anyhow::{bail, Context, Result};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::collections::HashMap;

/// Trick state a checkpoint carries so that a resumed run continues bit-identically (the
/// sampler's RNG position travels in `Progress::sample_rng`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrickProgress {
    /// Focus-branch decisions so far, in order; replayed on resume to rebuild the archset.
    #[serde(default)]
    pub focus_decisions: Vec<focus_branch::Decision>,
    /// Size of the training archset after them (checked on resume).
    #[serde(default)]
    pub train_archset_size: Option<usize>,
}

/// Copies per op the supernet needs: `augmented.copies` with `replicate = true`, else 1.
pub fn replicate_copies(t: &config::Tricks) -> usize {
    match &t.augmented {
        Some(a) if a.replicate => a.copies,
        _ => 1,
    }
}

/// The active tricks of one run, with the training archset they define.
pub struct TrickSet<S: Space> {
    cfg: config::Tricks,
    seed: u64,
    learning_rate: f64,
    ending_lr: f64,
    /// The space's archset size, when it has one.
    full_size: Option<usize>,
    /// The archset after the static filters; `None` when nothing filters (sampling is then the
    /// space's own, draw for draw).
    base: Option<Vec<S::Arch>>,
    /// `base` (or the full archset) after the focus-branch decisions.
    current: Option<Vec<S::Arch>>,
    decisions: Vec<focus_branch::Decision>,
    /// Ground-truth parameter counts (focus-branch nondominated / lstsq).
    params: Option<HashMap<S::Arch, f64>>,
    /// FairNAS: every permuted key (`Space::fair_keys`) with its choices, each list in the
    /// same length.
    fair_choices: Option<Vec<(String, Vec<Value>)>>,
    /// A space without archset: its factors (`Space::factors`), restricted by `pruned`.
    factors: Option<Factors>,
    /// Whether `factors` is restricted (sampling then goes through them; otherwise through
    /// the space's own sampler, which draws the same).
    restricted: bool,
    /// How the training archset came about, one line per filter.
    log: Vec<String>,
}

/// The JSON object of an architecture's encoding.
pub(crate) fn encoded<S: Space>(a: &S::Arch) -> Result<Map<String, Value>> {
    match S::encode(a) {
        Value::Object(m) => Ok(m),
        other => bail!(
            "space {} encodes an architecture as {other}, not a JSON object",
            S::KIND
        ),
    }
}

/// A total order on JSON values (numbers numerically, then strings, arrays element-wise), for
/// sorting choices the way the reference sorts its Python values.
pub fn cmp_json(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i.cmp(&j),
            _ => x
                .as_f64()
                .unwrap_or(f64::NAN)
                .total_cmp(&y.as_f64().unwrap_or(f64::NAN)),
        },
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let c = cmp_json(p, q);
                if c != Ordering::Equal {
                    return c;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => Value::Object(x.clone())
            .to_string()
            .cmp(&Value::Object(y.clone()).to_string()),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Every key of `archs` with its distinct values, sorted (the reference's `self.pruned` as
/// recovered from its archset).
pub fn choices<S: Space>(archs: &[S::Arch]) -> Result<Vec<(String, Vec<Value>)>> {
    let mut by_key: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for a in archs {
        for (k, v) in encoded::<S>(a)? {
            let list = by_key.entry(k).or_default();
            if !list.contains(&v) {
                list.push(v);
            }
        }
    }
    Ok(by_key
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(cmp_json);
            (k, v)
        })
        .collect())
}

/// Fisher-Yates from the back with u64 draws (the same on 32- and 64-bit hosts).
pub(crate) fn shuffle<T>(v: &mut [T], r: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = r.random_range(0..=i as u64) as usize;
        v.swap(i, j);
    }
}

impl<S: Space> TrickSet<S> {
    /// Applies the static filters of `cfg.tricks` to the space's archset. `truth` and `params`
    /// are the ground truth and parameter counts, needed by omniscience, the val_acc split and
    /// focus-branch's nondominated / lstsq metrics.
    pub fn new(
        space: &S,
        cfg: &Config,
        truth: Option<&GroundTruth<S::Arch>>,
        params: Option<HashMap<S::Arch, f64>>,
    ) -> Result<Self> {
        let t = &cfg.tricks;
        let full = space.archset();
        let mut log = vec![];
        if let Some(full) = full {
            log.push(format!(
                "archset of space {}: {} architectures",
                S::KIND,
                full.len()
            ));
        }
        let mut factors = if full.is_none() {
            space.factors()
        } else {
            None
        };
        if let Some(f) = &factors {
            log.push(format!(
                "space {} (no archset, sampled per {}): {} architectures",
                S::KIND,
                if f.factors.iter().any(|x| x.keys.len() > 1) {
                    "node"
                } else {
                    "key"
                },
                f.size()
            ));
        }
        let mut restricted = false;
        let need_archset = |name: &str| -> Result<&[S::Arch]> {
            full.with_context(|| {
                format!(
                    "tricks.{name} needs an enumerated archset, which space {} does not have",
                    S::KIND
                )
            })
        };
        let mut set: Option<Vec<S::Arch>> = None;
        if let Some(a) = &t.augmented {
            let full = need_archset("augmented")?;
            let kept = augmented::setup_filter::<S>(full, &a.setup)?;
            match kept.as_slice() {
                [] => {
                    let arch = augmented::setup_arch::<S>(&a.setup)?;
                    bail!(
                        "tricks.augmented.setup {:?} is {}, which is not in the archset (its output is unreachable)",
                        a.setup,
                        S::arch_string(&arch)
                    );
                }
                [arch] => log.push(format!(
                    "augmented: setup {:?} = {} (replicate: {})",
                    a.setup,
                    S::arch_string(arch),
                    a.replicate
                )),
                many => log.push(format!(
                    "augmented: setup {:?} fixes {} keys, {} architectures (replicate: {})",
                    a.setup,
                    augmented::setup_choices(S::KIND, &a.setup)?.len(),
                    many.len(),
                    a.replicate
                )),
            }
            set = Some(kept);
        }
        if let Some(o) = &t.omniscience {
            let full = need_archset("omniscience")?;
            let picked = omniscience::select::<S>(full, truth, o, cfg.experiment.seed)?;
            log.push(format!(
                "omniscience: {} of {} architectures ({} ratio {})",
                picked.len(),
                full.len(),
                if o.random {
                    "random"
                } else {
                    "top by ground truth,"
                },
                o.ratio
            ));
            set = Some(picked);
        }
        if let Some(s) = &t.train_split {
            let full = need_archset("train_split")?;
            let folds = train_split::folds::<S>(full, truth, s)?;
            let fold = folds.get(s.index).cloned().with_context(|| {
                format!(
                    "tricks.train_split.index {} is not below the {} folds",
                    s.index,
                    folds.len()
                )
            })?;
            log.push(format!(
                "train_split: fold {} of {} ({:?}) holds {} of {} architectures",
                s.index,
                folds.len(),
                s.kind,
                fold.len(),
                full.len()
            ));
            set = Some(fold);
        }
        if let (Some(p), Some(f)) = (&t.pruned, &factors) {
            let allowed = p.to_map();
            let r = pruned::restrict(space, &allowed)?;
            log.push(format!(
                "pruned {}: sampling restricted from {} to {} architectures",
                serde_json::to_string(&allowed).unwrap_or_default(),
                f.size(),
                r.size()
            ));
            factors = Some(r);
            restricted = true;
        } else if let Some(p) = &t.pruned {
            let from = match &set {
                Some(s) => s.clone(),
                None => need_archset("pruned")?.to_vec(),
            };
            let allowed = p.to_map();
            let kept = pruned::filter::<S>(&from, &allowed)?;
            log.push(format!(
                "pruned {}: {} -> {} architectures",
                serde_json::to_string(&allowed).unwrap_or_default(),
                from.len(),
                kept.len()
            ));
            set = Some(kept);
        }
        if let Some(s) = &set {
            if s.is_empty() {
                bail!(
                    "the tricks leave no architecture to train on ({})",
                    log.join("; ")
                );
            }
        }
        let mut fair_choices = None;
        if let Some(m) = &t.multipath {
            if m.fairnas {
                let mut ch = match &factors {
                    Some(f) => f.keys(),
                    None => choices::<S>(need_archset("multipath.fairnas")?)?,
                };
                if let Some(keys) = S::fair_keys() {
                    ch.retain(|(k, _)| keys.contains(k));
                }
                if let Some((k, v)) = ch.iter().find(|(_, v)| v.len() != m.paths) {
                    bail!(
                        "tricks.multipath.fairnas: key {k:?} has {} choices, but paths = {}; FairNAS needs paths = the number of choices of every key",
                        v.len(),
                        m.paths
                    );
                }
                fair_choices = Some(ch);
            }
            log.push(format!(
                "multipath: {} paths per step{}",
                m.paths,
                if m.fairnas { " (FairNAS)" } else { "" }
            ));
        }
        if let Some(r) = &t.cosine_restarts {
            let after = match cfg.train.schedule {
                config::Schedule::WarmupCosine => format!(
                    " after the {} warm-up epochs, each period a cosine from learning_rate x device.gpus to 0",
                    cfg.train.warmup_epochs
                ),
                config::Schedule::Cosine => String::new(),
            };
            log.push(format!(
                "cosine_restarts: the learning rate restarts every {} epochs{after}",
                r.every
            ));
        }
        if let Some(f) = &t.focus_branch {
            need_archset("focus_branch")?;
            if f.metric != config::FocusMetric::Accuracy && params.is_none() {
                bail!("tricks.focus_branch.metric = {:?} needs the ground truth's parameter counts, which this run has not loaded", f.metric);
            }
            log.push(format!(
                "focus_branch: every {} epochs, metric {:?}, {} archs, at least {} per choice",
                f.every, f.metric, f.num_archs, f.min_archs
            ));
        }
        let mut ts = TrickSet {
            cfg: t.clone(),
            seed: cfg.experiment.seed,
            learning_rate: cfg.train.learning_rate,
            ending_lr: cfg.train.ending_lr,
            full_size: full.map(<[_]>::len),
            current: set.clone(),
            base: set,
            decisions: vec![],
            params,
            fair_choices,
            factors,
            restricted,
            log,
        };
        if let Some(n) = ts.train_archset_size() {
            ts.log.push(format!("training archset: {n} architectures"));
        }
        Ok(ts)
    }

    /// Names of the active tricks.
    pub fn names(&self) -> Vec<&'static str> {
        self.cfg.active()
    }

    /// The active tricks with their settings, as recorded in `summary.json`.
    pub fn describe(&self) -> Value {
        match serde_json::to_value(&self.cfg) {
            Ok(Value::Object(m)) => Value::Object(m),
            _ => Value::Object(Map::new()),
        }
    }

    /// How the training archset came about (one line per filter), for the log and `check`.
    pub fn report(&self) -> &[String] {
        &self.log
    }

    /// The training archset, when the space has one.
    pub fn train_archset_size(&self) -> Option<usize> {
        self.current.as_ref().map(Vec::len).or(self.full_size)
    }

    /// The architectures training samples from: the filtered set, or the space's archset.
    pub fn archset<'a>(&'a self, space: &'a S) -> Option<&'a [S::Arch]> {
        self.current.as_deref().or_else(|| space.archset())
    }

    /// One architecture drawn uniformly from the training archset, or from the pruned factors
    /// of a space without archset.
    pub fn sample(&self, space: &S, rng: &mut Rng) -> S::Arch {
        match (self.current.as_deref(), &self.factors) {
            // The same draw as the space's own sampler, over the filtered set.
            (Some(set), _) if !set.is_empty() => set[rng.random_range(0..set.len())].clone(),
            (_, Some(f)) if self.restricted => pruned::decode_checked::<S>(f.sample(rng)),
            _ => space.sample(rng),
        }
    }

    /// The number of architectures training samples from in a space without archset (after
    /// `pruned`).
    pub fn space_size(&self) -> Option<Size> {
        self.factors.as_ref().map(Factors::size)
    }

    /// How many of `archs` training never samples (outside the training archset, or not
    /// allowed by `pruned` in a space without archset).
    pub fn count_outside(&self, space: &S, archs: &[S::Arch]) -> usize {
        match (self.archset(space), &self.factors) {
            (Some(set), _) => {
                let set: std::collections::HashSet<&S::Arch> = set.iter().collect();
                archs.iter().filter(|a| !set.contains(a)).count()
            }
            (None, Some(f)) => archs
                .iter()
                .filter(|a| !encoded::<S>(a).is_ok_and(|o| f.allows(&o)))
                .count(),
            (None, None) => 0,
        }
    }

    /// The study's mutators (DARTS, PTB, ProxylessNAS) draw the validation architectures with
    /// replacement when the space holds more than 10 times as many, and otherwise take
    /// `RandomState(seed).permutation(size)[:k]` of the enumerated space (distinct, in that
    /// order): the small case, which only a strong `pruned` reaches.
    fn small_space_eval(&self, k: usize) -> Option<Vec<S::Arch>> {
        let f = self.factors.as_ref()?;
        let n = f.size().exact?;
        if n > 10 * k as u128 {
            return None;
        }
        let perm = crate::rng::mt19937::RandomState::new(self.seed as u32).permutation(n as usize);
        Some(
            perm.into_iter()
                .take(k)
                .map(|i| pruned::decode_checked::<S>(f.nth(i as u128)))
                .collect(),
        )
    }

    /// The paths of one training step: one architecture, or multipath's k (FairNAS: built from
    /// per-key permutations so that each choice of each key appears exactly once).
    pub fn paths(&self, space: &S, rng: &mut Rng) -> Result<Vec<S::Arch>> {
        match (&self.cfg.multipath, &self.fair_choices) {
            (Some(m), Some(ch)) if S::fair_keys().is_some() => {
                multipath::fair_paths_on::<S>(ch, m.paths, rng, |r| self.sample(space, r))
            }
            (Some(m), Some(ch)) => multipath::fair_paths::<S>(ch, m.paths, rng),
            (Some(m), None) => Ok((0..m.paths).map(|_| self.sample(space, rng)).collect()),
            (None, _) => Ok(vec![self.sample(space, rng)]),
        }
    }

    /// The learning rate of 0-based optimizer step `step`.
    pub fn lr(&self, step: usize, steps_per_epoch: usize, total_steps: usize) -> f64 {
        match &self.cfg.cosine_restarts {
            Some(r) => cosine_restarts::lr(
                self.learning_rate,
                self.ending_lr,
                step,
                r.every * steps_per_epoch,
            ),
            None => crate::train::schedule::cosine(
                self.learning_rate,
                self.ending_lr,
                step,
                total_steps,
            ),
        }
    }

    /// The validation subset: the study's `sorted(RandomState(seed).permutation(len)[:k])` of
    /// the training archset, NumPy's generator reproduced draw for draw (so a seed picks the
    /// study's architectures when the archset is in the study's order; drawn anew from the same
    /// seed after each focus-branch decision), or the first `k` draws of the training sampler's
    /// stream when the space has no archset (see [`TrickSet::draw_eval_archs`]).
    pub fn eval_archs(&self, space: &S, k: usize) -> Vec<S::Arch> {
        match self.archset(space) {
            Some(set) => crate::rng::mt19937::validation_subset(self.seed, set.len(), k)
                .into_iter()
                .map(|i| set[i].clone())
                .collect(),
            None => {
                let mut r = crate::rng::stream(self.seed, "sample", &[]);
                self.draw_eval_archs(space, k, &mut r)
            }
        }
    }

    /// The learning rate at fractional epoch `epoch` (0-based) for a training loop whose
    /// schedule is otherwise constant at `initial` (DARTS-PTB, which then scales it by the
    /// sequence length): with `cosine_restarts`, a cosine from `initial` to `train.ending_lr`
    /// over every period of `every` epochs, `initial` again at each period start.
    pub fn constant_lr(&self, initial: f64, epoch: f64) -> f64 {
        match &self.cfg.cosine_restarts {
            Some(r) => cosine_restarts::lr_at_epoch(initial, self.ending_lr, epoch, r.every as f64),
            None => initial,
        }
    }

    /// ProxylessNAS's warm-up + cosine schedule at fractional epoch `epoch`; with
    /// `cosine_restarts` the cosine after the warm-up restarts every `every` epochs at the
    /// warm-up's peak (see [`cosine_restarts::warmup_lr`]).
    pub fn warmup_lr(&self, world: usize, warmup_epochs: usize, epochs: usize, epoch: f64) -> f64 {
        match &self.cfg.cosine_restarts {
            Some(r) => {
                cosine_restarts::warmup_lr(self.learning_rate, world, warmup_epochs, r.every, epoch)
            }
            None => crate::train::schedule::warmup_cosine(
                self.learning_rate,
                world,
                warmup_epochs,
                epochs,
                epoch,
            ),
        }
    }

    /// Without an archset (DARTS, PTB, ProxylessNAS) the reference draws the validation
    /// architectures from the sampler's own seeded stream when the sampler is built, and
    /// training sampling continues that stream (duplicates possible). `rng` is that stream
    /// at its start; it is left where training continues.
    pub fn draw_eval_archs(&self, space: &S, k: usize, rng: &mut Rng) -> Vec<S::Arch> {
        // A small pruned space: the study's permutation, which leaves the sampler alone.
        if let Some(v) = self.small_space_eval(k) {
            return v;
        }
        (0..k).map(|_| self.sample(space, rng)).collect()
    }

    /// At a focus-branch epoch: how many of the evaluated architectures the decision scores.
    pub fn focus_due(&self, epoch: usize) -> Option<usize> {
        let f = self.cfg.focus_branch.as_ref()?;
        (epoch > 0 && epoch.is_multiple_of(f.every)).then_some(f.num_archs)
    }

    /// Scores every (key, choice) on the evaluated `archs` and their supernet `accuracies`,
    /// fixes the best choice and shrinks the training archset. Returns the decision (also
    /// when no choice qualified; then nothing changes). The caller restarts the sampler RNG and
    /// draws a new validation subset when the archset changed.
    pub fn focus_decide(
        &mut self,
        space: &S,
        epoch: usize,
        archs: &[S::Arch],
        accuracies: &[f64],
    ) -> Result<focus_branch::Decision> {
        let f = self
            .cfg
            .focus_branch
            .clone()
            .context("focus_decide without tricks.focus_branch")?;
        let before: Vec<S::Arch> = self
            .archset(space)
            .context("focus_branch needs an archset")?
            .to_vec();
        let d =
            focus_branch::decide::<S>(&f, epoch, archs, accuracies, self.params.as_ref(), &before)?;
        if let Some(c) = &d.chosen {
            let kept = focus_branch::apply::<S>(&before, &c.key, &c.choice)?;
            self.current = Some(kept);
        }
        self.decisions.push(d.clone());
        Ok(d)
    }

    /// The decisions taken so far.
    pub fn decisions(&self) -> &[focus_branch::Decision] {
        &self.decisions
    }

    /// What a checkpoint stores.
    pub fn progress(&self) -> TrickProgress {
        TrickProgress {
            focus_decisions: self.decisions.clone(),
            train_archset_size: self.train_archset_size(),
        }
    }

    /// Replays the decisions of a checkpoint (the state right after [`TrickSet::new`] is the
    /// starting point) and checks that the archset comes out the size it had.
    pub fn restore(&mut self, space: &S, p: &TrickProgress) -> Result<()> {
        self.current = self.base.clone();
        self.decisions.clear();
        for d in &p.focus_decisions {
            if let Some(c) = &d.chosen {
                let before = self
                    .archset(space)
                    .context("focus_branch decisions in a checkpoint of a space without archset")?
                    .to_vec();
                let kept = focus_branch::apply::<S>(&before, &c.key, &c.choice)?;
                if kept.len() != d.archs_after {
                    bail!(
                        "checkpoint: replaying the focus-branch decision of epoch {} ({} = {}) leaves {} architectures, the run had {}",
                        d.epoch,
                        c.key,
                        c.choice,
                        kept.len(),
                        d.archs_after
                    );
                }
                self.current = Some(kept);
            }
            self.decisions.push(d.clone());
        }
        if let (Some(want), Some(got)) = (p.train_archset_size, self.train_archset_size()) {
            if want != got {
                bail!("checkpoint: the training archset had {want} architectures, the configuration now gives {got}");
            }
        }
        Ok(())
    }
}
