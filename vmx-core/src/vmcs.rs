//! VMCS access: the [`VmcsAccess`] trait (raw access by encoding, typed access on top), the
//! software VMCS, and the hardware side: [`VmxRoot`] (one per logical processor), [`Vmcs`] (one
//! per vCPU, with its launch state), [`ActiveVmcs`] (the short-lived handle of the current
//! VMCS) and the guest runner.
//!
//! A vCPU owns its VMCS; the exit loop activates it (VMPTRLD only when another VMCS was
//! current) and runs it. Only the address of the region is vouched for with `unsafe`, once:
//!
//! ```no_run
//! # #[cfg(target_arch = "x86_64")] {
//! use hvkit_vmx_core::exit::{ExitInfo, ExitInfoOptions, VmExit};
//! use hvkit_vmx_core::vmcs::{ClearVmcs, GuestRegisters, Vmcs, VmcsAccess, VmxRoot};
//! use hvkit_vmx_core::{VmFail, field};
//!
//! struct Vcpu {
//!     vmcs: Vmcs,
//!     registers: GuestRegisters,
//!     exit: Option<VmExit>,
//! }
//!
//! impl Vcpu {
//!     fn new(root: &mut VmxRoot, region: ClearVmcs) -> Result<Self, VmFail> {
//!         let mut vmcs = root.adopt(region)?; // VMCLEAR
//!         let mut active = root.activate(&mut vmcs)?; // VMPTRLD
//!         active.write(field::VMCS_LINK_POINTER, u64::MAX)?; // ... the rest of the state
//!         Ok(Self { vmcs, registers: GuestRegisters::default(), exit: None })
//!     }
//!
//!     fn run_once(&mut self, root: &mut VmxRoot) -> Result<(), VmFail> {
//!         let mut vmcs = root.activate(&mut self.vmcs)?; // no VMPTRLD if already current
//!         // SAFETY: complete guest and host state, interrupts disabled, EPT confines the guest.
//!         let exit = unsafe { vmcs.run(&mut self.registers, self.exit.take()) }?;
//!         let info = ExitInfo::read(&vmcs, &exit, ExitInfoOptions::default())?;
//!         let _ = info.reason; // ... handle the exit
//!         self.exit = Some(exit);
//!         Ok(())
//!     }
//! }
//!
//! // At set-up, per region: the physical address is the one unsafe promise.
//! // SAFETY: a 4 KiB VMCS region with the revision id, reserved to this vCPU, never loaded.
//! let region = unsafe { ClearVmcs::new(0x0010_0000) };
//! # let _ = region;
//! # }
//! ```

use crate::error::VmFail;
use crate::field::{Access, Field, ReadWrite, Width};

/// Access to one VMCS: hardware (VMREAD/VMWRITE on the current VMCS) or a software model.
///
/// Implementations answer like hardware: an encoding the processor does not support fails with
/// [`VmInstructionError::UnsupportedVmcsComponent`](crate::error::VmInstructionError) (12), a
/// write to a read-only field with
/// [`VmInstructionError::VmwriteReadOnlyComponent`](crate::error::VmInstructionError) (13).
pub trait VmcsAccess {
    /// Reads a field by raw encoding (VMREAD). Narrow fields are returned zero-extended.
    fn read_raw(&self, encoding: u32) -> Result<u64, VmFail>;

    /// Writes a field by raw encoding (VMWRITE). Bits above the field's width are ignored by
    /// hardware.
    fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmFail>;

    /// Reads two fields by raw encoding: `Ok` only when both reads succeed, else the first
    /// failure. Hardware implements it with one status check for both VMREADs.
    #[inline(always)]
    fn read_raw_pair(&self, first: u32, second: u32) -> Result<(u64, u64), VmFail> {
        Ok((self.read_raw(first)?, self.read_raw(second)?))
    }

    /// Reads a typed field.
    #[inline(always)]
    fn read<W: Width, A: Access>(&self, field: Field<W, A>) -> Result<W::Value, VmFail> {
        self.read_raw(field.encoding()).map(W::from_raw)
    }

    /// Writes a typed read-write field.
    #[inline(always)]
    fn write<W: Width>(
        &mut self,
        field: Field<W, ReadWrite>,
        value: W::Value,
    ) -> Result<(), VmFail> {
        self.write_raw(field.encoding(), W::to_raw(value))
    }
}

use crate::error::VmInstructionError;
use crate::exit::VmExit;
use crate::field::{self, FieldInfo, FieldType, FieldWidth, ReadOnly};
use core::cell::Cell;
use core::marker::PhantomData;

const CATALOG_LEN: usize = field::ALL.len();

/// Bits of an encoding that no VMCS field sets (SDM Vol. 3D Appendix B.1: bits 31:15 and 12
/// are reserved and 0): an encoding with any of them is unsupported.
const RESERVED_ENCODING_BITS: u32 = !0x6FFF;

/// The slot-table key of an encoding without reserved bits: width (14:13), type (11:10) and
/// index (9:1), packed into 13 bits. The access-type bit 0 is not part of it.
const fn slot_key(encoding: u32) -> usize {
    (((encoding >> 2) & 0x1800) | ((encoding >> 1) & 0x7FF)) as usize
}

/// Entries of the per-field tables: a `u8` catalog index always indexes them in bounds, so a
/// lookup needs no bounds check (fuzzers instrument every compare).
const TABLE_LEN: usize = 256;

/// The catalog index standing for "no such field" (never a catalog index, never supported).
const NO_FIELD: u8 = u8::MAX;

/// Catalog position for every slot key, [`NO_FIELD`] where the catalog has no field: an O(1)
/// replacement for a binary search on every access.
#[allow(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    reason = "evaluated at compile time: an index out of range or a catalog over 254 fields fails the build"
)]
const SLOT_TABLE: [u8; 1 << 13] = {
    let mut table = [NO_FIELD; 1 << 13];
    let mut position = 0;
    while position < CATALOG_LEN {
        let encoding = field::ALL[position].encoding;
        assert!(
            encoding & (RESERVED_ENCODING_BITS | 1) == 0,
            "catalog encoding with reserved bits"
        );
        assert!(table[slot_key(encoding)] == NO_FIELD, "two catalog fields share a slot key");
        assert!(position < NO_FIELD as usize, "catalog too large for u8 slots");
        table[slot_key(encoding)] = position as u8;
        position += 1;
    }
    table
};

/// Per catalog index: the bits the field's width keeps (all zero past the catalog).
#[allow(
    clippy::indexing_slicing,
    reason = "const evaluation: an out-of-range index fails the build"
)]
const WIDTH_MASK: [u64; TABLE_LEN] = {
    let mut masks = [0; TABLE_LEN];
    let mut index = 0;
    while index < CATALOG_LEN {
        masks[index] = match field::ALL[index].width {
            FieldWidth::Bits16 => 0xFFFF,
            FieldWidth::Bits32 => 0xFFFF_FFFF,
            FieldWidth::Bits64 | FieldWidth::Natural => u64::MAX,
        };
        index += 1;
    }
    masks
};

/// Per catalog index: 1 when the field has a high-access encoding (64-bit fields), else 0.
#[allow(
    clippy::indexing_slicing,
    reason = "const evaluation: an out-of-range index fails the build"
)]
const HAS_HIGH_ACCESS: [u32; TABLE_LEN] = {
    let mut high = [0; TABLE_LEN];
    let mut index = 0;
    while index < CATALOG_LEN {
        if matches!(field::ALL[index].width, FieldWidth::Bits64) {
            high[index] = 1;
        }
        index += 1;
    }
    high
};

/// Per catalog index: the field is read-only (an exit-information field).
#[allow(
    clippy::indexing_slicing,
    reason = "const evaluation: an out-of-range index fails the build"
)]
const READ_ONLY_FIELD: [bool; TABLE_LEN] = {
    let mut read_only = [false; TABLE_LEN];
    let mut index = 0;
    while index < CATALOG_LEN {
        read_only[index] =
            matches!(field::ALL[index].field_encoding().field_type(), FieldType::ExitInformation);
        index += 1;
    }
    read_only
};

/// `true` for the catalog indices, `false` past the catalog (and for [`NO_FIELD`]).
const ALL_SUPPORTED: [bool; TABLE_LEN] = {
    let mut supported = [false; TABLE_LEN];
    let mut index = 0;
    while index < CATALOG_LEN {
        #[allow(clippy::indexing_slicing, reason = "const evaluation")]
        {
            supported[index] = true;
        }
        index += 1;
    }
    supported
};

