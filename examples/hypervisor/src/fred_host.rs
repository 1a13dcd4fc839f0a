//! The host's FRED side: the FRED dispatcher (the same counting as the IDT handlers in
//! [`crate::host`]), its entry page, its stack, and the switch to FRED event delivery.

use crate::host::{
    HOST_NMI_HANDLED, HOST_NMI_TSC, HOST_TIMER_TSC, SPURIOUS_VECTOR, TIMER_VECTOR, host_timer,
};
use crate::println;
use core::sync::atomic::{AtomicU64, Ordering};
use hvkit_vmx_core::vmcs::{ActiveVmcs, GuestRegisters, VmcsAccess};

/// The NMI-source bitmaps (event data bits 15:0) of every NMI the FRED dispatcher handled, ORed.
pub static HOST_NMI_SOURCES_SEEN: AtomicU64 = AtomicU64::new(0);

/// The IA32_FRED_CONFIG value [`enable_fred`] wrote (0 before).
static HOST_FRED_CONFIG: AtomicU64 = AtomicU64::new(0);

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
            // The NMI-source bitmap (CPUID.(7,1):EAX[20]; 0 without the feature), from the
            // hardware or from FredDirectCall's re-delivery of an NMI exit's qualification.
            HOST_NMI_SOURCES_SEEN.fetch_or(frame.event_data & 0xFFFF, Ordering::SeqCst);
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
    HOST_FRED_CONFIG.store(config.raw(), Ordering::SeqCst);
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

/// The value the guest's FRED MSR probe writes to IA32_FRED_CONFIG (entry page 0xBADF000, no
/// red zone, stack level 0: no reserved bit set, canonical).
pub const GUEST_PROBE_CONFIG: u64 = 0x0BAD_F000;

/// Guest side of the FRED MSR probe: WRMSR of [`GUEST_PROBE_CONFIG`] to IA32_FRED_CONFIG, then
/// RDMSR of it; returns the value read. Runs in the guest (CPL 0, FRED enumerated).
pub fn guest_fred_msr_probe() -> u64 {
    let number = hvkit_fred::config::msr::IA32_FRED_CONFIG;
    let (low, high): (u32, u32);
    // SAFETY: guest code at CPL 0 on a CPU with FRED (the host switched to FRED, so the MSR
    // exists); both instructions exit to the host, which answers them from the guest's
    // shadow. The guest's CR4.FRED is 0, so the value steers no event delivery.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") number, in("eax") GUEST_PROBE_CONFIG as u32,
            in("edx") (GUEST_PROBE_CONFIG >> 32) as u32, options(nostack, preserves_flags));
        core::arch::asm!("rdmsr", in("ecx") number, out("eax") low, out("edx") high,
            options(nostack, preserves_flags));
    }
    (u64::from(high) << 32) | u64::from(low)
}

/// The guest's view of the FRED MSRs IA32_FRED_RSP0 (0x1CC) to IA32_FRED_CONFIG (0x1D4).
///
/// The example has no MSR bitmap, so every guest RDMSR and WRMSR exits (SDM Vol. 3C 26.1.3)
/// and the guest never reaches the processor's FRED MSRs, which belong to the host. The values
/// live here; with the VMCS FRED-state controls, writes of the eight MSRs that have guest
/// fields also go to those fields (SDM Vol. 3D B.2), so that VM entry loads them and the
/// processor's FRED MSRs hold them while the guest runs. Writes are stored as given: the #GP a
/// processor raises for reserved bits or non-canonical values is not emulated.
#[derive(Default)]
pub struct GuestFredMsrs {
    values: [u64; 9],
    /// RDMSR/WRMSR exits answered.
    pub exits: u64,
}

impl GuestFredMsrs {
    const FIRST: u32 = hvkit_fred::config::msr::IA32_FRED_RSP0;

    /// Answers a RDMSR (`write` false) or WRMSR exit for a FRED MSR (number in ECX, value in
    /// EDX:EAX, SDM Vol. 2 RDMSR/WRMSR). Returns false, changing nothing, for any other MSR.
    pub fn handle_exit(
        &mut self,
        write: bool,
        registers: &mut GuestRegisters,
        vmcs: &mut ActiveVmcs<'_>,
        vmx: &crate::vmx::Vmx,
    ) -> bool {
        let number = registers.rcx as u32;
        let Some(index) = number.checked_sub(Self::FIRST).map(|index| index as usize) else {
            return false;
        };
        let Some(slot) = self.values.get_mut(index) else { return false };
        if !vmx.fred_cpu {
            return false;
        }
        if write {
            let value = (registers.rdx << 32) | (registers.rax & 0xFFFF_FFFF);
            if vmx.controls.fred_state()
                && let Some(msr) = hvkit_vmx_core::fred_state::FredMsr::ALL
                    .into_iter()
                    .find(|msr| msr.number() == number)
                && vmcs.write(msr.guest_field(), value).is_err()
            {
                return false;
            }
            *slot = value;
        } else {
            registers.rax = *slot & 0xFFFF_FFFF;
            registers.rdx = *slot >> 32;
        }
        self.exits += 1;
        true
    }
}

