//! A range coder (arithmetic coding with byte-wise output) over integer frequencies.
//!
//! The encoder is LZMA's (a `low` with one carry bit above it, a cached byte plus a
//! count of pending `0xFF` bytes so a late carry can ripple into them) widened from 32
//! to 64 bits: `range` is kept at or above 2^56 after every symbol, so a total of up to
//! 2^32 still leaves at least 2^24 units per step and the truncation in
//! `range / total` costs less than 2^-24 of a bit per symbol. Every operation is exact
//! integer arithmetic, so the decoder mirrors the encoder bit for bit on any machine.
//!
//! The stream ends with a value inside the final interval that has the most trailing
//! zero bits. [`RangeEncoder::finish`] writes all of it, so a decoder of a complete
//! stream reads exactly the bytes written and never past them (reading past them means
//! the stream was cut); [`RangeEncoder::finish_trimmed`] drops the trailing zero bytes
//! for fixed-size windows that are padded with zeros anyway (the decoder reads zeros
//! past the end of its input).

use crate::CodecError;

/// Renormalise when `range` falls below this: one byte leaves `low` per shift.
const TOP: u64 = 1 << 56;

/// Largest frequency total either side accepts.
pub const MAX_TOTAL: u64 = 1 << 32;

/// The encoder. Cloning it is cheap while its output is short (Equal-Info Windows
/// clone it to try whether one more symbol still fits).
#[derive(Clone, Debug)]
pub struct RangeEncoder {
    /// 64 bits of interval start plus a carry bit (bit 64).
    low: u128,
    range: u64,
    /// The last byte shifted out of `low`, held back because a carry may still change it.
    cache: u8,
    /// `cache` plus the `0xFF` bytes after it that a carry would also flip.
    pending: u64,
    /// The byte before the first real output byte is always 0 (the interval starts as
    /// [0, 1) and only shrinks, so no carry reaches it); it is not written.
    skip_first: bool,
    out: Vec<u8>,
}

impl Default for RangeEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RangeEncoder {
    pub fn new() -> RangeEncoder {
        RangeEncoder {
            low: 0,
            range: u64::MAX,
            cache: 0,
            pending: 1,
            skip_first: true,
            out: Vec::new(),
        }
    }

    /// Encodes the symbol occupying `[cum, cum + freq)` of `[0, total)`.
    ///
    /// Panics on an empty or out-of-range interval: that is a bug of the caller (the
    /// model's CDF gives every codable symbol a frequency of at least 1), never a
    /// property of the input.
    pub fn encode(&mut self, cum: u64, freq: u64, total: u64) {
        assert!(
            freq > 0 && cum + freq <= total && total <= MAX_TOTAL,
            "range coder: bad interval [{cum}, {cum}+{freq}) of {total}"
        );
        let r = self.range / total;
        self.low += r as u128 * cum as u128;
        self.range = r * freq;
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    fn shift_low(&mut self) {
        let carry = (self.low >> 64) as u8;
        if (self.low as u64) < 0xFF00_0000_0000_0000 || carry != 0 {
            // The top byte is final (no later carry can reach it): write the cached
            // byte and the pending 0xFFs, all plus the carry.
            let mut byte = self.cache;
            while self.pending > 0 {
                let b = byte.wrapping_add(carry);
                if self.skip_first {
                    self.skip_first = false;
                } else {
                    self.out.push(b);
                }
                byte = 0xFF;
                self.pending -= 1;
            }
            self.cache = (self.low >> 56) as u8;
        }
        self.pending += 1;
        self.low = (self.low & ((1u128 << 56) - 1)) << 8;
    }

    /// Takes the bytes written so far (they are final: a carry can only reach the
    /// cached byte and the pending ones, which are not in the output yet), so a long
    /// stream can be written out as it grows.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Bytes [`finish_trimmed`](Self::finish_trimmed) would return now, without
    /// consuming the encoder (only meaningful if no output was taken).
    pub fn trimmed_len(&self) -> usize {
        self.clone().finish_trimmed().len()
    }

    /// Ends the stream; the decoder reads exactly the bytes returned (with all
    /// [`take_output`](Self::take_output) bytes before them).
    pub fn finish(mut self) -> Vec<u8> {
        self.flush();
        self.out
    }

    /// Ends the stream without its trailing zero bytes, for a decoder that pads its
    /// input with zeros.
    pub fn finish_trimmed(mut self) -> Vec<u8> {
        self.flush();
        while self.out.last() == Some(&0) {
            self.out.pop();
        }
        self.out
    }

    fn flush(&mut self) {
        let end = self.low + self.range as u128; // exclusive
                                                 // The value with the most trailing zero bytes in [low, end).
        for k in 1..=8u32 {
            let unit = 1u128 << (64 - 8 * k);
            let v = self.low.div_ceil(unit) * unit;
            if v < end {
                self.low = v;
                break;
            }
        }
        for _ in 0..9 {
            self.shift_low();
        }
    }
}

/// The decoder, over a byte slice that it extends with zeros.
#[derive(Clone, Debug)]
pub struct RangeDecoder<'a> {
    input: &'a [u8],
    pos: usize,
    /// The code value minus the interval's start.
    code: u64,
    range: u64,
    /// `range / total` of the symbol being decoded.
    step: u64,
}

