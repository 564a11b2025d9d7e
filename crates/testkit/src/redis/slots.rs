//! Key slots, computed exactly as Redis does.

/// Number of hash slots in a Redis Cluster.
pub const CLUSTER_SLOTS: u16 = 16384;

/// The cluster hash slot of `key`, exactly as Redis computes it: CRC16/XMODEM mod 16384 of the
/// hash tag — the bytes between the first `{` and the first `}` after it — if that is non-empty,
/// else of the whole key.
pub fn key_slot(key: &str) -> u16 {
    key_slot_bytes(key.as_bytes())
}

pub fn key_slot_bytes(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let tag = &key[open + 1..];
            tag.iter().position(|&b| b == b'}').filter(|&len| len > 0).map(|len| &tag[..len])
        })
        .unwrap_or(key);
    crc16_xmodem(hashed) % CLUSTER_SLOTS
}

/// CRC-16/XMODEM: polynomial 0x1021, initial value 0, no reflection (Redis's `crc16`).
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}
