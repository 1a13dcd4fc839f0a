//! The exit handler to copy: a virtual CPU and the exit sequence in the order the hvkit crates
//! expect (numbered in `Vcpu::run`). The VMM's own part (here scenarios, counters and reports,
//! in `scenarios.rs`) is an [`ExitHandler`].

use hvkit_nmi_reinject::{
    EventState, ExitError, GuestEvent, GuestEventQueue, GuestFixups, HostEvent, HostEventError,
    InjectError, InjectionContext, IrqDelivery, Redeliver, handle_host_event_with_nmi_sources,
    inject, reinject_idt_vectoring,
};
use hvkit_vmx_core::exit::{ExitHead, ExitInfo, ExitInfoOptions, VmExit};
use hvkit_vmx_core::nmi_source::NmiSourceBitmap;
use hvkit_vmx_core::vmcs::VmcsAccess as _;
use hvkit_vmx_core::vmcs::{ActiveVmcs, GuestRegisters, Vmcs, VmxRoot};
use hvkit_vmx_core::{VmFail, field};

/// "Acknowledge interrupt on exit": `vmx::enable` requests it and `controls::adjust` fails
/// without it, so every VMCS here has it (a constant keeps the test off the exit path).
pub const ACKNOWLEDGE_ON_EXIT: bool = true;

/// One virtual CPU. Owned by the logical processor that runs it (a `Vmcs` is `!Send`).
pub struct Vcpu {
    /// The VMCS, with its launch state (VMLAUNCH before the first entry, VMRESUME after).
    pub vmcs: Vmcs,
    /// The guest's general-purpose registers while it is not running.
    pub registers: GuestRegisters,
    /// Events owed to the guest (virtual NMIs, interrupts).
    pub queue: GuestEventQueue,
    /// What the VMCS controls allow injecting, derived once from the capabilities and controls.
    pub context: InjectionContext,
    /// NMI-source reporting (CPUID.(7,1):EAX[20]): NMI exits carry the source bitmap in their
    /// qualification, and re-delivery forwards it.
    pub nmi_sources: bool,
    /// Which optional exit-information fields this processor has.
    pub exit_options: ExitInfoOptions,
}

/// What the VMM decided about one exit.
#[derive(Default)]
pub struct Resume {
    /// Skip the exiting instruction (CPUID, VMCALL, ...): GUEST_RIP += instruction length.
    pub advance_rip: bool,
    /// A guest exception to reflect, injected after any IDT-vectoring re-injection.
    pub reflect: Option<GuestEvent>,
}

/// The VMM's part of exit handling.
pub trait ExitHandler {
    /// How host events are re-delivered.
    type Strategy: Redeliver;
    /// Step 3: the strategy for this exit.
    fn strategy(&mut self) -> &mut Self::Strategy;
    /// A host NMI was left in flight (self-NMI): keep waiting; `false` when it gave up.
    fn settle(&mut self) -> bool;
    /// Step 3 done: the host event's outcome (`exit_tsc` is the TSC right after the exit).
    fn host_event(
        &mut self,
        outcome: Result<(HostEvent, Option<IrqDelivery>), HostEventError>,
        exit_tsc: u64,
    );
    /// Step 5: handles the exit. `Err` stops the vCPU.
    fn handle(
        &mut self,
        vcpu: Guest<'_, '_>,
        info: &ExitInfo<'_>,
        exit: &VmExit,
    ) -> Result<Resume, Fatal>;
    /// Step 6 done: what re-injection did.
    fn fixups(&mut self, fixups: GuestFixups);
    /// Just before the next entry.
    fn entering(&mut self, exit_tsc: u64);
}

/// What the VMM may touch while it handles an exit.
pub struct Guest<'a, 'root> {
    /// The current VMCS.
    pub vmcs: &'a mut ActiveVmcs<'root>,
    /// The guest's registers.
    pub registers: &'a mut GuestRegisters,
    /// Events owed to the guest.
    pub queue: &'a mut GuestEventQueue,
}

