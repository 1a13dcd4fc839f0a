//! Local APIC (xAPIC and x2APIC) for hypervisors and kernels: valid-by-construction IPIs, self-IPI and self-NMI, EOI, LVT and timer (no_std)
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]
