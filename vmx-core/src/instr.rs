//! The VMX instructions (SDM Vol. 3C chapter 31 "VMX Instruction Reference").
//!
//! VMX instructions report their status in RFLAGS (SDM Vol. 3C 31.2 "Conventions"):
//!
//! | CF | ZF | meaning |
//! |----|----|---------|
//! | 0  | 0  | VMsucceed |
//! | 1  | 0  | VMfailInvalid (no current VMCS) |
//! | 0  | 1  | VMfailValid: the error number is in field 0x4400 of the current VMCS |
//!
//! The status is always captured **inside the same `asm!` block** as the instruction, so nothing
//! the compiler schedules in between can clobber it (reading RFLAGS in a second block is a known
//! defect pattern). How much is captured depends on how hot the instruction is:
//!
//! - VMREAD and VMWRITE, which run on every VM exit, capture one flag: `setbe` (CF or ZF) after
//!   VMREAD, an asm-goto `jbe` after VMWRITE. Which failure it was is decided on a `#[cold]`
//!   path, which reads the VM-instruction error field with its own two-flag capture
//!   ([`failure_from_error_read`]): if that read reports VMfailInvalid there is no current VMCS,
//!   so the failed access was VMfailInvalid too (for VMREAD/VMWRITE in VMX root operation that
//!   is its only cause); otherwise it was VMfailValid with the number read. The hot path is then
//!   `vmread; setbe; test; jne` (or `vmwrite; jbe`); KVM's is `vmread; jbe`.
//! - The rarely run instructions (VMXON, VMXOFF, VMCLEAR, VMPTRLD, VMPTRST, INVEPT, INVVPID,
//!   VMLAUNCH/VMRESUME outside [`ActiveVmcs::run`](crate::vmcs::ActiveVmcs::run)) capture CF and
//!   ZF with `setc`/`setz` and decode them with [`vm_result`]: after a failed VMXON there is no
//!   VMX operation in which the error field could be read.
//!
//! The instructions themselves exist only on `x86_64`; the rest of the crate builds anywhere.

use crate::error::{VmFail, VmInstructionError};

/// Decodes the CF/ZF pair a VMX instruction left behind. `read_error` is called only for
/// VMfailValid, to read the VM-instruction error field. CF wins if both are set (the SDM never
/// sets both; VMfailInvalid is the safer reading because there may be no current VMCS).
pub fn vm_result(cf: bool, zf: bool, read_error: impl FnOnce() -> u32) -> Result<(), VmFail> {
    if cf {
        Err(VmFail::Invalid)
    } else if zf {
        Err(VmFail::Valid(VmInstructionError::from_number(read_error())))
    } else {
        Ok(())
    }
}

/// Decides which failure a VMREAD/VMWRITE that captured only "CF or ZF" reported, from a
/// second read of the VM-instruction error field (0x4400) made with both flags captured: if that
/// read fails with VMfailInvalid there is no current VMCS, which in VMX root operation is the only
/// cause of VMfailInvalid for VMREAD/VMWRITE (SDM Vol. 3C 31.3 "VMREAD"/"VMWRITE" operation);
/// otherwise the access failed with VMfailValid and the number read.
pub fn failure_from_error_read(error_read: Result<u32, VmFail>) -> VmFail {
    match error_read {
        Ok(number) => VmFail::Valid(VmInstructionError::from_number(number)),
        Err(fail) => fail,
    }
}

/// The INVEPT types (SDM "INVEPT—Invalidate Translations Derived from EPT").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u64)]
pub enum InveptType {
    /// Type 1: invalidate mappings associated with the EPTP in the descriptor.
    SingleContext = 1,
    /// Type 2: invalidate mappings associated with all EPTPs.
    AllContext = 2,
}

/// The INVVPID types (SDM "INVVPID—Invalidate Translations Based on VPID").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u64)]
pub enum InvvpidType {
    /// Type 0: one linear address for one VPID.
    IndividualAddress = 0,
    /// Type 1: all mappings of one VPID.
    SingleContext = 1,
    /// Type 2: all mappings of all VPIDs except VPID 0.
    AllContext = 2,
    /// Type 3: all mappings of one VPID except global translations.
    SingleContextRetainingGlobals = 3,
}

