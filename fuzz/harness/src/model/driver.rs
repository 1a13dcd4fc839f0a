//! The exit-sequence driver: the model plays the processor (VM entry, event delivery, the
//! guest, VM exits) and the harness plays a hypervisor that calls hvkit's whole exit sequence:
//! `handle_host_event`, its own exit handling (INIT/SIPI emulation, optional injections),
//! `reinject_idt_vectoring`, owed-event requests and `GuestEventQueue::prepare_entry`.
//!
//! Invariants checked (each failure names the rule):
//! - every VM entry passes the model's checks (26.2.1.1, 26.2.1.3, 26.3.1.5);
//! - every injected event is owed: a re-injection of the event whose delivery the exit
//!   interrupted (same fields, same event data), the hypervisor's own injection, or an NMI or
//!   interrupt the guest is owed under the latching rule; nothing owed is lost;
//! - with FRED, INJECTED_EVENT_DATA is the injected event's own data (no stale data);
//! - after "NMI unblocking due to IRET" virtual-NMI blocking is set again before re-entry;
//! - every host NMI exit and every acknowledged interrupt is re-delivered exactly once;
//! - a call that returns an error leaves every VMCS field and the queue as they were;
//! - liveness: once input ends, a guest that returns from its handlers and keeps IF=1 gets
//!   every owed event within a bounded number of entries.

use super::{
    Activity, Config, EntryView, Event, Guest, Kind, VectorSet, blocking, check_entry,
    exit_controls, owed_nmis_after_request, pin, primary, pushes_error_code, window_exit,
};
use hvkit_nmi_reinject::{
    GuestEvent, GuestEventQueue, HostEvent, InjectError, InjectionContext, IrqDelivery, Redeliver,
    RedeliveryError, handle_host_event, inject, reinject_idt_vectoring,
};
use hvkit_vmx_core::controls::AllowedControls;
use hvkit_vmx_core::entry_check::EntryCapabilities;
use hvkit_vmx_core::event::InterruptionInfo;
use hvkit_vmx_core::exit::{ExitInfo, ExitInfoOptions};
use hvkit_vmx_core::vmcs::{SoftVmcs, VmcsAccess};
use hvkit_vmx_core::{VmFail, field};

/// Reads fuzz bytes; 0 once exhausted.
struct Input<'a> {
    data: &'a [u8],
    position: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let value = self.data.get(self.position).copied().unwrap_or(0);
        self.position += 1;
        value
    }

    fn exhausted(&self) -> bool {
        self.position >= self.data.len()
    }
}

/// A host re-delivery strategy that counts calls (stands in for a direct call).
#[derive(Debug, Default)]
struct CountingRedelivery {
    nmis: u32,
    irqs: u32,
    last_vector: u8,
}

impl Redeliver for CountingRedelivery {
    fn redeliver_nmi(&mut self) -> Result<(), RedeliveryError> {
        self.nmis += 1;
        Ok(())
    }

    fn redeliver_irq(&mut self, vector: u8) -> Result<IrqDelivery, RedeliveryError> {
        self.irqs += 1;
        self.last_vector = vector;
        Ok(IrqDelivery::Handled)
    }
}

/// The exit the model produces.
#[derive(Debug, Clone, Copy, Default)]
struct Exit {
    reason: u32,
    qualification: u64,
    /// VM-exit interruption information and error code.
    interruption: Option<(u32, u32)>,
    /// The event whose delivery the exit interrupted.
    vectoring: Option<Event>,
    length: u32,
}

const HOST_TIMER_VECTOR: u8 = 0xEC;

/// How many writes one library call may make through [`Logged`] (the calls under test make
/// a handful; the library's own rollback keeps six).
const LOG_LEN: usize = 16;

/// The VMCS as the library sees it during one call that may fail: every write first records
/// the value the field had, so that "an error leaves every VMCS field as it was" is checked
/// on the fields the call wrote (writes and the VM-instruction error field are the only ways
/// a call through [`VmcsAccess`] changes a VMCS) without copying the whole VMCS before each
/// call and comparing all of it afterwards.
struct Logged<'a> {
    vmcs: &'a mut SoftVmcs,
    /// Encoding and value before the write of each write, in order (two plain arrays: set up
    /// for every call, they cost a short memset).
    encodings: [u32; LOG_LEN],
    before: [u64; LOG_LEN],
    len: usize,
    /// More writes than `LOG_LEN`: the check cannot vouch for the call.
    overflowed: bool,
    instruction_error: u32,
}

impl<'a> Logged<'a> {
    fn new(vmcs: &'a mut SoftVmcs) -> Self {
        let instruction_error = vmcs.last_instruction_error();
        Self {
            vmcs,
            encodings: [0; LOG_LEN],
            before: [0; LOG_LEN],
            len: 0,
            overflowed: false,
            instruction_error,
        }
    }

