//! VMCS fields as typed constants (SDM Vol. 3D, Appendix B "Field Encoding in VMCS").
//!
//! A [`Field<W, A>`] carries its encoding and, in its type, its width `W` ([`U16`], [`U32`],
//! [`U64`], [`Natural`]) and access `A` ([`ReadWrite`], [`ReadOnly`]). The width decides the Rust
//! type that [`VmcsAccess::read`](crate::vmcs::VmcsAccess::read) returns and
//! [`VmcsAccess::write`](crate::vmcs::VmcsAccess::write) accepts; `write` only takes
//! `Field<_, ReadWrite>`, so writing an exit-information field does not compile:
//!
//! ```compile_fail
//! use hvkit_vmx_core::{field, vmcs::{SoftVmcs, VmcsAccess}};
//! let mut vmcs = SoftVmcs::new();
//! vmcs.write(field::EXIT_REASON, 0).unwrap(); // EXIT_REASON is read-only
//! ```
//!
//! Encoding layout (SDM B.1; shared/FACTS.md section 8): bit 0 access type (1 = high half of a
//! 64-bit field), bits 9:1 index, bits 11:10 type (0 control, 1 VM-exit information, 2 guest state,
//! 3 host state), bit 12 reserved (0), bits 14:13 width (0 16-bit, 1 64-bit, 2 32-bit, 3 natural).

use core::fmt;
use core::marker::PhantomData;

mod sealed {
    pub trait Sealed {}
}

/// The width of a VMCS field, decoded from encoding bits 14:13.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FieldWidth {
    /// 16-bit field (width bits 0).
    Bits16,
    /// 64-bit field (width bits 1).
    Bits64,
    /// 32-bit field (width bits 2).
    Bits32,
    /// Natural-width field (width bits 3): 64 bits on processors that support Intel 64.
    Natural,
}

impl FieldWidth {
    /// The value of encoding bits 14:13 for this width.
    pub const fn bits(self) -> u32 {
        match self {
            Self::Bits16 => 0,
            Self::Bits64 => 1,
            Self::Bits32 => 2,
            Self::Natural => 3,
        }
    }
}

/// The type of a VMCS field, decoded from encoding bits 11:10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FieldType {
    /// Control field (type bits 0).
    Control,
    /// VM-exit information field, read-only (type bits 1).
    ExitInformation,
    /// Guest-state field (type bits 2).
    GuestState,
    /// Host-state field (type bits 3).
    HostState,
}

impl FieldType {
    /// The value of encoding bits 11:10 for this type.
    pub const fn bits(self) -> u32 {
        match self {
            Self::Control => 0,
            Self::ExitInformation => 1,
            Self::GuestState => 2,
            Self::HostState => 3,
        }
    }
}

/// A raw VMCS field encoding with its parts decoded. Any `u32` is accepted: hardware decides which
/// encodings exist, and [`FieldEncoding::is_well_formed`] reports whether the reserved bits are
/// clear.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct FieldEncoding(u32);

impl FieldEncoding {
    /// Wraps a raw encoding.
    pub const fn from_raw(raw: u32) -> Self {
        Self(raw)
    }

    /// The raw encoding.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// Bit 0: `true` for the high 32 bits of a 64-bit field.
    pub const fn is_high_access(self) -> bool {
        self.0 & 1 != 0
    }

    /// Bits 9:1: the index within the width/type group.
    pub const fn index(self) -> u32 {
        (self.0 >> 1) & 0x1FF
    }

    /// Bits 11:10: the field type.
    pub const fn field_type(self) -> FieldType {
        match (self.0 >> 10) & 3 {
            0 => FieldType::Control,
            1 => FieldType::ExitInformation,
            2 => FieldType::GuestState,
            _ => FieldType::HostState,
        }
    }

    /// Bits 14:13: the field width.
    pub const fn width(self) -> FieldWidth {
        match (self.0 >> 13) & 3 {
            0 => FieldWidth::Bits16,
            1 => FieldWidth::Bits64,
            2 => FieldWidth::Bits32,
            _ => FieldWidth::Natural,
        }
    }

    /// `true` when bit 12 and bits 31:15 are clear and the high-access bit is only used on a
    /// 64-bit field.
    pub const fn is_well_formed(self) -> bool {
        self.0 & !0x6FFF == 0
            && (!self.is_high_access() || matches!(self.width(), FieldWidth::Bits64))
    }
}

impl fmt::Debug for FieldEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldEncoding({:#06x})", self.0)
    }
}

/// A field width as a type: decides the Rust value type of a typed access.
pub trait Width: sealed::Sealed + 'static {
    /// The Rust type of the field's value.
    type Value: Copy + fmt::Debug;
    /// The width these encodings carry in bits 14:13.
    const WIDTH: FieldWidth;
    /// Converts the value to the 64-bit quantity that VMWRITE takes (zero-extended).
    fn to_raw(value: Self::Value) -> u64;
    /// Converts what VMREAD returned to the value (truncating to the field width).
    fn from_raw(raw: u64) -> Self::Value;
}

/// 16-bit fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum U16 {}
/// 32-bit fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum U32 {}
/// 64-bit fields (full access, encoding bit 0 clear).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum U64 {}
/// Natural-width fields (64 bits on Intel 64 processors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Natural {}

