//! What the scheduler injects, drawn from a seed: a small deterministic
//! PRNG (SplitMix64, so a seed means the same faults on every platform and
//! every version of every crate), the fault kinds, and the schedule of a
//! CI round or a soak.

use std::fmt;
use std::time::Duration;

/// The seed of the CI round, unless `FANOUT_CHAOS_SEED` says otherwise.
pub const DEFAULT_SEED: u64 = 0x00C0_FFEE_5EED_0014;

/// SplitMix64 (Steele, Lea, Flood 2014): one 64-bit state, full period,
/// good enough to pick faults.
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[lo, hi]` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next_u64() % (hi - lo + 1))
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Which nodes' Redis connections a proxy fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    All,
    Node(usize),
}

impl fmt::Display for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reach::All => write!(f, "every node"),
            Reach::Node(slot) => write!(f, "node slot {slot}"),
        }
    }
}

/// How Redis is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseHow {
    /// `CLIENT PAUSE <ms> ALL`: commands wait, connections stay served.
    ClientPause,
    /// SIGSTOP, then SIGCONT: the process stops entirely.
    Sigstop,
}

/// One fault. Durations and targets are drawn when the fault is planned,
/// so a seed fixes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a node; start a new one in its slot after `down`.
    KillNode { slot: usize, down: Duration },
    /// SIGTERM a node (it drains: 1012 to its clients); a new one after `down`.
    DrainNode { slot: usize, down: Duration },
    /// Redis SIGKILLed (`frozen`: SIGSTOPped, so connections stay up and
    /// nothing answers), then a node SIGTERMed while Redis is away: the
    /// drain must not depend on Redis (issue 14 item 4). Redis (with its
    /// data) and a new node come back afterwards.
    DrainNodeWithoutRedis { slot: usize, frozen: bool },
    /// SIGKILL Redis; restart it after `down` with its append-only file
    /// (`persist`) or wiped (it comes back empty).
    KillRedis { persist: bool, down: Duration },
    /// Redis stops answering for `pause`.
    PauseRedis { how: PauseHow, pause: Duration },
    /// The proxies stop moving bytes for `stall`.
    StallProxy { reach: Reach, stall: Duration },
    /// The proxies reset every connection.
    CutProxy { reach: Reach },
    /// A client on the node in `slot` stops reading while a room it is in
    /// is flooded: it must be closed with 4009, nobody else may suffer.
    SlowConsumer { slot: usize },
}

/// The kinds, in the order a CI round's permutation starts from, by the
/// names `FANOUT_CHAOS_FAULTS` takes.
pub const KIND_NAMES: [&str; 11] = [
    "kill-node",
    "drain-node",
    "kill-redis-aof",
    "kill-redis-empty",
    "pause-short",
    "pause-long",
    "stall-short",
    "stall-long",
    "cut",
    "slow-consumer",
    "drain-without-redis",
];
pub const KINDS: usize = KIND_NAMES.len();

impl Fault {
    /// Draws fault kind `kind` (0..KINDS) with its parameters.
    /// `command_timeout` sizes the pauses and stalls: shorter and longer.
    pub fn draw(kind: usize, rng: &mut Prng, command_timeout: Duration) -> Self {
        let short = command_timeout * 2 / 5;
        let long = command_timeout * 5 / 2;
        let slot = rng.below(3);
        match kind {
            0 => Fault::KillNode {
                slot,
                down: rng.millis(200, 1500),
            },
            1 => Fault::DrainNode {
                slot,
                down: rng.millis(200, 1000),
            },
            2 => Fault::KillRedis {
                persist: true,
                down: rng.millis(300, 2000),
            },
            3 => Fault::KillRedis {
                persist: false,
                down: rng.millis(300, 2000),
            },
            4 => Fault::PauseRedis {
                how: if rng.coin() {
                    PauseHow::ClientPause
                } else {
                    PauseHow::Sigstop
                },
                pause: short,
            },
            5 => Fault::PauseRedis {
                how: if rng.coin() {
                    PauseHow::ClientPause
                } else {
                    PauseHow::Sigstop
                },
                pause: long,
            },
            6 => Fault::StallProxy {
                reach: reach(rng),
                stall: short,
            },
            7 => Fault::StallProxy {
                reach: reach(rng),
                stall: long,
            },
            8 => Fault::CutProxy { reach: reach(rng) },
            9 => Fault::SlowConsumer { slot },
            _ => Fault::DrainNodeWithoutRedis {
                slot,
                frozen: rng.coin(),
            },
        }
    }

    /// Whether the fault is a latency spike shorter than the nodes'
    /// command timeout: nothing may be refused, lost or disturbed by it.
    pub fn is_short_spike(&self, command_timeout: Duration) -> bool {
        match self {
            Fault::PauseRedis { pause, .. } => *pause < command_timeout,
            Fault::StallProxy { stall, .. } => *stall < command_timeout,
            _ => false,
        }
    }
}

fn reach(rng: &mut Prng) -> Reach {
    match rng.below(4) {
        3 => Reach::All,
        slot => Reach::Node(slot),
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillNode { slot, down } => {
                write!(f, "SIGKILL node slot {slot}, restart after {down:?}")
            }
            Fault::DrainNode { slot, down } => {
                write!(
                    f,
                    "SIGTERM (drain) node slot {slot}, restart after {down:?}"
                )
            }
            Fault::DrainNodeWithoutRedis { slot, frozen } => write!(
                f,
                "{} redis, then SIGTERM (drain) node slot {slot} while redis is {}",
                if *frozen { "SIGSTOP" } else { "SIGKILL" },
                if *frozen { "frozen" } else { "down" }
            ),
            Fault::KillRedis { persist, down } => write!(
                f,
                "SIGKILL redis, restart after {down:?} {}",
                if *persist {
                    "with its append-only file"
                } else {
                    "empty"
                }
            ),
            Fault::PauseRedis { how, pause } => write!(
                f,
                "pause redis for {pause:?} ({})",
                match how {
                    PauseHow::ClientPause => "CLIENT PAUSE ALL",
                    PauseHow::Sigstop => "SIGSTOP/SIGCONT",
                }
            ),
            Fault::StallProxy { reach, stall } => {
                write!(f, "stall the redis connections of {reach} for {stall:?}")
            }
            Fault::CutProxy { reach } => write!(f, "reset the redis connections of {reach}"),
            Fault::SlowConsumer { slot } => {
                write!(f, "slow consumer on node slot {slot} under a flood")
            }
        }
    }
}

/// How long the run goes on.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// The CI round: every kind once (in an order drawn from the seed),
    /// then `extra` more drawn at random; stopped early, with a note, if it
    /// runs past `cap`.
    Round { extra: usize, cap: Duration },
    /// The kinds named in `FANOUT_CHAOS_FAULTS`, in that order (their
    /// parameters still drawn from the seed).
    Chosen {
        kinds: &'static [usize],
        cap: Duration,
    },
    /// A soak: random faults until `duration` has passed.
    Soak { duration: Duration },
}

/// Reads `FANOUT_CHAOS_SEED` (decimal or 0x-hex) and `FANOUT_CHAOS_DURATION`
/// (`90s`, `30m`, `2h`).
pub fn from_env() -> (u64, Mode) {
    let seed = match std::env::var("FANOUT_CHAOS_SEED") {
        Ok(s) => parse_seed(&s)
            .unwrap_or_else(|| panic!("FANOUT_CHAOS_SEED={s:?}: expected a decimal or 0x-hex u64")),
        Err(_) => DEFAULT_SEED,
    };
    if let Ok(list) = std::env::var("FANOUT_CHAOS_FAULTS")
        && !list.trim().is_empty()
    {
        let kinds: Vec<usize> = list
            .split(',')
            .map(|name| {
                KIND_NAMES
                    .iter()
                    .position(|k| *k == name.trim())
                    .unwrap_or_else(|| {
                        panic!("FANOUT_CHAOS_FAULTS: unknown fault {name:?}; known: {KIND_NAMES:?}")
                    })
            })
            .collect();
        let mode = Mode::Chosen {
            kinds: kinds.leak(),
            cap: Duration::from_secs(6 * 60),
        };
        return (seed, mode);
    }
    let mode = match std::env::var("FANOUT_CHAOS_DURATION") {
        Ok(s) if !s.trim().is_empty() => Mode::Soak {
            duration: parse_duration(&s).unwrap_or_else(|| {
                panic!("FANOUT_CHAOS_DURATION={s:?}: expected e.g. 90s, 30m or 2h")
            }),
        },
        _ => Mode::Round {
            extra: 2,
            cap: Duration::from_secs(6 * 60),
        },
    };
    (seed, mode)
}

pub fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim().replace('_', "");
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit.trim() {
        "s" | "sec" | "secs" => n,
        "m" | "min" | "mins" => n * 60,
        "h" | "hour" | "hours" => n * 3600,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// Draws faults: the CI round's permutation first, then uniform kinds.
pub struct Scheduler {
    rng: Prng,
    queue: Vec<usize>,
    command_timeout: Duration,
}

impl Scheduler {
    pub fn new(seed: u64, mode: Mode, command_timeout: Duration) -> Self {
        let mut rng = Prng::new(seed);
        let mut queue: Vec<usize> = (0..KINDS).collect();
        rng.shuffle(&mut queue);
        match mode {
            Mode::Round { extra, .. } => {
                for _ in 0..extra {
                    queue.push(rng.below(KINDS));
                }
            }
            Mode::Chosen { kinds, .. } => queue = kinds.to_vec(),
            Mode::Soak { .. } => {}
        }
        queue.reverse();
        Self {
            rng,
            queue,
            command_timeout,
        }
    }

    /// Faults left in a round (`None` in a soak: unbounded by count).
    pub fn planned(&self) -> usize {
        self.queue.len()
    }

    /// The next fault; in a round `None` once the plan is done.
    pub fn next(&mut self, soak: bool) -> Option<Fault> {
        let kind = match self.queue.pop() {
            Some(k) => k,
            None if soak => self.rng.below(KINDS),
            None => return None,
        };
        Some(Fault::draw(kind, &mut self.rng, self.command_timeout))
    }

    /// A number for load decisions (which clients churn).
    pub fn rng(&mut self) -> &mut Prng {
        &mut self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_durations_parse() {
        assert_eq!(parse_seed("0x10"), Some(16));
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed("0xC0FFEE_5EED"), Some(0xC0FFEE5EED));
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn a_round_draws_every_kind_and_a_seed_draws_the_same_faults() {
        let mode = Mode::Round {
            extra: 2,
            cap: Duration::from_secs(1),
        };
        let draw = |seed| {
            let mut s = Scheduler::new(seed, mode, Duration::from_secs(1));
            std::iter::from_fn(|| s.next(false)).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a.len(), KINDS + 2);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        let kinds: std::collections::BTreeSet<String> = a
            .iter()
            .map(|f| {
                format!("{f:?}")
                    .split([' ', '{'])
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(kinds.len(), 8, "{kinds:?}");
    }
}
