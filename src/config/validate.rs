//! Range and consistency checks on a layered configuration, run before any work starts.
//!
//! Each failure names the dotted key and the place that set its value (`origin`), so the user
//! edits the right file, variable or `--set`.

// ConfigError is large (place + key + message strings) but it is built once, on the cold path
// of reading a configuration; boxing it would only add noise to every constructor.
#![allow(clippy::result_large_err)]

use super::errors::{ConfigError, Place};
use super::schema::{Config, Dataset, FocusMetric, Pruned, Schedule, Space, SplitKind, TRICKS};
use super::suggest;

/// Values `data.split` accepts.
pub const SPLITS: &[&str] = &[
    "40k",
    "50k",
    "cifar10-valid",
    "cifar10",
    "cifar100",
    "imagenet-16-120",
    "ptb",
    "augment",
    "train",
    "custom",
];

/// Checks `config` and applies the caps the reference applies (`num_archs_intermediate` is
/// capped at `num_archs`). `origin` maps a dotted key to where its value was set.
pub fn validate(config: &mut Config, origin: &dyn Fn(&str) -> Place) -> Result<(), ConfigError> {
    let c = Checker { origin };
    c.experiment(config)?;
    c.space(config)?;
    c.data(config)?;
    c.train(config)?;
    c.eval(config)?;
    c.tricks(config)?;
    if let Some(p) = &mut config.tricks.pruned {
        *p = Pruned::Map(p.to_map());
    }
    config.eval.num_archs_intermediate = config
        .eval
        .num_archs_intermediate
        .min(config.eval.num_archs);
    Ok(())
}

struct Checker<'a> {
    origin: &'a dyn Fn(&str) -> Place,
}

