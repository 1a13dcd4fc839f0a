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
