//! FRED MSRs, IA32_FRED_CONFIG, IA32_FRED_STKLVLS, stack alignment and detection (Intel FRED
//! specification; CPUID and MSR numbers also in SDM Vol. 2A "CPUID" and Vol. 4).

use core::fmt;

/// MSR numbers.
pub mod msr {
    /// IA32_FRED_RSP0 (stack for level 0).
    pub const IA32_FRED_RSP0: u32 = 0x1CC;
    /// IA32_FRED_RSP1.
    pub const IA32_FRED_RSP1: u32 = 0x1CD;
    /// IA32_FRED_RSP2.
    pub const IA32_FRED_RSP2: u32 = 0x1CE;
    /// IA32_FRED_RSP3.
    pub const IA32_FRED_RSP3: u32 = 0x1CF;
    /// IA32_FRED_STKLVLS.
    pub const IA32_FRED_STKLVLS: u32 = 0x1D0;
    /// IA32_FRED_SSP1 (SSP0 is IA32_PL0_SSP).
    pub const IA32_FRED_SSP1: u32 = 0x1D1;
    /// IA32_FRED_SSP2.
    pub const IA32_FRED_SSP2: u32 = 0x1D2;
    /// IA32_FRED_SSP3.
    pub const IA32_FRED_SSP3: u32 = 0x1D3;
    /// IA32_FRED_CONFIG.
    pub const IA32_FRED_CONFIG: u32 = 0x1D4;
    /// IA32_PL0_SSP (FRED's SSP0).
    pub const IA32_PL0_SSP: u32 = 0x6A4;

    /// IA32_FRED_RSPn for stack level `level` (0-3).
    pub const fn rsp(level: u8) -> u32 {
        IA32_FRED_RSP0 + (level & 3) as u32
    }
}

/// CR4.FRED (bit 32).
pub const CR4_FRED: u64 = 1 << 32;

/// CPUID.(EAX=7,ECX=1):EAX bit 17 says FRED is supported.
pub const fn fred_supported(cpuid_7_1_eax: u32) -> bool {
    cpuid_7_1_eax & (1 << 17) != 0
}

/// Reads CPUID.(7,1):EAX on this processor (0 when leaf 7 is not available).
#[cfg(target_arch = "x86_64")]
pub fn cpuid_7_1_eax() -> u32 {
    #[allow(unused_unsafe, reason = "`__cpuid*` are unsafe fns on older supported compilers")]
    // SAFETY: CPUID exists on every x86_64 processor and has no side effects.
    let max = unsafe { core::arch::x86_64::__cpuid(0) }.eax;
    leaf_7_1_eax(max, || {
        #[allow(unused_unsafe, reason = "`__cpuid*` are unsafe fns on older supported compilers")]
        // SAFETY: as above; `leaf_7_1_eax` calls this only when leaf 7 exists.
        let leaf = unsafe { core::arch::x86_64::__cpuid_count(7, 1) };
        leaf.eax
    })
}

/// CPUID.(7,1):EAX given the highest basic leaf (CPUID.0:EAX): `read` runs only when leaf 7
/// exists; otherwise the answer is 0 (SDM Vol. 2A, CPUID: a leaf above the maximum returns the
/// data of the highest leaf, not zeros, so it must not be read).
#[cfg(any(target_arch = "x86_64", test))]
fn leaf_7_1_eax(max_basic_leaf: u32, read: impl FnOnce() -> u32) -> u32 {
    if max_basic_leaf < 7 { 0 } else { read() }
}