impl Checker<'_> {
    fn fail(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            at: (self.origin)(key),
            message,
        }
    }

    /// `key` must hold a finite value satisfying `ok`; `rule` completes "key must be ...".
    fn float(&self, key: &str, v: f64, ok: bool, rule: &str) -> Result<(), ConfigError> {
        if !v.is_finite() {
            return Err(self.fail(key, format!("{key} must be finite (got {v})")));
        }
        if !ok {
            return Err(self.fail(key, format!("{key} must be {rule} (got {v})")));
        }
        Ok(())
    }

    fn at_least_one(&self, key: &str, v: usize) -> Result<(), ConfigError> {
        if v < 1 {
            return Err(self.fail(key, format!("{key} must be >= 1 (got {v})")));
        }
        Ok(())
    }

    fn experiment(&self, config: &Config) -> Result<(), ConfigError> {
        let e = &config.experiment;
        let name = e.name.as_str();
        if name.trim().is_empty() {
            return Err(self.fail(
                "experiment.name",
                "experiment.name must not be empty".into(),
            ));
        }
        // The name becomes a folder under `output`; these would let it escape or hide.
        let escapes = name.contains('/')
            || name.contains('\\')
            || name.contains("..")
            || name.starts_with('.');
        if escapes && !e.allow_outside_output {
            return Err(self.fail(
                "experiment.name",
                format!(
                    "experiment.name must not contain '/', '\\' or '..' nor start with '.' \
                     (got {name:?}; set experiment.allow_outside_output = true to allow it)"
                ),
            ));
        }
        self.at_least_one("experiment.checkpoint_every", e.checkpoint_every)
    }

    fn space(&self, config: &Config) -> Result<(), ConfigError> {
        let dataset = config.data.dataset;
        if !config.space.datasets().contains(&dataset) {
            let names: Vec<&str> = config
                .space
                .datasets()
                .iter()
                .map(|d| dataset_name(*d))
                .collect();
            return Err(self.fail(
                "data.dataset",
                format!(
                    "space {} cannot take data.dataset = \"{}\" (it takes {})",
                    config.space.kind(),
                    dataset_name(dataset),
                    names.join(", ")
                ),
            ));
        }
        let momentum =
            |key: &str, m: f64| self.float(key, m, (0.0..=1.0).contains(&m), "in [0, 1]");
        let eps = |key: &str, e: f64| self.float(key, e, e > 0.0, "> 0");
        match &config.space {
            Space::Nb101(s) => {
                self.at_least_one("space.channels", s.channels)?;
                if s.channels % 2 != 0 {
                    return Err(self.fail(
                        "space.channels",
                        format!("space.channels must be even for nb101: each cell's output concatenates 2 vertices of half its channels (got {})", s.channels),
                    ));
                }
                self.at_least_one("space.stacks", s.stacks)?;
                self.at_least_one("space.cells_per_stack", s.cells_per_stack)?;
                momentum("space.bn_momentum", s.bn_momentum)?;
                eps("space.bn_eps", s.bn_eps)
            }
            Space::Nb201(s) => {
                self.at_least_one("space.channels", s.channels)?;
                self.at_least_one("space.cells_per_stage", s.cells_per_stage)?;
                momentum("space.bn_momentum", s.bn_momentum)
            }
            Space::Darts(s) => {
                self.at_least_one("space.channels", s.channels)?;
                // Reductions at layers / 3 and 2 * layers / 3 must be two distinct,
                // non-adjacent cells (the reference asserts it), which needs at least 5.
                if s.layers < 5 {
                    return Err(self.fail(
                        "space.layers",
                        format!("space.layers must be >= 5 (got {}): the two reduction cells at layers / 3 and 2 * layers / 3 must be distinct and not adjacent", s.layers),
                    ));
                }
                let w = s.auxiliary_weight;
                self.float("space.auxiliary_weight", w, w >= 0.0, ">= 0")?;
                let p = s.drop_path;
                self.float("space.drop_path", p, (0.0..1.0).contains(&p), "in [0, 1)")
            }
            Space::Ptb(s) => {
                self.at_least_one("space.embedding", s.embedding)?;
                self.at_least_one("space.hidden", s.hidden)?;
                // The decoder is the embedding matrix transposed, and the first matrix reads
                // [x, h] as 2H: both need embedding = hidden, as in the study.
                if s.embedding != s.hidden {
                    return Err(self.fail(
                        "space.embedding",
                        format!(
                            "space.embedding must equal space.hidden: the decoder is tied to the embedding (got {} and {})",
                            s.embedding, s.hidden
                        ),
                    ));
                }
                for (key, p) in [
                    ("space.dropout", s.dropout),
                    ("space.dropout_rnn_h", s.dropout_rnn_h),
                    ("space.dropout_rnn_x", s.dropout_rnn_x),
                    ("space.dropout_inp", s.dropout_inp),
                    ("space.dropout_emb", s.dropout_emb),
                ] {
                    self.float(key, p, (0.0..1.0).contains(&p), "in [0, 1)")?;
                }
                let r = s.init_range;
                self.float("space.init_range", r, r > 0.0, "> 0")?;
                self.float("space.alpha", s.alpha, s.alpha >= 0.0, ">= 0")?;
                self.float("space.beta", s.beta, s.beta >= 0.0, ">= 0")?;
                // BN of states (the study's `state_bn`, off in its runs) is not implemented.
                let bn = config.eval.bn_recalibration.steps;
                if bn > 0 {
                    return Err(self.fail(
                        "eval.bn_recalibration.steps",
                        format!("eval.bn_recalibration.steps must be 0 for space ptb: its cell has no BatchNorm (got {bn})"),
                    ));
                }
                if config.eval.valid_images > 0 {
                    return Err(self.fail(
                        "eval.valid_images",
                        "eval.valid_images is for image datasets; space ptb evaluates on the first data.text.valid_tokens tokens".into(),
                    ));
                }
                Ok(())
            }
            Space::Proxyless(s) => {
                let w = s.width_mult;
                self.float("space.width_mult", w, w > 0.0, "> 0")?;
                momentum("space.bn_momentum", s.bn_momentum)?;
                eps("space.bn_eps", s.bn_eps)
            }
        }
    }

    fn data(&self, config: &Config) -> Result<(), ConfigError> {
        let d = &config.data;
        if !SPLITS.contains(&d.split.as_str()) {
            return Err(ConfigError::UnknownValue {
                at: (self.origin)("data.split"),
                key: "data.split".into(),
                value: d.split.clone(),
                expected: SPLITS.join(", "),
                hint: suggest::hint(&d.split, SPLITS.iter().copied(), str::to_string),
            });
        }
        if d.split == "custom" && (d.train.is_empty() || d.valid.is_empty()) {
            let key = if d.train.is_empty() {
                "data.train"
            } else {
                "data.valid"
            };
            return Err(self.fail(
                "data.split",
                format!("data.split = \"custom\" needs a non-empty {key}"),
            ));
        }
        let needs = match d.split.as_str() {
            "cifar100" => Some(Dataset::Cifar100),
            "imagenet-16-120" => Some(Dataset::ImageNet16_120),
            "40k" | "50k" | "cifar10" | "cifar10-valid" => Some(Dataset::Cifar10),
            "ptb" => Some(Dataset::Ptb),
            "augment" | "train" => Some(Dataset::Imagenet),
            _ => None,
        };
        if let Some(needed) = needs {
            if needed != d.dataset {
                return Err(self.fail(
                    "data.split",
                    format!(
                        "data.split = \"{}\" needs data.dataset = \"{}\" (got \"{}\")",
                        d.split,
                        dataset_name(needed),
                        dataset_name(d.dataset)
                    ),
                ));
            }
        }
        self.at_least_one("data.batch_size", d.batch_size)?;
        self.at_least_one("data.eval_batch_size", d.eval_batch_size)?;
        self.at_least_one("data.prefetch", d.prefetch)?;
        // Dataset-specific sub-tables: present exactly for their dataset (the space defaults
        // provide them), so a stray table is a mistake worth naming.
        let sub: [(&str, bool, Dataset); 2] = [
            ("data.text", d.text.is_some(), Dataset::Ptb),
            ("data.imagenet", d.imagenet.is_some(), Dataset::Imagenet),
        ];
        for (key, present, owner) in sub {
            if present != (d.dataset == owner) {
                let message = if present {
                    format!(
                        "{key} is only for data.dataset = \"{}\" (got \"{}\")",
                        dataset_name(owner),
                        dataset_name(d.dataset)
                    )
                } else {
                    format!("data.dataset = \"{}\" needs {key}", dataset_name(owner))
                };
                return Err(self.fail(key, message));
            }
        }
        if let Some(t) = &d.text {
            self.at_least_one("data.text.bptt", t.bptt)?;
            // The study's lower clamp of a drawn training length.
            if t.bptt + t.max_seq_len_delta < 5 {
                return Err(self.fail(
                    "data.text.max_seq_len_delta",
                    format!(
                        "data.text.bptt + data.text.max_seq_len_delta must be >= 5, the shortest training sequence (got {})",
                        t.bptt + t.max_seq_len_delta
                    ),
                ));
            }
        }
        if let Some(i) = &d.imagenet {
            self.at_least_one("data.imagenet.image_size", i.image_size)?;
            if i.num_classes < 2 {
                return Err(self.fail(
                    "data.imagenet.num_classes",
                    format!(
                        "data.imagenet.num_classes must be >= 2 (got {})",
                        i.num_classes
                    ),
                ));
            }
            if i.resize < i.image_size {
                return Err(self.fail(
                    "data.imagenet.resize",
                    format!(
                        "data.imagenet.resize must be >= data.imagenet.image_size (got {} < {})",
                        i.resize, i.image_size
                    ),
                ));
            }
        }
        Ok(())
    }

    fn train(&self, config: &Config) -> Result<(), ConfigError> {
        let t = &config.train;
        self.at_least_one("train.epochs", t.epochs)?;
        self.at_least_one("device.gpus", config.device.gpus)?;
        if config.device.timeout_s < 1 {
            return Err(self.fail(
                "device.timeout_s",
                format!(
                    "device.timeout_s must be >= 1 (got {})",
                    config.device.timeout_s
                ),
            ));
        }
        let lr = t.learning_rate;
        self.float("train.learning_rate", lr, lr > 0.0, "> 0")?;
        self.float("train.ending_lr", t.ending_lr, t.ending_lr >= 0.0, ">= 0")?;
        if t.ending_lr > lr {
            return Err(self.fail(
                "train.ending_lr",
                format!(
                    "train.ending_lr must be <= train.learning_rate (got {} > {lr})",
                    t.ending_lr
                ),
            ));
        }
        let m = t.momentum;
        self.float("train.momentum", m, (0.0..1.0).contains(&m), "in [0, 1)")?;
        // PyTorch's SGD refuses Nesterov without momentum; so do we, before any work.
        if t.nesterov && m == 0.0 {
            return Err(self.fail(
                "train.nesterov",
                "train.nesterov = true needs train.momentum > 0 (got 0)".into(),
            ));
        }
        let wd = t.weight_decay;
        self.float("train.weight_decay", wd, wd >= 0.0, ">= 0")?;
        self.float("train.grad_clip", t.grad_clip, t.grad_clip >= 0.0, ">= 0")?;
        let ls = t.label_smoothing;
        self.float(
            "train.label_smoothing",
            ls,
            (0.0..1.0).contains(&ls),
            "in [0, 1)",
        )?;
        if t.warmup_epochs > 0 && t.schedule != Schedule::WarmupCosine {
            return Err(self.fail(
                "train.warmup_epochs",
                "train.warmup_epochs needs train.schedule = \"warmup-cosine\"".into(),
            ));
        }
        if let Some(a) = &t.asgd {
            if config.space.kind() != "ptb" {
                return Err(self.fail(
                    "train.asgd",
                    format!(
                        "train.asgd is DARTS-PTB's switch to averaged SGD; space {} has none",
                        config.space.kind()
                    ),
                ));
            }
            self.at_least_one("train.asgd.patience", a.patience)?;
            self.float("train.asgd.t0", a.t0, a.t0 >= 0.0, ">= 0")?;
            self.float("train.asgd.lambda", a.lambda, a.lambda >= 0.0, ">= 0")?;
        }
        Ok(())
    }

    fn eval(&self, config: &Config) -> Result<(), ConfigError> {
        let e = &config.eval;
        self.at_least_one("eval.every", e.every)?;
        self.at_least_one("eval.num_archs", e.num_archs)?;
        self.at_least_one("eval.num_archs_intermediate", e.num_archs_intermediate)?;
        let bn = &e.bn_recalibration;
        if bn.steps > 0 && bn.batch_size < 1 {
            return Err(self.fail(
                "eval.bn_recalibration.batch_size",
                format!(
                    "eval.bn_recalibration.batch_size must be >= 1 when \
                     eval.bn_recalibration.steps > 0 (got {})",
                    bn.batch_size
                ),
            ));
        }
        if e.archs.is_none() && e.archs_second_seed.is_some() {
            return Err(self.fail(
                "eval.archs_second_seed",
                "eval.archs_second_seed is a second seed of the eval.archs table, but eval.archs is not set".into(),
            ));
        }
        if e.archs_score.trim().is_empty() {
            return Err(self.fail(
                "eval.archs_score",
                "eval.archs_score must be \"auto\" or a column name of eval.archs (got \"\")"
                    .into(),
            ));
        }
        let f = e.top_k_fraction;
        self.float("eval.top_k_fraction", f, f > 0.0 && f <= 1.0, "in (0, 1]")
    }
}

