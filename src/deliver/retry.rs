//! Pure retry policy: when the next attempt happens, from the attempt count, the configured base,
//! a jitter sample and the receiver's `Retry-After`. No clock, no randomness of its own.
//!
//! SPEC schedule with the default 30 s base: 30 s, 2 m, 8 m, 32 m, 2 h 8 m, 8 h 32 m (×4 each
//! time), ±10 % jitter.

use std::time::Duration;

/// Longest `Retry-After` honoured, so a receiver cannot park a delivery for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max_retries: u32,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NextStep {
    RetryAfter(Duration),
    DeadLetter,
}

impl RetryPolicy {
    /// `failed_attempts` counts attempts made so far (1 after the first failure). `jitter` is
    /// a sample in [-1, 1] scaled to ±10 %. `retry_after` is the receiver's wish on 429/503;
    /// it replaces the schedule when it is longer, within [`MAX_RETRY_AFTER`].
    pub fn next_step(
        &self,
        failed_attempts: u32,
        jitter: f64,
        retry_after: Option<Duration>,
    ) -> NextStep {
        if failed_attempts > self.max_retries {
            return NextStep::DeadLetter;
        }
        let exponent = failed_attempts.saturating_sub(1).min(20);
        let scheduled = self.base.as_secs_f64() * 4f64.powi(exponent as i32);
        let jittered = scheduled * (1.0 + 0.1 * jitter.clamp(-1.0, 1.0));
        let mut delay = Duration::from_secs_f64(jittered.max(0.0));
        if let Some(wish) = retry_after {
            delay = delay.max(wish.min(MAX_RETRY_AFTER));
        }
        NextStep::RetryAfter(delay)
    }
}

/// Reads a `Retry-After` value in its delta-seconds form (RFC 9110 §10.2.3); the HTTP-date form
/// is read as well, against `now_unix_s`.
pub fn parse_retry_after(value: &str, now_unix_s: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let seconds = date.timestamp().checked_sub(now_unix_s)?;
    u64::try_from(seconds).ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(30),
            max_retries: 6,
        }
    }

    #[test]
    fn default_schedule_matches_spec() {
        let delays: Vec<u64> = (1..=6)
            .map(|n| match policy().next_step(n, 0.0, None) {
                NextStep::RetryAfter(delay) => delay.as_secs(),
                NextStep::DeadLetter => panic!("attempt {n} should retry"),
            })
            .collect();
        assert_eq!(delays, [30, 120, 480, 1920, 7680, 30720]);
        assert_eq!(policy().next_step(7, 0.0, None), NextStep::DeadLetter);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let low = policy().next_step(2, -1.0, None);
        let high = policy().next_step(2, 5.0, None);
        assert_eq!(low, NextStep::RetryAfter(Duration::from_secs(108)));
        assert_eq!(high, NextStep::RetryAfter(Duration::from_secs(132)));
    }

    #[test]
    fn retry_after_extends_but_never_shortens_and_is_capped() {
        let longer = policy().next_step(1, 0.0, Some(Duration::from_secs(600)));
        let shorter = policy().next_step(1, 0.0, Some(Duration::from_secs(1)));
        let huge = policy().next_step(1, 0.0, Some(Duration::from_secs(10 * 24 * 3600)));
        assert_eq!(longer, NextStep::RetryAfter(Duration::from_secs(600)));
        assert_eq!(shorter, NextStep::RetryAfter(Duration::from_secs(30)));
        assert_eq!(huge, NextStep::RetryAfter(MAX_RETRY_AFTER));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            parse_retry_after(" 120 ", 0),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", 40),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", 0), None);
        assert_eq!(parse_retry_after("-5", 0), None);
    }
}
