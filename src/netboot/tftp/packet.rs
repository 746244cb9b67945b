//! TFTP packets (RFC 1350, option extension RFC 2347): parsing and encoding, no I/O.
//!
//! [`Packet::parse`] never panics; anything malformed is an [`ParseError`] the caller counts and drops.

use std::fmt;

/// TFTP opcodes.
pub const OP_RRQ: u16 = 1;
/// Write request (opcode 2); this server is read-only and answers it with an access-violation error.
pub const OP_WRQ: u16 = 2;
/// DATA (opcode 3): a block number and up to `blksize` bytes of the file; a shorter block ends the transfer.
pub const OP_DATA: u16 = 3;
/// ACK (opcode 4): the client acknowledges a block number (block 0 acknowledges an OACK).
pub const OP_ACK: u16 = 4;
/// ERROR (opcode 5): an error code and a message; it ends the transfer.
pub const OP_ERROR: u16 = 5;
/// OACK (opcode 6, RFC 2347): the options the server accepted, sent before the first DATA block.
pub const OP_OACK: u16 = 6;

/// Longest file name or option string we accept (bytes). Real requests are far shorter.
pub const MAX_STRING: usize = 512;

/// TFTP error codes (RFC 1350 §5, RFC 2347 code 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 0: not defined, see the message (sent when a transfer times out waiting for an ACK).
    NotDefined = 0,
    /// 1: file not found; also the answer to a name outside the boot-file allowlist.
    FileNotFound = 1,
    /// 2: access violation: write requests to this read-only server, absolute names and `..` components.
    AccessViolation = 2,
    /// 3: disk full or allocation exceeded.
    DiskFull = 3,
    /// 4: illegal TFTP operation (an unexpected packet, or a mode other than octet).
    IllegalOperation = 4,
    /// 5: unknown transfer ID: a packet from an address and port that is not the transfer's peer.
    UnknownTid = 5,
    /// 6: file already exists.
    FileExists = 6,
    /// 7: no such user.
    NoSuchUser = 7,
    /// 8: the transfer is aborted during option negotiation (RFC 2347).
    OptionRefused = 8,
}

impl ErrorCode {
    fn from_u16(n: u16) -> ErrorCode {
        match n {
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTid,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionRefused,
            _ => ErrorCode::NotDefined,
        }
    }
}

/// Transfer mode of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `octet`: raw bytes, the only mode this server serves.
    Octet,
    /// `netascii`: lines converted to CR LF; parsed but refused with an illegal-operation error.
    NetAscii,
    /// `mail` (obsolete in RFC 1350); parsed but refused.
    Mail,
}

/// A read or write request: file name, mode and the options in the order the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The requested file name as sent, not yet checked against the allowlist.
    pub filename: String,
    /// The transfer mode the client asked for.
    pub mode: Mode,
    /// `(name lower-cased, value)` pairs.
    pub options: Vec<(String, String)>,
}

/// A parsed TFTP packet. `Data` borrows its payload from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request (RRQ): the client asks for a file.
    Rrq(Request),
    /// Write request (WRQ): refused by this read-only server.
    Wrq(Request),
    /// A DATA block.
    Data {
        /// The block number: 1 for the first block, wrapping from 65535 to 0 on large files.
        block: u16,
        /// The block's payload, borrowed from the datagram; shorter than the block size on the last block.
        data: &'a [u8],
    },
    /// An acknowledgement (ACK).
    Ack {
        /// The block number acknowledged; 0 acknowledges an OACK.
        block: u16,
    },
    /// An ERROR packet; it ends the transfer.
    Error {
        /// The error code as received (see [`ErrorCode`] and [`error_code`]).
        code: u16,
        /// The message, lossily decoded and cut at [`MAX_STRING`] bytes; may be empty.
        message: String,
    },
    /// An option acknowledgement (OACK): the options the server accepted.
    Oack {
        /// `(name lower-cased, value)` pairs, such as `("blksize", "1428")` or `("tsize", "1048576")`.
        options: Vec<(String, String)>,
    },
}