    /// The error-path invariant: every field written holds its value from before the call
    /// again (the first record of a field has that value), and the VM-instruction error
    /// field is unchanged.
    fn assert_unchanged(&self, call: &str) {
        assert!(!self.overflowed, "{call}: more than {LOG_LEN} VMCS writes in one call");
        let encodings = self.encodings.get(..self.len).unwrap_or_default();
        for (at, (&encoding, &before)) in encodings.iter().zip(&self.before).enumerate() {
            if encodings.iter().take(at).any(|&earlier| earlier == encoding) {
                continue;
            }
            let now = self.vmcs.read_raw(encoding).ok();
            assert_eq!(
                now,
                Some(before),
                "{call} returned an error but changed {}",
                field_name(encoding)
            );
        }
        assert_eq!(
            self.vmcs.last_instruction_error(),
            self.instruction_error,
            "{call} returned an error but changed the VM-instruction error field"
        );
    }
}

impl VmcsAccess for Logged<'_> {
    fn read_raw(&self, encoding: u32) -> Result<u64, VmFail> {
        self.vmcs.read_raw(encoding)
    }

    fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
        if self.vmcs.supports(encoding) {
            let before = self.vmcs.read_raw(encoding).unwrap_or(0);
            match (self.encodings.get_mut(self.len), self.before.get_mut(self.len)) {
                (Some(encoding_slot), Some(before_slot)) => {
                    (*encoding_slot, *before_slot) = (encoding, before);
                    self.len += 1;
                }
                _ => self.overflowed = true,
            }
        }
        self.vmcs.write_raw(encoding, value)
    }
}

/// The catalog name of an encoding (for failure messages).
fn field_name(encoding: u32) -> String {
    match field::ALL.iter().find(|info| info.encoding == encoding & !1) {
        Some(info) if encoding & 1 != 0 => format!("{} (high) ({encoding:#x})", info.name),
        Some(info) => format!("{} ({encoding:#x})", info.name),
        None => format!("{encoding:#x}"),
    }
}

/// The whole machine: model processor and guest, hvkit under test, and the bookkeeping.
struct Machine {
    config: Config,
    context: InjectionContext,
    vmcs: SoftVmcs,
    queue: GuestEventQueue,
    guest: Guest,
    owed_nmis: u32,
    owed_irqs: VectorSet,
    expect_reinjection: Option<Event>,
    expect_hypervisor: Option<Event>,
    expect_nmi_blocking: bool,
    host_irq_pending: Option<u8>,
    /// The primary processor-based controls of the last VM entry.
    entry_primary: u32,
    /// Write invalid interruption and IDT-vectoring information explicitly at every exit
    /// instead of relying on the software VMCS's exit completion to invalidate them.
    explicit_invalid: bool,
}

/// One round's fuzz choices (all zero in the drain phase except the guest's cooperative step).
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    step: u8,
    host: u8,
    hypervisor: u8,
    vector: u8,
    extra: u8,
}

impl Machine {
    fn new(config: Config, conservative_sti: bool, explicit_invalid: bool) -> Self {
        let mut vmcs = SoftVmcs::new();
        let pin = pin::DEFAULT1
            | pin::EXTERNAL_INTERRUPT_EXITING
            | pin::NMI_EXITING
            | if config.virtual_nmis { pin::VIRTUAL_NMIS } else { 0 };
        let exit = exit_controls::DEFAULT1
            | if config.acknowledge_on_exit { exit_controls::ACKNOWLEDGE_INTERRUPT } else { 0 };
        let secondary = if config.unrestricted_guest { super::UNRESTRICTED_GUEST } else { 0 };
        let cr0 = if config.protected_mode { 0x8000_0031 } else { 0x30 };
        let writes = [
            (field::PIN_BASED_VM_EXECUTION_CONTROLS.encoding(), u64::from(pin)),
            (
                field::PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS.encoding(),
                u64::from(primary::DEFAULT1 | primary::SECONDARY),
            ),
            (field::SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS.encoding(), secondary.into()),
            (field::PRIMARY_VM_EXIT_CONTROLS.encoding(), u64::from(exit)),
            (field::GUEST_CR0.encoding(), cr0),
            (field::GUEST_RFLAGS.encoding(), 0x2),
        ];
        for (encoding, value) in writes {
            let _ = vmcs.write_raw(encoding, value);
        }
        let context = InjectionContext {
            capabilities: EntryCapabilities {
                no_error_code_consistency_check: config.basic_56,
                zero_length_injection: config.misc_30,
                monitor_trap_flag: false,
                nested_exception: config.fred,
                fred_guest: config.fred,
                nmi_requires_no_sti_blocking: config.nmi_blocked_by_sti || conservative_sti,
                sgx: config.sgx,
            },
            virtual_nmis: config.virtual_nmis,
            unrestricted_guest: config.unrestricted_guest,
            primary_controls: AllowedControls {
                must_be_one: primary::DEFAULT1,
                may_be_one: config.primary_allowed1(),
            },
            injected_event_data: config.fred,
        };
        Self {
            config,
            context,
            vmcs,
            queue: GuestEventQueue::new(),
            guest: Guest::default(),
            owed_nmis: 0,
            owed_irqs: VectorSet::default(),
            expect_reinjection: None,
            expect_hypervisor: None,
            expect_nmi_blocking: false,
            host_irq_pending: None,
            entry_primary: 0,
            explicit_invalid,
        }
    }

