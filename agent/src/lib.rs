//! tend: a pull-based GitOps agent for IoT gateways.
//!
//! The modules, in the order a sync uses them: [`config`] (the local trust
//! boundary), [`source`] (Git), [`bundle`] (what the repository declares for this
//! gateway), [`reconcile`] (plan, then act), [`store`] (revisions, contents,
//! inventory), [`sync`] (the cycle that ties them together), [`cli`] (commands).

pub mod atomic;
pub mod bounds;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod control;
pub mod cycle;
pub mod daemon;
pub mod fleet;
pub mod hash;
pub mod health;
pub mod inventory;
pub mod notify;
pub mod offline;
pub mod preflight;
pub mod process;
pub mod prom;
pub mod reconcile;
pub mod report;
pub mod rollout;
pub mod secrets;
pub mod sim;
pub mod source;
pub mod store;
pub mod sync;
pub mod trust;
