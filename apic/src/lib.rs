//! Local APIC (xAPIC and x2APIC) for hypervisors and kernels: valid-by-construction IPIs,
//! self-IPI and self-NMI, EOI, LVT and timer.
//!
//! - [`LocalApic`] is one interface over [`XApic`] (MMIO through [`MmioRegisters`], or any
//!   [`XApicRegisters`]) and [`X2Apic`] (MSRs through [`MsrAccess`]). A handle exists only once
//!   IA32_APIC_BASE confirms its mode, and is not `Send`/`Sync`.
//! - [`Ipi`] can only express the valid ICR combinations (see [`icr`]): there is no way to ask
//!   for an NMI with the "self" shorthand. [`LocalApic::send_self_nmi`] uses physical
//!   destination = own APIC ID.
//! - xAPIC sends wait for the delivery status with a caller-given bound and report
//!   [`IpiError::Timeout`] (saying whether the IPI was sent) instead of spinning forever.
//!   Delivery status idle means *accepted*, not *handled*. x2APIC has no delivery status.
//! - [`fake`] has recording register backends for host tests.
//!
//! # Example: self-NMI and EOI
//!
//! ```
//! use hvkit_apic::{ApicBase, LocalApic, XApic, fake::FakeXApicRegisters, register};
//!
//! // On hardware: `XApic::new(unsafe { MmioRegisters::new(mapped_page) }, ApicBase(rdmsr(0x1B)))`.
//! let mut apic = XApic::new(FakeXApicRegisters::with_id(3), ApicBase(0xFEE0_0900))?;
//! let mut spin = || core::hint::spin_loop();
//! apic.send_self_nmi(1000, &mut spin)?;
//! apic.eoi();
//! assert_eq!(
//!     apic.registers().writes(),
//!     &[(register::ICR_HIGH, 0x0300_0000), (register::ICR_LOW, 0x0000_4400), (register::EOI, 0)]
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//!
//! - `defmt`: derives `defmt::Format` for the public types.
//!
//! `#![no_std]`, no allocation; minimum Rust 1.88. Real register access is `x86_64`-only.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

pub mod detect;
pub mod fake;
mod hw;
pub mod icr;
mod local_apic;
pub mod lvt;
pub mod register;
mod x2apic;
mod xapic;

pub use detect::{ApicBase, ApicState, CpuidFeatures};
#[cfg(target_arch = "x86_64")]
pub use hw::HardwareMsrs;
pub use hw::{ApicMsr, MmioRegisters, MsrAccess};
pub use icr::{Destination, FixedTarget, Ipi, IpiError, Mode, NmiSource, Target};
pub use local_apic::{ApicVersion, CountingMode, Delay, LocalApic, Lvt, MicrosecondDelay, Svr};
pub use x2apic::X2Apic;
pub use xapic::{XApic, XApicRegisters};

use core::fmt;

/// A handle could not be made for the requested mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ModeError {
    /// IA32_APIC_BASE does not say the expected mode is on.
    NotInMode {
        /// The mode asked for.
        expected: Mode,
        /// What IA32_APIC_BASE says.
        found: ApicState,
    },
    /// CPUID.1:ECX\[21\] is 0.
    X2ApicUnsupported,
    /// CPUID.1:ECX\[24\] is 0.
    TscDeadlineUnsupported,
}

impl fmt::Display for ModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInMode { expected, found } => {
                write!(f, "local APIC is not in {expected:?} mode (IA32_APIC_BASE says {found:?})")
            }
            Self::X2ApicUnsupported => {
                f.write_str("x2APIC mode is not supported (CPUID.1:ECX[21] = 0)")
            }
            Self::TscDeadlineUnsupported => {
                f.write_str("TSC-deadline timer mode is not supported (CPUID.1:ECX[24] = 0)")
            }
        }
    }
}

