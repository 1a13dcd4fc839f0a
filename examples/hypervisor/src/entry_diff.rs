//! Differential check of the VM-entry rules on event injection and guest interruptibility:
//! thousands of VM entries are attempted on the CPU (or emulator) this image runs on, and each
//! result is compared with hvkit's verdict for the same fields
//! (`hvkit_vmx_core::entry_check::check`).
//!
//! The rules under test (Intel SDM Vol. 3C):
//! - 26.2.1.1: "virtual NMIs" needs "NMI exiting"; "NMI-window exiting" needs "virtual NMIs";
//!   a control may be 1 only where its capability MSR allows it.
//! - 26.2.1.3: the VM-entry interruption-information field, error code and instruction length.
//! - 26.3.1.4 / 26.3.1.5: RFLAGS.IF, the interruptibility state and the activity state against
//!   the injected event.
//!
//! All cases run on one VMCS of this module's own, set up once with the example's complete,
//! known-good guest and host state; before each case every field a case or a VM exit changes is
//! written back, then the case's fields. VMLAUNCH is used until an entry is accepted (a failed
//! entry leaves the launch state clear), VMRESUME after that. A guest that enters must
//! come straight back: the exception bitmap is all ones and the guest IDT limit is 0, so the
//! delivery of any injected event raises #GP, which exits with the injected event in the
//! IDT-vectoring information (compared too). Without injection, the VMX-preemption timer with
//! value 0 exits before the first instruction (SDM 26.5.1), in the active, HLT and shutdown
//! states alike.
//!
//! CPU results: accepted (any VM exit without bit 31), VMfailValid with error 7 (invalid
//! control fields), or exit reason 33 with bit 31 (invalid guest state). hvkit's verdict is
//! classed the same way: a rule of SDM 26.2 is a control-field failure; a rule of 26.3 is a
//! guest-state failure unless a 26.2 rule also fails (the CPU checks the controls first), which
//! a second call with a neutral guest state finds out.
//!
//! Disagreements that are known deviations of an emulator from the SDM text are listed in
//! [`DEVIATIONS`] and counted as explained; every other disagreement fails the scenario.
//! Combinations that cannot be run are skipped and counted with their reason ([`Skip`]).

use crate::memory::HwCell;
use crate::println;
use crate::report::{Extra, Line, report};
use crate::vmx::Vmx;
use hvkit_nmi_reinject::{InjectionContext, NmiUnblocker as _};
use hvkit_vmx_core::VmFail;
use hvkit_vmx_core::controls::{
    AllowedControls, PinBasedControls, PrimaryControls, SecondaryControls,
};
use hvkit_vmx_core::entry_check::{
    self, EntryCapabilities, EntryEvent, EntryRule, EventControls, GuestEventState,
};
use hvkit_vmx_core::event::{ActivityState, GuestInterruptibility, InterruptionInfo};
use hvkit_vmx_core::field;
use hvkit_vmx_core::region::VmcsRegion;
use hvkit_vmx_core::vmcs::{
    ActiveVmcs, ClearVmcs, EntryExitHooks, GuestRegisters, Vmcs, VmcsAccess, VmxRoot,
};

static DIFF_VMCS: HwCell<VmcsRegion> = HwCell::new(VmcsRegion::new(0));

core::arch::global_asm!(
    r#"
    .section .text
    .balign 16
    .global hvkit_entry_diff_guest
hvkit_entry_diff_guest:
    vmcall
    hlt
    jmp hvkit_entry_diff_guest

    .balign 16
    .global hvkit_entry_diff_iret
hvkit_entry_diff_iret:
    mov rax, rsp
    push 0x10
    push rax
    pushfq
    push 0x08
    lea rax, [rip + 1f]
    push rax
    iretq
1:
    vmcall
    hlt
    jmp 1b
"#
);

unsafe extern "C" {
    fn hvkit_entry_diff_guest();
    fn hvkit_entry_diff_iret();
}

/// Printed disagreement lines before the rest are only counted by group.
const DIFF_LINES: u32 = 100;
/// Distinct (hvkit verdict, CPU result) groups of disagreements kept for the summary.
const GROUPS: usize = 32;

/// Interruption information bits (SDM Table 25-17).
const VALID: u32 = 1 << 31;
const DELIVER_ERROR_CODE: u32 = 1 << 11;

const fn event(kind: u32, vector: u32) -> u32 {
    VALID | (kind << 8) | vector
}

/// How the guest's CR0.PE and the "unrestricted guest" control are set.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// CR0.PE = 1, unrestricted guest off (the example's guest).
    Protected,
    /// CR0.PE = 1, unrestricted guest on.
    ProtectedUnrestricted,
    /// CR0.PE = 0 and CR0.PG = 0, unrestricted guest on, IA-32e mode guest off.
    RealUnrestricted,
}

/// One attempted VM entry.
#[derive(Clone, Copy, Debug)]
struct Case {
    info: u32,
    error_code: u32,
    length: u32,
    interruptibility: u32,
    activity: u32,
    rflags_if: bool,
    mode: Mode,
    nmi_exiting: bool,
    virtual_nmis: bool,
    nmi_window: bool,
    interrupt_window: bool,
}

impl Case {
    const NEUTRAL: Self = Self {
        info: 0,
        error_code: 0,
        length: 0,
        interruptibility: 0,
        activity: 0,
        rflags_if: true,
        mode: Mode::Protected,
        nmi_exiting: true,
        virtual_nmis: true,
        nmi_window: false,
        interrupt_window: false,
    };

    fn injects(&self) -> bool {
        self.info & VALID != 0
    }

    fn kind(&self) -> u32 {
        (self.info >> 8) & 7
    }

