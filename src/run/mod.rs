//! Running an experiment: the results folder, checkpoints, the training pipeline, summaries.

pub mod bench;
pub mod checkpoint;
pub mod diff;
pub mod dir;
pub mod dist;
pub mod execute;
pub mod folder;
pub mod launch;
pub mod pipeline;
pub mod pipeline_ptb;
pub mod plot;
pub mod records;
pub mod report;
pub mod selftest;
pub mod setup;
pub mod show;
pub mod sweep;
pub mod sweep_report;
pub mod table;
pub mod tensorboard;