    fn nothing_owed(&self) -> bool {
        self.owed_nmis == 0
            && self.owed_irqs.is_empty()
            && self.expect_reinjection.is_none()
            && self.expect_hypervisor.is_none()
    }

    /// VM entry: the checks, then the injected event against what is owed. Returns the
    /// injected event.
    fn enter(&mut self, round: usize) -> Option<Event> {
        let view = EntryView::read(&self.vmcs);
        self.entry_primary = view.primary;
        if let Err(violation) = check_entry(&self.config, &view) {
            panic!(
                "round {round}: VM entry fails: {violation:?} ({:?}, queue {:?}, entry {view:x?})",
                self.config, self.queue
            );
        }
        let mut injected = view.injected();
        if let Some(event) = injected.as_mut().filter(|_| !self.config.fred) {
            event.data = 0;
        }
        if self.expect_nmi_blocking && self.config.virtual_nmis {
            let nmi_injected = injected.is_some_and(|event| event.kind == Kind::Nmi);
            assert!(
                view.interruptibility & blocking::NMI != 0 || nmi_injected,
                "round {round}: NMI unblocking due to IRET: virtual-NMI blocking not restored \
                 before re-entry (SDM 28.2.3)"
            );
        }
        self.expect_nmi_blocking = false;
        match injected {
            Some(event) if self.expect_reinjection.is_some() => {
                assert_eq!(
                    Some(event),
                    self.expect_reinjection,
                    "round {round}: the event whose delivery the exit interrupted must be \
                     re-injected unchanged (SDM 28.2.4; data = ORIGINAL_EVENT_DATA)"
                );
                self.expect_reinjection = None;
            }
            Some(event) if self.expect_hypervisor.is_some() => {
                assert_eq!(Some(event), self.expect_hypervisor, "round {round}: own injection");
                self.expect_hypervisor = None;
            }
            Some(event) => {
                match event.kind {
                    Kind::Nmi => {
                        assert!(
                            self.owed_nmis > 0,
                            "round {round}: NMI injected that is not owed (NMI latching: at \
                             most one held beside one in service)"
                        );
                        self.owed_nmis -= 1;
                    }
                    Kind::External => assert!(
                        self.owed_irqs.remove(event.vector),
                        "round {round}: interrupt {:#x} injected but not owed",
                        event.vector
                    ),
                    _ => panic!(
                        "round {round}: injection of {event:?}, an event that did not happen \
                         (no interrupted, own or owed event matches: stale exit information?)"
                    ),
                }
                assert_eq!(
                    event.data, 0,
                    "round {round}: stale INJECTED_EVENT_DATA for {event:?} (FRED delivers it)"
                );
            }
            None => {
                assert!(
                    self.expect_reinjection.is_none(),
                    "round {round}: interrupted event {:?} lost (not re-injected)",
                    self.expect_reinjection
                );
                assert!(self.expect_hypervisor.is_none(), "round {round}: own injection lost");
            }
        }
        self.guest.load(&view);
        if injected.is_some() {
            // A vectoring VM entry leaves no STI or MOV-SS blocking (SDM 26.7.1).
            self.guest.sti = false;
            self.guest.mov_ss = false;
        }
        injected
    }

    /// The delivery of `event` hit an EPT violation (or, with `as_exception`, an intercepted
    /// #PF): the exit reports it in the IDT-vectoring information (SDM 28.2.4).
    fn delivery_fault(&mut self, event: Event, round: Round) -> Exit {
        if event.kind == Kind::Nmi {
            // Delivery of the NMI had begun: NMIs are blocked in the saved state; the
            // hypervisor clears the bit when it re-injects.
            self.guest.nmi_blocked = true;
        }
        self.guest.activity = Activity::Active;
        self.guest.sti = false;
        self.guest.mov_ss = false;
        self.expect_reinjection = Some(event);
        // Bit 12 is undefined when the IDT-vectoring information is valid: random.
        let undefined_bit12 = u64::from(round.extra & 1) << 12;
        if round.host & 0x40 != 0 {
            let code = u32::from(round.extra & 0x7);
            Exit {
                reason: 0,
                interruption: Some((0x8000_0B0E | (undefined_bit12 as u32), code)),
                vectoring: Some(event),
                length: event.length,
                ..Exit::default()
            }
        } else {
            Exit {
                reason: 48,
                qualification: 0x181 | undefined_bit12,
                vectoring: Some(event),
                length: event.length,
                ..Exit::default()
            }
        }
    }

    fn host_nmi_exit(&self, bit12: bool) -> Exit {
        Exit {
            reason: 0,
            interruption: Some((0x8000_0202 | u32::from(bit12) << 12, 0)),
            ..Exit::default()
        }
    }

    fn host_irq_exit(&mut self, vector: u8) -> Exit {
        self.host_irq_pending = None;
        let info =
            if self.config.acknowledge_on_exit { 0x8000_0000 | u32::from(vector) } else { 0 };
        Exit { reason: 1, interruption: Some((info, 0)), ..Exit::default() }
    }

