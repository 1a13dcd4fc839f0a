//! A deliberately simple, table-driven model of the VM-entry injection rules
//! (SDM Vol. 3C 26.2.1.3 "VM-Entry Control Fields", event injection), written apart from hvkit-vmx-core's validator so a fuzzer can
//! compare the two.

use arbitrary::Arbitrary;

/// Everything the rules look at.
#[derive(Debug, Arbitrary)]
pub struct EntryCase {
    pub info: u32,
    pub error_code: u32,
    pub instruction_length: u32,
    pub interruptibility: u32,
    pub activity: u32,
    pub cr0_pe: bool,
    pub rflags_if: bool,
    pub virtual_nmis: bool,
    pub unrestricted_guest: bool,
    pub no_error_code_check: bool,
    pub zero_length: bool,
    pub mtf: bool,
    pub nested: bool,
    pub fred: bool,
    pub strict_sti: bool,
    pub sgx: bool,
}

/// Vectors that push an error code (SDM 26.2.1.3's list).
const ERROR_CODE_VECTORS: [u32; 7] = [8, 10, 11, 12, 13, 14, 17];

/// (activity state, event type, vector or None for any) pairs allowed to be injected.
const ACTIVITY_TABLE: &[(u32, u32, Option<u32>)] = &[
    (1, 0, None),
    (1, 2, None),
    (1, 3, Some(1)),
    (1, 3, Some(18)),
    (1, 7, Some(0)),
    (2, 2, None),
    (2, 3, Some(18)),
];

/// `true` when the model allows this entry.
pub fn allowed(case: &EntryCase) -> bool {
    let sti = case.interruptibility & 1 != 0;
    let mov_ss = case.interruptibility & 2 != 0;
    let nmi_blocked = case.interruptibility & 8 != 0;
    // Checks that apply with or without an event.
    if case.interruptibility > 0x1F
        || (sti && mov_ss)
        || (sti && !case.rflags_if)
        || case.activity > 3
        || (case.activity != 0 && (sti || mov_ss))
        || (mov_ss && case.interruptibility & 0x10 != 0)
        || (case.interruptibility & 0x10 != 0 && !case.sgx)
        || case.interruptibility & 0x4 != 0
    {
        return false;
    }
    if case.info & (1 << 31) == 0 {
        return true;
    }
    let kind = (case.info >> 8) & 7;
    let vector = case.info & 0xFF;
    let deliver = case.info & (1 << 11) != 0;
    let protected = case.cr0_pe || !case.unrestricted_guest;
    let rules = [
        kind != 1,
        // Type 7: vector 0 (MTF) needs MTF support; 1 (SYSCALL) and 2 (SYSENTER) a FRED guest.
        kind != 7 || (vector == 0 && case.mtf) || (case.fred && (vector == 1 || vector == 2)),
        kind != 2 || vector == 2,
        kind != 3 || vector <= 31,
        !deliver || (kind == 3 && protected),
        case.no_error_code_check
            || kind != 3
            || !protected
            || deliver == ERROR_CODE_VECTORS.contains(&vector),
        case.info & 0x7FFF_C000 == 0 && case.info & (1 << 12) == 0,
        case.info & (1 << 13) == 0 || (case.nested && kind == 3),
        !deliver || case.error_code >> 16 == 0,
        !((4..=6).contains(&kind) || (kind == 7 && case.fred && (vector == 1 || vector == 2)))
            || (1..=15).contains(&case.instruction_length)
            || (case.zero_length && case.instruction_length == 0),
        kind != 0 || (case.rflags_if && !sti && !mov_ss),
        kind != 2 || !(mov_ss || (case.strict_sti && sti)),
        kind != 2 || !(case.virtual_nmis && nmi_blocked),
        case.activity == 0
            || ACTIVITY_TABLE.iter().any(|&(state, k, v)| {
                state == case.activity && k == kind && v.is_none_or(|v| v == vector)
            }),
    ];
    rules.iter().all(|&ok| ok)
}
