//! Memory the processor reads by physical address (VMXON and VMCS regions, EPT tables, the
//! guest's area): statics that Rust code reaches only through raw pointers, never as
//! `&'static mut`, so no two mutable references to them can exist.

use core::cell::UnsafeCell;

/// A static the hardware uses; identity-mapped, so its address is its physical address.
#[repr(transparent)]
pub struct HwCell<T>(UnsafeCell<T>);

// SAFETY: the cell hands out only raw pointers; every user documents why its accesses do not
// race (one CPU, or one CPU per slot).
unsafe impl<T> Sync for HwCell<T> {}

impl<T> HwCell<T> {
    /// A cell holding `value`.
    pub const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    /// A pointer to the contents.
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }

    /// The contents' (identity-mapped, hence physical) address.
    pub fn address(&self) -> u64 {
        self.get() as u64
    }
}