/// NAS-Bench-201's arch keys, in encoding order, and its number of ops per key.
const NB201_KEYS: [&str; 6] = ["0_1", "0_2", "0_3", "1_2", "1_3", "2_3"];
const NB201_OPS: usize = 5;

/// DARTS ops per node slot (FairNAS permutes them).
const DARTS_OPS: usize = 7;

impl Checker<'_> {
    /// One `tricks.pruned` key of a space without archset (`arch_keys`): a key of the space
    /// (with a suggestion when misspelt), values among its choices, each once.
    fn pruned_key(
        &self,
        kind: &str,
        keys: &[(String, Vec<serde_json::Value>)],
        key: &str,
        vals: &[serde_json::Value],
    ) -> Result<(), ConfigError> {
        let Some((_, choices)) = keys.iter().find(|(k, _)| k == key) else {
            let hint = suggest::hint(key, keys.iter().map(|(k, _)| k.as_str()), |c| c.into());
            let first: Vec<&str> = keys.iter().take(4).map(|(k, _)| k.as_str()).collect();
            return Err(self.fail(
                "tricks.pruned",
                format!(
                    "tricks.pruned: {key:?} is not a {kind} key{hint} (keys like {}, ...: {} in all)",
                    first.join(", "),
                    keys.len()
                ),
            ));
        };
        for (i, v) in vals.iter().enumerate() {
            if !choices.contains(v) {
                return Err(self.fail(
                    "tricks.pruned",
                    format!(
                        "tricks.pruned: key {key:?}: {v} is not one of its values {}",
                        serde_json::Value::Array(choices.clone())
                    ),
                ));
            }
            if vals[..i].contains(v) {
                return Err(self.fail(
                    "tricks.pruned",
                    format!("tricks.pruned: key {key:?} lists {v} twice"),
                ));
            }
        }
        Ok(())
    }
}

/// NAS-Bench-101 (space 3)'s arch keys in encoding order, its op keys and ops per op key.
const NB101_KEYS: [&str; 11] = [
    "input1", "input2", "input3", "input4", "input5", "input6", "op1", "op2", "op3", "op4", "op5",
];
const NB101_OP_KEYS: [&str; 5] = ["op1", "op2", "op3", "op4", "op5"];
const NB101_OPS: usize = 3;

