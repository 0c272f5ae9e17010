//! Locks that outlive a panicking holder: the one way the host and hosting take a
//! `std` lock.
//!
//! Every critical section in them leaves its data consistent at each step (a single
//! assignment, a push, a remove), so a lock poisoned by a holder that panicked (a
//! provider's panic caught on that thread) still guards consistent data: taking it anyway
//! keeps one provider's panic from taking the host down with it.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex::lock`], ignoring poison (see the module's note).
pub trait Locked<T: ?Sized> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`RwLock::read`] and [`RwLock::write`], ignoring poison (see the module's note).
pub trait RwLocked<T: ?Sized> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLocked<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A value replaced as a whole at run time (a reload) and read far more often: readers
/// take the current `Arc` and keep it for as long as they need, so a replacement never
/// waits for them and never changes a value under a reader.
pub struct Current<T: ?Sized>(RwLock<std::sync::Arc<T>>);

impl<T: ?Sized> Current<T> {
    pub fn new(value: std::sync::Arc<T>) -> Self {
        Current(RwLock::new(value))
    }

    /// The value now.
    pub fn get(&self) -> std::sync::Arc<T> {
        self.0.read_locked().clone()
    }

    /// Replaces the value; returns the one it replaced.
    pub fn set(&self, value: std::sync::Arc<T>) -> std::sync::Arc<T> {
        std::mem::replace(&mut *self.0.write_locked(), value)
    }
}

impl<T: ?Sized + std::fmt::Debug> std::fmt::Debug for Current<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}
