//! Raw DHCPv4 datagrams: strict validation, decoding with `dhcproto`, and what the core needs to know about a
//! client (its MAC, architecture, vendor class, user class, relay ids).
//!
//! Everything that is not a well-formed BOOTREQUEST from an Ethernet client is refused here with a
//! [`Malformed`] kind, which the socket loop counts and logs at debug level.

use std::net::Ipv4Addr;

use dhcproto::v4::{self, DhcpOption, Message, MessageType, OptionCode, relay::RelayCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use crate::config::MacAddr;

/// The fixed BOOTP header (236 bytes) plus the magic cookie.
pub const MIN_LEN: usize = 240;
/// The largest datagram accepted: an Ethernet MTU. Anything longer is refused as oversize.
pub const MAX_LEN: usize = 1500;
/// RFC 2131's magic cookie, right after the fixed header.
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

/// Why a datagram was dropped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Malformed {
    /// Shorter than the fixed header and magic cookie.
    Truncated,
    /// Longer than [`MAX_LEN`].
    Oversize,
    /// The four bytes after the fixed header are not 99.130.83.99.
    BadMagicCookie,
    /// An option runs past the end of the packet, or its length is wrong for its type.
    BadOptionLength,
    /// `op` is not BOOTREQUEST (1): a reply or garbage arriving at the server port.
    WrongOp,
    /// Not an Ethernet client (`htype` 1, `hlen` 6).
    BadHardwareAddress,
    /// No DHCP message type (option 53): plain BOOTP is not served.
    NoMessageType,
}

impl Malformed {
    /// Every kind, in a fixed order: the `reason` labels of the dropped-datagram counter.
    pub const ALL: [Malformed; 7] = [
        Malformed::Truncated,
        Malformed::Oversize,
        Malformed::BadMagicCookie,
        Malformed::BadOptionLength,
        Malformed::WrongOp,
        Malformed::BadHardwareAddress,
        Malformed::NoMessageType,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::Truncated => "truncated",
            Malformed::Oversize => "oversize",
            Malformed::BadMagicCookie => "bad_magic_cookie",
            Malformed::BadOptionLength => "bad_option_length",
            Malformed::WrongOp => "wrong_op",
            Malformed::BadHardwareAddress => "bad_hardware_address",
            Malformed::NoMessageType => "no_message_type",
        }
    }
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options the server reads from a request. Only these are handed to the decoder: the others are not
/// needed, and some of them (rapid commit, classless routes, ...) make `dhcproto` 0.15 assert or panic on
/// malformed input.
const READ_OPTIONS: [u8; 9] = [50, 53, 54, 55, 60, 77, 82, 93, 97];

/// Walks the options after the cookie, checks every length, and returns a copy of the packet holding only
/// [`READ_OPTIONS`] (option 93 trimmed to its first architecture).
fn sanitize(buf: &[u8]) -> Result<Vec<u8>, Malformed> {
    let mut clean = Vec::with_capacity(buf.len());
    clean.extend_from_slice(&buf[..MIN_LEN]);
    let mut i = MIN_LEN;
    let mut seen_type = false;
    while i < buf.len() {
        let code = buf[i];
        match code {
            0 => i += 1,
            255 => break,
            _ => {
                let len = *buf.get(i + 1).ok_or(Malformed::BadOptionLength)? as usize;
                if i + 2 + len > buf.len() {
                    return Err(Malformed::BadOptionLength);
                }
                let data = &buf[i + 2..i + 2 + len];
                let ok = match code {
                    53 => len == 1,
                    50 | 54 => len == 4,
                    93 => len >= 2 && len.is_multiple_of(2),
                    _ => true,
                };
                if !ok {
                    return Err(Malformed::BadOptionLength);
                }
                seen_type |= code == 53;
                if READ_OPTIONS.contains(&code) {
                    let data = if code == 93 { &data[..2] } else { data };
                    clean.push(code);
                    clean.push(data.len() as u8);
                    clean.extend_from_slice(data);
                }
                i += 2 + len;
            }
        }
    }
    if !seen_type {
        return Err(Malformed::NoMessageType);
    }
    clean.push(255);
    Ok(clean)
}

