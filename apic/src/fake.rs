//! Recording fakes of the register backends, for host tests of code that drives an APIC
//! (this crate's tests, hvkit-nmi-reinject's, fuzz targets). No allocation: fixed-size logs.

use crate::hw::{ApicMsr, MsrAccess};
use crate::register as reg;
use crate::xapic::XApicRegisters;

/// How many writes a fake remembers (later writes are counted but not logged).
pub const LOG_CAPACITY: usize = 64;

/// A fake xAPIC register page that logs writes and can keep the ICR "send pending".
#[derive(Debug, Clone)]
pub struct FakeXApicRegisters {
    registers: [u32; 64],
    log: [(u32, u32); LOG_CAPACITY],
    writes: usize,
    pending_reads: core::cell::Cell<u32>,
    /// Delivery-status reads that return "send pending" after each ICR low write.
    pub pending_after_send: u32,
    /// Delivery status stays "send pending" forever.
    pub stuck: bool,
    icr_reads: core::cell::Cell<u32>,
}

impl FakeXApicRegisters {
    /// A page whose ID register holds `apic_id` in bits 31:24.
    pub fn with_id(apic_id: u8) -> Self {
        let mut fake = Self {
            registers: [0; 64],
            log: [(0, 0); LOG_CAPACITY],
            writes: 0,
            pending_reads: core::cell::Cell::new(0),
            pending_after_send: 0,
            stuck: false,
            icr_reads: core::cell::Cell::new(0),
        };
        fake.set(reg::ID, u32::from(apic_id) << 24);
        fake.set(reg::VERSION, 0x0005_0014);
        fake
    }

    /// Sets a register without logging (test set-up, e.g. an ISR bit).
    pub fn set(&mut self, offset: u32, value: u32) {
        if let Some(slot) = self.registers.get_mut((offset as usize >> 4) & 63) {
            *slot = value;
        }
    }

    /// The logged writes, oldest first (at most [`LOG_CAPACITY`]).
    pub fn writes(&self) -> &[(u32, u32)] {
        self.log.get(..self.writes.min(LOG_CAPACITY)).unwrap_or(&[])
    }

    /// All writes made, including unlogged ones.
    pub fn write_count(&self) -> usize {
        self.writes
    }

    /// Reads of the ICR low register so far (delivery-status polls).
    pub fn icr_reads(&self) -> u32 {
        self.icr_reads.get()
    }

    /// Forgets the log.
    pub fn clear_log(&mut self) {
        self.writes = 0;
    }
}

impl XApicRegisters for FakeXApicRegisters {
    fn read(&self, offset: u32) -> u32 {
        let value = self.registers.get((offset as usize >> 4) & 63).copied().unwrap_or(0);
        if offset == reg::ICR_LOW {
            self.icr_reads.set(self.icr_reads.get() + 1);
            let pending = self.pending_reads.get();
            if self.stuck || pending > 0 {
                self.pending_reads.set(pending.saturating_sub(1));
                return value | (1 << 12);
            }
            return value & !(1 << 12);
        }
        value
    }

    fn write(&mut self, offset: u32, value: u32) {
        if let Some(entry) = self.log.get_mut(self.writes) {
            *entry = (offset, value);
        }
        self.writes += 1;
        if offset == reg::ICR_LOW {
            self.pending_reads.set(self.pending_after_send);
        }
        self.set(offset, value);
    }
}

/// A fake MSR file: up to 64 MSRs with values, and a log of writes.
#[derive(Debug, Clone)]
pub struct FakeMsrs {
    values: [(u32, u64); 64],
    count: usize,
    log: [(u32, u64); LOG_CAPACITY],
    writes: usize,
}

impl Default for FakeMsrs {
    fn default() -> Self {
        Self { values: [(0, 0); 64], count: 0, log: [(0, 0); LOG_CAPACITY], writes: 0 }
    }
}

impl FakeMsrs {
    /// MSRs of a processor in x2APIC mode with `apic_id` (IA32_APIC_BASE = 0xFEE00D00).
    pub fn x2apic(apic_id: u32) -> Self {
        let mut msrs = Self::default();
        msrs.set(reg::IA32_APIC_BASE, 0xFEE0_0D00);
        msrs.set(reg::x2apic_msr(reg::ID), u64::from(apic_id));
        msrs
    }

    /// Sets an MSR without logging.
    pub fn set(&mut self, msr: u32, value: u64) {
        if let Some(slot) =
            self.values.iter_mut().take(self.count).find(|(number, _)| *number == msr)
        {
            slot.1 = value;
        } else if let Some(slot) = self.values.get_mut(self.count) {
            *slot = (msr, value);
            self.count += 1;
        }
    }

    /// The logged writes, oldest first.
    pub fn writes(&self) -> &[(u32, u64)] {
        self.log.get(..self.writes.min(LOG_CAPACITY)).unwrap_or(&[])
    }

    /// Forgets the log.
    pub fn clear_log(&mut self) {
        self.writes = 0;
    }
}

impl FakeMsrs {
    fn value(&self, msr: u32) -> u64 {
        self.values
            .iter()
            .take(self.count)
            .find(|(number, _)| *number == msr)
            .map_or(0, |(_, v)| *v)
    }

    fn log_write(&mut self, msr: u32, value: u64) {
        if let Some(entry) = self.log.get_mut(self.writes) {
            *entry = (msr, value);
        }
        self.writes += 1;
        self.set(msr, value);
    }
}

impl MsrAccess for FakeMsrs {
    fn read_apic_base(&self) -> u64 {
        self.value(reg::IA32_APIC_BASE)
    }

    unsafe fn write_apic_base(&mut self, value: u64) {
        self.log_write(reg::IA32_APIC_BASE, value);
    }

    fn read_msr(&self, msr: ApicMsr) -> u64 {
        self.value(msr.number())
    }

    fn write_msr(&mut self, msr: ApicMsr, value: u64) {
        self.log_write(msr.number(), value);
    }
}
