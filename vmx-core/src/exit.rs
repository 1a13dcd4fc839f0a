//! VM exits: the per-exit token, exit reasons, the exit-information snapshot and the
//! exit-qualification decoders.

/// Proof that a VM exit has just happened on this logical processor and that the current
/// VMCS's exit-information fields describe it.
///
/// A `VmExit` is produced by each VM exit (by [`ActiveVmcs`](crate::vmcs::ActiveVmcs)'s guest
/// runner, by [`SoftVmcs`](crate::vmcs::SoftVmcs) when a test simulates an exit, or by
/// [`VmExit::assume_new`] in a hypervisor with its own entry code) and is consumed by the next VM
/// entry. Exit-information snapshots borrow it, so a snapshot of one exit cannot outlive the
/// entry that ends that exit: reading stale exit information is a compile error, not a bug.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a VmExit is needed to read this exit's information and to enter the guest again"]
pub struct VmExit {
    _private: (),
}

impl VmExit {
    /// Makes the token inside this crate (guest runner and software VMCS).
    pub(crate) const fn new() -> Self {
        Self { _private: () }
    }

    /// Makes the token in a hypervisor that performs VM entry and exit with its own code.
    ///
    /// # Safety
    ///
    /// The caller must be in VMX root operation, a VM exit must have just returned control to
    /// it with the VMCS that it will read still current, and no other `VmExit` for this logical
    /// processor may be alive: the exit-information fields must describe the most recent exit.
    pub const unsafe fn assume_new() -> Self {
        Self::new()
    }
}
