//! The exception bitmap (VM-execution control field 0x4004, SDM Vol. 3C 24.6.3 "Exception
//! Bitmap"): bit *n* set makes a guest exception with vector *n* cause a VM exit (basic exit
//! reason 0) instead of being delivered through the guest's IDT.
//!
//! [`ExceptionBitmap::new`] always intercepts #DB (vector 1) and #AC (vector 17). Without that
//! interception a guest can hang the host CPU:
//!
//! - **#AC, CVE-2015-5307.** A guest with CR0.AM and RFLAGS.AC set whose IDT makes the
//!   delivery of #AC itself raise #AC (for example a misaligned stack for the handler) makes
//!   the processor deliver #AC forever. #AC is a benign exception (SDM Vol. 3A 6.15, Table 6-5),
//!   so no #DF ends the chain, and delivery is not interruptible: the host never gets an
//!   interrupt, a timer or an NMI exit again. Intercepting #AC turns each delivery into a VM
//!   exit, where the host keeps control.
//! - **#DB, CVE-2015-8104.** The same endless chain with #DB: a guest sets a data breakpoint on
//!   the memory its #DB delivery writes (its IDT entry or the handler's stack), so every
//!   delivery of #DB raises another #DB. Intercepting #DB breaks the chain at the first one.
//!
//! Both exceptions are then reflected to the guest by the hypervisor (hvkit-nmi-reinject's
//! `reflected_exception` builds the event to inject). KVM sets both bits unconditionally for
//! the same reason.
#![forbid(unsafe_code)]

use crate::event::vector;

/// A value for the exception-bitmap field that always has #DB (bit 1) and #AC (bit 17) set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct ExceptionBitmap(u32);

impl ExceptionBitmap {
    /// The exceptions that are always intercepted: #DB (CVE-2015-8104) and #AC
    /// (CVE-2015-5307).
    pub const ALWAYS: u32 = (1 << vector::DEBUG) | (1 << vector::ALIGNMENT_CHECK);

    /// #DB and #AC only.
    pub const fn new() -> Self {
        Self(Self::ALWAYS)
    }

    /// `raw` plus #DB and #AC (those two cannot be removed).
    pub const fn from_raw(raw: u32) -> Self {
        Self(raw | Self::ALWAYS)
    }

    /// The value to write into the exception-bitmap field.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// Also intercepts exception `vector` (0-31; larger vectors are not exceptions and change
    /// nothing).
    pub const fn with(self, vector: u8) -> Self {
        if vector < 32 { Self(self.0 | (1 << vector)) } else { self }
    }

    /// Stops intercepting `vector`, except #DB and #AC, which stay intercepted.
    pub const fn without(self, vector: u8) -> Self {
        if vector < 32 { Self((self.0 & !(1 << vector)) | Self::ALWAYS) } else { self }
    }

    /// `true` when exception `vector` causes a VM exit (always `false` for vectors above 31).
    pub const fn intercepts(self, vector: u8) -> bool {
        vector < 32 && self.0 & (1 << vector) != 0
    }
}

impl Default for ExceptionBitmap {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn always_intercepts_debug_cve_2015_8104_and_alignment_check_cve_2015_5307() {
        assert_eq!(ExceptionBitmap::ALWAYS, 0x0002_0002);
        for bitmap in [
            ExceptionBitmap::new(),
            ExceptionBitmap::default(),
            ExceptionBitmap::from_raw(0),
            ExceptionBitmap::from_raw(u32::MAX),
            ExceptionBitmap::new().without(1).without(17),
            ExceptionBitmap::from_raw(u32::MAX).without(1).without(17),
        ] {
            assert!(bitmap.intercepts(1), "{bitmap:?}");
            assert!(bitmap.intercepts(17), "{bitmap:?}");
        }
        assert_eq!(ExceptionBitmap::new().raw(), 0x0002_0002);
        assert_eq!(ExceptionBitmap::from_raw(u32::MAX).raw(), u32::MAX);
        assert_eq!(ExceptionBitmap::from_raw(1 << 14).raw(), 0x0002_4002);
    }

    #[test]
    fn with_and_without_every_vector() {
        for vector in 0..32u8 {
            let always = vector == 1 || vector == 17;
            let added = ExceptionBitmap::new().with(vector);
            assert!(added.intercepts(vector));
            assert_eq!(added.raw(), ExceptionBitmap::ALWAYS | (1 << vector));
            // Setting a bit already set keeps it.
            assert_eq!(added.with(vector), added);
            let all = ExceptionBitmap::from_raw(u32::MAX);
            assert_eq!(all.with(vector), all);
            let removed = all.without(vector);
            assert_eq!(removed.intercepts(vector), always, "vector {vector}");
            let expected = if always { u32::MAX } else { !(1u32 << vector) };
            assert_eq!(removed.raw(), expected, "vector {vector}");
            // The flag getter with the bit clear.
            assert_eq!(ExceptionBitmap::new().intercepts(vector), always, "vector {vector}");
        }
    }

    #[test]
    fn vectors_above_31_are_not_exceptions() {
        for vector in [32u8, 33, 63, 255] {
            assert!(!ExceptionBitmap::from_raw(u32::MAX).intercepts(vector));
            assert_eq!(ExceptionBitmap::new().with(vector), ExceptionBitmap::new());
            let all = ExceptionBitmap::from_raw(u32::MAX);
            assert_eq!(all.without(vector), all);
        }
        // Vector 31 is the last exception.
        assert!(ExceptionBitmap::new().with(31).intercepts(31));
        assert_eq!(ExceptionBitmap::new().with(31).raw(), 0x8002_0002);
    }
}
