//! Typed VMCS access, VMX instructions, capabilities, exit decoding and VM-entry checks for
//! Intel VT-x hypervisors.
//!
//! `hvkit-vmx-core` is the base of the hvkit family. Everything except the instructions
//! themselves builds and is tested on any host: the VMCS is reached through the
//! [`vmcs::VmcsAccess`] trait, with a hardware backend ([`vmcs::ActiveVmcs`], obtainable only
//! in VMX root operation) and a software one ([`vmcs::SoftVmcs`]) that fails like hardware on
//! misuse (VM-instruction errors 12 and 13).
//!
//! | module | what |
//! |---|---|
//! | [`field`] | every VMCS field of SDM Appendix B as a typed constant (width and access in the type) |
//! | [`vmcs`] | `VmcsAccess`, `SoftVmcs`, the `VmxRoot` (per CPU), `Vmcs` (per vCPU) and `ActiveVmcs` tokens, the guest runner and its entry/exit hooks |
//! | [`instr`] | VMXON ... INVVPID, CF/ZF captured in the same `asm!` block |
//! | [`error`] | `VmFail` and every VM-instruction error number |
//! | [`caps`] | capability MSRs read safely, IA32_VMX_BASIC/MISC/EPT_VPID_CAP decoded, CR0/CR4 fixed bits |
//! | [`controls`] | every control bit, adjustment to the allowed settings (TRUE controls honoured) |
//! | [`exit`] | exit reasons (unknown ones kept), the per-exit snapshot, qualification decoders |
//! | [`event`] | interruption information, event types, interruptibility, activity state |
//! | [`entry_check`] | the VM-entry event-injection rules, each violation named |
//! | [`fred_state`] | the guest and host FRED fields, filled from values read from the FRED MSRs |
//! | [`fred_check`] | the FRED VM-entry checks on host and guest state, each violation named |
//! | [`nmi_source`] | the NMI-source bitmap (NMI-exit qualification, FRED event data) |
//! | [`region`] | VMXON and VMCS regions |
//!
//! # Example: adjust controls, then read an exit
//!
//! ```
//! use hvkit_vmx_core::caps::{RecordedMsrs, VmxCapabilities, msr};
//! use hvkit_vmx_core::controls::{self, ControlRequest, EntryControls, ExitControls, PinBasedControls};
//! use hvkit_vmx_core::exit::{BasicExitReason, ExitInfo, ExitInfoOptions};
//! use hvkit_vmx_core::vmcs::{SoftVmcs, VmcsAccess};
//! use hvkit_vmx_core::field;
//!
//! // Capability MSRs as Bochs 2.7 (corei7_skylake_x) reports them; on hardware use
//! // `caps::HardwareMsrs`.
//! let msrs = RecordedMsrs(&[
//!     (msr::IA32_VMX_BASIC, 0x00D8_1000_0000_002B),
//!     (msr::IA32_VMX_PINBASED_CTLS, 0x0000_007F_0000_0016),
//!     (msr::IA32_VMX_PROCBASED_CTLS, 0xF7F9_FFFE_0401_E172),
//!     (msr::IA32_VMX_EXIT_CTLS, 0x007F_FFFF_0003_6DFF),
//!     (msr::IA32_VMX_ENTRY_CTLS, 0x0000_FFFF_0000_11FF),
//!     (msr::IA32_VMX_MISC, 0x6004_01E0),
//!     (msr::IA32_VMX_CR0_FIXED0, 0x8000_0021),
//!     (msr::IA32_VMX_CR0_FIXED1, 0xFFFF_FFFF),
//!     (msr::IA32_VMX_CR4_FIXED0, 0x2000),
//!     (msr::IA32_VMX_CR4_FIXED1, 0x0037_27FF),
//!     (msr::IA32_VMX_TRUE_PINBASED_CTLS, 0x0000_007F_0000_0016),
//!     (msr::IA32_VMX_TRUE_PROCBASED_CTLS, 0xF7F9_FFFE_0400_6172),
//!     (msr::IA32_VMX_TRUE_EXIT_CTLS, 0x007F_FFFF_0003_6DFB),
//!     (msr::IA32_VMX_TRUE_ENTRY_CTLS, 0x0000_FFFF_0000_11FB),
//! ]);
//! let caps = VmxCapabilities::read(&msrs)?;
//! let request = ControlRequest {
//!     pin: PinBasedControls::NMI_EXITING,
//!     exit: ExitControls::HOST_ADDRESS_SPACE_SIZE | ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT,
//!     entry: EntryControls::IA32E_MODE_GUEST,
//!     ..ControlRequest::default()
//! };
//! let adjusted = controls::adjust(&caps, &request)?;
//! let mut vmcs = SoftVmcs::new();
//! vmcs.write(field::PIN_BASED_VM_EXECUTION_CONTROLS, adjusted.pin.bits())?;
//!
//! // The processor (here: the software VMCS) reports an NMI exit...
//! vmcs.set_exit_information(field::EXIT_REASON, 0)?;
//! vmcs.set_exit_information(field::VM_EXIT_INTERRUPTION_INFO, 0x8000_0202)?;
//! let exit = vmcs.complete_exit();
//! // ...which the handler reads once.
//! let info = ExitInfo::read(&vmcs, &exit, ExitInfoOptions::default())?;
//! assert_eq!(info.reason.basic(), BasicExitReason::ExceptionOrNmi);
//! assert!(info.interruption_info.is_nmi());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! An exit snapshot cannot outlive the VM entry that ends its exit:
//!
//! ```compile_fail
//! # use hvkit_vmx_core::{exit::{ExitInfo, ExitInfoOptions}, vmcs::SoftVmcs};
//! let mut vmcs = SoftVmcs::new();
//! let exit = vmcs.complete_exit();
//! let info = ExitInfo::read(&vmcs, &exit, ExitInfoOptions::default()).unwrap();
//! vmcs.enter(exit); // the entry consumes the exit token...
//! let _stale = info.reason; // ...so the snapshot is gone: does not compile.
//! ```
//!
//! # Hardware setup
//!
//! What a hypervisor does before its first VM entry, and which part of this crate covers each
//! step (SDM Vol. 3C chapter 24 "Introduction to Virtual Machine Extensions", 25 "Virtual
//! Machine Control Structures", 26 "VM Entries" and Appendix A "VMX Capability Reporting
//! Facility"). Steps 1-4 run once per logical processor; 5-8 once per vCPU.
//!
//! 1. **VMX is there and allowed.** CPUID.1:ECX\[5\] reports VMX (read it yourself; the
//!    `x86` crate has `CpuId`). IA32_FEATURE_CONTROL (MSR 0x3A) must be locked (bit 0) with
//!    "VMX outside SMX" (bit 2) set, or VMXON raises #GP: read it and decide with
//!    [`caps::FeatureControl::vmxon_readiness`] (unlocked: write
//!    [`enabling_value`](caps::FeatureControl::enabling_value) yourself; locked with VMX off:
//!    only the firmware can change it).
//! 2. **Capabilities.** [`caps::VmxCapabilities::read`] with [`caps::HardwareMsrs`] (its
//!    `unsafe` constructor is the CPL-0-and-VMX promise) reads IA32_VMX_BASIC, the control
//!    capability MSRs (TRUE variants when IA32_VMX_BASIC\[55\] is set), IA32_VMX_MISC, the
//!    CR0/CR4 fixed-bit MSRs (0x486-0x489) and, where announced, EPT/VPID and the secondary,
//!    tertiary and secondary-exit controls.
//! 3. **CR0 and CR4.** Set CR4.VMXE (bit 13), then every bit IA32_VMX_CRx_FIXED0 reports as 1
//!    and clear every bit IA32_VMX_CRx_FIXED1 reports as 0 (SDM Appendix A.7, A.8):
//!    [`caps::FixedBits::adjust`] computes the value, [`caps::FixedBits::check`] names the
//!    offending bit ([`caps::FixedBitError`]). Writing CR0/CR4 is yours (`x86::controlregs`).
//! 4. **VMXON.** A 4 KiB-aligned VMXON region in memory the processor owns from now on, its
//!    first 32 bits the VMCS revision identifier (IA32_VMX_BASIC bits 30:0, bit 31 clear):
//!    [`region::VmxonRegion::new`] with [`caps::VmxBasic::revision_id`]. Then
//!    [`vmcs::VmxRoot::enable`] executes VMXON with its physical address and returns the
//!    per-CPU token every VMCS operation needs (or [`vmcs::VmxRoot::assume`] when other code
//!    entered VMX operation).
//! 5. **A VMCS per vCPU.** A [`region::VmcsRegion`] with the same revision identifier,
//!    vouched for once with the `unsafe` [`vmcs::ClearVmcs::new`]; [`vmcs::VmxRoot::adopt`]
//!    executes VMCLEAR and gives the [`vmcs::Vmcs`] a vCPU struct owns (it tracks
//!    VMLAUNCH vs VMRESUME); [`vmcs::VmxRoot::activate`] makes it current (VMPTRLD, skipped
//!    when it already is) and returns the [`vmcs::ActiveVmcs`] that reads, writes and runs it.
//! 6. **Controls.** [`controls::adjust`] turns a [`controls::ControlRequest`] into the values
//!    the processor allows (forced bits added, impossible ones named as
//!    [`controls::ControlError`]); [`controls::AdjustedControls::write`] writes them. For a
//!    64-bit host the VM-exit control "host address-space size" (bit 9) must be set; with
//!    "acknowledge interrupt on exit" (bit 15) the hypervisor must re-deliver the interrupt
//!    (hvkit-nmi-reinject).
//! 7. **Host state** (SDM 26.2.2 "Checks on Host Control Registers, MSRs, and SSP", 26.2.3
//!    "Checks on Host Segment and Descriptor-Table Registers"): the values the processor loads
//!    at every VM exit, so they must describe the context that calls
//!    [`run`](vmcs::ActiveVmcs::run):
//!    - `HOST_CR0`, `HOST_CR3`, `HOST_CR4`: the current control registers (with the fixed
//!      bits of step 3, CR4.VMXE set);
//!    - `HOST_ES/CS/SS/DS/FS/GS/TR_SELECTOR`: the current selectors with RPL and TI 0; CS and
//!      TR must not be 0;
//!    - `HOST_FS_BASE`, `HOST_GS_BASE`, `HOST_TR_BASE`, `HOST_GDTR_BASE`, `HOST_IDTR_BASE`
//!      (canonical): this processor's values; they differ between processors, so rewrite them
//!      after a vCPU moves (see [`vmcs::ClearVmcs`]);
//!    - `HOST_IA32_SYSENTER_CS/ESP/EIP`, and `HOST_IA32_EFER` / `HOST_IA32_PAT` when the
//!      matching "load" VM-exit controls are set; the host FRED state with
//!      [`fred_state::FredMsrState::write_host`] when VM exit loads it;
//!    - `HOST_RSP` and `HOST_RIP`: written by [`run`](vmcs::ActiveVmcs::run) itself, which
//!      returns at the next VM exit.
//! 8. **Guest state** (SDM 26.3.1 "Checks on the Guest State Area"): at minimum
//!    `GUEST_CR0/CR3/CR4` (fixed bits as in step 3, except CR0.PE/PG with "unrestricted
//!    guest"), `GUEST_DR7`, `GUEST_RSP`, `GUEST_RIP`, `GUEST_RFLAGS` (bit 1 set), selector,
//!    base, limit and access rights of CS, SS, DS, ES, FS, GS, LDTR and TR (access-rights bit 16
//!    marks a register unusable; TR must be usable and busy), `GUEST_GDTR/IDTR_BASE` and
//!    limits, `GUEST_INTERRUPTIBILITY_STATE`, `GUEST_ACTIVITY_STATE`,
//!    `GUEST_PENDING_DEBUG_EXCEPTIONS`, `GUEST_IA32_DEBUGCTL`, `GUEST_IA32_EFER` when loaded, and
//!    `VMCS_LINK_POINTER` = `0xFFFF_FFFF_FFFF_FFFF` (no shadow VMCS; any other value must
//!    name a valid VMCS region, else the entry fails with exit qualification 4,
//!    [`exit::EntryFailureCode::VmcsLinkPointer`]). The event
//!    rules of SDM 26.2.1.3 and 26.3.1.5 are checked by [`entry_check`] before any injection.
//!
//! Then the exit loop: [`run`](vmcs::ActiveVmcs::run), [`exit::ExitHead::read`], host-event
//! re-delivery and [`exit::ExitHead::complete`]; hvkit-nmi-reinject's crate documentation
//! shows the whole handler. A VM entry that fails on controls or host state returns
//! [`VmFail::Valid`] with error 7 or 8; one that fails on guest state is an exit with bit 31
//! of the reason set ([`exit::ExitReason::is_entry_failure`]) and basic reason 33, whose
//! qualification [`exit::InvalidGuestState`] decodes.
//!
//! # Features
//!
//! - `defmt`: derives `defmt::Format` for the public types.
//!
//! # Platform and MSRV
//!
//! `#![no_std]`, no allocation. The instructions and the hardware backends exist on `x86_64`
//! only; the rest builds on any target. Minimum Rust: 1.88.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

