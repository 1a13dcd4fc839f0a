//! The VMXON region and VMCS region (SDM Vol. 3C "VMCS Region" and "VMXON Region").
//!
//! Both are 4 KiB, 4 KiB-aligned, and start with the VMCS revision identifier
//! (IA32_VMX_BASIC bits 30:0) in bits 30:0 of their first 32 bits. In a VMCS region, bit 31 of
//! that word is the shadow-VMCS indicator and the next 32 bits are the VMX-abort indicator. The
//! rest of the region is implementation-specific: software must not touch it.

use core::mem::{align_of, size_of};

/// Size and alignment of both regions (IA32_VMX_BASIC bits 44:32 report at most 4096).
pub const REGION_SIZE: usize = 4096;

/// A VMXON region.
#[derive(Clone)]
#[repr(C, align(4096))]
pub struct VmxonRegion {
    revision_id: u32,
    data: [u8; REGION_SIZE - 4],
}

/// A VMCS region.
#[derive(Clone)]
#[repr(C, align(4096))]
pub struct VmcsRegion {
    revision_id: u32,
    abort_indicator: u32,
    data: [u8; REGION_SIZE - 8],
}

static_assertions::const_assert_eq!(size_of::<VmxonRegion>(), REGION_SIZE);
static_assertions::const_assert_eq!(align_of::<VmxonRegion>(), REGION_SIZE);
static_assertions::const_assert_eq!(size_of::<VmcsRegion>(), REGION_SIZE);
static_assertions::const_assert_eq!(align_of::<VmcsRegion>(), REGION_SIZE);
static_assertions::const_assert_eq!(core::mem::offset_of!(VmcsRegion, abort_indicator), 4);

const REVISION_MASK: u32 = 0x7FFF_FFFF;
const SHADOW_INDICATOR: u32 = 1 << 31;

impl VmxonRegion {
    /// A zeroed region carrying `revision_id` (bits 30:0 kept; bit 31 must be 0 in a VMXON
    /// region, so it is cleared).
    pub const fn new(revision_id: u32) -> Self {
        Self { revision_id: revision_id & REVISION_MASK, data: [0; REGION_SIZE - 4] }
    }

    /// The revision identifier written in the region.
    pub const fn revision_id(&self) -> u32 {
        self.revision_id
    }
}

impl VmcsRegion {
    /// A zeroed, ordinary (non-shadow) VMCS region carrying `revision_id`.
    pub const fn new(revision_id: u32) -> Self {
        Self {
            revision_id: revision_id & REVISION_MASK,
            abort_indicator: 0,
            data: [0; REGION_SIZE - 8],
        }
    }

    /// A zeroed shadow-VMCS region (bit 31 of the first word set), for VMCS shadowing.
    pub const fn new_shadow(revision_id: u32) -> Self {
        let mut region = Self::new(revision_id);
        region.revision_id |= SHADOW_INDICATOR;
        region
    }

    /// The revision identifier (bits 30:0 of the first word).
    pub const fn revision_id(&self) -> u32 {
        self.revision_id & REVISION_MASK
    }

    /// `true` for a shadow VMCS.
    pub const fn is_shadow(&self) -> bool {
        self.revision_id & SHADOW_INDICATOR != 0
    }

    /// The VMX-abort indicator: non-zero after a VMX abort, with the abort reason.
    ///
    /// The processor writes it behind the compiler's back: the read is volatile.
    pub fn abort_indicator(&self) -> u32 {
        // SAFETY: the pointer comes from a reference to an initialised, aligned u32.
        unsafe { core::ptr::read_volatile(&self.abort_indicator) }
    }
}

impl core::fmt::Debug for VmxonRegion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmxonRegion")
            .field("revision_id", &self.revision_id)
            .finish_non_exhaustive()
    }
}

impl core::fmt::Debug for VmcsRegion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmcsRegion")
            .field("revision_id", &self.revision_id())
            .field("shadow", &self.is_shadow())
            .field("abort_indicator", &self.abort_indicator)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_id_sits_in_the_first_word() {
        // Bochs corei7_skylake_x: IA32_VMX_BASIC = 0x00D8_1000_0000_002B, revision 0x2B.
        let region = VmcsRegion::new(0x2B);
        // SAFETY: VmcsRegion is repr(C) plain data of 4096 bytes.
        let bytes: &[u8; REGION_SIZE] = unsafe { &*(&region as *const VmcsRegion).cast() };
        assert_eq!(&bytes[..8], &[0x2B, 0, 0, 0, 0, 0, 0, 0]);
        assert!(bytes[8..].iter().all(|&b| b == 0));
        assert!(!region.is_shadow());
        assert_eq!(region.abort_indicator(), 0);
        let shadow = VmcsRegion::new_shadow(4);
        assert!(shadow.is_shadow());
        assert_eq!(shadow.revision_id(), 4);
        assert_eq!(VmxonRegion::new(0xFFFF_FFFF).revision_id(), 0x7FFF_FFFF, "bit 31 cleared");
    }
}
