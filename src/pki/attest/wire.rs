//! Reading TPM 2.0 marshalled structures (big-endian, `TPM2B_*` = a u16 size then that many bytes) and the
//! little-endian fields of the TCG event log, with every length checked against what is left.

use super::AttestError;

/// A cursor over a byte slice; every read fails with [`AttestError::Malformed`] naming `what` when the input
/// is too short.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `buf`, a `what` (named in errors).
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    /// The offset of the next byte.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], AttestError> {
        if n > self.remaining() {
            return Err(AttestError::Malformed(format!(
                "{}: {n} bytes wanted at offset {}, {} left",
                self.what,
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A big-endian u16.
    pub fn u16(&mut self) -> Result<u16, AttestError> {
        Ok(u16::from_be_bytes(
            self.bytes(2)?.try_into().unwrap_or_default(),
        ))
    }

    /// A big-endian u32.
    pub fn u32(&mut self) -> Result<u32, AttestError> {
        Ok(u32::from_be_bytes(
            self.bytes(4)?.try_into().unwrap_or_default(),
        ))
    }

    /// A big-endian u64.
    pub fn u64(&mut self) -> Result<u64, AttestError> {
        Ok(u64::from_be_bytes(
            self.bytes(8)?.try_into().unwrap_or_default(),
        ))
    }

    /// A little-endian u16 (event log).
    pub fn u16_le(&mut self) -> Result<u16, AttestError> {
        Ok(u16::from_le_bytes(
            self.bytes(2)?.try_into().unwrap_or_default(),
        ))
    }

    /// A little-endian u32 (event log).
    pub fn u32_le(&mut self) -> Result<u32, AttestError> {
        Ok(u32::from_le_bytes(
            self.bytes(4)?.try_into().unwrap_or_default(),
        ))
    }

    /// A little-endian u64 (UEFI variable data).
    pub fn u64_le(&mut self) -> Result<u64, AttestError> {
        Ok(u64::from_le_bytes(
            self.bytes(8)?.try_into().unwrap_or_default(),
        ))
    }

    /// A `TPM2B_*`: a big-endian u16 size, then that many bytes.
    pub fn tpm2b(&mut self) -> Result<&'a [u8], AttestError> {
        let n = self.u16()? as usize;
        self.bytes(n)
    }

    /// Fails unless every byte was read (trailing bytes are a sign of a wrong structure).
    pub fn finish(&self) -> Result<(), AttestError> {
        if self.remaining() != 0 {
            return Err(AttestError::Malformed(format!(
                "{}: {} unexpected bytes after the structure",
                self.what,
                self.remaining()
            )));
        }
        Ok(())
    }
}

/// Appends `b` as a `TPM2B_*` (u16 size, then the bytes).
pub fn put_tpm2b(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_and_little_endian_and_refuses_short_input() {
        let mut r = Reader::new(&[0, 2, 0xaa, 0xbb, 1, 0, 0, 0], "test");
        assert_eq!(r.tpm2b().unwrap(), &[0xaa, 0xbb]);
        assert_eq!(r.u32_le().unwrap(), 1);
        r.finish().unwrap();
        let mut r = Reader::new(&[0, 9, 1], "thing");
        let e = r.tpm2b().unwrap_err().to_string();
        assert!(
            e.contains("thing: 9 bytes wanted at offset 2, 1 left"),
            "{e}"
        );
        let r = Reader::new(&[1], "x");
        assert!(r.finish().is_err());
    }
}