/// A rule enum whose variants each carry the SDM section that states the rule and what it
/// requires: `Enum::ALL`, `section()` and `text()` (the VM-entry and FRED entry checkers).
macro_rules! sdm_rules {
    (
        $(#[$enum_doc:meta])* $enum:ident, $(#[$section_doc:meta])* ;
        $( $(#[$doc:meta])* $name:ident => $section:literal, $text:literal; )*
    ) => {
        $(#[$enum_doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        pub enum $enum {
            $( $(#[$doc])* $name, )*
        }

        impl $enum {
            /// Every rule of this checker.
            pub const ALL: &'static [Self] = &[$( Self::$name, )*];

            $(#[$section_doc])*
            pub const fn section(self) -> &'static str {
                match self { $( Self::$name => $section, )* }
            }

            /// What the rule requires.
            pub const fn text(self) -> &'static str {
                match self { $( Self::$name => $text, )* }
            }
        }
    };
}

pub mod caps;
pub mod controls;
pub mod entry_check;
pub mod error;
pub mod event;
pub mod exception_bitmap;
pub mod exit;
pub mod field;
pub mod fred_check;
pub mod fred_state;
pub mod instr;
pub mod nmi_source;
pub mod region;
pub mod vmcs;

pub use error::{VmFail, VmInstructionError};
