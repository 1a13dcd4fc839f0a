//! The host's local APICs: one handle per CPU (in its per-CPU state), xAPIC at boot, x2APIC
//! after [`switch_to_x2apic`]. The guest sends itself NMIs through the xAPIC MMIO page (EPT
//! maps it through), so the VMX scenarios run while the host is in xAPIC mode.
//!
//! Each CPU uses only its own handle, with interrupts disabled or from handlers that do not
//! nest with its other users (the NMI handler never touches the APIC).

use crate::percpu::{self, ApicHandle};
use core::ptr::NonNull;
use core::sync::atomic::Ordering;
use hvkit_apic::lvt::Divide;
use hvkit_apic::{
    ApicBase, CountingMode, CpuidFeatures, HardwareMsrs, Ipi, IpiError, LocalApic, MmioRegisters,
    Svr, X2Apic, XApic,
};

/// ICR delivery-status polls before a send gives up (xAPIC only).
pub const MAX_POLLS: u32 = 100_000;

/// Runs `$body` with `$apic` bound to this CPU's handle in whichever mode it is.
macro_rules! with_apic {
    (|$apic:ident| $body:expr) => {{
        // SAFETY: the handle belongs to this CPU and is used only by it (module docs).
        match unsafe { &mut *percpu::current().apic.get() } {
            ApicHandle::XApic($apic) => $body,
            ApicHandle::X2Apic($apic) => $body,
            ApicHandle::None => {
                crate::println!("HVKIT error: APIC used before init");
                crate::port::exit(crate::port::status::PANIC)
            }
        }
    }};
}

/// Runs `f` on this CPU's xAPIC handle (xAPIC mode only: the VMX scenarios use it). The
/// handle is lent for the call only, so no two `&mut` to it can be alive at once.
#[inline(always)]
fn with_xapic<R>(f: impl FnOnce(&mut XApic<MmioRegisters>) -> R) -> R {
    // SAFETY: the handle belongs to this CPU and is used only by it (module docs); the borrow
    // ends with `f`.
    match unsafe { &mut *percpu::current().apic.get() } {
        ApicHandle::XApic(apic) => f(apic),
        _ => {
            crate::println!("HVKIT error: xAPIC handle used outside xAPIC mode");
            crate::port::exit(crate::port::status::PANIC)
        }
    }
}

/// Finds this CPU's APIC, checks xAPIC mode, software-enables it, records its ID in the
/// per-CPU state. Returns the ID.
pub fn init() -> Result<u32, hvkit_apic::ModeError> {
    let base = apic_base();
    let Some(page) = NonNull::new(base.base_address() as *mut u32) else {
        return Err(hvkit_apic::ModeError::NotInMode {
            expected: hvkit_apic::Mode::XApic,
            found: base.state(),
        });
    };
    // SAFETY: the APIC page is identity-mapped by the boot page tables; each CPU sees its own
    // APIC at that address and only this CPU uses this handle.
    let registers = unsafe { MmioRegisters::new(page) };
    let mut apic = XApic::new(registers, base)?;
    apic.set_svr(Svr::enabled(crate::host::SPURIOUS_VECTOR));
    apic.set_tpr(0);
    Ok(install(ApicHandle::XApic(apic)))
}

/// Makes `handle` this CPU's one APIC handle and records its ID and mode in the per-CPU state;
/// returns the ID. Called with interrupts disabled (before any handler can use the handle).
fn install(handle: ApicHandle) -> u32 {
    let (id, x2apic) = match &handle {
        ApicHandle::XApic(apic) => (apic.id(), false),
        ApicHandle::X2Apic(apic) => (apic.id(), true),
        ApicHandle::None => (0, false),
    };
    let cpu = percpu::current();
    // SAFETY: this CPU's handle, replaced with interrupts disabled (the callers' contract), so
    // no borrow of the old one is alive.
    unsafe { *cpu.apic.get() = handle };
    cpu.apic_id.store(id, Ordering::SeqCst);
    cpu.x2apic.store(x2apic, Ordering::SeqCst);
    id
}

/// Whether CPUID.1:ECX\[21\] offers x2APIC mode.
pub fn x2apic_supported() -> bool {
    CpuidFeatures::read().x2apic
}

/// Switches this CPU's APIC from xAPIC to x2APIC mode (SDM Vol. 3A 12.12.5 "x2APIC State
/// Transitions": xAPIC to x2APIC keeps the APIC's state) and returns the x2APIC ID.
pub fn switch_to_x2apic() -> Result<u32, hvkit_apic::ModeError> {
    // SAFETY: CPL 0; `X2Apic::enable` checks CPUID before touching x2APIC MSRs.
    let msrs = unsafe { HardwareMsrs::new() };
    let apic = X2Apic::enable(msrs, CpuidFeatures::read())?;
    Ok(install(ApicHandle::X2Apic(apic)))
}