    /// A guest-raised event through its own IDT: delivered, or (`fault`) interrupted.
    fn guest_event(&mut self, event: Event, fault: bool, round: Round) -> Option<Exit> {
        if fault {
            return Some(self.delivery_fault(event, round));
        }
        self.guest.deliver(&event);
        None
    }

    /// Runs the guest from entry to its next exit.
    fn run(&mut self, injected: Option<Event>, round: Round) -> Exit {
        let fault = round.host & 0x20 != 0;
        if let Some(event) = injected {
            if fault {
                return self.delivery_fault(event, round);
            }
            self.guest.deliver(&event);
        }
        if let Some(reason) = window_exit(&self.config, self.entry_primary, &self.guest) {
            return Exit { reason, ..Exit::default() };
        }
        if self.guest.activity == Activity::WaitForSipi {
            // Only INIT and SIPI are recognised: the start-up IPI exits (reason 4).
            return Exit { reason: 4, qualification: 0x10, ..Exit::default() };
        }
        let real_nmi_blocking = !self.config.virtual_nmis && self.guest.nmi_blocked;
        if round.host & 1 != 0 && !real_nmi_blocking {
            return self.host_nmi_exit(false);
        }
        if let Some(vector) = self.host_irq_pending {
            return self.host_irq_exit(vector);
        }
        if round.host & 2 != 0 {
            return self.host_irq_exit(round.vector | 0x20);
        }
        if self.guest.activity != Activity::Active {
            // Nothing wakes the guest but the host's timer.
            return self.host_irq_exit(HOST_TIMER_VECTOR);
        }
        self.step(round, fault)
    }

    /// One guest instruction, then the instruction that exits (CPUID) unless the first one
    /// already exited. Blocking by STI or MOV SS from the first is still in effect at the exit.
    fn step(&mut self, round: Round, fault: bool) -> Exit {
        let cpuid = Exit { reason: 10, length: 2, ..Exit::default() };
        let (was_sti, was_mov_ss) = (self.guest.sti, self.guest.mov_ss);
        self.guest.sti = false;
        self.guest.mov_ss = false;
        let protected = self.config.protected_mode;
        match round.step % 12 {
            1 => {
                self.guest.sti = !self.guest.interrupts_enabled && !was_sti;
                self.guest.interrupts_enabled = true;
            }
            2 => self.guest.interrupts_enabled = false,
            3 => self.guest.mov_ss = !was_mov_ss,
            4 => {
                let _ = self.guest.iret(&self.config);
            }
            5 if self.guest.depth() == 0 => {
                // The idle idiom STI; HLT, outside handlers (a guest that halts inside its
                // handler never returns from it): IF=1 while halted.
                self.guest.interrupts_enabled = true;
                self.guest.activity = Activity::Hlt;
                return self.host_irq_exit(HOST_TIMER_VECTOR);
            }
            6 => {
                let length = u32::from(round.extra % 15) + 1;
                let event =
                    Event { length, ..Event::new(Kind::SoftwareInterrupt, round.vector | 0x20) };
                if let Some(exit) = self.guest_event(event, fault, round) {
                    return exit;
                }
            }
            7 => {
                let event = match round.extra % 3 {
                    0 => Event { length: 1, ..Event::new(Kind::SoftwareException, 3) },
                    1 => Event { length: 1, ..Event::new(Kind::SoftwareException, 4) },
                    _ => Event { length: 1, ..Event::new(Kind::PrivilegedSoftwareException, 1) },
                };
                if let Some(exit) = self.guest_event(event, fault, round) {
                    return exit;
                }
            }
            8 | 9 => {
                let vector = [6u8, 13, 14, 1, 17, 8][usize::from(round.extra % 6)];
                let error_code = (protected && pushes_error_code(vector))
                    .then_some(u32::from(round.vector) & 0xFFF8);
                let data = match vector {
                    14 => 0xFFFF_8000_0000_0000 | u64::from(round.vector) << 12,
                    1 => 0x4000,
                    _ => 0,
                };
                let event = Event {
                    error_code,
                    nested: self.config.fred && vector != 8 && round.extra & 0x80 != 0,
                    data: if self.config.fred { data } else { 0 },
                    ..Event::new(Kind::HardwareException, vector)
                };
                if round.step % 12 == 9 {
                    // Intercepted by the exception bitmap: an exception exit, no delivery.
                    let bit12 = u32::from(vector == 8 && round.extra & 0x40 != 0) << 12;
                    let info = event.info() & !(1 << 13) | bit12;
                    return Exit {
                        reason: 0,
                        interruption: Some((info, error_code.unwrap_or(0))),
                        ..Exit::default()
                    };
                }
                if let Some(exit) = self.guest_event(event, fault, round) {
                    return exit;
                }
            }
            10 => return self.iret_interrupted(round),
            11 => return Exit { reason: 3, ..Exit::default() },
            _ => {}
        }
        cpuid
    }

