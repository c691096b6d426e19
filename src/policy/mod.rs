//! The policy engine (SPEC §8): attributes per address interval (like `madvise`), the placement
//! decision of the fault service, retry budgets, and prefetch.
//!
//! ```text
//!  set_attrs([s,e), update) ── AttrStore (split / merge) ── ranges inside: mappings cleared
//!                                                        └─ ranges straddling: evicted, removed
//!  fault ── decide(size, access, attrs, caps, history) ──► Decision { migrate_to, devmem_only,
//!                                                                    collect_owner, allow_mixed }
//! ```

mod attrs;

pub(crate) use attrs::set_locked as set_attrs_locked;
pub use attrs::{AttrStore, AttrUpdate};

use crate::error::{Error, Result};
use crate::platform::PagemapId;
use crate::types::Access;

/// Where a range should live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PreferredLoc {
    /// The faulting device's own memory (any memory of its owner group counts as placed).
    #[default]
    DeviceDefault,
    /// System memory: device pages are pulled back to RAM on the next fault.
    System,
    /// A specific pagemap (possibly another device's; it must share the device's owner).
    Pagemap(PagemapId),
}

/// Which pages a migration to device memory may move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MigrationPolicy {
    /// Every page, including pages in other device memory.
    #[default]
    AllPages,
    /// Only system pages: a range that already has device pages is left where it is.
    SystemPagesOnly,
}

/// Where atomic accesses by the device may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AtomicPolicy {
    /// Not specified: device memory is required for device atomics.
    #[default]
    Undefined,
    /// Device atomics: device memory is required unless the device can do atomics on system
    /// memory.
    Device,
    /// Atomics from both CPU and device: device memory is required.
    Global,
    /// CPU atomics only: device atomic faults are refused with [`Error::Access`].
    Cpu,
}

/// The attributes of one address interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Attrs {
    /// Preferred location.
    pub preferred: PreferredLoc,
    /// Migration policy.
    pub migration: MigrationPolicy,
    /// Atomic-access policy.
    pub atomic: AtomicPolicy,
}

/// A raw attribute change as a driver's ioctl would carry it: a kind, a value, and reserved
/// bits that must be zero.
///
/// | kind | value |
/// | --- | --- |
/// | 0 preferred location | 0 device default, 1 system, `2 + pagemap id` a pagemap |
/// | 1 migration policy | 0 all pages, 1 system pages only |
/// | 2 atomic access | 0 undefined, 1 device, 2 global, 3 cpu |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawAttr {
    /// Which attribute.
    pub kind: u32,
    /// Its new value.
    pub value: u64,
    /// Must be zero.
    pub reserved: u64,
}

impl RawAttr {
    /// Decode into an [`AttrUpdate`]. Errors: [`Error::Invalid`] for an unknown kind or value, a
    /// pagemap id that does not fit, or non-zero reserved bits.
    ///
    /// ```
    /// use gpusvm::policy::{RawAttr, PreferredLoc};
    /// let u = RawAttr { kind: 0, value: 1, reserved: 0 }.decode().unwrap();
    /// assert_eq!(u.preferred, Some(PreferredLoc::System));
    /// assert!(RawAttr { kind: 0, value: 1, reserved: 4 }.decode().is_err());
    /// assert!(RawAttr { kind: 9, value: 0, reserved: 0 }.decode().is_err());
    /// ```
    ///
    /// Context: any; never sleeps or allocates; takes no lock.
    pub fn decode(&self) -> Result<AttrUpdate> {
        if self.reserved != 0 {
            return Err(Error::Invalid);
        }
        let mut u = AttrUpdate::default();
        match self.kind {
            0 => {
                u.preferred = Some(match self.value {
                    0 => PreferredLoc::DeviceDefault,
                    1 => PreferredLoc::System,
                    v => {
                        let id = v.checked_sub(2).ok_or(Error::Invalid)?;
                        PreferredLoc::Pagemap(PagemapId(
                            u32::try_from(id).map_err(|_| Error::Invalid)?,
                        ))
                    }
                })
            }
            1 => {
                u.migration = Some(match self.value {
                    0 => MigrationPolicy::AllPages,
                    1 => MigrationPolicy::SystemPagesOnly,
                    _ => return Err(Error::Invalid),
                })
            }
            2 => {
                u.atomic = Some(match self.value {
                    0 => AtomicPolicy::Undefined,
                    1 => AtomicPolicy::Device,
                    2 => AtomicPolicy::Global,
                    3 => AtomicPolicy::Cpu,
                    _ => return Err(Error::Invalid),
                })
            }
            _ => return Err(Error::Invalid),
        }
        Ok(u)
    }
}