impl<'a> RangeDecoder<'a> {
    pub fn new(input: &'a [u8]) -> RangeDecoder<'a> {
        let mut d = RangeDecoder {
            input,
            pos: 0,
            code: 0,
            range: u64::MAX,
            step: 0,
        };
        for _ in 0..8 {
            d.code = (d.code << 8) | d.next_byte() as u64;
        }
        d
    }

    fn next_byte(&mut self) -> u8 {
        let b = self.input.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// Bytes read so far, counting the zeros read past the end.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Whether the decoder has read past the end of its input (a complete stream from
    /// [`RangeEncoder::finish`] never makes it).
    pub fn overran(&self) -> bool {
        self.pos > self.input.len()
    }

    /// The point of `[0, total)` that the next symbol's interval contains. Follow with
    /// [`consume`](Self::consume) of that symbol's interval. A point outside
    /// `[0, total)` can only come from bytes no encoder wrote: an error.
    pub fn target(&mut self, total: u64) -> Result<u64, CodecError> {
        if total == 0 || total > MAX_TOTAL {
            return Err(CodecError::Corrupt(format!("frequency total {total}")));
        }
        self.step = self.range / total;
        let v = self.code / self.step;
        if v >= total {
            return Err(CodecError::Corrupt(
                "the coded stream leaves the probability range".into(),
            ));
        }
        Ok(v)
    }

    /// Removes the decoded symbol `[cum, cum + freq)` (which must contain the last
    /// [`target`](Self::target)).
    pub fn consume(&mut self, cum: u64, freq: u64) {
        debug_assert!(freq > 0);
        self.code -= self.step * cum;
        self.range = self.step * freq;
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | self.next_byte() as u64;
        }
    }

    /// Decodes a symbol of a uniform alphabet of `n` symbols.
    pub fn decode_uniform(&mut self, n: u64) -> Result<u64, CodecError> {
        let v = self.target(n)?;
        self.consume(v, 1);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(symbols: &[(u64, u64, u64)]) {
        let mut e = RangeEncoder::new();
        for &(c, f, t) in symbols {
            e.encode(c, f, t);
        }
        let bytes = e.finish();
        let mut d = RangeDecoder::new(&bytes);
        for &(c, f, t) in symbols {
            let v = d.target(t).expect("in range");
            assert!(v >= c && v < c + f, "decoded {v} outside [{c}, {})", c + f);
            d.consume(c, f);
        }
    }

    #[test]
    fn empty_stream_is_empty() {
        assert!(RangeEncoder::new().finish_trimmed().is_empty());
        assert_eq!(RangeEncoder::new().finish().len(), 8);
    }

    #[test]
    fn certain_symbols_cost_nothing() {
        let mut e = RangeEncoder::new();
        for _ in 0..1000 {
            e.encode(0, MAX_TOTAL, MAX_TOTAL);
        }
        assert!(e.finish_trimmed().is_empty());
    }

    #[test]
    fn carries_ripple_through_pending_ff_bytes() {
        // Always the top symbol of a skewed distribution: low creeps towards the top of
        // the interval, producing runs of 0xFF that a carry must flip.
        let mut s = Vec::new();
        for i in 0..5000u64 {
            s.push((MAX_TOTAL - 3, 3, MAX_TOTAL));
            s.push((i % 7, 1, 7));
        }
        roundtrip(&s);
    }

    #[test]
    fn cost_is_close_to_the_information() {
        // 10000 symbols of probability 1/1000: 99 658 bits of information.
        let mut e = RangeEncoder::new();
        for i in 0..10_000u64 {
            e.encode(i % 1000, 1, 1000);
        }
        let bits = e.finish().len() * 8;
        assert!((99_658..99_658 + 80).contains(&bits), "{bits} bits");
    }
}
