//! The counter-file layout, byte by byte (`docs/counter-file.md`, `include/purveyor/counters.h`).
//!
//! Every field is little-endian and at a fixed offset; there are no pointers, only offsets
//! from the start of the file, so a 32-bit and a 64-bit process see the same bytes. Every
//! 64-bit field is 8-byte aligned. The asserts at the end pin each offset and size; the C
//! header has the same asserts.

/// `PVCNTR` then two zero bytes.
pub const MAGIC: [u8; 8] = *b"PVCNTR\0\0";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;

pub const HEADER_SIZE: usize = 128;
pub const COUNTER_SIZE: usize = 32;
pub const INSTANCE_SIZE: usize = 64;
/// The longest instance name, in bytes (UTF-8).
pub const INSTANCE_NAME_MAX: usize = 56;
/// Value blocks start on a cache line and each instance's block is a whole number of
/// cache lines, so two instances never share a line.
pub const VALUES_ALIGN: usize = 64;
/// The largest file a reader accepts.
pub const MAX_FILE: u64 = 1 << 30;
/// The most counters in a set, and instances in a file.
pub const MAX_COUNTERS: u32 = 65_536;
pub const MAX_INSTANCES: u32 = 1 << 20;
/// The longest set, counter or help string.
pub const MAX_NAME: usize = 64;
pub const MAX_HELP: usize = 1024;

/// Header field offsets.
pub mod header {
    pub const MAGIC: usize = 0; // [u8; 8]
    pub const VERSION: usize = 8; // u32
    pub const HEADER_SIZE: usize = 12; // u32 = 128
    /// u64: even when the instance table is consistent, odd while it changes (seqlock).
    pub const GENERATION: usize = 16;
    pub const CREATOR_PID: usize = 24; // u32
    pub const FLAGS: usize = 28; // u32, see FLAG_*
    /// u64: the creator's start time in clock ticks since boot (field 22 of
    /// /proc/PID/stat), 0 when unknown; tells a reused pid from the creator.
    pub const CREATOR_START: usize = 32;
    pub const FILE_SIZE: usize = 40; // u64
    pub const STRINGS_OFFSET: usize = 48; // u32
    pub const STRINGS_SIZE: usize = 52; // u32
    pub const COUNTERS_OFFSET: usize = 56; // u32
    pub const COUNTER_COUNT: usize = 60; // u32
    pub const INSTANCES_OFFSET: usize = 64; // u32
    pub const INSTANCE_CAPACITY: usize = 68; // u32
    pub const VALUES_OFFSET: usize = 72; // u32
    /// u32: 8-byte slots per instance block (a multiple of 8).
    pub const SLOTS_PER_INSTANCE: usize = 76;
    pub const NAME_OFFSET: usize = 80; // u32, into the string area
    pub const NAME_LEN: usize = 84; // u32
    pub const HELP_OFFSET: usize = 88; // u32
    pub const HELP_LEN: usize = 92; // u32
    // 96..128: reserved, zero.
}

/// Header flags.
pub const FLAG_INSTANCES: u32 = 1;

/// Counter descriptor field offsets (each descriptor is 32 bytes).
pub mod counter {
    pub const NAME_OFFSET: usize = 0; // u32
    pub const NAME_LEN: usize = 4; // u32
    pub const HELP_OFFSET: usize = 8; // u32
    pub const HELP_LEN: usize = 12; // u32
    pub const KIND: usize = 16; // u8, see CounterType
    pub const UNIT: usize = 17; // u8, see Unit
    // 18..20 reserved
    /// u32: the counter's first slot in an instance block.
    pub const SLOT: usize = 20;
    // 24..32 reserved
}

/// Instance record field offsets (each record is 64 bytes).
pub mod instance {
    /// u32: 0 free, 1 live.
    pub const STATE: usize = 0;
    pub const NAME_LEN: usize = 4; // u32
    pub const NAME: usize = 8; // [u8; 56]
}

pub const INSTANCE_FREE: u32 = 0;
pub const INSTANCE_LIVE: u32 = 1;

/// How a consumer shows a counter (after the Windows performance-counter types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CounterType {
    /// Shown as is (a gauge): queue length, temperature.
    Raw = 1,
    /// Monotonic; shown as a rate per second between two samples.
    Counter = 2,
    /// Monotonic; shown as the difference between two samples.
    Delta = 3,
    /// Two slots, a sum and a count; shown as the mean per operation (Δsum / Δcount
    /// between samples, sum / count for one sample). Latency.
    Average = 4,
    /// Two slots, a value and a base; shown as 100 × value / base, in percent.
    Fraction = 5,
    /// A timestamp (ns since the Unix epoch); shown as the seconds elapsed since it.
    Elapsed = 6,
}

impl CounterType {
    pub const ALL: [CounterType; 6] = [
        CounterType::Raw,
        CounterType::Counter,
        CounterType::Delta,
        CounterType::Average,
        CounterType::Fraction,
        CounterType::Elapsed,
    ];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u8 == v)
    }

    /// 8-byte slots the counter takes in each instance block.
    pub fn slots(self) -> u32 {
        match self {
            CounterType::Average | CounterType::Fraction => 2,
            _ => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CounterType::Raw => "raw",
            CounterType::Counter => "counter",
            CounterType::Delta => "delta",
            CounterType::Average => "average",
            CounterType::Fraction => "fraction",
            CounterType::Elapsed => "elapsed",
        }
    }
}

/// A counter's unit, as stored (one byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Unit {
    None = 0,
    Count = 1,
    Bytes = 2,
    Seconds = 3,
    Milliseconds = 4,
    Microseconds = 5,
    Nanoseconds = 6,
    Percent = 7,
    Packets = 8,
    Operations = 9,
}

impl Unit {
    pub const ALL: [Unit; 10] = [
        Unit::None,
        Unit::Count,
        Unit::Bytes,
        Unit::Seconds,
        Unit::Milliseconds,
        Unit::Microseconds,
        Unit::Nanoseconds,
        Unit::Percent,
        Unit::Packets,
        Unit::Operations,
    ];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|u| *u as u8 == v)
    }
}

/// Rounds `n` up to a multiple of `align` (a power of two).
pub const fn align_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

// The layout, pinned. The C header asserts the same numbers.
const _: () = {
    assert!(header::SLOTS_PER_INSTANCE + 4 <= HEADER_SIZE);
    assert!(header::HELP_LEN + 4 <= HEADER_SIZE);
    assert!(header::GENERATION.is_multiple_of(8));
    assert!(header::CREATOR_START.is_multiple_of(8));
    assert!(header::FILE_SIZE.is_multiple_of(8));
    assert!(counter::SLOT + 4 <= COUNTER_SIZE);
    assert!(instance::NAME + INSTANCE_NAME_MAX == INSTANCE_SIZE);
    assert!(
        HEADER_SIZE.is_multiple_of(8)
            && COUNTER_SIZE.is_multiple_of(8)
            && INSTANCE_SIZE.is_multiple_of(8)
    );
    assert!(VALUES_ALIGN.is_multiple_of(8));
};
