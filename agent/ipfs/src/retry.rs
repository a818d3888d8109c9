//! The one backoff of the project: pauses that start small and double after each wait, up
//! to a cap. The IPFS client's bounded retries use it, and so do the learner and the
//! aggregator when they poll the chain or retry a step whose node did not answer. It
//! lives here, in the lowest crate every networked crate uses (`fl-contracts` depends on
//! `fl-ipfs` for CIDs), so chain and IPFS users reach it without a new crate.

use std::time::Duration;

/// Doubling pauses from `first` up to `max`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Pauses of `first`, `2 * first`, `4 * first`, ... never longer than `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let first = first.min(max);
        Backoff { first, next: first, max }
    }

    /// The pause the next [`Backoff::wait`] will take.
    pub fn next_pause(&self) -> Duration {
        self.next
    }

    /// Returns the pause to take now and doubles the following one (up to the cap).
    pub fn advance(&mut self) -> Duration {
        let pause = self.next;
        // Saturating: a cap of `Duration::MAX` (no cap) must not overflow.
        self.next = self.next.saturating_mul(2).min(self.max);
        pause
    }

    /// Sleeps for the current pause, then doubles it.
    pub fn wait(&mut self) {
        std::thread::sleep(self.advance());
    }

    /// Back to the first pause, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_reset() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(250), ms(1500));
        let pauses: Vec<Duration> = (0..5).map(|_| backoff.advance()).collect();
        assert_eq!(pauses, vec![ms(250), ms(500), ms(1000), ms(1500), ms(1500)]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), ms(250));
        // A first pause above the cap is the cap.
        assert_eq!(Backoff::new(ms(500), ms(100)).next_pause(), ms(100));
        // No cap at all does not overflow.
        let mut open = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        open.advance();
        open.advance();
        assert_eq!(open.next_pause(), Duration::MAX);
    }
}