/// The 128-bit INVEPT descriptor: bits 63:0 EPTP, bits 127:64 reserved (0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(C, align(16))]
pub struct InveptDescriptor {
    /// The EPT pointer whose mappings are invalidated (ignored for all-context).
    pub eptp: u64,
    reserved: u64,
}

impl InveptDescriptor {
    /// A descriptor for `eptp`.
    pub const fn new(eptp: u64) -> Self {
        Self { eptp, reserved: 0 }
    }
}

/// The 128-bit INVVPID descriptor: bits 15:0 VPID, bits 63:16 reserved (0), bits 127:64 linear
/// address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(C, align(16))]
pub struct InvvpidDescriptor {
    vpid: u64,
    /// The linear address (individual-address type only).
    pub linear_address: u64,
}

impl InvvpidDescriptor {
    /// A descriptor for `vpid` and `linear_address`.
    pub const fn new(vpid: u16, linear_address: u64) -> Self {
        Self { vpid: vpid as u64, linear_address }
    }

    /// The VPID.
    pub const fn vpid(&self) -> u16 {
        // Only bits 15:0 are ever set by `new`.
        #[allow(clippy::cast_possible_truncation, reason = "bits 63:16 are zero by construction")]
        let vpid = self.vpid as u16;
        vpid
    }
}

static_assertions::const_assert_eq!(core::mem::size_of::<InveptDescriptor>(), 16);
static_assertions::const_assert_eq!(core::mem::size_of::<InvvpidDescriptor>(), 16);

#[cfg(target_arch = "x86_64")]
pub use hw::*;

#[cfg(target_arch = "x86_64")]
mod hw {
    use super::{
        InveptDescriptor, InveptType, InvvpidDescriptor, InvvpidType, failure_from_error_read,
        vm_result,
    };
    use crate::error::VmFail;
    use core::arch::asm;

    /// The VM-instruction error field (0x4400), read after VMfailValid.
    const VM_INSTRUCTION_ERROR: u64 = 0x4400;

    /// Reads the VM-instruction error field, ignoring the flags (only called after VMfailValid,
    /// when a current VMCS exists).
    fn instruction_error() -> u32 {
        let value: u64;
        // SAFETY: only reached after an instruction reported VMfailValid, which the SDM defines
        // only when there is a current VMCS; VMREAD of field 0x4400 then succeeds. The asm reads
        // no memory and leaves the stack alone.
        unsafe {
            asm!("vmread {value}, {field}", field = in(reg) VM_INSTRUCTION_ERROR,
                 value = out(reg) value, options(nostack, nomem));
        }
        #[allow(clippy::cast_possible_truncation, reason = "the error field is 32 bits wide")]
        let number = value as u32;
        number
    }

    /// VMXON: enters VMX root operation with the VMXON region at physical address `region`.
    ///
    /// # Safety
    ///
    /// 1. CPL 0, CR4.VMXE = 1, CR0/CR4 satisfy the VMX fixed bits, IA32_FEATURE_CONTROL allows
    ///    VMXON (otherwise the instruction raises #GP/#UD instead of failing).
    /// 2. `region` is the 4 KiB-aligned physical address of a zeroed region holding the revision
    ///    identifier, which nothing else uses while VMX root operation lasts.
    pub unsafe fn vmxon(region: u64) -> Result<(), VmFail> {
        let (cf, zf): (u8, u8);
        // SAFETY: the caller guarantees the preconditions above; the memory operand is `region`
        // on our stack, read by the instruction.
        unsafe {
            asm!("vmxon qword ptr [{addr}]", "setc {cf}", "setz {zf}",
                 addr = in(reg) &region, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                 options(nostack));
        }
        vm_result(cf != 0, zf != 0, instruction_error)
    }

