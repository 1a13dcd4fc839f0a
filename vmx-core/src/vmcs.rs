//! VMCS access: the [`VmcsAccess`] trait (raw access by encoding, typed access on top).

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

/// Catalog position + 1 for every slot key, 0 where the catalog has no field: an O(1)
/// replacement for a binary search on every access.
#[allow(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    reason = "evaluated at compile time: an index out of range or a catalog over 254 fields fails the build"
)]
const SLOT_TABLE: [u8; 1 << 13] = {
    let mut table = [0u8; 1 << 13];
    let mut position = 0;
    while position < CATALOG_LEN {
        let encoding = field::ALL[position].encoding;
        assert!(
            encoding & (RESERVED_ENCODING_BITS | 1) == 0,
            "catalog encoding with reserved bits"
        );
        assert!(table[slot_key(encoding)] == 0, "two catalog fields share a slot key");
        assert!(position < u8::MAX as usize, "catalog too large for u8 slots");
        table[slot_key(encoding)] = (position + 1) as u8;
        position += 1;
    }
    table
};

fn truncate(width: FieldWidth, value: u64) -> u64 {
    match width {
        FieldWidth::Bits16 => value & 0xFFFF,
        FieldWidth::Bits32 => value & 0xFFFF_FFFF,
        FieldWidth::Bits64 | FieldWidth::Natural => value,
    }
}

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

