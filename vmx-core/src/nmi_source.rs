//! NMI-source reporting (CPUID.(EAX=7,ECX=1):EAX\[20\]; Intel FRED specification, chapter
//! "NMI-Source Reporting"): which sources an NMI stands for.
//!
//! The sender of an NMI names its source in the vector field of the ICR or LVT entry (NMI
//! delivery mode): 1-15 are sources, 0 and 16-255 are reported as source 0 ("unknown").
//! Source 2 is reserved for external NMIs (the NMI pin / LINT). While NMIs are pending the
//! processor collects the sources in a 16-bit bitmap (bit n = source n); FRED delivers it as
//! the NMI frame's event data. With NMI exiting, an NMI-caused VM exit (exit reason 0,
//! interruption type 2) saves the bitmap of that NMI in bits 15:0 of the exit qualification,
//! in the same format: re-delivery to the host must forward it (on FRED hosts as the frame's
//! event data), or the host sees an NMI of unknown origin.
//!
//! ```
//! use hvkit_vmx_core::nmi_source::NmiSourceBitmap;
//!
//! // An NMI exit whose qualification reports sources 2 (external) and 5.
//! let sources = NmiSourceBitmap::from_exit_qualification(0x24);
//! assert!(sources.external() && sources.contains(5));
//! assert_eq!(sources.iter().collect::<Vec<_>>(), [2, 5]);
//! assert_eq!(sources.event_data(), 0x24); // what a FRED NMI frame carries
//! ```
#![forbid(unsafe_code)]

/// CPUID.(EAX=7,ECX=1):EAX bit that enumerates NMI-source reporting.
pub const CPUID_7_1_EAX_NMI_SOURCE: u32 = 1 << 20;

/// `true` when CPUID.(EAX=7,ECX=1):EAX (`eax`) enumerates NMI-source reporting.
pub const fn supported(eax: u32) -> bool {
    eax & CPUID_7_1_EAX_NMI_SOURCE != 0
}

/// Source 0: the sender gave vector 0 or a vector above 15, or no source is known.
pub const UNKNOWN_SOURCE: u8 = 0;

/// Source 2: an external NMI (NMI pin, LINT with NMI delivery).
pub const EXTERNAL_SOURCE: u8 = 2;

/// The highest source number a sender can name.
pub const HIGHEST_SOURCE: u8 = 15;

/// A 16-bit NMI-source bitmap: bit n set = an NMI with source n is part of this delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct NmiSourceBitmap(u16);

impl NmiSourceBitmap {
    /// No source.
    pub const EMPTY: Self = Self(0);

    /// From the raw bitmap.
    pub const fn from_raw(raw: u16) -> Self {
        Self(raw)
    }

    /// From the exit qualification of an NMI-caused VM exit: bits 15:0. The qualification's
    /// higher bits are not part of the bitmap and are dropped.
    pub const fn from_exit_qualification(qualification: u64) -> Self {
        Self(qualification as u16)
    }

    /// From a FRED NMI frame's event data (bits 15:0; higher bits are dropped).
    pub const fn from_event_data(event_data: u64) -> Self {
        Self(event_data as u16)
    }

    /// The bitmap that an NMI sent with `vector` in its ICR/LVT vector field reports: bit
    /// `vector` for 1-15, bit 0 for 0 and for 16-255.
    pub const fn for_sent_vector(vector: u8) -> Self {
        if vector == 0 || vector > HIGHEST_SOURCE { Self(1) } else { Self(1 << vector) }
    }

    /// The raw 16 bits.
    pub const fn raw(self) -> u16 {
        self.0
    }

    /// The value for a FRED NMI frame's event data (bits 63:16 zero).
    pub const fn event_data(self) -> u64 {
        self.0 as u64
    }

