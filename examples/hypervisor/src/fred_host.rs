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
///
/// Its first instruction is a CLI. FRED event delivery leaves RFLAGS = 2 (IF = 0: no maskable
/// interrupt until ERETS restores the interrupted RFLAGS; Intel FRED specification, "FRED
/// Event Delivery", new context), so on hardware the CLI changes nothing. It works around the
/// upstream Bochs with FRED (cpu/fred.cc, `BX_CPU_C::FRED_EventDelivery`, the line
/// `BX_CPU_THIS_PTR eflags = 0x2;`), which clears IF by writing EFLAGS directly instead of
/// through `clear_IF()`, so `handleInterruptMaskChange()` never masks the pending-interrupt
/// events: Bochs then delivers the next external interrupt inside the handler with IF = 0 as
/// soon as the local APIC offers it (after the handler's EOI). In the SMP storm each such
/// nested handler's count makes the sender's guest send the next IPI, so the nesting never
/// ended and the stack ran over. Bochs's CLI (and ERETS, which restores RFLAGS through
/// `setEFlags`) does update the mask, so with the CLI at most one interrupt nests, in the entry
/// stub before the CLI.
extern "C" fn fred_dispatch(
    frame: &mut hvkit_fred::Frame,
    _registers: &mut hvkit_fred::SavedRegisters,
) {
    // SAFETY: CLI at CPL 0 in an event handler that already runs with IF = 0 (see above).
    unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
    if ERETU_ARMED.load(Ordering::SeqCst) {
        eretu_step_event(frame);
    }
    let tsc = crate::cpu::rdtsc();
    match (frame.ss.event_type(), frame.ss.vector()) {
        (hvkit_fred::EventType::Nmi, _) => {
            HOST_NMI_TSC.store(tsc, Ordering::SeqCst);
            // The NMI-source bitmap (CPUID.(7,1):EAX[20]; 0 without the feature), from the
            // hardware or from FredDirectCall's re-delivery of an NMI exit's qualification.
            HOST_NMI_SOURCES_SEEN.fetch_or(frame.event_data & 0xFFFF, Ordering::SeqCst);
            HOST_NMI_HANDLED.fetch_add(1, Ordering::SeqCst);
            let cpu = crate::percpu::current();
            cpu.nmi_handled.fetch_add(1, Ordering::SeqCst);
            // Held (the pending-nmi scenario), as in the IDT NMI entry: say so and wait until
            // released; NMIs stay blocked until this handler's ERETS.
            if cpu.nmi_hold.load(Ordering::SeqCst) != 0 {
                cpu.nmi_held.store(1, Ordering::SeqCst);
                while cpu.nmi_hold.load(Ordering::SeqCst) != 0 {
                    core::hint::spin_loop();
                }
                cpu.nmi_held.store(0, Ordering::SeqCst);
            }
        }
        (hvkit_fred::EventType::ExternalInterrupt, crate::host::TEST_IPI_VECTOR) => {
            crate::host::host_ipi();
        }
        (hvkit_fred::EventType::ExternalInterrupt, vector)
            if (crate::host::STORM_VECTOR_BASE..crate::host::STORM_VECTOR_BASE + 16)
                .contains(&vector) =>
        {
            crate::host::host_storm();
        }
        (hvkit_fred::EventType::ExternalInterrupt, crate::host::WAKE_VECTOR) => {
            crate::apic::eoi();
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

/// Whether the bootstrap processor's host switched to FRED event delivery (for good; the
/// application processors switch only for their FRED guest scenarios, see
/// `smpvmx::set_fred_host`).
pub fn host_in_fred_mode() -> bool {
    HOST_FRED_CONFIG.load(Ordering::SeqCst) != 0
}

/// Switches this CPU's host to FRED event delivery, on this CPU's own FRED stack (every stack
/// level uses it: all events arrive at CPL 0 on stack level 0). Returns the new CR4.
pub fn enable_fred() -> Result<u64, hvkit_fred::ConfigError> {
    use hvkit_fred::config::{CR4_FRED, msr};
    let config = hvkit_fred::FredConfig::try_new(HostFredEntry::address(), FRED_RED_ZONE_UNITS, 0)?;
    let index = crate::percpu::current().index.load(Ordering::SeqCst) as usize;
    let (base, size) = fred_stack(index);
    let stack = hvkit_fred::config::check_rsp(base + size)?;
    // SAFETY: CPL 0; the FRED MSRs exist (the caller checked CPUID.(7,1):EAX[17]); CR4.FRED is
    // still 0, so the values steer nothing until the switch below; each is checked (the stack
    // by `check_rsp`, the configuration by `FredConfig::try_new`).
    unsafe {
        for level in 0..4u8 {
            x86::msr::wrmsr(msr::rsp(level), stack);
        }
        x86::msr::wrmsr(msr::IA32_FRED_STKLVLS, hvkit_fred::StackLevels::new().raw());
        x86::msr::wrmsr(msr::IA32_FRED_CONFIG, config.raw());
    }
    if index == 0 {
        HOST_FRED_CONFIG.store(config.raw(), Ordering::SeqCst);
    }
    // SAFETY: reading and writing CR4 at CPL 0; FRED is supported (the caller checked CPUID and
    // the VMX CR4 fixed bits), and the entry page and MSRs are set up.
    let cr4 = unsafe { crate::cpu::write_cr4(|cr4| cr4 | CR4_FRED) };
    Ok(cr4)
}

/// Switches this CPU's host back to IDT event delivery (CR4.FRED = 0; the FRED MSRs keep
/// their values and steer nothing). Returns the new CR4.
pub fn disable_fred() -> u64 {
    // SAFETY: reading and writing CR4 at CPL 0 with interrupts disabled; this CPU's IDT is
    // loaded, so events go through it again.
    unsafe { crate::cpu::write_cr4(|cr4| cr4 & !hvkit_fred::config::CR4_FRED) }
}

const FRED_STACK_SIZE: usize = 16384;

#[repr(C, align(64))]
struct FredStack([u8; FRED_STACK_SIZE]);

/// One FRED stack per CPU (index from `percpu`).
static mut FRED_STACKS: [FredStack; crate::percpu::MAX_CPUS] =
    [const { FredStack([0; FRED_STACK_SIZE]) }; crate::percpu::MAX_CPUS];

/// CPU `index`'s FRED stack: base and size.
fn fred_stack(index: usize) -> (u64, u64) {
    let index = index.min(crate::percpu::MAX_CPUS - 1);
    // SAFETY: only the address is taken.
    let base = unsafe { core::ptr::addr_of!(FRED_STACKS[index]) } as u64;
    (base, FRED_STACK_SIZE as u64)
}

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
    let mut apic = crate::apic::ThisApic;
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

// --- The ERETU step: one trip to ring 3 and back through FRED event delivery. ---

/// IA32_STAR (0xC0000081): bits 47:32 give the CS (and CS + 8 the SS) that FRED event delivery
/// from ring 3 loads; bits 63:48 + 16 and + 8 are the flat user CS and SS ERETU accepts
/// (Intel FRED specification, "FRED Event Delivery" and "ERETU").
const IA32_STAR: u32 = 0xC000_0081;
/// Kernel CS 0x08 (SS 0x10) in bits 47:32; user base 0x20 in bits 63:48, so user SS = 0x28 and
/// user 64-bit CS = 0x30, the DPL-3 descriptors of the boot GDT.
const STAR_VALUE: u64 = (0x20 << 48) | (0x08 << 32);
/// User CS and SS selectors (RPL 3).
const USER_CS: u16 = 0x30 | 3;
const USER_SS: u16 = 0x28 | 3;

/// The only user-accessible memory: its own 2 MiB page (the boot page tables map 2 MiB pages;
/// [`eretu_step`] sets the U bit on the page-directory entry of this area only, and on the
/// PML4 and PDPT entries above it). Page 0 holds the user code, page 1 the user stack.
#[repr(C, align(2097152))]
struct UserArea([u8; 2 * 1024 * 1024]);

static mut USER_AREA: UserArea = UserArea([0; 2 * 1024 * 1024]);

/// The user code: INT3 (a software exception, type 6 vector 3, delivered through FRED to ring
/// 0 on stack level 0, i.e. IA32_FRED_RSP0), then UD2 in case it ever returned.
const USER_CODE: [u8; 3] = [0xCC, 0x0F, 0x0B];

/// Set while the ring-3 step runs: the dispatcher hands every event to [`eretu_step_event`].
static ERETU_ARMED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// The kernel RSP saved by `hvkit_example_eretu_enter`, restored by the resume label.
static ERETU_KERNEL_RSP: AtomicU64 = AtomicU64::new(0);

/// What the dispatcher saw of the event that ended the ring-3 step.
struct EretuSeen {
    event_type: u64,
    vector: u8,
    cs: u16,
    rip: u64,
    rsp: u64,
    frame: u64,
}

static ERETU_SEEN: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

core::arch::global_asm!(
    ".pushsection .text.hvkit_example_eretu,\"ax\",@progbits",
    ".balign 16",
    // sysv64: rdi = user RIP, rsi = user RSP, rdx = CS slot, rcx = SS slot. Saves the
    // callee-saved registers and RSP, builds the FRED return frame (error code, RIP, CS slot,
    // RFLAGS, RSP, SS slot) and executes ERETU. Never returns here: the dispatcher jumps to
    // the resume label, which restores RSP and the registers and returns to the caller.
    "hvkit_example_eretu_enter:",
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov [rip + {saved}], rsp",
    "push rcx",
    "push rsi",
    "push 2",
    "push rdx",
    "push rdi",
    "push 0",
    // ERETU (F3 0F 01 CA).
    ".byte 0xf3, 0x0f, 0x01, 0xca",
    "hvkit_example_eretu_resume:",
    "mov rsp, [rip + {saved}]",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
    ".popsection",
    saved = sym ERETU_KERNEL_RSP,
);

unsafe extern "sysv64" {
    fn hvkit_example_eretu_enter(rip: u64, rsp: u64, cs_slot: u64, ss_slot: u64);
}

/// The dispatcher's part while the ring-3 step is armed: records the event and resumes the
/// kernel continuation (the frame and the FRED stack are abandoned; FRED keeps no state that
/// ERETS/ERETU would have to clear for a non-NMI event).
fn eretu_step_event(frame: &hvkit_fred::Frame) -> ! {
    ERETU_ARMED.store(false, Ordering::SeqCst);
    let values = [
        frame.ss.event_type().bits(),
        u64::from(frame.ss.vector()),
        u64::from(frame.cs.selector()),
        frame.rip,
        frame.rsp,
        frame as *const hvkit_fred::Frame as u64,
    ];
    for (slot, value) in ERETU_SEEN.iter().zip(values) {
        slot.store(value, Ordering::SeqCst);
    }
    // SAFETY: `hvkit_example_eretu_enter` saved the kernel RSP (armed implies it ran on this
    // CPU and has not resumed yet); the resume label restores it with the callee-saved
    // registers and returns to its caller.
    unsafe { core::arch::asm!("jmp hvkit_example_eretu_resume", options(noreturn)) }
}

/// Sets the U bit (bit 2) on the PML4, PDPT and 2 MiB page-directory entries that map
/// `address` in the current (identity-mapped) page tables; `false` when it is not a 2 MiB page.
fn make_user_accessible(address: u64) -> bool {
    const PRESENT: u64 = 1;
    const USER: u64 = 1 << 2;
    const LARGE: u64 = 1 << 7;
    const ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;
    // SAFETY: reading CR3 at CPL 0 has no side effects.
    let cr3 = unsafe { x86::controlregs::cr3() };
    let mut table = cr3 & ADDRESS;
    for (level, shift) in [39u32, 30, 21].into_iter().enumerate() {
        let entry = (table + ((address >> shift) & 511) * 8) as *mut u64;
        // SAFETY: the boot page tables are identity-mapped, writable statics; single CPU with
        // interrupts disabled; only the U bit changes.
        let value = unsafe { entry.read_volatile() };
        if value & PRESENT == 0 || (level == 2) != (value & LARGE != 0) {
            return false;
        }
        // SAFETY: as above.
        unsafe { entry.write_volatile(value | USER) };
        table = value & ADDRESS;
    }
    // SAFETY: INVLPG at CPL 0 drops the stale translation of the area.
    unsafe { core::arch::asm!("invlpg [{}]", in(reg) address, options(nostack, preserves_flags)) };
    true
}

/// The FRED host's ring-3 step: executes ERETU once (to user code at CPL 3 on a user stack),
/// the user code's INT3 comes back through FRED event delivery from ring 3 (CS/SS from
/// IA32_STAR, stack IA32_FRED_RSP0), and the dispatcher resumes here. Reports
/// `fred-eretu`: PASS when the event was the INT3 (software exception 6, vector 3) right after
/// the user code's first byte, from the user CS, with the user RSP, on the FRED stack.
pub fn report_eretu_step() {
    let area = core::ptr::addr_of_mut!(USER_AREA) as u64;
    let code = area;
    let stack_top = area + 2 * 4096;
    let user = make_user_accessible(area);
    if user {
        // SAFETY: the area is a static of this module, identity-mapped and writable.
        unsafe {
            core::ptr::copy_nonoverlapping(USER_CODE.as_ptr(), code as *mut u8, USER_CODE.len())
        };
        // SAFETY: WRMSR of IA32_STAR at CPL 0 (exists in 64-bit mode); nothing else on this
        // host uses SYSCALL/SYSRET.
        unsafe { x86::msr::wrmsr(IA32_STAR, STAR_VALUE) };
        ERETU_ARMED.store(true, Ordering::SeqCst);
        let cs_slot = hvkit_fred::CsSlot::new(USER_CS, 0).raw();
        let ss_slot = u64::from(USER_SS);
        // SAFETY: 1. CR4.FRED = 1 at CPL 0 (the host switched to FRED) with FRED_RSP0 set;
        // 2. the frame returns to user code in a user-accessible page with a user stack, with
        // IF = 0 and flat DPL-3 selectors matching IA32_STAR; 3. the user code's INT3 brings
        // the dispatcher, which resumes at the label in `hvkit_example_eretu_enter` with the
        // saved RSP and callee-saved registers, as a normal return of the call.
        unsafe { hvkit_example_eretu_enter(code, stack_top, cs_slot, ss_slot) };
    }
    let v: [u64; 6] = core::array::from_fn(|index| ERETU_SEEN[index].load(Ordering::SeqCst));
    let seen = EretuSeen {
        event_type: v[0],
        vector: v[1] as u8,
        cs: v[2] as u16,
        rip: v[3],
        rsp: v[4],
        frame: v[5],
    };
    let (fred_stack, size) = fred_stack(0);
    let on_fred_stack = (fred_stack..fred_stack + size).contains(&seen.frame);
    println!(
        "HVKIT fred eretu user_area={area:#x} user_cs={USER_CS:#x} user_ss={USER_SS:#x} event_type={} vector={} frame_cs={:#x} frame_rip={:#x} frame_rsp={:#x} frame_on_rsp0_stack={on_fred_stack}",
        seen.event_type, seen.vector, seen.cs, seen.rip, seen.rsp
    );
    let pass = user
        && seen.event_type == hvkit_fred::EventType::SoftwareException.bits()
        && seen.vector == 3
        && seen.cs == USER_CS
        && seen.rip == code + 1
        && seen.rsp == stack_top
        && on_fred_stack;
    crate::report::report(crate::report::Line {
        name: "fred-eretu",
        strategy: "ring3-int3",
        sent: 1,
        exits: 0,
        handled: u64::from(seen.vector == 3),
        eois: 0,
        insns_per_event: 0,
        pass,
        extra: crate::report::Extra::default(),
    });
}