    /// IRET starts, unblocks NMIs, and does not complete: an EPT violation, an intercepted
    /// #GP, or a host NMI. The exit reports "NMI unblocking due to IRET" (SDM 28.2.3).
    fn iret_interrupted(&mut self, round: Round) -> Exit {
        let top_is_nmi = self.guest.innermost_is_nmi();
        let unblocks = self.config.virtual_nmis
            && self.guest.nmi_blocked
            && self.guest.depth() > 0
            && (!self.config.fred || top_is_nmi);
        if unblocks {
            self.guest.nmi_blocked = false;
        }
        // With virtual NMIs off the bit is undefined: random.
        let bit12 = if self.config.virtual_nmis { unblocks } else { round.extra & 1 != 0 };
        self.expect_nmi_blocking = unblocks;
        match round.extra % 3 {
            0 => Exit {
                reason: 48,
                qualification: 0x182 | u64::from(bit12) << 12,
                ..Exit::default()
            },
            1 => Exit {
                reason: 0,
                interruption: Some((0x8000_0B0D | u32::from(bit12) << 12, 0)),
                ..Exit::default()
            },
            _ => self.host_nmi_exit(bit12),
        }
    }

    /// The processor's side of the VM exit: exit information and saved guest state.
    fn write_exit(&mut self, exit: &Exit) {
        let vmcs = &mut self.vmcs;
        let _ = vmcs.set_exit_information(field::EXIT_REASON, exit.reason);
        let _ = vmcs.set_exit_information(field::EXIT_QUALIFICATION, exit.qualification);
        // Interruption and IDT-vectoring information are reported when valid; the software
        // VMCS's exit completion must invalidate the previous exit's (SDM 28.2.2-28.2.4).
        if let Some((info, code)) = exit.interruption {
            let _ = vmcs.set_exit_information(field::VM_EXIT_INTERRUPTION_INFO, info);
            let _ = vmcs.set_exit_information(field::VM_EXIT_INTERRUPTION_ERROR_CODE, code);
        } else if self.explicit_invalid {
            let _ = vmcs.set_exit_information(field::VM_EXIT_INTERRUPTION_INFO, 0);
        }
        if exit.vectoring.is_none() && self.explicit_invalid {
            let _ = vmcs.set_exit_information(field::IDT_VECTORING_INFO, 0);
        }
        if let Some(event) = exit.vectoring {
            let _ = vmcs.set_exit_information(field::IDT_VECTORING_INFO, event.info());
            let _ = vmcs.set_exit_information(
                field::IDT_VECTORING_ERROR_CODE,
                event.error_code.unwrap_or(0),
            );
            let _ = vmcs.set_exit_information(field::ORIGINAL_EVENT_DATA, event.data);
        }
        let _ = vmcs.set_exit_information(field::VM_EXIT_INSTRUCTION_LENGTH, exit.length);
        let guest = &self.guest;
        let _ = vmcs.write(field::GUEST_INTERRUPTIBILITY_STATE, guest.interruptibility());
        let _ = vmcs.write(field::GUEST_ACTIVITY_STATE, guest.activity as u32);
        let rflags = 0x2 | u64::from(guest.interrupts_enabled) << 9;
        let _ = vmcs.write(field::GUEST_RFLAGS, rflags);
        // Every VM exit clears the valid bit of the VM-entry interruption information.
        let entry = vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO).unwrap_or(0);
        let _ = vmcs.write(field::VM_ENTRY_INTERRUPTION_INFO, entry & !(1 << 31));
    }

    /// The hypervisor's own injection (an emulation result), through the library's `inject`.
    fn hypervisor_injects(&mut self, round: Round, exit: &Exit) {
        let protected = self.config.protected_mode;
        let mut event = match (round.hypervisor >> 4) & 3 {
            0 => Event::nmi(),
            1 => Event::new(Kind::HardwareException, 6),
            2 => Event {
                error_code: protected.then_some(0),
                ..Event::new(Kind::HardwareException, 13)
            },
            _ => {
                let shortest = u32::from(!self.config.misc_30);
                Event {
                    length: (u32::from(round.extra) % 16).max(shortest),
                    ..Event::new(Kind::SoftwareInterrupt, round.vector | 0x20)
                }
            }
        };
        // Reflect an intercepted exception instead, when the exit is one.
        let reflect = round.hypervisor & 0x40 != 0 && exit.reason == 0 && exit.vectoring.is_none();
        if let Some((info, code)) =
            exit.interruption.filter(|(info, _)| reflect && (info >> 8) & 7 == 3)
        {
            event = Event {
                error_code: (info & (1 << 11) != 0).then_some(code),
                ..Event::new(Kind::HardwareException, info as u8)
            };
        }
        let guest_event = GuestEvent {
            info: InterruptionInfo::from_raw(event.info()),
            error_code: event.error_code.unwrap_or(0),
            instruction_length: event.length,
            event_data: self.config.fred.then_some(event.data),
        };
        let mut vmcs = Logged::new(&mut self.vmcs);
        match inject(&mut vmcs, &guest_event, &self.context) {
            Ok(()) => self.expect_hypervisor = Some(event),
            Err(_) => vmcs.assert_unchanged("inject"),
        }
    }

    /// One exit handled by the hypervisor, through hvkit. `false` ends the sequence (a refused
    /// call after which a real hypervisor would stop).
    fn handle(&mut self, exit: &Exit, round: Round, index: usize) -> bool {
        self.write_exit(exit);
        let token = self.vmcs.complete_exit();
        let options = ExitInfoOptions { original_event_data: self.config.fred };
        let Ok(info) = ExitInfo::read(&self.vmcs, &token, options) else {
            panic!("round {index}: reading the exit information failed")
        };

        // Host side first.
        let mut redelivery = CountingRedelivery::default();
        let result = handle_host_event(&mut redelivery, &info, self.config.acknowledge_on_exit);
        let host_nmi =
            exit.reason == 0 && exit.interruption.is_some_and(|(info, _)| (info >> 8) & 7 == 2);
        assert_eq!(redelivery.nmis, u32::from(host_nmi), "round {index}: host NMI re-delivery");
        if exit.reason == 1 && self.config.acknowledge_on_exit {
            let vector = exit.interruption.map_or(0, |(info, _)| info as u8);
            assert_eq!(redelivery.irqs, 1, "round {index}: acknowledged interrupt re-delivery");
            assert_eq!(redelivery.last_vector, vector);
            assert_eq!(result.map(|(event, _)| event), Ok(HostEvent::AcknowledgedIrq(vector)));
        } else {
            assert_eq!(redelivery.irqs, 0, "round {index}: interrupt re-delivered twice");
            assert!(result.is_ok(), "round {index}: {result:?}");
        }
        if round.host & 0x10 != 0 {
            // A host interrupt arrives between exit and entry: it waits in the APIC and makes
            // the next guest run exit at once.
            self.host_irq_pending = Some(round.vector | 0x30);
        }

        // The hypervisor's own exit handling.
        match exit.reason {
            3 => {
                let _ = self.vmcs.write(field::GUEST_ACTIVITY_STATE, Activity::WaitForSipi as u32);
                let _ = self.vmcs.write(field::GUEST_INTERRUPTIBILITY_STATE, 0);
            }
            4 => {
                let _ = self.vmcs.write(field::GUEST_ACTIVITY_STATE, 0);
            }
            _ => {}
        }
        if round.hypervisor & 0x08 != 0 {
            self.hypervisor_injects(round, exit);
        }

        // Re-injection and NMI-blocking restore.
        let mut vmcs = Logged::new(&mut self.vmcs);
        match reinject_idt_vectoring(&mut vmcs, &info, &self.context) {
            Ok(_) => {}
            Err(error) => {
                vmcs.assert_unchanged("reinject_idt_vectoring");
                assert!(
                    matches!(
                        error,
                        InjectError::AlreadyPending { .. }
                            | InjectError::NmiBlockingWithNmiPending { .. }
                    ),
                    "round {index}: re-injection of an event the processor was delivering \
                     refused: {error:?}"
                );
                return false;
            }
        }

        // Events the guest is owed.
        let pending_nmi = InterruptionInfo::from_raw(
            self.vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO).unwrap_or(0),
        );
        let blocked = self.vmcs.read(field::GUEST_INTERRUPTIBILITY_STATE).unwrap_or(0);
        let in_service =
            blocked & blocking::NMI != 0 || (pending_nmi.is_valid() && pending_nmi.is_nmi());
        for _ in 0..(round.hypervisor & 3) {
            let _ = self.queue.queue_nmi();
            self.owed_nmis = owed_nmis_after_request(self.owed_nmis, in_service);
        }
        if in_service {
            // Latching holds at most one beside the one in service.
            self.owed_nmis = self.owed_nmis.min(1);
        }
        if round.hypervisor & 4 != 0 {
            let vector = round.vector.max(32);
            self.queue.queue_irq(vector);
            self.owed_irqs.insert(vector);
        }

        let queue_before = self.queue;
        let mut vmcs = Logged::new(&mut self.vmcs);
        if let Err(error) = self.queue.prepare_entry(&mut vmcs, &self.context) {
            vmcs.assert_unchanged("prepare_entry");
            assert_eq!(queue_before, self.queue, "prepare_entry failed but changed the queue");
            panic!(
                "round {index}: prepare_entry failed where it should defer: {error:?} \
                 (activity {:?})",
                self.vmcs.read(field::GUEST_ACTIVITY_STATE)
            );
        }
        self.vmcs.enter(token);
        true
    }
}

