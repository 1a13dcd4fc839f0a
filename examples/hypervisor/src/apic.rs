//! The host's local APIC, in xAPIC mode: the guest sends itself NMIs through the same MMIO page
//! (EPT maps it through), which x2APIC mode would disable.

use core::ptr::NonNull;
use hvkit_apic::lvt::Divide;
use hvkit_apic::{ApicBase, CountingMode, LocalApic, MmioRegisters, Svr, XApic};

static mut APIC: Option<XApic<MmioRegisters>> = None;

/// The APIC handle (single CPU, used with interrupts off or from the handlers).
#[allow(
    static_mut_refs,
    reason = "single CPU; the handle is only used with interrupts disabled or from handlers that cannot nest"
)]
pub fn get() -> &'static mut XApic<MmioRegisters> {
    // SAFETY: initialised by `init` before any use; single CPU.
    match unsafe { APIC.as_mut() } {
        Some(apic) => apic,
        None => {
            crate::println!("HVKIT error: APIC used before init");
            crate::port::exit(crate::port::status::PANIC)
        }
    }
}

/// Finds the APIC, checks xAPIC mode, software-enables it.
pub fn init() -> Result<u32, hvkit_apic::ModeError> {
    let base = apic_base();
    let Some(page) = NonNull::new(base.base_address() as *mut u32) else {
        return Err(hvkit_apic::ModeError::NotInMode {
            expected: hvkit_apic::Mode::XApic,
            found: base.state(),
        });
    };
    // SAFETY: the APIC page is identity-mapped by the boot page tables; single CPU.
    let registers = unsafe { MmioRegisters::new(page) };
    let mut apic = XApic::new(registers, base)?;
    apic.set_svr(Svr::enabled(crate::host::SPURIOUS_VECTOR));
    apic.set_tpr(0);
    let id = apic.id();
    // SAFETY: single CPU, before any interrupt can use it.
    unsafe { APIC = Some(apic) };
    Ok(id)
}

/// Physical base of the APIC page.
pub fn base_address() -> u64 {
    apic_base().base_address()
}

/// IA32_APIC_BASE.
fn apic_base() -> ApicBase {
    // SAFETY: CPL 0; IA32_APIC_BASE exists on every CPU with a local APIC (the boot checked
    // CPUID.1:EDX[9]); reading it has no side effects.
    ApicBase(unsafe { x86::msr::rdmsr(x86::msr::IA32_APIC_BASE) })
}

/// EOI.
pub fn eoi() {
    get().eoi();
}

/// Starts the periodic host timer.
pub fn start_timer(initial_count: u32) {
    get().start_timer(
        crate::host::TIMER_VECTOR,
        CountingMode::Periodic,
        Divide::By1,
        initial_count,
    );
}

/// Stops the host timer.
pub fn stop_timer() {
    get().stop_timer();
}

/// This CPU's local APIC as a [`LocalApic`] value that owns nothing: every access goes through
/// the one handle `init` made (for the self-NMI strategy, which owns its sender).
#[derive(Debug, Clone, Copy)]
pub struct ThisApic;

impl LocalApic for ThisApic {
    const MODE: hvkit_apic::Mode = hvkit_apic::Mode::XApic;

    fn read(&self, offset: u32) -> u32 {
        get().read(offset)
    }

    fn write(&mut self, offset: u32, value: u32) {
        get().write(offset, value);
    }

    fn id(&self) -> u32 {
        get().id()
    }

    fn send_ipi(
        &mut self,
        ipi: &hvkit_apic::Ipi,
        max_polls: u32,
        delay: &mut impl hvkit_apic::Delay,
    ) -> Result<(), hvkit_apic::IpiError> {
        get().send_ipi(ipi, max_polls, delay)
    }

    fn send_self_ipi(
        &mut self,
        vector: u8,
        max_polls: u32,
        delay: &mut impl hvkit_apic::Delay,
    ) -> Result<(), hvkit_apic::IpiError> {
        get().send_self_ipi(vector, max_polls, delay)
    }
}
