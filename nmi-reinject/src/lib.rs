//! Re-deliver host NMIs and acknowledged interrupts after VM exits, exactly once, and re-inject
//! guest events.
//!
//! # The problem
//!
//! A host NMI that arrives while a guest runs (with NMI exiting) causes a VM exit instead of
//! running the host's NMI handler: the exit *consumes* the NMI and NMIs stay blocked until the
//! next IRET (IDT) or NMI-marked ERETS (FRED). An external interrupt with "acknowledge interrupt
//! on exit" is already acknowledged at the local APIC: only the hypervisor can dispatch it and
//! its handler's EOI. Every hypervisor must re-deliver both to its own handlers, exactly once,
//! without unblocking NMIs early.
//!
//! # Two strategies behind one trait
//!
//! - **Direct call** ([`IdtDirectCall`], [`FredDirectCall`]; what Linux KVM does): build the
//!   frame the CPU would have pushed and call the host's entry, which returns with IRETQ or
//!   ERETS. Synchronous: when the call returns, the handler has run and NMIs are unblocked.
//!   Needs the host's handler addresses (a dedicated non-IST NMI entry on IDT hosts). Use it
//!   when you control the host's entry code.
//! - **Self-NMI** ([`SelfNmi`]; what Xen did): send an NMI to the own APIC, unblock NMIs
//!   (IRET-to-self / ERETS-to-self), and wait — bounded — until the host handler's counter moved.
//!   Needs only the APIC and a counter, so it works with a host kernel whose entry points you
//!   cannot call; but delivery is asynchronous (hence the bounded confirmation), NMIs may merge
//!   or be handled out of order, and interrupts are re-queued as self-IPIs (edge-triggered only:
//!   level-triggered ones are refused), which loses their original priority order.
//!
//! Both implement [`Redeliver`], whose contract is: `Ok` only after the handler ran exactly
//! once (or, for a re-queued interrupt, is guaranteed to run once when interrupts are enabled);
//! `Err` says whether the event is still owed or in flight ([`RedeliveryError::state`]).
//!
//! # At every exit
//!
//! 1. [`handle_host_event`] first — nothing that can fault, trap, IRET or enable interrupts may
//!    run before it (see [`exit_time`]).
//! 2. Handle the exit.
//! 3. [`reinject_idt_vectoring`]: restore blocking-by-NMI after "NMI unblocking due to IRET" and
//!    re-inject an event whose delivery the exit interrupted.
//! 4. [`GuestEventQueue::prepare_entry`]: inject owed guest events or request windows.
//!
//! Every injection runs hvkit-vmx-core's VM-entry validator first.
//!
//! # Example: the exit-time decision
//!
//! ```
//! use hvkit_nmi_reinject::{exit_time::{classify, HostEvent}};
//! use hvkit_vmx_core::{exit::{ExitInfo, ExitInfoParts}, vmcs::SoftVmcs};
//!
//! let mut vmcs = SoftVmcs::new();
//! let exit = vmcs.complete_exit();
//! let nmi_exit = ExitInfo::from_parts(&exit, ExitInfoParts {
//!     reason: 0,
//!     interruption_info: 0x8000_0202,
//!     ..ExitInfoParts::default()
//! });
//! assert_eq!(classify(&nmi_exit, true), Ok(HostEvent::Nmi));
//! ```
//!
//! # Example: a complete exit handler
//!
//! A per-vCPU struct that owns its VMCS, and the exit loop with the four steps above; every
//! step's error goes through `?` into [`ExitError`]. The only `unsafe` is the VM entry itself
//! (setting up VMX operation and the VMCS region is shown in hvkit-vmx-core's "Hardware
//! setup").
//!
//! ```no_run
//! use hvkit_nmi_reinject::{
//!     ExitError, GuestEventQueue, InjectionContext, Redeliver, handle_host_event,
//!     reinject_idt_vectoring,
//! };
//! use hvkit_vmx_core::caps::VmxCapabilities;
//! use hvkit_vmx_core::controls::{AdjustedControls, ExitControls};
//! use hvkit_vmx_core::exit::{BasicExitReason, ExitHead, ExitInfoOptions, VmExit};
//! use hvkit_vmx_core::field;
//! use hvkit_vmx_core::vmcs::{ClearVmcs, GuestRegisters, VmcsAccess, Vmcs, VmxRoot};
//!
//! /// One virtual CPU: its VMCS (launch state included), registers and owed guest events.
//! struct Vcpu {
//!     vmcs: Vmcs,
//!     registers: GuestRegisters,
//!     events: GuestEventQueue,
//!     context: InjectionContext,
//!     acknowledge_on_exit: bool,
//!     exit_options: ExitInfoOptions,
//!     /// The exit being handled (`None` before the first entry).
//!     exit: Option<VmExit>,
//! }
//!
//! impl Vcpu {
//!     /// Takes a VMCS region into use on this CPU and writes the adjusted controls (host and
//!     /// guest state are written the same way, through `VmcsAccess::write`).
//!     fn new(
//!         root: &mut VmxRoot,
//!         region: ClearVmcs,
//!         caps: &VmxCapabilities,
//!         controls: &AdjustedControls,
//!     ) -> Result<Self, ExitError> {
//!         let mut vmcs = root.adopt(region)?; // VMCLEAR
//!         controls.write(&mut root.activate(&mut vmcs)?)?; // VMPTRLD, VMWRITEs
//!         Ok(Self {
//!             vmcs,
//!             registers: GuestRegisters::default(),
//!             events: GuestEventQueue::new(),
//!             context: InjectionContext::from_capabilities(caps, controls, false),
//!             acknowledge_on_exit: controls
//!                 .exit
//!                 .contains(ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT),
//!             exit_options: ExitInfoOptions {
//!                 original_event_data: caps.basic.nested_exception(),
//!             },
//!             exit: None,
//!         })
//!     }
//!
//!     /// Runs the guest until it executes HLT. `host` re-delivers host NMIs and interrupts
//!     /// (an `IdtDirectCall`, `FredDirectCall` or `SelfNmi`).
//!     fn run_until_hlt(
//!         &mut self,
//!         root: &mut VmxRoot,
//!         host: &mut impl Redeliver,
//!     ) -> Result<(), ExitError> {
//!         loop {
//!             let mut vmcs = root.activate(&mut self.vmcs)?;
//!             // SAFETY: `new` and the caller's setup wrote a valid host and guest state for
//!             // this CPU, interrupts are disabled, and EPT confines the guest.
//!             let exit = unsafe { vmcs.run(&mut self.registers, self.exit.take()) }?;
//!
//!             // 1. The host event first: two VMREADs, then re-delivery (nothing before it may
//!             //    fault, IRET or enable interrupts).
//!             let head = ExitHead::read(&vmcs, &exit)?;
//!             handle_host_event(host, head, self.acknowledge_on_exit)?;
//!
//!             // 2. The rest of the exit information, then the exit itself.
//!             let info = head.complete(&vmcs, self.exit_options)?;
//!             let halted = info.reason.basic() == BasicExitReason::Hlt;
//!             if halted {
//!                 let rip = vmcs.read(field::GUEST_RIP)?;
//!                 vmcs.write(field::GUEST_RIP, rip + u64::from(info.instruction_length))?;
//!             }
//!
//!             // 3. Re-inject an event whose delivery the exit interrupted, and restore
//!             //    blocking by NMI after "NMI unblocking due to IRET".
//!             reinject_idt_vectoring(&mut vmcs, &info, &self.context)?;
//!             // 4. Inject what the guest is owed, or ask for the window to do so.
//!             self.events.prepare_entry(&mut vmcs, &self.context)?;
//!
//!             self.exit = Some(exit); // the next entry ends this exit
//!             if halted {
//!                 return Ok(());
//!             }
//!         }
//!     }
//! }
//! ```
//!
//! On `Err`, [`ExitError::host_event_state`] says whether a host NMI is still in flight
//! (then do not enter the guest again before it was handled, for example with
//! [`SelfNmi::poll_in_flight`]); the VMCS and the queue are as before the failing step.
//!
//! # Features
//!
//! - `defmt`: derives `defmt::Format` for the public types.
//!
//! `#![no_std]`, no allocation; minimum Rust 1.88. The direct-call and unblocking assembly is
//! `x86_64`-only; the IDT direct call and IRET-to-self are tested in user space. The FRED paths
//! are not executed in CI (no FRED hardware or emulator there); they ran in the example
//! hypervisor under an upstream Bochs build with FRED (`wildcat_lake`).
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

