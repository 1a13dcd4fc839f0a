//! Local vector table entries and the APIC timer (SDM Vol. 3A "Local Vector Table",
//! "APIC Timer").
#![forbid(unsafe_code)]

/// LVT delivery modes (bits 10:8). Not every LVT entry accepts every mode: the timer and error
/// entries only use fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LvtDeliveryMode {
    /// 000 fixed.
    Fixed,
    /// 010 SMI.
    Smi,
    /// 100 NMI.
    Nmi,
    /// 111 ExtINT.
    ExtInt,
    /// 101 INIT.
    Init,
    /// Any other value read back (kept).
    Reserved(u8),
}

impl LvtDeliveryMode {
    /// Bits 10:8.
    pub const fn bits(self) -> u32 {
        match self {
            Self::Fixed => 0,
            Self::Smi => 2,
            Self::Nmi => 4,
            Self::Init => 5,
            Self::ExtInt => 7,
            Self::Reserved(bits) => (bits & 7) as u32,
        }
    }

    /// Decodes bits 10:8 of an LVT value.
    pub const fn from_lvt(value: u32) -> Self {
        match (value >> 8) & 7 {
            0 => Self::Fixed,
            2 => Self::Smi,
            4 => Self::Nmi,
            5 => Self::Init,
            7 => Self::ExtInt,
            other => Self::Reserved(other as u8),
        }
    }
}

/// Timer modes (LVT timer bits 18:17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TimerMode {
    /// 00 one-shot.
    OneShot,
    /// 01 periodic.
    Periodic,
    /// 10 TSC-deadline (CPUID.1:ECX\[24\]).
    TscDeadline,
    /// 11 reserved (kept when read).
    Reserved,
}

impl TimerMode {
    /// Bits 18:17 in place.
    pub const fn bits(self) -> u32 {
        (match self {
            Self::OneShot => 0,
            Self::Periodic => 1,
            Self::TscDeadline => 2,
            Self::Reserved => 3,
        }) << 17
    }

    /// Decodes bits 18:17 of an LVT timer value.
    pub const fn from_lvt(value: u32) -> Self {
        match (value >> 17) & 3 {
            0 => Self::OneShot,
            1 => Self::Periodic,
            2 => Self::TscDeadline,
            _ => Self::Reserved,
        }
    }
}

/// The timer divide configuration (register 0x3E0, bits 0, 1 and 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Divide {
    /// Divide by 1 (1011).
    By1,
    /// Divide by 2 (0000).
    By2,
    /// Divide by 4 (0001).
    By4,
    /// Divide by 8 (0010).
    By8,
    /// Divide by 16 (0011).
    By16,
    /// Divide by 32 (1000).
    By32,
    /// Divide by 64 (1001).
    By64,
    /// Divide by 128 (1010).
    By128,
}

impl Divide {
    /// The register value.
    pub const fn bits(self) -> u32 {
        match self {
            Self::By2 => 0b0000,
            Self::By4 => 0b0001,
            Self::By8 => 0b0010,
            Self::By16 => 0b0011,
            Self::By32 => 0b1000,
            Self::By64 => 0b1001,
            Self::By128 => 0b1010,
            Self::By1 => 0b1011,
        }
    }

    /// The divisor.
    pub const fn divisor(self) -> u32 {
        match self {
            Self::By1 => 1,
            Self::By2 => 2,
            Self::By4 => 4,
            Self::By8 => 8,
            Self::By16 => 16,
            Self::By32 => 32,
            Self::By64 => 64,
            Self::By128 => 128,
        }
    }

    /// Decodes bits 0, 1 and 3 of the register (bit 2 is reserved and ignored).
    pub const fn from_register(value: u32) -> Self {
        match value & 0b1011 {
            0b0000 => Self::By2,
            0b0001 => Self::By4,
            0b0010 => Self::By8,
            0b0011 => Self::By16,
            0b1000 => Self::By32,
            0b1001 => Self::By64,
            0b1010 => Self::By128,
            _ => Self::By1,
        }
    }
}

/// An LVT entry value: vector 7:0, delivery mode 10:8, delivery status 12 (read-only),
/// polarity 13, remote IRR 14 (read-only), trigger mode 15, mask 16, timer mode 18:17.
/// Reserved bits are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct LvtEntry(u32);

impl LvtEntry {
    /// Bit 16.
    pub const MASKED: u32 = 1 << 16;

