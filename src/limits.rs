//! Process limits set at start. The soft limit on open descriptors is raised to the hard
//! one: the default soft limit (1,024 on most systems) is low for a daemon that holds store
//! connections, outgoing HTTP connections, hooks' pipes and a listener's clients at once.
//! Nothing is called when the soft limit already equals the hard one (as under the systemd
//! unit, whose `LimitNOFILE=` sets both, and whose system-call filter refuses `setrlimit`).

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The kernel's default `fs.nr_open`.
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// What [`raise_nofile`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nofile {
    /// The soft limit was raised.
    Raised {
        /// The soft limit before.
        from: u64,
        /// The soft limit now.
        to: u64,
    },
    /// The soft limit already equals the hard one.
    AtHard(u64),
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (at most 1,048,576).
pub fn raise_nofile() -> nix::Result<Nofile> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    // An unlimited hard limit cannot be the soft one (the kernel caps descriptors at
    // fs.nr_open, 1,048,576 by default).
    let to = hard.min(NR_OPEN_DEFAULT);
    if soft >= to {
        return Ok(Nofile::AtHard(soft));
    }
    setrlimit(Resource::RLIMIT_NOFILE, to, hard)?;
    Ok(Nofile::Raised { from: soft, to })
}