/// Why a datagram is not a TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than the opcode and fixed fields of the packet need.
    TooShort,
    /// An opcode other than 1 to 6.
    UnknownOpcode(u16),
    /// A string field has no terminating NUL.
    Unterminated,
    /// A string field is not UTF-8 / printable or is too long.
    BadString,
    /// The mode of a request is not `octet`, `netascii` or `mail` (case-insensitive); holds the mode as sent.
    UnknownMode(String),
    /// An option has a name but no value, or a name appears twice.
    BadOptions,
    /// An ACK with trailing bytes.
    TrailingBytes,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TooShort => f.write_str("packet too short"),
            ParseError::UnknownOpcode(n) => write!(f, "unknown opcode {n}"),
            ParseError::Unterminated => f.write_str("string without terminating NUL"),
            ParseError::BadString => f.write_str("string not printable ASCII/UTF-8 or too long"),
            ParseError::UnknownMode(m) => write!(f, "unknown transfer mode {m:?}"),
            ParseError::BadOptions => f.write_str("malformed option list"),
            ParseError::TrailingBytes => f.write_str("trailing bytes after packet"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Splits NUL-terminated strings. Every field must be terminated.
fn strings(mut b: &[u8]) -> Result<Vec<String>, ParseError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let end = b
            .iter()
            .position(|&c| c == 0)
            .ok_or(ParseError::Unterminated)?;
        let s = &b[..end];
        if s.len() > MAX_STRING || s.iter().any(|&c| c < 0x20 || c == 0x7f) {
            return Err(ParseError::BadString);
        }
        out.push(
            std::str::from_utf8(s)
                .map_err(|_| ParseError::BadString)?
                .to_string(),
        );
        b = &b[end + 1..];
    }
    Ok(out)
}

