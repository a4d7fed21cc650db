//! Who was heard from when. Volatile on purpose: a check-in costs a map
//! update, never a disk or etcd write. After a controller restart every
//! machine starts with a fresh lease.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Last contact per machine, and which machines are flagged as lost.
#[derive(Debug, Default)]
pub struct Liveness {
    inner: Mutex<LivenessInner>,
}

#[derive(Debug, Default)]
struct LivenessInner {
    last_seen: HashMap<String, Instant>,
    lost: HashSet<String>,
}

impl Liveness {
    /// Records contact from `machine_id`. Returns true if it had been lost.
    pub fn touch(&self, machine_id: &str) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.last_seen.get_mut(machine_id) {
            Some(seen) => *seen = Instant::now(),
            None => {
                inner
                    .last_seen
                    .insert(machine_id.to_string(), Instant::now());
            }
        }
        inner.lost.remove(machine_id)
    }

    /// Time since the machine was last heard from, if ever.
    pub fn silent_for(&self, machine_id: &str) -> Option<Duration> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.last_seen.get(machine_id).map(|seen| seen.elapsed())
    }

    /// Milliseconds since the Unix epoch of the last contact (0: never).
    pub fn last_seen_unix_ms(&self, machine_id: &str) -> i64 {
        self.silent_for(machine_id).map_or(0, |silent| {
            crate::model::now_ms() - silent.as_millis() as i64
        })
    }

    /// Flags machines among `candidates` silent for longer than `lease`.
    /// Returns only the newly lost ones.
    pub fn expire<'a>(
        &self,
        candidates: impl Iterator<Item = &'a str>,
        lease: Duration,
    ) -> Vec<String> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut newly_lost = Vec::new();
        for machine in candidates {
            let expired = match inner.last_seen.get(machine) {
                Some(seen) => now.duration_since(*seen) > lease,
                None => {
                    inner.last_seen.insert(machine.to_string(), now);
                    false
                }
            };
            if expired && inner.lost.insert(machine.to_string()) {
                newly_lost.push(machine.to_string());
            }
        }
        newly_lost
    }

    /// Whether the machine is currently flagged as lost.
    pub fn is_lost(&self, machine_id: &str) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.lost.contains(machine_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lease_expires_once_and_contact_clears_it() {
        let liveness = Liveness::default();
        liveness.touch("m1");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            liveness
                .expire(["m1"].into_iter(), Duration::from_secs(10))
                .is_empty()
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            liveness.expire(["m1"].into_iter(), Duration::from_secs(10)),
            vec!["m1"]
        );
        assert!(
            liveness
                .expire(["m1"].into_iter(), Duration::from_secs(10))
                .is_empty()
        );
        assert!(liveness.is_lost("m1"));
        assert!(liveness.touch("m1"));
        assert!(!liveness.is_lost("m1"));
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_machines_start_with_a_fresh_lease() {
        let liveness = Liveness::default();
        assert!(
            liveness
                .expire(["m2"].into_iter(), Duration::from_secs(1))
                .is_empty()
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            liveness.expire(["m2"].into_iter(), Duration::from_secs(1)),
            vec!["m2"]
        );
    }
}