    /// VMXOFF: leaves VMX root operation.
    ///
    /// # Safety
    ///
    /// The caller must be in VMX root operation at CPL 0, and nothing may use VMX afterwards.
    pub unsafe fn vmxoff() -> Result<(), VmFail> {
        let (cf, zf): (u8, u8);
        // SAFETY: per the caller's contract; VMXOFF touches no memory we own.
        unsafe {
            asm!("vmxoff", "setc {cf}", "setz {zf}",
                 cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
        }
        vm_result(cf != 0, zf != 0, instruction_error)
    }

    /// VMCLEAR: makes the VMCS at physical address `vmcs` clear and not current, flushing its
    /// data to memory.
    ///
    /// # Safety
    ///
    /// VMX root operation at CPL 0; `vmcs` is the 4 KiB-aligned physical address of a VMCS region
    /// (not the VMXON region). Code that holds a [`VmxRoot`](crate::vmcs::VmxRoot) calls its
    /// `forget_current` afterwards, and must not clear a region a [`Vmcs`](crate::vmcs::Vmcs)
    /// owns behind its back (use `VmxRoot::clear`, which also resets the launch state).
    pub unsafe fn vmclear(vmcs: u64) -> Result<(), VmFail> {
        let (cf, zf): (u8, u8);
        // SAFETY: per the caller's contract; the memory operand is `vmcs` on our stack.
        unsafe {
            asm!("vmclear qword ptr [{addr}]", "setc {cf}", "setz {zf}",
                 addr = in(reg) &vmcs, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                 options(nostack));
        }
        vm_result(cf != 0, zf != 0, instruction_error)
    }

    /// VMPTRLD: makes the VMCS at physical address `vmcs` current.
    ///
    /// # Safety
    ///
    /// VMX root operation at CPL 0; `vmcs` is the 4 KiB-aligned physical address of an
    /// initialised VMCS region with the right revision identifier, not current on another
    /// logical processor. Code that holds a [`VmxRoot`](crate::vmcs::VmxRoot) calls its
    /// `forget_current` afterwards (prefer `VmxRoot::activate`).
    pub unsafe fn vmptrld(vmcs: u64) -> Result<(), VmFail> {
        let (cf, zf): (u8, u8);
        // SAFETY: per the caller's contract; the memory operand is `vmcs` on our stack.
        unsafe {
            asm!("vmptrld qword ptr [{addr}]", "setc {cf}", "setz {zf}",
                 addr = in(reg) &vmcs, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                 options(nostack));
        }
        vm_result(cf != 0, zf != 0, instruction_error)
    }

    /// VMPTRST: the physical address of the current VMCS (all ones when there is none).
    ///
    /// # Safety
    ///
    /// VMX root operation at CPL 0.
    pub unsafe fn vmptrst() -> Result<u64, VmFail> {
        let mut pointer: u64 = 0;
        let (cf, zf): (u8, u8);
        // SAFETY: per the caller's contract; the instruction writes 8 bytes to `pointer`.
        unsafe {
            asm!("vmptrst qword ptr [{addr}]", "setc {cf}", "setz {zf}",
                 addr = in(reg) &mut pointer, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                 options(nostack));
        }
        vm_result(cf != 0, zf != 0, instruction_error).map(|()| pointer)
    }

    /// Reads the VM-instruction error field with both flags captured (cold paths only).
    fn checked_instruction_error() -> Result<u32, VmFail> {
        let value: u64;
        let (cf, zf): (u8, u8);
        // SAFETY: VMREAD in VMX root operation (the caller's VMREAD/VMWRITE ran there) reads a
        // register operand only; without a current VMCS it fails with CF=1, which is captured.
        unsafe {
            asm!("vmread {value}, {field}", "setc {cf}", "setz {zf}",
                 field = in(reg) VM_INSTRUCTION_ERROR, value = out(reg) value,
                 cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack, nomem));
        }
        #[allow(clippy::cast_possible_truncation, reason = "the error field is 32 bits wide")]
        let number = value as u32;
        vm_result(cf != 0, zf != 0, || 0).map(|()| number)
    }

    /// The cold half of the one-flag status capture of VMREAD/VMWRITE: which failure it was.
    #[cold]
    #[inline(never)]
    pub(crate) fn decode_failure() -> VmFail {
        failure_from_error_read(checked_instruction_error())
    }

