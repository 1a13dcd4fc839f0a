//! The exit-time entry point: the first thing an exit handler calls.
//!
//! Between the VM exit and [`handle_host_event`] nothing may run that can fault, trap, execute
//! IRET or enable interrupts: an IRET (from any exception handler) would unblock NMIs while the
//! host NMI is still undelivered, and enabling interrupts first would let interrupts overtake
//! the NMI (a VM exit caused by an NMI leaves NMIs blocked until the next IRET, SDM Vol. 3C
//! chapter "VM Exits"; Linux KVM commit 11df586d774f). Reading the exit information with VMREAD
//! is fine. The order is: host NMI first, then the acknowledged
//! interrupt, then guest-side work.
//!
//! Both functions need only the first phase of the exit information
//! ([`ExitHead`]: exit reason and VM-exit interruption information), so a handler can re-deliver
//! after two VMREADs and read the rest ([`ExitHead::complete`]) afterwards; a full
//! [`ExitInfo`](hvkit_vmx_core::exit::ExitInfo) is accepted too.
#![forbid(unsafe_code)]

use crate::error::RedeliveryError;
use crate::strategy::{IrqDelivery, Redeliver};
use core::fmt;
use hvkit_vmx_core::event::InterruptionType;
use hvkit_vmx_core::exit::{BasicExitReason, ExitHead};
use hvkit_vmx_core::nmi_source::NmiSourceBitmap;

/// The host event a VM exit carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HostEvent {
    /// No host event (the exit was about the guest).
    None,
    /// A host NMI consumed by the exit (reason 0, interruption type NMI).
    Nmi,
    /// An external interrupt acknowledged on exit: `vector` is in service at the local APIC.
    AcknowledgedIrq(u8),
    /// An external-interrupt exit without "acknowledge interrupt on exit": the interrupt is
    /// still pending in the APIC and is taken when the host enables interrupts.
    PendingIrq,
}

/// An exit whose information does not fit the controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum HostEventError {
    /// External-interrupt exit with "acknowledge interrupt on exit" set but the exit
    /// interruption information not valid: hardware always reports the vector, so the
    /// interrupt was not acknowledged and is still pending in the APIC (nothing is lost;
    /// enabling interrupts delivers it).
    AcknowledgedWithoutVector {
        /// The raw interruption information.
        info: u32,
    },
    /// Re-delivery failed; see [`RedeliveryError::state`].
    Redelivery {
        /// What was being re-delivered.
        event: HostEvent,
        /// The failure.
        error: RedeliveryError,
    },
}

impl fmt::Display for HostEventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AcknowledgedWithoutVector { info } => write!(
                f,
                "external-interrupt exit with acknowledge-on-exit but invalid interruption info {info:#x}; the interrupt is still pending in the APIC"
            ),
            Self::Redelivery { event, error } => write!(f, "re-delivering {event:?}: {error}"),
        }
    }
}

impl core::error::Error for HostEventError {}

/// Decides which host event an exit carries (pure; no side effects). `info` is an
/// [`ExitHead`] or a `&ExitInfo`.
#[inline]
pub fn classify<'exit>(
    info: impl Into<ExitHead<'exit>>,
    acknowledge_on_exit: bool,
) -> Result<HostEvent, HostEventError> {
    let info: ExitHead<'exit> = info.into();
    if info.reason.is_entry_failure() {
        // The guest never ran; nothing was consumed.
        return Ok(HostEvent::None);
    }
    let interruption = info.interruption_info;
    // Compare the number, not the decoded enum: one compare on the hot path.
    const EXCEPTION_OR_NMI: u16 = BasicExitReason::ExceptionOrNmi.number();
    const EXTERNAL_INTERRUPT: u16 = BasicExitReason::ExternalInterrupt.number();
    match info.reason.basic_number() {
        EXCEPTION_OR_NMI
            if interruption.is_valid() && interruption.event_type() == InterruptionType::Nmi =>
        {
            Ok(HostEvent::Nmi)
        }
        EXTERNAL_INTERRUPT if !acknowledge_on_exit => Ok(HostEvent::PendingIrq),
        EXTERNAL_INTERRUPT if interruption.is_valid() => {
            Ok(HostEvent::AcknowledgedIrq(interruption.vector()))
        }
        EXTERNAL_INTERRUPT => {
            Err(HostEventError::AcknowledgedWithoutVector { info: interruption.raw() })
        }
        _ => Ok(HostEvent::None),
    }
}

