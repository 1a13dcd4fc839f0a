//! FRED (Flexible Return and Event Delivery) frames, MSRs, entry stubs and software frame delivery for x86-64 kernels and hypervisors (no_std)
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]
