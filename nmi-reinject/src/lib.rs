//! Re-deliver host NMIs and acknowledged interrupts after VM exits, exactly once (direct call on IDT and FRED hosts, or self-NMI), and re-inject guest events (no_std)
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]