/// Where [`Svm::prefetch`](crate::Svm::prefetch) moves an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrefetchLoc {
    /// System memory.
    System,
    /// The device's own memory.
    Device,
    /// A specific pagemap of the device's owner.
    Pagemap(PagemapId),
}

/// Knobs of the policy engine (configuration, not constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Ranges smaller than this stay in system memory unless device memory is required
    /// [64 KiB].
    pub migrate_threshold: u64,
    /// How many times a fault that requires device memory migrates again before it fails
    /// with [`Error::Fault`] \[3\].
    pub devmem_only_retries: u32,
    /// The device can do atomics on system memory (then `AtomicPolicy::Device` does not
    /// require device memory) [false].
    pub atomics_on_sysmem: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            migrate_threshold: 64 << 10,
            devmem_only_retries: 3,
            atomics_on_sysmem: false,
        }
    }
}

/// Which device memory a range should move to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceTarget {
    /// The faulting device's own pagemap (already being in any pagemap of its owner counts).
    Local,
    /// This pagemap.
    Pagemap(PagemapId),
}

/// What the decision function is told about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceCaps {
    /// The device has its own memory (a pagemap).
    pub has_devmem: bool,
    /// `PreferredLoc::DeviceDefault` means the device's memory (`SvmConfig::prefer_devmem`);
    /// otherwise ranges stay in system memory unless an atomic access needs device memory.
    pub default_to_devmem: bool,
}

/// What the decision function is told about the range's past.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RangeHistory {
    /// A migration of this range to device memory already failed ("migrate once").
    pub migrate_failed: bool,
}

/// The input of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionInput {
    /// Size of the range in bytes.
    pub range_size: u64,
    /// The faulting access.
    pub access: Access,
    /// The attributes at the fault address.
    pub attrs: Attrs,
    /// The device.
    pub caps: DeviceCaps,
    /// The range's history.
    pub history: RangeHistory,
}

/// The placement decision for one fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Migrate the range to this device memory first (`None`: leave pages where they are).
    pub migrate_to: Option<DeviceTarget>,
    /// Every page must end up in device memory, or the fault fails (after the retry budget).
    pub devmem_only: bool,
    /// Collect with the device's owner (device pages of the owner are used in place); `false`
    /// pulls every device page back to system memory.
    pub collect_owner: bool,
}

/// The placement decision (SPEC §8, §9), a pure function of the range size, the access kind,
/// the attributes, the device's capabilities and the range's history:
///
/// 1. An atomic access under `AtomicPolicy::Cpu` is refused with [`Error::Access`]. Under
///    `Device` it requires device memory unless the device does atomics on system memory;
///    under `Undefined` and `Global` it requires device memory (`devmem_only`). Requiring
///    device memory on a device without any fails with [`Error::Fault`].
/// 2. `devmem_only` overrides the preferred location (the access cannot complete otherwise)
///    and the "migrate once" rule, and ignores the size threshold.
/// 3. Otherwise: preferred `System` → no migration and device pages are pulled back to RAM;
///    preferred `DeviceDefault` (with device memory and `default_to_devmem`) or `Pagemap(id)`
///    → migrate there if the
///    range is at least `migrate_threshold` and no migration of it failed before. Everything
///    else stays in (or falls back to) system memory.
///
/// ```
/// use gpusvm::policy::*;
/// use gpusvm::Access;
/// let cfg = PolicyConfig::default();
/// let input = DecisionInput {
///     range_size: 2 << 20,
///     access: Access::Read,
///     attrs: Attrs::default(),
///     caps: DeviceCaps { has_devmem: true, default_to_devmem: true },
///     history: RangeHistory::default(),
/// };
/// assert_eq!(decide(&input, &cfg).unwrap().migrate_to, Some(DeviceTarget::Local));
/// let small = DecisionInput { range_size: 4096, ..input };
/// assert_eq!(decide(&small, &cfg).unwrap().migrate_to, None);
/// ```
///
/// Errors: [`Error::Access`] for an atomic access under `AtomicPolicy::Cpu`;
/// [`Error::Fault`] when device memory is required and the device has none.
///
/// Context: any; a pure function (never sleeps or allocates, takes no lock).
pub fn decide(input: &DecisionInput, cfg: &PolicyConfig) -> Result<Decision> {
    let devmem_only = if input.access == Access::Atomic {
        match input.attrs.atomic {
            AtomicPolicy::Cpu => return Err(Error::Access),
            AtomicPolicy::Device => !cfg.atomics_on_sysmem,
            AtomicPolicy::Undefined | AtomicPolicy::Global => true,
        }
    } else {
        false
    };
    if devmem_only {
        if !input.caps.has_devmem {
            return Err(Error::Fault);
        }
        let target = match input.attrs.preferred {
            PreferredLoc::Pagemap(id) => DeviceTarget::Pagemap(id),
            PreferredLoc::DeviceDefault | PreferredLoc::System => DeviceTarget::Local,
        };
        return Ok(Decision {
            migrate_to: Some(target),
            devmem_only: true,
            collect_owner: true,
        });
    }
    let target = match input.attrs.preferred {
        PreferredLoc::System => {
            return Ok(Decision {
                migrate_to: None,
                devmem_only: false,
                collect_owner: false,
            })
        }
        PreferredLoc::DeviceDefault if input.caps.has_devmem && input.caps.default_to_devmem => {
            Some(DeviceTarget::Local)
        }
        PreferredLoc::DeviceDefault => None,
        PreferredLoc::Pagemap(id) => Some(DeviceTarget::Pagemap(id)),
    };
    let migrate = input.range_size >= cfg.migrate_threshold && !input.history.migrate_failed;
    Ok(Decision {
        migrate_to: target.filter(|_| migrate),
        devmem_only: false,
        collect_owner: true,
    })
}

