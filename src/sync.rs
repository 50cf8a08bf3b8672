//! Locks that outlive a panic. A panic while a lock is held (a bug, which the mount survives:
//! see `mount::fuse::session`) poisons it; the data behind cab's locks stays consistent at
//! every step, so every user takes the lock anyway. One name for that, instead of
//! `.lock().unwrap_or_else(|e| e.into_inner())` at every site.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex::lock`], poisoned or not.
pub trait MutexExt<T: ?Sized> {
    /// The guard, whether or not a panic poisoned the lock.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> MutexExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// [`RwLock::read`] and [`RwLock::write`], poisoned or not.
pub trait RwLockExt<T: ?Sized> {
    /// A read guard, whether or not a panic poisoned the lock.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// A write guard, whether or not a panic poisoned the lock.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|e| e.into_inner())
    }
}