/// Panics of the `dhcproto` decoder caught by [`parse`] since start (should stay 0: only options with checked
/// lengths reach it).
pub static DECODER_PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Validates a datagram and decodes it. Never panics, whatever the bytes.
pub fn parse(buf: &[u8]) -> Result<Message, Malformed> {
    if buf.len() > MAX_LEN {
        return Err(Malformed::Oversize);
    }
    if buf.len() < MIN_LEN {
        return Err(Malformed::Truncated);
    }
    if buf[0] != 1 {
        return Err(Malformed::WrongOp);
    }
    if buf[1] != 1 || buf[2] != 6 {
        return Err(Malformed::BadHardwareAddress);
    }
    if buf[236..240] != MAGIC_COOKIE {
        return Err(Malformed::BadMagicCookie);
    }
    let clean = sanitize(buf)?;
    // Defence in depth: a decoder panic on hostile bytes is a dropped packet, never a crash (and is counted
    // in DECODER_PANICS, which the fuzz test requires to stay 0).
    let msg = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(&clean)))
        .map_err(|_| {
            DECODER_PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Malformed::BadOptionLength
        })?
        .map_err(|_| Malformed::BadOptionLength)?;
    if msg.opts().msg_type().is_none() {
        return Err(Malformed::NoMessageType);
    }
    Ok(msg)
}

/// Encodes a reply.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(576);
    let mut e = Encoder::new(&mut buf);
    // Encoding our own well-formed message into a Vec cannot fail; an empty buffer is never sent.
    if msg.encode(&mut e).is_err() {
        buf.clear();
    }
    buf
}

/// The PXE vendor class a client announced in option 60.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// `PXEClient:...`: firmware PXE, or iPXE.
    Pxe,
    /// `HTTPClient:...`: UEFI HTTP Boot; the reply must echo `HTTPClient`.
    Http,
}

impl Vendor {
    /// The option 60 text a reply echoes.
    pub fn echo(self) -> &'static [u8] {
        match self {
            Vendor::Pxe => b"PXEClient",
            Vendor::Http => b"HTTPClient",
        }
    }
}

/// Option 82 sub-options, as text (UTF-8 when printable, else lower-case hex).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayIds {
    /// Sub-option 1, the agent circuit ID (typically the switch port); matched against `relay_id` in
    /// `cluster.toml`.
    pub circuit_id: Option<String>,
    /// Sub-option 2, the agent remote ID (typically the relay itself); matched against `relay_id` in
    /// `cluster.toml`.
    pub remote_id: Option<String>,
}

fn id_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() || c == ' ') => {
            s.to_string()
        }
        _ => hex::encode(bytes),
    }
}

/// What a request says about its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The DHCP message type (option 53): DISCOVER, REQUEST, RELEASE, ...
    pub msg_type: MessageType,
    /// The client hardware address (`chaddr`), which picks its inventory machine unless a relay id does.
    pub mac: MacAddr,
    /// Option 93 (first entry).
    pub arch: Option<u16>,
    /// Option 60 `PXEClient` / `HTTPClient`.
    pub vendor: Option<Vendor>,
    /// Option 77 contains `iPXE`.
    pub is_ipxe: bool,
    /// Option 97, echoed to PXE clients.
    pub uuid: Option<Vec<u8>>,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 82, when a relay agent added it.
    pub relay: Option<RelayIds>,
    /// Option 55.
    pub wants: Vec<u8>,
}