/// Why a vCPU stopped: a library step failed (through the one `ExitError`), or the VMM gave up.
#[derive(Debug)]
pub enum Fatal {
    Step(ExitError),
    Vmm(&'static str),
}

/// Each step's error converts into the one `ExitError`, so the sequence uses `?`.
macro_rules! through_exit_error {
    ($($error:ty),*) => {$(
        impl From<$error> for Fatal {
            fn from(error: $error) -> Self {
                Self::Step(ExitError::from(error))
            }
        }
    )*};
}
through_exit_error!(VmFail, HostEventError, InjectError);

impl core::fmt::Display for Fatal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Step(error) => write!(f, "{error}"),
            Self::Vmm(what) => write!(f, "{what}"),
        }
    }
}

impl Vcpu {
    /// Runs the guest until the handler or a VMX instruction stops it. Never inlined: the exit
    /// path's code then does not depend on the caller's.
    #[inline(never)]
    pub fn run(&mut self, root: &mut VmxRoot, handler: &mut impl ExitHandler) -> Fatal {
        let Self { vmcs, registers, queue, context, nmi_sources, exit_options } = self;
        let mut vmcs = match root.activate(vmcs) {
            Ok(active) => active,
            Err(fail) => return fail.into(),
        };
        let mut previous: Option<VmExit> = None;
        loop {
            // 1. Enter (VMLAUNCH or VMRESUME). SAFETY: the VMCS holds a complete host and guest
            // state (vmx::setup_vmcs); interrupts are disabled; EPT confines the guest.
            let exit = match unsafe { vmcs.run(registers, previous.take()) } {
                Ok(exit) => exit,
                Err(fail) => return fail.into(),
            };
            let exit_tsc = crate::cpu::rdtsc();
            // 2. Read only what re-delivery needs; 3. re-deliver the host NMI or interrupt the
            // exit consumed, first, before anything can unblock NMIs or enable interrupts.
            let head = match ExitHead::read(&vmcs, &exit) {
                Ok(head) => head,
                Err(fail) => return fail.into(),
            };
            let sources = if *nmi_sources {
                match vmcs.read(field::EXIT_QUALIFICATION) {
                    Ok(qualification) => NmiSourceBitmap::from_exit_qualification(qualification),
                    Err(fail) => return fail.into(),
                }
            } else {
                NmiSourceBitmap::EMPTY
            };
            let strategy = handler.strategy();
            let outcome =
                handle_host_event_with_nmi_sources(strategy, head, ACKNOWLEDGE_ON_EXIT, sources);
            if let Err(error) = outcome
                && ExitError::from(error).host_event_state() == Some(EventState::InFlight)
                && !handler.settle()
            {
                // Entering the guest now would take NMI exits in a loop.
                return error.into();
            }
            handler.host_event(outcome, exit_tsc);
            // 4-7. Out of line, so the hot path above keeps its registers.
            let guest = Guest { vmcs: &mut vmcs, registers, queue };
            if let Err(fatal) =
                finish_exit(guest, context, *exit_options, &exit, head, exit_tsc, handler)
            {
                return fatal;
            }
            previous = Some(exit);
        }
    }
}

/// Steps 4 to 7: the rest of the exit information; the VMM's handling; re-injection of a guest
/// event whose delivery the exit interrupted; a reflected exception, then what the guest is owed
/// (or the window it waits for).
#[inline(never)]
fn finish_exit(
    guest: Guest<'_, '_>,
    context: &InjectionContext,
    exit_options: ExitInfoOptions,
    exit: &VmExit,
    head: ExitHead<'_>,
    exit_tsc: u64,
    handler: &mut impl ExitHandler,
) -> Result<(), Fatal> {
    let info = head.complete(guest.vmcs, exit_options)?;
    let Guest { vmcs, registers, queue } = guest;
    let resume = handler.handle(Guest { vmcs, registers, queue }, &info, exit)?;
    if resume.advance_rip {
        let rip = vmcs.read(field::GUEST_RIP)?;
        vmcs.write(field::GUEST_RIP, rip + u64::from(info.instruction_length))?;
    }
    handler.fixups(reinject_idt_vectoring(vmcs, &info, context)?);
    if let Some(event) = resume.reflect {
        inject(vmcs, &event, context)?;
    }
    queue.prepare_entry(vmcs, context)?;
    handler.entering(exit_tsc);
    Ok(())
}