/// The catalog indices of those fields, so that a simulated exit visits only them.
#[allow(
    clippy::indexing_slicing,
    reason = "const evaluation: an out-of-range index fails the build"
)]
const EXIT_INFORMATION_SLOTS: [usize; EXIT_INFORMATION_COUNT] = {
    let mut slots = [0; EXIT_INFORMATION_COUNT];
    let (mut index, mut next) = (0, 0);
    while index < CATALOG_LEN {
        if rewritten_at_exit(&field::ALL[index]) {
            slots[next] = index;
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
/// [`entry_check`](crate::entry_check)) or guests.
#[derive(Debug, Clone)]
pub struct SoftVmcs {
    values: [u64; CATALOG_LEN],
    supported: [bool; CATALOG_LEN],
    instruction_error: Cell<u32>,
    /// Exit-information fields set with `set_exit_information` since the last `complete_exit`.
    set_for_this_exit: [bool; CATALOG_LEN],
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
            values: [0; CATALOG_LEN],
            supported: [true; CATALOG_LEN],
            instruction_error: Cell::new(0),
            set_for_this_exit: [false; CATALOG_LEN],
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
        self.slot(encoding).is_some()
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
        let (index, info) = self.slot(field.encoding()).ok_or_else(|| self.unsupported())?;
        if let Some(slot) = self.values.get_mut(index) {
            *slot = truncate(info.width, W::to_raw(value));
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
            let fresh = self.set_for_this_exit.get_mut(index).map(core::mem::take);
            if fresh == Some(false)
                && let Some(value) = self.values.get_mut(index)
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

    #[inline]
    fn slot(&self, encoding: u32) -> Option<(usize, &'static FieldInfo)> {
        if encoding & RESERVED_ENCODING_BITS != 0 {
            return None;
        }
        let index = usize::from(*SLOT_TABLE.get(slot_key(encoding))?).checked_sub(1)?;
        let info = field::ALL.get(index)?;
        let high = encoding & 1 != 0;
        let supported = self.supported.get(index).copied().unwrap_or(false);
        (supported && (!high || info.width == FieldWidth::Bits64)).then_some((index, info))
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
    fn read_raw(&self, encoding: u32) -> Result<u64, VmFail> {
        let (index, _) = self.slot(encoding).ok_or_else(|| self.unsupported())?;
        if encoding == field::VM_INSTRUCTION_ERROR.encoding() {
            return Ok(u64::from(self.instruction_error.get()));
        }
        let value = self.values.get(index).copied().unwrap_or(0);
        Ok(if encoding & 1 != 0 { value >> 32 } else { value })
    }

    fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
        let (index, info) = self.slot(encoding).ok_or_else(|| self.unsupported())?;
        if info.field_encoding().field_type() == FieldType::ExitInformation {
            return Err(self.fail(VmInstructionError::VmwriteReadOnlyComponent));
        }
        if let Some(slot) = self.values.get_mut(index) {
            *slot = if encoding & 1 != 0 {
                (*slot & 0xFFFF_FFFF) | (value << 32)
            } else {
                truncate(info.width, value)
            };
        }
        Ok(())
    }
}

/// The guest's general-purpose registers, saved and restored around VM entries by
/// [`ActiveVmcs::run`] (RSP and RIP live in the VMCS guest-state area).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

/// Proof of VMX root operation on this logical processor.
///
/// Exists only after a successful VMXON ([`VmxRoot::enable`]) or when the caller vouches for it
/// ([`VmxRoot::assume`]). It is neither `Send` nor `Sync`: VMX root operation belongs to one
/// logical processor.
#[derive(Debug)]
pub struct VmxRoot {
    _per_cpu: PhantomData<*mut ()>,
}

/// The current VMCS of this logical processor, reached with VMREAD/VMWRITE.
///
/// Obtained from [`VmxRoot::load`] (VMPTRLD) or [`ActiveVmcs::assume_current`]; borrows the
/// [`VmxRoot`] so it cannot outlive VMX root operation. Not `Send`/`Sync`.
#[derive(Debug)]
pub struct ActiveVmcs<'root> {
    launched: bool,
    /// The HOST_RSP value last written by [`ActiveVmcs::run`] (0 = unknown): HOST_RSP and
    /// HOST_RIP are written only when the runner's stack pointer differs from it.
    host_rsp: u64,
    _root: PhantomData<&'root mut VmxRoot>,
}

impl VmxRoot {
    /// Vouches for VMX root operation entered by other code.
    ///
    /// # Safety
    ///
    /// The logical processor must be in VMX root operation at CPL 0 for as long as the token
    /// lives, and no other `VmxRoot` for it may exist.
    pub const unsafe fn assume() -> Self {
        Self { _per_cpu: PhantomData }
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
        Ok(Self { _per_cpu: PhantomData })
    }

    /// Executes VMXOFF, consuming the token.
    ///
    /// # Safety
    ///
    /// As for [`instr::vmxoff`](crate::instr::vmxoff).
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn disable(self) -> Result<(), VmFail> {
        // SAFETY: the token proves VMX root operation; the rest is the caller's contract.
        unsafe { crate::instr::vmxoff() }
    }

    /// VMCLEAR of the VMCS at physical address `vmcs`.
    ///
    /// # Safety
    ///
    /// As for [`instr::vmclear`](crate::instr::vmclear).
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn clear(&mut self, vmcs: u64) -> Result<(), VmFail> {
        // SAFETY: the token proves VMX root operation; the rest is the caller's contract.
        unsafe { crate::instr::vmclear(vmcs) }
    }

    /// VMPTRLD of the VMCS at physical address `vmcs`, which the caller has just cleared (so
    /// the first [`ActiveVmcs::run`] uses VMLAUNCH).
    ///
    /// # Safety
    ///
    /// As for [`instr::vmptrld`](crate::instr::vmptrld); the VMCS must be in the clear launch
    /// state.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn load(&mut self, vmcs: u64) -> Result<ActiveVmcs<'_>, VmFail> {
        // SAFETY: the token proves VMX root operation; the rest is the caller's contract.
        unsafe { crate::instr::vmptrld(vmcs) }?;
        Ok(ActiveVmcs { launched: false, host_rsp: 0, _root: PhantomData })
    }
}

impl<'root> ActiveVmcs<'root> {
    /// Vouches for a current VMCS loaded by other code.
    ///
    /// # Safety
    ///
    /// A VMCS must be current on this logical processor for as long as the value lives, and
    /// `launched` must be its launch state.
    pub unsafe fn assume_current(_root: &'root mut VmxRoot, launched: bool) -> Self {
        Self { launched, host_rsp: 0, _root: PhantomData }
    }

    /// `true` once a VM entry with VMLAUNCH has succeeded on this VMCS.
    pub fn is_launched(&self) -> bool {
        self.launched
    }
}

#[cfg(target_arch = "x86_64")]
impl VmcsAccess for ActiveVmcs<'_> {
    #[inline(always)]
    fn read_raw(&self, encoding: u32) -> Result<u64, VmFail> {
        // SAFETY: an ActiveVmcs exists only in VMX root operation with a current VMCS.
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
            self.host_rsp = 0;
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
    /// written only when the stack pointer differs from the one last written, as the stack
    /// depth of the caller's loop is normally the same every time), loads
    /// `registers` into the general registers, executes VMLAUNCH (first entry) or VMRESUME, and at
    /// the VM exit stores the guest's registers back into `registers`. Callee-saved host
    /// registers are preserved. `previous_exit` is the token of the exit being ended (`None` only
    /// before the first entry), so no exit-information snapshot of it can be used afterwards.
    ///
    /// Returns the new exit's token, or the VM-entry failure reported by VMLAUNCH/VMRESUME (or
    /// by the HOST_RSP/HOST_RIP writes). A VM entry that fails *after* the checks on controls and
    /// host state is a VM exit with bit 31 of the exit reason set: it returns `Ok`.
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
        let _consumed = previous_exit;
        // SAFETY: the caller's contract covers the VMCS contents and interrupt state; the
        // assembly preserves callee-saved registers and returns on the same stack.
        let status = unsafe { vm_run(registers, u64::from(self.launched), &mut self.host_rsp) };
        match status {
            0 => {
                if !self.launched {
                    self.launched = launched_after_vmlaunch(self.exit_reason_for_launch());
                }
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

#[cfg(target_arch = "x86_64")]
impl ActiveVmcs<'_> {
    /// The exit reason after a VMLAUNCH returned through a VM exit (first entry only, off the
    /// hot path).
    #[cold]
    fn exit_reason_for_launch(&self) -> Result<u32, VmFail> {
        self.read(field::EXIT_REASON)
    }
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
            EXIT_INFORMATION_SLOTS.iter().map(|&index| ALL[index].encoding).collect();
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
