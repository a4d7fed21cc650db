//! A byte budget: bounds how much data the packed pipelines hold in memory at once.
//!
//! Readers take a [`Permit`] for the bytes they are about to read; the permit travels with the
//! data (shared by every chunk cut from one buffer) and gives the bytes back when the last
//! holder drops it. Only plain threads wait for budget, never rayon workers, so sealing can
//! always make progress and free budget.

use std::sync::{Arc, Condvar, Mutex};

/// A counting semaphore measured in bytes.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    state: Mutex<BudgetState>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct BudgetState {
    used: usize,
    closed: bool,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            state: Mutex::new(BudgetState::default()),
            freed: Condvar::new(),
        })
    }

    /// Waits until `bytes` fit (a request larger than the whole budget waits until nothing
    /// else is held), then takes them. `None` once the budget was closed (the pipeline is
    /// shutting down).
    pub fn acquire(self: &Arc<Self>, bytes: usize) -> Option<Permit> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if state.used == 0 || state.used + bytes <= self.limit {
                state.used += bytes;
                return Some(Permit {
                    budget: Arc::clone(self),
                    bytes,
                });
            }
            state = self
                .freed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Wakes every waiter and makes further [`Budget::acquire`] calls fail.
    pub fn close(&self) {
        self.lock().closed = true;
        self.freed.notify_all();
    }

    /// Bytes currently held.
    pub fn used(&self) -> usize {
        self.lock().used
    }

    fn release(&self, bytes: usize) {
        let mut state = self.lock();
        state.used = state.used.saturating_sub(bytes);
        drop(state);
        self.freed.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Bytes taken from a [`Budget`], given back on drop.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Permit {
    /// Gives back what this permit holds beyond `bytes` (after a read came out smaller).
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.release(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn waits_until_bytes_are_given_back() {
        let budget = Budget::new(100);
        let first = budget.acquire(60).unwrap();
        let mut second = budget.acquire(40).unwrap();
        assert_eq!(budget.used(), 100);
        second.shrink_to(10);
        assert_eq!(budget.used(), 70);
        let waiter = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || budget.acquire(50).map(|permit| permit.bytes))
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "must wait for room");
        drop(first);
        assert_eq!(waiter.join().unwrap(), Some(50));
        drop(second);
        assert_eq!(budget.used(), 0);
        // Larger than the whole budget: granted when nothing else is held.
        assert!(budget.acquire(1000).is_some());
    }

    #[test]
    fn close_wakes_waiters() {
        let budget = Budget::new(10);
        let _held = budget.acquire(10).unwrap();
        let waiter = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || budget.acquire(5).is_none())
        };
        std::thread::sleep(Duration::from_millis(20));
        budget.close();
        assert!(waiter.join().unwrap());
    }
}
