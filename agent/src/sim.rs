//! Points where the deterministic simulation of the whole agent
//! (`sync/sim.rs`) may kill it: every store write (`store::memory`), every
//! file staged and renamed into place (`atomic`), every command a bundle
//! runs. Outside the simulation (and in every build but the unit tests)
//! [`point`] does nothing.
//!
//! A kill is a panic with a [`Killed`] payload, caught by the simulation,
//! which then drops the agent without running anything more of it, keeps
//! what a real kill would keep (the store's flushed state and a prefix of
//! its log, the files on disk) and starts a new agent on it.

/// The payload of a simulated kill: where it struck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Killed(pub &'static str);

#[cfg(test)]
thread_local! {
    /// Kill points to pass before the next kill; `None`: no kill armed.
    static COUNTDOWN: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
    /// Run blocking steps inline (the simulation's single thread).
    static INLINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// What a unit test does from outside when the agent passes a point:
    /// (the point, the change).
    static MEDDLE: std::cell::RefCell<Option<Meddling>> = const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
type Meddling = (&'static str, Box<dyn FnMut()>);

/// At the next pass through the point `at` on this thread, run `change`
/// (someone else touching the gateway at that instant), once.
#[cfg(test)]
pub fn meddle(at: &'static str, change: impl FnMut() + 'static) {
    MEDDLE.with(|m| *m.borrow_mut() = Some((at, Box::new(change))));
}

/// A point where the agent may be killed.
#[inline]
pub fn point(_what: &'static str) {
    #[cfg(test)]
    if let Some((_, mut change)) = MEDDLE.with(|m| m.borrow_mut().take_if(|(at, _)| *at == _what)) {
        change();
    }
    #[cfg(test)]
    COUNTDOWN.with(|c| match c.get() {
        Some(0) => {
            c.set(None);
            std::panic::panic_any(Killed(_what));
        }
        Some(n) => c.set(Some(n - 1)),
        None => {}
    });
}

/// Kill the agent now (a health check or hook of the simulation that takes
/// its parent down).
#[cfg(test)]
pub fn die(what: &'static str) -> ! {
    COUNTDOWN.with(|c| c.set(None));
    std::panic::panic_any(Killed(what))
}

/// Kill the agent at the `n`-th kill point from now (`None`: disarm).
#[cfg(test)]
pub fn arm(n: Option<u64>) {
    COUNTDOWN.with(|c| c.set(n));
}

/// Run the agent's blocking steps on this thread (the simulation), or on
/// tokio's blocking pool (everything else).
#[cfg(test)]
pub fn set_inline(on: bool) {
    INLINE.with(|c| c.set(on));
}

/// Whether blocking steps run on this thread.
#[inline]
pub fn inline() -> bool {
    #[cfg(test)]
    {
        INLINE.with(std::cell::Cell::get)
    }
    #[cfg(not(test))]
    {
        false
    }
}
