//! The one switch between real and model-checked synchronisation primitives.
//!
//! Normally the crate uses `spin` locks and `core` atomics (no OS, no allocation, usable from
//! any context a kernel driver allows spinning in). Under `--cfg loom` the same names map onto
//! loom's primitives so the lock protocols can be model-checked (`tests/loom_*.rs`). No other
//! module names `spin`, `loom` or `core::sync::atomic` directly.
//!
//! The wrappers expose one small API in both modes: `Mutex::lock`, `RwLock::read`,
//! `RwLock::write`, each returning a guard. Poisoning (a loom-only concept here) is ignored: a
//! panic inside a critical section is a bug this crate forbids anyway.

#[cfg(not(loom))]
mod imp {
    pub use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

    /// A mutual-exclusion lock (`spin::Mutex` outside loom).
    #[derive(Debug, Default)]
    pub struct Mutex<T>(spin::Mutex<T>);
    /// Guard of [`Mutex`].
    pub type MutexGuard<'a, T> = spin::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        /// A new unlocked mutex holding `v`.
        pub const fn new(v: T) -> Self {
            Mutex(spin::Mutex::new(v))
        }
        /// Lock, spinning until the lock is free.
        pub fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
        /// The value, when the mutex is owned exclusively.
        pub fn get_mut(&mut self) -> &mut T {
            self.0.get_mut()
        }
    }

    /// A reader-writer lock (`spin::RwLock` outside loom).
    #[derive(Debug, Default)]
    pub struct RwLock<T>(spin::RwLock<T>);
    /// Shared guard of [`RwLock`].
    pub type RwLockReadGuard<'a, T> = spin::RwLockReadGuard<'a, T>;
    /// Exclusive guard of [`RwLock`].
    pub type RwLockWriteGuard<'a, T> = spin::RwLockWriteGuard<'a, T>;

    impl<T> RwLock<T> {
        /// A new unlocked lock holding `v`.
        pub const fn new(v: T) -> Self {
            RwLock(spin::RwLock::new(v))
        }
        /// Take the lock shared.
        pub fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0.read()
        }
        /// Take the lock exclusively.
        pub fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write()
        }
        /// The value, when the lock is owned exclusively.
        pub fn get_mut(&mut self) -> &mut T {
            self.0.get_mut()
        }
    }

    /// Hint to the CPU that we are spinning.
    pub fn spin_hint() {
        core::hint::spin_loop();
    }
}

#[cfg(loom)]
mod imp {
    pub use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

    /// A mutual-exclusion lock (`loom::sync::Mutex` under loom).
    #[derive(Debug)]
    pub struct Mutex<T>(loom::sync::Mutex<T>);
    /// Guard of [`Mutex`].
    pub type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        /// A new unlocked mutex holding `v`.
        pub fn new(v: T) -> Self {
            Mutex(loom::sync::Mutex::new(v))
        }
        /// Lock.
        pub fn lock(&self) -> MutexGuard<'_, T> {
            match self.0.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            }
        }
        /// The value, when the mutex is owned exclusively.
        pub fn get_mut(&mut self) -> &mut T {
            match self.0.get_mut() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            }
        }
    }

    impl<T: Default> Default for Mutex<T> {
        fn default() -> Self {
            Mutex::new(T::default())
        }
    }

    /// A reader-writer lock (`loom::sync::RwLock` under loom).
    #[derive(Debug)]
    pub struct RwLock<T>(loom::sync::RwLock<T>);
    /// Shared guard of [`RwLock`].
    pub type RwLockReadGuard<'a, T> = loom::sync::RwLockReadGuard<'a, T>;
    /// Exclusive guard of [`RwLock`].
    pub type RwLockWriteGuard<'a, T> = loom::sync::RwLockWriteGuard<'a, T>;

    impl<T> RwLock<T> {
        /// A new unlocked lock holding `v`.
        pub fn new(v: T) -> Self {
            RwLock(loom::sync::RwLock::new(v))
        }
        /// Take the lock shared.
        pub fn read(&self) -> RwLockReadGuard<'_, T> {
            match self.0.read() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            }
        }
        /// Take the lock exclusively.
        pub fn write(&self) -> RwLockWriteGuard<'_, T> {
            match self.0.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            }
        }
        /// The value, when the lock is owned exclusively.
        pub fn get_mut(&mut self) -> &mut T {
            match self.0.get_mut() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            }
        }
    }

    impl<T: Default> Default for RwLock<T> {
        fn default() -> Self {
            RwLock::new(T::default())
        }
    }

    /// Yield to the loom scheduler (a spin loop must let the other threads run).
    pub fn spin_hint() {
        loom::thread::yield_now();
    }
}

pub use imp::*;
