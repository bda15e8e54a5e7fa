//! CoAP option values: unsigned integers, Block1/Block2 (RFC 7959), URI paths.

use coap_lite::{CoapOption, Packet};

/// Encode an unsigned option value in the fewest bytes (0 is the empty string).
pub fn encode_uint(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    let first = b.iter().position(|&x| x != 0).unwrap_or(4);
    b[first..].to_vec()
}

/// Decode an unsigned option value; `None` if longer than 4 bytes.
pub fn decode_uint(v: &[u8]) -> Option<u32> {
    if v.len() > 4 {
        return None;
    }
    Some(v.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b)))
}

/// The first value of an unsigned option, if present and well-formed.
pub fn get_uint(p: &Packet, opt: CoapOption) -> Option<u32> {
    p.get_first_option(opt).and_then(|v| decode_uint(v))
}

/// The first value of an unsigned option that must fit 16 bits (Content-Format, Accept).
pub fn get_u16(p: &Packet, opt: CoapOption) -> Option<u16> {
    get_uint(p, opt).and_then(|v| u16::try_from(v).ok())
}

/// A length as an option value (Size1, Size2, block numbers), saturating.
pub fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Replace an unsigned option.
pub fn set_uint(p: &mut Packet, opt: CoapOption, v: u32) {
    p.clear_option(opt);
    p.add_option(opt, encode_uint(v));
}

/// A Block1 or Block2 option value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Block number.
    pub num: u32,
    /// More blocks follow.
    pub more: bool,
    /// Size exponent: the block is `16 << szx` bytes (0..=6).
    pub szx: u8,
}

/// Why a Block option is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// Longer than 3 bytes.
    TooLong,
    /// SZX 7 is reserved (RFC 7959 §2.2).
    ReservedSize,
}

impl Block {
    /// Block size in bytes.
    pub fn size(self) -> usize {
        16usize << self.szx
    }

    /// Byte offset of this block.
    pub fn offset(self) -> usize {
        self.num as usize * self.size()
    }

    /// The size exponent for a block size (rounded down to a power of two, 16..=1024).
    pub fn szx_for(size: usize) -> u8 {
        let mut szx = 0u8;
        while szx < 6 && (16usize << (szx + 1)) <= size {
            szx += 1;
        }
        szx
    }

    /// Encode the option value.
    pub fn encode(self) -> Vec<u8> {
        encode_uint(self.num << 4 | u32::from(self.more) << 3 | u32::from(self.szx))
    }

    /// Decode the option value.
    pub fn decode(v: &[u8]) -> Result<Self, BlockError> {
        if v.len() > 3 {
            return Err(BlockError::TooLong);
        }
        let x = decode_uint(v).unwrap_or(0);
        // Masked to 3 bits.
        let szx = (x & 7) as u8;
        if szx == 7 {
            return Err(BlockError::ReservedSize);
        }
        Ok(Self {
            num: x >> 4,
            more: x & 8 != 0,
            szx,
        })
    }

    /// Read a Block option from a packet: `Ok(None)` if absent.
    pub fn from_packet(p: &Packet, opt: CoapOption) -> Result<Option<Self>, BlockError> {
        p.get_first_option(opt).map(|v| Self::decode(v)).transpose()
    }
}

/// The Uri-Path of a request as `/a/b` (`/` for none).
pub fn path_of(p: &Packet) -> String {
    let mut s = String::new();
    if let Some(segs) = p.get_option(CoapOption::UriPath) {
        for seg in segs {
            s.push('/');
            s.push_str(&String::from_utf8_lossy(seg));
        }
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// The Uri-Query options of a request.
pub fn queries_of(p: &Packet) -> Vec<String> {
    p.get_option(CoapOption::UriQuery)
        .map(|qs| {
            qs.iter()
                .map(|q| String::from_utf8_lossy(q).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Set Uri-Path options from `/a/b`.
pub fn set_path(p: &mut Packet, path: &str) {
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_values_round_trip_and_reserved_size_is_refused() {
        for b in [
            Block {
                num: 0,
                more: true,
                szx: 6,
            },
            Block {
                num: 1,
                more: false,
                szx: 2,
            },
            Block {
                num: (1 << 20) - 1,
                more: true,
                szx: 0,
            },
        ] {
            assert_eq!(Block::decode(&b.encode()), Ok(b));
        }
        assert_eq!(Block::decode(&[0x0f]), Err(BlockError::ReservedSize));
        assert_eq!(Block::decode(&[1, 2, 3, 4]), Err(BlockError::TooLong));
        assert_eq!(Block::szx_for(1024), 6);
        assert_eq!(Block::szx_for(1000), 5);
        assert_eq!(Block::szx_for(1), 0);
    }

    #[test]
    fn uints_are_minimal() {
        assert!(encode_uint(0).is_empty());
        assert_eq!(encode_uint(0x1234), vec![0x12, 0x34]);
        assert_eq!(decode_uint(&[0x12, 0x34]), Some(0x1234));
        assert_eq!(decode_uint(&[1, 2, 3, 4, 5]), None);
    }
}