pub mod error;
pub mod exit_time;
pub mod guest;
mod idt;
pub mod strategy;

pub use error::{EventState, ExitError, RedeliveryError, Unsupported};
pub use exit_time::{
    HostEvent, HostEventError, classify, handle_host_event, handle_host_event_with_nmi_sources,
};
pub use guest::{
    DebugConditions, EntryDecision, GuestEvent, GuestEventQueue, GuestFixups, InjectError,
    InjectionContext, NmiQueued, ReflectError, ReflectedException, idt_vectoring_event, inject,
    nmi_unblocked_by_iret, reflected_exception, reinject_idt_vectoring,
};
pub use idt::{IdtEntry, InterruptFrame};
pub use strategy::{
    AfterIrqHook, FredDirectCall, FredEretsToSelf, HandlerTable, IdtDirectCall, IretToSelf,
    IrqDelivery, LocalApicPort, NmiSourceSlot, NmiUnblocker, PollingApic, Redeliver, SelfNmi,
};

/// Compile-time check that the types an exit handler logs implement `defmt::Format` (the build
/// with the `defmt` feature fails otherwise).
#[cfg(feature = "defmt")]
const _: () = {
    const fn is_format<T: defmt::Format + ?Sized>() {}
    use hvkit_vmx_core::{caps, controls, event, exit, field, vmcs};
    is_format::<exit::VmExit>();
    is_format::<exit::ExitHead<'static>>();
    is_format::<exit::ExitInfo<'static>>();
    is_format::<exit::ExitInfoParts>();
    is_format::<exit::ExitReason>();
    is_format::<exit::ExitQualification>();
    is_format::<event::InterruptionInfo>();
    is_format::<event::GuestInterruptibility>();
    is_format::<vmcs::GuestRegisters>();
    is_format::<vmcs::Vmcs>();
    is_format::<vmcs::ClearVmcs>();
    is_format::<field::Field<field::U32, field::ReadOnly>>();
    is_format::<caps::VmxCapabilities>();
    is_format::<controls::ControlRequest>();
    is_format::<controls::AdjustedControls>();
    is_format::<hvkit_vmx_core::VmFail>();
    is_format::<hvkit_fred::Frame>();
    is_format::<hvkit_fred::entry::SavedRegisters>();
    is_format::<HostEvent>();
    is_format::<HostEventError>();
    is_format::<RedeliveryError>();
    is_format::<IrqDelivery>();
    is_format::<ExitError>();
    is_format::<GuestEvent>();
    is_format::<GuestEventQueue>();
    is_format::<GuestFixups>();
    is_format::<EntryDecision>();
    is_format::<InjectError>();
    is_format::<ReflectError>();
    is_format::<ReflectedException>();
    is_format::<InjectionContext>();
    is_format::<InterruptFrame>();
    is_format::<IdtEntry>();
};

#[cfg(test)]
mod guest_tests;
#[cfg(test)]
mod tests;
