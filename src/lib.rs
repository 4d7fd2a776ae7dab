//! runner: reproducible weight-sharing NAS supernet training and evaluation.
//!
//! Layers, bottom up (each uses only those before it): `config` -> `space` + `nn` -> `data` ->
//! `train` -> `tricks` -> `run` -> `cli`. `rng` (named seeded streams) serves them all.

pub mod alloc;
pub mod cli;
pub mod collective;
pub mod config;
pub mod data;
pub mod nn;
pub mod rng;
pub mod run;
pub mod space;
pub mod train;
pub mod tricks;
