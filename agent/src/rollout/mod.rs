//! Rollout control (SPEC §7), the pure parts: waves, maintenance windows and
//! update locks. Each gateway decides from the commit, its own identity and
//! the policy in the repository; the sync cycle asks these modules.

pub mod lock;
pub mod wave;
pub mod window;