    fn vector(&self) -> u32 {
        self.info & 0xFF
    }
}

/// What hvkit says about a case.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Verdict {
    Accept,
    /// A rule of SDM 26.2: VMfailValid with error 7 expected.
    Control(EntryRule),
    /// A rule of SDM 26.3: exit reason 33 with bit 31 expected.
    Guest(EntryRule),
    /// A control-consistency rule of SDM 26.2.1.1 that hvkit checks outside the entry
    /// validator: VMfailValid with error 7 expected.
    Controls(&'static str),
}

/// What the CPU did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    /// A VM exit without bit 31: the entry was accepted.
    Entered { reason: u32, vectoring: u32, vectoring_error: u32 },
    /// VMfailValid with error 7.
    ControlFail,
    /// Exit reason 33 with bit 31 (invalid guest state), with the exit qualification.
    GuestFail { qualification: u64 },
    /// Any other VM-entry failure (VMfailInvalid is `u32::MAX`, else the VM-instruction error,
    /// or the full exit reason of another entry-failure exit).
    Other { code: u32 },
    /// The harness could not prepare the VMCS (VMCLEAR/VMPTRLD/VMWRITE failed).
    Harness,
}

impl Outcome {
    fn matches(self, verdict: Verdict) -> bool {
        matches!(
            (self, verdict),
            (Self::Entered { .. }, Verdict::Accept)
                | (Self::ControlFail, Verdict::Control(_) | Verdict::Controls(_))
                | (Self::GuestFail { .. }, Verdict::Guest(_))
        )
    }
}

/// Where the image runs: some deviations are known only for one emulator.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Platform {
    /// Bochs (ACPI RSDP OEM "BOCHS " and no hypervisor CPUID bit).
    Bochs,
    /// Hardware, or a hypervisor with nested VMX.
    Other,
}

/// What the processor offers, read once.
#[derive(Clone, Copy)]
struct Setup<'a> {
    vmx: &'a Vmx,
    caps: EntryCapabilities,
    preemption_timer: bool,
    unrestricted_guest: bool,
    mtf: bool,
    sgx: bool,
    platform: Platform,
    guest_rip: u64,
    guest_rsp: u64,
    guest_idt: u64,
    eptp: u64,
    /// Guest CR0 as the example's state has it (read back after the set-up).
    base_cr0: u64,
}

/// A known deviation of an emulator from the SDM text: the disagreement is explained, not an
/// agreement.
struct Deviation {
    name: &'static str,
    /// The platform the deviation is known on; `None`: any (a choice the SDM leaves open).
    platform: Option<Platform>,
    /// The SDM text the emulator departs from, and what the emulator does instead.
    reason: &'static str,
    applies: fn(&Case, Verdict, Outcome, &Setup<'_>) -> bool,
}

/// Known emulator deviations, each decided by the SDM text.
const DEVIATIONS: &[Deviation] = &[
    Deviation {
        name: "bochs27-hlt-injection",
        platform: Some(Platform::Bochs),
        reason: "SDM 26.3.1.5: in the HLT state only external interrupts, NMIs, #DB, #MC and MTF may be injected; Bochs 2.7 (VMenterLoadCheckGuestState) has no HLT check and delivers any event",
        applies: |_, verdict, outcome, _| {
            verdict == Verdict::Guest(EntryRule::ActivityHltEvent)
                && matches!(outcome, Outcome::Entered { .. })
        },
    },
    Deviation {
        name: "bochs27-shutdown-vector-18",
        platform: Some(Platform::Bochs),
        reason: "SDM 26.3.1.5: in the shutdown state only an NMI or a machine check (hardware exception 18) may be injected; Bochs 2.7 tests the vector alone and accepts any type with vector 18",
        applies: |case, verdict, outcome, _| {
            verdict == Verdict::Guest(EntryRule::ActivityShutdownEvent)
                && case.vector() == 18
                && matches!(outcome, Outcome::Entered { .. })
        },
    },
    Deviation {
        name: "bochs27-virtual-nmi-blocking",
        platform: Some(Platform::Bochs),
        reason: "SDM 26.3.1.5: bit 3 (blocking by NMI) must be 0 when virtual NMIs are on and an NMI is injected; Bochs 2.7 has that check commented out and injects the NMI",
        applies: |_, verdict, outcome, _| {
            verdict == Verdict::Guest(EntryRule::VirtualNmiBlocked)
                && matches!(outcome, Outcome::Entered { .. })
        },
    },
    Deviation {
        name: "bochs27-cet-error-code",
        platform: Some(Platform::Bochs),
        reason: "SDM 26.2.1.3: IA32_VMX_BASIC[56] lifts only the vector test; deliver-error-code must still be 0 for other types and for a real-mode guest. Bochs 2.7 with CET skips the whole deliver-error-code test",
        applies: |_, verdict, outcome, setup| {
            verdict == Verdict::Control(EntryRule::DeliverErrorCodeNotAllowed)
                && setup.caps.no_error_code_consistency_check
                && matches!(outcome, Outcome::Entered { .. } | Outcome::GuestFail { .. })
        },
    },
    Deviation {
        name: "sdm-optional-sti-nmi",
        platform: None,
        reason: "SDM 26.3.1.5: a processor MAY require blocking by STI to be 0 for NMI injection; hvkit requires it (EntryCapabilities::nmi_requires_no_sti_blocking), this CPU does not",
        applies: |case, verdict, outcome, _| {
            verdict == Verdict::Guest(EntryRule::NmiBlockedByMovSsOrSti)
                && case.interruptibility & 2 == 0
                && matches!(outcome, Outcome::Entered { .. })
        },
    },
];

/// Why a generated case was not run.
#[derive(Clone, Copy)]
enum Skip {
    /// A control of the case cannot take the case's setting on this CPU (its capability MSR's
    /// allowed-0 or allowed-1 bit forbids it; the entry would fail on that rule, which tests
    /// nothing about events).
    ControlUnsupported,
    /// The CPU lacks "unrestricted guest" (or EPT), so CR0.PE = 0 cannot be entered.
    NoUnrestrictedGuest,
    /// Type 7 without the monitor-trap-flag control: Bochs 2.7 accepts the entry and then
    /// panics in event injection ("unsupported event injection type 7").
    OtherEventWithoutMtf,
    /// A valid entry into a state the guest cannot leave: wait-for-SIPI without injection
    /// (the VMX-preemption timer does not exit there, SDM 26.5.1; a SIPI needs a second CPU),
    /// or HLT/shutdown without injection on a CPU without the VMX-preemption timer.
    NoWayOut,
}

const SKIP_NAMES: [&str; 4] = [
    "control not allowed by its capability MSR",
    "no unrestricted guest (CR0.PE=0 impossible)",
    "type 7 without MTF support (Bochs 2.7 accepts, then panics)",
    "valid entry into wait-for-SIPI/HLT/shutdown with no way out",
];

#[derive(Default)]
struct Tally {
    generated: u64,
    run: u64,
    accepted: u64,
    agreements: u64,
    explained: [u64; DEVIATIONS.len()],
    unexplained: u64,
    vectoring_checked: u64,
    vectoring_mismatches: u64,
    skipped: [u64; 4],
    printed: u32,
    groups: [(Option<(Verdict, OutcomeKind)>, u64); GROUPS],
    cycles: u64,
}

/// An outcome without its payload, for grouping disagreements.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum OutcomeKind {
    Entered,
    ControlFail,
    GuestFail,
    Other(u32),
    Harness,
    VectoringMismatch,
}

