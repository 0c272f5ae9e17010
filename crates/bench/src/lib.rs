//! Helpers shared by the benchmarks: percentiles, units, and the raw echo floor.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// p50 and p99 of `samples` (sorted in place).
pub fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The echo floor's side of one connection: reads a frame whose first 4 payload bytes say
/// how large a reply to send, and answers with a frame of that size, until EOF.
pub fn echo_connection(mut s: UnixStream) {
    let mut header = [0u8; 4];
    let mut buf = vec![0u8; 1 << 16];
    let mut reply = Vec::new();
    while s.read_exact(&mut header).is_ok() {
        let len = u32::from_le_bytes(header) as usize;
        if len < 4 || len > buf.len() || s.read_exact(&mut buf[..len]).is_err() {
            return;
        }
        let want = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        reply.clear();
        reply.extend_from_slice(&(want as u32).to_le_bytes());
        reply.resize(4 + want, 0x5a);
        if s.write_all(&reply).is_err() {
            return;
        }
    }
}
