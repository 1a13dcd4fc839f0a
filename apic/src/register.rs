//! Local APIC register offsets (xAPIC MMIO offsets; SDM Vol. 3A "Local APIC Register Address
//! Map") and their x2APIC MSR numbers (0x800 + offset / 16; SDM "x2APIC Register Address
//! Space").
#![forbid(unsafe_code)]

/// Local APIC ID.
pub const ID: u32 = 0x020;
/// Local APIC version.
pub const VERSION: u32 = 0x030;
/// Task priority (TPR).
pub const TPR: u32 = 0x080;
/// Processor priority (PPR).
pub const PPR: u32 = 0x0A0;
/// EOI.
pub const EOI: u32 = 0x0B0;
/// Logical destination (LDR).
pub const LDR: u32 = 0x0D0;
/// Destination format (DFR; xAPIC only).
pub const DFR: u32 = 0x0E0;
/// Spurious-interrupt vector (SVR).
pub const SVR: u32 = 0x0F0;
/// In-service register, first of 8 (bits 31:0 at 0x100, ... 255:224 at 0x170).
pub const ISR_BASE: u32 = 0x100;
/// Trigger-mode register, first of 8.
pub const TMR_BASE: u32 = 0x180;
/// Interrupt-request register, first of 8.
pub const IRR_BASE: u32 = 0x200;
/// Error status (ESR).
pub const ESR: u32 = 0x280;
/// LVT corrected machine-check interrupt (CMCI).
pub const LVT_CMCI: u32 = 0x2F0;
/// Interrupt command, low half (xAPIC) / the whole 64-bit ICR (x2APIC MSR 0x830).
pub const ICR_LOW: u32 = 0x300;
/// Interrupt command, high half (xAPIC only).
pub const ICR_HIGH: u32 = 0x310;
/// LVT timer.
pub const LVT_TIMER: u32 = 0x320;
/// LVT thermal sensor.
pub const LVT_THERMAL: u32 = 0x330;
/// LVT performance-monitoring counters.
pub const LVT_PERFORMANCE: u32 = 0x340;
/// LVT LINT0.
pub const LVT_LINT0: u32 = 0x350;
/// LVT LINT1.
pub const LVT_LINT1: u32 = 0x360;
/// LVT error.
pub const LVT_ERROR: u32 = 0x370;
/// Timer initial count.
pub const TIMER_INITIAL_COUNT: u32 = 0x380;
/// Timer current count.
pub const TIMER_CURRENT_COUNT: u32 = 0x390;
/// Timer divide configuration.
pub const TIMER_DIVIDE: u32 = 0x3E0;
/// SELF IPI (x2APIC only: MSR 0x83F, write-only).
pub const SELF_IPI: u32 = 0x3F0;

/// IA32_APIC_BASE.
pub const IA32_APIC_BASE: u32 = 0x1B;
/// IA32_TSC_DEADLINE.
pub const IA32_TSC_DEADLINE: u32 = 0x6E0;
/// The x2APIC ICR MSR.
pub const X2APIC_ICR: u32 = 0x830;
/// The x2APIC SELF IPI MSR.
pub const X2APIC_SELF_IPI: u32 = 0x83F;

/// The x2APIC MSR of an xAPIC register offset: 0x800 + (offset >> 4).
pub const fn x2apic_msr(offset: u32) -> u32 {
    0x800 + (offset >> 4)
}

/// The in-service/trigger-mode/request register offset holding `vector`, and its bit.
pub const fn vector_register(base: u32, vector: u8) -> (u32, u32) {
    (base + 0x10 * (vector as u32 / 32), vector as u32 % 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x2apic_msrs_follow_the_formula_and_the_sdm_table() {
        // SDM table "Local APIC Register Address Map Supported by x2APIC", typed by hand.
        let table = [
            (ID, 0x802),
            (VERSION, 0x803),
            (TPR, 0x808),
            (PPR, 0x80A),
            (EOI, 0x80B),
            (LDR, 0x80D),
            (SVR, 0x80F),
            (ISR_BASE, 0x810),
            (TMR_BASE, 0x818),
            (IRR_BASE, 0x820),
            (ESR, 0x828),
            (LVT_CMCI, 0x82F),
            (ICR_LOW, 0x830),
            (LVT_TIMER, 0x832),
            (LVT_THERMAL, 0x833),
            (LVT_PERFORMANCE, 0x834),
            (LVT_LINT0, 0x835),
            (LVT_LINT1, 0x836),
            (LVT_ERROR, 0x837),
            (TIMER_INITIAL_COUNT, 0x838),
            (TIMER_CURRENT_COUNT, 0x839),
            (TIMER_DIVIDE, 0x83E),
            (SELF_IPI, 0x83F),
        ];
        for (offset, msr) in table {
            assert_eq!(x2apic_msr(offset), msr, "offset {offset:#x}");
        }
        assert_eq!(x2apic_msr(ICR_LOW), X2APIC_ICR);
        assert_eq!(x2apic_msr(SELF_IPI), X2APIC_SELF_IPI);
    }

    #[test]
    fn vector_registers() {
        assert_eq!(vector_register(ISR_BASE, 0), (0x100, 0));
        assert_eq!(vector_register(ISR_BASE, 31), (0x100, 31));
        assert_eq!(vector_register(ISR_BASE, 32), (0x110, 0));
        assert_eq!(vector_register(IRR_BASE, 0xEC), (0x270, 12));
        assert_eq!(vector_register(TMR_BASE, 255), (0x1F0, 31));
    }
}