impl Outcome {
    fn kind(self) -> OutcomeKind {
        match self {
            Self::Entered { .. } => OutcomeKind::Entered,
            Self::ControlFail => OutcomeKind::ControlFail,
            Self::GuestFail { .. } => OutcomeKind::GuestFail,
            Self::Other { code } => OutcomeKind::Other(code),
            Self::Harness => OutcomeKind::Harness,
        }
    }
}

/// Runs the differential check on a VMCS of its own, releases that VMCS (VMCLEAR) and reports
/// one `entry-checks` scenario line. The example's VMCS is made current again by its next
/// `VmxRoot::activate`.
pub fn run(root: &mut VmxRoot, vmx: &Vmx, guest_stack_top: u64, guest_idt: u64, eptp: u64) {
    let mut setup = Setup::read(vmx, guest_stack_top, guest_idt, eptp);
    let mut tally = Tally::default();
    let revision = vmx.caps.basic.revision_id();
    // SAFETY: the bootstrap processor's differential VMCS, written once before use; nothing
    // else refers to it.
    let address = unsafe {
        DIFF_VMCS.get().write(VmcsRegion::new(revision));
        DIFF_VMCS.address()
    };
    // SAFETY: 1. a 4 KiB-aligned, identity-mapped VMCS region with this CPU's revision id;
    // 2. a static used only here, by the processor; 3. this is the only value naming it (`run`
    // is called once); 4. never made current before.
    let region = unsafe { ClearVmcs::new(address) };
    println!(
        "HVKIT entry-diff platform={:?} preemption_timer={} unrestricted_guest={} mtf={} sgx={} basic56={} misc30={}",
        setup.platform,
        setup.preemption_timer,
        setup.unrestricted_guest,
        setup.mtf,
        setup.sgx,
        setup.caps.no_error_code_consistency_check,
        setup.caps.zero_length_injection
    );
    let mut harness = match Harness::new(root, region, &mut setup) {
        Ok(harness) => harness,
        Err(fail) => {
            println!("HVKIT error: entry-diff: VMCS set-up failed: {fail}");
            crate::port::exit(crate::port::status::FAIL)
        }
    };
    generate(&setup, &mut |case| one(&mut harness, &setup, case, &mut tally));
    harness.probe_library_launch_state(&setup);
    let cleaned = unblock_virtual_nmis(&mut harness, &setup);
    if !matches!(cleaned, Outcome::Entered { reason: 18, .. }) {
        println!("HVKIT error: entry-diff: the clean-up entry ended with {cleaned:?}");
    }
    // Every VM entry attempted through `run_with` ran both hooks once, failed entries included.
    let hooks = harness.hooks;
    println!(
        "HVKIT entry-diff hooks entries={} before_entry={} after_exit={}",
        harness.entries, hooks.before_entry, hooks.after_exit
    );
    if hooks.before_entry != harness.entries || hooks.after_exit != harness.entries {
        println!("HVKIT error: entry-diff: the entry/exit hooks did not run once per entry");
        tally.unexplained += 1;
    }
    if let Err((_, fail)) = harness.root.release(harness.vmcs) {
        println!("HVKIT error: entry-diff: VMCLEAR of the harness VMCS failed: {fail}");
        crate::port::exit(crate::port::status::FAIL)
    }
    // An NMI injected with virtual NMIs off leaves NMIs blocked on Bochs 2.7 after the VM exit
    // (it never unblocks them at VM entry); an IRET unblocks them for the scenarios that follow.
    // SAFETY: IDT host, interrupts disabled, the host NMI handler is installed.
    unsafe { hvkit_nmi_reinject::IretToSelf::new() }.unblock_nmis();
    finish(&tally, &setup);
}