    /// No bit set: the processor reported nothing (e.g. it lacks NMI-source reporting).
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Bit `source` is set; `false` for `source` > 15.
    pub const fn contains(self, source: u8) -> bool {
        source <= HIGHEST_SOURCE && self.0 & (1 << source) != 0
    }

    /// Bit 0: at least one NMI came with no usable source.
    pub const fn unknown(self) -> bool {
        self.contains(UNKNOWN_SOURCE)
    }

    /// Bit 2: an external NMI.
    pub const fn external(self) -> bool {
        self.contains(EXTERNAL_SOURCE)
    }

    /// Both bitmaps' sources, as the processor coalesces pending NMIs.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The set sources, lowest first.
    pub fn iter(self) -> impl Iterator<Item = u8> {
        (0..=HIGHEST_SOURCE).filter(move |&source| self.contains(source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_bit_20() {
        assert!(supported(1 << 20));
        assert!(!supported(!(1 << 20)));
        assert!(supported(u32::MAX));
    }

    #[test]
    fn sent_vector_boundaries() {
        assert_eq!(NmiSourceBitmap::for_sent_vector(0).raw(), 1);
        assert_eq!(NmiSourceBitmap::for_sent_vector(1).raw(), 1 << 1);
        assert_eq!(NmiSourceBitmap::for_sent_vector(2).raw(), 1 << 2);
        assert_eq!(NmiSourceBitmap::for_sent_vector(15).raw(), 1 << 15);
        assert_eq!(NmiSourceBitmap::for_sent_vector(16).raw(), 1, "above 15: unknown");
        assert_eq!(NmiSourceBitmap::for_sent_vector(255).raw(), 1);
        for vector in 1..=15 {
            let bitmap = NmiSourceBitmap::for_sent_vector(vector);
            assert_eq!(bitmap.iter().collect::<std::vec::Vec<_>>(), [vector]);
            assert!(!bitmap.unknown());
        }
    }

    #[test]
    fn qualification_and_event_data_keep_bits_15_to_0() {
        let bitmap = NmiSourceBitmap::from_exit_qualification(0xFFFF_FFFF_0001_8005);
        assert_eq!(bitmap.raw(), 0x8005);
        assert_eq!(bitmap.event_data(), 0x8005);
        assert_eq!(NmiSourceBitmap::from_event_data(0x1_0004).raw(), 4);
        assert_eq!(NmiSourceBitmap::from_raw(0xABCD).raw(), 0xABCD);
    }

    #[test]
    fn flags_set_and_clear() {
        let bitmap = NmiSourceBitmap::from_raw(0b101);
        assert!(bitmap.unknown() && bitmap.external() && !bitmap.contains(1));
        let bitmap = NmiSourceBitmap::from_raw(0b010);
        assert!(!bitmap.unknown() && !bitmap.external() && bitmap.contains(1));
        assert!(NmiSourceBitmap::EMPTY.is_empty());
        assert!(!NmiSourceBitmap::from_raw(0x8000).is_empty());
        assert!(NmiSourceBitmap::from_raw(0x8000).contains(15));
        assert!(!NmiSourceBitmap::from_raw(0xFFFF).contains(16), "no bit 16");
        assert!(NmiSourceBitmap::default().is_empty());
    }

    #[test]
    fn sources_coalesce_and_iterate_in_order() {
        let bitmap = NmiSourceBitmap::for_sent_vector(9)
            .union(NmiSourceBitmap::for_sent_vector(3))
            .union(NmiSourceBitmap::for_sent_vector(200))
            .union(NmiSourceBitmap::for_sent_vector(3));
        assert_eq!(bitmap.raw(), (1 << 9) | (1 << 3) | 1);
        assert_eq!(bitmap.iter().collect::<std::vec::Vec<_>>(), [0, 3, 9]);
        assert_eq!(NmiSourceBitmap::from_raw(0xFFFF).iter().count(), 16);
        assert_eq!(NmiSourceBitmap::EMPTY.iter().count(), 0);
    }
}