/// An invalid FRED configuration value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ConfigError {
    /// The entry page must be 4 KiB aligned (IA32_FRED_CONFIG bits 11:0 hold other fields).
    EntryPageMisaligned {
        /// The address given.
        address: u64,
    },
    /// The address must be canonical (bits 63:47 all equal, 4-level paging).
    NonCanonical {
        /// The address given.
        address: u64,
    },
    /// The red-zone field holds 0-7 units of 64 bytes (bits 8:6; width unconfirmed).
    RedZoneTooLarge {
        /// The units asked for.
        units: u8,
    },
    /// Stack levels are 0-3.
    StackLevelOutOfRange {
        /// The level given.
        level: u8,
    },
    /// IA32_FRED_STKLVLS covers vectors 0-31.
    VectorOutOfRange {
        /// The vector given.
        vector: u8,
    },
    /// RSP1-3 must be 64-byte aligned, SSP1-3 8-byte aligned.
    StackMisaligned {
        /// The value given.
        value: u64,
        /// The alignment required.
        alignment: u64,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EntryPageMisaligned { address } => {
                write!(
                    f,
                    "FRED entry page {address:#x} is not 4 KiB aligned (IA32_FRED_CONFIG bits 63:12)"
                )
            }
            Self::NonCanonical { address } => write!(f, "address {address:#x} is not canonical"),
            Self::RedZoneTooLarge { units } => {
                write!(f, "red zone of {units} x 64 bytes does not fit IA32_FRED_CONFIG bits 8:6")
            }
            Self::StackLevelOutOfRange { level } => write!(f, "stack level {level} is not 0-3"),
            Self::VectorOutOfRange { vector } => {
                write!(f, "vector {vector} has no IA32_FRED_STKLVLS entry (vectors 0-31)")
            }
            Self::StackMisaligned { value, alignment } => {
                write!(f, "stack pointer {value:#x} is not {alignment}-byte aligned")
            }
        }
    }
}

impl core::error::Error for ConfigError {}

const fn canonical(address: u64) -> bool {
    let top = address >> 47;
    top == 0 || top == 0x1_FFFF
}

/// IA32_FRED_CONFIG: bits 63:12 entry page (ring-3 events enter at the page base, ring-0 events
/// at +256), bits 8:6 red-zone size in 64-byte units (field width unconfirmed: Linux programs 1),
/// bits 10:9 stack level for interrupts. KVM treats bits 11, 5:4 and 2 as reserved; bits 1:0 and
/// 3 are not modelled here and are preserved by [`FredConfig::from_raw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct FredConfig(u64);

impl FredConfig {
    /// Bits KVM treats as reserved: 11, 5:4, 2.
    pub const RESERVED: u64 = (1 << 11) | (3 << 4) | (1 << 2);

    /// A configuration with `entry_page` (4 KiB aligned, canonical), `red_zone_units` × 64
    /// bytes of red zone, and interrupts on stack level `interrupt_stack_level`.
    pub const fn try_new(
        entry_page: u64,
        red_zone_units: u8,
        interrupt_stack_level: u8,
    ) -> Result<Self, ConfigError> {
        if entry_page & 0xFFF != 0 {
            return Err(ConfigError::EntryPageMisaligned { address: entry_page });
        }
        if !canonical(entry_page) {
            return Err(ConfigError::NonCanonical { address: entry_page });
        }
        if red_zone_units > 7 {
            return Err(ConfigError::RedZoneTooLarge { units: red_zone_units });
        }
        if interrupt_stack_level > 3 {
            return Err(ConfigError::StackLevelOutOfRange { level: interrupt_stack_level });
        }
        Ok(Self(
            entry_page | ((red_zone_units as u64) << 6) | ((interrupt_stack_level as u64) << 9),
        ))
    }

    /// Any value, as read from the MSR.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The MSR value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Bits 63:12.
    pub const fn entry_page(self) -> u64 {
        self.0 & !0xFFF
    }

    /// Bits 8:6.
    pub const fn red_zone_units(self) -> u8 {
        ((self.0 >> 6) & 7) as u8
    }

    /// The red zone in bytes.
    pub const fn red_zone_bytes(self) -> u64 {
        self.red_zone_units() as u64 * 64
    }

    /// Bits 10:9.
    pub const fn interrupt_stack_level(self) -> u8 {
        ((self.0 >> 9) & 3) as u8
    }

    /// Reserved bits found set.
    pub const fn reserved_bits(self) -> u64 {
        self.0 & Self::RESERVED
    }
}