impl<'a> Setup<'a> {
    fn read(vmx: &'a Vmx, guest_stack_top: u64, guest_idt: u64, eptp: u64) -> Self {
        let caps = &vmx.caps;
        let pin = caps.pin_controls();
        let primary = caps.primary_controls();
        let unrestricted_guest = vmx.ept
            && vmx.controls.primary.contains(PrimaryControls::ACTIVATE_SECONDARY_CONTROLS)
            && caps
                .secondary_controls()
                .is_some_and(|allowed| allowed.allows(SecondaryControls::UNRESTRICTED_GUEST));
        #[allow(unused_unsafe, reason = "__cpuid_count is unsafe on older compilers")]
        // SAFETY: CPUID has no side effects.
        let (leaf1, leaf7) =
            unsafe { (core::arch::x86_64::__cpuid(1), core::arch::x86_64::__cpuid_count(7, 0)) };
        let platform = if leaf1.ecx & (1 << 31) == 0 && acpi_oem_is_bochs() {
            Platform::Bochs
        } else {
            Platform::Other
        };
        Self {
            vmx,
            caps: EntryCapabilities {
                no_error_code_consistency_check: caps.basic.no_error_code_consistency_check(),
                zero_length_injection: caps.misc.zero_length_injection(),
                monitor_trap_flag: primary.allows(PrimaryControls::MONITOR_TRAP_FLAG),
                nested_exception: caps.basic.nested_exception(),
                sgx: leaf7.ebx & (1 << 2) != 0,
                ..EntryCapabilities::STRICT
            },
            preemption_timer: pin.allows(PinBasedControls::ACTIVATE_PREEMPTION_TIMER),
            unrestricted_guest,
            mtf: primary.allows(PrimaryControls::MONITOR_TRAP_FLAG),
            sgx: leaf7.ebx & (1 << 2) != 0,
            platform,
            guest_rip: hvkit_entry_diff_guest as *const () as u64,
            guest_rsp: guest_stack_top - 8,
            guest_idt,
            eptp,
            base_cr0: 0,
        }
    }
}

/// Looks for the ACPI RSDP in the BIOS area (0xE0000-0xFFFFF) and compares its OEM id.
fn acpi_oem_is_bochs() -> bool {
    let mut address = 0xE0000u64;
    while address < 0x10_0000 {
        // SAFETY: the BIOS area is identity-mapped and readable; 16-byte aligned reads.
        let (signature, oem) = unsafe {
            (
                core::ptr::read_volatile(address as *const [u8; 8]),
                core::ptr::read_volatile((address + 9) as *const [u8; 6]),
            )
        };
        if &signature == b"RSD PTR " {
            return &oem == b"BOCHS ";
        }
        address += 16;
    }
    false
}

/// Every generated case goes through `visit`, sweep by sweep.
fn generate(setup: &Setup<'_>, visit: &mut dyn FnMut(Case)) {
    event_field_sweep(setup, visit);
    guest_state_sweep(visit);
    control_sweep(visit);
}

/// SDM 26.2.1.3: the three event fields, both sides of each rule, in every CR0.PE /
/// unrestricted-guest mode, with a guest state that allows any injection.
fn event_field_sweep(setup: &Setup<'_>, visit: &mut dyn FnMut(Case)) {
    let mut events: [(u32, u32, u32); 160] = [(0, 0, 0); 160];
    let mut count = 0;
    let mut push = |info: u32, error_code: u32, length: u32| {
        if count < events.len() {
            events[count] = (info, error_code, length);
            count += 1;
        }
    };
    push(0, 0, 0);
    push(0x7FFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF); // valid bit clear: the rest is ignored
    for vector in [0, 2, 18, 31, 32, 0x80, 0xFF] {
        push(event(0, vector), 0, 0);
    }
    push(event(0, 0x20) | DELIVER_ERROR_CODE, 0, 0);
    push(event(1, 0x20), 0, 0);
    push(event(1, 2), 0, 0);
    for vector in [2, 0, 1, 3, 0xFF] {
        push(event(2, vector), 0, 0);
    }
    push(event(2, 2) | DELIVER_ERROR_CODE, 0, 0);
    for vector in 0..32 {
        push(event(3, vector), 0, 0);
        push(event(3, vector) | DELIVER_ERROR_CODE, 0, 0);
    }
    push(event(3, 32), 0, 0);
    push(event(3, 0xFF), 0, 0);
    push(event(3, 32) | DELIVER_ERROR_CODE, 0, 0);
    for error_code in [0x7FFF, 0x8000, 0xFFFF, 0x1_0000, 0x8000_0000] {
        push(event(3, 13) | DELIVER_ERROR_CODE, error_code, 0);
    }
    push(event(3, 1), 0xFFFF_FFFF, 0); // error code ignored without bit 11
    for bit in [12, 13, 14, 30] {
        push(event(3, 6) | (1 << bit), 0, 0);
    }
    push(event(2, 2) | (1 << 12), 0, 0);
    push(event(3, 14) | DELIVER_ERROR_CODE | (1 << 13), 0, 0);
    for (kind, vector) in [(4, 0x80), (4, 3), (5, 1), (6, 3), (6, 4)] {
        for length in [0, 1, 15, 16, 0xFFFF_FFFF] {
            push(event(kind, vector), 0, length);
        }
    }
    push(event(4, 0x80) | DELIVER_ERROR_CODE, 0, 2);
    push(event(3, 3), 0, 0xFFFF_FFFF); // length ignored for hardware exceptions
    for vector in [0, 1, 2, 0xFF] {
        push(event(7, vector), 0, 0);
    }
    let modes: &[Mode] = if setup.unrestricted_guest {
        &[Mode::Protected, Mode::ProtectedUnrestricted, Mode::RealUnrestricted]
    } else {
        &[Mode::Protected]
    };
    for &(info, error_code, length) in &events[..count] {
        for &mode in modes {
            visit(Case { info, error_code, length, mode, ..Case::NEUTRAL });
        }
        if !setup.unrestricted_guest {
            // Counted as skipped so the totals show what this CPU could not test.
            visit(Case { info, error_code, length, mode: Mode::RealUnrestricted, ..Case::NEUTRAL });
        }
    }
}