impl core::error::Error for ModeError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeMsrs, FakeXApicRegisters};
    use crate::lvt::{Divide, LvtEntry, TimerMode};
    use crate::register as reg;

    const XAPIC_BASE: ApicBase = ApicBase(0xFEE0_0900);

    fn xapic(id: u8) -> XApic<FakeXApicRegisters> {
        XApic::new(FakeXApicRegisters::with_id(id), XAPIC_BASE).unwrap()
    }

    fn x2apic(id: u32) -> X2Apic<FakeMsrs> {
        X2Apic::new(FakeMsrs::x2apic(id)).unwrap()
    }

    fn spin() -> impl FnMut() {
        || {}
    }

    #[test]
    fn xapic_self_nmi_writes_high_then_low_with_own_id() {
        let mut apic = xapic(3);
        apic.send_self_nmi(10, &mut spin()).unwrap();
        assert_eq!(
            apic.registers().writes(),
            &[(reg::ICR_HIGH, 0x0300_0000), (reg::ICR_LOW, 0x4400)]
        );
    }

    #[test]
    fn x2apic_self_nmi_is_one_icr_write_with_32_bit_id() {
        let mut apic = x2apic(0x1_0005);
        apic.send_self_nmi(10, &mut spin()).unwrap();
        assert_eq!(apic.msrs().writes(), &[(0x830, 0x0001_0005_0000_4400)]);
    }

    #[test]
    fn self_ipi_per_mode() {
        let mut apic = xapic(1);
        apic.send_self_ipi(0xEC, 10, &mut spin()).unwrap();
        assert_eq!(apic.registers().writes(), &[(reg::ICR_HIGH, 0), (reg::ICR_LOW, 0x0004_40EC)]);
        let mut apic = x2apic(1);
        apic.send_self_ipi(0xEC, 10, &mut spin()).unwrap();
        assert_eq!(apic.msrs().writes(), &[(0x83F, 0xEC)]);
        assert_eq!(
            apic.send_self_ipi(15, 10, &mut spin()),
            Err(IpiError::ReservedVector { vector: 15 })
        );
        let mut apic = xapic(1);
        assert_eq!(
            apic.send_self_ipi(0, 10, &mut spin()),
            Err(IpiError::ReservedVector { vector: 0 })
        );
        assert!(apic.registers().writes().is_empty(), "nothing written for a rejected IPI");
    }

    #[test]
    fn nmi_and_fixed_ipis_to_others() {
        let mut apic = xapic(0);
        apic.send_nmi(Target::To(Destination::Physical(7)), 10, &mut spin()).unwrap();
        apic.send_ipi(&Ipi::fixed(0x50, FixedTarget::AllExcludingSelf).unwrap(), 10, &mut spin())
            .unwrap();
        assert_eq!(
            apic.registers().writes(),
            &[
                (reg::ICR_HIGH, 0x0700_0000),
                (reg::ICR_LOW, 0x4400),
                (reg::ICR_HIGH, 0),
                (reg::ICR_LOW, 0x000C_4050)
            ]
        );
        // An x2APIC ID does not fit an xAPIC destination: typed error, nothing written.
        let mut apic = xapic(0);
        let far = Ipi::nmi(Target::To(Destination::Physical(300)));
        assert_eq!(
            apic.send_ipi(&far, 10, &mut spin()),
            Err(IpiError::DestinationOutOfRange { destination: 300 })
        );
        assert!(apic.registers().writes().is_empty());
    }

    #[test]
    fn delivery_status_wait_honours_the_bound_exactly() {
        // Pending for 3 reads after the send: accepted on the 4th read.
        let mut registers = FakeXApicRegisters::with_id(0);
        registers.pending_after_send = 3;
        let mut apic = XApic::new(registers, XAPIC_BASE).unwrap();
        let mut delays = 0;
        apic.send_self_nmi(4, &mut || delays += 1).unwrap();
        assert_eq!(apic.registers().icr_reads(), 1 + 4, "one idle check before, four after");
        assert_eq!(delays, 3);
        // Same with a bound of 3: times out after exactly 3 polls, IPI already written.
        let mut registers = FakeXApicRegisters::with_id(0);
        registers.pending_after_send = 3;
        let mut apic = XApic::new(registers, XAPIC_BASE).unwrap();
        let mut delays = 0;
        assert_eq!(
            apic.send_self_nmi(3, &mut || delays += 1),
            Err(IpiError::Timeout { polls: 3, sent: true })
        );
        assert_eq!(apic.registers().icr_reads(), 1 + 3);
        assert_eq!(delays, 3);
        // Stuck before sending: not sent, nothing written.
        let mut registers = FakeXApicRegisters::with_id(0);
        registers.stuck = true;
        let mut apic = XApic::new(registers, XAPIC_BASE).unwrap();
        assert_eq!(
            apic.send_self_nmi(5, &mut spin()),
            Err(IpiError::Timeout { polls: 5, sent: false })
        );
        assert!(apic.registers().writes().is_empty());
        assert_eq!(apic.registers().icr_reads(), 5);
    }

    #[test]
    fn modes_are_verified_before_a_handle_exists() {
        assert_eq!(
            XApic::new(FakeXApicRegisters::with_id(0), ApicBase(0xFEE0_0D00)).map(|_| ()),
            Err(ModeError::NotInMode {
                expected: Mode::XApic,
                found: ApicState::Enabled(Mode::X2Apic)
            })
        );
        assert!(XApic::new(FakeXApicRegisters::with_id(0), ApicBase(0xFEE0_0000)).is_err());
        let mut msrs = FakeMsrs::default();
        msrs.set(reg::IA32_APIC_BASE, 0xFEE0_0900);
        assert!(X2Apic::new(msrs.clone()).is_err());
        let no_x2apic = CpuidFeatures { x2apic: false, tsc_deadline: false };
        assert_eq!(
            X2Apic::enable(msrs.clone(), no_x2apic).map(|_| ()),
            Err(ModeError::X2ApicUnsupported)
        );
        let apic =
            X2Apic::enable(msrs, CpuidFeatures { x2apic: true, tsc_deadline: false }).unwrap();
        assert_eq!(apic.msrs().writes(), &[(reg::IA32_APIC_BASE, 0xFEE0_0D00)]);
    }

    #[test]
    fn registers_eoi_and_queries() {
        let mut apic = x2apic(2);
        apic.eoi();
        apic.set_svr(Svr::enabled(0xFF));
        apic.set_tpr(0x20);
        assert_eq!(apic.msrs().writes(), &[(0x80B, 0), (0x80F, 0x1FF), (0x808, 0x20)]);
        let mut registers = FakeXApicRegisters::with_id(9);
        registers.set(reg::ISR_BASE + 0x70, 1 << 12); // vector 0xEC in service
        registers.set(reg::IRR_BASE + 0x10, 1 << 1); // vector 0x21 requested
        registers.set(reg::TMR_BASE + 0x70, 1 << 12);
        let apic = XApic::new(registers, XAPIC_BASE).unwrap();
        assert_eq!(apic.id(), 9);
        assert!(apic.is_in_service(0xEC) && !apic.is_in_service(0xEB));
        assert!(apic.is_requested(0x21) && !apic.is_requested(0x20));
        assert!(apic.is_level_triggered(0xEC));
        assert_eq!(apic.highest_priority_in_service(), Some(0xEC));
        assert_eq!(apic.version().lvt_entries(), 6);
        assert_eq!(apic.version().version(), 0x14);
    }

    #[test]
    fn error_status_writes_before_reading() {
        let mut apic = xapic(0);
        apic.error_status();
        assert_eq!(apic.registers().writes(), &[(reg::ESR, 0)]);
    }

    #[test]
    fn timer_programming_order_and_values() {
        let mut apic = xapic(0);
        apic.start_timer(0xEC, CountingMode::Periodic, Divide::By16, 100_000);
        apic.stop_timer();
        assert_eq!(
            apic.registers().writes(),
            &[
                (reg::TIMER_DIVIDE, 0b0011),
                (reg::LVT_TIMER, 0x0002_00EC),
                (reg::TIMER_INITIAL_COUNT, 100_000),
                (reg::TIMER_INITIAL_COUNT, 0),
                (reg::LVT_TIMER, 0x0003_00EC),
            ]
        );
        let mut apic = x2apic(0);
        let cpuid = CpuidFeatures { x2apic: true, tsc_deadline: true };
        apic.start_tsc_deadline_timer(0x30, 123_456, cpuid).unwrap();
        assert_eq!(
            apic.msrs().writes(),
            &[(0x832, 0x0004_0030), (reg::IA32_TSC_DEADLINE, 123_456)]
        );
        let no = CpuidFeatures { x2apic: true, tsc_deadline: false };
        assert_eq!(
            apic.start_tsc_deadline_timer(0x30, 1, no),
            Err(ModeError::TscDeadlineUnsupported)
        );
        assert_eq!(apic.lvt(Lvt::Timer).timer_mode(), TimerMode::TscDeadline);
        apic.set_lvt(Lvt::Lint0, LvtEntry::with_mode(0, lvt::LvtDeliveryMode::ExtInt));
        assert_eq!(apic.msrs().writes().last(), Some(&(0x835, 0x700)));
    }

    #[test]
    fn application_processor_start_sequence() {
        struct Waits(std::vec::Vec<u32>);
        impl MicrosecondDelay for Waits {
            fn wait_microseconds(&mut self, microseconds: u32) {
                self.0.push(microseconds);
            }
        }
        let mut apic = xapic(0);
        let mut waits = Waits(std::vec::Vec::new());
        apic.start_application_processor(1, 0x08, 10, &mut waits).unwrap();
        assert_eq!(
            apic.registers().writes(),
            &[
                (reg::ICR_HIGH, 0x0100_0000),
                (reg::ICR_LOW, 0x4500),
                (reg::ICR_HIGH, 0x0100_0000),
                (reg::ICR_LOW, 0x4608),
                (reg::ICR_HIGH, 0x0100_0000),
                (reg::ICR_LOW, 0x4608),
            ]
        );
        assert_eq!(waits.0, [10_000, 200, 200]);
    }
}
