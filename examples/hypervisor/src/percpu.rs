//! Per-CPU state: counters the host handlers update, this CPU's TSS and local-APIC handle,
//! reached through the GS base (IA32_GS_BASE, MSR 0xC0000101; the VMCS host GS base restores
//! it on every VM exit, SDM Vol. 3C 28.5.2 "Loading Host Segment and Descriptor-Table
//! Registers").
//!
//! The first quadword of each [`PerCpu`] holds its own address, so `mov reg, gs:[0]` finds the
//! structure and the assembly entry stubs can `lock inc qword ptr gs:[offset]` a counter.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// CPUs the example supports (GDT TSS slots, stacks).
pub const MAX_CPUS: usize = 16;

/// IA32_GS_BASE.
const IA32_GS_BASE: u32 = 0xC000_0101;

/// A 64-bit TSS (SDM Vol. 3A 8.7 "Task Management in 64-bit Mode": 104 bytes; no I/O bitmap).
#[repr(C, align(16))]
pub struct Tss(pub [u8; 104]);

/// The local-APIC handle of one CPU in its current mode.
pub enum ApicHandle {
    /// Not set up yet.
    None,
    /// xAPIC (MMIO page at IA32_APIC_BASE).
    XApic(hvkit_apic::XApic<hvkit_apic::MmioRegisters>),
    /// x2APIC (MSRs 0x800-0x8FF).
    X2Apic(hvkit_apic::X2Apic<hvkit_apic::HardwareMsrs>),
}

/// One CPU's state. The assembly handlers use the byte offsets in [`offset`].
#[repr(C, align(64))]
pub struct PerCpu {
    /// This structure's own address (`gs:[0]`).
    pub self_address: AtomicU64,
    /// Host NMI handler runs on this CPU.
    pub nmi_handled: AtomicU64,
    /// Host timer handler runs on this CPU.
    pub timer_handled: AtomicU64,
    /// EOIs the host timer handler sent on this CPU.
    pub timer_eois: AtomicU64,
    /// Host test-IPI handler runs on this CPU.
    pub ipi_handled: AtomicU64,
    /// EOIs the host test-IPI handler sent on this CPU.
    pub ipi_eois: AtomicU64,
    /// Test-IPI handler runs that found their vector not in service (must stay 0).
    pub ipi_not_in_service: AtomicU64,
    /// Storm IPIs handled on this CPU, by sender index.
    pub storm_handled: [AtomicU64; MAX_CPUS],
    /// While non-zero, the host NMI handler waits (NMIs blocked) until it is cleared.
    pub nmi_hold: AtomicU64,
    /// 1 while the host NMI handler waits for `nmi_hold` to clear.
    pub nmi_held: AtomicU64,
    /// Index (0 = bootstrap processor).
    pub index: AtomicU32,
    /// Local APIC ID.
    pub apic_id: AtomicU32,
    /// Set once this CPU has checked in.
    pub online: AtomicBool,
    /// Set while the local APIC is in x2APIC mode.
    pub x2apic: AtomicBool,
    /// Command from the bootstrap processor (see `smp::command`), 0 when idle.
    pub command: AtomicU32,
    /// Counts the commands this CPU has finished.
    pub command_done: AtomicU32,
    /// The last command's result (command-specific).
    pub last_result: AtomicU32,
    /// This CPU's TSS (its descriptor is GDT slot 3 + 2 * index).
    pub tss: UnsafeCell<Tss>,
    /// The local-APIC handle, used only by this CPU.
    pub apic: UnsafeCell<ApicHandle>,
}

/// Byte offsets of the counters in [`PerCpu`], for the assembly entry stubs.
pub mod offset {
    /// `nmi_handled`.
    pub const NMI_HANDLED: usize = core::mem::offset_of!(super::PerCpu, nmi_handled);
    /// `nmi_hold`.
    pub const NMI_HOLD: usize = core::mem::offset_of!(super::PerCpu, nmi_hold);
    /// `nmi_held`.
    pub const NMI_HELD: usize = core::mem::offset_of!(super::PerCpu, nmi_held);
}