    /// VMREAD: reads the field `encoding` of the current VMCS.
    ///
    /// The hot path is `vmread; setbe; test; jne`; a failure is decoded out of line into
    /// VMfailInvalid or VMfailValid with its number (see the module documentation).
    ///
    /// # Safety
    ///
    /// VMX root operation at CPL 0 (outside it, VMREAD raises #UD).
    #[inline(always)]
    pub unsafe fn vmread(encoding: u32) -> Result<u64, VmFail> {
        let value: u64;
        let failed: u8;
        // SAFETY: per the caller's contract; register operands only. `setbe` captures CF|ZF in
        // the same block as the instruction.
        unsafe {
            asm!("vmread {value}, {field}", "setbe {failed}",
                 field = in(reg) u64::from(encoding), value = out(reg) value,
                 failed = out(reg_byte) failed, options(nostack, nomem));
        }
        if failed != 0 { Err(decode_failure()) } else { Ok(value) }
    }

    /// Two VMREADs with one status capture: `vmread; jbe; vmread; setbe`. If the first fails
    /// the second is skipped and its flags reach the `setbe`; either way a failure is decoded
    /// out of line from the error field, which holds the number of the access that failed.
    ///
    /// # Safety
    ///
    /// VMX root operation at CPL 0 (outside it, VMREAD raises #UD).
    #[inline(always)]
    pub unsafe fn vmread_pair(first: u32, second: u32) -> Result<(u64, u64), VmFail> {
        let (a, b): (u64, u64);
        let failed: u8;
        // SAFETY: per the caller's contract; register operands only. Both statuses are
        // captured in this block.
        unsafe {
            asm!("vmread {a}, {first}", "jbe 2f", "vmread {b}, {second}", "2:", "setbe {failed}",
                 first = in(reg) u64::from(first), second = in(reg) u64::from(second),
                 a = out(reg) a, b = out(reg) b,
                 failed = out(reg_byte) failed, options(nostack, nomem));
        }
        if failed != 0 { Err(decode_failure()) } else { Ok((a, b)) }
    }

    /// VMWRITE: writes the field `encoding` of the current VMCS.
    ///
    /// The hot path is `vmwrite; jbe` (asm goto); a failure is decoded out of line into
    /// VMfailInvalid or VMfailValid with its number (see the module documentation).
    ///
    /// # Safety
    ///
    /// VMX root operation at CPL 0, and the value must not break what the caller relies on
    /// (host-state fields decide where the next VM exit lands).
    #[inline(always)]
    pub unsafe fn vmwrite(encoding: u32, value: u64) -> Result<(), VmFail> {
        // SAFETY: per the caller's contract; register operands only. `nomem` is not claimed:
        // the VMCS may be cached in memory the compiler cannot see, and ordering matters. The
        // `jbe` tests CF|ZF right after the instruction, in the same block.
        unsafe {
            asm!("vmwrite {field}, {value}", "jbe {failed}",
                 field = in(reg) u64::from(encoding), value = in(reg) value,
                 failed = label { return Err(decode_failure()); },
                 options(nostack));
        }
        Ok(())
    }

