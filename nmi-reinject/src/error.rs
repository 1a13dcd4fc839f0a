//! Errors, each saying what state the event is in.
#![forbid(unsafe_code)]

use core::fmt;

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
