//! The [`LocalApic`] interface shared by xAPIC and x2APIC.
#![forbid(unsafe_code)]

use crate::icr::{Destination, Ipi, IpiError, Mode, Target};
use crate::lvt::{Divide, LvtEntry, TimerMode};
use crate::register as reg;

/// Something that waits a little between polls of the ICR delivery status (a `pause`, a
/// calibrated delay, a test counter). Any `FnMut()` is one.
pub trait Delay {
    /// Waits once.
    fn delay(&mut self);
}

impl<F: FnMut()> Delay for F {
    fn delay(&mut self) {
        self()
    }
}

/// Waits of a given length, for the INIT/SIPI sequence.
pub trait MicrosecondDelay {
    /// Waits at least `microseconds`.
    fn wait_microseconds(&mut self, microseconds: u32);
}

/// The LVT entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Lvt {
    /// Timer (0x320).
    Timer,
    /// Corrected machine-check interrupt (0x2F0).
    Cmci,
    /// LINT0 (0x350).
    Lint0,
    /// LINT1 (0x360).
    Lint1,
    /// Error (0x370).
    Error,
    /// Performance-monitoring counters (0x340).
    PerformanceCounter,
    /// Thermal sensor (0x330).
    Thermal,
}

impl Lvt {
    /// The register offset.
    pub const fn offset(self) -> u32 {
        match self {
            Self::Timer => reg::LVT_TIMER,
            Self::Cmci => reg::LVT_CMCI,
            Self::Lint0 => reg::LVT_LINT0,
            Self::Lint1 => reg::LVT_LINT1,
            Self::Error => reg::LVT_ERROR,
            Self::PerformanceCounter => reg::LVT_PERFORMANCE,
            Self::Thermal => reg::LVT_THERMAL,
        }
    }
}

/// The version register (0x030).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ApicVersion(pub u32);

impl ApicVersion {
    /// Bits 7:0: the version (0x1X for integrated APICs).
    pub const fn version(self) -> u8 {
        (self.0 & 0xFF) as u8
    }
    /// Bits 23:16 plus one: the number of LVT entries.
    pub const fn lvt_entries(self) -> u16 {
        ((self.0 >> 16) & 0xFF) as u16 + 1
    }
    /// Bit 24: EOI-broadcast suppression supported.
    pub const fn eoi_broadcast_suppression(self) -> bool {
        self.0 & (1 << 24) != 0
    }
}

/// The spurious-interrupt vector register (0x0F0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Svr(pub u32);

impl Svr {
    /// Bit 8: APIC software enable.
    pub const ENABLE: u32 = 1 << 8;
    /// Bit 9: focus processor checking disabled.
    pub const FOCUS_CHECKING_DISABLED: u32 = 1 << 9;
    /// Bit 12: EOI-broadcast suppression.
    pub const EOI_BROADCAST_SUPPRESSION: u32 = 1 << 12;

    /// Software-enabled with `spurious_vector`.
    pub const fn enabled(spurious_vector: u8) -> Self {
        Self(Self::ENABLE | spurious_vector as u32)
    }
    /// Bits 7:0.
    pub const fn spurious_vector(self) -> u8 {
        (self.0 & 0xFF) as u8
    }
    /// Bit 8.
    pub const fn is_enabled(self) -> bool {
        self.0 & Self::ENABLE != 0
    }
}

/// Periodic or one-shot timer (TSC-deadline has its own method).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CountingMode {
    /// Counts down once.
    OneShot,
    /// Reloads the initial count each time it reaches 0.
    Periodic,
}

/// One local APIC in a verified mode. Implemented by [`XApic`](crate::XApic) and
/// [`X2Apic`](crate::X2Apic); both are per-CPU handles (not `Send`/`Sync`).
pub trait LocalApic {
    /// The mode this handle drives.
    const MODE: Mode;

    /// Reads the 32-bit register at xAPIC `offset` (x2APIC: its MSR).
    fn read(&self, offset: u32) -> u32;

    /// Writes the 32-bit register at xAPIC `offset` (x2APIC: its MSR).
    fn write(&mut self, offset: u32, value: u32);

    /// This APIC's ID (8 bits from bits 31:24 in xAPIC mode, 32 bits in x2APIC mode).
    fn id(&self) -> u32;

    /// Sends `ipi`. xAPIC: waits for delivery status idle (at most `max_polls` reads, at least
    /// one, calling `delay` after each busy read), writes ICR high then low, and waits again
    /// so that `Ok` means the IPI was accepted (not that its handler ran). x2APIC: one write
    /// to MSR 0x830; there is no delivery status, `max_polls` and `delay` are unused.
    fn send_ipi(
        &mut self,
        ipi: &Ipi,
        max_polls: u32,
        delay: &mut impl Delay,
    ) -> Result<(), IpiError>;

    /// Sends a fixed IPI with `vector` to this APIC (x2APIC: the SELF IPI MSR; xAPIC: the
    /// self shorthand).
    fn send_self_ipi(
        &mut self,
        vector: u8,
        max_polls: u32,
        delay: &mut impl Delay,
    ) -> Result<(), IpiError>;

