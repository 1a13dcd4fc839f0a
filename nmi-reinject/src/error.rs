//! Errors, each saying what state the event is in, and [`ExitError`], the one error an exit
//! handler's `?` converts every step's error into.
#![forbid(unsafe_code)]

use crate::exit_time::HostEventError;
use crate::guest::{InjectError, ReflectError};
use core::fmt;
use hvkit_vmx_core::VmFail;
use hvkit_vmx_core::entry_check::EntryCheckError;
use hvkit_vmx_core::event::InterruptionInfoError;

/// Where an event stands after a failed re-delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EventState {
    /// Nothing was done: the event is still owed to the host, exactly as before the call.
    NotDelivered,
    /// The event was handed to the hardware (a self-NMI IPI went out, or the ICR write
    /// happened) but its handler has not been seen to run: it will run once NMIs are unblocked
    /// (or interrupts enabled). Do not send it again; do not re-enter the guest while an NMI is
    /// in this state (the guest would take NMI exits in a loop).
    InFlight,
}

/// Why a re-delivery did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RedeliveryError {
    /// This strategy cannot deliver the event (state: [`EventState::NotDelivered`]).
    Unsupported(Unsupported),
    /// The local APIC refused or did not accept the IPI.
    Apic {
        /// The APIC error.
        error: hvkit_apic::IpiError,
        /// Whether the IPI left (see [`hvkit_apic::IpiError::Timeout`]).
        state: EventState,
    },
    /// The self-NMI was sent and NMIs unblocked, but the handled-counter did not move within
    /// the bound (state: [`EventState::InFlight`]).
    NmiNotHandled {
        /// Polls made.
        polls: u32,
    },
}

/// What a strategy cannot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Unsupported {
    /// The vector has no handler in the table the strategy was given.
    NoHandler {
        /// The vector.
        vector: u8,
    },
    /// Vectors 0-31 are exceptions, not interrupts acknowledged on exit.
    ExceptionVector {
        /// The vector.
        vector: u8,
    },
    /// A level-triggered interrupt cannot be re-sent as a self-IPI: EOI would end the level
    /// and the device would have to raise it again (TMR bit set).
    LevelTriggered {
        /// The vector.
        vector: u8,
    },
}

impl RedeliveryError {
    /// Where the event stands.
    pub const fn state(&self) -> EventState {
        match self {
            Self::Unsupported(_) => EventState::NotDelivered,
            Self::Apic { state, .. } => *state,
            Self::NmiNotHandled { .. } => EventState::InFlight,
        }
    }
}

impl fmt::Display for RedeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(Unsupported::NoHandler { vector }) => {
                write!(f, "no host handler registered for vector {vector}; event not delivered")
            }
            Self::Unsupported(Unsupported::ExceptionVector { vector }) => {
                write!(
                    f,
                    "vector {vector} is an exception vector, not an interrupt; event not delivered"
                )
            }
            Self::Unsupported(Unsupported::LevelTriggered { vector }) => write!(
                f,
                "vector {vector} is level-triggered (TMR set): self-IPI re-delivery unsupported; no EOI sent"
            ),
            Self::Apic { error, state } => write!(f, "local APIC: {error} (event {state:?})"),
            Self::NmiNotHandled { polls } => write!(
                f,
                "self-NMI sent and NMIs unblocked, but the host NMI handler did not run within {polls} polls; the NMI is still in flight"
            ),
        }
    }
}

impl core::error::Error for RedeliveryError {}

pub(crate) fn apic_error(error: hvkit_apic::IpiError) -> RedeliveryError {
    let state = match error {
        hvkit_apic::IpiError::Timeout { sent: true, .. } => EventState::InFlight,
        _ => EventState::NotDelivered,
    };
    RedeliveryError::Apic { error, state }
}

