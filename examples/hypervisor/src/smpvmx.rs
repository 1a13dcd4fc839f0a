//! Every application processor in VMX operation with its own VMXON region, VMCS, guest and
//! guest stack (EPT is shared), and the scenarios with the target CPU inside its guest.
//!
//! Each AP's guest is a PAUSE loop that polls a stop word in its control block and VMCALLs
//! when told to stop. The VMCS has NMI exiting and external-interrupt exiting with
//! "acknowledge interrupt on exit" (the bootstrap processor's controls); the AP's exit loop
//! re-delivers each host event with hvkit-nmi-reinject (IDT direct call or self-NMI) before it
//! looks at anything else, and counts exits per reason.
//!
//! NMI merging rules the scenarios account for (SDM Vol. 3A 6.7.1 "Handling Multiple NMIs":
//! while an NMI handler runs, NMIs are blocked and at most one more is held pending; an NMI VM
//! exit leaves NMIs blocked until the next IRET, SDM Vol. 3C 28.1 "Architectural State before
//! a VM Exit"):
//! - direct call: every NMI that caused an exit is handled once; NMIs that arrive while one is
//!   blocked merge into one pending NMI (architectural, on bare metal too);
//! - self-NMI: the re-sent NMI is a new NMI: if another NMI is already held pending, the two are
//!   one ("merged" on the report line), so the handler runs once for both.

use crate::percpu::{self, MAX_CPUS, PerCpu};
use crate::vcpu::{ExitHandler, Fatal, Guest, Resume, Vcpu};
use crate::{apic, host, println, smp, vmx};
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use hvkit_apic::{Destination, FixedTarget, Ipi, Target};
use hvkit_nmi_reinject::{
    FredDirectCall, FredEretsToSelf, GuestEventQueue, GuestFixups, HostEvent, HostEventError,
    IdtDirectCall, IdtEntry, InjectionContext, IretToSelf, IrqDelivery, NmiUnblocker, PollingApic,
    Redeliver, RedeliveryError, SelfNmi,
};
use hvkit_vmx_core::exit::{BasicExitReason, ExitInfo, VmExit};
use hvkit_vmx_core::field;
use hvkit_vmx_core::region::{VmcsRegion, VmxonRegion};
use hvkit_vmx_core::vmcs::{ClearVmcs, GuestRegisters, VmcsAccess, VmxRoot};

/// Re-delivery strategies.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// hvkit-nmi-reinject `IdtDirectCall`.
    DirectCall,
    /// hvkit-nmi-reinject `SelfNmi` with `IretToSelf`.
    SelfNmi,
    /// hvkit-nmi-reinject `FredDirectCall` (the AP's host in FRED mode).
    FredDirectCall,
    /// hvkit-nmi-reinject `SelfNmi` with `FredEretsToSelf` (the AP's host in FRED mode).
    FredSelfNmi,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Self::DirectCall => "direct-call",
            Self::SelfNmi => "self-nmi",
            Self::FredDirectCall => "fred-direct-call",
            Self::FredSelfNmi => "fred-self-nmi",
        }
    }

    fn command(self) -> u32 {
        match self {
            Self::DirectCall => smp::command::GUEST_DIRECT_CALL,
            Self::SelfNmi => smp::command::GUEST_SELF_NMI,
            Self::FredDirectCall => smp::command::GUEST_FRED_DIRECT_CALL,
            Self::FredSelfNmi => smp::command::GUEST_FRED_SELF_NMI,
        }
    }

    /// Whether a re-sent NMI can be one with an NMI already held (the self-NMI strategies).
    fn can_merge(self) -> bool {
        matches!(self, Self::SelfNmi | Self::FredSelfNmi)
    }
}

/// The return that unblocks NMIs after a self-NMI: IRET on an IDT host, ERETS on a FRED host.
enum ApUnblocker {
    Iret(IretToSelf),
    Erets(FredEretsToSelf),
}

impl NmiUnblocker for ApUnblocker {
    fn unblock_nmis(&mut self) {
        match self {
            Self::Iret(iret) => iret.unblock_nmis(),
            Self::Erets(erets) => erets.unblock_nmis(),
        }
    }
}

/// The bootstrap processor's VMX capabilities and controls (it never returns from
/// `kernel_main`, so the value lives for the rest of the run).
static CONTEXT: AtomicPtr<vmx::Vmx> = AtomicPtr::new(core::ptr::null_mut());
/// The shared EPT pointer.
static EPTP: AtomicU64 = AtomicU64::new(0);

/// Records the bootstrap processor's VMX context for the APs.
///
/// # Safety
///
/// `vmx` stays valid and unchanged for the rest of the run (`kernel_main`'s value: that
/// function never returns).
pub unsafe fn set_context(vmx: &vmx::Vmx, eptp: u64) {
    EPTP.store(eptp, Ordering::SeqCst);
    CONTEXT.store(vmx as *const vmx::Vmx as *mut vmx::Vmx, Ordering::SeqCst);
}

fn context() -> Option<&'static vmx::Vmx> {
    let pointer = CONTEXT.load(Ordering::SeqCst);
    // SAFETY: null or the `&'static` given to `set_context`, only read from here on.
    unsafe { pointer.as_ref() }
}

/// A guest's control block (RDI in the guest), written by the guest and the host. The guest
/// code uses the offsets in [`control`].
#[repr(C)]
pub struct GuestControl {
    /// The guest sets it to 1 once it runs.
    running: AtomicU64,
    /// The host sets it to 1 to make the guest VMCALL.
    stop: AtomicU64,
    /// The guest's loop count (it moves only while the guest runs).
    heartbeat: AtomicU64,
    /// Non-zero: the guest sends storm IPIs to its targets in turn.
    storm: AtomicU64,
    /// Storm IPIs the guest may still send (it counts down; at 0 it only loops).
    remaining: AtomicU64,
    /// The xAPIC page's address (EPT maps it through to the local APIC).
    apic_base: AtomicU64,
    /// How many entries of `targets` are in use.
    target_count: AtomicU64,
    /// Sends whose confirmation did not come within `confirm_polls`.
    timeouts: AtomicU64,
    /// Polls of a confirmation counter before a send counts as timed out.
    confirm_polls: AtomicU64,
    /// The storm's targets.
    targets: [StormTarget; MAX_CPUS],
}

/// One storm target of a guest.
#[repr(C)]
pub struct StormTarget {
    /// ICR high: the target's APIC ID in bits 31:24.
    icr_high: AtomicU64,
    /// Address of the target's handled counter for this sender's vector.
    confirm: AtomicU64,
    /// IPIs sent to this target.
    sent: AtomicU64,
    /// ICR low: fixed, physical, edge, vector = storm base + sender index.
    icr_low: AtomicU64,
}