/// How many catalog fields a VM exit rewrites: the exit-information fields except the
/// VM-instruction error field (which only failing VMX instructions write).
#[allow(
    clippy::indexing_slicing,
    reason = "const evaluation: an out-of-range index fails the build"
)]
const EXIT_INFORMATION_COUNT: usize = {
    let mut count = 0;
    let mut index = 0;
    while index < CATALOG_LEN {
        if rewritten_at_exit(&field::ALL[index]) {
            count += 1;
        }
        index += 1;
    }
    count
};

/// The catalog indices of those fields, so that a simulated exit visits only them (`u8`: they
/// index the per-field tables without a bounds check).
#[allow(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    reason = "const evaluation: an out-of-range index fails the build; SLOT_TABLE asserts the \
              catalog fits u8"
)]
const EXIT_INFORMATION_SLOTS: [u8; EXIT_INFORMATION_COUNT] = {
    let mut slots = [0; EXIT_INFORMATION_COUNT];
    let (mut index, mut next) = (0, 0);
    while index < CATALOG_LEN {
        if rewritten_at_exit(&field::ALL[index]) {
            slots[next] = index as u8;
            next += 1;
        }
        index += 1;
    }
    slots
};

#[allow(
    clippy::indexing_slicing,
    reason = "const evaluation: an out-of-range index fails the build"
)]
const fn rewritten_at_exit(info: &FieldInfo) -> bool {
    matches!(info.field_encoding().field_type(), FieldType::ExitInformation)
        && info.encoding != field::VM_INSTRUCTION_ERROR.encoding()
}

/// An in-memory VMCS that answers like hardware.
///
/// - Reading or writing an encoding it does not support fails with VMfailValid and error 12
///   ([`VmInstructionError::UnsupportedVmcsComponent`]); writing a read-only (exit-information)
///   field fails with error 13 ([`VmInstructionError::VmwriteReadOnlyComponent`]). As on
///   hardware, every VMfailValid also stores its number in the VM-instruction error field.
/// - Writes to 16- and 32-bit fields keep only the field's width; the high-access encoding
///   (bit 0 set) of a 64-bit field reads and writes bits 63:32.
/// - Tests and fuzzers play the processor at a VM exit with [`SoftVmcs::set_exit_information`]
///   and [`SoftVmcs::complete_exit`].
///
/// It models storage and access rules only: it does not run VM-entry checks (see
/// [`entry_check`](crate::entry_check)) or guests. Two are equal when every field, the
/// supported set and the pending exit information are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftVmcs {
    /// By catalog index (entries past the catalog stay 0).
    values: [u64; TABLE_LEN],
    /// By catalog index; always `false` past the catalog.
    supported: [bool; TABLE_LEN],
    instruction_error: Cell<u32>,
    /// Exit-information fields set with `set_exit_information` since the last `complete_exit`.
    set_for_this_exit: [bool; TABLE_LEN],
}

impl Default for SoftVmcs {
    fn default() -> Self {
        Self::new()
    }
}

impl SoftVmcs {
    /// A VMCS supporting every field of the catalog, all zero.
    pub const fn new() -> Self {
        Self {
            values: [0; TABLE_LEN],
            supported: ALL_SUPPORTED,
            instruction_error: Cell::new(0),
            set_for_this_exit: [false; TABLE_LEN],
        }
    }

    /// A VMCS supporting only the catalog fields for which `supported` returns `true` (for
    /// example to model a processor without FRED or CET fields).
    pub fn with_supported(supported: impl Fn(&FieldInfo) -> bool) -> Self {
        let mut vmcs = Self::new();
        for (slot, info) in vmcs.supported.iter_mut().zip(field::ALL) {
            *slot = supported(info);
        }
        vmcs
    }

    /// A VMCS supporting the fields whose index (encoding bits 9:1) is at most
    /// `highest_index`, as IA32_VMX_VMCS_ENUM bits 9:1 report it.
    pub fn with_highest_index(highest_index: u32) -> Self {
        Self::with_supported(|info| info.field_encoding().index() <= highest_index)
    }

    /// `true` when this VMCS supports the (full or high-access) encoding.
    pub fn supports(&self, encoding: u32) -> bool {
        self.index(encoding).is_some()
    }

    /// The VM-instruction error number of the last failed access (0 if none failed).
    pub fn last_instruction_error(&self) -> u32 {
        self.instruction_error.get()
    }

    /// Sets a read-only exit-information field, as the processor does at a VM exit. The value
    /// belongs to the exit that the next [`complete_exit`](Self::complete_exit) completes.
    pub fn set_exit_information<W: Width>(
        &mut self,
        field: Field<W, ReadOnly>,
        value: W::Value,
    ) -> Result<(), VmFail> {
        let index = self.index(field.encoding()).ok_or_else(|| self.unsupported())?;
        let mask = WIDTH_MASK.get(index).copied().unwrap_or(0);
        if let Some(slot) = self.values.get_mut(index) {
            *slot = W::to_raw(value) & mask;
        }
        if let Some(fresh) = self.set_for_this_exit.get_mut(index) {
            *fresh = true;
        }
        if field.encoding() == field::VM_INSTRUCTION_ERROR.encoding() {
            self.instruction_error.set(W::to_raw(value) as u32);
        }
        Ok(())
    }

    /// Completes a simulated VM exit: the exit-information fields now describe "this" exit and
    /// the returned token lets [`ExitInfo`](crate::exit::ExitInfo) read them.
    ///
    /// A processor rewrites the exit-information fields at every VM exit (SDM Vol. 3C 27.2
    /// "Recording VM-Exit Information and Updating VM-Entry Control Fields"): the valid bit of
    /// the VM-exit interruption information and of the IDT-vectoring information is 0 unless
    /// this exit is due to an event or
    /// interrupted an event's delivery, and the other fields (qualification, error codes,
    /// instruction length and information, linear and physical address, original event data)
    /// are undefined when they do not apply. So every exit-information field not set with
    /// [`set_exit_information`](Self::set_exit_information) since the previous
    /// `complete_exit` reads as 0 (not valid) here: nothing leaks from the previous exit. The
    /// VM-instruction error field (0x4400) is the exception: VM exits do not write it, only
    /// failing VMX instructions do, so it keeps its value.
    pub fn complete_exit(&mut self) -> VmExit {
        for &index in &EXIT_INFORMATION_SLOTS {
            let index = usize::from(index);
            if let (Some(fresh), Some(value)) =
                (self.set_for_this_exit.get_mut(index), self.values.get_mut(index))
                && !core::mem::take(fresh)
            {
                *value = 0;
            }
        }
        VmExit::new()
    }

    /// Consumes the token of the previous exit, as a VM entry would.
    pub fn enter(&mut self, exit: VmExit) {
        let _consumed = exit;
    }

    /// The catalog index of a supported encoding (full, or high access of a 64-bit field).
    ///
    /// The reasons to refuse that depend on the encoding alone are OR-ed into one word (one
    /// compare, which folds away for a constant encoding once inlined); support is tested as
    /// the stored `bool` itself. A fuzzer instruments each integer compare, and this runs on
    /// every access.
    #[inline]
    fn index(&self, encoding: u32) -> Option<usize> {
        let index = usize::from(SLOT_TABLE.get(slot_key(encoding)).copied().unwrap_or(NO_FIELD));
        let high_access = HAS_HIGH_ACCESS.get(index).copied().unwrap_or(0);
        let malformed = (encoding & RESERVED_ENCODING_BITS) | (encoding & 1 & !high_access);
        if malformed == 0 && self.supported.get(index).copied().unwrap_or(false) {
            Some(index)
        } else {
            None
        }
    }

    /// [`index`](Self::index) with the field's catalog entry.
    #[cfg(test)]
    fn slot(&self, encoding: u32) -> Option<(usize, &'static FieldInfo)> {
        let index = self.index(encoding)?;
        Some((index, field::ALL.get(index)?))
    }

    fn fail(&self, error: VmInstructionError) -> VmFail {
        // Hardware stores the number in the VM-instruction error field on VMfailValid.
        self.instruction_error.set(error.number());
        VmFail::Valid(error)
    }

    fn unsupported(&self) -> VmFail {
        self.fail(VmInstructionError::UnsupportedVmcsComponent)
    }
}

impl VmcsAccess for SoftVmcs {
    // Inlined into callers (also across crates): with a constant encoding the lookup folds to
    // one table entry, which keeps simulated exits cheap for tests and fuzzers.
    #[inline]
    fn read_raw(&self, encoding: u32) -> Result<u64, VmFail> {
        let index = self.index(encoding).ok_or_else(|| self.unsupported())?;
        if encoding == field::VM_INSTRUCTION_ERROR.encoding() {
            return Ok(u64::from(self.instruction_error.get()));
        }
        let value = self.values.get(index).copied().unwrap_or(0);
        // The high-access encoding (bit 0) reads bits 63:32.
        Ok(value >> (32 * (encoding & 1)))
    }

