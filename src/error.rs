//! The crate's error type and its mapping onto Linux errno values (SPEC §10).

use core::fmt;

/// Every error a `gpusvm` call can return.
///
/// Each variant maps onto one negative Linux errno value through [`Error::errno`], so a
/// Rust-for-Linux driver can hand the result straight back to the kernel.
///
/// A call that returns an error leaves the state it was given exactly as it was, unless the
/// documentation of that call says otherwise (for example, a failed migration restores every page
/// to where it was, which is "as it was" from the caller's point of view).
///
/// ```
/// use gpusvm::Error;
/// assert_eq!(Error::Busy.errno(), -16);
/// assert_eq!(Error::NoLink.errno(), -67);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// `EBUSY`: the operation cannot proceed now; evict the range (or wait) and retry.
    Busy,
    /// `EAGAIN`: a concurrent invalidation or removal raced the call; retry it.
    Again,
    /// `EFAULT`: no VMA at the address, or a bad access.
    Fault,
    /// `ENOMEM`: an allocation (heap, device memory, DMA space) failed.
    NoMem,
    /// `EINVAL`: an argument is malformed (misaligned, empty, overflowing, out of range).
    Invalid,
    /// `EOPNOTSUPP`: the operation is not supported here (for example mixed pages in one range).
    NotSupported,
    /// `EPERM`: write access to read-only memory.
    Perm,
    /// `EACCES`: the atomic-access policy forbids the device this access.
    Access,
    /// `ENOLINK`: no fast interconnect to the requested pagemap.
    NoLink,
    /// `ENODEV`: the object was closed or its device went away.
    Closed,
}

impl Error {
    /// The negative Linux errno value for this error.
    ///
    /// ```
    /// assert_eq!(gpusvm::Error::Invalid.errno(), -22);
    /// ```
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub const fn errno(self) -> i32 {
        match self {
            Error::Busy => -16,
            Error::Again => -11,
            Error::Fault => -14,
            Error::NoMem => -12,
            Error::Invalid => -22,
            Error::NotSupported => -95,
            Error::Perm => -1,
            Error::Access => -13,
            Error::NoLink => -67,
            Error::Closed => -19,
        }
    }

    /// The symbolic errno name (`"EBUSY"`, ...).
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub const fn name(self) -> &'static str {
        match self {
            Error::Busy => "EBUSY",
            Error::Again => "EAGAIN",
            Error::Fault => "EFAULT",
            Error::NoMem => "ENOMEM",
            Error::Invalid => "EINVAL",
            Error::NotSupported => "EOPNOTSUPP",
            Error::Perm => "EPERM",
            Error::Access => "EACCES",
            Error::NoLink => "ENOLINK",
            Error::Closed => "ENODEV",
        }
    }

    /// The error for a negative (or positive) errno value, if it is one this crate uses.
    ///
    /// ```
    /// use gpusvm::Error;
    /// assert_eq!(Error::from_errno(-16), Some(Error::Busy));
    /// assert_eq!(Error::from_errno(16), Some(Error::Busy));
    /// assert_eq!(Error::from_errno(-9999), None);
    /// ```
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub const fn from_errno(errno: i32) -> Option<Error> {
        let e = errno.unsigned_abs();
        Some(match e {
            16 => Error::Busy,
            11 => Error::Again,
            14 => Error::Fault,
            12 => Error::NoMem,
            22 => Error::Invalid,
            95 => Error::NotSupported,
            1 => Error::Perm,
            13 => Error::Access,
            67 => Error::NoLink,
            19 | 108 => Error::Closed,
            _ => return None,
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Error::Busy => "resource busy: evict and retry",
            Error::Again => "raced by an invalidation: try again",
            Error::Fault => "bad address: no VMA or bad access",
            Error::NoMem => "out of memory",
            Error::Invalid => "invalid argument",
            Error::NotSupported => "operation not supported",
            Error::Perm => "write to read-only memory",
            Error::Access => "access forbidden by the atomic policy",
            Error::NoLink => "no fast interconnect to the requested pagemap",
            Error::Closed => "closed",
        };
        write!(f, "{} ({})", what, self.name())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// Shorthand for `core::result::Result<T, gpusvm::Error>`.
pub type Result<T> = core::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Error; 10] = [
        Error::Busy,
        Error::Again,
        Error::Fault,
        Error::NoMem,
        Error::Invalid,
        Error::NotSupported,
        Error::Perm,
        Error::Access,
        Error::NoLink,
        Error::Closed,
    ];

    #[test]
    fn errno_values_match_linux() {
        let expect = [-16, -11, -14, -12, -22, -95, -1, -13, -67, -19];
        for (e, n) in ALL.iter().zip(expect) {
            assert_eq!(e.errno(), n, "{e:?}");
        }
    }

    #[test]
    fn errno_roundtrip_and_names_unique() {
        for e in ALL {
            assert_eq!(Error::from_errno(e.errno()), Some(e));
            assert!(e.name().starts_with('E'));
            for f in ALL {
                if e != f {
                    assert_ne!(e.errno(), f.errno());
                    assert_ne!(e.name(), f.name());
                }
            }
        }
    }

    #[test]
    fn display_names_errno() {
        extern crate alloc;
        use alloc::format;
        assert_eq!(
            format!("{}", Error::Busy),
            "resource busy: evict and retry (EBUSY)"
        );
        assert!(format!("{}", Error::NoLink).ends_with("(ENOLINK)"));
    }
}