/// One error for a whole exit handler: every fallible step of the exit sequence converts into it
/// with `?`.
///
/// | Step | Its error | Variant |
/// |---|---|---|
/// | `ActiveVmcs::run`, `ExitHead::read`, `ExitHead::complete`, any VMREAD/VMWRITE | [`VmFail`] | [`Vmcs`](Self::Vmcs) |
/// | [`handle_host_event`](crate::handle_host_event) | [`HostEventError`] | [`HostEvent`](Self::HostEvent) |
/// | [`SelfNmi::poll_in_flight`](crate::SelfNmi::poll_in_flight), a direct [`Redeliver`](crate::Redeliver) call | [`RedeliveryError`] | [`Redelivery`](Self::Redelivery) |
/// | [`reinject_idt_vectoring`](crate::reinject_idt_vectoring), [`inject`](crate::inject), [`GuestEventQueue::prepare_entry`](crate::GuestEventQueue::prepare_entry) | [`InjectError`] | [`Inject`](Self::Inject) |
/// | [`reflected_exception`](crate::reflected_exception) | [`ReflectError`] | [`Reflect`](Self::Reflect) |
/// | `entry_check::check` (the VM-entry event checks) | [`EntryCheckError`] | [`EntryCheck`](Self::EntryCheck) |
/// | `InterruptionInfo::try_new` | [`InterruptionInfoError`] | [`InterruptionInfo`](Self::InterruptionInfo) |
///
/// Each step's error is kept whole (an [`InjectError::Vmcs`] stays inside
/// [`Inject`](Self::Inject)), so the variant says which step failed.
/// [`host_event_state`](Self::host_event_state) answers the question an exit handler has after
/// a failure: is a host NMI or interrupt still owed or in flight?
///
/// ```
/// use hvkit_nmi_reinject::{ExitError, InjectError, reflected_exception};
/// use hvkit_vmx_core::exit::{ExitInfo, ExitInfoParts};
/// use hvkit_vmx_core::vmcs::SoftVmcs;
///
/// fn reflect(info: &ExitInfo<'_>) -> Result<u8, ExitError> {
///     let reflected = reflected_exception(info)?; // ReflectError -> ExitError
///     Ok(reflected.event.info.vector())
/// }
///
/// let mut vmcs = SoftVmcs::new();
/// let exit = vmcs.complete_exit();
/// // An external-interrupt exit (basic reason 1) is not an exception exit.
/// let info = ExitInfo::from_parts(&exit, ExitInfoParts { reason: 1, ..ExitInfoParts::default() });
/// assert!(matches!(reflect(&info), Err(ExitError::Reflect(_))));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ExitError {
    /// A VMX instruction (VM entry, VMREAD, VMWRITE) failed.
    Vmcs(VmFail),
    /// The exit's host event could not be classified or re-delivered.
    HostEvent(HostEventError),
    /// A host NMI or interrupt re-delivery failed outside
    /// [`handle_host_event`](crate::handle_host_event).
    Redelivery(RedeliveryError),
    /// A guest event was not injected or re-injected; the VMCS is as before the call.
    Inject(InjectError),
    /// The exit cannot be reflected to the guest as an exception.
    Reflect(ReflectError),
    /// An event breaks a VM-entry rule.
    EntryCheck(EntryCheckError),
    /// An interruption-information value could not be built.
    InterruptionInfo(InterruptionInfoError),
}

impl ExitError {
    /// Where the host event stands when the failure was its re-delivery (see
    /// [`EventState`]); `None` when no host event was being re-delivered.
    pub const fn host_event_state(&self) -> Option<EventState> {
        match self {
            Self::HostEvent(HostEventError::Redelivery { error, .. }) | Self::Redelivery(error) => {
                Some(error.state())
            }
            _ => None,
        }
    }
}

impl fmt::Display for ExitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vmcs(error) => write!(f, "VMX instruction failed: {error}"),
            Self::HostEvent(error) => write!(f, "host event: {error}"),
            Self::Redelivery(error) => write!(f, "host event re-delivery: {error}"),
            Self::Inject(error) => write!(f, "guest event injection: {error}"),
            Self::Reflect(error) => write!(f, "exception reflection: {error}"),
            Self::EntryCheck(error) => write!(f, "VM-entry check: {error}"),
            Self::InterruptionInfo(error) => write!(f, "interruption information: {error}"),
        }
    }
}

impl core::error::Error for ExitError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(match self {
            Self::Vmcs(error) => error,
            Self::HostEvent(error) => error,
            Self::Redelivery(error) => error,
            Self::Inject(error) => error,
            Self::Reflect(error) => error,
            Self::EntryCheck(error) => error,
            Self::InterruptionInfo(error) => error,
        })
    }
}

macro_rules! exit_error_from {
    ($($error:ty => $variant:ident;)*) => {$(
        impl From<$error> for ExitError {
            #[inline]
            fn from(error: $error) -> Self {
                Self::$variant(error)
            }
        }
    )*};
}

exit_error_from! {
    VmFail => Vmcs;
    HostEventError => HostEvent;
    RedeliveryError => Redelivery;
    InjectError => Inject;
    ReflectError => Reflect;
    EntryCheckError => EntryCheck;
    InterruptionInfoError => InterruptionInfo;
}
