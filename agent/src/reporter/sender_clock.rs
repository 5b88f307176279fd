//! The agent's clock as heartbeats state it (`Heartbeat::sender_monotonic_us`), with a fault-injection seam.
//!
//! Normally the stamp is the time since the reporter started, read from tokio's monotonic clock. For fault
//! tests only, [`SenderClock`] can make that clock wrong the ways real clocks go wrong: an offset (a jump of
//! ±1 h) and a rate (running 2× fast). Coordinators stamp every heartbeat with their *own* receive time and
//! must not depend on the sender's stamp; this seam lets a test prove it. The `lateral-agent` binary exposes
//! it as `--fault-sender-clock OFFSET_S,RATE` (hidden from `--help`'s short list, documented as a
//! fault-injection switch); nothing else sets it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How the sender's stamp is derived from the real time since the reporter started. Default: exact.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SenderClock {
    /// Added to every stamp, seconds (may be negative; the stamp saturates at 0).
    pub offset_s: f64,
    /// The clock's rate against real time (1 = correct, 2 = twice as fast).
    pub rate: f64,
}

impl Default for SenderClock {
    fn default() -> Self {
        Self {
            offset_s: 0.0,
            rate: 1.0,
        }
    }
}

impl SenderClock {
    /// The stamp, in microseconds, for `elapsed` real time since the reporter started.
    pub fn stamp_us(&self, elapsed: Duration) -> u64 {
        let us = elapsed.as_secs_f64() * self.rate + self.offset_s;
        // `as` saturates: negative and NaN become 0, too large becomes u64::MAX.
        (us * 1e6) as u64
    }

    /// Whether the clock is the real one.
    pub fn is_exact(&self) -> bool {
        *self == Self::default()
    }
}

impl fmt::Display for SenderClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.offset_s, self.rate)
    }
}

impl FromStr for SenderClock {
    type Err = String;

    /// `OFFSET_S,RATE`, e.g. `3600,1` (jumped an hour ahead) or `0,2` (twice as fast).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (offset, rate) = s.split_once(',').ok_or_else(|| {
            format!("expected OFFSET_S,RATE (e.g. `-3600,1` or `0,2`), got `{s}`")
        })?;
        let offset_s: f64 = offset
            .trim()
            .parse()
            .map_err(|e| format!("offset `{offset}`: {e}"))?;
        let rate: f64 = rate
            .trim()
            .parse()
            .map_err(|e| format!("rate `{rate}`: {e}"))?;
        if !offset_s.is_finite() || offset_s.abs() > 1e9 {
            return Err(format!(
                "offset `{offset}`: expected finite seconds within ±1e9"
            ));
        }
        if !(rate.is_finite() && rate > 0.0 && rate <= 1000.0) {
            return Err(format!(
                "rate `{rate}`: expected a positive rate up to 1000"
            ));
        }
        Ok(Self { offset_s, rate })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_by_default_skewed_on_request() {
        let second = Duration::from_secs(1);
        assert_eq!(SenderClock::default().stamp_us(second), 1_000_000);
        let fast: SenderClock = "0,2".parse().unwrap();
        assert_eq!(fast.stamp_us(second), 2_000_000);
        let ahead: SenderClock = "3600,1".parse().unwrap();
        assert_eq!(ahead.stamp_us(second), 3_601_000_000);
        let behind: SenderClock = "-3600,1".parse().unwrap();
        assert_eq!(behind.stamp_us(second), 0, "saturates at 0");
        assert!("1".parse::<SenderClock>().is_err());
        assert!("0,0".parse::<SenderClock>().is_err());
        assert!("nan,1".parse::<SenderClock>().is_err());
    }
}