/// Hypercall `FRED_MSR_CHECK`: the guest wrote [`GUEST_PROBE_CONFIG`] to IA32_FRED_CONFIG and
/// read back `read_back`. Reports `fred-msr-isolation`: PASS when the guest read its own value,
/// the processor's IA32_FRED_CONFIG is still the one [`enable_fred`] wrote, and (with the VMCS
/// FRED-state controls) the exit saved the guest's value in its guest field.
pub fn report_msr_isolation(
    read_back: u64,
    vmcs: &ActiveVmcs<'_>,
    vmx: &crate::vmx::Vmx,
    msrs: &GuestFredMsrs,
) {
    // SAFETY: CPL 0; the host switched to FRED, so the CPU has the FRED MSRs. RDMSR has no
    // side effects.
    let host = unsafe { x86::msr::rdmsr(hvkit_fred::config::msr::IA32_FRED_CONFIG) };
    let expected = HOST_FRED_CONFIG.load(Ordering::SeqCst);
    let (strategy, saved) = if vmx.controls.fred_state() {
        ("vmcs-controls", vmcs.read(hvkit_vmx_core::field::GUEST_IA32_FRED_CONFIG).ok())
    } else {
        ("msr-exit-shadow", None)
    };
    let (has_field, field_value) = (saved.is_some(), saved.unwrap_or(0));
    println!(
        "HVKIT fred msr-isolation strategy={strategy} guest_wrote={GUEST_PROBE_CONFIG:#x} guest_read={read_back:#x} guest_field_saved={has_field} guest_field={field_value:#x} host_config={host:#x} host_expected={expected:#x}"
    );
    crate::report::report(crate::report::Line {
        name: "fred-msr-isolation",
        strategy,
        sent: 1,
        exits: msrs.exits,
        handled: 1,
        eois: 0,
        insns_per_event: 0,
        pass: read_back == GUEST_PROBE_CONFIG
            && host == expected
            && saved.is_none_or(|value| value == GUEST_PROBE_CONFIG),
        extra: crate::report::Extra::default(),
    });
}

/// What the NMI-source check did.
pub enum NmiSourceOutcome {
    /// Not run, and why.
    Skip(&'static str),
    /// Ran: NMIs sent, handler runs, and the source bitmaps seen against those sent.
    Ran {
        /// NMIs sent.
        sent: u64,
        /// FRED NMI handler runs meanwhile.
        handled: u64,
        /// Source bitmap expected (one bit per source sent).
        expected: u16,
        /// Source bitmaps the handler saw, ORed.
        seen: u16,
    },
}

/// The sources the check sends, one NMI each.
const NMI_SOURCES: [u8; 3] = [3, 5, 9];

/// Hypercall `NMI_SOURCE`: runs [`nmi_source_check`] and reports `nmi-source` (SKIP with the
/// reason where it cannot run).
pub fn report_nmi_source(fred_mode: bool) {
    match nmi_source_check(fred_mode) {
        NmiSourceOutcome::Skip(reason) => crate::report::skip("nmi-source", reason),
        NmiSourceOutcome::Ran { sent, handled, expected, seen } => {
            println!("HVKIT nmi-source expected={expected:#06x} seen={seen:#06x}");
            crate::report::report(crate::report::Line {
                name: "nmi-source",
                strategy: "fred-event-data",
                sent,
                exits: 0,
                handled,
                eois: 0,
                insns_per_event: 0,
                pass: seen == expected,
                extra: crate::report::Extra::default(),
            });
        }
    }
}

/// On a FRED host whose CPU reports NMI sources (CPUID.(7,1):EAX\[20\]), sends this CPU one
/// NMI per source in [`NMI_SOURCES`] (the source in the ICR vector field of an NMI) and
/// collects the bitmaps the FRED NMI handler finds in its event data.
pub fn nmi_source_check(fred_mode: bool) -> NmiSourceOutcome {
    use hvkit_apic::{Destination, Ipi, LocalApic as _, NmiSource, Target};
    let eax = hvkit_fred::config::cpuid_7_1_eax();
    if !hvkit_vmx_core::nmi_source::supported(eax) {
        return NmiSourceOutcome::Skip("not supported (CPUID.(7,1):EAX[20]=0)");
    }
    if !fred_mode {
        return NmiSourceOutcome::Skip(
            "IDT host: IDT delivery carries no NMI-source bitmap (only FRED event data does)",
        );
    }
    HOST_NMI_SOURCES_SEEN.store(0, Ordering::SeqCst);
    let before = HOST_NMI_HANDLED.load(Ordering::SeqCst);
    let apic = crate::apic::get();
    let own = Target::To(Destination::Physical(apic.id()));
    let mut expected = 0u16;
    let mut sent = 0u64;
    for source in NMI_SOURCES.into_iter().filter_map(NmiSource::new) {
        let ipi = Ipi::nmi_with_source(source, own);
        if apic.send_ipi(&ipi, 1000, &mut core::hint::spin_loop).is_err() {
            break;
        }
        sent += 1;
        expected |= 1 << source.get();
        // One NMI at a time: NMIs that wait together merge their sources into one bitmap.
        for _ in 0..100_000 {
            if HOST_NMI_HANDLED.load(Ordering::SeqCst) - before >= sent {
                break;
            }
            core::hint::spin_loop();
        }
    }
    NmiSourceOutcome::Ran {
        sent,
        handled: HOST_NMI_HANDLED.load(Ordering::SeqCst) - before,
        expected,
        seen: HOST_NMI_SOURCES_SEEN.load(Ordering::SeqCst) as u16,
    }
}
