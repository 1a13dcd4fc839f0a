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
//! The same code with a read-write field compiles, and the width is checked too (`GUEST_RIP`
//! takes a `u64`, `VIRTUAL_PROCESSOR_ID` a `u16`):
//!
//! ```
//! use hvkit_vmx_core::{field, vmcs::{SoftVmcs, VmcsAccess}};
//! let mut vmcs = SoftVmcs::new();
//! vmcs.write(field::GUEST_RIP, 0).unwrap();
//! vmcs.write(field::VIRTUAL_PROCESSOR_ID, 1u16).unwrap();
//! ```
//!
//! Encoding layout (SDM Vol. 3D Appendix B.1): bit 0 access type (1 = high half of a
//! 64-bit field), bits 9:1 index, bits 11:10 type (0 control, 1 VM-exit information, 2 guest state,
//! 3 host state), bit 12 reserved (0), bits 14:13 width (0 16-bit, 1 64-bit, 2 32-bit, 3 natural).
#![forbid(unsafe_code)]

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
/// IA32_VMX_MISC\[29\] is set; this crate keeps them read-only in the type).
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

#[cfg(feature = "defmt")]
impl<W: Width, A: Access> defmt::Format for Field<W, A> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "Field({=u32:#06x}, {}{=str})",
            self.encoding,
            W::WIDTH,
            if A::READ_ONLY { ", read-only" } else { "" }
        );
    }
}

/// One catalog entry: a field's SDM name, encoding, width and access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FieldInfo {
    /// The constant's name in this module (the SDM name in upper snake case).
    pub name: &'static str,
    /// The full-access encoding.
    pub encoding: u32,
    /// The width the constant's type carries.
    pub width: FieldWidth,
    /// `true` when the constant's type is [`ReadOnly`].
    pub read_only: bool,
}

impl FieldInfo {
    /// The encoding with its parts decoded.
    pub const fn field_encoding(&self) -> FieldEncoding {
        FieldEncoding(self.encoding)
    }
}

impl<W: Width> Field<W, ReadWrite> {
    /// Forgets write access: the same field, usable only for reads.
    pub const fn read_only(self) -> Field<W, ReadOnly> {
        Field::new(self.encoding)
    }
}

impl<A: Access> Field<U64, A> {
    /// The encoding of the high 32 bits of this 64-bit field (access type bit 0 set).
    ///
    /// Only needed by code running in 32-bit mode, where VMREAD/VMWRITE move 32 bits at a time;
    /// in 64-bit mode the full encoding reads and writes all 64 bits. Raw access through
    /// [`VmcsAccess::read_raw`](crate::vmcs::VmcsAccess::read_raw) with this encoding returns
    /// bits 63:32 of the field.
    pub const fn high(self) -> FieldEncoding {
        FieldEncoding(self.encoding | 1)
    }
}

/// Looks up a full-access encoding in the catalog (binary search; `None` for encodings this
/// catalog does not know, including high-access encodings).
pub fn lookup(encoding: u32) -> Option<&'static FieldInfo> {
    ALL.binary_search_by_key(&encoding, |info| info.encoding).ok().and_then(|index| ALL.get(index))
}

