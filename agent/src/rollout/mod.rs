//! Rollout control (SPEC §7), the pure parts: waves, maintenance windows and
//! update locks. Each gateway decides from the commit, its own identity and
//! the policy in the repository; the sync cycle asks these modules.

pub mod gate;
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

/// Why a fetched revision is not applied yet (SPEC §7 `waiting_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitingFor {
    /// Its wave is not due yet.
    Wave,
    /// No maintenance window is open.
    Window,
    /// An app holds an update lock.
    Lock,
    /// The fleet reported it failing on too many gateways (the circuit breaker).
    Fleet,
}

impl WaitingFor {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitingFor::Wave => "wave",
            WaitingFor::Window => "window",
            WaitingFor::Lock => "lock",
            WaitingFor::Fleet => "fleet",
        }
    }
}

/// A fetched revision that is not applied yet, and why (kept with the
/// revision pointers, so a restart keeps when a lock was first seen).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    pub commit: String,
    pub waiting_for: WaitingFor,
    /// When it may be applied, if known (a wave's due time, a window's
    /// opening, a lock's timeout).
    pub due_at: Option<jiff::Timestamp>,
    /// Since when it has waited for this reason.
    pub since: jiff::Timestamp,
    /// What it waits for, for people: the wave's name, the windows, the
    /// locks, the failing gateways.
    pub detail: String,
    /// What else the status says of it (why the circuit breaker cannot hold
    /// it now, say).
    #[serde(default)]
    pub note: Option<String>,
}

/// What the rollout policy and the gateway say about applying a prepared
/// revision now, gathered by [`gate::gather`]; `cycle::step` decides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gate {
    /// The gateway's wave and when the revision is due for it (committer time
    /// plus the wave's `after`); `None` without waves.
    pub wave: Option<(String, jiff::Timestamp)>,
    /// With windows and none open now: when the next opens, and the windows.
    pub window_closed: Option<(Option<jiff::Timestamp>, String)>,
    /// Update locks held now.
    pub locks: Vec<String>,
    pub lock_timeout: Option<std::time::Duration>,
    /// Gateways that reported this revision failed; `None`: the breaker is
    /// off (no `[mqtt]` or no `max_failed`).
    pub failing: Option<Vec<String>>,
    pub max_failed: Option<u32>,
    /// Said with the waiting revision's status: why the breaker cannot
    /// hold anything now (no `[mqtt]`, the fleet's reports not read yet).
    pub note: Option<String>,
}
