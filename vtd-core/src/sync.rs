//! The lock policy of the vtd crates, written once: lock poisoning is ignored.
//!
//! vtd-core's state and every crate above it (the nested binder, the inspection server, the
//! VMM examples) take their locks from here, so no call site repeats the policy.
//!
//! `std::sync` marks a lock poisoned when a thread panics while holding it, and every later
//! `lock()` returns an error. The unit does not propagate that error, for three reasons:
//!
//! - Every state these locks guard stays valid at each point a panic could happen: caches hold
//!   complete entries (a cache that lost an update is only a cache, and the invalidation epoch
//!   drops fills that raced an invalidation), and register updates are single stores into the
//!   register image. A panic would be a bug of the unit, not a half-done transaction to undo.
//! - The locks are shared by every vCPU and device thread of a VM. Turning one thread's panic
//!   into a panic of every thread that later touches the unit turns one bug into the loss of
//!   the whole VM, which no guest behaviour can justify.
//! - Observers and interrupt sinks (foreign code) never run under these locks (see
//!   `crate::delivery`), so their panics cannot poison them in the first place.
//!
//! The wrappers below (in the manner of crosvm's `common/sync` crate) return the guard
//! directly, so no call site repeats the policy. `parking_lot` would give the same semantics;
//! these thin wrappers avoid a dependency for four methods.

use std::sync::{self as std_sync, LockResult};

pub use std::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

/// Takes the guard out of a lock result, poisoned or not (the policy above).
fn ignore_poison<G>(result: LockResult<G>) -> G {
    result.unwrap_or_else(std_sync::PoisonError::into_inner)
}

/// A mutex whose `lock` ignores poisoning.
#[derive(Debug, Default)]
pub struct Mutex<T>(std_sync::Mutex<T>);

impl<T> Mutex<T> {
    /// A mutex holding `value`.
    pub const fn new(value: T) -> Self {
        Self(std_sync::Mutex::new(value))
    }

    /// Locks, whether or not a panicking holder poisoned the lock.
    pub fn lock(&self) -> std_sync::MutexGuard<'_, T> {
        ignore_poison(self.0.lock())
    }
}

/// A reader-writer lock whose `read` and `write` ignore poisoning.
#[derive(Debug, Default)]
pub struct RwLock<T>(std_sync::RwLock<T>);

impl<T> RwLock<T> {
    /// A reader-writer lock holding `value`.
    pub const fn new(value: T) -> Self {
        Self(std_sync::RwLock::new(value))
    }

    /// Shared access, whether or not the lock is poisoned.
    pub fn read(&self) -> std_sync::RwLockReadGuard<'_, T> {
        ignore_poison(self.0.read())
    }

    /// Exclusive access, whether or not the lock is poisoned.
    pub fn write(&self) -> std_sync::RwLockWriteGuard<'_, T> {
        ignore_poison(self.0.write())
    }
}

/// A condition variable whose `wait` ignores poisoning of the mutex it releases.
#[derive(Debug, Default)]
pub struct Condvar(std_sync::Condvar);

impl Condvar {
    /// Releases `guard`, waits for a notification and locks again, ignoring poisoning.
    pub fn wait<'a, T>(&self, guard: std_sync::MutexGuard<'a, T>) -> std_sync::MutexGuard<'a, T> {
        ignore_poison(self.0.wait(guard))
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.0.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_under_the_lock_does_not_poison_it_for_others() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let rw = std::sync::Arc::new(RwLock::new(2));
        let (m2, rw2) = (m.clone(), rw.clone());
        let r = std::thread::spawn(move || {
            let _g = m2.lock();
            let _w = rw2.write();
            panic!("bug while holding the locks");
        })
        .join();
        assert!(r.is_err());
        *m.lock() += 1;
        assert_eq!(*m.lock(), 2);
        *rw.write() += 1;
        assert_eq!(*rw.read(), 3);
    }
}