fn options(rest: &[String]) -> Result<Vec<(String, String)>, ParseError> {
    if !rest.len().is_multiple_of(2) {
        // Some clients pad with a trailing empty string; tolerate exactly that.
        if rest.last().is_some_and(|s| s.is_empty()) {
            return options(&rest[..rest.len() - 1]);
        }
        return Err(ParseError::BadOptions);
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks(2) {
        let name = pair[0].to_ascii_lowercase();
        if name.is_empty() || out.iter().any(|(n, _)| *n == name) {
            return Err(ParseError::BadOptions);
        }
        out.push((name, pair[1].clone()));
    }
    Ok(out)
}

fn request(body: &[u8]) -> Result<Request, ParseError> {
    let s = strings(body)?;
    if s.len() < 2 {
        return Err(ParseError::TooShort);
    }
    let mode = match s[1].to_ascii_lowercase().as_str() {
        "octet" => Mode::Octet,
        "netascii" => Mode::NetAscii,
        "mail" => Mode::Mail,
        _ => return Err(ParseError::UnknownMode(s[1].clone())),
    };
    Ok(Request {
        filename: s[0].clone(),
        mode,
        options: options(&s[2..])?,
    })
}

impl<'a> Packet<'a> {
    /// Parses one datagram.
    pub fn parse(b: &'a [u8]) -> Result<Packet<'a>, ParseError> {
        if b.len() < 2 {
            return Err(ParseError::TooShort);
        }
        let op = u16::from_be_bytes([b[0], b[1]]);
        let body = &b[2..];
        let num = || -> Result<u16, ParseError> {
            if body.len() < 2 {
                return Err(ParseError::TooShort);
            }
            Ok(u16::from_be_bytes([body[0], body[1]]))
        };
        match op {
            OP_RRQ => Ok(Packet::Rrq(request(body)?)),
            OP_WRQ => Ok(Packet::Wrq(request(body)?)),
            OP_DATA => Ok(Packet::Data {
                block: num()?,
                data: &body[2..],
            }),
            OP_ACK => {
                let block = num()?;
                if body.len() != 2 {
                    return Err(ParseError::TrailingBytes);
                }
                Ok(Packet::Ack { block })
            }
            OP_ERROR => {
                let code = num()?;
                // Some clients send no message or an unterminated one; keep what is there.
                let msg = &body[2..];
                let msg = msg.split(|&c| c == 0).next().unwrap_or(&[]);
                let mut message = String::from_utf8_lossy(msg).into_owned();
                if message.len() > MAX_STRING {
                    let mut cut = MAX_STRING;
                    while !message.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    message.truncate(cut);
                }
                Ok(Packet::Error { code, message })
            }
            OP_OACK => Ok(Packet::Oack {
                options: options(&strings(body)?)?,
            }),
            n => Err(ParseError::UnknownOpcode(n)),
        }
    }

    /// Encodes into `out` (cleared first).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        let put_str = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        };
        match self {
            Packet::Rrq(r) | Packet::Wrq(r) => {
                let op = if matches!(self, Packet::Rrq(_)) {
                    OP_RRQ
                } else {
                    OP_WRQ
                };
                out.extend_from_slice(&op.to_be_bytes());
                put_str(out, &r.filename);
                put_str(
                    out,
                    match r.mode {
                        Mode::Octet => "octet",
                        Mode::NetAscii => "netascii",
                        Mode::Mail => "mail",
                    },
                );
                for (k, v) in &r.options {
                    put_str(out, k);
                    put_str(out, v);
                }
            }
            Packet::Data { block, data } => {
                encode_data_header(out, *block);
                out.extend_from_slice(data);
            }
            Packet::Ack { block } => {
                out.extend_from_slice(&OP_ACK.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => {
                out.extend_from_slice(&OP_ERROR.to_be_bytes());
                out.extend_from_slice(&code.to_be_bytes());
                put_str(out, message);
            }
            Packet::Oack { options } => {
                out.extend_from_slice(&OP_OACK.to_be_bytes());
                for (k, v) in options {
                    put_str(out, k);
                    put_str(out, v);
                }
            }
        }
    }

    /// Encodes into a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }
}

/// Writes the 4-byte DATA header (opcode, block) into `out` (cleared first).
pub fn encode_data_header(out: &mut Vec<u8>, block: u16) {
    out.clear();
    out.extend_from_slice(&OP_DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
}

/// An ERROR packet.
pub fn error_packet(code: ErrorCode, message: &str) -> Vec<u8> {
    Packet::Error {
        code: code as u16,
        message: message.to_string(),
    }
    .to_bytes()
}

/// The error code of a received ERROR packet.
pub fn error_code(code: u16) -> ErrorCode {
    ErrorCode::from_u16(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrq_with_options_round_trips() {
        let raw =
            b"\x00\x01snponly.efi\x00octet\x00blksize\x001468\x00windowsize\x004\x00tsize\x000\x00";
        let p = Packet::parse(raw).unwrap();
        let Packet::Rrq(r) = &p else { panic!("{p:?}") };
        assert_eq!(r.filename, "snponly.efi");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(
            r.options,
            vec![
                ("blksize".into(), "1468".into()),
                ("windowsize".into(), "4".into()),
                ("tsize".into(), "0".into())
            ]
        );
        assert_eq!(p.to_bytes(), raw.to_vec());
    }

    #[test]
    fn option_names_are_case_insensitive_and_unique() {
        let p = Packet::parse(b"\x00\x01f\x00OCTET\x00BLKSIZE\x00512\x00").unwrap();
        let Packet::Rrq(r) = p else { panic!() };
        assert_eq!(r.options[0].0, "blksize");
        assert_eq!(
            Packet::parse(b"\x00\x01f\x00octet\x00blksize\x00512\x00BlkSize\x00600\x00"),
            Err(ParseError::BadOptions)
        );
    }

    #[test]
    fn malformed_packets_are_errors() {
        for (raw, want) in [
            (&b""[..], ParseError::TooShort),
            (b"\x00", ParseError::TooShort),
            (b"\x00\x09", ParseError::UnknownOpcode(9)),
            (b"\x00\x01file", ParseError::Unterminated),
            (b"\x00\x01file\x00", ParseError::TooShort),
            (
                b"\x00\x01f\x00binary\x00",
                ParseError::UnknownMode("binary".into()),
            ),
            (b"\x00\x01f\x00octet\x00blksize\x00", ParseError::BadOptions),
            (b"\x00\x01f\x01\x00octet\x00", ParseError::BadString),
            (b"\x00\x04\x00", ParseError::TooShort),
            (b"\x00\x04\x00\x01\x00", ParseError::TrailingBytes),
            (b"\x00\x03\x00", ParseError::TooShort),
        ] {
            assert_eq!(Packet::parse(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn data_ack_error_oack() {
        assert_eq!(
            Packet::parse(b"\x00\x03\x00\x07abc").unwrap(),
            Packet::Data {
                block: 7,
                data: b"abc"
            }
        );
        assert_eq!(
            Packet::parse(b"\x00\x04\xff\xff").unwrap(),
            Packet::Ack { block: 0xffff }
        );
        let e = Packet::parse(b"\x00\x05\x00\x01nope\x00").unwrap();
        assert_eq!(
            e,
            Packet::Error {
                code: 1,
                message: "nope".into()
            }
        );
        assert_eq!(
            Packet::parse(&error_packet(ErrorCode::AccessViolation, "x")).unwrap(),
            Packet::Error {
                code: 2,
                message: "x".into()
            }
        );
        let o = Packet::Oack {
            options: vec![("tsize".into(), "9".into())],
        };
        assert_eq!(Packet::parse(&o.to_bytes()).unwrap(), o);
    }
}
