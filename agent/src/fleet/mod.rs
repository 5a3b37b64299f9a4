//! The fleet seen from the broker (SPEC §5, §8): `tend fleet sync` in every
//! build; `status`, `serve` and `announce` in builds with the `fleet-serve`
//! feature (the operator's amd64 build, which a CI runner installs too; the
//! gateway builds leave them out, decision 0004).
//! Everything read from the broker is hostile input (`model`).

pub mod broker;
#[cfg(feature = "fleet-serve")]
pub mod ingest;
#[cfg(feature = "fleet-serve")]
pub mod metrics;
#[cfg(feature = "fleet-serve")]
pub mod model;
#[cfg(feature = "fleet-serve")]
pub mod serve;
#[cfg(feature = "fleet-serve")]
pub mod view;