    #[inline]
    fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
        let index = self.index(encoding).ok_or_else(|| self.unsupported())?;
        if READ_ONLY_FIELD.get(index).copied().unwrap_or(true) {
            return Err(self.fail(VmInstructionError::VmwriteReadOnlyComponent));
        }
        // A full write keeps the field's width; a high-access write (bit 0, 64-bit fields
        // only) replaces bits 63:32 and keeps bits 31:0.
        let high = u64::from(encoding & 1);
        let kept = 0xFFFF_FFFF * high;
        let written = WIDTH_MASK.get(index).copied().unwrap_or(0) & !kept;
        if let Some(slot) = self.values.get_mut(index) {
            *slot = (*slot & kept) | ((value << (32 * high)) & written);
        }
        Ok(())
    }
}

/// The guest's general-purpose registers, saved and restored around VM entries by
/// [`ActiveVmcs::run`] (RSP and RIP live in the VMCS guest-state area).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(C)]
#[allow(missing_docs, reason = "one field per register, named after it")]
pub struct GuestRegisters {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

static_assertions::const_assert_eq!(core::mem::size_of::<GuestRegisters>(), 15 * 8);
static_assertions::const_assert_eq!(core::mem::offset_of!(GuestRegisters, rax), 0);
static_assertions::const_assert_eq!(core::mem::offset_of!(GuestRegisters, rbx), 8);
static_assertions::const_assert_eq!(core::mem::offset_of!(GuestRegisters, rcx), 16);
static_assertions::const_assert_eq!(core::mem::offset_of!(GuestRegisters, rdx), 24);
static_assertions::const_assert_eq!(core::mem::offset_of!(GuestRegisters, rsi), 32);
static_assertions::const_assert_eq!(core::mem::offset_of!(GuestRegisters, rdi), 40);
static_assertions::const_assert_eq!(core::mem::offset_of!(GuestRegisters, rbp), 48);
static_assertions::const_assert_eq!(core::mem::offset_of!(GuestRegisters, r8), 56);
static_assertions::const_assert_eq!(core::mem::offset_of!(GuestRegisters, r15), 112);

/// The current-VMCS pointer when no VMCS is current: VMXON and VMCLEAR of the current VMCS
/// leave it all ones (SDM Vol. 3C 31.3 "VMXON" and "VMCLEAR" operation).
const NO_CURRENT_VMCS: u64 = u64::MAX;

/// Proof of VMX root operation on this logical processor, and the record of which VMCS is
/// current on it.
///
/// Exists only after a successful VMXON ([`VmxRoot::enable`]) or when the caller vouches for it
/// ([`VmxRoot::assume`]). It is neither `Send` nor `Sync`: VMX root operation belongs to one
/// logical processor, so a hypervisor keeps one `VmxRoot` per CPU (in per-CPU storage).
///
/// ```compile_fail
/// fn is_send<T: Send>() {}
/// is_send::<hvkit_vmx_core::vmcs::VmxRoot>(); // VMX root operation stays on its CPU
/// ```
///
/// The token remembers the physical address of the VMCS it last made current, so that
/// [`activate`](Self::activate) executes VMPTRLD only when another VMCS (or none) is current:
/// in an exit loop that activates its vCPU's VMCS every time, the VMPTRLD happens once. Code
/// that executes VMPTRLD or VMCLEAR itself through [`instr`](crate::instr) must call
/// [`forget_current`](Self::forget_current) afterwards.
#[derive(Debug)]
pub struct VmxRoot {
    /// Physical address of the current VMCS as far as this token knows ([`NO_CURRENT_VMCS`]
    /// when none is or when unknown).
    current: u64,
    _per_cpu: PhantomData<*mut ()>,
}

/// A VMCS region that is clear and not active on any logical processor: the form in which a
/// VMCS is created and in which it moves between logical processors.
///
/// It is `Send` and `Sync` (it is only a physical address with a promise attached); the
/// [`Vmcs`] made from it with [`VmxRoot::adopt`] is not. Moving a vCPU from one logical
/// processor to another goes through this type:
///
/// 1. on the old processor, [`VmxRoot::release`] executes VMCLEAR (the processor writes any
///    VMCS data it caches back to the region and the VMCS becomes clear and not active) and
///    returns a `ClearVmcs`;
/// 2. the `ClearVmcs` (with the vCPU's registers) is sent to the new processor;
/// 3. there, [`VmxRoot::adopt`] makes it a [`Vmcs`] again; the first entry uses VMLAUNCH.
///
/// The SDM requires exactly this: a VMCS must not be active on two logical processors, and
/// only VMCLEAR on the processor where it is active makes it inactive (SDM Vol. 3C 25.11.1
/// "Software Use of Virtual-Machine Control Structures"). HOST_* fields that differ between
/// processors (TR, GDTR and IDTR bases, GS base) must be rewritten after the move.
#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ClearVmcs {
    address: u64,
}

impl ClearVmcs {
    /// Vouches for a VMCS region: the one unsafe step of the VMCS life cycle.
    ///
    /// # Safety
    ///
    /// 1. `physical_address` is the 4 KiB-aligned physical address of a VMCS region
    ///    ([`VmcsRegion`](crate::region::VmcsRegion)) that holds the revision identifier of
    ///    the processors it will be used on (IA32_VMX_BASIC bits 30:0), and is not a VMXON
    ///    region.
    /// 2. The region's memory stays reserved to the processor (nothing else reads, writes or
    ///    frees it) for as long as this value, or the [`Vmcs`] made from it, exists.
    /// 3. No other `ClearVmcs` or `Vmcs` names the same region.
    /// 4. The VMCS is not active on any logical processor: it was never made current, or it
    ///    was VMCLEARed since.
    pub const unsafe fn new(physical_address: u64) -> Self {
        Self { address: physical_address }
    }

    /// The physical address of the region.
    pub const fn physical_address(&self) -> u64 {
        self.address
    }
}

/// A VMCS owned by one virtual CPU, bound to the logical processor it was adopted on: the
/// physical address of its region, its launch state (SDM Vol. 3C 25.1: "clear" or
/// "launched") and the HOST_RSP value the guest runner last wrote into it.
///
/// A `Vcpu` struct holds it by value next to its [`GuestRegisters`]; the short-lived
/// [`ActiveVmcs`] handle that reads, writes and runs it comes from [`VmxRoot::activate`], which
/// borrows both the root and this VMCS: two handles cannot exist at once on one processor, a
/// handle cannot survive a switch to another VMCS, and the launch state lives here, so
/// switching back and forth between VMCSs keeps VMLAUNCH vs VMRESUME right.
///
/// Not `Send`/`Sync`: the VMCS may be active (current or cached) on this logical processor.
/// To move it to another one, [`VmxRoot::release`] it into a [`ClearVmcs`] first.
///
/// ```
/// # use hvkit_vmx_core::vmcs::{ClearVmcs, Vmcs};
/// fn is_send<T: Send>() {}
/// is_send::<ClearVmcs>();
/// ```
///
/// ```compile_fail
/// # use hvkit_vmx_core::vmcs::{ClearVmcs, Vmcs};
/// fn is_send<T: Send>() {}
/// is_send::<Vmcs>(); // a VMCS that may be active here cannot move to another CPU
/// ```
#[derive(Debug, PartialEq, Eq)]
pub struct Vmcs {
    address: u64,
    launched: bool,
    /// The HOST_RSP value last written by the guest runner (0 = unknown): HOST_RSP and
    /// HOST_RIP are written only when the runner's stack pointer differs from it.
    host_rsp: u64,
    _per_cpu: PhantomData<*mut ()>,
}

#[cfg(feature = "defmt")]
impl defmt::Format for Vmcs {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "Vmcs {{ address: {=u64:#x}, launched: {=bool} }}",
            self.address,
            self.launched
        );
    }
}

impl Vmcs {
    /// The physical address of the region.
    pub const fn physical_address(&self) -> u64 {
        self.address
    }

    /// `true` once a VM entry with VMLAUNCH has succeeded on this VMCS and it has not been
    /// cleared since: the next entry uses VMRESUME.
    pub const fn is_launched(&self) -> bool {
        self.launched
    }