/// Where the device may perform atomic accesses on the pages of one range: what a driver
/// encodes in the atomic-enable bit of each device page-table entry it writes in the
/// [`bind`](crate::Svm::bind) callback. An atomic access through an entry without that bit must
/// fault with [`Access::Atomic`], so that [`decide`] can refuse it or move the pages first.
///
/// ```
/// use gpusvm::policy::*;
/// let cfg = PolicyConfig::default();
/// let global = device_atomics(AtomicPolicy::Global, &cfg);
/// assert!(global.device_memory && !global.system_memory);
/// assert_eq!(device_atomics(AtomicPolicy::Cpu, &cfg), DeviceAtomics::NONE);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DeviceAtomics {
    /// Atomics are allowed on pages in device memory (the device's own or a peer's of its
    /// owner).
    pub device_memory: bool,
    /// Atomics are allowed on system pages.
    pub system_memory: bool,
}

impl DeviceAtomics {
    /// No device atomics at all.
    pub const NONE: DeviceAtomics = DeviceAtomics {
        device_memory: false,
        system_memory: false,
    };

    /// Whether the device may perform atomics through `entry` (a system page or a page of
    /// device memory, judged by its protocol).
    ///
    /// Context: any; never sleeps or allocates; takes no lock.
    pub fn allows(self, entry: crate::types::PageEntry) -> bool {
        self.allows_protocol(entry.protocol())
    }

    /// Whether the device may perform atomics on a page reached through `proto`
    /// ([`Protocol::SYSTEM`](crate::types::Protocol::SYSTEM): a system page; any other: device
    /// memory).
    ///
    /// Context: any; never sleeps or allocates; takes no lock.
    pub fn allows_protocol(self, proto: crate::types::Protocol) -> bool {
        if proto == crate::types::Protocol::SYSTEM {
            self.system_memory
        } else {
            self.device_memory
        }
    }
}

