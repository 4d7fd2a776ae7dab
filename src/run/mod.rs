//! Running an experiment: the results folder, checkpoints, the training pipeline, summaries.

pub mod checkpoint;
pub mod dir;
pub mod pipeline;
pub mod records;
pub mod execute;
pub mod bench;
pub mod diff;
pub mod folder;
pub mod plot;
pub mod report;
pub mod show;
pub mod table;
pub mod tensorboard;