/// Byte offsets in [`GuestControl`] and [`StormTarget`] for the guest code.
mod control {
    use super::{GuestControl, StormTarget};
    use core::mem::offset_of;
    pub const STOP: usize = offset_of!(GuestControl, stop);
    pub const HEARTBEAT: usize = offset_of!(GuestControl, heartbeat);
    pub const STORM: usize = offset_of!(GuestControl, storm);
    pub const REMAINING: usize = offset_of!(GuestControl, remaining);
    pub const APIC_BASE: usize = offset_of!(GuestControl, apic_base);
    pub const TARGET_COUNT: usize = offset_of!(GuestControl, target_count);
    pub const TIMEOUTS: usize = offset_of!(GuestControl, timeouts);
    pub const CONFIRM_POLLS: usize = offset_of!(GuestControl, confirm_polls);
    pub const TARGETS: usize = offset_of!(GuestControl, targets);
    pub const TARGET_SIZE: usize = core::mem::size_of::<StormTarget>();
    pub const ICR_HIGH: usize = offset_of!(StormTarget, icr_high);
    pub const CONFIRM: usize = offset_of!(StormTarget, confirm);
    pub const SENT: usize = offset_of!(StormTarget, sent);
    pub const ICR_LOW: usize = offset_of!(StormTarget, icr_low);
}

/// Exit counts of one guest run, published by the AP when the run ends.
pub struct RunCounts {
    nmi_exits: AtomicU64,
    irq_exits: AtomicU64,
    other_exits: AtomicU64,
    errors: AtomicU64,
    /// Requeued interrupts (self-NMI strategy) whose handler did not run before re-entry.
    requeue_timeouts: AtomicU64,
}

impl RunCounts {
    const fn new() -> Self {
        Self {
            nmi_exits: AtomicU64::new(0),
            irq_exits: AtomicU64::new(0),
            other_exits: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            requeue_timeouts: AtomicU64::new(0),
        }
    }
}

const fn storm_target() -> StormTarget {
    StormTarget {
        icr_high: AtomicU64::new(0),
        confirm: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        icr_low: AtomicU64::new(0),
    }
}

static CONTROLS: [GuestControl; MAX_CPUS] = [const {
    GuestControl {
        running: AtomicU64::new(0),
        stop: AtomicU64::new(0),
        heartbeat: AtomicU64::new(0),
        storm: AtomicU64::new(0),
        remaining: AtomicU64::new(0),
        apic_base: AtomicU64::new(0),
        target_count: AtomicU64::new(0),
        timeouts: AtomicU64::new(0),
        confirm_polls: AtomicU64::new(0),
        targets: [const { storm_target() }; MAX_CPUS],
    }
}; MAX_CPUS];
static COUNTS: [RunCounts; MAX_CPUS] = [const { RunCounts::new() }; MAX_CPUS];

static mut VMXON_REGIONS: [VmxonRegion; MAX_CPUS] = [const { VmxonRegion::new(0) }; MAX_CPUS];
static mut VMCS_REGIONS: [VmcsRegion; MAX_CPUS] = [const { VmcsRegion::new(0) }; MAX_CPUS];

#[repr(C, align(4096))]
struct GuestStack([u8; 4096]);

static mut GUEST_STACKS: [GuestStack; MAX_CPUS] = [const { GuestStack([0; 4096]) }; MAX_CPUS];

/// An AP's VMX state: its root token and vCPU, used only by that AP.
struct ApVmx {
    root: VmxRoot,
    vcpu: Vcpu,
}

struct ApSlot(core::cell::UnsafeCell<Option<ApVmx>>);

// SAFETY: slot `i` is used only by CPU `i` (from its command loop).
unsafe impl Sync for ApSlot {}

static AP_VMX: [ApSlot; MAX_CPUS] = [const { ApSlot(core::cell::UnsafeCell::new(None)) }; MAX_CPUS];

core::arch::global_asm!(
    r#"
    .section .text
    .balign 16
    .global smp_guest_main
smp_guest_main:
    /* RDI = this guest's control block: say it runs, then loop (counting the loops) until
       told to stop; in storm mode each loop sends one fixed IPI to the next target through
       the xAPIC ICR and waits (bounded) for the target's handler count to move, until its
       quota (remaining) is used up. */
    mov qword ptr [rdi], 1
    xor ecx, ecx
2:
    pause
    inc qword ptr [rdi + {heartbeat}]
    cmp qword ptr [rdi + {stop}], 0
    jne 9f
    cmp qword ptr [rdi + {storm}], 0
    je 2b
    cmp qword ptr [rdi + {remaining}], 0
    je 2b
    mov rax, [rdi + {target_count}]
    test rax, rax
    je 2b
    cmp rcx, rax
    jb 3f
    xor ecx, ecx
3:
    mov rsi, rcx
    imul rsi, rsi, {target_size}
    lea rsi, [rdi + rsi + {targets}]
    mov r8, [rsi + {confirm}]
    mov r9, [r8]
    mov r10, [rdi + {apic_base}]
    mov rax, [rsi + {icr_high}]
    mov dword ptr [r10 + 0x310], eax
    mov rax, [rsi + {icr_low}]
    mov dword ptr [r10 + 0x300], eax
    /* Delivery status (ICR bit 12) back to idle, bounded. */
    mov edx, 100000
4:
    test dword ptr [r10 + 0x300], 0x1000
    jz 5f
    pause
    dec edx
    jnz 4b
5:
    inc qword ptr [rsi + {sent}]
    dec qword ptr [rdi + {remaining}]
    mov rdx, [rdi + {confirm_polls}]
6:
    cmp [r8], r9
    jne 7f
    pause
    inc qword ptr [rdi + {heartbeat}]
    dec rdx
    jnz 6b
    inc qword ptr [rdi + {timeouts}]
7:
    inc rcx
    jmp 2b
9:
    mov eax, {stop_call}
    vmcall
    jmp 2b
"#,
    stop_call = const STOP_CALL,
    heartbeat = const control::HEARTBEAT,
    stop = const control::STOP,
    storm = const control::STORM,
    remaining = const control::REMAINING,
    target_count = const control::TARGET_COUNT,
    target_size = const control::TARGET_SIZE,
    targets = const control::TARGETS,
    confirm = const control::CONFIRM,
    apic_base = const control::APIC_BASE,
    icr_high = const control::ICR_HIGH,
    icr_low = const control::ICR_LOW,
    sent = const control::SENT,
    confirm_polls = const control::CONFIRM_POLLS,
    timeouts = const control::TIMEOUTS,
);