/// The device-atomic rights that go with an atomic policy (SPEC §8), consistent with
/// [`decide`]: `Cpu` allows none; `Device` allows device memory, and system memory too if the
/// device does atomics on system memory; `Undefined` and `Global` allow device memory only.
///
/// Context: any; a pure function (never sleeps or allocates, takes no lock).
pub fn device_atomics(atomic: AtomicPolicy, cfg: &PolicyConfig) -> DeviceAtomics {
    match atomic {
        AtomicPolicy::Cpu => DeviceAtomics::NONE,
        AtomicPolicy::Device => DeviceAtomics {
            device_memory: true,
            system_memory: cfg.atomics_on_sysmem,
        },
        AtomicPolicy::Undefined | AtomicPolicy::Global => DeviceAtomics {
            device_memory: true,
            system_memory: false,
        },
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn input(access: Access, attrs: Attrs) -> DecisionInput {
        DecisionInput {
            range_size: 2 << 20,
            access,
            attrs,
            caps: DeviceCaps {
                has_devmem: true,
                default_to_devmem: true,
            },
            history: RangeHistory::default(),
        }
    }

    #[test]
    fn atomic_rules() {
        let cfg = PolicyConfig::default();
        for (pol, expect_devmem) in [
            (AtomicPolicy::Undefined, true),
            (AtomicPolicy::Global, true),
            (AtomicPolicy::Device, true),
        ] {
            let a = Attrs {
                atomic: pol,
                ..Attrs::default()
            };
            let d = decide(&input(Access::Atomic, a), &cfg).unwrap();
            assert_eq!(d.devmem_only, expect_devmem, "{pol:?}");
        }
        let cpu = Attrs {
            atomic: AtomicPolicy::Cpu,
            ..Attrs::default()
        };
        assert_eq!(
            decide(&input(Access::Atomic, cpu), &cfg),
            Err(Error::Access)
        );
        assert!(
            decide(&input(Access::Write, cpu), &cfg).is_ok(),
            "only atomics are refused"
        );
        let sysatomics = PolicyConfig {
            atomics_on_sysmem: true,
            ..cfg
        };
        let dev = Attrs {
            atomic: AtomicPolicy::Device,
            ..Attrs::default()
        };
        let d = decide(&input(Access::Atomic, dev), &sysatomics).unwrap();
        assert!(!d.devmem_only);
        let mut no_mem = input(Access::Atomic, Attrs::default());
        no_mem.caps.has_devmem = false;
        assert_eq!(decide(&no_mem, &cfg), Err(Error::Fault));
    }

    /// The rights a driver binds agree with the fault decision: a page where the rights allow
    /// an atomic is exactly a page where `decide` would let the atomic complete.
    #[test]
    fn device_atomics_agree_with_decide() {
        use crate::pages::{PageEntry, Protocol};
        use crate::platform::DmaDirection;
        let sys = PageEntry::new(0, 0, DmaDirection::Bidirectional, Protocol::SYSTEM).unwrap();
        let local =
            PageEntry::new(0, 0, DmaDirection::Bidirectional, Protocol::DEVICE_LOCAL).unwrap();
        let peer = PageEntry::new(0, 0, DmaDirection::Bidirectional, Protocol(5)).unwrap();
        for on_sys in [false, true] {
            let cfg = PolicyConfig {
                atomics_on_sysmem: on_sys,
                ..PolicyConfig::default()
            };
            for pol in [
                AtomicPolicy::Undefined,
                AtomicPolicy::Device,
                AtomicPolicy::Global,
                AtomicPolicy::Cpu,
            ] {
                let a = Attrs {
                    atomic: pol,
                    ..Attrs::default()
                };
                let rights = device_atomics(pol, &cfg);
                let d = decide(&input(Access::Atomic, a), &cfg);
                assert_eq!(rights.allows(local), d.is_ok(), "{pol:?} {on_sys}");
                assert_eq!(rights.allows(peer), d.is_ok(), "{pol:?} {on_sys}");
                let on_system = matches!(d, Ok(x) if !x.devmem_only);
                assert_eq!(rights.allows(sys), on_system, "{pol:?} {on_sys}");
            }
        }
    }

    #[test]
    fn devmem_only_overrides_system_threshold_and_history() {
        let cfg = PolicyConfig::default();
        let mut i = input(
            Access::Atomic,
            Attrs {
                preferred: PreferredLoc::System,
                ..Attrs::default()
            },
        );
        i.range_size = 4096;
        i.history.migrate_failed = true;
        let d = decide(&i, &cfg).unwrap();
        assert_eq!(d.migrate_to, Some(DeviceTarget::Local));
        assert!(d.devmem_only && d.collect_owner);
    }

    #[test]
    fn placement_rules() {
        let cfg = PolicyConfig::default();
        let sys = Attrs {
            preferred: PreferredLoc::System,
            ..Attrs::default()
        };
        let d = decide(&input(Access::Read, sys), &cfg).unwrap();
        assert_eq!(
            d,
            Decision {
                migrate_to: None,
                devmem_only: false,
                collect_owner: false
            }
        );
        let pm = Attrs {
            preferred: PreferredLoc::Pagemap(PagemapId(7)),
            ..Attrs::default()
        };
        let d = decide(&input(Access::Write, pm), &cfg).unwrap();
        assert_eq!(d.migrate_to, Some(DeviceTarget::Pagemap(PagemapId(7))));
        let mut failed = input(Access::Read, Attrs::default());
        failed.history.migrate_failed = true;
        assert_eq!(
            decide(&failed, &cfg).unwrap().migrate_to,
            None,
            "migrate once"
        );
        let mut at = input(Access::Read, Attrs::default());
        at.range_size = cfg.migrate_threshold;
        assert!(
            decide(&at, &cfg).unwrap().migrate_to.is_some(),
            "at the threshold migrates"
        );
        at.range_size = cfg.migrate_threshold - 4096;
        assert!(decide(&at, &cfg).unwrap().migrate_to.is_none());
        let mut nomem = input(Access::Read, Attrs::default());
        nomem.caps.has_devmem = false;
        assert_eq!(decide(&nomem, &cfg).unwrap().migrate_to, None);
        let mut off = input(Access::Read, Attrs::default());
        off.caps.default_to_devmem = false;
        assert_eq!(
            decide(&off, &cfg).unwrap().migrate_to,
            None,
            "prefer_devmem off"
        );
        off.attrs.preferred = PreferredLoc::Pagemap(PagemapId(1));
        assert!(
            decide(&off, &cfg).unwrap().migrate_to.is_some(),
            "explicit pagemap wins"
        );
    }
}