impl Checker<'_> {
    /// `[tricks]`: ranges, the spaces each trick supports, and which tricks combine.
    fn tricks(&self, config: &Config) -> Result<(), ConfigError> {
        let t = &config.tricks;
        let kind = config.space.kind();
        for name in t.active() {
            let Some(info) = TRICKS.iter().find(|i| i.name == name) else {
                continue;
            };
            if !info.spaces.contains(&kind) {
                return Err(self.fail(
                    &format!("tricks.{name}"),
                    format!(
                        "tricks.{name} is not available for space.kind = \"{kind}\" (supported: {}): it needs {}",
                        info.spaces.join(", "),
                        info.needs
                    ),
                ));
            }
        }
        let clash = |a: &str, b: &str, why: &str| -> Result<(), ConfigError> {
            Err(self.fail(
                &format!("tricks.{b}"),
                format!("tricks.{a} and tricks.{b} cannot be combined: {why}"),
            ))
        };
        let nb201 = matches!(config.space, Space::Nb201(_));
        let nb101 = matches!(config.space, Space::Nb101(_));
        let no_truth = config.eval.ground_truth == "none";
        if let Some(p) = &t.pruned {
            let map = p.to_map();
            if map.is_empty() {
                return Err(self.fail(
                    "tricks.pruned",
                    "tricks.pruned lists no key (remove it, or restrict at least one key)".into(),
                ));
            }
            for (k, vals) in &map {
                if vals.is_empty() {
                    return Err(self.fail(
                        "tricks.pruned",
                        format!("tricks.pruned: key {k:?} allows no value"),
                    ));
                }
                if nb101 && !NB101_KEYS.contains(&k.as_str()) {
                    return Err(self.fail(
                        "tricks.pruned",
                        format!(
                            "tricks.pruned: {k:?} is not an NB101 key (keys: {})",
                            NB101_KEYS.join(", ")
                        ),
                    ));
                }
                if let Some(keys) = super::arch_keys::keys(kind) {
                    self.pruned_key(kind, &keys, k, vals)?;
                }
                if nb201 {
                    if !NB201_KEYS.contains(&k.as_str()) {
                        return Err(self.fail(
                            "tricks.pruned",
                            format!(
                                "tricks.pruned: {k:?} is not an NB201 key (keys: {})",
                                NB201_KEYS.join(", ")
                            ),
                        ));
                    }
                    if let Some(v) = vals
                        .iter()
                        .find(|v| v.as_u64().is_none_or(|o| o >= NB201_OPS as u64))
                    {
                        return Err(self.fail(
                            "tricks.pruned",
                            format!("tricks.pruned: key {k:?}: {v} is not an NB201 op index 0..4"),
                        ));
                    }
                }
            }
        }
        if let (Some(p), Space::Darts(_)) = (&t.pruned, &config.space) {
            if let Some((node, input)) =
                super::arch_keys::darts_nodes_without_distinct_inputs(&p.to_map()).first()
            {
                return Err(self.fail(
                    "tricks.pruned",
                    format!(
                        "tricks.pruned: node {node} allows only input {input} on both slots, but a DARTS node takes two distinct inputs"
                    ),
                ));
            }
        }
        if let Some(m) = &t.multipath {
            self.at_least_one("tricks.multipath.paths", m.paths)?;
            if m.fairnas && matches!(config.space, Space::Darts(_)) && m.paths != DARTS_OPS {
                return Err(self.fail(
                    "tricks.multipath.paths",
                    format!(
                        "tricks.multipath.fairnas uses each of the {DARTS_OPS} DARTS ops of every node slot exactly once per step \
                         (the inputs, 2 to 5 choices by node, come from each path's sampled architecture), so tricks.multipath.paths must be {DARTS_OPS} (got {})",
                        m.paths
                    ),
                ));
            }
            if m.fairnas && matches!(config.space, Space::Proxyless(_)) {
                return Err(self.fail(
                    "tricks.multipath.fairnas",
                    "tricks.multipath.fairnas needs every key to have the same number of choices, one per path; in ProxylessNAS the first cell of each stage has 6 (no Zero) and the others 7, so no number of paths trains every choice of every cell exactly once per step (the study ran FairNAS on NB201 and NB101 only)".into(),
                ));
            }
            if m.fairnas {
                if nb201 && m.paths != NB201_OPS {
                    return Err(self.fail(
                        "tricks.multipath.paths",
                        format!(
                            "tricks.multipath.fairnas uses each of the {NB201_OPS} NB201 ops of every edge exactly once per step, \
                             so tricks.multipath.paths must be {NB201_OPS} (got {})",
                            m.paths
                        ),
                    ));
                }
                if nb101 && m.paths != NB101_OPS {
                    return Err(self.fail(
                        "tricks.multipath.paths",
                        format!(
                            "tricks.multipath.fairnas uses each of the {NB101_OPS} NB101 ops of every vertex exactly once per step, \
                             so tricks.multipath.paths must be {NB101_OPS} (got {})",
                            m.paths
                        ),
                    ));
                }
                let why = "FairNAS trains every choice of every key at each step, which ignores any restriction of the archset";
                for (on, name) in [
                    (t.pruned.is_some(), "pruned"),
                    (t.omniscience.is_some(), "omniscience"),
                    (t.train_split.is_some(), "train_split"),
                    (t.augmented.is_some(), "augmented"),
                    (t.focus_branch.is_some(), "focus_branch"),
                ] {
                    if on {
                        return clash("multipath", name, why);
                    }
                }
            }
        }
        if let Some(o) = &t.omniscience {
            self.float(
                "tricks.omniscience.ratio",
                o.ratio,
                o.ratio > 0.0 && o.ratio <= 1.0,
                "in (0, 1]",
            )?;
            if !o.random && no_truth {
                return Err(self.fail(
                    "tricks.omniscience",
                    "tricks.omniscience ranks the archset by ground truth, but eval.ground_truth = \"none\" (set random = true, or give ground truth)".into(),
                ));
            }
            if t.train_split.is_some() {
                return clash(
                    "omniscience",
                    "train_split",
                    "both choose the training subset of the archset",
                );
            }
        }
        if let Some(s) = &t.train_split {
            if s.folds < 2 {
                return Err(self.fail(
                    "tricks.train_split.folds",
                    format!("tricks.train_split.folds must be >= 2 (got {})", s.folds),
                ));
            }
            if s.index >= s.folds {
                return Err(self.fail(
                    "tricks.train_split.index",
                    format!(
                        "tricks.train_split.index must be < tricks.train_split.folds = {} (got {})",
                        s.folds, s.index
                    ),
                ));
            }
            if s.kind == SplitKind::Structured && nb201 {
                if !NB201_KEYS.contains(&s.key.as_str()) {
                    return Err(self.fail(
                        "tricks.train_split.key",
                        format!(
                            "tricks.train_split.key: {:?} is not an NB201 key (keys: {})",
                            s.key,
                            NB201_KEYS.join(", ")
                        ),
                    ));
                }
                if s.folds > NB201_OPS {
                    return Err(self.fail(
                        "tricks.train_split.folds",
                        format!("a structured split has one fold per op of the key: tricks.train_split.folds must be <= {NB201_OPS} (got {})", s.folds),
                    ));
                }
            }
            if s.kind == SplitKind::Structured && nb101 {
                if !NB101_OP_KEYS.contains(&s.key.as_str()) {
                    return Err(self.fail(
                        "tricks.train_split.key",
                        format!(
                            "tricks.train_split.key: a structured NB101 split is by the op of one vertex, {} (got {:?})",
                            NB101_OP_KEYS.join(", "),
                            s.key
                        ),
                    ));
                }
                if s.folds > NB101_OPS {
                    return Err(self.fail(
                        "tricks.train_split.folds",
                        format!("a structured split has one fold per op of the key: tricks.train_split.folds must be <= {NB101_OPS} (got {})", s.folds),
                    ));
                }
            }
            if s.kind == SplitKind::ValAcc && no_truth {
                return Err(self.fail(
                    "tricks.train_split.kind",
                    "tricks.train_split.kind = \"val_acc\" sorts by ground truth, but eval.ground_truth = \"none\"".into(),
                ));
            }
        }
        if let Some(a) = &t.augmented {
            self.at_least_one("tricks.augmented.copies", a.copies)?;
            if nb201
                && (a.setup.len() != NB201_KEYS.len()
                    || !a.setup.chars().all(|c| ('0'..='4').contains(&c)))
            {
                return Err(self.fail(
                    "tricks.augmented.setup",
                    format!(
                        "tricks.augmented.setup must be 6 NB201 op indices 0..4 for the edges 0_1 0_2 1_2 0_3 1_3 2_3 (got {:?})",
                        a.setup
                    ),
                ));
            }
            if nb101
                && (a.setup.len() != NB101_OP_KEYS.len()
                    || !a.setup.chars().all(|c| ('0'..='2').contains(&c)))
            {
                return Err(self.fail(
                    "tricks.augmented.setup",
                    format!(
                        "tricks.augmented.setup must be 5 NB101 op indices 0..2 (conv3x3, conv1x1, maxpool3x3) for vertices 1..5 (got {:?})",
                        a.setup
                    ),
                ));
            }
            let why = if nb101 {
                "augmented fixes the ops of every vertex (the study refuses --pruned with it)"
            } else {
                "augmented fixes the architecture, leaving nothing to restrict"
            };
            for (on, name) in [
                (t.pruned.is_some(), "pruned"),
                (t.omniscience.is_some(), "omniscience"),
                (t.train_split.is_some(), "train_split"),
                (t.focus_branch.is_some(), "focus_branch"),
            ] {
                if on {
                    return clash("augmented", name, why);
                }
            }
        }
        if let Some(r) = &t.cosine_restarts {
            self.at_least_one("tricks.cosine_restarts.every", r.every)?;
            let warmup = config.train.warmup_epochs;
            if config.train.schedule == Schedule::WarmupCosine {
                // The restarts follow the warm-up (see tricks::cosine_restarts::warmup_lr).
                if config.train.epochs <= warmup
                    || !(config.train.epochs - warmup).is_multiple_of(r.every)
                {
                    return Err(self.fail(
                        "tricks.cosine_restarts.every",
                        format!(
                            "with train.schedule = \"warmup-cosine\" the restarts follow the warm-up: train.epochs - train.warmup_epochs = {} - {warmup} must be a positive multiple of tricks.cosine_restarts.every = {}",
                            config.train.epochs, r.every
                        ),
                    ));
                }
            } else if !config.train.epochs.is_multiple_of(r.every) {
                return Err(self.fail(
                    "tricks.cosine_restarts.every",
                    format!(
                        "train.epochs = {} must be a multiple of tricks.cosine_restarts.every = {} (the study's restarts end a period at the last epoch)",
                        config.train.epochs, r.every
                    ),
                ));
            }
        }
        if let Some(f) = &t.focus_branch {
            self.at_least_one("tricks.focus_branch.every", f.every)?;
            self.at_least_one("tricks.focus_branch.min_archs", f.min_archs)?;
            self.at_least_one("tricks.focus_branch.num_archs", f.num_archs)?;
            if f.every > config.train.epochs {
                return Err(self.fail(
                    "tricks.focus_branch.every",
                    format!(
                        "tricks.focus_branch.every = {} exceeds train.epochs = {}: no decision would ever be taken",
                        f.every, config.train.epochs
                    ),
                ));
            }
            if f.num_archs > config.eval.num_archs {
                return Err(self.fail(
                    "tricks.focus_branch.num_archs",
                    format!(
                        "tricks.focus_branch.num_archs = {} exceeds eval.num_archs = {}: decisions score the first architectures of the validation subset",
                        f.num_archs, config.eval.num_archs
                    ),
                ));
            }
            if f.metric != FocusMetric::Accuracy && no_truth {
                return Err(self.fail(
                    "tricks.focus_branch.metric",
                    "tricks.focus_branch.metric = \"nondominated\" / \"lstsq\" needs the ground truth's parameter counts, but eval.ground_truth = \"none\"".into(),
                ));
            }
            if config.eval.archs.is_some() {
                return Err(self.fail(
                    "eval.archs",
                    "eval.archs fixes the evaluated architectures, but tricks.focus_branch decides on a sampled validation subset of the shrinking archset (remove one of them)".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The spelling of a dataset in the experiment file.
pub fn dataset_name(d: Dataset) -> &'static str {
    match d {
        Dataset::Cifar10 => "cifar10",
        Dataset::Cifar100 => "cifar100",
        Dataset::ImageNet16_120 => "imagenet16-120",
        Dataset::Ptb => "ptb",
        Dataset::Imagenet => "imagenet",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::defaults;

    type Edit = Box<dyn FnOnce(&mut Config)>;

    fn at(key: &str) -> Place {
        // Distinct line per key so tests see that the failing key's origin is reported.
        Place::file("x.toml", Some(key.len()))
    }

    fn check(edit: impl FnOnce(&mut Config)) -> Result<Config, String> {
        let mut c = defaults::nb201();
        edit(&mut c);
        validate(&mut c, &at).map(|_| c).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_pass() {
        assert_eq!(check(|_| {}), Ok(defaults::nb201()));
    }

    #[test]
    fn out_of_range_values_name_key_and_place() {
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|c| c.train.learning_rate = -0.1),
                "x.toml:19: train.learning_rate must be > 0 (got -0.1)",
            ),
            (
                Box::new(|c| c.train.learning_rate = 0.0),
                "x.toml:19: train.learning_rate must be > 0 (got 0)",
            ),
            (
                Box::new(|c| c.train.learning_rate = f64::NAN),
                "x.toml:19: train.learning_rate must be finite (got NaN)",
            ),
            (
                Box::new(|c| c.train.ending_lr = -1e-3),
                "x.toml:15: train.ending_lr must be >= 0 (got -0.001)",
            ),
            (
                Box::new(|c| c.train.ending_lr = 0.5),
                "x.toml:15: train.ending_lr must be <= train.learning_rate (got 0.5 > 0.1)",
            ),
            (
                Box::new(|c| c.train.momentum = 1.0),
                "x.toml:14: train.momentum must be in [0, 1) (got 1)",
            ),
            (
                Box::new(|c| c.train.momentum = 0.0),
                "x.toml:14: train.nesterov = true needs train.momentum > 0 (got 0)",
            ),
            (
                Box::new(|c| c.train.weight_decay = -1.0),
                "x.toml:18: train.weight_decay must be >= 0 (got -1)",
            ),
            (
                Box::new(|c| c.train.grad_clip = -5.0),
                "x.toml:15: train.grad_clip must be >= 0 (got -5)",
            ),
            (
                Box::new(|c| c.train.epochs = 0),
                "x.toml:12: train.epochs must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| c.data.batch_size = 0),
                "x.toml:15: data.batch_size must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| c.data.eval_batch_size = 0),
                "x.toml:20: data.eval_batch_size must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| c.data.prefetch = 0),
                "x.toml:13: data.prefetch must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| c.eval.every = 0),
                "x.toml:10: eval.every must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| c.eval.num_archs = 0),
                "x.toml:14: eval.num_archs must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| c.eval.num_archs_intermediate = 0),
                "x.toml:27: eval.num_archs_intermediate must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| c.eval.bn_recalibration.batch_size = 0),
                "x.toml:32: eval.bn_recalibration.batch_size must be >= 1 when \
                 eval.bn_recalibration.steps > 0 (got 0)",
            ),
            (
                Box::new(|c| c.eval.top_k_fraction = 0.0),
                "x.toml:19: eval.top_k_fraction must be in (0, 1] (got 0)",
            ),
            (
                Box::new(|c| c.eval.top_k_fraction = 1.5),
                "x.toml:19: eval.top_k_fraction must be in (0, 1] (got 1.5)",
            ),
            (
                Box::new(|c| c.experiment.checkpoint_every = 0),
                "x.toml:27: experiment.checkpoint_every must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| {
                    if let Space::Nb201(s) = &mut c.space {
                        s.channels = 0
                    }
                }),
                "x.toml:14: space.channels must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| {
                    if let Space::Nb201(s) = &mut c.space {
                        s.cells_per_stage = 0
                    }
                }),
                "x.toml:21: space.cells_per_stage must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| {
                    if let Space::Nb201(s) = &mut c.space {
                        s.bn_momentum = 1.5
                    }
                }),
                "x.toml:17: space.bn_momentum must be in [0, 1] (got 1.5)",
            ),
        ];
        for (edit, want) in cases {
            assert_eq!(check(edit), Err(want.to_string()));
        }
    }

    #[test]
    fn boundary_values_pass() {
        let ok = check(|c| {
            c.train.momentum = 0.0;
            c.train.nesterov = false;
            c.train.ending_lr = c.train.learning_rate;
            c.train.weight_decay = 0.0;
            c.eval.top_k_fraction = 1.0;
            c.eval.bn_recalibration = crate::config::BnRecalibration {
                steps: 0,
                batch_size: 0,
            };
            if let Space::Nb201(s) = &mut c.space {
                s.bn_momentum = 1.0;
            }
        });
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn intermediate_count_is_capped() {
        let c = check(|c| {
            c.eval.num_archs = 30;
            c.eval.num_archs_intermediate = 100;
        })
        .map_err(|e| e.to_string());
        assert_eq!(c.map(|c| c.eval.num_archs_intermediate), Ok(30));
        let c = check(|c| c.eval.num_archs_intermediate = 7);
        assert_eq!(c.map(|c| c.eval.num_archs_intermediate), Ok(7));
    }

    #[test]
    fn every_space_default_passes_and_spaces_refuse_foreign_datasets() {
        for kind in defaults::SPACE_KINDS {
            let mut c = defaults::for_kind(kind).unwrap();
            assert_eq!(validate(&mut c, &at), Ok(()), "{kind}");
        }
        let mut c = defaults::ptb();
        c.data.dataset = Dataset::Cifar10;
        c.data.split = "40k".into();
        c.data.text = None;
        assert_eq!(
            validate(&mut c, &at).map_err(|e| e.to_string()),
            Err(
                "x.toml:12: space ptb cannot take data.dataset = \"cifar10\" (it takes ptb)".into()
            )
        );
        let mut c = defaults::nb201();
        c.data.text = defaults::ptb().data.text;
        let e = validate(&mut c, &at).unwrap_err().to_string();
        assert!(
            e.contains("data.text is only for data.dataset = \"ptb\""),
            "{e}"
        );
        let mut c = defaults::darts();
        c.train.asgd = defaults::ptb().train.asgd;
        let e = validate(&mut c, &at).unwrap_err().to_string();
        assert!(e.contains("train.asgd is DARTS-PTB's"), "{e}");
        let mut c = defaults::nb201();
        c.train.warmup_epochs = 5;
        let e = validate(&mut c, &at).unwrap_err().to_string();
        assert!(
            e.contains("needs train.schedule = \"warmup-cosine\""),
            "{e}"
        );
    }

    #[test]
    fn ptb_checks_name_the_key() {
        let ptb = |edit: &dyn Fn(&mut Config)| -> String {
            let mut c = defaults::ptb();
            edit(&mut c);
            validate(&mut c, &at)
                .map_err(|e| e.to_string())
                .unwrap_err()
        };
        let space = |f: fn(&mut crate::config::PtbSpace)| {
            move |c: &mut Config| {
                if let Space::Ptb(s) = &mut c.space {
                    f(s)
                }
            }
        };
        let e = ptb(&space(|s| s.hidden = 16));
        assert!(e.contains("space.embedding must equal space.hidden"), "{e}");
        let e = ptb(&space(|s| s.dropout_rnn_x = 1.0));
        assert!(
            e.contains("space.dropout_rnn_x must be in [0, 1) (got 1)"),
            "{e}"
        );
        let e = ptb(&space(|s| s.beta = -1.0));
        assert!(e.contains("space.beta must be >= 0"), "{e}");
        let e = ptb(&space(|s| s.init_range = 0.0));
        assert!(e.contains("space.init_range must be > 0"), "{e}");
        let e = ptb(&|c| c.eval.bn_recalibration.steps = 2);
        assert!(
            e.contains("eval.bn_recalibration.steps must be 0 for space ptb"),
            "{e}"
        );
        let e = ptb(&|c| c.eval.valid_images = 100);
        assert!(e.contains("data.text.valid_tokens"), "{e}");
        let e = ptb(&|c| {
            if let Some(t) = &mut c.data.text {
                t.bptt = 2;
                t.max_seq_len_delta = 1;
            }
        });
        assert!(e.contains("data.text.max_seq_len_delta"), "{e}");
        let e = ptb(&|c| c.train.asgd.as_mut().unwrap().patience = 0);
        assert!(e.contains("train.asgd.patience must be >= 1"), "{e}");
    }

    #[test]
    fn splits_and_datasets() {
        assert_eq!(
            check(|c| c.data.split = "cifar10valid".into()),
            Err(
                "x.toml:10: data.split: unknown value 'cifar10valid' (expected one of: \
                 40k, 50k, cifar10-valid, cifar10, cifar100, imagenet-16-120, ptb, augment, \
                 train, custom) (did you mean 'cifar10-valid'?)"
                    .into()
            )
        );
        assert_eq!(
            check(|c| c.data.split = "mnist".into()),
            Err(
                "x.toml:10: data.split: unknown value 'mnist' (expected one of: \
                 40k, 50k, cifar10-valid, cifar10, cifar100, imagenet-16-120, ptb, augment, \
                 train, custom)"
                    .into()
            )
        );
        assert_eq!(
            check(|c| c.data.split = "cifar100".into()),
            Err(
                "x.toml:10: data.split = \"cifar100\" needs data.dataset = \"cifar100\" \
                 (got \"cifar10\")"
                    .into()
            )
        );
        assert_eq!(
            check(|c| c.data.split = "imagenet-16-120".into()),
            Err(
                "x.toml:10: data.split = \"imagenet-16-120\" needs data.dataset = \
                 \"imagenet16-120\" (got \"cifar10\")"
                    .into()
            )
        );
        assert_eq!(
            check(|c| {
                c.data.dataset = Dataset::Cifar100;
                c.data.split = "40k".into();
            }),
            Err(
                "x.toml:10: data.split = \"40k\" needs data.dataset = \"cifar10\" \
                 (got \"cifar100\")"
                    .into()
            )
        );
        assert!(check(|c| {
            c.data.dataset = Dataset::ImageNet16_120;
            c.data.split = "imagenet-16-120".into();
        })
        .is_ok());
        assert_eq!(
            check(|c| c.data.split = "custom".into()),
            Err("x.toml:10: data.split = \"custom\" needs a non-empty data.train".into())
        );
        assert_eq!(
            check(|c| {
                c.data.split = "custom".into();
                c.data.train = vec!["a.bin".into()];
            }),
            Err("x.toml:10: data.split = \"custom\" needs a non-empty data.valid".into())
        );
        // A custom split may hold any dataset's images.
        assert!(check(|c| {
            c.data.split = "custom".into();
            c.data.dataset = Dataset::Cifar100;
            c.data.train = vec!["a.bin".into()];
            c.data.valid = vec!["b.bin".into()];
        })
        .is_ok());
    }

    #[test]
    fn experiment_names() {
        let escape = |name: &str| {
            format!(
                "x.toml:15: experiment.name must not contain '/', '\\' or '..' nor start \
                 with '.' (got {name:?}; set experiment.allow_outside_output = true to allow it)"
            )
        };
        assert_eq!(
            check(|c| c.experiment.name = "  ".into()),
            Err("x.toml:15: experiment.name must not be empty".into())
        );
        for bad in ["a/b", "a\\b", "up..", ".hidden", "../x"] {
            assert_eq!(check(|c| c.experiment.name = bad.into()), Err(escape(bad)));
        }
        assert!(check(|c| {
            c.experiment.name = "../elsewhere/x".into();
            c.experiment.allow_outside_output = true;
        })
        .is_ok());
        assert!(check(|c| c.experiment.name = "nb201-lr.05_x".into()).is_ok());
    }

    fn load(extra: &str) -> Result<crate::config::Resolved, String> {
        let text = format!("[space]\nkind = \"nb201\"\n{extra}");
        crate::config::load_str(&text, std::path::Path::new("x.toml"), &[])
            .map_err(|e| e.to_string())
    }

    #[test]
    fn tricks_default_off_and_absent_from_the_resolved_config() {
        let r = load("").unwrap();
        assert!(r.config.tricks.is_empty());
        assert!(!r.toml.contains("[tricks"), "{}", r.toml);
        // An empty table turns a trick on with the study's defaults, recorded in full.
        let r = load(
            "[train]\nepochs = 1000\n[eval]\nnum_archs = 150\n\
             [tricks.multipath]\n[tricks.focus_branch]\nmetric = \"lstsq\"\n",
        )
        .unwrap();
        assert_eq!(r.config.tricks.active(), ["multipath", "focus_branch"]);
        assert_eq!(
            r.config
                .tricks
                .multipath
                .as_ref()
                .map(|m| (m.paths, m.fairnas)),
            Some((5, false))
        );
        let f = r.config.tricks.focus_branch.as_ref().unwrap();
        assert_eq!(
            (f.every, f.min_archs, f.num_archs, f.metric),
            (500, 10, 150, FocusMetric::Lstsq)
        );
        assert!(
            r.toml
                .contains("[tricks.multipath]\npaths = 5\nfairnas = false"),
            "{}",
            r.toml
        );
        let again =
            crate::config::load_str(&r.toml, std::path::Path::new("/r/config.toml"), &[]).unwrap();
        assert_eq!(again.config.tricks, r.config.tricks);
        assert_ne!(r.hash, load("").unwrap().hash);
    }

    #[test]
    fn pruned_list_form_is_rewritten_as_the_table_form() {
        let table = load("[tricks.pruned]\n0_1 = [1, 3]\n2_3 = [2]\n").unwrap();
        let list = load(
            "[[tricks.pruned]]\nkey = \"2_3\"\nvalues = [2]\n[[tricks.pruned]]\nkey = \"0_1\"\nvalues = [1, 3]\n",
        )
        .unwrap();
        assert_eq!(table.config.tricks, list.config.tricks);
        assert_eq!(table.hash, list.hash);
        assert!(matches!(list.config.tricks.pruned, Some(Pruned::Map(_))));
        let e = load("[tricks.pruned]\n0_1 = 3\n").unwrap_err();
        assert!(e.contains("tricks.pruned"), "{e}");
    }

    #[test]
    fn trick_errors_name_the_key_and_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("[tricks.multipth]\n", "did you mean"),
            (
                "[tricks.multipath]\npaths = 0\n",
                "tricks.multipath.paths must be >= 1 (got 0)",
            ),
            (
                "[tricks.multipath]\nfairnas = true\npaths = 4\n",
                "tricks.multipath.paths must be 5 (got 4)",
            ),
            (
                "[tricks.multipath]\nfairnas = true\n[tricks.pruned]\n0_1 = [1]\n",
                "tricks.multipath and tricks.pruned cannot be combined: FairNAS",
            ),
            (
                "[tricks.omniscience]\nratio = 0\n",
                "tricks.omniscience.ratio must be in (0, 1] (got 0)",
            ),
            (
                "[eval]\nground_truth = \"none\"\n[tricks.omniscience]\n",
                "ranks the archset by ground truth, but eval.ground_truth = \"none\"",
            ),
            (
                "[tricks.omniscience]\n[tricks.train_split]\n",
                "tricks.omniscience and tricks.train_split cannot be combined",
            ),
            (
                "[tricks.train_split]\nindex = 5\n",
                "tricks.train_split.index must be < tricks.train_split.folds = 5 (got 5)",
            ),
            (
                "[tricks.train_split]\nfolds = 1\nindex = 0\n",
                "tricks.train_split.folds must be >= 2 (got 1)",
            ),
            (
                "[tricks.train_split]\nkind = \"structured\"\nkey = \"0_4\"\n",
                "\"0_4\" is not an NB201 key",
            ),
            (
                "[tricks.train_split]\nkind = \"structured\"\nfolds = 6\n",
                "must be <= 5 (got 6)",
            ),
            (
                "[tricks.train_split]\nkind = \"by_acc\"\n",
                "unknown value 'by_acc'",
            ),
            (
                "[tricks.augmented]\nsetup = \"44444\"\n",
                "tricks.augmented.setup must be 6 NB201 op indices",
            ),
            (
                "[tricks.augmented]\nsetup = \"444445\"\n",
                "tricks.augmented.setup must be 6 NB201 op indices",
            ),
            (
                "[tricks.augmented]\n[tricks.focus_branch]\n[train]\nepochs = 500\n",
                "tricks.augmented and tricks.focus_branch cannot be combined",
            ),
            (
                "[tricks.cosine_restarts]\nevery = 30\n",
                "train.epochs = 200 must be a multiple of tricks.cosine_restarts.every = 30",
            ),
            (
                "[tricks.focus_branch]\n",
                "tricks.focus_branch.every = 500 exceeds train.epochs = 200",
            ),
            (
                "[tricks.focus_branch]\nevery = 100\nnum_archs = 150\n",
                "tricks.focus_branch.num_archs = 150 exceeds eval.num_archs = 100",
            ),
            (
                "[tricks.pruned]\n0_7 = [1]\n",
                "\"0_7\" is not an NB201 key",
            ),
            ("[tricks.pruned]\n0_1 = [5]\n", "5 is not an NB201 op index"),
            ("[tricks.pruned]\n0_1 = []\n", "allows no value"),
        ];
        for (text, want) in cases {
            let e = load(text)
                .err()
                .unwrap_or_else(|| panic!("accepted: {text}"));
            assert!(e.contains(want), "{text}\n -> {e}");
            assert!(e.starts_with("x.toml"), "{e}");
        }
        // Compatible combinations pass.
        for ok in [
            "[tricks.pruned]\n0_1 = [1, 2]\n[tricks.omniscience]\n[tricks.multipath]\npaths = 3\n",
            "[tricks.train_split]\nkind = \"val_acc\"\n[tricks.cosine_restarts]\n[tricks.focus_branch]\nevery = 100\nnum_archs = 100\n",
            "[tricks.augmented]\nreplicate = true\n[tricks.multipath]\n",
            "[tricks.multipath]\nfairnas = true\n[tricks.cosine_restarts]\nevery = 100\n",
        ] {
            assert!(load(ok).is_ok(), "{ok}: {:?}", load(ok).err());
        }
    }

    fn load_kind(kind: &str, extra: &str) -> Result<crate::config::Resolved, String> {
        let text = format!("[space]\nkind = \"{kind}\"\n{extra}");
        crate::config::load_str(&text, std::path::Path::new("x.toml"), &[])
            .map_err(|e| e.to_string())
    }

    /// DARTS, DARTS-PTB and ProxylessNAS: what each trick does or why it is refused.
    #[test]
    fn archsetless_trick_errors_name_the_key_and_the_reason() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "darts",
                "[tricks.pruned]\n\"normal/2/0/ops\" = [\"skip_connect\"]\n",
                "\"normal/2/0/ops\" is not a darts key (did you mean 'normal/2/0/op'?)",
            ),
            (
                "darts",
                "[tricks.pruned]\n\"normal/2/0/op\" = [\"conv_3x3\"]\n",
                "key \"normal/2/0/op\": \"conv_3x3\" is not one of its values [\"max_pool_3x3\",",
            ),
            (
                "darts",
                "[tricks.pruned]\n\"normal/2/0/op\" = [3]\n",
                "3 is not one of its values",
            ),
            (
                "darts",
                "[tricks.pruned]\n\"reduce/3/1/input\" = [3]\n",
                "key \"reduce/3/1/input\": 3 is not one of its values [0,1,2]",
            ),
            (
                "darts",
                "[tricks.pruned]\n\"normal/4/0/input\" = [1, 1]\n",
                "lists 1 twice",
            ),
            (
                "darts",
                "[tricks.pruned]\n\"normal/4/0/input\" = []\n",
                "allows no value",
            ),
            (
                "darts",
                "[tricks.pruned]\n\"reduce/3/0/input\" = [2]\n\"reduce/3/1/input\" = [2]\n",
                "node reduce/3 allows only input 2 on both slots, but a DARTS node takes two distinct inputs",
            ),
            (
                "darts",
                "[tricks.multipath]\nfairnas = true\n",
                "tricks.multipath.paths must be 7 (got 5)",
            ),
            (
                "darts",
                "[tricks.multipath]\nfairnas = true\npaths = 7\n[tricks.pruned]\n\"normal/2/0/op\" = [\"skip_connect\"]\n",
                "tricks.multipath and tricks.pruned cannot be combined: FairNAS",
            ),
            (
                "darts",
                "[tricks.omniscience]\n",
                "tricks.omniscience is not available for space.kind = \"darts\" (supported: nb201, nb101): it needs an enumerated archset ranked by ground truth",
            ),
            (
                "darts",
                "[tricks.train_split]\n",
                "a structured fold, one value of one key, is tricks.pruned",
            ),
            (
                "darts",
                "[tricks.augmented]\n",
                "tricks.augmented is not available for space.kind = \"darts\"",
            ),
            (
                "darts",
                "[tricks.focus_branch]\n",
                "tricks.focus_branch is not available for space.kind = \"darts\"",
            ),
            (
                "ptb",
                "[tricks.multipath]\n",
                "tricks.multipath is not available for space.kind = \"ptb\" (supported: nb201, nb101, darts, proxyless): it needs several paths through the supernet on one batch; DARTS-PTB carries the RNN hidden state",
            ),
            (
                "ptb",
                "[tricks.pruned]\n\"switch/2\" = [3]\n",
                "key \"switch/2\": 3 is not one of its values [0,1,2]",
            ),
            (
                "ptb",
                "[tricks.pruned]\n\"act/8\" = [0]\n",
                "\"act/8\" is not a ptb key",
            ),
            (
                "ptb",
                "[tricks.cosine_restarts]\nevery = 7\n",
                "train.epochs = 3000 must be a multiple of tricks.cosine_restarts.every = 7",
            ),
            (
                "ptb",
                "[tricks.omniscience]\nrandom = true\n",
                "tricks.omniscience is not available for space.kind = \"ptb\"",
            ),
            (
                "proxyless",
                "[tricks.pruned]\nstage1_cell0 = [6]\n",
                "key \"stage1_cell0\": 6 is not one of its values [0,1,2,3,4,5]",
            ),
            (
                "proxyless",
                "[tricks.pruned]\nstage5_cel0 = [0]\n",
                "\"stage5_cel0\" is not a proxyless key (did you mean 'stage5_cell0'?)",
            ),
            (
                "proxyless",
                "[tricks.multipath]\nfairnas = true\npaths = 7\n",
                "the first cell of each stage has 6 (no Zero) and the others 7",
            ),
            (
                "proxyless",
                "[tricks.cosine_restarts]\nevery = 100\n",
                "train.epochs - train.warmup_epochs = 300 - 5 must be a positive multiple of tricks.cosine_restarts.every = 100",
            ),
            (
                "proxyless",
                "[tricks.focus_branch]\n",
                "tricks.focus_branch is not available for space.kind = \"proxyless\"",
            ),
        ];
        for (kind, text, want) in cases {
            let e = load_kind(kind, text)
                .err()
                .unwrap_or_else(|| panic!("{kind}: accepted: {text}"));
            assert!(e.contains(want), "{kind}: {text}\n -> {e}");
            assert!(e.starts_with("x.toml"), "{e}");
        }
        for (kind, ok) in [
            (
                "darts",
                "[tricks.pruned]\n\"normal/2/0/op\" = [\"sep_conv_3x3\", \"skip_connect\"]\n\"reduce/3/0/input\" = [2]\n\"reduce/3/1/input\" = [0, 2]\n[tricks.multipath]\npaths = 3\n[tricks.cosine_restarts]\nevery = 100\n",
            ),
            (
                "darts",
                "[tricks.multipath]\nfairnas = true\npaths = 7\n",
            ),
            (
                "ptb",
                "[tricks.pruned]\n\"act/0\" = [0, 3]\n\"switch/7\" = [0, 7]\n[tricks.cosine_restarts]\nevery = 1000\n",
            ),
            (
                "proxyless",
                "[tricks.pruned]\nstage0_cell1 = [6]\nstage5_cell0 = [0, 5]\n[tricks.multipath]\npaths = 2\n[tricks.cosine_restarts]\nevery = 59\n",
            ),
        ] {
            let r = load_kind(kind, ok);
            assert!(r.is_ok(), "{kind}: {ok}: {:?}", r.err());
        }
        // eval.archs = "none" turns off a table set by a lower layer.
        let r = load_kind(
            "darts",
            "[eval]\narchs = \"none\"\narchs_second_seed = \"none\"\n",
        )
        .unwrap();
        assert_eq!(r.config.eval.archs, None);
        assert_eq!(r.config.eval.archs_second_seed, None);
    }
}