/// One representative injection per class the guest-state rules distinguish.
const EVENT_CLASSES: [(u32, u32, u32); 13] = [
    (0, 0, 0),                                    // no injection
    (event(0, 0x40), 0, 0),                       // external interrupt
    (event(0, 18), 0, 0),                         // external interrupt, vector 18
    (event(2, 2), 0, 0),                          // NMI
    (event(3, 1), 0, 0),                          // #DB
    (event(3, 18), 0, 0),                         // #MC
    (event(3, 3), 0, 0),                          // #BP as a hardware exception
    (event(3, 13) | DELIVER_ERROR_CODE, 0x10, 0), // #GP(0x10)
    (event(4, 0x80), 0, 2),                       // INT 0x80
    (event(4, 18), 0, 2),                         // INT 18
    (event(5, 1), 0, 1),                          // INT1
    (event(6, 3), 0, 1),                          // INT3
    (event(7, 0), 0, 0),                          // pending MTF VM exit
];

/// SDM 26.3.1.4/26.3.1.5: every interruptibility combination (bits 4:0, a reserved bit) x
/// activity state (0-3 and an undefined 4) x RFLAGS.IF x virtual NMIs, for each event class.
fn guest_state_sweep(visit: &mut dyn FnMut(Case)) {
    for (info, error_code, length) in EVENT_CLASSES {
        for interruptibility in (0..32).chain([1 << 5, 1 << 31]) {
            for activity in 0..5 {
                for rflags_if in [false, true] {
                    for virtual_nmis in [false, true] {
                        visit(Case {
                            info,
                            error_code,
                            length,
                            interruptibility,
                            activity,
                            rflags_if,
                            virtual_nmis,
                            ..Case::NEUTRAL
                        });
                    }
                }
            }
        }
    }
}

/// SDM 26.2.1.1 and the windows: all 16 settings of NMI exiting, virtual NMIs, NMI-window and
/// interrupt-window exiting, against the injections and blocking they interact with.
fn control_sweep(visit: &mut dyn FnMut(Case)) {
    for controls in 0..16u32 {
        for &(info, error_code, length) in &EVENT_CLASSES[..8] {
            for interruptibility in [0, 1, 2, 8] {
                for rflags_if in [false, true] {
                    for activity in [0, 1] {
                        visit(Case {
                            info,
                            error_code,
                            length,
                            interruptibility,
                            activity,
                            rflags_if,
                            nmi_exiting: controls & 1 != 0,
                            virtual_nmis: controls & 2 != 0,
                            nmi_window: controls & 4 != 0,
                            interrupt_window: controls & 8 != 0,
                            ..Case::NEUTRAL
                        });
                    }
                }
            }
        }
    }
}

/// hvkit's verdict.
fn verdict(case: &Case, setup: &Setup<'_>) -> Verdict {
    let event = EntryEvent {
        info: InterruptionInfo::from_raw(case.info),
        error_code: case.error_code,
        instruction_length: case.length,
    };
    let guest = GuestEventState {
        cr0_pe: case.mode != Mode::RealUnrestricted,
        rflags_if: case.rflags_if,
        interruptibility: GuestInterruptibility::from_bits_retain(case.interruptibility),
        activity: ActivityState::from_raw(case.activity),
        virtual_nmis: case.virtual_nmis,
        unrestricted_guest: case.mode != Mode::Protected,
    };
    // SDM 26.2.1.1, checked first like the CPU does: the consistency of the event controls
    // (`check_event_controls`), then whether this CPU offers NMI-window exiting at all
    // (`InjectionContext::nmi_window_usable`: its allowed-1 bit).
    let controls = EventControls {
        nmi_exiting: case.nmi_exiting,
        virtual_nmis: case.virtual_nmis,
        nmi_window_exiting: case.nmi_window,
        ..EventControls::default()
    };
    if let Err(rule) = entry_check::check_event_controls(&controls) {
        return Verdict::Control(rule);
    }
    let context = InjectionContext {
        capabilities: setup.caps,
        virtual_nmis: case.virtual_nmis,
        unrestricted_guest: case.mode != Mode::Protected,
        primary_controls: setup.vmx.caps.primary_controls(),
        injected_event_data: false,
    };
    if case.nmi_window && !context.nmi_window_usable() {
        return Verdict::Controls("nmi_window_usable");
    }
    let is_control = |rule: EntryRule| rule.section().starts_with("26.2");
    match entry_check::check(&event, &guest, &setup.caps) {
        Ok(()) => Verdict::Accept,
        Err(error) if is_control(error.rule) => Verdict::Control(error.rule),
        Err(error) => {
            // The CPU checks the control fields before the guest state: does a control rule
            // fail as well? A guest state that allows every injection tells.
            let neutral = GuestEventState {
                rflags_if: true,
                interruptibility: GuestInterruptibility::empty(),
                activity: ActivityState::Active,
                ..guest
            };
            match entry_check::check(&event, &neutral, &setup.caps) {
                Err(control) if is_control(control.rule) => Verdict::Control(control.rule),
                _ => Verdict::Guest(error.rule),
            }
        }
    }
}