    /// VMLAUNCH without a return path: it returns only when VM entry fails. Prefer
    /// [`ActiveVmcs::run`](crate::vmcs::ActiveVmcs::run), which also handles the VM exit.
    ///
    /// # Safety
    ///
    /// VMX root operation at CPL 0 with a current, clear VMCS whose host-state area sends the
    /// VM exit somewhere that never returns into this function's frame.
    pub unsafe fn vmlaunch() -> VmFail {
        let (cf, zf): (u8, u8);
        // SAFETY: per the caller's contract; if VM entry succeeds control never comes back here.
        unsafe {
            asm!("vmlaunch", "setc {cf}", "setz {zf}",
                 cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
        }
        failure(cf, zf)
    }

    /// VMRESUME without a return path; see [`vmlaunch`].
    ///
    /// # Safety
    ///
    /// As for [`vmlaunch`], with a launched current VMCS.
    pub unsafe fn vmresume() -> VmFail {
        let (cf, zf): (u8, u8);
        // SAFETY: per the caller's contract.
        unsafe {
            asm!("vmresume", "setc {cf}", "setz {zf}",
                 cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
        }
        failure(cf, zf)
    }

    fn failure(cf: u8, zf: u8) -> VmFail {
        match vm_result(cf != 0, zf != 0, instruction_error) {
            Err(fail) => fail,
            // VMLAUNCH/VMRESUME fall through only on failure; with neither flag set the
            // processor did something the SDM does not describe: report it as invalid.
            Ok(()) => VmFail::Invalid,
        }
    }

    /// INVEPT.
    ///
    /// # Safety
    ///
    /// VMX root operation at CPL 0; the processor supports EPT and the chosen type
    /// (IA32_VMX_EPT_VPID_CAP).
    pub unsafe fn invept(kind: InveptType, descriptor: &InveptDescriptor) -> Result<(), VmFail> {
        let (cf, zf): (u8, u8);
        // SAFETY: per the caller's contract; the instruction reads the 16-byte descriptor.
        unsafe {
            asm!("invept {kind}, xmmword ptr [{desc}]", "setc {cf}", "setz {zf}",
                 kind = in(reg) kind as u64, desc = in(reg) descriptor,
                 cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack, readonly));
        }
        vm_result(cf != 0, zf != 0, instruction_error)
    }

    /// INVVPID.
    ///
    /// # Safety
    ///
    /// VMX root operation at CPL 0; the processor supports VPIDs and the chosen type.
    pub unsafe fn invvpid(kind: InvvpidType, descriptor: &InvvpidDescriptor) -> Result<(), VmFail> {
        let (cf, zf): (u8, u8);
        // SAFETY: per the caller's contract; the instruction reads the 16-byte descriptor.
        unsafe {
            asm!("invvpid {kind}, xmmword ptr [{desc}]", "setc {cf}", "setz {zf}",
                 kind = in(reg) kind as u64, desc = in(reg) descriptor,
                 cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack, readonly));
        }
        vm_result(cf != 0, zf != 0, instruction_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_decode_like_the_sdm_table() {
        assert_eq!(vm_result(false, false, || unreachable!()), Ok(()));
        assert_eq!(vm_result(true, false, || unreachable!()), Err(VmFail::Invalid));
        assert_eq!(
            vm_result(false, true, || 12),
            Err(VmFail::Valid(VmInstructionError::UnsupportedVmcsComponent))
        );
        assert_eq!(
            vm_result(false, true, || 77),
            Err(VmFail::Valid(VmInstructionError::Unknown(77)))
        );
        assert_eq!(vm_result(true, true, || unreachable!()), Err(VmFail::Invalid));
    }

    #[test]
    fn one_flag_failures_are_named_by_the_error_field_read() {
        // The error field cannot be read: no current VMCS, so the access was VMfailInvalid.
        assert_eq!(failure_from_error_read(Err(VmFail::Invalid)), VmFail::Invalid);
        // It can: VMfailValid with the number it holds, named or kept.
        assert_eq!(
            failure_from_error_read(Ok(13)),
            VmFail::Valid(VmInstructionError::VmwriteReadOnlyComponent)
        );
        assert_eq!(failure_from_error_read(Ok(99)), VmFail::Valid(VmInstructionError::Unknown(99)));
    }

    #[test]
    fn descriptors_have_the_sdm_layout() {
        let descriptor = InvvpidDescriptor::new(0xBEEF, 0x1234_5678_9ABC);
        // SAFETY: the descriptor is 16 plain bytes.
        let bytes: [u64; 2] = unsafe { core::mem::transmute(descriptor) };
        assert_eq!(bytes, [0xBEEF, 0x1234_5678_9ABC]);
        assert_eq!(descriptor.vpid(), 0xBEEF);
        // SAFETY: as above.
        let bytes: [u64; 2] = unsafe { core::mem::transmute(InveptDescriptor::new(0x5E)) };
        assert_eq!(bytes, [0x5E, 0]);
        assert_eq!(InveptType::SingleContext as u64, 1);
        assert_eq!(InveptType::AllContext as u64, 2);
        assert_eq!(InvvpidType::IndividualAddress as u64, 0);
        assert_eq!(InvvpidType::SingleContextRetainingGlobals as u64, 3);
    }
}