/// Re-delivers the host event of this exit (at most one per exit: an exit is caused either by an
/// NMI or by an interrupt). Call it first in the exit handler. `info` is an [`ExitHead`] (the
/// first phase of the exit read, enough for this) or a `&ExitInfo`.
///
/// ```
/// use hvkit_nmi_reinject::{
///     HostEvent, IrqDelivery, Redeliver, RedeliveryError, handle_host_event,
/// };
/// use hvkit_vmx_core::exit::ExitHead;
/// use hvkit_vmx_core::vmcs::SoftVmcs;
///
/// /// A stand-in for `IdtDirectCall` / `FredDirectCall` / `SelfNmi`.
/// #[derive(Default)]
/// struct Counting { nmis: u32, irqs: u32 }
/// impl Redeliver for Counting {
///     fn redeliver_nmi(&mut self) -> Result<(), RedeliveryError> {
///         self.nmis += 1;
///         Ok(())
///     }
///     fn redeliver_irq(&mut self, _vector: u8) -> Result<IrqDelivery, RedeliveryError> {
///         self.irqs += 1;
///         Ok(IrqDelivery::Handled)
///     }
/// }
///
/// let mut vmcs = SoftVmcs::new();
/// let exit = vmcs.complete_exit();
/// let mut host = Counting::default();
/// // An external-interrupt exit (reason 1) that acknowledged vector 0x41.
/// let head = ExitHead::from_parts(&exit, 1, 0x8000_0041);
/// let (event, delivery) = handle_host_event(&mut host, head, true)?;
/// assert_eq!(event, HostEvent::AcknowledgedIrq(0x41));
/// assert_eq!(delivery, Some(IrqDelivery::Handled));
/// assert_eq!((host.nmis, host.irqs), (0, 1));
/// # Ok::<(), hvkit_nmi_reinject::ExitError>(())
/// ```
#[inline]
pub fn handle_host_event<'exit, R: Redeliver>(
    strategy: &mut R,
    info: impl Into<ExitHead<'exit>>,
    acknowledge_on_exit: bool,
) -> Result<(HostEvent, Option<IrqDelivery>), HostEventError> {
    let event = classify(info, acknowledge_on_exit)?;
    match event {
        HostEvent::Nmi => {
            strategy
                .redeliver_nmi()
                .map_err(|error| HostEventError::Redelivery { event, error })?;
            Ok((event, None))
        }
        HostEvent::AcknowledgedIrq(vector) => {
            let delivery = strategy
                .redeliver_irq(vector)
                .map_err(|error| HostEventError::Redelivery { event, error })?;
            Ok((event, Some(delivery)))
        }
        HostEvent::None | HostEvent::PendingIrq => Ok((event, None)),
    }
}

/// As [`handle_host_event`], and an NMI is re-delivered with `sources`, its NMI-source bitmap
/// (CPUID.(7,1):EAX\[20\]: read it from the exit qualification of the NMI exit with
/// `NmiSourceBitmap::from_exit_qualification`; see
/// [`Redeliver::redeliver_nmi_with_sources`] for what each strategy does with it).
#[inline]
pub fn handle_host_event_with_nmi_sources<'exit, R: Redeliver>(
    strategy: &mut R,
    info: impl Into<ExitHead<'exit>>,
    acknowledge_on_exit: bool,
    sources: NmiSourceBitmap,
) -> Result<(HostEvent, Option<IrqDelivery>), HostEventError> {
    handle_host_event(&mut WithSources { strategy, sources }, info, acknowledge_on_exit)
}

/// A strategy whose NMIs carry `sources`.
struct WithSources<'a, R> {
    strategy: &'a mut R,
    sources: NmiSourceBitmap,
}

impl<R: Redeliver> Redeliver for WithSources<'_, R> {
    #[inline(always)]
    fn redeliver_nmi(&mut self) -> Result<(), RedeliveryError> {
        self.strategy.redeliver_nmi_with_sources(self.sources)
    }

    #[inline(always)]
    fn redeliver_irq(&mut self, vector: u8) -> Result<IrqDelivery, RedeliveryError> {
        self.strategy.redeliver_irq(vector)
    }
}
