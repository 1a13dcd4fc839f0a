//! The exit sequence of `src/lib.rs`, run on a software VMCS with the configuration derived as a
//! user derives it: capability MSRs (recorded from Bochs 2.7 corei7_skylake_x) -> adjusted
//! controls -> injection context. Expected values come from the SDM's encodings (Vol. 3C 25.8.3
//! VM-entry interruption information, 25.9.2 exit interruption information, Appendix C exit
//! reasons), not from the crates.

use hvkit_consumer_check::{Handled, exit_sequence};
use hvkit_nmi_reinject::{
    EntryDecision, ExitError, GuestEventQueue, HostEvent, InjectionContext, IrqDelivery, Redeliver,
    RedeliveryError,
};
use hvkit_vmx_core::caps::recorded::BOCHS_2_7_SKYLAKE_X;
use hvkit_vmx_core::caps::{RecordedMsrs, VmxCapabilities};
use hvkit_vmx_core::controls::{
    ControlRequest, EntryControls, ExitControls, PinBasedControls, adjust,
};
use hvkit_vmx_core::field;
use hvkit_vmx_core::vmcs::{SoftVmcs, VmcsAccess};

/// Records what it was asked to re-deliver.
#[derive(Default)]
struct Recording {
    nmis: u32,
    irqs: Vec<u8>,
}

impl Redeliver for Recording {
    fn redeliver_nmi(&mut self) -> Result<(), RedeliveryError> {
        self.nmis += 1;
        Ok(())
    }

    fn redeliver_irq(&mut self, vector: u8) -> Result<IrqDelivery, RedeliveryError> {
        self.irqs.push(vector);
        Ok(IrqDelivery::Handled)
    }
}

/// A VMCS written as the user's setup writes it, and the context derived from the same
/// capabilities and controls.
fn setup() -> (SoftVmcs, InjectionContext) {
    let caps = VmxCapabilities::read(&RecordedMsrs(BOCHS_2_7_SKYLAKE_X)).expect("capabilities");
    let request = ControlRequest {
        pin: PinBasedControls::EXTERNAL_INTERRUPT_EXITING
            | PinBasedControls::NMI_EXITING
            | PinBasedControls::VIRTUAL_NMIS,
        exit: ExitControls::HOST_ADDRESS_SPACE_SIZE | ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT,
        entry: EntryControls::IA32E_MODE_GUEST,
        ..ControlRequest::default()
    };
    let controls = adjust(&caps, &request).expect("Bochs offers these controls");
    let mut vmcs = SoftVmcs::new();
    controls.write(&mut vmcs).expect("controls");
    // A 64-bit guest with interrupts enabled and nothing blocking.
    vmcs.write(field::GUEST_CR0, 0x8000_0031).unwrap();
    vmcs.write(field::GUEST_RFLAGS, 0x202).unwrap();
    assert!(controls.acknowledges_interrupt_on_exit(), "requested, so the exits below use it");
    (vmcs, InjectionContext::from_capabilities(&caps, &controls, false))
}

fn exit(
    vmcs: &mut SoftVmcs,
    reason: u32,
    interruption: u32,
    vectoring: u32,
    strategy: &mut Recording,
    queue: &mut GuestEventQueue,
    context: &InjectionContext,
) -> Result<Handled, ExitError> {
    vmcs.set_exit_information(field::EXIT_REASON, reason).unwrap();
    vmcs.set_exit_information(field::VM_EXIT_INTERRUPTION_INFO, interruption).unwrap();
    vmcs.set_exit_information(field::IDT_VECTORING_INFO, vectoring).unwrap();
    let token = vmcs.complete_exit();
    let handled = exit_sequence(vmcs, &token, strategy, queue, context, true);
    vmcs.enter(token);
    handled
}

#[test]
fn the_nmi_that_caused_the_exit_is_re_delivered_once_and_nothing_is_injected() {
    let (mut vmcs, context) = setup();
    let (mut strategy, mut queue) = (Recording::default(), GuestEventQueue::new());
    // Exit reason 0 with exit interruption information: valid, type 2 (NMI), vector 2.
    let handled =
        exit(&mut vmcs, 0, 0x8000_0202, 0, &mut strategy, &mut queue, &context).unwrap();
    assert_eq!(handled.host_event.0, HostEvent::Nmi);
    assert_eq!((strategy.nmis, strategy.irqs.len()), (1, 0));
    assert_eq!(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO).unwrap() & 0x8000_0000, 0);
    assert!(matches!(handled.decision, EntryDecision::Idle));
}

#[test]
fn an_interrupt_acknowledged_on_exit_goes_to_the_host_handler_of_its_vector() {
    let (mut vmcs, context) = setup();
    let (mut strategy, mut queue) = (Recording::default(), GuestEventQueue::new());
    // Exit reason 1, interruption information valid, type 0 (external interrupt), vector 0x31.
    let handled =
        exit(&mut vmcs, 1, 0x8000_0031, 0, &mut strategy, &mut queue, &context).unwrap();
    assert_eq!(handled.host_event, (HostEvent::AcknowledgedIrq(0x31), Some(IrqDelivery::Handled)));
    assert_eq!((strategy.nmis, strategy.irqs.as_slice()), (0, &[0x31][..]));
}

#[test]
fn a_guest_interrupt_whose_delivery_the_exit_interrupted_is_injected_again() {
    let (mut vmcs, context) = setup();
    let (mut strategy, mut queue) = (Recording::default(), GuestEventQueue::new());
    // An EPT violation (reason 48) during delivery of guest interrupt 0x41 (IDT-vectoring
    // information valid, type 0).
    let handled =
        exit(&mut vmcs, 48, 0, 0x8000_0041, &mut strategy, &mut queue, &context).unwrap();
    assert_eq!(handled.reason, 48);
    assert!(handled.fixups.reinjected.is_some());
    assert_eq!(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO).unwrap(), 0x8000_0041);
    assert_eq!((strategy.nmis, strategy.irqs.len()), (0, 0), "no host event");
}

#[test]
fn a_queued_virtual_nmi_is_injected_at_the_next_entry() {
    let (mut vmcs, context) = setup();
    let (mut strategy, mut queue) = (Recording::default(), GuestEventQueue::new());
    queue.queue_nmi();
    // CPUID exit (reason 10), nothing blocking NMIs: inject type 2, vector 2.
    let handled = exit(&mut vmcs, 10, 0, 0, &mut strategy, &mut queue, &context).unwrap();
    assert!(matches!(handled.decision, EntryDecision::Injected(_)));
    assert_eq!(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO).unwrap(), 0x8000_0202);
    assert_eq!(queue.pending_nmis(), 0);
}

#[test]
fn an_exit_reason_no_processor_defines_is_handled_without_a_host_event() {
    let (mut vmcs, context) = setup();
    let (mut strategy, mut queue) = (Recording::default(), GuestEventQueue::new());
    let handled = exit(&mut vmcs, 0xFFFF, 0, 0, &mut strategy, &mut queue, &context).unwrap();
    assert_eq!(handled.reason, 0xFFFF);
    assert_eq!(handled.host_event.0, HostEvent::None);
    assert_eq!((strategy.nmis, strategy.irqs.len()), (0, 0));
}
