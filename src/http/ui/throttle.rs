//! A small per-node brake on guessing keys at the login form: after [`MAX_FAILURES`] failed
//! logins from one client within [`WINDOW`], that client is answered 429 for [`BLOCK`], whatever
//! key it sends, so a correct guess inside the block is not confirmed either.
//!
//! In memory and per node: a restart forgets it, and N nodes allow N times as many guesses. A
//! client is its IP address (an IPv6 client its /64, which one host usually holds whole) as the
//! HTTP server reports it; when the server does not report peer addresses, every client shares
//! one budget, which can lock everyone out of the login form for a minute but never lets more
//! guesses through. Keys are 32 random bytes, so this is about noise and log volume rather than
//! a real chance of a guess.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(super) const MAX_FAILURES: u32 = 10;
pub(super) const WINDOW: Duration = Duration::from_secs(60);
pub(super) const BLOCK: Duration = Duration::from_secs(60);
/// Bounds the memory the throttle takes; stale entries go first, then the oldest.
const MAX_CLIENTS: usize = 10_000;

/// Whom the failures are counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Client {
    Ip(IpAddr),
    /// The server reports no peer address.
    Unknown,
}

impl Client {
    pub(super) fn from_ip(ip: Option<IpAddr>) -> Self {
        match ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V6(v6)) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Self::Ip(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            Some(v4) => Self::Ip(v4),
            None => Self::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

impl Failures {
    fn stale(&self, now: Instant) -> bool {
        self.blocked_until.is_none_or(|until| until <= now)
            && now.duration_since(self.since) >= WINDOW
    }
}

#[derive(Debug, Default)]
pub(super) struct LoginThrottle(Mutex<HashMap<Client, Failures>>);

impl LoginThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Client, Failures>> {
        // Plain counters: after a panic elsewhere they are still good to use.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long this client must still wait, if it is blocked.
    pub(super) fn blocked(&self, client: Client, now: Instant) -> Option<Duration> {
        let until = self.lock().get(&client)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    pub(super) fn failed(&self, client: Client, now: Instant) {
        let mut clients = self.lock();
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            clients.retain(|_, failures| !failures.stale(now));
            if clients.len() >= MAX_CLIENTS
                && let Some(oldest) = clients
                    .iter()
                    .min_by_key(|(_, failures)| failures.since)
                    .map(|(client, _)| *client)
            {
                clients.remove(&oldest);
            }
        }
        let failures = clients.entry(client).or_insert(Failures {
            since: now,
            count: 0,
            blocked_until: None,
        });
        if failures.stale(now) {
            *failures = Failures {
                since: now,
                count: 0,
                blocked_until: None,
            };
        }
        failures.count += 1;
        if failures.count >= MAX_FAILURES {
            failures.blocked_until = Some(now + BLOCK);
        }
    }

    /// A correct key: the client's earlier mistakes are forgiven.
    pub(super) fn succeeded(&self, client: Client) {
        self.lock().remove(&client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eleventh_attempt_in_a_minute_is_blocked_for_a_minute() {
        let throttle = LoginThrottle::default();
        let client = Client::from_ip(Some("192.0.2.7".parse().expect("ip")));
        let other = Client::from_ip(Some("192.0.2.8".parse().expect("ip")));
        let start = Instant::now();
        for n in 0..MAX_FAILURES {
            assert_eq!(throttle.blocked(client, start), None, "attempt {n}");
            throttle.failed(client, start + Duration::from_secs(u64::from(n)));
        }
        let later = start + Duration::from_secs(10);
        assert!(throttle.blocked(client, later).is_some());
        assert_eq!(
            throttle.blocked(other, later),
            None,
            "another client is not blocked"
        );
        assert_eq!(
            throttle.blocked(client, later + BLOCK),
            None,
            "a minute later"
        );
    }

    #[test]
    fn failures_spread_over_more_than_a_minute_do_not_block() {
        let throttle = LoginThrottle::default();
        let client = Client::Unknown;
        let start = Instant::now();
        for n in 0..MAX_FAILURES * 2 {
            throttle.failed(client, start + WINDOW / 5 * n);
        }
        assert_eq!(throttle.blocked(client, start + WINDOW / 5 * 40), None);
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let a = Client::from_ip(Some("2001:db8:1:2::1".parse().expect("ip")));
        let b = Client::from_ip(Some("2001:db8:1:2:ffff::9".parse().expect("ip")));
        let c = Client::from_ip(Some("2001:db8:1:3::1".parse().expect("ip")));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mapped = Client::from_ip(Some("::ffff:192.0.2.7".parse().expect("ip")));
        assert_eq!(
            mapped,
            Client::from_ip(Some("192.0.2.7".parse().expect("ip")))
        );
    }
}