/// Rounds of fuzz-driven exits at most.
const MAX_ROUNDS: usize = 32;

/// The exit-sequence target: the model against hvkit over a fuzz-chosen configuration and a
/// long sequence of exits, then a cooperative guest to check liveness. The library is told
/// exactly whether the modelled processor blocks NMIs after STI.
pub fn run(data: &[u8]) {
    run_with(data, false, true);
}

/// As [`run`], but bit 1 of the second byte may also tell the library that STI blocks NMIs on
/// a processor that does not (the portable `EntryCapabilities::STRICT` setting): an open
/// finding, see `tests/model_defects.rs`.
pub fn run_with_portable_sti_setting(data: &[u8]) {
    run_with(data, true, true);
}

/// What a drain round reads and changes besides the VMCS (the configuration and the injection
/// context stay as they are): small, copied and compared every round.
#[derive(Clone, Copy)]
struct Bookkeeping {
    queue: GuestEventQueue,
    guest: Guest,
    owed_nmis: u32,
    owed_irqs: VectorSet,
    expect_reinjection: Option<Event>,
    expect_hypervisor: Option<Event>,
    expect_nmi_blocking: bool,
    host_irq_pending: Option<u8>,
    entry_primary: u32,
}

impl Bookkeeping {
    /// Equal in everything a later round can read: the guest's handler frames above its depth
    /// are dead (overwritten before they are read again), so they are not compared.
    fn same_as(&self, other: &Self) -> bool {
        let (a, b) = (&self.guest, &other.guest);
        let same_guest =
            (a.interrupts_enabled, a.sti, a.mov_ss, a.nmi_blocked, a.activity, a.depth)
                == (b.interrupts_enabled, b.sti, b.mov_ss, b.nmi_blocked, b.activity, b.depth)
                && a.frames.get(..a.depth) == b.frames.get(..b.depth);
        same_guest
            && (self.queue, self.owed_nmis, self.owed_irqs, self.expect_reinjection)
                == (other.queue, other.owed_nmis, other.owed_irqs, other.expect_reinjection)
            && (self.expect_hypervisor, self.expect_nmi_blocking, self.host_irq_pending)
                == (other.expect_hypervisor, other.expect_nmi_blocking, other.host_irq_pending)
            && self.entry_primary == other.entry_primary
    }
}

