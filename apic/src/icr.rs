//! Inter-processor interrupts: a builder that can only express the valid ICR combinations
//! (SDM Vol. 3A "Interrupt Command Register (ICR)" and the table "Valid Combinations for the
//! Pentium 4 and Intel Xeon Processors' Local xAPIC Interrupt Command Register").
//!
//! | delivery mode | no shorthand | self | all including self | all excluding self | trigger |
//! |---|---|---|---|---|---|
//! | fixed | yes | yes | yes | yes | edge |
//! | lowest priority | yes | no | no | no | edge |
//! | SMI | yes | no | no | yes | edge |
//! | NMI | yes | no | no | yes | edge |
//! | INIT (assert) | yes | no | no | yes | edge |
//! | INIT level de-assert | all-including-self form only (legacy) | | | | level |
//! | start-up | yes | no | no | yes | edge |
//!
//! Each delivery mode has its own constructor whose target type only holds the allowed
//! destinations: an NMI "to self" cannot be written. Fixed and lowest-priority vectors 0-15 are
//! rejected ([`IpiError::ReservedVector`]); destinations are checked against the APIC mode when
//! the ICR value is produced ([`Ipi::encode`]).
#![forbid(unsafe_code)]

use core::fmt;

/// A destination APIC ID or logical destination (8 bits in xAPIC mode, 32 in x2APIC mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Destination {
    /// Physical destination mode: an APIC ID (0xFF / 0xFFFF_FFFF broadcast).
    Physical(u32),
    /// Logical destination mode: a logical destination (matched against LDR/DFR).
    Logical(u32),
}

/// Targets of a fixed IPI: every shorthand is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FixedTarget {
    /// A destination field.
    To(Destination),
    /// Shorthand 01: self.
    ToSelf,
    /// Shorthand 10: all including self.
    AllIncludingSelf,
    /// Shorthand 11: all excluding self.
    AllExcludingSelf,
}

/// Targets of NMI, SMI, INIT and start-up IPIs: no "self" and no "all including self".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Target {
    /// A destination field (a self-NMI names the own APIC ID here).
    To(Destination),
    /// Shorthand 11: all excluding self.
    AllExcludingSelf,
}

/// ICR delivery modes (bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DeliveryMode {
    /// 000.
    Fixed,
    /// 001.
    LowestPriority,
    /// 010.
    Smi,
    /// 100.
    Nmi,
    /// 101.
    Init,
    /// 110.
    StartUp,
}

impl DeliveryMode {
    /// Bits 10:8.
    pub const fn bits(self) -> u32 {
        match self {
            Self::Fixed => 0b000,
            Self::LowestPriority => 0b001,
            Self::Smi => 0b010,
            Self::Nmi => 0b100,
            Self::Init => 0b101,
            Self::StartUp => 0b110,
        }
    }
}

/// The APIC mode an ICR value is produced for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Mode {
    /// xAPIC: 8-bit destination in ICR high bits 31:24.
    XApic,
    /// x2APIC: 32-bit destination in ICR bits 63:32.
    X2Apic,
}

/// Why an IPI could not be built or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum IpiError {
    /// Vectors 0-15 are reserved for fixed and lowest-priority delivery (the receiving APIC
    /// reports an illegal vector).
    ReservedVector {
        /// The vector given.
        vector: u8,
    },
    /// The destination does not fit the mode (xAPIC destinations are 8 bits).
    DestinationOutOfRange {
        /// The destination given.
        destination: u32,
    },
    /// xAPIC only: the delivery-status bit stayed 1 (send pending) for the whole bound.
    Timeout {
        /// Polls made.
        polls: u32,
        /// `false`: a previous IPI was still pending, this one was **not** sent. `true`: this
        /// IPI was written to the ICR but not yet accepted.
        sent: bool,
    },
}

