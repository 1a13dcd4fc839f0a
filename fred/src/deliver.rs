//! Software FRED event delivery for VMX: build on the current stack the frame the CPU would have
//! pushed for an NMI or external interrupt, call the dispatcher, and return with ERETS, which
//! unblocks NMIs for an NMI frame (the FRED half of KVM-style direct-call re-delivery).
//!
//! What the frame holds (Intel FRED specification, "FRED Event Delivery"): error code 0; RIP =
//! the instruction after the return; CS slot = current CS, stack level 0; RFLAGS at entry to [`deliver`]; RSP = the
//! stack pointer before the red zone; SS slot = current SS, event type, vector, NMI bit for
//! NMIs, 64-bit-mode bit; event data 0; reserved 0. The frame sits below the red zone, 64-byte
//! aligned; the [`SavedRegisters`](crate::SavedRegisters) the dispatcher receives sit below it,
//! as in an entry stub.
//!
//! Verified in user space on the host with [`deliver_with_emulated_return`]: every field of the
//! frame, its alignment and red zone, and the caller's stack and callee-saved registers. ERETS
//! itself needs CPL 0 with CR4.FRED and is not executed by this project's CI.

#[cfg(target_arch = "x86_64")]
use crate::entry::Dispatcher;
use crate::frame::{EventType, SsSlot};
use core::fmt;

/// An event software delivery supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SoftwareEvent {
    /// An NMI (type 2, vector 2, NMI bit set).
    Nmi,
    /// An external interrupt with a vector of 32-255.
    ExternalInterrupt(u8),
}

/// An event software delivery does not support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum DeliveryError {
    /// Only NMIs and external interrupts come out of VM exits for re-delivery.
    UnsupportedEventType(EventType),
    /// NMIs use vector 2; external interrupts vectors 32-255.
    UnsupportedVector {
        /// The event type.
        event_type: EventType,
        /// The vector.
        vector: u8,
    },
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedEventType(event_type) => write!(
                f,
                "software FRED delivery supports NMIs and external interrupts, not {event_type:?}"
            ),
            Self::UnsupportedVector { event_type, vector } => {
                write!(f, "vector {vector} is not valid for {event_type:?} delivery")
            }
        }
    }
}

impl core::error::Error for DeliveryError {}

impl SoftwareEvent {
    /// Checks an (event type, vector) pair.
    pub const fn try_new(event_type: EventType, vector: u8) -> Result<Self, DeliveryError> {
        match event_type {
            EventType::Nmi if vector == 2 => Ok(Self::Nmi),
            EventType::ExternalInterrupt if vector >= 32 => Ok(Self::ExternalInterrupt(vector)),
            EventType::Nmi | EventType::ExternalInterrupt => {
                Err(DeliveryError::UnsupportedVector { event_type, vector })
            }
            other => Err(DeliveryError::UnsupportedEventType(other)),
        }
    }

    /// The SS slot bits other than the selector.
    pub const fn ss_slot_bits(self) -> u64 {
        let slot = match self {
            Self::Nmi => SsSlot::new(0, EventType::Nmi, 2),
            Self::ExternalInterrupt(vector) => SsSlot::new(0, EventType::ExternalInterrupt, vector),
        };
        slot.raw()
    }
}

/// Delivers `event` to `dispatcher` as the CPU would, and returns through ERETS.
///
/// # Safety
///
/// 1. CPL 0 with CR4.FRED = 1 (ERETS faults otherwise).
/// 2. `red_zone_bytes` is at least the red zone configured in IA32_FRED_CONFIG (so the frame
///    lands where the CPU would put it) and a multiple of 64.
/// 3. The dispatcher must leave the frame's RIP, CS, RSP and SS slots as they are, and must not
///    enable interrupts while an NMI is being delivered.
#[cfg(target_arch = "x86_64")]
pub unsafe fn deliver(event: SoftwareEvent, red_zone_bytes: u64, dispatcher: Dispatcher) {
    // SAFETY: forwarded to the caller's contract.
    unsafe { deliver_erets(event.ss_slot_bits(), dispatcher, red_zone_bytes, 0) }
}