/// IA32_FRED_STKLVLS: 2 bits per exception vector 0-31, at bit 2 × vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct StackLevels(u64);

impl StackLevels {
    /// Every vector on level 0.
    pub const fn new() -> Self {
        Self(0)
    }

    /// Any value, as read from the MSR.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The MSR value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// With `vector` (0-31) on stack `level` (0-3).
    pub const fn with(self, vector: u8, level: u8) -> Result<Self, ConfigError> {
        if vector > 31 {
            return Err(ConfigError::VectorOutOfRange { vector });
        }
        if level > 3 {
            return Err(ConfigError::StackLevelOutOfRange { level });
        }
        let shift = 2 * vector as u64;
        Ok(Self((self.0 & !(3 << shift)) | ((level as u64) << shift)))
    }

    /// The level of `vector` (0-31), or `None` for other vectors.
    pub const fn level(self, vector: u8) -> Option<u8> {
        if vector > 31 {
            return None;
        }
        Some(((self.0 >> (2 * vector as u64)) & 3) as u8)
    }
}

/// Checks a value for IA32_FRED_RSP1-3 (and RSP0): 64-byte aligned and canonical.
pub const fn check_rsp(value: u64) -> Result<u64, ConfigError> {
    if value & 63 != 0 {
        return Err(ConfigError::StackMisaligned { value, alignment: 64 });
    }
    if !canonical(value) {
        return Err(ConfigError::NonCanonical { address: value });
    }
    Ok(value)
}