/// Whether the SDM makes the entry fail whatever else holds, judged without hvkit's validator
/// (used only to decide that a case that could not be left is safe to run).
fn certainly_fails(case: &Case, setup: &Setup<'_>) -> bool {
    let blocking = case.interruptibility;
    (case.virtual_nmis && !case.nmi_exiting)
        || (case.nmi_window && !case.virtual_nmis)
        || case.activity > 3
        || blocking & !0x1F != 0
        || (case.activity != 0 && blocking & 3 != 0)
        || blocking & 3 == 3
        || (blocking & 1 != 0 && !case.rflags_if)
        || blocking & (1 << 2) != 0 // blocking by SMI outside SMM
        || (blocking & (1 << 4) != 0 && (!setup.sgx || blocking & 2 != 0))
}

fn skip_reason(case: &Case, setup: &Setup<'_>) -> Option<Skip> {
    // A control can take the case's setting when its allowed-1 bit permits 1 and its allowed-0
    // bit does not force 1 (SDM Appendix A.3).
    let settable = |allowed: AllowedControls, bit: u32, on: bool| {
        if on {
            allowed.may_be_one & (1 << bit) != 0
        } else {
            allowed.must_be_one & (1 << bit) == 0
        }
    };
    let pin = setup.vmx.caps.pin_controls();
    let primary = setup.vmx.caps.primary_controls();
    if !settable(pin, 3, case.nmi_exiting)
        || !settable(pin, 5, case.virtual_nmis)
        || !settable(primary, 22, case.nmi_window)
        || !settable(primary, 2, case.interrupt_window)
    {
        return Some(Skip::ControlUnsupported);
    }
    if case.mode != Mode::Protected && !setup.unrestricted_guest {
        return Some(Skip::NoUnrestrictedGuest);
    }
    if case.injects() && case.kind() == 7 && !setup.mtf {
        return Some(Skip::OtherEventWithoutMtf);
    }
    let stuck = match case.activity {
        3 => true,
        1 | 2 => !setup.preemption_timer,
        _ => false,
    };
    if stuck && !case.injects() && !certainly_fails(case, setup) {
        return Some(Skip::NoWayOut);
    }
    None
}

fn one(harness: &mut Harness<'_>, setup: &Setup<'_>, case: Case, tally: &mut Tally) {
    tally.generated += 1;
    if let Some(skip) = skip_reason(&case, setup) {
        tally.skipped[skip as usize] += 1;
        return;
    }
    let expected = verdict(&case, setup);
    let start = crate::cpu::rdtsc();
    let outcome = harness.attempt(setup, &case);
    tally.cycles += crate::cpu::rdtsc() - start;
    tally.run += 1;
    if let Outcome::Entered { .. } = outcome {
        tally.accepted += 1;
    }
    let mut disagreement = (!outcome.matches(expected)).then(|| outcome.kind());
    if let (None, Outcome::Entered { reason, vectoring, vectoring_error }) = (disagreement, outcome)
        && case.injects()
    {
        tally.vectoring_checked += 1;
        if !vectoring_matches(&case, reason, vectoring, vectoring_error) {
            tally.vectoring_mismatches += 1;
            disagreement = Some(OutcomeKind::VectoringMismatch);
        }
    }
    let Some(kind) = disagreement else {
        tally.agreements += 1;
        return;
    };
    if kind != OutcomeKind::VectoringMismatch {
        for (index, deviation) in DEVIATIONS.iter().enumerate() {
            let platform_ok = deviation.platform.is_none_or(|known| known == setup.platform);
            if platform_ok && (deviation.applies)(&case, expected, outcome, setup) {
                tally.explained[index] += 1;
                return;
            }
        }
    }
    tally.unexplained += 1;
    if tally.printed < DIFF_LINES {
        tally.printed += 1;
        println!(
            "HVKIT DIFF case={} info={:#010x} error_code={:#x} length={} interruptibility={:#x} activity={} if={} mode={:?} nmi_exiting={} virtual_nmis={} nmi_window={} interrupt_window={} hvkit={:?} cpu={:?}",
            tally.generated - 1,
            case.info,
            case.error_code,
            case.length,
            case.interruptibility,
            case.activity,
            u8::from(case.rflags_if),
            case.mode,
            u8::from(case.nmi_exiting),
            u8::from(case.virtual_nmis),
            u8::from(case.nmi_window),
            u8::from(case.interrupt_window),
            expected,
            outcome
        );
    }
    let key = Some((expected, kind));
    let slot = tally.groups.iter().position(|(group, _)| *group == key || group.is_none());
    if let Some(slot) = slot {
        tally.groups[slot].0 = key;
        tally.groups[slot].1 += 1;
    }
}

/// The IDT-vectoring information of an exit during delivery of the injected event must repeat
/// it (SDM 28.2.4): valid, type, vector, error-code bit, and the error code. A pending MTF VM
/// exit (type 7) is no delivery: the exit is an MTF exit (reason 37) instead.
fn vectoring_matches(case: &Case, reason: u32, vectoring: u32, vectoring_error: u32) -> bool {
    if case.kind() == 7 {
        return reason & 0xFFFF == 37;
    }
    let mask = VALID | 0xFFF;
    let same_info = vectoring & mask == case.info & mask;
    let same_code = case.info & DELIVER_ERROR_CODE == 0 || vectoring_error == case.error_code;
    same_info && same_code
}

/// Bochs 2.7 keeps virtual-NMI blocking from one guest to the next: VM entry sets it when the
/// interruptibility field says so but never clears it, although the SDM (26.7.1, "blocking by
/// NMI" with virtual NMIs) says there is no virtual-NMI blocking after an entry whose field bit 3
/// is 0. Only a guest IRET clears it. So the last entry runs a guest that executes IRETQ to
/// itself and then VMCALL, leaving no blocking behind for the example's own guest.
fn unblock_virtual_nmis(harness: &mut Harness<'_>, setup: &Setup<'_>) -> Outcome {
    let cleanup = Setup {
        guest_rip: hvkit_entry_diff_iret as *const () as u64,
        preemption_timer: false,
        ..*setup
    };
    harness.attempt(&cleanup, &Case::NEUTRAL)
}