/// As [`deliver`], with `event_data` in the frame's event-data slot (offset 48) instead of 0:
/// for an NMI on a processor with NMI-source reporting, the 16-bit source bitmap of the NMI
/// that caused the VM exit (its exit qualification), as the CPU would have delivered it (Intel
/// FRED specification, "Event data"; NMI-source reporting).
///
/// # Safety
///
/// As for [`deliver`].
#[cfg(target_arch = "x86_64")]
pub unsafe fn deliver_with_event_data(
    event: SoftwareEvent,
    event_data: u64,
    red_zone_bytes: u64,
    dispatcher: Dispatcher,
) {
    // SAFETY: forwarded to the caller's contract.
    unsafe { deliver_erets(event.ss_slot_bits(), dispatcher, red_zone_bytes, event_data) }
}

/// As [`deliver`] but returning without ERETS (RIP, RFLAGS and RSP restored from the frame), so
/// the whole path runs in user space. Does **not** unblock NMIs: for tests and tools only.
///
/// # Safety
///
/// Condition 3 of [`deliver`]; `red_zone_bytes` a multiple of 64.
#[cfg(target_arch = "x86_64")]
pub unsafe fn deliver_with_emulated_return(
    event: SoftwareEvent,
    red_zone_bytes: u64,
    dispatcher: Dispatcher,
) {
    // SAFETY: forwarded to the caller's contract; nothing privileged runs.
    unsafe { deliver_emulated(event.ss_slot_bits(), dispatcher, red_zone_bytes, 0) }
}

/// The frame-building part shared by both variants; ends with RSP at the frame (error code).
/// rdi = SS slot bits, rsi = dispatcher, rdx = red-zone bytes, rcx = event data.
#[cfg(target_arch = "x86_64")]
macro_rules! build_frame_and_dispatch {
    () => {
        concat!(
            "pushfq\n",
            "pop r11\n",
            "push rbp\n",
            "mov rbp, rsp\n",
            "sub rsp, rdx\n",
            "and rsp, -64\n",
            "push 0\n",
            "push rcx\n",
            "xor eax, eax\n",
            "mov ax, ss\n",
            "or rax, rdi\n",
            "push rax\n",
            "push rbp\n",
            "push r11\n",
            "xor eax, eax\n",
            "mov ax, cs\n",
            "push rax\n",
            "lea rax, [rip + 2f]\n",
            "push rax\n",
            "push 0\n",
            $crate::__fred_push_registers!(),
            "lea rdi, [rsp + 120]\n",
            "mov rax, rsi\n",
            "mov rsi, rsp\n",
            "sub rsp, 8\n",
            "call rax\n",
            // Drop the alignment slot and the saved registers (callee-saved ones were preserved
            // by the dispatcher; the rest are scratch for our caller). RSP is back at the frame:
            // ERETS skips the error code itself.
            "add rsp, 128\n",
        )
    };
}

/// The address of the ERETS variant (tests read its machine code).
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) fn deliver_erets_address() -> u64 {
    deliver_erets as *const () as u64
}

#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
unsafe extern "sysv64" fn deliver_erets(
    ss_bits: u64,
    dispatcher: Dispatcher,
    red_zone: u64,
    event_data: u64,
) {
    core::arch::naked_asm!(
        build_frame_and_dispatch!(),
        crate::instr::erets_bytes!(),
        "2:",
        "pop rbp",
        "ret",
    )
}

#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
pub(crate) unsafe extern "sysv64" fn deliver_emulated(
    ss_bits: u64,
    dispatcher: Dispatcher,
    red_zone: u64,
    event_data: u64,
) {
    core::arch::naked_asm!(
        build_frame_and_dispatch!(),
        crate::__fred_emulated_return!(),
        "2:",
        "pop rbp",
        "ret",
    )
}