macro_rules! width {
    ($ty:ty, $value:ty, $width:expr) => {
        impl sealed::Sealed for $ty {}
        impl Width for $ty {
            type Value = $value;
            const WIDTH: FieldWidth = $width;
            #[inline(always)]
            fn to_raw(value: $value) -> u64 {
                value.into()
            }
            #[inline(always)]
            #[allow(
                clippy::cast_possible_truncation,
                reason = "VMREAD of a narrow field fills only its width"
            )]
            fn from_raw(raw: u64) -> $value {
                raw as $value
            }
        }
    };
}
width!(U16, u16, FieldWidth::Bits16);
width!(U32, u32, FieldWidth::Bits32);
width!(U64, u64, FieldWidth::Bits64);
width!(Natural, u64, FieldWidth::Natural);

/// Field access as a type.
pub trait Access: sealed::Sealed + 'static {
    /// `true` for read-only (VM-exit information) fields.
    const READ_ONLY: bool;
}

/// Read-write access: control, guest-state and host-state fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadWrite {}
/// Read-only access: VM-exit information fields (VMWRITE fails with error 13 unless
/// IA32_VMX_MISC[29] is set; this crate keeps them read-only in the type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOnly {}
impl sealed::Sealed for ReadWrite {}
impl sealed::Sealed for ReadOnly {}
impl Access for ReadWrite {
    const READ_ONLY: bool = false;
}
impl Access for ReadOnly {
    const READ_ONLY: bool = true;
}

/// A VMCS field: its encoding, with width and access in the type.
pub struct Field<W: Width, A: Access> {
    encoding: u32,
    marker: PhantomData<fn() -> (W, A)>,
}

impl<W: Width, A: Access> Field<W, A> {
    /// Declares a field. Only this crate declares fields, so every constant is checked by the
    /// catalog tests.
    pub(crate) const fn new(encoding: u32) -> Self {
        Self { encoding, marker: PhantomData }
    }

    /// The raw encoding (full access for 64-bit fields).
    pub const fn encoding(self) -> u32 {
        self.encoding
    }

    /// The encoding with its parts decoded.
    pub const fn field_encoding(self) -> FieldEncoding {
        FieldEncoding(self.encoding)
    }

    /// The width this field's type claims.
    pub const fn width(self) -> FieldWidth {
        W::WIDTH
    }

    /// `true` when the type says read-only.
    pub const fn is_read_only(self) -> bool {
        A::READ_ONLY
    }
}

impl<W: Width, A: Access> Clone for Field<W, A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<W: Width, A: Access> Copy for Field<W, A> {}
impl<W: Width, A: Access> PartialEq for Field<W, A> {
    fn eq(&self, other: &Self) -> bool {
        self.encoding == other.encoding
    }
}
impl<W: Width, A: Access> Eq for Field<W, A> {}
impl<W: Width, A: Access> fmt::Debug for Field<W, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Field({:#06x}, {:?}", self.encoding, W::WIDTH)?;
        f.write_str(if A::READ_ONLY { ", read-only)" } else { ")" })
    }
}

// ---------------------------------------------------------------------------------------------
// Read-only data fields (VM-exit information): the "read-only data fields" group of each width
// in SDM Appendix B.
// ---------------------------------------------------------------------------------------------

/// Guest-physical address (64-bit, read-only): EPT violations and misconfigurations.
pub const GUEST_PHYSICAL_ADDRESS: Field<U64, ReadOnly> = Field::new(0x2400);
/// Original event data (64-bit, read-only; FRED): event data of the event that was being
/// delivered when the VM exit occurred.
pub const ORIGINAL_EVENT_DATA: Field<U64, ReadOnly> = Field::new(0x2404);

/// VM-instruction error (32-bit, read-only).
pub const VM_INSTRUCTION_ERROR: Field<U32, ReadOnly> = Field::new(0x4400);
/// Exit reason (32-bit, read-only).
pub const EXIT_REASON: Field<U32, ReadOnly> = Field::new(0x4402);
/// VM-exit interruption information (32-bit, read-only).
pub const VM_EXIT_INTERRUPTION_INFO: Field<U32, ReadOnly> = Field::new(0x4404);
/// VM-exit interruption error code (32-bit, read-only).
pub const VM_EXIT_INTERRUPTION_ERROR_CODE: Field<U32, ReadOnly> = Field::new(0x4406);
/// IDT-vectoring information (32-bit, read-only).
pub const IDT_VECTORING_INFO: Field<U32, ReadOnly> = Field::new(0x4408);
/// IDT-vectoring error code (32-bit, read-only).
pub const IDT_VECTORING_ERROR_CODE: Field<U32, ReadOnly> = Field::new(0x440A);
/// VM-exit instruction length (32-bit, read-only).
pub const VM_EXIT_INSTRUCTION_LENGTH: Field<U32, ReadOnly> = Field::new(0x440C);
/// VM-exit instruction information (32-bit, read-only).
pub const VM_EXIT_INSTRUCTION_INFO: Field<U32, ReadOnly> = Field::new(0x440E);

/// Exit qualification (natural width, read-only).
pub const EXIT_QUALIFICATION: Field<Natural, ReadOnly> = Field::new(0x6400);
/// I/O RCX (natural width, read-only; SMIs after I/O instructions).
pub const IO_RCX: Field<Natural, ReadOnly> = Field::new(0x6402);
/// I/O RSI (natural width, read-only).
pub const IO_RSI: Field<Natural, ReadOnly> = Field::new(0x6404);
/// I/O RDI (natural width, read-only).
pub const IO_RDI: Field<Natural, ReadOnly> = Field::new(0x6406);
/// I/O RIP (natural width, read-only).
pub const IO_RIP: Field<Natural, ReadOnly> = Field::new(0x6408);
/// Guest-linear address (natural width, read-only).
pub const GUEST_LINEAR_ADDRESS: Field<Natural, ReadOnly> = Field::new(0x640A);