impl fmt::Display for IpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedVector { vector } => write!(
                f,
                "vector {vector} is reserved for fixed/lowest-priority IPIs (vectors 0-15; SDM \"Valid Interrupt Vectors\")"
            ),
            Self::DestinationOutOfRange { destination } => write!(
                f,
                "destination {destination:#x} does not fit the 8-bit xAPIC destination field (ICR bits 63:56)"
            ),
            Self::Timeout { polls, sent: false } => write!(
                f,
                "ICR delivery status stayed 'send pending' for {polls} polls before sending; IPI not sent"
            ),
            Self::Timeout { polls, sent: true } => write!(
                f,
                "IPI written but ICR delivery status stayed 'send pending' for {polls} polls"
            ),
        }
    }
}

impl core::error::Error for IpiError {}

/// A valid IPI request.
///
/// Built only through constructors that cannot express an invalid request (a fixed vector
/// below 16, an NMI with the "self" shorthand); [`encode`](Self::encode) gives the ICR value.
///
/// ```
/// use hvkit_apic::{Destination, FixedTarget, Ipi, IpiError, Mode, Target};
///
/// // A fixed self-IPI with vector 0x40: shorthand 01 (bits 19:18), level assert (bit 14).
/// let ipi = Ipi::fixed(0x40, FixedTarget::ToSelf)?;
/// assert_eq!(ipi.encode(Mode::X2Apic)?, 0x0004_4040);
/// // An NMI (delivery mode 100) to APIC ID 3; xAPIC puts the destination in bits 63:56.
/// let nmi = Ipi::nmi(Target::To(Destination::Physical(3)));
/// assert_eq!(nmi.encode(Mode::XApic)?, 0x0300_0000_0000_4400);
/// // Vectors 0-15 are reserved for fixed IPIs; xAPIC destinations are 8 bits.
/// assert_eq!(Ipi::fixed(15, FixedTarget::ToSelf), Err(IpiError::ReservedVector { vector: 15 }));
/// let far = Ipi::nmi(Target::To(Destination::Physical(0x100)));
/// assert_eq!(far.encode(Mode::XApic), Err(IpiError::DestinationOutOfRange { destination: 0x100 }));
/// # Ok::<(), IpiError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Ipi {
    mode: DeliveryMode,
    vector: u8,
    destination: Option<Destination>,
    shorthand: u32,
    level_assert: bool,
    level_trigger: bool,
}

const SHORTHAND_SELF: u32 = 0b01;
const SHORTHAND_ALL_INCLUDING_SELF: u32 = 0b10;
const SHORTHAND_ALL_EXCLUDING_SELF: u32 = 0b11;

impl Ipi {
    const fn with(mode: DeliveryMode, vector: u8, target: Target) -> Self {
        let (destination, shorthand) = match target {
            Target::To(destination) => (Some(destination), 0),
            Target::AllExcludingSelf => (None, SHORTHAND_ALL_EXCLUDING_SELF),
        };
        Self { mode, vector, destination, shorthand, level_assert: true, level_trigger: false }
    }

    /// A fixed interrupt with `vector` (16-255) to `target`, edge-triggered.
    pub const fn fixed(vector: u8, target: FixedTarget) -> Result<Self, IpiError> {
        if vector < 16 {
            return Err(IpiError::ReservedVector { vector });
        }
        let (destination, shorthand) = match target {
            FixedTarget::To(destination) => (Some(destination), 0),
            FixedTarget::ToSelf => (None, SHORTHAND_SELF),
            FixedTarget::AllIncludingSelf => (None, SHORTHAND_ALL_INCLUDING_SELF),
            FixedTarget::AllExcludingSelf => (None, SHORTHAND_ALL_EXCLUDING_SELF),
        };
        Ok(Self {
            mode: DeliveryMode::Fixed,
            vector,
            destination,
            shorthand,
            level_assert: true,
            level_trigger: false,
        })
    }

    /// A lowest-priority interrupt with `vector` (16-255), destination field only.
    pub const fn lowest_priority(vector: u8, destination: Destination) -> Result<Self, IpiError> {
        if vector < 16 {
            return Err(IpiError::ReservedVector { vector });
        }
        Ok(Self::with(DeliveryMode::LowestPriority, vector, Target::To(destination)))
    }