/// Counts the calls of the guest runner's entry/exit hooks.
#[derive(Clone, Copy, Default)]
struct CountingHooks {
    before_entry: u64,
    after_exit: u64,
}

impl EntryExitHooks for CountingHooks {
    fn before_entry(&mut self) {
        self.before_entry += 1;
    }

    fn after_exit(&mut self) {
        self.after_exit += 1;
    }
}

/// The VMCS all cases run on (it tracks its own launch state: VMLAUNCH until an entry is
/// accepted, VMRESUME after that), and the hooks every entry runs.
struct Harness<'r> {
    root: &'r mut VmxRoot,
    vmcs: Vmcs,
    hooks: CountingHooks,
    /// VM entries attempted with `run_with`.
    entries: u64,
}

impl<'r> Harness<'r> {
    /// VMCLEAR and VMPTRLD of `region`, then the example's complete host and guest state (known
    /// good: it launches the example's guest) with the fields every case shares.
    fn new(
        root: &'r mut VmxRoot,
        region: ClearVmcs,
        setup: &mut Setup<'_>,
    ) -> Result<Self, VmFail> {
        let mut vmcs = root.adopt(region)?;
        let mut active = root.activate(&mut vmcs)?;
        crate::vmx::setup_vmcs(
            &mut active,
            setup.vmx,
            setup.guest_rip,
            setup.guest_rsp,
            setup.guest_idt,
            setup.eptp,
        )?;
        setup.base_cr0 = active.read(field::GUEST_CR0)?;
        Ok(Self { root, vmcs, hooks: CountingHooks::default(), entries: 0 })
    }

    /// Compares the launch state `ActiveVmcs::run` assumes after a failed entry with the CPU's:
    /// an entry that fails on the guest state leaves the VMCS clear (SDM VMLAUNCH pseudocode:
    /// "launch state of VMCS <- launched" only once guest state and MSRs loaded), so the next
    /// entry must be a VMLAUNCH again. Prints what hvkit's handle did; counted nowhere else.
    fn probe_library_launch_state(&mut self, setup: &Setup<'_>) {
        // VMCLEAR: the launch state is clear again, so the next entry is a VMLAUNCH.
        if self.root.clear(&mut self.vmcs).is_err() {
            println!("HVKIT entry-diff launch-state-probe result=harness-error");
            return;
        }
        let cleared_launched = self.vmcs.is_launched();
        // STI and MOV-SS blocking together: an invalid guest state (SDM 26.3.1.5).
        let invalid = Case { interruptibility: 3, ..Case::NEUTRAL };
        let first = self.attempt_result(setup, &invalid);
        let handle_launched = self.vmcs.is_launched();
        let second = self.attempt_result(setup, &Case::NEUTRAL);
        println!(
            "HVKIT entry-diff launch-state-probe cleared_launched={cleared_launched} first={first:?} handle_launched_after={handle_launched} second={second:?}"
        );
    }

    /// Writes the case and attempts one VM entry: the outcome, or the VMX instruction failure.
    fn attempt_result(&mut self, setup: &Setup<'_>, case: &Case) -> Result<Outcome, VmFail> {
        let harness = &mut *self;
        let mut vmcs = harness.root.activate(&mut harness.vmcs)?;
        write_case(&mut vmcs, setup, case)?;
        let mut registers = GuestRegisters::default();
        harness.entries += 1;
        // SAFETY: as in `attempt`.
        let _exit = unsafe { vmcs.run_with(&mut registers, None, &mut harness.hooks) }?;
        Ok(read_exit(&vmcs))
    }

    /// Writes the case and attempts one VM entry (VMLAUNCH until one is accepted, then
    /// VMRESUME).
    fn attempt(&mut self, setup: &Setup<'_>, case: &Case) -> Outcome {
        let Ok(mut vmcs) = self.root.activate(&mut self.vmcs) else {
            return Outcome::Harness;
        };
        if write_case(&mut vmcs, setup, case).is_err() {
            return Outcome::Harness;
        }
        let mut registers = GuestRegisters::default();
        self.entries += 1;
        // SAFETY: the VMCS holds the example's complete host and guest state with the case's
        // changes; interrupts are disabled; EPT confines the guest, which can only fault into
        // an exit (exception bitmap all ones) or run VMCALL. The hooks only count.
        match unsafe { vmcs.run_with(&mut registers, None, &mut self.hooks) } {
            Ok(_exit) => read_exit(&vmcs),
            Err(VmFail::Valid(error)) if error.number() == 7 => Outcome::ControlFail,
            Err(VmFail::Valid(error)) => Outcome::Other { code: error.number() },
            Err(VmFail::Invalid) => Outcome::Other { code: u32::MAX },
        }
    }
}

fn read_exit(vmcs: &ActiveVmcs<'_>) -> Outcome {
    let reason = vmcs.read(field::EXIT_REASON).unwrap_or(u32::MAX);
    if reason & (1 << 31) != 0 {
        return match reason & 0xFFFF {
            33 => Outcome::GuestFail {
                qualification: vmcs.read(field::EXIT_QUALIFICATION).unwrap_or(u64::MAX),
            },
            _ => Outcome::Other { code: reason },
        };
    }
    Outcome::Entered {
        reason,
        vectoring: vmcs.read(field::IDT_VECTORING_INFO).unwrap_or(0),
        vectoring_error: vmcs.read(field::IDT_VECTORING_ERROR_CODE).unwrap_or(0),
    }
}