/// The mode's name for the report.
pub fn mode_name() -> &'static str {
    if percpu::current().x2apic.load(Ordering::Relaxed) { "x2apic" } else { "xapic" }
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
    with_apic!(|apic| apic.eoi())
}

/// Whether `vector` is in service (ISR).
pub fn is_in_service(vector: u8) -> bool {
    with_apic!(|apic| apic.is_in_service(vector))
}

/// Whether `vector` is requested (IRR).
pub fn is_requested(vector: u8) -> bool {
    with_apic!(|apic| apic.is_requested(vector))
}

/// Sends `ipi` (xAPIC: `Ok` once the delivery status says the IPI was accepted).
pub fn send(ipi: &Ipi) -> Result<(), IpiError> {
    let mut spin = || core::hint::spin_loop();
    with_apic!(|apic| apic.send_ipi(ipi, MAX_POLLS, &mut spin))
}

/// Sends an NMI to this CPU (physical destination = own APIC ID).
pub fn send_self_nmi() -> Result<(), IpiError> {
    let mut spin = || core::hint::spin_loop();
    with_apic!(|apic| apic.send_self_nmi(MAX_POLLS, &mut spin))
}

/// Sends a fixed self-IPI (xAPIC: self shorthand; x2APIC: the SELF IPI MSR).
pub fn send_self_ipi(vector: u8) -> Result<(), IpiError> {
    let mut spin = || core::hint::spin_loop();
    with_apic!(|apic| apic.send_self_ipi(vector, MAX_POLLS, &mut spin))
}

/// Starts the periodic host timer.
pub fn start_timer(initial_count: u32) {
    with_apic!(|apic| apic.start_timer(
        crate::host::TIMER_VECTOR,
        CountingMode::Periodic,
        Divide::By1,
        initial_count,
    ))
}

/// Stops the host timer.
pub fn stop_timer() {
    with_apic!(|apic| apic.stop_timer())
}

/// This CPU's local APIC (xAPIC mode) as a [`LocalApic`] value that owns nothing: every access
/// goes through this CPU's handle (for the self-NMI strategy, which owns its sender). The
/// bootstrap processor's VMX scenarios run in xAPIC mode only; [`ThisApicAnyMode`] serves
/// both modes but tests the mode on every access, which made the benchmarked self-NMI path 13
/// instructions longer (100 instead of 87, `cargo xtask bench`).
#[derive(Debug, Clone, Copy)]
pub struct ThisApic;

impl LocalApic for ThisApic {
    const MODE: hvkit_apic::Mode = hvkit_apic::Mode::XApic;

    fn read(&self, offset: u32) -> u32 {
        with_xapic(|apic| apic.read(offset))
    }

    fn write(&mut self, offset: u32, value: u32) {
        with_xapic(|apic| apic.write(offset, value));
    }

    fn id(&self) -> u32 {
        with_xapic(|apic| apic.id())
    }

    fn send_ipi(
        &mut self,
        ipi: &hvkit_apic::Ipi,
        max_polls: u32,
        delay: &mut impl hvkit_apic::Delay,
    ) -> Result<(), hvkit_apic::IpiError> {
        with_xapic(|apic| apic.send_ipi(ipi, max_polls, delay))
    }

    fn send_self_ipi(
        &mut self,
        vector: u8,
        max_polls: u32,
        delay: &mut impl hvkit_apic::Delay,
    ) -> Result<(), hvkit_apic::IpiError> {
        with_xapic(|apic| apic.send_self_ipi(vector, max_polls, delay))
    }
}

/// This CPU's local APIC in whichever mode it is in now (xAPIC or x2APIC), as a [`LocalApic`]
/// value that owns nothing, for the application processors' self-NMI strategy (their guest
/// scenarios run in both modes). `MODE` names the boot mode; each access follows the mode
/// this CPU's handle is in.
#[derive(Debug, Clone, Copy)]
pub struct ThisApicAnyMode;

impl LocalApic for ThisApicAnyMode {
    const MODE: hvkit_apic::Mode = hvkit_apic::Mode::XApic;

    fn read(&self, offset: u32) -> u32 {
        with_apic!(|apic| apic.read(offset))
    }

    fn write(&mut self, offset: u32, value: u32) {
        with_apic!(|apic| apic.write(offset, value))
    }

    fn id(&self) -> u32 {
        with_apic!(|apic| apic.id())
    }

    fn send_ipi(
        &mut self,
        ipi: &hvkit_apic::Ipi,
        max_polls: u32,
        delay: &mut impl hvkit_apic::Delay,
    ) -> Result<(), hvkit_apic::IpiError> {
        with_apic!(|apic| apic.send_ipi(ipi, max_polls, delay))
    }

    fn send_self_ipi(
        &mut self,
        vector: u8,
        max_polls: u32,
        delay: &mut impl hvkit_apic::Delay,
    ) -> Result<(), hvkit_apic::IpiError> {
        with_apic!(|apic| apic.send_self_ipi(vector, max_polls, delay))
    }
}