    /// An NMI (vector field 0). A self-NMI is `Ipi::nmi(Target::To(Destination::Physical(own_id)))`:
    /// the "self" shorthand is not valid for NMIs and cannot be expressed.
    pub const fn nmi(target: Target) -> Self {
        Self::with(DeliveryMode::Nmi, 0, target)
    }

    /// An SMI (vector field 0).
    pub const fn smi(target: Target) -> Self {
        Self::with(DeliveryMode::Smi, 0, target)
    }

    /// An INIT (level assert, edge).
    pub const fn init(target: Target) -> Self {
        Self::with(DeliveryMode::Init, 0, target)
    }

    /// The legacy INIT level de-assert (level 0, level-triggered, sent to all including self):
    /// needed only by processors before the Pentium 4 (SDM "MP Initialization").
    pub const fn init_level_deassert() -> Self {
        Self {
            mode: DeliveryMode::Init,
            vector: 0,
            destination: None,
            shorthand: SHORTHAND_ALL_INCLUDING_SELF,
            level_assert: false,
            level_trigger: true,
        }
    }

    /// A start-up IPI: the target starts at physical address `page << 12`.
    pub const fn startup(page: u8, target: Target) -> Self {
        Self::with(DeliveryMode::StartUp, page, target)
    }

    /// The delivery mode.
    pub const fn delivery_mode(&self) -> DeliveryMode {
        self.mode
    }

    /// The vector field.
    pub const fn vector(&self) -> u8 {
        self.vector
    }

    /// The destination, when the IPI uses the destination field.
    pub const fn destination(&self) -> Option<Destination> {
        self.destination
    }

    /// The ICR value for `mode`: bits 31:0 are the ICR low half; bits 63:32 the destination in
    /// x2APIC format, or the xAPIC ICR high half (destination in bits 63:56).
    pub const fn encode(&self, mode: Mode) -> Result<u64, IpiError> {
        let (destination, logical) = match self.destination {
            Some(Destination::Physical(id)) => (id, false),
            Some(Destination::Logical(id)) => (id, true),
            None => (0, false),
        };
        let high = match mode {
            Mode::X2Apic => destination as u64,
            Mode::XApic => {
                if destination > 0xFF {
                    return Err(IpiError::DestinationOutOfRange { destination });
                }
                (destination as u64) << 24
            }
        };
        let low = self.vector as u32
            | (self.mode.bits() << 8)
            | ((logical as u32) << 11)
            | ((self.level_assert as u32) << 14)
            | ((self.level_trigger as u32) << 15)
            | (self.shorthand << 18);
        Ok((high << 32) | low as u64)
    }
}

/// An NMI-source number for the vector field of an NMI (1-15), where the processor
/// supports NMI-source reporting (CPUID.(EAX=7,ECX=1):EAX\[20\]; Intel FRED specification,
/// "NMI-Source Reporting"). The receiving processor sets bit `n` of the 16-bit NMI-source
/// bitmap its NMI handler (FRED event data) or an NMI VM exit (exit qualification) sees.
///
/// Vector 0, and any vector above 15, is reported as bit 0 ("unknown source"): this type
/// cannot hold them, so an NMI either names a source or is a plain [`Ipi::nmi`]. Source 2 is
/// the one the processor also reports for external NMIs (NMI pin, LINT): usable, but not
/// distinguishable from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct NmiSource(u8);

impl NmiSource {
    /// The lowest source number.
    pub const MIN: u8 = 1;
    /// The highest source number.
    pub const MAX: u8 = 15;

    /// `source` if it is 1-15.
    pub const fn new(source: u8) -> Option<Self> {
        if source >= Self::MIN && source <= Self::MAX { Some(Self(source)) } else { None }
    }

    /// The source number (1-15).
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The bit this source sets in the receiver's NMI-source bitmap.
    pub const fn bitmap_bit(self) -> u16 {
        1 << self.0
    }
}

impl Ipi {
    /// An NMI whose vector field carries `source` (NMI-source reporting). Send it only where
    /// the processor enumerates NMI-source reporting (CPUID.(EAX=7,ECX=1):EAX\[20\]); elsewhere
    /// use [`Ipi::nmi`] (vector 0): processors without the feature ignore the vector of an NMI,
    /// but Linux zeroes it anyway to avoid misbehaving hardware or hypervisors. As with
    /// [`Ipi::nmi`], "self" cannot be expressed: name the own APIC ID.
    pub const fn nmi_with_source(source: NmiSource, target: Target) -> Self {
        Self::with(DeliveryMode::Nmi, source.get(), target)
    }
}