unsafe extern "C" {
    fn smp_guest_main();
}

/// The hypercall number of the AP guest's "stopped" VMCALL.
const STOP_CALL: u32 = 0x5354;

fn index() -> usize {
    percpu::current().index.load(Ordering::SeqCst) as usize
}

/// VMXON with this CPU's own region, then its own VMCS with the host state of this CPU (TR,
/// GS base) and the shared controls and EPT. Returns whether it worked (and prints why not).
pub fn enable_on_this_cpu() -> bool {
    let index = index();
    let Some(vmx) = context() else { return false };
    if let Err(reason) = vmx::enable_feature_control() {
        println!("HVKIT error: cpu {index}: {reason}");
        return false;
    }
    // SAFETY: CPL 0; CR4 adjusted to the VMX fixed bits (sets VMXE), as on the bootstrap
    // processor; every other bit as it was.
    unsafe { crate::cpu::write_cr4(|cr4| vmx.caps.cr4.adjust(cr4 | (1 << 13))) };
    let revision = vmx.caps.basic.revision_id();
    // SAFETY: region `index` belongs to this CPU alone (each CPU has its own index).
    let (vmxon, vmcs) = unsafe {
        let vmxon = core::ptr::addr_of_mut!(VMXON_REGIONS[index]);
        let vmcs = core::ptr::addr_of_mut!(VMCS_REGIONS[index]);
        vmxon.write(VmxonRegion::new(revision));
        vmcs.write(VmcsRegion::new(revision));
        (vmxon as u64, vmcs as u64)
    };
    // SAFETY: CR0/CR4 fixed bits hold (CR0 as on the bootstrap processor, which checked it),
    // feature control allows VMXON, the region is identity-mapped and this CPU's own.
    let Ok(mut root) = (unsafe { VmxRoot::enable(vmxon) }) else {
        println!("HVKIT error: cpu {index}: VMXON failed");
        return false;
    };
    // SAFETY: 1. a 4 KiB-aligned, identity-mapped VMCS region with this CPU's revision id;
    // 2. only this CPU uses it; 3. handed out once; 4. never current before.
    let region = unsafe { ClearVmcs::new(vmcs) };
    let mut vmcs = match root.adopt(region) {
        Ok(vmcs) => vmcs,
        Err(fail) => {
            println!("HVKIT error: cpu {index}: VMCLEAR: {fail}");
            return false;
        }
    };
    let setup = root.activate(&mut vmcs).and_then(|mut active| {
        vmx::setup_vmcs(
            &mut active,
            vmx,
            smp_guest_main as *const () as u64,
            guest_stack_top(index),
            crate::guest::idt(),
            EPTP.load(Ordering::SeqCst),
        )
    });
    if let Err(fail) = setup {
        println!("HVKIT error: cpu {index}: VMCS setup: {fail}");
        return false;
    }
    let vcpu = Vcpu {
        vmcs,
        registers: GuestRegisters::default(),
        queue: GuestEventQueue::new(),
        context: InjectionContext::from_capabilities(&vmx.caps, &vmx.controls, false),
        nmi_sources: hvkit_vmx_core::nmi_source::supported(hvkit_fred::config::cpuid_7_1_eax()),
        exit_options: hvkit_vmx_core::exit::ExitInfoOptions::from_capabilities(&vmx.caps),
    };
    // SAFETY: slot `index` is this CPU's.
    unsafe { *AP_VMX[index].0.get() = Some(ApVmx { root, vcpu }) };
    true
}

fn guest_stack_top(index: usize) -> u64 {
    // SAFETY: only the address is taken.
    (unsafe { core::ptr::addr_of!(GUEST_STACKS[index]) } as u64) + 4096 - 8
}

fn is_storm_vector(vector: u8) -> bool {
    (host::STORM_VECTOR_BASE..host::STORM_VECTOR_BASE + MAX_CPUS as u8).contains(&vector)
}

fn timer_or_ipi_handler(vector: u8) -> Option<IdtEntry> {
    match vector {
        // SAFETY: the host timer and test-IPI entries save every register they use, run on the
        // current stack (no IST) and end with IRETQ: the direct-call contract.
        host::TIMER_VECTOR => Some(unsafe { IdtEntry::from_address(host::timer_entry()) }),
        // SAFETY: as above.
        host::TEST_IPI_VECTOR => Some(unsafe { IdtEntry::from_address(host::ipi_entry()) }),
        vector if is_storm_vector(vector) => {
            // SAFETY: as above (the storm entry is built like the test-IPI entry).
            Some(unsafe { IdtEntry::from_address(host::storm_entry()) })
        }
        _ => None,
    }
}

type HandlerTable = fn(u8) -> Option<IdtEntry>;

/// The AP's strategies as one [`Redeliver`].
struct ApStrategy {
    current: Strategy,
    direct: IdtDirectCall<HandlerTable>,
    fred_direct: FredDirectCall,
    self_nmi: SelfNmi<'static, PollingApic<apic::ThisApicAnyMode>, ApUnblocker, fn()>,
}

impl Redeliver for ApStrategy {
    fn redeliver_nmi(&mut self) -> Result<(), RedeliveryError> {
        match self.current {
            Strategy::DirectCall => self.direct.redeliver_nmi(),
            Strategy::FredDirectCall => self.fred_direct.redeliver_nmi(),
            Strategy::SelfNmi | Strategy::FredSelfNmi => self.self_nmi.redeliver_nmi(),
        }
    }

    fn redeliver_irq(&mut self, vector: u8) -> Result<IrqDelivery, RedeliveryError> {
        match self.current {
            Strategy::DirectCall => self.direct.redeliver_irq(vector),
            Strategy::FredDirectCall => self.fred_direct.redeliver_irq(vector),
            Strategy::SelfNmi | Strategy::FredSelfNmi => self.self_nmi.redeliver_irq(vector),
        }
    }
}

/// The AP's part of exit handling (the exit sequence itself is `vcpu.rs`'s).
struct ApHandler {
    strategy: ApStrategy,
    cpu: &'static PerCpu,
    counts: &'static RunCounts,
    index: usize,
    stopped: bool,
}

impl ExitHandler for ApHandler {
    type Strategy = ApStrategy;

    fn strategy(&mut self) -> &mut ApStrategy {
        &mut self.strategy
    }

    fn settle(&mut self) -> bool {
        (0..100).any(|_| self.strategy.self_nmi.poll_in_flight().is_ok())
    }

