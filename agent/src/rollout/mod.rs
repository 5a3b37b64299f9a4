//! Rollout control (SPEC §7), the pure parts: waves, maintenance windows and
//! update locks. Each gateway decides from the commit, its own identity and
//! the policy in the repository; the sync cycle asks these modules.

pub mod lock;
pub mod wave;
pub mod window;

use serde::{Deserialize, Serialize};

/// `[rollout]` of a revision's bundle, checked (`bundle::rollout`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Policy {
    pub waves: Vec<wave::Wave>,
    /// Circuit breaker: hold a revision once this many gateways reported it
    /// failed or rolled back.
    pub max_failed: Option<u32>,
    /// `DAYS HH:MM-HH:MM`, each valid ([`window::Window::parse`]).
    pub windows: Vec<String>,
    /// IANA name; `None`: the gateway's own zone.
    pub timezone: Option<String>,
}