#[cfg(test)]
mod nmi_source_tests {
    use super::*;

    #[test]
    fn source_numbers_1_to_15_only() {
        assert_eq!(NmiSource::new(0), None, "0 is reported as unknown");
        assert_eq!(NmiSource::new(1).map(NmiSource::get), Some(1));
        assert_eq!(NmiSource::new(15).map(NmiSource::get), Some(15));
        assert_eq!(NmiSource::new(16), None, "above 15 is reported as unknown");
        assert_eq!(NmiSource::new(255), None);
        assert_eq!((NmiSource::MIN, NmiSource::MAX), (1, 15));
        let accepted = (0..=255u8).filter(|&n| NmiSource::new(n).is_some()).count();
        assert_eq!(accepted, 15);
    }

    #[test]
    fn bitmap_bit_is_one_shifted_by_the_source() {
        for n in 1..=15u8 {
            assert_eq!(NmiSource::new(n).unwrap().bitmap_bit(), 1u16 << n);
        }
    }

    #[test]
    fn source_goes_in_the_vector_field_of_an_nmi() {
        let source = NmiSource::new(5).unwrap();
        let ipi = Ipi::nmi_with_source(source, Target::To(Destination::Physical(3)));
        assert_eq!(ipi.delivery_mode(), DeliveryMode::Nmi);
        assert_eq!(ipi.vector(), 5);
        assert_eq!(ipi.destination(), Some(Destination::Physical(3)));
        // Vector bits 7:0 = 5, NMI delivery 100 in 10:8, level assert bit 14, edge.
        assert_eq!(ipi.encode(Mode::XApic), Ok(0x0300_0000_0000_4405));
        assert_eq!(ipi.encode(Mode::X2Apic), Ok(0x0000_0003_0000_4405));
        let all = Ipi::nmi_with_source(NmiSource::new(15).unwrap(), Target::AllExcludingSelf);
        assert_eq!(all.encode(Mode::X2Apic), Ok(0x000C_440F));
        // Identical to a plain NMI except for the vector field.
        for n in 1..=15u8 {
            let target = Target::To(Destination::Logical(2));
            let with = Ipi::nmi_with_source(NmiSource::new(n).unwrap(), target);
            let plain = Ipi::nmi(target);
            assert_eq!(
                with.encode(Mode::X2Apic).unwrap() ^ plain.encode(Mode::X2Apic).unwrap(),
                u64::from(n)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn low(ipi: Ipi) -> u32 {
        ipi.encode(Mode::X2Apic).unwrap() as u32
    }

    #[test]
    fn each_field_sits_on_its_facts_bits() {
        // Fixed, vector 0x40, physical 3: vector bits 7:0, level-assert bit 14.
        assert_eq!(
            Ipi::fixed(0x40, FixedTarget::To(Destination::Physical(3)))
                .unwrap()
                .encode(Mode::XApic),
            Ok(0x0300_0000_0000_4040)
        );
        // NMI: delivery mode 100 in 10:8, level assert: 0x4400 (the self-NMI ICR value recorded from Bochs 2.7).
        assert_eq!(low(Ipi::nmi(Target::To(Destination::Physical(3)))), 0x4400);
        assert_eq!(low(Ipi::smi(Target::To(Destination::Physical(0)))), 0x4200);
        assert_eq!(low(Ipi::init(Target::To(Destination::Physical(0)))), 0x4500);
        assert_eq!(low(Ipi::startup(0x9F, Target::To(Destination::Physical(0)))), 0x469F);
        assert_eq!(low(Ipi::lowest_priority(0x30, Destination::Physical(0)).unwrap()), 0x4130);
        // Logical destination mode: bit 11.
        assert_eq!(low(Ipi::nmi(Target::To(Destination::Logical(1)))), 0x4C00);
        // Shorthands: bits 19:18.
        assert_eq!(low(Ipi::fixed(0x20, FixedTarget::ToSelf).unwrap()), 0x0004_4020);
        assert_eq!(low(Ipi::fixed(0x20, FixedTarget::AllIncludingSelf).unwrap()), 0x0008_4020);
        assert_eq!(low(Ipi::fixed(0x20, FixedTarget::AllExcludingSelf).unwrap()), 0x000C_4020);
        assert_eq!(low(Ipi::nmi(Target::AllExcludingSelf)), 0x000C_4400);
        // INIT de-assert: level 0 (bit 14 clear), trigger level (bit 15), all including self.
        assert_eq!(low(Ipi::init_level_deassert()), 0x0008_8500);
    }

    #[test]
    fn destinations_per_mode() {
        let nmi = Ipi::nmi(Target::To(Destination::Physical(3)));
        assert_eq!(nmi.encode(Mode::XApic), Ok(0x0300_0000_0000_4400));
        assert_eq!(nmi.encode(Mode::X2Apic), Ok(0x0000_0003_0000_4400));
        let far = Ipi::nmi(Target::To(Destination::Physical(256)));
        assert_eq!(
            far.encode(Mode::XApic),
            Err(IpiError::DestinationOutOfRange { destination: 256 })
        );
        assert_eq!(far.encode(Mode::X2Apic), Ok(0x0000_0100_0000_4400));
        let broadcast = Ipi::nmi(Target::To(Destination::Physical(0xFF)));
        assert_eq!(broadcast.encode(Mode::XApic), Ok(0xFF00_0000_0000_4400));
        let x2_broadcast = Ipi::nmi(Target::To(Destination::Physical(0xFFFF_FFFF)));
        assert_eq!(x2_broadcast.encode(Mode::X2Apic), Ok(0xFFFF_FFFF_0000_4400));
        assert!(x2_broadcast.encode(Mode::XApic).is_err());
    }

    #[test]
    fn reserved_vectors_rejected_for_fixed_and_lowest_priority() {
        for vector in 0..16 {
            assert_eq!(
                Ipi::fixed(vector, FixedTarget::ToSelf),
                Err(IpiError::ReservedVector { vector })
            );
            assert_eq!(
                Ipi::lowest_priority(vector, Destination::Physical(0)),
                Err(IpiError::ReservedVector { vector })
            );
        }
        assert!(Ipi::fixed(16, FixedTarget::ToSelf).is_ok());
        assert!(Ipi::fixed(255, FixedTarget::ToSelf).is_ok());
    }

    #[test]
    fn accessors_return_what_was_built() {
        let fixed = Ipi::fixed(0xEC, FixedTarget::To(Destination::Logical(5))).unwrap();
        assert_eq!(fixed.delivery_mode(), DeliveryMode::Fixed);
        assert_eq!(fixed.vector(), 0xEC);
        assert_eq!(fixed.destination(), Some(Destination::Logical(5)));
        let startup = Ipi::startup(0x9F, Target::To(Destination::Physical(7)));
        assert_eq!(startup.delivery_mode(), DeliveryMode::StartUp);
        assert_eq!(startup.vector(), 0x9F, "the start-up page travels in the vector field");
        assert_eq!(startup.destination(), Some(Destination::Physical(7)));
        let lowest = Ipi::lowest_priority(0x31, Destination::Physical(2)).unwrap();
        assert_eq!(lowest.delivery_mode(), DeliveryMode::LowestPriority);
        assert_eq!(lowest.vector(), 0x31);
        // Shorthand targets have no destination field.
        assert_eq!(Ipi::fixed(0x20, FixedTarget::ToSelf).unwrap().destination(), None);
        assert_eq!(Ipi::nmi(Target::AllExcludingSelf).destination(), None);
        assert_eq!(Ipi::init_level_deassert().destination(), None);
        assert_eq!(Ipi::nmi(Target::AllExcludingSelf).delivery_mode(), DeliveryMode::Nmi);
        assert_eq!(Ipi::smi(Target::AllExcludingSelf).delivery_mode(), DeliveryMode::Smi);
        assert_eq!(Ipi::init(Target::AllExcludingSelf).delivery_mode(), DeliveryMode::Init);
        assert_eq!(Ipi::init_level_deassert().delivery_mode(), DeliveryMode::Init);
        assert_eq!(Ipi::nmi(Target::AllExcludingSelf).vector(), 0);
    }

    #[test]
    fn every_field_of_the_low_half_at_once() {
        // Vector 0xFF, logical, shorthand 11 together: a field that bleeds into another shows.
        let ipi = Ipi::fixed(0xFF, FixedTarget::AllExcludingSelf).unwrap();
        assert_eq!(ipi.encode(Mode::XApic), Ok(0x000C_40FF));
        let ipi = Ipi::lowest_priority(0xFF, Destination::Logical(0xFF)).unwrap();
        assert_eq!(ipi.encode(Mode::XApic), Ok(0xFF00_0000_0000_49FF));
        assert_eq!(ipi.encode(Mode::X2Apic), Ok(0x0000_00FF_0000_49FF));
        // The largest xAPIC destination (0xFF) fits; 0x100 does not (both sides of 8 bits).
        let edge = Ipi::nmi(Target::To(Destination::Logical(0x100)));
        assert_eq!(
            edge.encode(Mode::XApic),
            Err(IpiError::DestinationOutOfRange { destination: 0x100 })
        );
    }

    #[test]
    fn errors_read_like_the_manual() {
        assert_eq!(
            std::format!("{}", IpiError::ReservedVector { vector: 15 }),
            "vector 15 is reserved for fixed/lowest-priority IPIs (vectors 0-15; SDM \"Valid \
             Interrupt Vectors\")"
        );
        assert_eq!(
            std::format!("{}", IpiError::DestinationOutOfRange { destination: 0x100 }),
            "destination 0x100 does not fit the 8-bit xAPIC destination field (ICR bits 63:56)"
        );
        assert_eq!(
            std::format!("{}", IpiError::Timeout { polls: 7, sent: false }),
            "ICR delivery status stayed 'send pending' for 7 polls before sending; IPI not sent"
        );
        assert_eq!(
            std::format!("{}", IpiError::Timeout { polls: 9, sent: true }),
            "IPI written but ICR delivery status stayed 'send pending' for 9 polls"
        );
    }

    #[test]
    fn no_constructor_produces_an_invalid_combination() {
        // Exhaustively: every IPI the API can build has (self or all-including-self shorthand)
        // only with fixed delivery, or the legacy INIT de-assert; never level trigger otherwise.
        let targets = [
            Target::To(Destination::Physical(1)),
            Target::To(Destination::Logical(1)),
            Target::AllExcludingSelf,
        ];
        let fixed_targets = [
            FixedTarget::To(Destination::Physical(1)),
            FixedTarget::ToSelf,
            FixedTarget::AllIncludingSelf,
            FixedTarget::AllExcludingSelf,
        ];
        let mut all = std::vec::Vec::new();
        for vector in 16..=255u8 {
            for target in fixed_targets {
                all.push(Ipi::fixed(vector, target).unwrap());
            }
            all.push(Ipi::lowest_priority(vector, Destination::Logical(2)).unwrap());
        }
        for target in targets {
            all.extend([
                Ipi::nmi(target),
                Ipi::smi(target),
                Ipi::init(target),
                Ipi::startup(8, target),
            ]);
        }
        for ipi in all {
            let low = ipi.encode(Mode::X2Apic).unwrap() as u32;
            let shorthand = (low >> 18) & 3;
            let mode = (low >> 8) & 7;
            if shorthand == 0b01 || shorthand == 0b10 {
                assert_eq!(mode, 0, "{ipi:?}: self/all-including-self only with fixed");
            }
            if mode == 0b001 {
                assert_eq!(shorthand, 0, "{ipi:?}: lowest priority needs a destination");
            }
            assert_eq!(low & (1 << 15), 0, "{ipi:?}: edge-triggered");
            assert_ne!(low & (1 << 14), 0, "{ipi:?}: level assert");
            assert_eq!(low & (1 << 12), 0, "delivery status is read-only");
        }
    }
}