    /// After VMCLEAR: the launch state is clear (SDM Vol. 3C 31.3 "VMCLEAR") and the region
    /// holds no host RSP the runner wrote for this processor's stack any more.
    #[cfg_attr(
        not(target_arch = "x86_64"),
        allow(dead_code, reason = "called by the VMCLEAR paths, which are x86_64-only")
    )]
    fn cleared(&mut self) {
        self.launched = false;
        self.host_rsp = 0;
    }

    /// After the guest runner returned through a VM exit: a VMLAUNCH (the entry was made with
    /// `was_launched` false) that got this far launched the VMCS, unless the exit is a
    /// VM-entry failure (see [`launched_after_vmlaunch`]). `exit_reason` is read only after a
    /// VMLAUNCH. (`was_launched` is the value read before the entry: kept in a register across
    /// the trampoline, it spares the exit path a load.)
    #[cfg_attr(
        not(target_arch = "x86_64"),
        allow(dead_code, reason = "the guest runner that uses it is x86_64-only")
    )]
    #[inline(always)]
    fn exited(&mut self, was_launched: bool, exit_reason: impl FnOnce() -> Result<u32, VmFail>) {
        if !was_launched {
            self.launched = launched_after_vmlaunch(exit_reason());
        }
    }
}

impl VmxRoot {
    /// Vouches for VMX root operation entered by other code. The token assumes no VMCS is
    /// current (the first [`activate`](Self::activate) executes VMPTRLD).
    ///
    /// # Safety
    ///
    /// The logical processor must be in VMX root operation at CPL 0 for as long as the token
    /// lives, and no other `VmxRoot` for it may exist.
    pub const unsafe fn assume() -> Self {
        Self { current: NO_CURRENT_VMCS, _per_cpu: PhantomData }
    }

    /// Executes VMXON with the VMXON region at physical address `region`.
    ///
    /// # Safety
    ///
    /// As for [`instr::vmxon`](crate::instr::vmxon).
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn enable(region: u64) -> Result<Self, VmFail> {
        // SAFETY: forwarded to the caller.
        unsafe { crate::instr::vmxon(region) }?;
        Ok(Self { current: NO_CURRENT_VMCS, _per_cpu: PhantomData })
    }

    /// Executes VMXOFF, consuming the token.
    ///
    /// # Safety
    ///
    /// 1. As for [`instr::vmxoff`](crate::instr::vmxoff).
    /// 2. Every [`Vmcs`] made current under this token has been [released](Self::release) or
    ///    [cleared](Self::clear): VMXOFF does not write an active VMCS back to its region, so
    ///    its data could be lost (SDM Vol. 3C 25.11.1).
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn disable(self) -> Result<(), VmFail> {
        // SAFETY: the token proves VMX root operation; the rest is the caller's contract.
        unsafe { crate::instr::vmxoff() }
    }

    /// The physical address of the VMCS this token made current last, or `None` when no VMCS
    /// is current (or the token does not know).
    pub const fn current(&self) -> Option<u64> {
        if self.current == NO_CURRENT_VMCS { None } else { Some(self.current) }
    }

    /// Forgets which VMCS is current, so that the next [`activate`](Self::activate) executes
    /// VMPTRLD. Call it after executing VMPTRLD or VMCLEAR through [`instr`](crate::instr).
    pub fn forget_current(&mut self) {
        self.current = NO_CURRENT_VMCS;
    }

    #[cfg_attr(
        not(target_arch = "x86_64"),
        allow(dead_code, reason = "the core of an x86_64-only VMCLEAR/VMPTRLD path")
    )]
    fn adopt_with(
        &mut self,
        vmcs: ClearVmcs,
        vmclear: impl FnOnce(u64) -> Result<(), VmFail>,
    ) -> Result<Vmcs, VmFail> {
        vmclear(vmcs.address)?;
        if self.current == vmcs.address {
            self.current = NO_CURRENT_VMCS;
        }
        Ok(Vmcs { address: vmcs.address, launched: false, host_rsp: 0, _per_cpu: PhantomData })
    }

    #[cfg_attr(
        not(target_arch = "x86_64"),
        allow(dead_code, reason = "the core of an x86_64-only VMCLEAR/VMPTRLD path")
    )]
    fn clear_with(
        &mut self,
        vmcs: &mut Vmcs,
        vmclear: impl FnOnce(u64) -> Result<(), VmFail>,
    ) -> Result<(), VmFail> {
        vmclear(vmcs.address)?;
        vmcs.cleared();
        if self.current == vmcs.address {
            self.current = NO_CURRENT_VMCS;
        }
        Ok(())
    }

    #[cfg_attr(
        not(target_arch = "x86_64"),
        allow(dead_code, reason = "the core of an x86_64-only VMCLEAR/VMPTRLD path")
    )]
    #[inline(always)]
    fn activate_with<'a>(
        &'a mut self,
        vmcs: &'a mut Vmcs,
        vmptrld: impl FnOnce(u64) -> Result<(), VmFail>,
    ) -> Result<ActiveVmcs<'a>, VmFail> {
        if self.current != vmcs.address {
            // Whatever was current stays so if VMPTRLD fails; the token no longer knows.
            self.current = NO_CURRENT_VMCS;
            vmptrld(vmcs.address)?;
            self.current = vmcs.address;
        }
        Ok(ActiveVmcs { vmcs, _root: PhantomData })
    }
}

#[cfg(target_arch = "x86_64")]
impl VmxRoot {
    /// Takes a clear VMCS into use on this logical processor: VMCLEAR (which also initialises
    /// a new region's implementation-specific data, SDM Vol. 3C 25.11.3 "Initializing a
    /// VMCS"), giving a [`Vmcs`] in the clear launch state.
    ///
    /// On failure the region was not taken into use.
    pub fn adopt(&mut self, vmcs: ClearVmcs) -> Result<Vmcs, VmFail> {
        self.adopt_with(vmcs, |address| {
            // SAFETY: the token proves VMX root operation at CPL 0; `ClearVmcs::new`'s contract
            // makes `address` a VMCS region's address.
            unsafe { crate::instr::vmclear(address) }
        })
    }

    /// VMCLEAR: the VMCS's data is written back to its region, the VMCS is no longer current or
    /// active, and its launch state is clear (the next entry uses VMLAUNCH). It stays bound to
    /// this logical processor; [`release`](Self::release) lets it move.
    ///
    /// On failure the VMCS and its launch state are as they were.
    pub fn clear(&mut self, vmcs: &mut Vmcs) -> Result<(), VmFail> {
        self.clear_with(vmcs, |address| {
            // SAFETY: as in `adopt`: a `Vmcs` is made only from a `ClearVmcs`.
            unsafe { crate::instr::vmclear(address) }
        })
    }

    /// VMCLEAR, then gives up the VMCS as a [`ClearVmcs`] that may move to another logical
    /// processor (see [`ClearVmcs`] for the whole move).
    ///
    /// On failure the VMCS comes back unchanged with the error.
    pub fn release(&mut self, mut vmcs: Vmcs) -> Result<ClearVmcs, (Vmcs, VmFail)> {
        match self.clear(&mut vmcs) {
            Ok(()) => Ok(ClearVmcs { address: vmcs.address }),
            Err(fail) => Err((vmcs, fail)),
        }
    }

    /// Makes `vmcs` the current VMCS of this logical processor (VMPTRLD, skipped when it
    /// already is) and returns the handle that reads, writes and runs it. The handle borrows
    /// both the root and the VMCS, so it ends before another VMCS can be activated, cleared
    /// or released:
    ///
    /// ```compile_fail
    /// # use hvkit_vmx_core::{field, vmcs::{ClearVmcs, VmcsAccess, VmxRoot}};
    /// # fn f() -> Result<(), hvkit_vmx_core::VmFail> {
    /// let mut root = unsafe { VmxRoot::assume() };
    /// let mut first = root.adopt(unsafe { ClearVmcs::new(0x1000) })?;
    /// let mut second = root.adopt(unsafe { ClearVmcs::new(0x2000) })?;
    /// let active = root.activate(&mut first)?;
    /// let _other = root.activate(&mut second)?; // VMPTRLD of another VMCS...
    /// active.read(field::GUEST_RIP)?; // ...so the first handle is gone: does not compile.
    /// # Ok(()) }
    /// ```
    ///
    /// ```compile_fail
    /// # use hvkit_vmx_core::{field, vmcs::{ClearVmcs, VmcsAccess, VmxRoot}};
    /// # fn f() -> Result<(), hvkit_vmx_core::VmFail> {
    /// let mut root = unsafe { VmxRoot::assume() };
    /// let mut vmcs = root.adopt(unsafe { ClearVmcs::new(0x1000) })?;
    /// let active = root.activate(&mut vmcs)?;
    /// root.clear(&mut vmcs)?; // VMCLEAR while a handle is alive: does not compile.
    /// active.read(field::GUEST_RIP)?;
    /// # Ok(()) }
    /// ```
    #[inline(always)]
    pub fn activate<'a>(&'a mut self, vmcs: &'a mut Vmcs) -> Result<ActiveVmcs<'a>, VmFail> {
        self.activate_with(vmcs, activate_slow)
    }
}