impl Machine {
    fn bookkeeping(&self) -> Bookkeeping {
        Bookkeeping {
            queue: self.queue,
            guest: self.guest,
            owed_nmis: self.owed_nmis,
            owed_irqs: self.owed_irqs,
            expect_reinjection: self.expect_reinjection,
            expect_hypervisor: self.expect_hypervisor,
            expect_nmi_blocking: self.expect_nmi_blocking,
            host_irq_pending: self.host_irq_pending,
            entry_primary: self.entry_primary,
        }
    }
}

/// Runs one input; returns the number of drain rounds run. With `stop_at_fixed_point`, the
/// drain stops once a round leaves the whole state as it found it: no input is left, so each
/// round is a function of the state alone and every later round would repeat that one (the
/// same entries, exits and checks, the same outcome, the same final state) up to the bound.
/// About two inputs in five end in such a loop (virtual NMIs off, an NMI owed that blocking by
/// NMI holds off for good), which without this check spent half of all rounds repeating it.
/// The VMCS is copied and compared only once the rest has repeated.
fn run_with(data: &[u8], portable_sti_setting: bool, stop_at_fixed_point: bool) -> usize {
    let mut input = Input { data, position: 0 };
    let (low, high) = (input.byte(), input.byte());
    // Second byte: bit 0 the processor blocks NMIs after STI, bit 1 the portable STI
    // setting, bit 2 explicit invalid exit fields (SGX stays off: the guest never enters an
    // enclave here).
    let config = Config::from_bits(u16::from(low) | u16::from(high & 1) << 8);
    let portable = portable_sti_setting && high & 0x2 != 0;
    let mut machine = Machine::new(config, portable, high & 0x4 != 0);
    let mut index = 0;
    while index < MAX_ROUNDS && !input.exhausted() {
        let round = Round {
            step: input.byte(),
            host: input.byte(),
            hypervisor: input.byte(),
            vector: input.byte(),
            extra: input.byte(),
        };
        let injected = machine.enter(index);
        let exit = machine.run(injected, round);
        if !machine.handle(&exit, round, index) {
            return 0;
        }
        index += 1;
    }
    // Drain: no host events, no requests; the guest returns from its handlers and keeps IF=1.
    // Bound: a few entries per handler to return from and per owed event.
    let owed = machine.owed_nmis + machine.owed_irqs.len() + 2;
    let drain_rounds = 16 + 2 * machine.guest.depth() + 4 * owed as usize;
    let mut previous: Option<Bookkeeping> = None;
    let mut vmcs_snapshot: Option<SoftVmcs> = None;
    let mut drained = 0;
    for drain in 0..drain_rounds {
        let injected = machine.enter(index + drain);
        if machine.nothing_owed() && injected.is_none() {
            break;
        }
        drained += 1;
        let guest = &machine.guest;
        let step = if guest.depth() > 0 {
            4
        } else if !guest.interrupts_enabled {
            1
        } else {
            0
        };
        let round = Round { step, ..Round::default() };
        let exit = machine.run(injected, round);
        let _ = machine.handle(&exit, round, index + drain);
        if stop_at_fixed_point {
            let now = machine.bookkeeping();
            if previous.is_some_and(|previous| previous.same_as(&now)) {
                // `vmcs_snapshot` is the previous round's VMCS when the round before it
                // repeated too.
                if vmcs_snapshot.as_ref() == Some(&machine.vmcs) {
                    break;
                }
                vmcs_snapshot = Some(machine.vmcs.clone());
            } else {
                vmcs_snapshot = None;
            }
            previous = Some(now);
        }
    }
    // With virtual NMIs off and NMI exiting on, the guest's blocking by NMI outlasts its IRET
    // (SDM 26.3 "IRET", 26.7.1): from then on no NMI can be injected under this reading, and
    // the model does not hold the library to NMI liveness.
    if !config.virtual_nmis && machine.guest.nmi_blocked {
        machine.owed_nmis = 0;
    }
    assert!(
        machine.nothing_owed(),
        "liveness: after {drain_rounds} entries with a cooperative guest still owed: {} NMIs, \
         interrupts {:?}, re-injection {:?} ({config:?}, library queue {:?}, guest {:?})",
        machine.owed_nmis,
        machine.owed_irqs,
        machine.expect_reinjection,
        machine.queue,
        machine.guest,
    );
    if machine.config.virtual_nmis || !machine.guest.nmi_blocked {
        assert_eq!(machine.queue.pending_nmis(), 0, "the library still owes NMIs the model merged");
    }
    assert_eq!(machine.queue.highest_irq(), None, "the library still owes an interrupt");
    drained
}

