//! The host's FRED side: the FRED dispatcher (the same counting as the IDT handlers in
//! [`crate::host`]), its entry page, its stack, and the switch to FRED event delivery.

use crate::host::{
    HOST_NMI_HANDLED, HOST_NMI_TSC, HOST_TIMER_TSC, SPURIOUS_VECTOR, TIMER_VECTOR, host_timer,
};
use crate::println;
use core::sync::atomic::Ordering;

/// The FRED dispatcher: the same counting as the IDT handlers, for FRED hosts (events arrive on
/// a FRED frame at the entry page; returns are ERETS from the stub).
extern "C" fn fred_dispatch(
    frame: &mut hvkit_fred::Frame,
    _registers: &mut hvkit_fred::SavedRegisters,
) {
    let tsc = crate::cpu::rdtsc();
    match (frame.ss.event_type(), frame.ss.vector()) {
        (hvkit_fred::EventType::Nmi, _) => {
            HOST_NMI_TSC.store(tsc, Ordering::SeqCst);
            HOST_NMI_HANDLED.fetch_add(1, Ordering::SeqCst);
        }
        (hvkit_fred::EventType::ExternalInterrupt, TIMER_VECTOR) => {
            HOST_TIMER_TSC.store(tsc, Ordering::SeqCst);
            host_timer();
        }
        (hvkit_fred::EventType::ExternalInterrupt, SPURIOUS_VECTOR) => {}
        (kind, vector) => {
            println!(
                "HVKIT host FRED event type={kind:?} vector={vector} rip={:#x} error={:#x}",
                frame.rip, frame.error_code
            );
            crate::port::exit(crate::port::status::PANIC)
        }
    }
}

hvkit_fred::fred_entry_page!(pub HostFredEntry => fred_dispatch);

/// The FRED dispatcher, for software delivery.
pub fn fred_dispatcher() -> hvkit_fred::Dispatcher {
    fred_dispatch
}

/// Red zone configured in IA32_FRED_CONFIG (one 64-byte unit, as Linux does).
pub const FRED_RED_ZONE_UNITS: u8 = 1;

/// Switches the host to FRED event delivery. Returns the new CR4.
pub fn enable_fred() -> Result<u64, hvkit_fred::ConfigError> {
    use hvkit_fred::config::{CR4_FRED, msr};
    let config = hvkit_fred::FredConfig::try_new(HostFredEntry::address(), FRED_RED_ZONE_UNITS, 0)?;
    let stack = hvkit_fred::config::check_rsp(
        core::ptr::addr_of!(FRED_STACK) as u64 + FRED_STACK_SIZE as u64,
    )?;
    for level in 0..4u8 {
        crate::cpu::wrmsr(msr::rsp(level), stack);
    }
    crate::cpu::wrmsr(msr::IA32_FRED_STKLVLS, hvkit_fred::StackLevels::new().raw());
    crate::cpu::wrmsr(msr::IA32_FRED_CONFIG, config.raw());
    let cr4: u64;
    // SAFETY: reading and writing CR4 at CPL 0; FRED is supported (the caller checked CPUID and
    // the VMX CR4 fixed bits), and the entry page and MSRs are set up.
    unsafe {
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags));
        core::arch::asm!("mov cr4, {}", in(reg) cr4 | CR4_FRED, options(nostack, preserves_flags));
    }
    Ok(cr4 | CR4_FRED)
}

const FRED_STACK_SIZE: usize = 16384;

#[repr(C, align(64))]
struct FredStack([u8; FRED_STACK_SIZE]);

static mut FRED_STACK: FredStack = FredStack([0; FRED_STACK_SIZE]);