/// VMPTRLD, out of line: the exit loop's `activate` of the VMCS that is already current only
/// compares an address.
#[cfg(target_arch = "x86_64")]
#[cold]
#[inline(never)]
fn activate_slow(address: u64) -> Result<(), VmFail> {
    // SAFETY: called only from `VmxRoot::activate`: VMX root operation at CPL 0 (the token) and
    // `address` names a VMCS region not active on another processor (`ClearVmcs::new`'s
    // contract; a `Vmcs` never leaves this processor without `release`).
    unsafe { crate::instr::vmptrld(address) }
}

/// The current VMCS of this logical processor, reached with VMREAD/VMWRITE and run with
/// [`run`](Self::run).
///
/// Obtained from [`VmxRoot::activate`]; borrows the [`VmxRoot`] and the [`Vmcs`], so it cannot
/// outlive VMX root operation, cannot coexist with a second handle, and cannot survive a
/// switch to another VMCS. Not `Send`/`Sync`.
#[derive(Debug)]
pub struct ActiveVmcs<'a> {
    vmcs: &'a mut Vmcs,
    _root: PhantomData<&'a mut VmxRoot>,
}

impl ActiveVmcs<'_> {
    /// `true` once a VM entry with VMLAUNCH has succeeded on this VMCS (and it was not cleared
    /// since).
    pub fn is_launched(&self) -> bool {
        self.vmcs.launched
    }

    /// The physical address of the VMCS region.
    pub fn physical_address(&self) -> u64 {
        self.vmcs.address
    }
}

/// Code that [`ActiveVmcs::run_with`] runs right before the VM entry and right after the VM
/// exit, with interrupts disabled: the place for what production hypervisors do around guest
/// execution, such as VERW to clear CPU buffers before entry, switching IA32_SPEC_CTRL between
/// host and guest values, or refilling the return-stack buffer after exit.
///
/// Both methods default to doing nothing and are inlined, so [`NoHooks`] (what
/// [`ActiveVmcs::run`] uses) costs nothing.
///
/// What runs between the hooks and the guest: between `before_entry` and VMLAUNCH/VMRESUME,
/// the trampoline writes HOST_RSP/HOST_RIP when the stack moved and loads the guest's general
/// registers from [`GuestRegisters`]; between the VM exit and `after_exit`, it stores them back
/// and executes one `RET`. A mitigation that must come before that `RET` (the return-stack
/// refill of some processors) needs its own trampoline.
///
/// ```no_run
/// # #[cfg(target_arch = "x86_64")] {
/// use hvkit_vmx_core::vmcs::{ActiveVmcs, EntryExitHooks, GuestRegisters};
///
/// /// Clears CPU buffers with VERW before every entry (the MDS mitigation).
/// struct ClearBuffers {
///     selector: u16,
/// }
///
/// impl EntryExitHooks for ClearBuffers {
///     #[inline(always)]
///     fn before_entry(&mut self) {
///         // SAFETY: VERW only sets ZF; the operand is a readable selector in memory.
///         unsafe { core::arch::asm!("verw word ptr [{}]", in(reg) &self.selector) };
///     }
/// }
///
/// fn enter(vmcs: &mut ActiveVmcs<'_>, registers: &mut GuestRegisters) {
///     let mut hooks = ClearBuffers { selector: 0x10 };
///     // SAFETY: complete guest and host state, interrupts disabled, EPT confines the guest.
///     let _exit = unsafe { vmcs.run_with(registers, None, &mut hooks) };
/// }
/// # }
/// ```
pub trait EntryExitHooks {
    /// Runs immediately before the trampoline that enters the guest.
    #[inline(always)]
    fn before_entry(&mut self) {}

    /// Runs immediately after the trampoline returns, before any VMREAD: after a VM exit, and
    /// also after a failed VM entry.
    #[inline(always)]
    fn after_exit(&mut self) {}
}

/// No code around entry and exit: what [`ActiveVmcs::run`] uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoHooks;

impl EntryExitHooks for NoHooks {}

#[cfg(target_arch = "x86_64")]
impl VmcsAccess for ActiveVmcs<'_> {
    #[inline(always)]
    fn read_raw(&self, encoding: u32) -> Result<u64, VmFail> {
        // SAFETY: an ActiveVmcs exists only in VMX root operation with its VMCS current.
        unsafe { crate::instr::vmread(encoding) }
    }

    #[inline(always)]
    fn read_raw_pair(&self, first: u32, second: u32) -> Result<(u64, u64), VmFail> {
        // SAFETY: as above.
        unsafe { crate::instr::vmread_pair(first, second) }
    }

    #[inline(always)]
    fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
        if encoding == field::HOST_RSP.encoding() || encoding == field::HOST_RIP.encoding() {
            // The runner's cached host state no longer describes the VMCS: rewrite it at the
            // next entry. (Folded away for every other constant encoding.)
            self.vmcs.host_rsp = 0;
        }
        // SAFETY: as above; writing host-state fields that break the caller's exit path is the
        // caller's responsibility, documented on the trait.
        unsafe { crate::instr::vmwrite(encoding, value) }
    }
}

#[cfg(target_arch = "x86_64")]
impl ActiveVmcs<'_> {
    /// Enters the guest and returns at its next VM exit.
    ///
    /// Makes sure HOST_RSP and HOST_RIP send the VM exit back into this function (they are
    /// written only when the stack pointer differs from the one last written into this VMCS,
    /// as the stack depth of the caller's loop is normally the same every time), loads
    /// `registers` into the general registers, executes VMLAUNCH (VMCS clear) or VMRESUME
    /// (launched), and at the VM exit stores the guest's registers back into `registers`.
    /// Callee-saved host registers are preserved. `previous_exit` is the token of the exit
    /// being ended (`None` only before the first entry), so no exit-information snapshot of it
    /// can be used afterwards.
    ///
    /// Returns the new exit's token, or the VM-entry failure reported by VMLAUNCH/VMRESUME (or
    /// by the HOST_RSP/HOST_RIP writes). A VM entry that fails *after* the checks on controls and
    /// host state is a VM exit with bit 31 of the exit reason set: it returns `Ok`, and the
    /// VMCS stays clear.
    ///
    /// # Safety
    ///
    /// 1. The VMCS holds a complete, valid guest and host state, and the host-state fields other
    ///    than RSP/RIP (CR3, segment selectors, GDTR/IDTR/TR bases, FS/GS bases, EFER/PAT if
    ///    loaded) describe the context this function is called in.
    /// 2. Interrupts are disabled (RFLAGS.IF = 0); a VM exit clears RFLAGS anyway.
    /// 3. The guest cannot reach host memory it must not touch (EPT or equivalent).
    #[inline]
    pub unsafe fn run(
        &mut self,
        registers: &mut GuestRegisters,
        previous_exit: Option<VmExit>,
    ) -> Result<VmExit, VmFail> {
        // SAFETY: forwarded to the caller.
        unsafe { self.run_with(registers, previous_exit, &mut NoHooks) }
    }

    /// [`run`](Self::run) with `hooks` called right before the entry and right after the exit
    /// (see [`EntryExitHooks`]).
    ///
    /// # Safety
    ///
    /// As for [`run`](Self::run); the hooks run under the same conditions (interrupts
    /// disabled, the VMCS current) and must not make another VMCS current.
    #[inline]
    pub unsafe fn run_with<H: EntryExitHooks>(
        &mut self,
        registers: &mut GuestRegisters,
        previous_exit: Option<VmExit>,
        hooks: &mut H,
    ) -> Result<VmExit, VmFail> {
        let _consumed = previous_exit;
        hooks.before_entry();
        let vmcs = &mut *self.vmcs;
        let launched = vmcs.launched;
        // SAFETY: the caller's contract covers the VMCS contents and interrupt state; the
        // assembly preserves callee-saved registers and returns on the same stack.
        let status = unsafe { vm_run(registers, u64::from(launched), &mut vmcs.host_rsp) };
        hooks.after_exit();
        match status {
            0 => {
                self.vmcs.exited(launched, exit_reason_for_launch);
                Ok(VmExit::new())
            }
            1 => Err(VmFail::Invalid),
            _ => Err(match self.read_raw(field::VM_INSTRUCTION_ERROR.encoding()) {
                Ok(number) => VmFail::Valid(VmInstructionError::from_number(number as u32)),
                Err(fail) => fail,
            }),
        }
    }
}