#[cfg(test)]
mod logged_tests {
    use super::*;

    #[test]
    #[should_panic(expected = "changed GUEST_INTERRUPTIBILITY_STATE")]
    fn error_path_check_sees_a_field_the_call_changed() {
        let mut vmcs = SoftVmcs::new();
        let mut logged = Logged::new(&mut vmcs);
        let _ = logged.write(field::GUEST_INTERRUPTIBILITY_STATE, 8);
        logged.assert_unchanged("call");
    }

    #[test]
    #[should_panic(expected = "changed GUEST_RFLAGS")]
    fn error_path_check_compares_with_the_value_before_the_first_write() {
        let mut vmcs = SoftVmcs::new();
        let _ = vmcs.write(field::GUEST_RFLAGS, 0x202);
        let mut logged = Logged::new(&mut vmcs);
        let _ = logged.write(field::GUEST_RFLAGS, 0x2);
        let _ = logged.write(field::GUEST_RFLAGS, 0x46);
        logged.assert_unchanged("call");
    }

    #[test]
    #[should_panic(expected = "changed the VM-instruction error field")]
    fn error_path_check_sees_a_failed_write_that_set_the_instruction_error() {
        let mut vmcs = SoftVmcs::new();
        let mut logged = Logged::new(&mut vmcs);
        let _ = logged.write_raw(field::EXIT_REASON.encoding(), 1);
        logged.assert_unchanged("call");
    }

    #[test]
    fn error_path_check_accepts_fields_written_back_to_their_value() {
        let mut vmcs = SoftVmcs::new();
        let _ = vmcs.write(field::GUEST_RFLAGS, 0x202);
        let mut logged = Logged::new(&mut vmcs);
        let _ = logged.write(field::GUEST_RFLAGS, 0x2);
        let _ = logged.write(field::GUEST_RFLAGS, 0x202);
        let _ = logged.write(field::GUEST_ACTIVITY_STATE, 0);
        logged.assert_unchanged("call");
        assert_eq!(logged.len, 3);
    }
}

#[cfg(test)]
mod drain_tests {
    use super::*;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    fn outcome(data: &[u8], stop_at_fixed_point: bool) -> Result<usize, String> {
        catch_unwind(AssertUnwindSafe(|| run_with(data, false, stop_at_fixed_point))).map_err(
            |panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            },
        )
    }

    /// Stopping the drain at a fixed point is a speed-up only: on every input the run passes
    /// or fails exactly as with the drain run to its bound, in no more rounds; and inputs that
    /// reach the steady state (virtual NMIs off, an NMI owed and held off) stop early.
    #[test]
    fn drain_stopped_at_a_fixed_point_gives_the_same_verdict_in_fewer_rounds() {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let mut state = 0x5DEE_CE66_D1CE_4E5Bu64;
        let mut shortened = 0;
        for _ in 0..3000 {
            let length = 2 + (state % 120) as usize;
            let data = crate::pseudo_random_bytes(&mut state, length);
            let (fast, full) = (outcome(&data, true), outcome(&data, false));
            match (&fast, &full) {
                (Ok(fast_rounds), Ok(full_rounds)) => {
                    assert!(fast_rounds <= full_rounds, "{data:?}");
                    shortened += usize::from(fast_rounds < full_rounds);
                }
                (Err(fast), Err(full)) => assert_eq!(fast, full, "{data:?}"),
                _ => panic!("verdicts differ for {data:?}: {fast:?} vs {full:?}"),
            }
        }
        std::panic::set_hook(hook);
        assert!(shortened > 100, "only {shortened} inputs reached a fixed point");
    }
}
