//! runner: reproducible weight-sharing NAS supernet training and evaluation.
//!
//! Layers, bottom up (each uses only those before it): `config` -> `space` + `nn` -> `data` ->
//! `train` -> `tricks` -> `run` -> `cli`.

pub mod config;
pub mod nn;
pub mod rng;
pub mod data;
pub mod train;