    /// Sends an NMI to this APIC: physical destination = own APIC ID (the self shorthand is not
    /// valid for NMIs).
    fn send_self_nmi(&mut self, max_polls: u32, delay: &mut impl Delay) -> Result<(), IpiError> {
        let ipi = Ipi::nmi(Target::To(Destination::Physical(self.id())));
        self.send_ipi(&ipi, max_polls, delay)
    }

    /// Sends an NMI to `target`.
    fn send_nmi(
        &mut self,
        target: Target,
        max_polls: u32,
        delay: &mut impl Delay,
    ) -> Result<(), IpiError> {
        self.send_ipi(&Ipi::nmi(target), max_polls, delay)
    }

    /// INIT, 10 ms, start-up IPI, 200 µs, start-up IPI, 200 µs (SDM "MP Initialization
    /// Protocol Algorithm"): starts the processor `apic_id` at physical address `page << 12`.
    fn start_application_processor(
        &mut self,
        apic_id: u32,
        page: u8,
        max_polls: u32,
        wait: &mut impl MicrosecondDelay,
    ) -> Result<(), IpiError> {
        let target = Target::To(Destination::Physical(apic_id));
        let mut spin = || core::hint::spin_loop();
        self.send_ipi(&Ipi::init(target), max_polls, &mut spin)?;
        wait.wait_microseconds(10_000);
        for _ in 0..2 {
            self.send_ipi(&Ipi::startup(page, target), max_polls, &mut spin)?;
            wait.wait_microseconds(200);
        }
        Ok(())
    }

    /// Signals end of interrupt (writes 0 to the EOI register).
    fn eoi(&mut self) {
        self.write(reg::EOI, 0);
    }

    /// The version register.
    fn version(&self) -> ApicVersion {
        ApicVersion(self.read(reg::VERSION))
    }

    /// The task priority.
    fn tpr(&self) -> u8 {
        (self.read(reg::TPR) & 0xFF) as u8
    }

    /// Sets the task priority.
    fn set_tpr(&mut self, priority: u8) {
        self.write(reg::TPR, u32::from(priority));
    }

    /// The processor priority.
    fn ppr(&self) -> u8 {
        (self.read(reg::PPR) & 0xFF) as u8
    }

    /// The spurious-interrupt vector register.
    fn svr(&self) -> Svr {
        Svr(self.read(reg::SVR))
    }

    /// Writes the spurious-interrupt vector register (e.g. [`Svr::enabled`]).
    fn set_svr(&mut self, svr: Svr) {
        self.write(reg::SVR, svr.0);
    }

    /// `true` when `vector` is in service (ISR bit set).
    fn is_in_service(&self, vector: u8) -> bool {
        let (offset, bit) = reg::vector_register(reg::ISR_BASE, vector);
        self.read(offset) & (1 << bit) != 0
    }

    /// `true` when `vector` is requested (IRR bit set).
    fn is_requested(&self, vector: u8) -> bool {
        let (offset, bit) = reg::vector_register(reg::IRR_BASE, vector);
        self.read(offset) & (1 << bit) != 0
    }

    /// `true` when `vector` was accepted level-triggered (TMR bit set).
    fn is_level_triggered(&self, vector: u8) -> bool {
        let (offset, bit) = reg::vector_register(reg::TMR_BASE, vector);
        self.read(offset) & (1 << bit) != 0
    }

    /// The highest vector in service (the one the next EOI retires), if any.
    fn highest_priority_in_service(&self) -> Option<u8> {
        (0..8u32).rev().find_map(|index| {
            let bits = self.read(reg::ISR_BASE + 0x10 * index);
            (bits != 0).then(|| (index * 32 + 31 - bits.leading_zeros()) as u8)
        })
    }

    /// The error status: writes 0 first (the register latches errors on write), then reads.
    fn error_status(&mut self) -> u32 {
        self.write(reg::ESR, 0);
        self.read(reg::ESR)
    }

    /// An LVT entry.
    fn lvt(&self, entry: Lvt) -> LvtEntry {
        LvtEntry::from_raw(self.read(entry.offset()))
    }

    /// Writes an LVT entry.
    fn set_lvt(&mut self, entry: Lvt, value: LvtEntry) {
        self.write(entry.offset(), value.raw());
    }

    /// Starts the timer: divide configuration, then the LVT timer entry, then the initial
    /// count (writing the count starts counting).
    fn start_timer(&mut self, vector: u8, mode: CountingMode, divide: Divide, initial_count: u32) {
        let timer_mode = match mode {
            CountingMode::OneShot => TimerMode::OneShot,
            CountingMode::Periodic => TimerMode::Periodic,
        };
        self.write(reg::TIMER_DIVIDE, divide.bits());
        self.set_lvt(Lvt::Timer, LvtEntry::fixed(vector).with_timer_mode(timer_mode));
        self.write(reg::TIMER_INITIAL_COUNT, initial_count);
    }

    /// Stops the timer: initial count 0, LVT entry masked.
    fn stop_timer(&mut self) {
        self.write(reg::TIMER_INITIAL_COUNT, 0);
        let masked = self.lvt(Lvt::Timer).with_mask(true);
        self.set_lvt(Lvt::Timer, masked);
    }

    /// The timer's current count.
    fn timer_current_count(&self) -> u32 {
        self.read(reg::TIMER_CURRENT_COUNT)
    }
}