    /// A masked entry (the reset value).
    pub const MASKED_ENTRY: Self = Self(Self::MASKED);

    /// An unmasked fixed entry with `vector`.
    pub const fn fixed(vector: u8) -> Self {
        Self(vector as u32)
    }

    /// An unmasked entry with `mode` (vector ignored by NMI, SMI, INIT and ExtINT).
    pub const fn with_mode(vector: u8, mode: LvtDeliveryMode) -> Self {
        Self(vector as u32 | (mode.bits() << 8))
    }

    /// Any bits, as read.
    pub const fn from_raw(raw: u32) -> Self {
        Self(raw)
    }

    /// The raw value.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// Bits 7:0.
    pub const fn vector(self) -> u8 {
        (self.0 & 0xFF) as u8
    }

    /// Bits 10:8.
    pub const fn delivery_mode(self) -> LvtDeliveryMode {
        LvtDeliveryMode::from_lvt(self.0)
    }

    /// Bit 16.
    pub const fn is_masked(self) -> bool {
        self.0 & Self::MASKED != 0
    }

    /// Bit 12 (read-only): send pending.
    pub const fn delivery_pending(self) -> bool {
        self.0 & (1 << 12) != 0
    }

    /// Bits 18:17 (timer entry only).
    pub const fn timer_mode(self) -> TimerMode {
        TimerMode::from_lvt(self.0)
    }

    /// With bit 16 set or clear.
    pub const fn with_mask(self, masked: bool) -> Self {
        Self(if masked { self.0 | Self::MASKED } else { self.0 & !Self::MASKED })
    }

    /// With bit 13 (input pin polarity, LINT0/1: 1 = active low).
    pub const fn with_active_low(self, active_low: bool) -> Self {
        Self(if active_low { self.0 | (1 << 13) } else { self.0 & !(1 << 13) })
    }

    /// With bit 15 (trigger mode, LINT0/1: 1 = level).
    pub const fn with_level_triggered(self, level: bool) -> Self {
        Self(if level { self.0 | (1 << 15) } else { self.0 & !(1 << 15) })
    }

    /// With timer mode bits 18:17.
    pub const fn with_timer_mode(self, mode: TimerMode) -> Self {
        Self((self.0 & !(3 << 17)) | mode.bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divide_encodings_for_every_divisor() {
        let table = [
            (Divide::By1, 0b1011),
            (Divide::By2, 0b0000),
            (Divide::By4, 0b0001),
            (Divide::By8, 0b0010),
            (Divide::By16, 0b0011),
            (Divide::By32, 0b1000),
            (Divide::By64, 0b1001),
            (Divide::By128, 0b1010),
        ];
        for (divide, bits) in table {
            assert_eq!(divide.bits(), bits, "{divide:?}");
            assert_eq!(Divide::from_register(bits), divide);
            assert_eq!(Divide::from_register(bits | 0b0100), divide, "bit 2 ignored");
        }
        assert_eq!(Divide::By128.divisor(), 128);
    }

    #[test]
    fn lvt_bits() {
        let timer = LvtEntry::fixed(0xEC).with_timer_mode(TimerMode::Periodic);
        assert_eq!(timer.raw(), 0x0002_00EC);
        assert_eq!(
            LvtEntry::fixed(0x30).with_timer_mode(TimerMode::TscDeadline).raw(),
            0x0004_0030
        );
        assert_eq!(timer.with_mask(true).raw(), 0x0003_00EC);
        assert_eq!(timer.with_timer_mode(TimerMode::OneShot).raw(), 0xEC);
        assert_eq!(LvtEntry::with_mode(0, LvtDeliveryMode::Nmi).raw(), 0x400);
        assert_eq!(LvtEntry::with_mode(0, LvtDeliveryMode::ExtInt).raw(), 0x700);
        assert_eq!(
            LvtEntry::fixed(1).with_active_low(true).with_level_triggered(true).raw(),
            0xA001
        );
        let read = LvtEntry::from_raw(0xFFFF_FFFF);
        assert!(read.is_masked() && read.delivery_pending());
        assert_eq!(read.timer_mode(), TimerMode::Reserved);
        assert_eq!(read.delivery_mode(), LvtDeliveryMode::ExtInt);
        assert_eq!(LvtDeliveryMode::from_lvt(0x300), LvtDeliveryMode::Reserved(3));
        assert_eq!(LvtEntry::MASKED_ENTRY.raw(), 0x1_0000);
    }
}
