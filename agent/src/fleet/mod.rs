//! The fleet seen from the broker (SPEC §5, §8): `tend fleet status`, `sync`
//! and, in builds with the `fleet-serve` feature, `serve`. Everything read
//! from the broker is hostile input ([`model`]).

pub mod broker;
pub mod metrics;
pub mod model;
#[cfg(feature = "fleet-serve")]
pub mod serve;
pub mod view;
