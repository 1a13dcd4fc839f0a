//! Typed VMCS access, VMX instructions, capabilities, exit decoding and VM-entry checks for
//! Intel VT-x hypervisors.
//!
//! `hvkit-vmx-core` is the base of the hvkit family. Everything except the instructions
//! themselves builds and is tested on any host: the VMCS is reached through the
//! [`vmcs::VmcsAccess`] trait, with a hardware backend and a software one that answers like
//! hardware on misuse.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

pub mod caps;
pub mod controls;
pub mod entry_check;
pub mod error;
pub mod event;
pub mod exit;
pub mod field;
pub mod instr;
pub mod region;
pub mod vmcs;

pub use error::{VmFail, VmInstructionError};