macro_rules! catalog {
    ($( $(#[$doc:meta])* $name:ident: $width:ident, $access:ident = $encoding:literal; )*) => {
        $( $(#[$doc])* pub const $name: Field<$width, $access> = Field::new($encoding); )*

        /// Every field of the catalog, sorted by encoding.
        pub const ALL: &[FieldInfo] = &[$(
            FieldInfo {
                name: stringify!($name),
                encoding: $encoding,
                width: <$width as Width>::WIDTH,
                read_only: <$access as Access>::READ_ONLY,
            },
        )*];
    };
}

// The catalog: SDM Vol. 3D Appendix B, every field of the current generation, grouped as the SDM
// groups them (16-bit, 64-bit, 32-bit, natural-width; within each: control, read-only data, guest
// state, host state). Fields used only by the TDX module (SEAM) are left out.
catalog! {
    /// Virtual-processor identifier (VPID).
    VIRTUAL_PROCESSOR_ID: U16, ReadWrite = 0x0000;
    /// Posted-interrupt notification vector.
    POSTED_INTERRUPT_NOTIFICATION_VECTOR: U16, ReadWrite = 0x0002;
    /// EPTP index (EPT-violation #VE).
    EPTP_INDEX: U16, ReadWrite = 0x0004;
    /// HLAT prefix size.
    HLAT_PREFIX_SIZE: U16, ReadWrite = 0x0006;
    /// Last PID-pointer index (IPI virtualization).
    LAST_PID_POINTER_INDEX: U16, ReadWrite = 0x0008;
    /// Virtual timer vector (APIC-timer virtualization).
    VIRTUAL_TIMER_VECTOR: U16, ReadWrite = 0x000A;
    /// Guest ES selector.
    GUEST_ES_SELECTOR: U16, ReadWrite = 0x0800;
    /// Guest CS selector.
    GUEST_CS_SELECTOR: U16, ReadWrite = 0x0802;
    /// Guest SS selector.
    GUEST_SS_SELECTOR: U16, ReadWrite = 0x0804;
    /// Guest DS selector.
    GUEST_DS_SELECTOR: U16, ReadWrite = 0x0806;
    /// Guest FS selector.
    GUEST_FS_SELECTOR: U16, ReadWrite = 0x0808;
    /// Guest GS selector.
    GUEST_GS_SELECTOR: U16, ReadWrite = 0x080A;
    /// Guest LDTR selector.
    GUEST_LDTR_SELECTOR: U16, ReadWrite = 0x080C;
    /// Guest TR selector.
    GUEST_TR_SELECTOR: U16, ReadWrite = 0x080E;
    /// Guest interrupt status (RVI 7:0, SVI 15:8).
    GUEST_INTERRUPT_STATUS: U16, ReadWrite = 0x0810;
    /// PML index.
    PML_INDEX: U16, ReadWrite = 0x0812;
    /// Guest user-interrupt notification vector (UINV).
    GUEST_UINV: U16, ReadWrite = 0x0814;
    /// Host ES selector.
    HOST_ES_SELECTOR: U16, ReadWrite = 0x0C00;
    /// Host CS selector.
    HOST_CS_SELECTOR: U16, ReadWrite = 0x0C02;
    /// Host SS selector.
    HOST_SS_SELECTOR: U16, ReadWrite = 0x0C04;
    /// Host DS selector.
    HOST_DS_SELECTOR: U16, ReadWrite = 0x0C06;
    /// Host FS selector.
    HOST_FS_SELECTOR: U16, ReadWrite = 0x0C08;
    /// Host GS selector.
    HOST_GS_SELECTOR: U16, ReadWrite = 0x0C0A;
    /// Host TR selector.
    HOST_TR_SELECTOR: U16, ReadWrite = 0x0C0C;
    /// Address of I/O bitmap A.
    IO_BITMAP_A_ADDRESS: U64, ReadWrite = 0x2000;
    /// Address of I/O bitmap B.
    IO_BITMAP_B_ADDRESS: U64, ReadWrite = 0x2002;
    /// Address of MSR bitmaps.
    MSR_BITMAPS_ADDRESS: U64, ReadWrite = 0x2004;
    /// VM-exit MSR-store address.
    VM_EXIT_MSR_STORE_ADDRESS: U64, ReadWrite = 0x2006;
    /// VM-exit MSR-load address.
    VM_EXIT_MSR_LOAD_ADDRESS: U64, ReadWrite = 0x2008;
    /// VM-entry MSR-load address.
    VM_ENTRY_MSR_LOAD_ADDRESS: U64, ReadWrite = 0x200A;
    /// Executive-VMCS pointer (dual-monitor treatment of SMM).
    EXECUTIVE_VMCS_POINTER: U64, ReadWrite = 0x200C;
    /// PML address.
    PML_ADDRESS: U64, ReadWrite = 0x200E;
    /// TSC offset.
    TSC_OFFSET: U64, ReadWrite = 0x2010;
    /// Virtual-APIC address.
    VIRTUAL_APIC_ADDRESS: U64, ReadWrite = 0x2012;
    /// APIC-access address.
    APIC_ACCESS_ADDRESS: U64, ReadWrite = 0x2014;
    /// Posted-interrupt descriptor address.
    POSTED_INTERRUPT_DESCRIPTOR_ADDRESS: U64, ReadWrite = 0x2016;
    /// VM-function controls.
    VM_FUNCTION_CONTROLS: U64, ReadWrite = 0x2018;
    /// EPT pointer (EPTP).
    EPT_POINTER: U64, ReadWrite = 0x201A;
    /// EOI-exit bitmap 0 (vectors 0-63).
    EOI_EXIT_BITMAP_0: U64, ReadWrite = 0x201C;
    /// EOI-exit bitmap 1 (vectors 64-127).
    EOI_EXIT_BITMAP_1: U64, ReadWrite = 0x201E;
    /// EOI-exit bitmap 2 (vectors 128-191).
    EOI_EXIT_BITMAP_2: U64, ReadWrite = 0x2020;
    /// EOI-exit bitmap 3 (vectors 192-255).
    EOI_EXIT_BITMAP_3: U64, ReadWrite = 0x2022;
    /// EPTP-list address.
    EPTP_LIST_ADDRESS: U64, ReadWrite = 0x2024;
    /// VMREAD-bitmap address.
    VMREAD_BITMAP_ADDRESS: U64, ReadWrite = 0x2026;
    /// VMWRITE-bitmap address.
    VMWRITE_BITMAP_ADDRESS: U64, ReadWrite = 0x2028;
    /// Virtualization-exception information address.
    VIRTUALIZATION_EXCEPTION_INFORMATION_ADDRESS: U64, ReadWrite = 0x202A;
    /// XSS-exiting bitmap.
    XSS_EXITING_BITMAP: U64, ReadWrite = 0x202C;
    /// ENCLS-exiting bitmap.
    ENCLS_EXITING_BITMAP: U64, ReadWrite = 0x202E;
    /// Sub-page-permission-table pointer (SPPTP).
    SUB_PAGE_PERMISSION_TABLE_POINTER: U64, ReadWrite = 0x2030;
    /// TSC multiplier.
    TSC_MULTIPLIER: U64, ReadWrite = 0x2032;
    /// Tertiary processor-based VM-execution controls.
    TERTIARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS: U64, ReadWrite = 0x2034;
    /// ENCLV-exiting bitmap.
    ENCLV_EXITING_BITMAP: U64, ReadWrite = 0x2036;
    /// Low PASID directory address.
    LOW_PASID_DIRECTORY_ADDRESS: U64, ReadWrite = 0x2038;
    /// High PASID directory address.
    HIGH_PASID_DIRECTORY_ADDRESS: U64, ReadWrite = 0x203A;
    /// PCONFIG-exiting bitmap.
    PCONFIG_EXITING_BITMAP: U64, ReadWrite = 0x203E;
    /// Hypervisor-managed linear-address translation pointer (HLATP).
    HLAT_POINTER: U64, ReadWrite = 0x2040;
    /// PID-pointer table address (IPI virtualization).
    PID_POINTER_TABLE_ADDRESS: U64, ReadWrite = 0x2042;
    /// Secondary VM-exit controls.
    SECONDARY_VM_EXIT_CONTROLS: U64, ReadWrite = 0x2044;
    /// IA32_SPEC_CTRL mask.
    IA32_SPEC_CTRL_MASK: U64, ReadWrite = 0x204A;
    /// IA32_SPEC_CTRL shadow.
    IA32_SPEC_CTRL_SHADOW: U64, ReadWrite = 0x204C;
    /// Virtual-timer guest deadline shadow.
    GUEST_DEADLINE_SHADOW: U64, ReadWrite = 0x204E;
    /// Injected-event data (FRED): event data delivered with the VM-entry injected event.
    INJECTED_EVENT_DATA: U64, ReadWrite = 0x2052;
    /// Guest-physical address: EPT violations and misconfigurations.
    GUEST_PHYSICAL_ADDRESS: U64, ReadOnly = 0x2400;
    /// Original-event data (FRED): event data of the event whose delivery was interrupted by the VM exit.
    ORIGINAL_EVENT_DATA: U64, ReadOnly = 0x2404;
    /// VMCS link pointer (all ones unless VMCS shadowing is used).
    VMCS_LINK_POINTER: U64, ReadWrite = 0x2800;
    /// Guest IA32_DEBUGCTL.
    GUEST_IA32_DEBUGCTL: U64, ReadWrite = 0x2802;
    /// Guest IA32_PAT.
    GUEST_IA32_PAT: U64, ReadWrite = 0x2804;
    /// Guest IA32_EFER.
    GUEST_IA32_EFER: U64, ReadWrite = 0x2806;
    /// Guest IA32_PERF_GLOBAL_CTRL.
    GUEST_IA32_PERF_GLOBAL_CTRL: U64, ReadWrite = 0x2808;
    /// Guest PDPTE0 (PAE paging with EPT).
    GUEST_PDPTE0: U64, ReadWrite = 0x280A;
    /// Guest PDPTE1.
    GUEST_PDPTE1: U64, ReadWrite = 0x280C;
    /// Guest PDPTE2.
    GUEST_PDPTE2: U64, ReadWrite = 0x280E;
    /// Guest PDPTE3.
    GUEST_PDPTE3: U64, ReadWrite = 0x2810;
    /// Guest IA32_BNDCFGS.
    GUEST_IA32_BNDCFGS: U64, ReadWrite = 0x2812;
    /// Guest IA32_RTIT_CTL.
    GUEST_IA32_RTIT_CTL: U64, ReadWrite = 0x2814;
    /// Guest IA32_LBR_CTL.
    GUEST_IA32_LBR_CTL: U64, ReadWrite = 0x2816;
    /// Guest IA32_PKRS.
    GUEST_IA32_PKRS: U64, ReadWrite = 0x2818;
    /// Guest IA32_FRED_CONFIG.
    GUEST_IA32_FRED_CONFIG: U64, ReadWrite = 0x281A;
    /// Guest IA32_FRED_RSP1.
    GUEST_IA32_FRED_RSP1: U64, ReadWrite = 0x281C;
    /// Guest IA32_FRED_RSP2.
    GUEST_IA32_FRED_RSP2: U64, ReadWrite = 0x281E;
    /// Guest IA32_FRED_RSP3.
    GUEST_IA32_FRED_RSP3: U64, ReadWrite = 0x2820;
    /// Guest IA32_FRED_STKLVLS.
    GUEST_IA32_FRED_STKLVLS: U64, ReadWrite = 0x2822;
    /// Guest IA32_FRED_SSP1.
    GUEST_IA32_FRED_SSP1: U64, ReadWrite = 0x2824;
    /// Guest IA32_FRED_SSP2.
    GUEST_IA32_FRED_SSP2: U64, ReadWrite = 0x2826;
    /// Guest IA32_FRED_SSP3.
    GUEST_IA32_FRED_SSP3: U64, ReadWrite = 0x2828;
    /// Guest IA32_SPEC_CTRL.
    GUEST_IA32_SPEC_CTRL: U64, ReadWrite = 0x282E;
    /// Virtual-timer guest deadline.
    GUEST_DEADLINE: U64, ReadWrite = 0x2830;
    /// Host IA32_PAT.
    HOST_IA32_PAT: U64, ReadWrite = 0x2C00;
    /// Host IA32_EFER.
    HOST_IA32_EFER: U64, ReadWrite = 0x2C02;
    /// Host IA32_PERF_GLOBAL_CTRL.
    HOST_IA32_PERF_GLOBAL_CTRL: U64, ReadWrite = 0x2C04;
    /// Host IA32_PKRS.
    HOST_IA32_PKRS: U64, ReadWrite = 0x2C06;
    /// Host IA32_FRED_CONFIG.
    HOST_IA32_FRED_CONFIG: U64, ReadWrite = 0x2C08;
    /// Host IA32_FRED_RSP1.
    HOST_IA32_FRED_RSP1: U64, ReadWrite = 0x2C0A;
    /// Host IA32_FRED_RSP2.
    HOST_IA32_FRED_RSP2: U64, ReadWrite = 0x2C0C;
    /// Host IA32_FRED_RSP3.
    HOST_IA32_FRED_RSP3: U64, ReadWrite = 0x2C0E;
    /// Host IA32_FRED_STKLVLS.
    HOST_IA32_FRED_STKLVLS: U64, ReadWrite = 0x2C10;
    /// Host IA32_FRED_SSP1.
    HOST_IA32_FRED_SSP1: U64, ReadWrite = 0x2C12;
    /// Host IA32_FRED_SSP2.
    HOST_IA32_FRED_SSP2: U64, ReadWrite = 0x2C14;
    /// Host IA32_FRED_SSP3.
    HOST_IA32_FRED_SSP3: U64, ReadWrite = 0x2C16;
    /// Host IA32_SPEC_CTRL.
    HOST_IA32_SPEC_CTRL: U64, ReadWrite = 0x2C1A;
    /// Pin-based VM-execution controls.
    PIN_BASED_VM_EXECUTION_CONTROLS: U32, ReadWrite = 0x4000;
    /// Primary processor-based VM-execution controls.
    PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS: U32, ReadWrite = 0x4002;
    /// Exception bitmap.
    EXCEPTION_BITMAP: U32, ReadWrite = 0x4004;
    /// Page-fault error-code mask.
    PAGE_FAULT_ERROR_CODE_MASK: U32, ReadWrite = 0x4006;
    /// Page-fault error-code match.
    PAGE_FAULT_ERROR_CODE_MATCH: U32, ReadWrite = 0x4008;
    /// CR3-target count.
    CR3_TARGET_COUNT: U32, ReadWrite = 0x400A;
    /// Primary VM-exit controls.
    PRIMARY_VM_EXIT_CONTROLS: U32, ReadWrite = 0x400C;
    /// VM-exit MSR-store count.
    VM_EXIT_MSR_STORE_COUNT: U32, ReadWrite = 0x400E;
    /// VM-exit MSR-load count.
    VM_EXIT_MSR_LOAD_COUNT: U32, ReadWrite = 0x4010;
    /// VM-entry controls.
    VM_ENTRY_CONTROLS: U32, ReadWrite = 0x4012;
    /// VM-entry MSR-load count.
    VM_ENTRY_MSR_LOAD_COUNT: U32, ReadWrite = 0x4014;
    /// VM-entry interruption-information field.
    VM_ENTRY_INTERRUPTION_INFO: U32, ReadWrite = 0x4016;
    /// VM-entry exception error code.
    VM_ENTRY_EXCEPTION_ERROR_CODE: U32, ReadWrite = 0x4018;
    /// VM-entry instruction length.
    VM_ENTRY_INSTRUCTION_LENGTH: U32, ReadWrite = 0x401A;
    /// TPR threshold.
    TPR_THRESHOLD: U32, ReadWrite = 0x401C;
    /// Secondary processor-based VM-execution controls.
    SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS: U32, ReadWrite = 0x401E;
    /// PAUSE-loop exiting gap.
    PLE_GAP: U32, ReadWrite = 0x4020;
    /// PAUSE-loop exiting window.
    PLE_WINDOW: U32, ReadWrite = 0x4022;
    /// Instruction-timeout control (NOTIFY window).
    INSTRUCTION_TIMEOUT_CONTROL: U32, ReadWrite = 0x4024;
    /// VM-instruction error.
    VM_INSTRUCTION_ERROR: U32, ReadOnly = 0x4400;
    /// Exit reason.
    EXIT_REASON: U32, ReadOnly = 0x4402;
    /// VM-exit interruption information.
    VM_EXIT_INTERRUPTION_INFO: U32, ReadOnly = 0x4404;
    /// VM-exit interruption error code.
    VM_EXIT_INTERRUPTION_ERROR_CODE: U32, ReadOnly = 0x4406;
    /// IDT-vectoring information.
    IDT_VECTORING_INFO: U32, ReadOnly = 0x4408;
    /// IDT-vectoring error code.
    IDT_VECTORING_ERROR_CODE: U32, ReadOnly = 0x440A;
    /// VM-exit instruction length.
    VM_EXIT_INSTRUCTION_LENGTH: U32, ReadOnly = 0x440C;
    /// VM-exit instruction information.
    VM_EXIT_INSTRUCTION_INFO: U32, ReadOnly = 0x440E;
    /// Guest ES limit.
    GUEST_ES_LIMIT: U32, ReadWrite = 0x4800;
    /// Guest CS limit.
    GUEST_CS_LIMIT: U32, ReadWrite = 0x4802;
    /// Guest SS limit.
    GUEST_SS_LIMIT: U32, ReadWrite = 0x4804;
    /// Guest DS limit.
    GUEST_DS_LIMIT: U32, ReadWrite = 0x4806;
    /// Guest FS limit.
    GUEST_FS_LIMIT: U32, ReadWrite = 0x4808;
    /// Guest GS limit.
    GUEST_GS_LIMIT: U32, ReadWrite = 0x480A;
    /// Guest LDTR limit.
    GUEST_LDTR_LIMIT: U32, ReadWrite = 0x480C;
    /// Guest TR limit.
    GUEST_TR_LIMIT: U32, ReadWrite = 0x480E;
    /// Guest GDTR limit.
    GUEST_GDTR_LIMIT: U32, ReadWrite = 0x4810;
    /// Guest IDTR limit.
    GUEST_IDTR_LIMIT: U32, ReadWrite = 0x4812;
    /// Guest ES access rights.
    GUEST_ES_ACCESS_RIGHTS: U32, ReadWrite = 0x4814;
    /// Guest CS access rights.
    GUEST_CS_ACCESS_RIGHTS: U32, ReadWrite = 0x4816;
    /// Guest SS access rights.
    GUEST_SS_ACCESS_RIGHTS: U32, ReadWrite = 0x4818;
    /// Guest DS access rights.
    GUEST_DS_ACCESS_RIGHTS: U32, ReadWrite = 0x481A;
    /// Guest FS access rights.
    GUEST_FS_ACCESS_RIGHTS: U32, ReadWrite = 0x481C;
    /// Guest GS access rights.
    GUEST_GS_ACCESS_RIGHTS: U32, ReadWrite = 0x481E;
    /// Guest LDTR access rights.
    GUEST_LDTR_ACCESS_RIGHTS: U32, ReadWrite = 0x4820;
    /// Guest TR access rights.
    GUEST_TR_ACCESS_RIGHTS: U32, ReadWrite = 0x4822;
    /// Guest interruptibility state.
    GUEST_INTERRUPTIBILITY_STATE: U32, ReadWrite = 0x4824;
    /// Guest activity state.
    GUEST_ACTIVITY_STATE: U32, ReadWrite = 0x4826;
    /// Guest SMBASE.
    GUEST_SMBASE: U32, ReadWrite = 0x4828;
    /// Guest IA32_SYSENTER_CS.
    GUEST_IA32_SYSENTER_CS: U32, ReadWrite = 0x482A;
    /// VMX-preemption timer value.
    VMX_PREEMPTION_TIMER_VALUE: U32, ReadWrite = 0x482E;
    /// Host IA32_SYSENTER_CS.
    HOST_IA32_SYSENTER_CS: U32, ReadWrite = 0x4C00;
    /// CR0 guest/host mask.
    CR0_GUEST_HOST_MASK: Natural, ReadWrite = 0x6000;
    /// CR4 guest/host mask.
    CR4_GUEST_HOST_MASK: Natural, ReadWrite = 0x6002;
    /// CR0 read shadow.
    CR0_READ_SHADOW: Natural, ReadWrite = 0x6004;
    /// CR4 read shadow.
    CR4_READ_SHADOW: Natural, ReadWrite = 0x6006;
    /// CR3-target value 0.
    CR3_TARGET_VALUE_0: Natural, ReadWrite = 0x6008;
    /// CR3-target value 1.
    CR3_TARGET_VALUE_1: Natural, ReadWrite = 0x600A;
    /// CR3-target value 2.
    CR3_TARGET_VALUE_2: Natural, ReadWrite = 0x600C;
    /// CR3-target value 3.
    CR3_TARGET_VALUE_3: Natural, ReadWrite = 0x600E;
    /// Exit qualification.
    EXIT_QUALIFICATION: Natural, ReadOnly = 0x6400;
    /// I/O RCX (SMI after an I/O instruction).
    IO_RCX: Natural, ReadOnly = 0x6402;
    /// I/O RSI.
    IO_RSI: Natural, ReadOnly = 0x6404;
    /// I/O RDI.
    IO_RDI: Natural, ReadOnly = 0x6406;
    /// I/O RIP.
    IO_RIP: Natural, ReadOnly = 0x6408;
    /// Guest-linear address.
    GUEST_LINEAR_ADDRESS: Natural, ReadOnly = 0x640A;
    /// Guest CR0.
    GUEST_CR0: Natural, ReadWrite = 0x6800;
    /// Guest CR3.
    GUEST_CR3: Natural, ReadWrite = 0x6802;
    /// Guest CR4.
    GUEST_CR4: Natural, ReadWrite = 0x6804;
    /// Guest ES base.
    GUEST_ES_BASE: Natural, ReadWrite = 0x6806;
    /// Guest CS base.
    GUEST_CS_BASE: Natural, ReadWrite = 0x6808;
    /// Guest SS base.
    GUEST_SS_BASE: Natural, ReadWrite = 0x680A;
    /// Guest DS base.
    GUEST_DS_BASE: Natural, ReadWrite = 0x680C;
    /// Guest FS base.
    GUEST_FS_BASE: Natural, ReadWrite = 0x680E;
    /// Guest GS base.
    GUEST_GS_BASE: Natural, ReadWrite = 0x6810;
    /// Guest LDTR base.
    GUEST_LDTR_BASE: Natural, ReadWrite = 0x6812;
    /// Guest TR base.
    GUEST_TR_BASE: Natural, ReadWrite = 0x6814;
    /// Guest GDTR base.
    GUEST_GDTR_BASE: Natural, ReadWrite = 0x6816;
    /// Guest IDTR base.
    GUEST_IDTR_BASE: Natural, ReadWrite = 0x6818;
    /// Guest DR7.
    GUEST_DR7: Natural, ReadWrite = 0x681A;
    /// Guest RSP.
    GUEST_RSP: Natural, ReadWrite = 0x681C;
    /// Guest RIP.
    GUEST_RIP: Natural, ReadWrite = 0x681E;
    /// Guest RFLAGS.
    GUEST_RFLAGS: Natural, ReadWrite = 0x6820;
    /// Guest pending debug exceptions.
    GUEST_PENDING_DEBUG_EXCEPTIONS: Natural, ReadWrite = 0x6822;
    /// Guest IA32_SYSENTER_ESP.
    GUEST_IA32_SYSENTER_ESP: Natural, ReadWrite = 0x6824;
    /// Guest IA32_SYSENTER_EIP.
    GUEST_IA32_SYSENTER_EIP: Natural, ReadWrite = 0x6826;
    /// Guest IA32_S_CET.
    GUEST_IA32_S_CET: Natural, ReadWrite = 0x6828;
    /// Guest SSP.
    GUEST_SSP: Natural, ReadWrite = 0x682A;
    /// Guest IA32_INTERRUPT_SSP_TABLE_ADDR.
    GUEST_IA32_INTERRUPT_SSP_TABLE_ADDR: Natural, ReadWrite = 0x682C;
    /// Host CR0.
    HOST_CR0: Natural, ReadWrite = 0x6C00;
    /// Host CR3.
    HOST_CR3: Natural, ReadWrite = 0x6C02;
    /// Host CR4.
    HOST_CR4: Natural, ReadWrite = 0x6C04;
    /// Host FS base.
    HOST_FS_BASE: Natural, ReadWrite = 0x6C06;
    /// Host GS base.
    HOST_GS_BASE: Natural, ReadWrite = 0x6C08;
    /// Host TR base.
    HOST_TR_BASE: Natural, ReadWrite = 0x6C0A;
    /// Host GDTR base.
    HOST_GDTR_BASE: Natural, ReadWrite = 0x6C0C;
    /// Host IDTR base.
    HOST_IDTR_BASE: Natural, ReadWrite = 0x6C0E;
    /// Host IA32_SYSENTER_ESP.
    HOST_IA32_SYSENTER_ESP: Natural, ReadWrite = 0x6C10;
    /// Host IA32_SYSENTER_EIP.
    HOST_IA32_SYSENTER_EIP: Natural, ReadWrite = 0x6C12;
    /// Host RSP.
    HOST_RSP: Natural, ReadWrite = 0x6C14;
    /// Host RIP.
    HOST_RIP: Natural, ReadWrite = 0x6C16;
    /// Host IA32_S_CET.
    HOST_IA32_S_CET: Natural, ReadWrite = 0x6C18;
    /// Host SSP.
    HOST_SSP: Natural, ReadWrite = 0x6C1A;
    /// Host IA32_INTERRUPT_SSP_TABLE_ADDR.
    HOST_IA32_INTERRUPT_SSP_TABLE_ADDR: Natural, ReadWrite = 0x6C1C;

}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_sorted_unique_and_well_formed() {
        assert!(ALL.len() >= 200, "catalog has {} fields", ALL.len());
        for pair in ALL.windows(2) {
            assert!(pair[0].encoding < pair[1].encoding, "{} / {}", pair[0].name, pair[1].name);
        }
        for info in ALL {
            let encoding = info.field_encoding();
            assert!(encoding.is_well_formed(), "{}", info.name);
            assert!(!encoding.is_high_access(), "{}: catalog holds full encodings", info.name);
            assert_eq!(info.encoding & (1 << 12), 0, "{}: bit 12 is reserved", info.name);
            assert_eq!(encoding.width(), info.width, "{}: width bits 14:13", info.name);
            assert_eq!(
                info.read_only,
                encoding.field_type() == FieldType::ExitInformation,
                "{}: read-only iff type bits 11:10 == 1",
                info.name
            );
            assert_eq!(lookup(info.encoding), Some(info));
        }
        let mut names: std::vec::Vec<&str> = ALL.iter().map(|info| info.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "names are unique");
    }

    #[test]
    fn decoding_splits_the_sdm_bit_fields() {
        // 0x2C0B: high access of HOST_IA32_FRED_RSP1 = bit 0 set, index 5, host, 64-bit.
        let encoding = FieldEncoding::from_raw(0x2C0B);
        assert!(encoding.is_high_access());
        assert_eq!(encoding.index(), 5);
        assert_eq!(encoding.field_type(), FieldType::HostState);
        assert_eq!(encoding.width(), FieldWidth::Bits64);
        assert!(encoding.is_well_formed());
        // Every width/type combination decodes from its bits.
        for (bits, width) in [
            (0, FieldWidth::Bits16),
            (1, FieldWidth::Bits64),
            (2, FieldWidth::Bits32),
            (3, FieldWidth::Natural),
        ] {
            assert_eq!(FieldEncoding::from_raw(bits << 13).width(), width);
            assert_eq!(width.bits(), bits);
        }
        for (bits, kind) in [
            (0, FieldType::Control),
            (1, FieldType::ExitInformation),
            (2, FieldType::GuestState),
            (3, FieldType::HostState),
        ] {
            assert_eq!(FieldEncoding::from_raw(bits << 10).field_type(), kind);
            assert_eq!(kind.bits(), bits);
        }
        // Reserved bit 12, bits above 14, and high access on a 32-bit field are malformed.
        assert!(!FieldEncoding::from_raw(0x1000).is_well_formed());
        assert!(!FieldEncoding::from_raw(0x8000).is_well_formed());
        assert!(!FieldEncoding::from_raw(0x4401).is_well_formed());
        assert!(FieldEncoding::from_raw(0x2001).is_well_formed());
    }

    /// The FRED and event-data encodings (SDM Vol. 3D Appendix B), typed in literally.
    #[test]
    fn fred_and_event_data_fields_match_facts() {
        let guest = [
            (GUEST_IA32_FRED_CONFIG, 0x281A),
            (GUEST_IA32_FRED_RSP1, 0x281C),
            (GUEST_IA32_FRED_RSP2, 0x281E),
            (GUEST_IA32_FRED_RSP3, 0x2820),
            (GUEST_IA32_FRED_STKLVLS, 0x2822),
            (GUEST_IA32_FRED_SSP1, 0x2824),
            (GUEST_IA32_FRED_SSP2, 0x2826),
            (GUEST_IA32_FRED_SSP3, 0x2828),
        ];
        let host = [
            (HOST_IA32_FRED_CONFIG, 0x2C08),
            (HOST_IA32_FRED_RSP1, 0x2C0A),
            (HOST_IA32_FRED_RSP2, 0x2C0C),
            (HOST_IA32_FRED_RSP3, 0x2C0E),
            (HOST_IA32_FRED_STKLVLS, 0x2C10),
            (HOST_IA32_FRED_SSP1, 0x2C12),
            (HOST_IA32_FRED_SSP2, 0x2C14),
            (HOST_IA32_FRED_SSP3, 0x2C16),
        ];
        for (field, encoding) in guest.into_iter().chain(host) {
            assert_eq!(field.encoding(), encoding);
            assert_eq!(field.high().raw(), encoding + 1);
        }
        assert_eq!(INJECTED_EVENT_DATA.encoding(), 0x2052);
        assert_eq!(ORIGINAL_EVENT_DATA.encoding(), 0x2404);
        assert!(ORIGINAL_EVENT_DATA.is_read_only());
        assert_eq!(SECONDARY_VM_EXIT_CONTROLS.encoding(), 0x2044);
    }

    /// Well-known encodings typed from the SDM tables, one per group at least.
    #[test]
    fn spot_checks_against_the_sdm() {
        let expected: &[(&str, u32)] = &[
            ("VIRTUAL_PROCESSOR_ID", 0x0000),
            ("POSTED_INTERRUPT_NOTIFICATION_VECTOR", 0x0002),
            ("GUEST_ES_SELECTOR", 0x0800),
            ("GUEST_TR_SELECTOR", 0x080E),
            ("GUEST_INTERRUPT_STATUS", 0x0810),
            ("PML_INDEX", 0x0812),
            ("HOST_CS_SELECTOR", 0x0C02),
            ("HOST_TR_SELECTOR", 0x0C0C),
            ("IO_BITMAP_A_ADDRESS", 0x2000),
            ("MSR_BITMAPS_ADDRESS", 0x2004),
            ("TSC_OFFSET", 0x2010),
            ("EPT_POINTER", 0x201A),
            ("TERTIARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS", 0x2034),
            ("PCONFIG_EXITING_BITMAP", 0x203E),
            ("HLAT_POINTER", 0x2040),
            ("PID_POINTER_TABLE_ADDRESS", 0x2042),
            ("GUEST_PHYSICAL_ADDRESS", 0x2400),
            ("VMCS_LINK_POINTER", 0x2800),
            ("GUEST_IA32_EFER", 0x2806),
            ("GUEST_IA32_PKRS", 0x2818),
            ("HOST_IA32_PAT", 0x2C00),
            ("HOST_IA32_PKRS", 0x2C06),
            ("PIN_BASED_VM_EXECUTION_CONTROLS", 0x4000),
            ("PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS", 0x4002),
            ("EXCEPTION_BITMAP", 0x4004),
            ("PRIMARY_VM_EXIT_CONTROLS", 0x400C),
            ("VM_ENTRY_CONTROLS", 0x4012),
            ("VM_ENTRY_INTERRUPTION_INFO", 0x4016),
            ("VM_ENTRY_EXCEPTION_ERROR_CODE", 0x4018),
            ("VM_ENTRY_INSTRUCTION_LENGTH", 0x401A),
            ("SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS", 0x401E),
            ("VM_INSTRUCTION_ERROR", 0x4400),
            ("EXIT_REASON", 0x4402),
            ("VM_EXIT_INTERRUPTION_INFO", 0x4404),
            ("IDT_VECTORING_INFO", 0x4408),
            ("VM_EXIT_INSTRUCTION_LENGTH", 0x440C),
            ("GUEST_ES_LIMIT", 0x4800),
            ("GUEST_CS_ACCESS_RIGHTS", 0x4816),
            ("GUEST_INTERRUPTIBILITY_STATE", 0x4824),
            ("GUEST_ACTIVITY_STATE", 0x4826),
            ("VMX_PREEMPTION_TIMER_VALUE", 0x482E),
            ("HOST_IA32_SYSENTER_CS", 0x4C00),
            ("CR0_GUEST_HOST_MASK", 0x6000),
            ("CR3_TARGET_VALUE_3", 0x600E),
            ("EXIT_QUALIFICATION", 0x6400),
            ("GUEST_LINEAR_ADDRESS", 0x640A),
            ("GUEST_CR0", 0x6800),
            ("GUEST_RSP", 0x681C),
            ("GUEST_RIP", 0x681E),
            ("GUEST_RFLAGS", 0x6820),
            ("GUEST_PENDING_DEBUG_EXCEPTIONS", 0x6822),
            ("GUEST_SSP", 0x682A),
            ("HOST_CR0", 0x6C00),
            ("HOST_RSP", 0x6C14),
            ("HOST_RIP", 0x6C16),
            ("HOST_IA32_INTERRUPT_SSP_TABLE_ADDR", 0x6C1C),
        ];
        for &(name, encoding) in expected {
            let info = lookup(encoding).unwrap_or_else(|| panic!("{name} {encoding:#x} missing"));
            assert_eq!(info.name, name);
        }
        assert_eq!(GUEST_RIP.encoding(), 0x681E);
        assert_eq!(HOST_RIP.width(), FieldWidth::Natural);
        assert_eq!(VM_ENTRY_INTERRUPTION_INFO.width(), FieldWidth::Bits32);
        assert_eq!(VIRTUAL_PROCESSOR_ID.width(), FieldWidth::Bits16);
    }

    #[test]
    fn lookup_rejects_unknown_and_high_encodings() {
        assert_eq!(lookup(0x2001), None);
        assert_eq!(lookup(0x0001), None);
        assert_eq!(lookup(0xFFFF_FFFF), None);
        assert_eq!(lookup(0x203C), None, "TDX-only fields are not in the catalog");
    }

    #[test]
    fn widths_truncate_and_extend() {
        assert_eq!(U16::from_raw(0x1_2345), 0x2345);
        assert_eq!(U32::from_raw(0x1_2345_6789), 0x2345_6789);
        assert_eq!(U64::from_raw(u64::MAX), u64::MAX);
        assert_eq!(U16::to_raw(0xFFFF), 0xFFFF);
        assert_eq!(U32::to_raw(0xFFFF_FFFF), 0xFFFF_FFFF);
    }
}