    fn host_event(
        &mut self,
        outcome: Result<(HostEvent, Option<IrqDelivery>), HostEventError>,
        _exit_tsc: u64,
    ) {
        match outcome {
            Ok((HostEvent::AcknowledgedIrq(vector), Some(IrqDelivery::Requeued))) => {
                // The interrupt waits in the IRR again: let the host take it before re-entry.
                let counter = match vector {
                    host::TEST_IPI_VECTOR => &self.cpu.ipi_handled,
                    vector if is_storm_vector(vector) => {
                        let sender = usize::from(vector - host::STORM_VECTOR_BASE);
                        self.cpu.storm_handled.get(sender).unwrap_or(&self.cpu.timer_handled)
                    }
                    _ => &self.cpu.timer_handled,
                };
                let before = counter.load(Ordering::SeqCst);
                let taken = (0..100_000).any(|_| {
                    // SAFETY: the host IDT (or FRED entry) is set up; one-instruction
                    // interrupt window.
                    unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
                    counter.load(Ordering::SeqCst) != before
                });
                if !taken {
                    self.counts.requeue_timeouts.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(_) => {}
            Err(error) => {
                println!("HVKIT error: cpu {}: host event: {error}", self.index);
                self.counts.errors.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn handle(
        &mut self,
        guest: Guest<'_, '_>,
        info: &ExitInfo<'_>,
        _exit: &VmExit,
    ) -> Result<Resume, Fatal> {
        match info.reason.basic() {
            BasicExitReason::ExceptionOrNmi if info.interruption_info.is_nmi() => {
                self.counts.nmi_exits.fetch_add(1, Ordering::SeqCst);
            }
            BasicExitReason::ExternalInterrupt => {
                self.counts.irq_exits.fetch_add(1, Ordering::SeqCst);
            }
            BasicExitReason::Vmcall if guest.registers.rax as u32 == STOP_CALL => {
                self.stopped = true;
                return Err(Fatal::Vmm("the guest stopped"));
            }
            other => {
                println!(
                    "HVKIT error: cpu {}: unexpected exit {other:?} qualification={:#x}",
                    self.index, info.qualification
                );
                self.counts.other_exits.fetch_add(1, Ordering::SeqCst);
                return Err(Fatal::Vmm("unexpected exit"));
            }
        }
        Ok(Resume::default())
    }

    fn fixups(&mut self, _fixups: GuestFixups) {}

    fn entering(&mut self, _exit_tsc: u64) {}
}

/// Runs this AP's guest (from its first instruction) until its control block says stop;
/// re-delivers every host event with `strategy` and publishes the exit counts.
pub fn run_guest(strategy: Strategy) {
    let index = index();
    let cpu = percpu::current();
    let counts = &COUNTS[index];
    for counter in [
        &counts.nmi_exits,
        &counts.irq_exits,
        &counts.other_exits,
        &counts.errors,
        &counts.requeue_timeouts,
    ] {
        counter.store(0, Ordering::SeqCst);
    }
    // SAFETY: slot `index` is this CPU's.
    let Some(state) = (unsafe { &mut *AP_VMX[index].0.get() }) else {
        counts.errors.fetch_add(1, Ordering::SeqCst);
        return;
    };
    let control = &CONTROLS[index];
    let fresh = state.root.activate(&mut state.vcpu.vmcs).and_then(|mut active| {
        active.write(field::GUEST_RIP, smp_guest_main as *const () as u64)?;
        active.write(field::GUEST_RSP, guest_stack_top(index))?;
        active.write(field::GUEST_RFLAGS, 0x202)?;
        active.write(field::GUEST_INTERRUPTIBILITY_STATE, 0)
    });
    if fresh.is_err() {
        counts.errors.fetch_add(1, Ordering::SeqCst);
        return;
    }
    state.vcpu.registers =
        GuestRegisters { rdi: control as *const GuestControl as u64, ..GuestRegisters::default() };
    // SAFETY: the host NMI entry is a non-IST gate that preserves every register and ends with
    // IRETQ: the direct-call contract.
    let nmi_entry = unsafe { IdtEntry::from_address(host::nmi_entry()) };
    // SAFETY: re-delivery runs with interrupts disabled at CPL 0.
    let direct = unsafe { IdtDirectCall::new(nmi_entry, timer_or_ipi_handler as HandlerTable) };
    let sender = PollingApic { apic: apic::ThisApicAnyMode, max_polls: apic::MAX_POLLS };
    let red_zone = u64::from(crate::fred_host::FRED_RED_ZONE_UNITS) * 64;
    // SAFETY: used only with the FRED strategies, which run only after `set_fred_host(true)`
    // on this CPU (CR4.FRED = 1, CPL 0, this red zone in IA32_FRED_CONFIG); the dispatcher
    // leaves RIP/RSP/CS/SS alone.
    let fred_direct = unsafe { FredDirectCall::new(crate::fred_host::fred_dispatcher(), red_zone) };
    let unblocker = match strategy {
        Strategy::FredDirectCall | Strategy::FredSelfNmi => {
            // SAFETY: FRED host (as above), interrupts disabled, host NMI handler installed.
            ApUnblocker::Erets(unsafe { FredEretsToSelf::new(red_zone) })
        }
        Strategy::DirectCall | Strategy::SelfNmi => {
            // SAFETY: IDT host, interrupts disabled, host NMI handler installed.
            ApUnblocker::Iret(unsafe { IretToSelf::new() })
        }
    };
    let spin: fn() = core::hint::spin_loop;
    let self_nmi = SelfNmi::new(sender, unblocker, spin, &cpu.nmi_handled, 10_000_000);
    let mut handler = ApHandler {
        strategy: ApStrategy { current: strategy, direct, fred_direct, self_nmi },
        cpu,
        counts,
        index,
        stopped: false,
    };
    let stop = state.vcpu.run(&mut state.root, &mut handler);
    if !handler.stopped {
        println!("HVKIT error: cpu {index}: the vCPU stopped: {stop}");
        counts.errors.fetch_add(1, Ordering::SeqCst);
    }
    control.running.store(0, Ordering::SeqCst);
}

/// One guest-side result line (same fields as the other scenario lines, plus the target CPU,
/// the strategy's merges and the exits by reason).
struct GuestLine {
    name: &'static str,
    strategy: Strategy,
    target: usize,
    sent: u64,
    exits: u64,
    handled: u64,
    eois: u64,
    /// NMIs that the merge rules (module docs) allow to be one with another.
    merged: u64,
    pass: bool,
}

fn report(line: GuestLine) {
    let lost = line.sent.saturating_sub(line.handled + line.merged);
    let duplicated = (line.handled + line.merged).saturating_sub(line.sent);
    let pass = line.pass && lost == 0 && duplicated == 0;
    let target_apic = percpu::cpu(line.target).map_or(0, |cpu| cpu.apic_id.load(Ordering::SeqCst));
    println!(
        "HVKIT SCENARIO name={} strategy={} apic={} cpu=0 target={} target_apic_id={target_apic} target_in_guest=1 sent={} exits={} handled={} eois={} merged={} lost={lost} duplicated={duplicated} insns_per_event=0 result={}",
        line.name,
        line.strategy.name(),
        apic::mode_name(),
        line.target,
        line.sent,
        line.exits,
        line.handled,
        line.eois,
        line.merged,
        if pass { "PASS" } else { "FAIL" }
    );
    crate::report::tally(pass, lost, duplicated);
}

/// A guest run on CPU `target`, stopped and waited for by [`Run::finish`].
struct Run {
    target: usize,
    done: u32,
}

impl Run {
    /// Starts the guest on `target` and waits until it runs.
    fn start(target: usize, strategy: Strategy) -> Option<Self> {
        let control = CONTROLS.get(target)?;
        control.stop.store(0, Ordering::SeqCst);
        control.running.store(0, Ordering::SeqCst);
        let done = smp::start_on(target, strategy.command())?;
        let running = (0..100_000_000u32).any(|_| control.running.load(Ordering::SeqCst) != 0);
        if !running {
            println!("HVKIT error: cpu {target}: guest did not start");
            return None;
        }
        Some(Self { target, done })
    }

    /// Tells the guest to stop and waits for the AP's exit loop to return.
    fn finish(self) -> bool {
        if let Some(control) = CONTROLS.get(self.target) {
            control.stop.store(1, Ordering::SeqCst);
        }
        smp::wait_done(self.target, self.done, 200_000_000)
    }
}

fn wait_above(counter: &AtomicU64, before: u64) -> bool {
    (0..50_000_000u32).any(|_| counter.load(Ordering::SeqCst) > before)
}

/// Waits until `target`'s guest runs again (its loop count moved twice: one move may be a
/// store that was under way when the exit happened).
fn wait_in_guest(target: usize) -> bool {
    let Some(control) = CONTROLS.get(target) else { return false };
    let before = control.heartbeat.load(Ordering::SeqCst);
    wait_above(&control.heartbeat, before + 1)
}

/// NMIs per cross-CPU scenario.
const CROSS_NMIS: u64 = 50;
/// Fixed IPIs per cross-CPU scenario.
const CROSS_IPIS: u64 = 50;
/// NMIs sent while the target's handler runs (pending-nmi).
const PENDING_NMIS: u64 = 10;

fn nmi_to(target: usize) -> Option<Ipi> {
    let cpu = percpu::cpu(target)?;
    Some(Ipi::nmi(Target::To(Destination::Physical(cpu.apic_id.load(Ordering::SeqCst)))))
}

/// CPU 0 sends NMIs to `target` in its guest, each confirmed by the target's handler count
/// before the next; every one must exit (none reaches the guest) and be handled once.
fn cross_nmi(target: usize, strategy: Strategy) {
    let (Some(cpu), Some(ipi)) = (percpu::cpu(target), nmi_to(target)) else { return };
    let Some(run) = Run::start(target, strategy) else { return };
    let handled0 = cpu.nmi_handled.load(Ordering::SeqCst);
    let mut sent = 0;
    for _ in 0..CROSS_NMIS {
        let before = cpu.nmi_handled.load(Ordering::SeqCst);
        if !wait_in_guest(target) || apic::send(&ipi).is_err() {
            break;
        }
        sent += 1;
        if !wait_above(&cpu.nmi_handled, before) {
            break;
        }
    }
    let finished = run.finish();
    let counts = &COUNTS[target];
    let exits = counts.nmi_exits.load(Ordering::SeqCst);
    report(GuestLine {
        name: "guest-cross-nmi",
        strategy,
        target,
        sent,
        exits,
        handled: cpu.nmi_handled.load(Ordering::SeqCst) - handled0,
        eois: 0,
        merged: 0,
        pass: finished
            && sent == CROSS_NMIS
            && exits == sent
            && counts.errors.load(Ordering::SeqCst) == 0,
    });
}

/// Two NMIs sent back to back to `target` in its guest. The first exits; the second arrives
/// while NMIs are blocked (after the exit, or in the handler) and is held pending, so the
/// handler runs twice. With self-NMI, a re-sent NMI and the held one can be one NMI: the
/// handler then runs once for both and the line says `merged=1`.
fn multiple_nmi(target: usize, strategy: Strategy) {
    let (Some(cpu), Some(ipi)) = (percpu::cpu(target), nmi_to(target)) else { return };
    let Some(run) = Run::start(target, strategy) else { return };
    let handled0 = cpu.nmi_handled.load(Ordering::SeqCst);
    let sent = (0..2).filter(|_| apic::send(&ipi).is_ok()).count() as u64;
    // Let both settle: the first one's handler, then the pending one's.
    let _ = wait_above(&cpu.nmi_handled, handled0 + 1);
    let finished = run.finish();
    let handled = cpu.nmi_handled.load(Ordering::SeqCst) - handled0;
    let counts = &COUNTS[target];
    let exits = counts.nmi_exits.load(Ordering::SeqCst);
    // One self-NMI per exit can merge with one held NMI.
    let merged = if strategy.can_merge() { sent.saturating_sub(handled).min(exits) } else { 0 };
    report(GuestLine {
        name: "multiple-nmi",
        strategy,
        target,
        sent,
        exits,
        handled,
        eois: 0,
        merged,
        pass: finished && sent == 2 && exits >= 1 && counts.errors.load(Ordering::SeqCst) == 0,
    });
}

/// One NMI to `target` in its guest, whose host handler is then held; ten more NMIs while it
/// runs (NMIs blocked: they merge into one pending NMI); release: exactly one more handler run.
fn pending_nmi(target: usize, strategy: Strategy) {
    let (Some(cpu), Some(ipi)) = (percpu::cpu(target), nmi_to(target)) else { return };
    let Some(run) = Run::start(target, strategy) else { return };
    let handled0 = cpu.nmi_handled.load(Ordering::SeqCst);
    cpu.nmi_hold.store(1, Ordering::SeqCst);
    let mut sent = u64::from(apic::send(&ipi).is_ok());
    let held = (0..50_000_000u32).any(|_| cpu.nmi_held.load(Ordering::SeqCst) != 0);
    if held {
        sent += (0..PENDING_NMIS).filter(|_| apic::send(&ipi).is_ok()).count() as u64;
    }
    cpu.nmi_hold.store(0, Ordering::SeqCst);
    let _ = wait_above(&cpu.nmi_handled, handled0 + 1);
    let finished = run.finish();
    let handled = cpu.nmi_handled.load(Ordering::SeqCst) - handled0;
    let counts = &COUNTS[target];
    // The ten sent while the handler ran are one pending NMI: nine merge (architectural).
    let merged = sent.saturating_sub(2);
    report(GuestLine {
        name: "pending-nmi",
        strategy,
        target,
        sent,
        exits: counts.nmi_exits.load(Ordering::SeqCst),
        handled,
        eois: 0,
        merged,
        pass: finished
            && held
            && sent == 1 + PENDING_NMIS
            && handled == 2
            && counts.errors.load(Ordering::SeqCst) == 0,
    });
}

/// Fixed IPIs to `target` in its guest: each exits (acknowledged on exit), is re-delivered
/// once (direct call: one EOI, by the handler; self-NMI strategy: re-queued as a self-IPI
/// after an EOI for the acknowledged copy, then handled with its own EOI), and the target's
/// ISR and IRR are clean at the end. Edge-triggered only (a level-triggered vector cannot be
/// re-queued: the EOI would drop the level); the vector's priority class (5) is above the
/// timer's, and nothing else is pending on the target.
fn cross_ipi(target: usize, strategy: Strategy) {
    let Some(cpu) = percpu::cpu(target) else { return };
    let destination = Destination::Physical(cpu.apic_id.load(Ordering::SeqCst));
    let Ok(ipi) = Ipi::fixed(host::TEST_IPI_VECTOR, FixedTarget::To(destination)) else { return };
    let Some(run) = Run::start(target, strategy) else { return };
    let (handled0, eois0, not_in_service0) = (
        cpu.ipi_handled.load(Ordering::SeqCst),
        cpu.ipi_eois.load(Ordering::SeqCst),
        cpu.ipi_not_in_service.load(Ordering::SeqCst),
    );
    let mut sent = 0;
    for _ in 0..CROSS_IPIS {
        let before = cpu.ipi_eois.load(Ordering::SeqCst);
        if !wait_in_guest(target) || apic::send(&ipi).is_err() {
            break;
        }
        sent += 1;
        if !wait_above(&cpu.ipi_eois, before) {
            break;
        }
    }
    let finished = run.finish();
    let clean = smp::run_on(target, smp::command::CHECK_CLEAN)
        && cpu.last_result.load(Ordering::SeqCst) == 1;
    let counts = &COUNTS[target];
    let exits = counts.irq_exits.load(Ordering::SeqCst);
    let handled = cpu.ipi_handled.load(Ordering::SeqCst) - handled0;
    let eois = cpu.ipi_eois.load(Ordering::SeqCst) - eois0;
    report(GuestLine {
        name: "guest-cross-ipi",
        strategy,
        target,
        sent,
        exits,
        handled,
        eois,
        merged: 0,
        pass: finished
            && clean
            && sent == CROSS_IPIS
            && exits == sent
            && eois == handled
            && cpu.ipi_not_in_service.load(Ordering::SeqCst) == not_in_service0
            && counts.requeue_timeouts.load(Ordering::SeqCst) == 0
            && counts.errors.load(Ordering::SeqCst) == 0,
    });
}

/// Events each CPU sends per strategy in the storm.
const STORM_EVENTS: u64 = 10_000;

/// Polls a storm sender makes of the target's counter before its IPI counts as timed out.
const STORM_CONFIRM_POLLS: u64 = 2_000_000;

/// Waits until `counter` moves away from `before`, opening one-instruction interrupt windows
/// meanwhile (so that this CPU takes the storm IPIs sent to it).
fn wait_with_windows(counter: &AtomicU64, before: u64) -> bool {
    (0..5_000_000u32).any(|_| {
        // SAFETY: the host IDT (or FRED) handlers are set up; interrupts are off again after.
        unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
        counter.load(Ordering::SeqCst) != before
    })
}

/// Everything CPU `index` has handled so far (NMIs, test IPIs, storm IPIs).
fn handled_total(index: usize) -> u64 {
    percpu::cpu(index).map_or(0, |cpu| {
        cpu.nmi_handled.load(Ordering::SeqCst)
            + cpu.ipi_handled.load(Ordering::SeqCst)
            + cpu.storm_handled.iter().map(|count| count.load(Ordering::SeqCst)).sum::<u64>()
    })
}

/// The storm: every AP runs its guest, which sends fixed IPIs (its own vector) to every other
/// CPU in turn through the xAPIC ICR, each confirmed by the target's count before the next;
/// CPU 0 sends NMIs and test IPIs to every AP in turn, each confirmed before the next, and
/// takes the guests' IPIs in interrupt windows. Until every CPU has sent [`STORM_EVENTS`].
///
/// Each guest stops sending at its quota of [`STORM_EVENTS`]. Without the quota, a guest whose
/// next IPI reaches CPU 0 before CPU 0's handler has returned (the guest sends as soon as the
/// handler's count moves, before its EOI) keeps CPU 0 in one interrupt window for good: every
/// return (IRET, or ERETS on a FRED host) finds the next IPI pending and takes it before the
/// window's CLI (neither return opens an interrupt shadow, SDM Vol. 3A 7.8.3 "Masking
/// Exceptions and Interrupts When Switching Stacks" names only MOV SS/POP SS and STI), so CPU 0
/// never got back to stop the guests. The FRED host's longer handler path made that happen
/// every time under the upstream Bochs with FRED.
///
/// Exact account (nothing may merge here): fixed IPIs merge only in one IRR bit, and each
/// sender has its own vector with at most one IPI in flight; NMIs merge only when two are
/// held while NMIs are blocked, and each AP gets NMIs from CPU 0 alone, one in flight. So every
/// CPU's handled count must equal what was sent to it (`merged=0`).
fn storm(targets: &[bool; MAX_CPUS], strategy: Strategy) {
    let apic_base = apic::base_address();
    let online = |index: usize| index == 0 || targets.get(index).copied().unwrap_or(false);
    for sender in (1..MAX_CPUS).filter(|&index| online(index)) {
        let control = &CONTROLS[sender];
        control.storm.store(0, Ordering::SeqCst);
        control.remaining.store(STORM_EVENTS, Ordering::SeqCst);
        control.timeouts.store(0, Ordering::SeqCst);
        control.apic_base.store(apic_base, Ordering::SeqCst);
        control.confirm_polls.store(STORM_CONFIRM_POLLS, Ordering::SeqCst);
        let mut count = 0;
        for target in (0..MAX_CPUS).filter(|&index| index != sender && online(index)) {
            let (Some(cpu), Some(entry)) = (percpu::cpu(target), control.targets.get(count)) else {
                continue;
            };
            let Some(confirm) = cpu.storm_handled.get(sender) else { continue };
            let apic_id = cpu.apic_id.load(Ordering::SeqCst);
            let vector = host::STORM_VECTOR_BASE + sender as u8;
            let Ok(icr) = Ipi::fixed(vector, FixedTarget::To(Destination::Physical(apic_id)))
                .and_then(|ipi| ipi.encode(hvkit_apic::Mode::XApic))
            else {
                continue;
            };
            entry.icr_high.store(icr >> 32, Ordering::SeqCst);
            entry.icr_low.store(icr & 0xFFFF_FFFF, Ordering::SeqCst);
            entry.confirm.store(confirm as *const AtomicU64 as u64, Ordering::SeqCst);
            entry.sent.store(0, Ordering::SeqCst);
            count += 1;
        }
        control.target_count.store(count as u64, Ordering::SeqCst);
    }
    let mut handled0 = [0u64; MAX_CPUS];
    for (index, slot) in handled0.iter_mut().enumerate() {
        *slot = handled_total(index);
    }
    let not_in_service0: u64 = (0..MAX_CPUS)
        .filter_map(percpu::cpu)
        .map(|cpu| cpu.ipi_not_in_service.load(Ordering::SeqCst))
        .sum();
    let mut runs: [Option<Run>; MAX_CPUS] = [const { None }; MAX_CPUS];
    for (index, run) in runs.iter_mut().enumerate().skip(1).filter(|(index, _)| online(*index)) {
        *run = Run::start(index, strategy);
        if run.is_none() {
            return;
        }
    }
    for index in (1..MAX_CPUS).filter(|&index| online(index)) {
        CONTROLS[index].storm.store(1, Ordering::SeqCst);
    }
    let mut sent_to = [0u64; MAX_CPUS];
    let mut cpu0_sent = 0u64;
    let mut failures = 0u64;
    let guests_sent = |index: usize| -> u64 {
        CONTROLS[index].targets.iter().map(|entry| entry.sent.load(Ordering::SeqCst)).sum()
    };
    for _round in 0..3 * STORM_EVENTS {
        let guests_done = (1..MAX_CPUS)
            .filter(|&index| online(index))
            .all(|index| guests_sent(index) >= STORM_EVENTS);
        if cpu0_sent >= STORM_EVENTS && guests_done {
            break;
        }
        if cpu0_sent >= STORM_EVENTS {
            // CPU 0 has sent its share: only take the guests' IPIs until they have too.
            for _ in 0..1000 {
                // SAFETY: as in `wait_with_windows`.
                unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
            }
            continue;
        }
        for target in (1..MAX_CPUS).filter(|&index| online(index)) {
            let (Some(cpu), Some(nmi)) = (percpu::cpu(target), nmi_to(target)) else { continue };
            let destination = Destination::Physical(cpu.apic_id.load(Ordering::SeqCst));
            let Ok(fixed) = Ipi::fixed(host::TEST_IPI_VECTOR, FixedTarget::To(destination)) else {
                continue;
            };
            for (ipi, counter) in [(nmi, &cpu.nmi_handled), (fixed, &cpu.ipi_eois)] {
                let before = counter.load(Ordering::SeqCst);
                if apic::send(&ipi).is_err() {
                    failures += 1;
                    continue;
                }
                cpu0_sent += 1;
                if let Some(slot) = sent_to.get_mut(target) {
                    *slot += 1;
                }
                if !wait_with_windows(counter, before) {
                    failures += 1;
                }
            }
        }
    }
    for index in (1..MAX_CPUS).filter(|&index| online(index)) {
        CONTROLS[index].storm.store(0, Ordering::SeqCst);
    }
    // The guests finish their last confirmation wait; CPU 0 takes what is sent to it.
    for _ in 0..200_000 {
        // SAFETY: as in `wait_with_windows`.
        unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
    }
    let mut finished = true;
    for run in runs.iter_mut() {
        if let Some(run) = run.take() {
            finished &= run.finish();
        }
    }
    for _ in 0..1000 {
        // SAFETY: as above.
        unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
    }
    // What each guest sent to each target.
    let mut timeouts = 0;
    for sender in (1..MAX_CPUS).filter(|&index| online(index)) {
        let control = &CONTROLS[sender];
        timeouts += control.timeouts.load(Ordering::SeqCst);
        for entry in
            control.targets.iter().take(control.target_count.load(Ordering::SeqCst) as usize)
        {
            let confirm = entry.confirm.load(Ordering::SeqCst);
            if let Some(target) = (0..MAX_CPUS).find(|&target| {
                percpu::cpu(target)
                    .and_then(|cpu| cpu.storm_handled.get(sender))
                    .is_some_and(|counter| counter as *const AtomicU64 as u64 == confirm)
            }) && let Some(slot) = sent_to.get_mut(target)
            {
                *slot += entry.sent.load(Ordering::SeqCst);
            }
        }
    }
    let not_in_service: u64 = (0..MAX_CPUS)
        .filter_map(percpu::cpu)
        .map(|cpu| cpu.ipi_not_in_service.load(Ordering::SeqCst))
        .sum::<u64>()
        - not_in_service0;
    for index in (0..MAX_CPUS).filter(|&index| online(index)) {
        let handled = handled_total(index) - handled0.get(index).copied().unwrap_or(0);
        let sent_by = if index == 0 { cpu0_sent } else { guests_sent(index) };
        let counts = &COUNTS[index];
        let exits = if index == 0 {
            0
        } else {
            counts.nmi_exits.load(Ordering::SeqCst) + counts.irq_exits.load(Ordering::SeqCst)
        };
        let errors = if index == 0 { 0 } else { counts.errors.load(Ordering::SeqCst) };
        let sent = sent_to.get(index).copied().unwrap_or(0);
        let lost = sent.saturating_sub(handled);
        let duplicated = handled.saturating_sub(sent);
        let pass = finished
            && lost == 0
            && duplicated == 0
            && sent_by >= STORM_EVENTS
            && failures == 0
            && timeouts == 0
            && not_in_service == 0
            && errors == 0;
        println!(
            "HVKIT SCENARIO name=storm-smp strategy={} apic={} cpu={index} target={index} in_guest={} sent_by_cpu={sent_by} sent={sent} exits={exits} handled={handled} eois=0 merged=0 lost={lost} duplicated={duplicated} insns_per_event=0 timeouts={timeouts} send_failures={failures} result={}",
            strategy.name(),
            apic::mode_name(),
            u32::from(index != 0),
            if pass { "PASS" } else { "FAIL" }
        );
        crate::report::tally(pass, lost, duplicated);
    }
}

/// Puts every AP in VMX operation and runs the guest scenarios against each (CPU 0 sends from
/// its host; the target is in its guest). Call on the bootstrap processor in xAPIC mode.
///
/// Never inlined: it runs once, and inlined into `kernel_main` (which also inlines the
/// bootstrap processor's exit loop) it changed that loop's register allocation (`cargo xtask
/// bench`, corei7_skylake_x: CPUID/VMCALL exit -> entry 191 instead of 190).
#[inline(never)]
pub fn run() {
    if context().is_none() {
        return;
    }
    let mut targets = [false; MAX_CPUS];
    for (index, slot) in targets.iter_mut().enumerate().skip(1) {
        if percpu::cpu(index).is_some_and(|cpu| cpu.online.load(Ordering::SeqCst)) {
            let ok = smp::run_on(index, smp::command::VMX_ON)
                && percpu::cpu(index)
                    .is_some_and(|cpu| cpu.last_result.load(Ordering::SeqCst) == 1);
            println!("HVKIT cpu-vmx index={index} vmxon={}", u32::from(ok));
            *slot = ok;
        }
    }
    if !targets.iter().any(|&target| target) {
        crate::report::skip(
            "smp-guest",
            "no application processor in VMX operation (one CPU, or VMXON failed on the APs)",
        );
        return;
    }
    guest_scenarios(&targets, [Strategy::DirectCall, Strategy::SelfNmi]);
    run_fred(&targets);
    // SAFETY: only the bootstrap processor writes it, before the APs' guests run again.
    unsafe { *TARGETS.0.get() = targets };
}

/// The guest scenarios against every AP in `targets` with both `strategies`, then the storm
/// with each.
fn guest_scenarios(targets: &[bool; MAX_CPUS], strategies: [Strategy; 2]) {
    for (target, _) in targets.iter().enumerate().filter(|(_, ok)| **ok) {
        for strategy in strategies {
            cross_nmi(target, strategy);
            multiple_nmi(target, strategy);
            pending_nmi(target, strategy);
            cross_ipi(target, strategy);
        }
    }
    for strategy in strategies {
        storm(targets, strategy);
    }
}

/// Why the APs' hosts cannot switch to FRED, if they cannot.
fn fred_unavailable(vmx: &vmx::Vmx) -> Option<&'static str> {
    if !hvkit_fred::config::fred_supported(hvkit_fred::config::cpuid_7_1_eax()) {
        Some("CPU has no FRED (CPUID.(7,1):EAX[17]=0)")
    } else if vmx.caps.cr4.fixed1 & hvkit_fred::config::CR4_FRED == 0 {
        Some("IA32_VMX_CR4_FIXED1 does not allow CR4.FRED in VMX operation")
    } else {
        None
    }
}

/// The guest scenarios and the storm again with every AP's host in FRED mode (its own FRED
/// stack, CR4.FRED in its VMCS host state), re-delivering with the FRED strategies; the APs
/// switch back to the IDT afterwards. CPU 0's host stays as it is (IDT at this point).
fn run_fred(targets: &[bool; MAX_CPUS]) {
    let Some(vmx) = context() else { return };
    if let Some(reason) = fred_unavailable(vmx) {
        crate::report::skip("smp-guest-fred", reason);
        return;
    }
    let mut fred_targets = [false; MAX_CPUS];
    for (index, slot) in fred_targets.iter_mut().enumerate() {
        if targets.get(index).copied().unwrap_or(false) {
            let ok = smp::run_on(index, smp::command::FRED_ON)
                && percpu::cpu(index)
                    .is_some_and(|cpu| cpu.last_result.load(Ordering::SeqCst) == 1);
            println!("HVKIT cpu-fred index={index} fred_host={}", u32::from(ok));
            *slot = ok;
        }
    }
    if fred_targets.iter().any(|&target| target) {
        guest_scenarios(&fred_targets, [Strategy::FredDirectCall, Strategy::FredSelfNmi]);
    } else {
        crate::report::skip("smp-guest-fred", "no application processor switched to FRED");
    }
    for (index, _) in fred_targets.iter().enumerate().filter(|(_, ok)| **ok) {
        if !smp::run_on(index, smp::command::FRED_OFF) {
            println!("HVKIT error: cpu {index}: back to the IDT");
        }
    }
}

/// On an AP: switches its host to FRED event delivery (`on`) or back to the IDT, and writes the
/// new CR4 into its VMCS's host CR4 (a VM exit loads CR4 from it, SDM Vol. 3C 28.5.1 "Loading
/// Host Control Registers, Debug Registers, MSRs"), with the host FRED fields when the VMCS
/// FRED controls are in use. Returns whether it worked.
pub fn set_fred_host(on: bool) -> bool {
    let index = index();
    let Some(vmx) = context() else { return false };
    // SAFETY: slot `index` is this CPU's.
    let Some(state) = (unsafe { &mut *AP_VMX[index].0.get() }) else { return false };
    let cr4 = if on {
        match crate::fred_host::enable_fred() {
            Ok(cr4) => cr4,
            Err(error) => {
                println!("HVKIT error: cpu {index}: FRED configuration: {error}");
                return false;
            }
        }
    } else {
        crate::fred_host::disable_fred()
    };
    let written = state.root.activate(&mut state.vcpu.vmcs).and_then(|mut active| {
        active.write(field::HOST_CR4, cr4)?;
        if on { vmx::refresh_host_fred(&mut active, vmx) } else { Ok(()) }
    });
    if let Err(fail) = written {
        println!("HVKIT error: cpu {index}: host CR4: {fail}");
        return false;
    }
    true
}

/// The APs in VMX operation (set by [`run`]), for [`run_x2apic`].
struct Targets(core::cell::UnsafeCell<[bool; MAX_CPUS]>);

// SAFETY: written and read only by the bootstrap processor.
unsafe impl Sync for Targets {}

static TARGETS: Targets = Targets(core::cell::UnsafeCell::new([false; MAX_CPUS]));

/// The guest scenarios again with every CPU in x2APIC mode (after `hostside::run_x2apic`
/// switched them): CPU 0 sends through the x2APIC ICR, the targets' self-NMI strategy sends
/// through theirs. The storm stays in xAPIC mode (its guests write the xAPIC ICR page).
pub fn run_x2apic() {
    // SAFETY: see `TARGETS`.
    let targets = unsafe { *TARGETS.0.get() };
    if context().is_none() || !percpu::current().x2apic.load(Ordering::SeqCst) {
        return;
    }
    for (target, _) in targets.iter().enumerate().filter(|(_, ok)| **ok) {
        for strategy in [Strategy::DirectCall, Strategy::SelfNmi] {
            cross_nmi(target, strategy);
            multiple_nmi(target, strategy);
            pending_nmi(target, strategy);
            cross_ipi(target, strategy);
        }
    }
}