impl ClientInfo {
    /// Reads the fields the core uses from a message [`parse`] accepted.
    pub fn of(msg: &Message) -> ClientInfo {
        let opts = msg.opts();
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&msg.chaddr()[..6]);
        let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
            _ => None,
        };
        let vendor = match opts.get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(v)) if v.starts_with(b"PXEClient") => {
                Some(Vendor::Pxe)
            }
            Some(DhcpOption::ClassIdentifier(v)) if v.starts_with(b"HTTPClient") => {
                Some(Vendor::Http)
            }
            _ => None,
        };
        // iPXE sends option 77 as the bare text "iPXE" (not RFC 3004 length-prefixed); accept both forms.
        let is_ipxe = match opts.get(OptionCode::UserClass) {
            Some(DhcpOption::UserClass(v)) => v.windows(4).any(|w| w == b"iPXE"),
            _ => false,
        };
        let uuid = match opts.get(OptionCode::ClientMachineIdentifier) {
            Some(DhcpOption::ClientMachineIdentifier(v)) => Some(v.clone()),
            _ => None,
        };
        let requested_ip = match opts.get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let server_id = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let relay = match opts.get(OptionCode::RelayAgentInformation) {
            Some(DhcpOption::RelayAgentInformation(info)) => {
                let get = |code| match info.get(code) {
                    Some(v4::relay::RelayInfo::AgentCircuitId(b))
                    | Some(v4::relay::RelayInfo::AgentRemoteId(b)) => Some(id_text(b)),
                    _ => None,
                };
                Some(RelayIds {
                    circuit_id: get(RelayCode::AgentCircuitId),
                    remote_id: get(RelayCode::AgentRemoteId),
                })
            }
            _ => None,
        };
        let wants = match opts.get(OptionCode::ParameterRequestList) {
            Some(DhcpOption::ParameterRequestList(l)) => l.iter().map(|c| u8::from(*c)).collect(),
            _ => Vec::new(),
        };
        ClientInfo {
            msg_type: opts.msg_type().unwrap_or(MessageType::Unknown(0)),
            mac: MacAddr(mac),
            arch,
            vendor,
            is_ipxe,
            uuid,
            requested_ip,
            server_id,
            relay,
            wants,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid DISCOVER.
    pub(crate) fn discover_bytes() -> Vec<u8> {
        let mut b = vec![0u8; 240];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&[1, 2, 3, 4]);
        b[28..34].copy_from_slice(&[0x52, 0x54, 0, 0x77, 0, 0x11]);
        b[236..240].copy_from_slice(&MAGIC_COOKIE);
        b.extend_from_slice(&[53, 1, 1, 93, 2, 0, 7, 255]);
        b
    }

    #[test]
    fn accepts_a_discover() {
        let m = parse(&discover_bytes()).unwrap();
        let c = ClientInfo::of(&m);
        assert_eq!(c.msg_type, MessageType::Discover);
        assert_eq!(c.arch, Some(7));
        assert_eq!(c.mac.to_string(), "52:54:00:77:00:11");
    }

    #[test]
    fn refuses_each_kind() {
        let good = discover_bytes();
        assert_eq!(parse(&good[..200]), Err(Malformed::Truncated));
        let mut big = good.clone();
        big.resize(MAX_LEN + 1, 0);
        assert_eq!(parse(&big), Err(Malformed::Oversize));
        let mut b = good.clone();
        b[236] = 0;
        assert_eq!(parse(&b), Err(Malformed::BadMagicCookie));
        let mut b = good.clone();
        b[0] = 2;
        assert_eq!(parse(&b), Err(Malformed::WrongOp));
        let mut b = good.clone();
        b[2] = 16;
        assert_eq!(parse(&b), Err(Malformed::BadHardwareAddress));
        let mut b = good.clone();
        b[244] = 40; // option 93 claims 40 bytes
        assert_eq!(parse(&b), Err(Malformed::BadOptionLength));
        // option 50 (an address, 4 bytes) with length 2: a naive decoder would desync.
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 1, 1, 50, 2, 0, 0, 12, 1, b'x', 255]);
        assert_eq!(parse(&b), Err(Malformed::BadOptionLength));
        // Options the server does not read are not decoded: rapid commit with a length (dhcproto asserts).
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 1, 1, 80, 2, 0, 0, 121, 5, 40, 1, 2, 3, 4, 255]);
        assert!(parse(&b).is_ok());
        // A list of architectures: the first one counts.
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 1, 1, 93, 4, 0, 16, 0, 7, 255]);
        assert_eq!(ClientInfo::of(&parse(&b).unwrap()).arch, Some(16));
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[12, 1, b'x', 255]);
        assert_eq!(parse(&b), Err(Malformed::NoMessageType));
    }
}