/// The case's fields, and every field a previous case or VM exit may have changed (a VM exit
/// saves the guest state and clears the valid bit of the injection; Bochs also rewrites the
/// "IA-32e mode guest" entry control), back to the example's values.
fn write_case(vmcs: &mut ActiveVmcs<'_>, setup: &Setup<'_>, case: &Case) -> Result<(), VmFail> {
    let controls = &setup.vmx.controls;
    let mut pin = controls.pin - (PinBasedControls::NMI_EXITING | PinBasedControls::VIRTUAL_NMIS);
    if case.nmi_exiting {
        pin |= PinBasedControls::NMI_EXITING;
    }
    if case.virtual_nmis {
        pin |= PinBasedControls::VIRTUAL_NMIS;
    }
    if setup.preemption_timer {
        pin |= PinBasedControls::ACTIVATE_PREEMPTION_TIMER;
        vmcs.write(field::VMX_PREEMPTION_TIMER_VALUE, 0)?;
    }
    vmcs.write(field::PIN_BASED_VM_EXECUTION_CONTROLS, pin.bits())?;
    let mut primary = controls.primary;
    if case.nmi_window {
        primary |= PrimaryControls::NMI_WINDOW_EXITING;
    }
    if case.interrupt_window {
        primary |= PrimaryControls::INTERRUPT_WINDOW_EXITING;
    }
    vmcs.write(field::PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, primary.bits())?;
    if controls.primary.contains(PrimaryControls::ACTIVATE_SECONDARY_CONTROLS) {
        let mut secondary = controls.secondary;
        if case.mode != Mode::Protected {
            secondary |= SecondaryControls::UNRESTRICTED_GUEST;
        }
        vmcs.write(field::SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, secondary.bits())?;
    }
    let (entry, cr0, cs_rights) = if case.mode == Mode::RealUnrestricted {
        // CR0.PE = CR0.PG = 0, not IA-32e mode, and a 32-bit code segment (L = 0, D = 1,
        // G = 1): a 64-bit CS needs IA-32e mode.
        let entry = controls.entry - hvkit_vmx_core::controls::EntryControls::IA32E_MODE_GUEST;
        (entry, setup.base_cr0 & !((1 << 31) | 1), 0xC09B)
    } else {
        (controls.entry, setup.base_cr0, 0xA09B)
    };
    vmcs.write(field::VM_ENTRY_CONTROLS, entry.bits())?;
    vmcs.write(field::GUEST_CR0, cr0)?;
    vmcs.write(field::GUEST_CS_ACCESS_RIGHTS, cs_rights)?;
    vmcs.write(field::GUEST_RIP, setup.guest_rip)?;
    vmcs.write(field::GUEST_RSP, setup.guest_rsp)?;
    vmcs.write(field::GUEST_PENDING_DEBUG_EXCEPTIONS, 0)?;
    vmcs.write(field::EXCEPTION_BITMAP, u32::MAX)?;
    vmcs.write(field::GUEST_IDTR_LIMIT, 0)?;
    vmcs.write(field::GUEST_RFLAGS, 0x2 | (u64::from(case.rflags_if) << 9))?;
    vmcs.write(field::GUEST_INTERRUPTIBILITY_STATE, case.interruptibility)?;
    vmcs.write(field::GUEST_ACTIVITY_STATE, case.activity)?;
    vmcs.write(field::VM_ENTRY_EXCEPTION_ERROR_CODE, case.error_code)?;
    vmcs.write(field::VM_ENTRY_INSTRUCTION_LENGTH, case.length)?;
    vmcs.write(field::VM_ENTRY_INTERRUPTION_INFO, case.info)?;
    Ok(())
}

fn finish(tally: &Tally, setup: &Setup<'_>) {
    for (index, deviation) in DEVIATIONS.iter().enumerate() {
        if tally.explained[index] > 0 {
            println!(
                "HVKIT DIFF-EXPLAINED deviation={} count={} reason=\"{}\"",
                deviation.name, tally.explained[index], deviation.reason
            );
        }
    }
    for (group, count) in &tally.groups {
        if let Some((expected, kind)) = group {
            println!("HVKIT DIFF-GROUP hvkit={expected:?} cpu={kind:?} count={count}");
        }
    }
    for (index, name) in SKIP_NAMES.iter().enumerate() {
        if tally.skipped[index] > 0 {
            println!("HVKIT DIFF-SKIPPED count={} reason=\"{name}\"", tally.skipped[index]);
        }
    }
    let explained: u64 = tally.explained.iter().sum();
    let skipped: u64 = tally.skipped.iter().sum();
    println!(
        "HVKIT entry-diff platform={:?} generated={} run={} accepted={} agreements={} explained={} unexplained={} skipped={} vectoring_checked={} vectoring_mismatches={}",
        setup.platform,
        tally.generated,
        tally.run,
        tally.accepted,
        tally.agreements,
        explained,
        tally.unexplained,
        skipped,
        tally.vectoring_checked,
        tally.vectoring_mismatches
    );
    // sent = the cases that must agree (run minus explained deviations), handled = agreements,
    // so lost = unexplained disagreements; events = every case run.
    report(Line {
        name: "entry-checks",
        strategy: "n/a",
        sent: tally.run - explained,
        exits: tally.accepted,
        handled: tally.agreements,
        eois: 0,
        insns_per_event: tally.cycles / tally.run.max(1),
        pass: tally.unexplained == 0 && tally.run >= 1000,
        extra: Extra { exit_to_handler: 0, exit_to_entry: 0, events: tally.run },
    });
}
