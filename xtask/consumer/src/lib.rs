//! A per-vCPU exit handler as a user writes it from the packaged crates' documentation: the
//! `Vcpu` owns its VMCS; every step's error goes through `ExitError` with `?`; `unsafe` appears
//! only where the hardware is entered.
#![no_std]
#![forbid(clippy::undocumented_unsafe_blocks)]

use hvkit_nmi_reinject::{
    EntryDecision, ExitError, GuestEventQueue, GuestFixups, HostEvent, InjectionContext,
    IrqDelivery, Redeliver, handle_host_event, reinject_idt_vectoring,
};
use hvkit_vmx_core::exit::{ExitHead, ExitInfoOptions, VmExit};
use hvkit_vmx_core::vmcs::{GuestRegisters, Vmcs, VmcsAccess, VmxRoot};

/// What one exit did.
#[derive(Debug)]
pub struct Handled {
    /// The host event the exit consumed, and how an interrupt was re-delivered.
    pub host_event: (HostEvent, Option<IrqDelivery>),
    /// The basic exit reason.
    pub reason: u16,
    /// What re-injection did.
    pub fixups: GuestFixups,
    /// What the queue decided for the next entry.
    pub decision: EntryDecision,
}

/// The exit sequence on any VMCS (the hardware's current VMCS, or a software VMCS in tests).
pub fn exit_sequence(
    vmcs: &mut impl VmcsAccess,
    exit: &VmExit,
    strategy: &mut impl Redeliver,
    queue: &mut GuestEventQueue,
    context: &InjectionContext,
    acknowledge_on_exit: bool,
) -> Result<Handled, ExitError> {
    let head = ExitHead::read(vmcs, exit)?;
    let host_event = handle_host_event(strategy, head, acknowledge_on_exit)?;
    let info = head.complete(vmcs, ExitInfoOptions::default())?;
    // The VMM would handle the exit here.
    let fixups = reinject_idt_vectoring(vmcs, &info, context)?;
    let decision = queue.prepare_entry(vmcs, context)?;
    Ok(Handled { host_event, reason: info.reason.basic_number(), fixups, decision })
}

/// One virtual CPU, owned by the logical processor that runs it.
pub struct Vcpu {
    /// Its VMCS, with the launch state.
    pub vmcs: Vmcs,
    /// Its registers while it does not run.
    pub registers: GuestRegisters,
    /// Events owed to the guest.
    pub queue: GuestEventQueue,
    /// Derived from the capabilities and the adjusted controls.
    pub context: InjectionContext,
    /// The exit of the last run, consumed by the next entry.
    pub previous: Option<VmExit>,
}

impl Vcpu {
    /// Enters the guest once and handles the exit.
    ///
    /// # Safety
    ///
    /// As for `ActiveVmcs::run`: VMX root operation at CPL 0 with interrupts disabled, and a
    /// VMCS with a complete, valid host and guest state.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn run_once(
        &mut self,
        root: &mut VmxRoot,
        strategy: &mut impl Redeliver,
    ) -> Result<Handled, ExitError> {
        let mut active = root.activate(&mut self.vmcs)?;
        // SAFETY: the caller's contract.
        let exit = unsafe { active.run(&mut self.registers, self.previous.take()) }?;
        let handled =
            exit_sequence(&mut active, &exit, strategy, &mut self.queue, &self.context, true)?;
        self.previous = Some(exit);
        Ok(handled)
    }
}