// SAFETY: the atomics are shared; `tss` is written only by its CPU before LTR and afterwards
// only read by that CPU's hardware; `apic` is used only by its own CPU (through `current`).
unsafe impl Sync for PerCpu {}

impl PerCpu {
    const fn new() -> Self {
        Self {
            self_address: AtomicU64::new(0),
            nmi_handled: AtomicU64::new(0),
            timer_handled: AtomicU64::new(0),
            timer_eois: AtomicU64::new(0),
            ipi_handled: AtomicU64::new(0),
            ipi_eois: AtomicU64::new(0),
            ipi_not_in_service: AtomicU64::new(0),
            storm_handled: [const { AtomicU64::new(0) }; MAX_CPUS],
            nmi_hold: AtomicU64::new(0),
            nmi_held: AtomicU64::new(0),
            index: AtomicU32::new(0),
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
            x2apic: AtomicBool::new(false),
            command: AtomicU32::new(0),
            command_done: AtomicU32::new(0),
            last_result: AtomicU32::new(0),
            tss: UnsafeCell::new(Tss([0; 104])),
            apic: UnsafeCell::new(ApicHandle::None),
        }
    }

    /// The TSS's linear address.
    pub fn tss_base(&self) -> u64 {
        self.tss.get() as u64
    }

    /// The GDT selector of this CPU's TSS descriptor.
    pub fn tr_selector(&self) -> u16 {
        tr_selector(self.index.load(Ordering::Relaxed) as usize)
    }
}

/// The GDT selector of CPU `index`'s TSS descriptor (two 8-byte slots): slot 3 (0x18) for the
/// bootstrap processor, slot 7 + 2 * (index - 1) (0x38, 0x48, ...) for the others (slots 5 and
/// 6 are the user segments).
pub const fn tr_selector(index: usize) -> u16 {
    if index == 0 { 0x18 } else { ((7 + 2 * (index - 1)) * 8) as u16 }
}

static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

/// CPU `index`'s state, if the index is in range.
pub fn cpu(index: usize) -> Option<&'static PerCpu> {
    CPUS.get(index)
}

/// Makes `index` this CPU's per-CPU state: records the index and loads IA32_GS_BASE.
/// Call first on each CPU, before interrupts or NMIs can reach the handlers.
pub fn install(index: usize) -> &'static PerCpu {
    let Some(cpu) = CPUS.get(index) else { crate::port::exit(crate::port::status::PANIC) };
    let address = cpu as *const PerCpu as u64;
    cpu.self_address.store(address, Ordering::SeqCst);
    cpu.index.store(index as u32, Ordering::SeqCst);
    // SAFETY: CPL 0; IA32_GS_BASE exists on every 64-bit processor and the value is canonical
    // (an identity-mapped static).
    unsafe { x86::msr::wrmsr(IA32_GS_BASE, address) };
    cpu
}

/// This CPU's state (after [`install`]).
pub fn current() -> &'static PerCpu {
    let address: u64;
    // SAFETY: reads the first quadword at the GS base, which `install` pointed at this CPU's
    // `PerCpu` (and the VMCS host GS base restores after each VM exit).
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) address, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: the address is one of the `CPUS` statics (see above).
    unsafe { &*(address as *const PerCpu) }
}

/// This CPU's GS base, for the VMCS host GS base.
pub fn gs_base() -> u64 {
    current().self_address.load(Ordering::Relaxed)
}

/// The CPUs that have checked in, in index order.
pub fn online() -> impl Iterator<Item = &'static PerCpu> {
    CPUS.iter().filter(|cpu| cpu.online.load(Ordering::SeqCst))
}

/// How many CPUs have checked in.
pub fn online_count() -> usize {
    online().count()
}