/// The exit reason after a VMLAUNCH returned through a VM exit (first entry only, off the hot
/// path).
#[cfg(target_arch = "x86_64")]
#[cold]
fn exit_reason_for_launch() -> Result<u32, VmFail> {
    // SAFETY: called by the guest runner right after a VM exit: VMX root operation with the
    // runner's VMCS current.
    unsafe { crate::instr::vmread(field::EXIT_REASON.encoding()) }.map(|reason| reason as u32)
}

/// The launch state after a VMLAUNCH that returned through a VM exit: launched, unless the exit
/// is a VM-entry failure (exit reason bit 31: invalid guest state, MSR loading, machine check),
/// which leaves the VMCS clear (SDM Vol. 3C "VM-Entry Failures During or After Loading Guest
/// State": the launch state is set only by a VM entry that succeeds). An unreadable exit
/// reason counts as not launched, so the next entry tries VMLAUNCH again and reports its own
/// error rather than a misleading VMRESUME failure.
#[cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, reason = "the guest runner that uses it is x86_64-only")
)]
const fn launched_after_vmlaunch(exit_reason: Result<u32, VmFail>) -> bool {
    match exit_reason {
        Ok(reason) => reason & (1 << 31) == 0,
        Err(_) => false,
    }
}

/// The VM entry/exit trampoline: returns 0 after a VM exit, 1 for VMfailInvalid, 2 for
/// VMfailValid (of VMLAUNCH/VMRESUME or of the HOST_RSP/HOST_RIP writes).
///
/// Stack at the VMWRITE of HOST_RSP (and so at the VM exit): `[rsp]` = the `registers`
/// pointer, above it the six callee-saved registers and the return address. HOST_RSP and
/// HOST_RIP are written only when RSP differs from `*host_rsp`, which is updated after both
/// writes succeeded.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
unsafe extern "sysv64" fn vm_run(
    registers: *mut GuestRegisters,
    launched: u64,
    host_rsp: *mut u64,
) -> u64 {
    core::arch::naked_asm!(
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "push rdi",
        // HOST_RSP = the current RSP, HOST_RIP = label 2, unless already so.
        "cmp rsp, [rdx]",
        "je 4f",
        "mov rax, 0x6C14",
        "vmwrite rax, rsp",
        "jc 5f",
        "jz 6f",
        "lea rbx, [rip + 2f]",
        "mov rax, 0x6C16",
        "vmwrite rax, rbx",
        "jc 5f",
        "jz 6f",
        "mov [rdx], rsp",
        "4:",
        // ZF = (launched == 0); the MOVs below leave flags alone.
        "test rsi, rsi",
        "mov rax, [rdi + 0]",
        "mov rbx, [rdi + 8]",
        "mov rcx, [rdi + 16]",
        "mov rdx, [rdi + 24]",
        "mov rsi, [rdi + 32]",
        "mov rbp, [rdi + 48]",
        "mov r8, [rdi + 56]",
        "mov r9, [rdi + 64]",
        "mov r10, [rdi + 72]",
        "mov r11, [rdi + 80]",
        "mov r12, [rdi + 88]",
        "mov r13, [rdi + 96]",
        "mov r14, [rdi + 104]",
        "mov r15, [rdi + 112]",
        "mov rdi, [rdi + 40]",
        "jnz 8f",
        "vmlaunch",
        "jmp 3f",
        "8:",
        "vmresume",
        // VM entry failed: CF or ZF tells which. RSP is unchanged.
        "3:",
        "jc 5f",
        "jmp 6f",
        // VM exit: RSP = HOST_RSP, RFLAGS = 0x2. Save the guest registers.
        "2:",
        "push rax",
        "mov rax, [rsp + 8]",
        "mov [rax + 8], rbx",
        "mov [rax + 16], rcx",
        "mov [rax + 24], rdx",
        "mov [rax + 32], rsi",
        "mov [rax + 40], rdi",
        "mov [rax + 48], rbp",
        "mov [rax + 56], r8",
        "mov [rax + 64], r9",
        "mov [rax + 72], r10",
        "mov [rax + 80], r11",
        "mov [rax + 88], r12",
        "mov [rax + 96], r13",
        "mov [rax + 104], r14",
        "mov [rax + 112], r15",
        "pop rbx",
        "mov [rax + 0], rbx",
        "xor eax, eax",
        "jmp 7f",
        "5:",
        "mov eax, 1",
        "jmp 7f",
        "6:",
        "mov eax, 2",
        "7:",
        "pop rdi",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "ret",
    )
}

