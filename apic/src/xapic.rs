//! xAPIC mode: memory-mapped registers.

use crate::ModeError;
use crate::detect::{ApicBase, ApicState};
use crate::icr::{FixedTarget, Ipi, IpiError, Mode};
use crate::local_apic::{Delay, LocalApic};
use crate::register as reg;
use core::marker::PhantomData;

/// The xAPIC register page (MMIO in [`MmioRegisters`](crate::MmioRegisters), or a fake).
pub trait XApicRegisters {
    /// Reads the 32-bit register at `offset`.
    fn read(&self, offset: u32) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write(&mut self, offset: u32, value: u32);
}

/// ICR low bit 12: send pending.
const DELIVERY_PENDING: u32 = 1 << 12;

/// A local APIC in xAPIC mode. Not `Send`/`Sync`: it drives this processor's APIC.
#[derive(Debug)]
pub struct XApic<R: XApicRegisters> {
    registers: R,
    _per_cpu: PhantomData<*mut ()>,
}

impl<R: XApicRegisters> XApic<R> {
    /// A handle, after checking that IA32_APIC_BASE says xAPIC mode is on.
    pub fn new(registers: R, base: ApicBase) -> Result<Self, ModeError> {
        match base.state() {
            ApicState::Enabled(Mode::XApic) => Ok(Self { registers, _per_cpu: PhantomData }),
            found => Err(ModeError::NotInMode { expected: Mode::XApic, found }),
        }
    }

    /// The register backend.
    pub fn registers(&self) -> &R {
        &self.registers
    }

    /// Gives the register backend back.
    pub fn into_registers(self) -> R {
        self.registers
    }

    fn wait_idle(&self, max_polls: u32, delay: &mut impl Delay) -> Result<(), u32> {
        let polls = max_polls.max(1);
        for _ in 0..polls {
            if self.registers.read(reg::ICR_LOW) & DELIVERY_PENDING == 0 {
                return Ok(());
            }
            delay.delay();
        }
        Err(polls)
    }
}

impl<R: XApicRegisters> LocalApic for XApic<R> {
    const MODE: Mode = Mode::XApic;

    fn read(&self, offset: u32) -> u32 {
        self.registers.read(offset)
    }

    fn write(&mut self, offset: u32, value: u32) {
        self.registers.write(offset, value);
    }

    fn id(&self) -> u32 {
        self.registers.read(reg::ID) >> 24
    }

    fn send_ipi(
        &mut self,
        ipi: &Ipi,
        max_polls: u32,
        delay: &mut impl Delay,
    ) -> Result<(), IpiError> {
        let icr = ipi.encode(Mode::XApic)?;
        self.wait_idle(max_polls, delay)
            .map_err(|polls| IpiError::Timeout { polls, sent: false })?;
        self.registers.write(reg::ICR_HIGH, (icr >> 32) as u32);
        self.registers.write(reg::ICR_LOW, icr as u32);
        self.wait_idle(max_polls, delay).map_err(|polls| IpiError::Timeout { polls, sent: true })
    }

    fn send_self_ipi(
        &mut self,
        vector: u8,
        max_polls: u32,
        delay: &mut impl Delay,
    ) -> Result<(), IpiError> {
        self.send_ipi(&Ipi::fixed(vector, FixedTarget::ToSelf)?, max_polls, delay)
    }
}