/// Checks a value for IA32_FRED_SSP1-3: 8-byte aligned and canonical.
pub const fn check_ssp(value: u64) -> Result<u64, ConfigError> {
    if value & 7 != 0 {
        return Err(ConfigError::StackMisaligned { value, alignment: 8 });
    }
    if !canonical(value) {
        return Err(ConfigError::NonCanonical { address: value });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_numbers() {
        assert_eq!(msr::rsp(0), 0x1CC);
        assert_eq!(msr::rsp(3), 0x1CF);
        assert_eq!(msr::IA32_FRED_STKLVLS, 0x1D0);
        assert_eq!(
            [msr::IA32_FRED_SSP1, msr::IA32_FRED_SSP2, msr::IA32_FRED_SSP3],
            [0x1D1, 0x1D2, 0x1D3]
        );
        assert_eq!(msr::IA32_FRED_CONFIG, 0x1D4);
        assert_eq!(msr::IA32_PL0_SSP, 0x6A4);
        assert_eq!(CR4_FRED, 0x1_0000_0000);
        assert!(fred_supported(1 << 17));
        assert!(!fred_supported(!(1 << 17)));
    }

    #[test]
    fn config_encoding_and_errors() {
        // Linux-like: entry page, 1 unit of red zone, interrupts on level 0.
        let config = FredConfig::try_new(0xFFFF_FFFF_8100_0000, 1, 0).unwrap();
        assert_eq!(config.raw(), 0xFFFF_FFFF_8100_0040);
        assert_eq!(config.red_zone_bytes(), 64);
        assert_eq!(FredConfig::try_new(0x1000, 0, 3).unwrap().raw(), 0x1000 | (3 << 9));
        assert_eq!(FredConfig::try_new(0x1000, 7, 0).unwrap().raw(), 0x1000 | (7 << 6));
        assert_eq!(
            FredConfig::try_new(0x1001, 0, 0),
            Err(ConfigError::EntryPageMisaligned { address: 0x1001 })
        );
        assert_eq!(
            FredConfig::try_new(0x1800, 0, 0),
            Err(ConfigError::EntryPageMisaligned { address: 0x1800 })
        );
        assert_eq!(
            FredConfig::try_new(0x0000_8000_0000_0000, 0, 0),
            Err(ConfigError::NonCanonical { address: 0x0000_8000_0000_0000 })
        );
        assert_eq!(
            FredConfig::try_new(0x1000, 8, 0),
            Err(ConfigError::RedZoneTooLarge { units: 8 })
        );
        assert_eq!(
            FredConfig::try_new(0x1000, 0, 4),
            Err(ConfigError::StackLevelOutOfRange { level: 4 })
        );
        let read = FredConfig::from_raw(u64::MAX);
        assert_eq!(read.reserved_bits(), 0x834);
        assert_eq!(read.interrupt_stack_level(), 3);
        assert_eq!(read.red_zone_units(), 7);
        assert_eq!(read.entry_page(), !0xFFF);
    }

    #[test]
    fn stack_levels_two_bits_per_vector() {
        let levels =
            StackLevels::new().with(2, 3).unwrap().with(8, 2).unwrap().with(31, 1).unwrap();
        assert_eq!(levels.raw(), (3 << 4) | (2 << 16) | (1 << 62));
        assert_eq!(levels.level(2), Some(3));
        assert_eq!(levels.level(8), Some(2));
        assert_eq!(levels.level(0), Some(0));
        assert_eq!(levels.level(32), None);
        assert_eq!(levels.with(2, 0).unwrap().level(2), Some(0));
        assert_eq!(levels.with(32, 0), Err(ConfigError::VectorOutOfRange { vector: 32 }));
        assert_eq!(levels.with(0, 4), Err(ConfigError::StackLevelOutOfRange { level: 4 }));
    }

    #[test]
    fn rsp_msr_for_every_level() {
        assert_eq!(
            [msr::rsp(0), msr::rsp(1), msr::rsp(2), msr::rsp(3)],
            [msr::IA32_FRED_RSP0, msr::IA32_FRED_RSP1, msr::IA32_FRED_RSP2, msr::IA32_FRED_RSP3]
        );
        assert_eq!([msr::IA32_FRED_RSP1, msr::IA32_FRED_RSP2], [0x1CD, 0x1CE]);
        assert_eq!(msr::rsp(4), 0x1CC, "the level is taken modulo 4");
        assert_eq!(msr::rsp(0xFF), 0x1CF);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn cpuid_7_1_eax_is_this_processors_leaf() {
        #[allow(unused_unsafe, reason = "`__cpuid*` are unsafe fns on older supported compilers")]
        // SAFETY: CPUID exists on every x86_64 processor and has no side effects.
        let max = unsafe { core::arch::x86_64::__cpuid(0) }.eax;
        let expected = if max >= 7 {
            #[allow(
                unused_unsafe,
                reason = "`__cpuid*` are unsafe fns on older supported compilers"
            )]
            // SAFETY: as above; leaf 7 exists (checked).
            let leaf = unsafe { core::arch::x86_64::__cpuid_count(7, 1) };
            leaf.eax
        } else {
            0
        };
        assert_eq!(cpuid_7_1_eax(), expected);
        assert_eq!(fred_supported(cpuid_7_1_eax()), expected & (1 << 17) != 0);
    }

    #[test]
    fn leaf_7_is_read_only_where_it_exists() {
        let never = || -> u32 { panic!("leaf 7 read although the maximum basic leaf is below 7") };
        assert_eq!(leaf_7_1_eax(0, never), 0);
        assert_eq!(leaf_7_1_eax(6, never), 0);
        assert_eq!(leaf_7_1_eax(7, || 1 << 17), 1 << 17);
        assert_eq!(leaf_7_1_eax(0x20, || 0x30), 0x30);
    }

    #[test]
    fn canonical_boundaries() {
        // 48-bit addresses: bits 63:47 all 0 or all 1.
        for good in [0, 0x0000_7FFF_FFFF_F000, 0xFFFF_8000_0000_0000, 0xFFFF_FFFF_FFFF_F000] {
            assert!(FredConfig::try_new(good, 0, 0).is_ok(), "{good:#x}");
            assert_eq!(check_rsp(good), Ok(good));
            assert_eq!(check_ssp(good), Ok(good));
        }
        for bad in [0x0000_8000_0000_0000, 0xFFFF_7FFF_FFFF_F000, 0x8000_0000_0000_0000] {
            assert_eq!(
                FredConfig::try_new(bad, 0, 0),
                Err(ConfigError::NonCanonical { address: bad })
            );
            assert_eq!(check_rsp(bad), Err(ConfigError::NonCanonical { address: bad }));
            assert_eq!(check_ssp(bad), Err(ConfigError::NonCanonical { address: bad }));
        }
    }

    #[test]
    fn config_fields_read_back_alone() {
        let config = FredConfig::try_new(0x7000, 5, 2).unwrap();
        assert_eq!(config.raw(), 0x7000 | (5 << 6) | (2 << 9));
        assert_eq!(config.entry_page(), 0x7000);
        assert_eq!(config.red_zone_units(), 5);
        assert_eq!(config.red_zone_bytes(), 320);
        assert_eq!(config.interrupt_stack_level(), 2);
        assert_eq!(config.reserved_bits(), 0);
        assert_eq!(FredConfig::from_raw(0x1FF).entry_page(), 0);
        assert_eq!(FredConfig::from_raw(0x834).red_zone_units(), 0);
        assert_eq!(FredConfig::from_raw(0x834).interrupt_stack_level(), 0);
        assert_eq!(FredConfig::from_raw(1 << 2).reserved_bits(), 1 << 2);
    }

    #[test]
    fn stack_levels_every_vector_and_level() {
        let mut levels = StackLevels::new();
        for vector in 0..32u8 {
            levels = levels.with(vector, vector % 4).unwrap();
        }
        // Levels 0,1,2,3 repeating: 0b11_10_01_00 per byte.
        assert_eq!(levels.raw(), 0xE4E4_E4E4_E4E4_E4E4);
        for vector in 0..32u8 {
            assert_eq!(levels.level(vector), Some(vector % 4), "vector {vector}");
            // Changing one vector leaves every other vector's level.
            let changed = levels.with(vector, 3 - vector % 4).unwrap();
            assert_eq!(changed.raw() ^ levels.raw(), 3 << (2 * u64::from(vector)));
        }
        assert_eq!(StackLevels::from_raw(u64::MAX).level(31), Some(3));
        assert_eq!(StackLevels::from_raw(u64::MAX).level(32), None);
        assert_eq!(StackLevels::from_raw(u64::MAX).level(255), None);
        assert_eq!(
            StackLevels::new().with(255, 0),
            Err(ConfigError::VectorOutOfRange { vector: 255 })
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                ConfigError::EntryPageMisaligned { address: 0x1001 },
                "FRED entry page 0x1001 is not 4 KiB aligned (IA32_FRED_CONFIG bits 63:12)",
            ),
            (
                ConfigError::NonCanonical { address: 0x8000_0000_0000 },
                "address 0x800000000000 is not canonical",
            ),
            (
                ConfigError::RedZoneTooLarge { units: 8 },
                "red zone of 8 x 64 bytes does not fit IA32_FRED_CONFIG bits 8:6",
            ),
            (ConfigError::StackLevelOutOfRange { level: 4 }, "stack level 4 is not 0-3"),
            (
                ConfigError::VectorOutOfRange { vector: 32 },
                "vector 32 has no IA32_FRED_STKLVLS entry (vectors 0-31)",
            ),
            (
                ConfigError::StackMisaligned { value: 0x1020, alignment: 64 },
                "stack pointer 0x1020 is not 64-byte aligned",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(std::format!("{error}"), text);
        }
    }

    #[test]
    fn stack_alignment() {
        assert_eq!(check_rsp(0xFFFF_C900_0000_0040), Ok(0xFFFF_C900_0000_0040));
        assert_eq!(
            check_rsp(0x1020),
            Err(ConfigError::StackMisaligned { value: 0x1020, alignment: 64 })
        );
        assert_eq!(check_ssp(0x1008), Ok(0x1008));
        assert_eq!(
            check_ssp(0x1004),
            Err(ConfigError::StackMisaligned { value: 0x1004, alignment: 8 })
        );
        assert!(matches!(check_ssp(0x8000_0000_0000_0000), Err(ConfigError::NonCanonical { .. })));
    }
}