/// Test doubles for code that writes several VMCS fields.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{SoftVmcs, VmcsAccess};
    use crate::error::{VmFail, VmInstructionError};

    /// A VMCS whose reads succeed and whose write of one encoding fails (VMfailValid 12), to
    /// check that a multi-field writer leaves the VMCS as it was.
    pub(crate) struct FailingWrite {
        pub(crate) inner: SoftVmcs,
        pub(crate) fail_at: u32,
    }

    impl VmcsAccess for FailingWrite {
        fn read_raw(&self, encoding: u32) -> Result<u64, VmFail> {
            self.inner.read_raw(encoding)
        }
        fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
            if encoding == self.fail_at {
                return Err(VmFail::Valid(VmInstructionError::UnsupportedVmcsComponent));
            }
            self.inner.write_raw(encoding, value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::*;

    #[test]
    fn a_simulated_exit_visits_exactly_the_fields_an_exit_rewrites() {
        let expected: std::vec::Vec<u32> = ALL
            .iter()
            .filter(|info| info.encoding & (3 << 10) == 1 << 10 && info.encoding != 0x4400)
            .map(|info| info.encoding)
            .collect();
        let visited: std::vec::Vec<u32> =
            EXIT_INFORMATION_SLOTS.iter().map(|&index| ALL[usize::from(index)].encoding).collect();
        assert_eq!(visited, expected);
        for encoding in [0x4402, 0x6400, 0x4408, 0x440A, 0x440C, 0x2400, 0x2404] {
            assert!(visited.contains(&encoding), "{encoding:#x}");
        }
    }

    #[test]
    fn a_failed_vm_entry_leaves_the_vmcs_clear() {
        // Exit reason 33 with bit 31: invalid guest state, found by the example's differential
        // entry check (the next VMRESUME failed with error 5 when this was ignored).
        assert!(!launched_after_vmlaunch(Ok(0x8000_0021)));
        assert!(!launched_after_vmlaunch(Ok(0x8000_0022)), "MSR loading");
        assert!(!launched_after_vmlaunch(Ok(0x8000_0029)), "machine check during entry");
        assert!(!launched_after_vmlaunch(Err(VmFail::Invalid)));
        assert!(launched_after_vmlaunch(Ok(0x0000_0021)), "bit 31 clear: a real exit");
        assert!(launched_after_vmlaunch(Ok(10)), "CPUID exit");
        assert!(launched_after_vmlaunch(Ok(0x7FFF_FFFF)));
    }

    /// A fake VMCLEAR/VMPTRLD: records the addresses it was given, fails when told to.
    #[derive(Default)]
    struct Instructions {
        calls: std::vec::Vec<u64>,
        fail: Option<VmFail>,
    }

    impl Instructions {
        fn execute(&mut self, address: u64) -> Result<(), VmFail> {
            self.calls.push(address);
            self.fail.map_or(Ok(()), Err)
        }
    }

    const INVALID_ADDRESS: VmFail = VmFail::Valid(VmInstructionError::VmclearInvalidAddress);

    fn adopted(root: &mut VmxRoot, address: u64) -> Vmcs {
        // SAFETY: the fake instructions never touch the address.
        let clear = unsafe { ClearVmcs::new(address) };
        root.adopt_with(clear, |_| Ok(())).unwrap()
    }

    #[test]
    fn an_adopted_vmcs_is_clear_and_not_current() {
        // SAFETY: no instruction is executed in this test.
        let mut root = unsafe { VmxRoot::assume() };
        let mut vmclear = Instructions::default();
        // SAFETY: as above.
        let clear = unsafe { ClearVmcs::new(0x1000) };
        assert_eq!(clear.physical_address(), 0x1000);
        let vmcs = root.adopt_with(clear, |address| vmclear.execute(address)).unwrap();
        assert_eq!(vmclear.calls, [0x1000], "adopting executes VMCLEAR (SDM 25.11.3)");
        assert!(!vmcs.is_launched());
        assert_eq!(vmcs.physical_address(), 0x1000);
        assert_eq!(root.current(), None);
    }

    #[test]
    fn activate_loads_only_a_vmcs_that_is_not_current() {
        // SAFETY: no instruction is executed in this test.
        let mut root = unsafe { VmxRoot::assume() };
        let mut first = adopted(&mut root, 0x1000);
        let mut second = adopted(&mut root, 0x2000);
        let mut vmptrld = Instructions::default();
        for which in [0, 0, 1, 1, 0] {
            let vmcs = if which == 0 { &mut first } else { &mut second };
            let active = root.activate_with(vmcs, |address| vmptrld.execute(address)).unwrap();
            assert_eq!(active.physical_address(), [0x1000, 0x2000][which]);
        }
        assert_eq!(vmptrld.calls, [0x1000, 0x2000, 0x1000], "one VMPTRLD per switch");
        assert_eq!(root.current(), Some(0x1000));
        root.forget_current();
        assert_eq!(root.current(), None);
        let _ = root.activate_with(&mut first, |address| vmptrld.execute(address)).unwrap();
        assert_eq!(vmptrld.calls.len(), 4, "forget_current makes the next activate load");
    }

    #[test]
    fn a_failed_vmptrld_leaves_no_vmcs_known_current() {
        // SAFETY: no instruction is executed in this test.
        let mut root = unsafe { VmxRoot::assume() };
        let mut first = adopted(&mut root, 0x1000);
        let mut second = adopted(&mut root, 0x2000);
        let _ = root.activate_with(&mut first, |_| Ok(())).unwrap();
        let failing = VmFail::Valid(VmInstructionError::VmptrldInvalidAddress);
        let result = root.activate_with(&mut second, |_| Err(failing)).map(|_| ());
        assert_eq!(result, Err(failing));
        assert_eq!(root.current(), None, "the next activate of either VMCS loads it again");
    }

    #[test]
    fn the_launch_state_follows_vmlaunch_exits_and_vmclear() {
        // SAFETY: no instruction is executed in this test.
        let mut root = unsafe { VmxRoot::assume() };
        let mut vmcs = adopted(&mut root, 0x1000);
        // A VMLAUNCH that failed on the guest state: still clear, so VMLAUNCH again.
        vmcs.exited(vmcs.is_launched(), || Ok(0x8000_0021));
        assert!(!vmcs.is_launched());
        // A VMLAUNCH that entered the guest and came back with a CPUID exit.
        vmcs.exited(vmcs.is_launched(), || Ok(10));
        assert!(vmcs.is_launched());
        // Once launched, exits do not read the exit reason and keep the state.
        vmcs.exited(vmcs.is_launched(), || unreachable!("read only after VMLAUNCH"));
        assert!(vmcs.is_launched());
        vmcs.host_rsp = 0x8000;
        let _ = root.activate_with(&mut vmcs, |_| Ok(())).unwrap();
        let mut vmclear = Instructions::default();
        root.clear_with(&mut vmcs, |address| vmclear.execute(address)).unwrap();
        assert_eq!(vmclear.calls, [0x1000]);
        assert!(!vmcs.is_launched(), "VMCLEAR makes the launch state clear");
        assert_eq!(vmcs.host_rsp, 0, "and forgets the HOST_RSP written");
        assert_eq!(root.current(), None, "VMCLEAR of the current VMCS leaves none current");
    }

    #[test]
    fn a_failed_vmclear_changes_nothing() {
        // SAFETY: no instruction is executed in this test.
        let mut root = unsafe { VmxRoot::assume() };
        let mut vmcs = adopted(&mut root, 0x1000);
        vmcs.exited(vmcs.is_launched(), || Ok(10));
        vmcs.host_rsp = 0x8000;
        let _ = root.activate_with(&mut vmcs, |_| Ok(())).unwrap();
        let result = root.clear_with(&mut vmcs, |_| Err(INVALID_ADDRESS));
        assert_eq!(result, Err(INVALID_ADDRESS));
        assert!(vmcs.is_launched());
        assert_eq!(vmcs.host_rsp, 0x8000);
        assert_eq!(root.current(), Some(0x1000));
        // SAFETY: as above.
        let failed = root.adopt_with(unsafe { ClearVmcs::new(0x2000) }, |_| Err(INVALID_ADDRESS));
        assert_eq!(failed, Err(INVALID_ADDRESS));
        assert_eq!(root.current(), Some(0x1000));
    }

    #[test]
    fn clearing_another_vmcs_keeps_the_current_one() {
        // SAFETY: no instruction is executed in this test.
        let mut root = unsafe { VmxRoot::assume() };
        let mut first = adopted(&mut root, 0x1000);
        let mut second = adopted(&mut root, 0x2000);
        let _ = root.activate_with(&mut first, |_| Ok(())).unwrap();
        root.clear_with(&mut second, |_| Ok(())).unwrap();
        assert_eq!(root.current(), Some(0x1000));
        // Re-adopting the current region (it came back through another path) forgets it.
        // SAFETY: as above.
        let _again = root.adopt_with(unsafe { ClearVmcs::new(0x1000) }, |_| Ok(())).unwrap();
        assert_eq!(root.current(), None);
    }

    #[test]
    fn only_the_clear_form_may_move_between_processors() {
        fn is_send_and_sync<T: Send + Sync>() {}
        is_send_and_sync::<ClearVmcs>();
        is_send_and_sync::<NoHooks>();
        assert_eq!(core::mem::size_of::<NoHooks>(), 0, "the default hooks carry nothing");
    }

    const UNSUPPORTED: VmFail = VmFail::Valid(VmInstructionError::UnsupportedVmcsComponent);
    const READ_ONLY: VmFail = VmFail::Valid(VmInstructionError::VmwriteReadOnlyComponent);

    #[test]
    fn typed_round_trip_per_width() {
        let mut vmcs = SoftVmcs::new();
        vmcs.write(VIRTUAL_PROCESSOR_ID, 0xBEEF).unwrap();
        vmcs.write(VM_ENTRY_INTERRUPTION_INFO, 0x8000_0202).unwrap();
        vmcs.write(VMCS_LINK_POINTER, u64::MAX).unwrap();
        vmcs.write(GUEST_RIP, 0xFFFF_8000_0000_1234).unwrap();
        assert_eq!(vmcs.read(VIRTUAL_PROCESSOR_ID), Ok(0xBEEF));
        assert_eq!(vmcs.read(VM_ENTRY_INTERRUPTION_INFO), Ok(0x8000_0202));
        assert_eq!(vmcs.read(VMCS_LINK_POINTER), Ok(u64::MAX));
        assert_eq!(vmcs.read(GUEST_RIP), Ok(0xFFFF_8000_0000_1234));
        // Fields are independent.
        assert_eq!(vmcs.read(GUEST_RSP), Ok(0));
    }

    #[test]
    fn raw_writes_truncate_to_the_field_width() {
        let mut vmcs = SoftVmcs::new();
        vmcs.write_raw(GUEST_CS_SELECTOR.encoding(), 0xDEAD_BEEF_1234_5678).unwrap();
        assert_eq!(vmcs.read_raw(GUEST_CS_SELECTOR.encoding()), Ok(0x5678));
        vmcs.write_raw(EXCEPTION_BITMAP.encoding(), 0xDEAD_BEEF_1234_5678).unwrap();
        assert_eq!(vmcs.read_raw(EXCEPTION_BITMAP.encoding()), Ok(0x1234_5678));
        vmcs.write_raw(GUEST_CR0.encoding(), 0xDEAD_BEEF_1234_5678).unwrap();
        assert_eq!(vmcs.read_raw(GUEST_CR0.encoding()), Ok(0xDEAD_BEEF_1234_5678));
    }

    #[test]
    fn high_access_reaches_bits_63_32_of_64_bit_fields_only() {
        let mut vmcs = SoftVmcs::new();
        vmcs.write(TSC_OFFSET, 0x1111_2222_3333_4444).unwrap();
        let high = TSC_OFFSET.high().raw();
        assert_eq!(vmcs.read_raw(high), Ok(0x1111_2222));
        vmcs.write_raw(high, 0xAAAA_BBBB).unwrap();
        assert_eq!(vmcs.read(TSC_OFFSET), Ok(0xAAAA_BBBB_3333_4444));
        // Bit 0 on a natural-width or 32-bit field is not an encoding.
        assert_eq!(vmcs.read_raw(GUEST_RIP.encoding() | 1), Err(UNSUPPORTED));
        assert_eq!(vmcs.read_raw(EXIT_REASON.encoding() | 1), Err(UNSUPPORTED));
    }

    #[test]
    fn unsupported_and_read_only_fail_like_hardware() {
        let mut vmcs = SoftVmcs::new();
        assert_eq!(vmcs.read_raw(0x203C), Err(UNSUPPORTED));
        assert_eq!(vmcs.read(VM_INSTRUCTION_ERROR), Ok(12), "VMfailValid stores the number");
        assert_eq!(vmcs.write_raw(EXIT_REASON.encoding(), 1), Err(READ_ONLY));
        assert_eq!(vmcs.read(VM_INSTRUCTION_ERROR), Ok(13));
        assert_eq!(vmcs.last_instruction_error(), 13);
        assert_eq!(vmcs.read(EXIT_REASON), Ok(0), "the failed write changed nothing");
        assert_eq!(vmcs.write_raw(0xFFFF_FFFF, 1), Err(UNSUPPORTED));
        assert_eq!(vmcs.write_raw(VM_INSTRUCTION_ERROR.encoding(), 0), Err(READ_ONLY));
    }

    #[test]
    fn slot_lookup_matches_the_catalog_for_every_encoding() {
        let vmcs = SoftVmcs::new();
        for info in ALL {
            let (index, found) = vmcs.slot(info.encoding).unwrap();
            assert_eq!(found.encoding, info.encoding, "{}", info.name);
            assert_eq!(ALL[index].encoding, info.encoding);
        }
        // Every 16-bit encoding, and the same with reserved high bits: supported exactly when
        // the catalog has the full encoding (or it is the high half of a 64-bit field).
        for encoding in 0..=0xFFFF_u32 {
            let full = encoding & !1;
            let expected = lookup(full).is_some_and(|info| {
                encoding & 1 == 0 || info.width == crate::field::FieldWidth::Bits64
            });
            assert_eq!(vmcs.supports(encoding), expected, "{encoding:#x}");
            for reserved in [1 << 15, 1 << 16, 1 << 31] {
                assert!(!vmcs.supports(encoding | reserved), "{:#x}", encoding | reserved);
            }
        }
    }

    #[test]
    fn read_pair_succeeds_only_when_both_reads_do() {
        let mut vmcs = SoftVmcs::new();
        vmcs.set_exit_information(EXIT_REASON, 10).unwrap();
        vmcs.set_exit_information(VM_EXIT_INTERRUPTION_INFO, 0x8000_0202).unwrap();
        let (reason, info) = (EXIT_REASON.encoding(), VM_EXIT_INTERRUPTION_INFO.encoding());
        assert_eq!(vmcs.read_raw_pair(reason, info), Ok((10, 0x8000_0202)));
        assert_eq!(vmcs.read_raw_pair(info, reason), Ok((0x8000_0202, 10)));
        assert_eq!(vmcs.read_raw_pair(0x203C, reason), Err(UNSUPPORTED));
        assert_eq!(vmcs.read_raw_pair(reason, 0x203C), Err(UNSUPPORTED));
        assert_eq!(vmcs.last_instruction_error(), 12);
    }

    #[test]
    fn restricted_field_sets_model_older_processors() {
        let no_fred = SoftVmcs::with_supported(|info| !info.name.contains("FRED"));
        assert_eq!(no_fred.read(GUEST_IA32_FRED_CONFIG), Err(UNSUPPORTED));
        assert_eq!(no_fred.read(GUEST_RIP), Ok(0));
        // VMCS_ENUM highest index 0x17 (an older part): index of GUEST_IA32_PKRS (0x2818) is 12,
        // of HOST_IA32_FRED_SSP3 (0x2C16) 11, of PID_POINTER_TABLE_ADDRESS (0x2042) 0x21.
        let old = SoftVmcs::with_highest_index(0x17);
        assert!(old.supports(GUEST_IA32_PKRS.encoding()));
        assert!(!old.supports(PID_POINTER_TABLE_ADDRESS.encoding()));
        assert!(!old.supports(PID_POINTER_TABLE_ADDRESS.high().raw()));
    }

    #[test]
    fn the_processor_side_sets_exit_information() {
        let mut vmcs = SoftVmcs::new();
        vmcs.set_exit_information(EXIT_REASON, 0x8000_0021).unwrap();
        vmcs.set_exit_information(EXIT_QUALIFICATION, 4).unwrap();
        vmcs.set_exit_information(VM_INSTRUCTION_ERROR, 7).unwrap();
        let exit = vmcs.complete_exit();
        assert_eq!(vmcs.read(EXIT_REASON), Ok(0x8000_0021));
        assert_eq!(vmcs.read(EXIT_QUALIFICATION), Ok(4));
        assert_eq!(vmcs.read(VM_INSTRUCTION_ERROR), Ok(7));
        vmcs.enter(exit);
        let no_event_data = SoftVmcs::with_supported(|info| info.name != "ORIGINAL_EVENT_DATA");
        let mut no_event_data = no_event_data;
        assert_eq!(no_event_data.set_exit_information(ORIGINAL_EVENT_DATA, 1), Err(UNSUPPORTED));
    }

    #[test]
    fn complete_exit_rewrites_every_exit_information_field() {
        let mut vmcs = SoftVmcs::new();
        // First exit: an exception exit that interrupted an NMI's delivery, every field set.
        vmcs.set_exit_information(EXIT_REASON, 0).unwrap();
        vmcs.set_exit_information(EXIT_QUALIFICATION, u64::MAX).unwrap();
        vmcs.set_exit_information(VM_EXIT_INTERRUPTION_INFO, 0x8000_0B0E).unwrap();
        vmcs.set_exit_information(VM_EXIT_INTERRUPTION_ERROR_CODE, u32::MAX).unwrap();
        vmcs.set_exit_information(IDT_VECTORING_INFO, 0x8000_0202).unwrap();
        vmcs.set_exit_information(IDT_VECTORING_ERROR_CODE, u32::MAX).unwrap();
        vmcs.set_exit_information(VM_EXIT_INSTRUCTION_LENGTH, 15).unwrap();
        vmcs.set_exit_information(ORIGINAL_EVENT_DATA, u64::MAX).unwrap();
        vmcs.set_exit_information(VM_INSTRUCTION_ERROR, 7).unwrap();
        let exit = vmcs.complete_exit();
        assert_eq!(vmcs.read(VM_EXIT_INTERRUPTION_INFO), Ok(0x8000_0B0E));
        assert_eq!(vmcs.read(IDT_VECTORING_INFO), Ok(0x8000_0202));
        assert_eq!(vmcs.read(ORIGINAL_EVENT_DATA), Ok(u64::MAX));
        vmcs.enter(exit);
        // Second exit: a CPUID exit (reason 10) sets only its reason and instruction length.
        vmcs.set_exit_information(EXIT_REASON, 10).unwrap();
        vmcs.set_exit_information(VM_EXIT_INSTRUCTION_LENGTH, 2).unwrap();
        let exit = vmcs.complete_exit();
        assert_eq!(vmcs.read(EXIT_REASON), Ok(10));
        assert_eq!(vmcs.read(VM_EXIT_INSTRUCTION_LENGTH), Ok(2));
        assert_eq!(vmcs.read(VM_EXIT_INTERRUPTION_INFO), Ok(0), "not valid: no stale event");
        assert_eq!(vmcs.read(IDT_VECTORING_INFO), Ok(0), "not valid: no stale event");
        assert_eq!(vmcs.read(VM_EXIT_INTERRUPTION_ERROR_CODE), Ok(0));
        assert_eq!(vmcs.read(IDT_VECTORING_ERROR_CODE), Ok(0));
        assert_eq!(vmcs.read(EXIT_QUALIFICATION), Ok(0));
        assert_eq!(vmcs.read(ORIGINAL_EVENT_DATA), Ok(0));
        // VM exits do not write the VM-instruction error field.
        assert_eq!(vmcs.read(VM_INSTRUCTION_ERROR), Ok(7));
        vmcs.enter(exit);
        // Third exit with nothing set: every exit-information field reads 0 (reason 0).
        let _exit = vmcs.complete_exit();
        assert_eq!(vmcs.read(EXIT_REASON), Ok(0));
        assert_eq!(vmcs.read(VM_EXIT_INSTRUCTION_LENGTH), Ok(0));
        assert_eq!(vmcs.read(VM_INSTRUCTION_ERROR), Ok(7));
    }

    #[test]
    fn complete_exit_keeps_guest_and_control_fields() {
        let mut vmcs = SoftVmcs::new();
        vmcs.write(GUEST_RIP, u64::MAX).unwrap();
        vmcs.write(EXCEPTION_BITMAP, u32::MAX).unwrap();
        let _exit = vmcs.complete_exit();
        assert_eq!(vmcs.read(GUEST_RIP), Ok(u64::MAX));
        assert_eq!(vmcs.read(EXCEPTION_BITMAP), Ok(u32::MAX));
    }
}
