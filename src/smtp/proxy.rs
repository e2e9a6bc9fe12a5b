//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer in front of the listener
//! opens each connection with a header naming the client it stands for, so SPF, the per-IP caps
//! and the rate limits judge the client and not the balancer.
//!
//! [`parse`] is a pure function over the bytes received so far (small enough to fuzz and to
//! test without sockets); [`read_header`] feeds it from a socket. The reader never consumes a
//! byte past the header: it peeks, and consumes only bytes that are still part of the header, so
//! whatever the client sends next reaches the SMTP session untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr as _;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// Which header versions a listener accepts (`smtp.proxy_protocol`, minus `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    V1,
    V2,
    Any,
}

impl Versions {
    fn v1(self) -> bool {
        matches!(self, Self::V1 | Self::Any)
    }

    fn v2(self) -> bool {
        matches!(self, Self::V2 | Self::Any)
    }
}

/// A complete header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header took, signature to last TLV.
    pub len: usize,
    /// The client the proxy stands for; `None` for the proxy's own connections (v2 `LOCAL`,
    /// v1 `UNKNOWN`: health checks) and for families without an IP address (UNIX sockets),
    /// which keep the proxy's address.
    pub client: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no PROXY header where one is required")]
    Missing,
    #[error("PROXY header longer than {0} bytes")]
    TooLong(usize),
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    #[error("connection closed inside the PROXY header")]
    Truncated,
    /// A TCP health check (a load balancer's, a kubelet's): connected and closed, said nothing.
    #[error("connection closed before a PROXY header began")]
    ClosedSilently,
    #[error("PROXY header not complete within {0:?}")]
    TimedOut(Duration),
    #[error("reading the PROXY header: {0}")]
    Io(String),
}

/// RFC-like limit of the v1 spec: 107 bytes, CRLF included.
pub const V1_MAX: usize = 107;
/// v2's length field allows 64 KiB of TLVs; real proxies send a few hundred bytes (SSL facts,
/// a unique id, the authority). Anything past this is hostile.
pub const V2_MAX: usize = 16 + 2048;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Reads `buf`, the first bytes of a connection: `Ok(None)` while they are a valid beginning of
/// a header accepted by `versions` and more are needed, the header once complete, or why the
/// connection must be closed.
///
/// # Errors
/// [`Error::Missing`] when the bytes begin no accepted header, [`Error::TooLong`] or
/// [`Error::Malformed`] for a header that never can be valid.
pub fn parse(buf: &[u8], versions: Versions) -> Result<Option<Header>, Error> {
    if versions.v2() && is_prefix_of(buf, V2_SIGNATURE) {
        return parse_v2(buf);
    }
    if versions.v1() && is_prefix_of(buf, V1_PREFIX) {
        return parse_v1(buf);
    }
    // Both start differently, so an empty buffer is the only prefix of both.
    if buf.is_empty() {
        return Ok(None);
    }
    Err(Error::Missing)
}

/// True when `buf` and `pattern` agree on their common length (`buf` may be shorter or longer).
fn is_prefix_of(buf: &[u8], pattern: &[u8]) -> bool {
    let n = buf.len().min(pattern.len());
    buf[..n] == pattern[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, Error> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|b| *b == b'\n') else {
        if buf.len() >= V1_MAX {
            return Err(Error::TooLong(V1_MAX));
        }
        return Ok(None);
    };
    let Some(line) = window[..lf].strip_suffix(b"\r") else {
        return Err(Error::Malformed("v1 line not ended by CRLF"));
    };
    let line = std::str::from_utf8(line).map_err(|_| Error::Malformed("v1 line not ASCII"))?;
    let mut fields = line.split(' ');
    // `parse` only calls this when the prefix matched, so the first field is `PROXY`.
    let _proxy = fields.next();
    let client = match fields.next() {
        // The spec lets the rest of an UNKNOWN line be anything; the receiver ignores it.
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = fields.collect();
            let [source, destination, source_port, destination_port] = fields[..] else {
                return Err(Error::Malformed("v1 needs four address fields"));
            };
            let source = v1_address(family, source)?;
            v1_address(family, destination)?;
            let source_port = v1_port(source_port)?;
            v1_port(destination_port)?;
            Some(SocketAddr::new(source, source_port))
        }
        _ => return Err(Error::Malformed("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Some(Header {
        len: lf + 1,
        client,
    }))
}

fn v1_address(family: &str, text: &str) -> Result<IpAddr, Error> {
    let address = if family == "TCP4" {
        Ipv4Addr::from_str(text).map(IpAddr::V4)
    } else {
        Ipv6Addr::from_str(text).map(IpAddr::V6)
    };
    address.map_err(|_| Error::Malformed("v1 address does not match its family"))
}

fn v1_port(text: &str) -> Result<u16, Error> {
    // Digits only, no sign and no leading zero, as the spec writes them.
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical
        .then(|| text.parse().ok())
        .flatten()
        .ok_or(Error::Malformed("v1 port is not a number from 0 to 65535"))
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, Error> {
    let Some(fixed) = buf.get(..16) else {
        return Ok(None);
    };
    let version_command = fixed[12];
    if version_command >> 4 != 2 {
        return Err(Error::Malformed("v2 version is not 2"));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Error::Malformed("v2 command is neither LOCAL nor PROXY")),
    };
    let family = fixed[13] >> 4;
    let transport = fixed[13] & 0x0f;
    if family > 3 || transport > 2 {
        return Err(Error::Malformed("v2 family or transport unknown"));
    }
    let body_len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let len = 16 + body_len;
    if len > V2_MAX {
        return Err(Error::TooLong(V2_MAX));
    }
    let Some(body) = buf.get(16..len) else {
        return Ok(None);
    };
    let address_len = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    let Some(addresses) = body.get(..address_len) else {
        return Err(Error::Malformed("v2 length shorter than its addresses"));
    };
    check_tlvs(&body[address_len..])?;
    // LOCAL: the proxy speaks for itself (a health check); UNSPEC, UNIX and datagram
    // addresses name no TCP client. In all of these the connection's own address stands.
    let client = match (local, family, transport) {
        (false, 1, 1) => {
            let ip = Ipv4Addr::from(<[u8; 4]>::try_from(&addresses[0..4]).unwrap_or_default());
            let port = u16::from_be_bytes([addresses[8], addresses[9]]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        (false, 2, 1) => {
            let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&addresses[0..16]).unwrap_or_default());
            let port = u16::from_be_bytes([addresses[32], addresses[33]]);
            Some(SocketAddr::new(IpAddr::V6(ip), port))
        }
        _ => None,
    };
    Ok(Some(Header { len, client }))
}

/// The type-length-value records after the addresses must tile the rest exactly; their
/// contents (ALPN, authority, SSL facts, unique id, checksums) are not used.
fn check_tlvs(mut rest: &[u8]) -> Result<(), Error> {
    while !rest.is_empty() {
        let [_kind, high, low, ..] = *rest else {
            return Err(Error::Malformed("v2 TLV header cut short"));
        };
        let end = 3 + usize::from(u16::from_be_bytes([high, low]));
        if end > rest.len() {
            return Err(Error::Malformed("v2 TLV longer than the header"));
        }
        rest = &rest[end..];
    }
    Ok(())
}

/// Reads the header that must open a connection from a trusted proxy, consuming exactly its
/// bytes. A header split across reads is waited for until `timeout` has passed in all.
///
/// # Errors
/// [`Error`]: the connection must be closed with nothing read from it as SMTP.
pub async fn read_header(
    stream: &mut TcpStream,
    versions: Versions,
    timeout: Duration,
) -> Result<Header, Error> {
    match tokio::time::timeout(timeout, read_header_untimed(stream, versions)).await {
        Ok(read) => read,
        Err(_) => Err(Error::TimedOut(timeout)),
    }
}

async fn read_header_untimed(stream: &mut TcpStream, versions: Versions) -> Result<Header, Error> {
    let io = |err: std::io::Error| Error::Io(err.to_string());
    // `seen` holds the bytes consumed so far, all of them part of the header.
    let mut seen = Vec::with_capacity(V1_MAX);
    let mut peeked = vec![0u8; V2_MAX.max(V1_MAX)];
    loop {
        let room = V2_MAX.max(V1_MAX) - seen.len();
        let n = stream.peek(&mut peeked[..room]).await.map_err(io)?;
        if n == 0 {
            return Err(if seen.is_empty() {
                Error::ClosedSilently
            } else {
                Error::Truncated
            });
        }
        let seen_before = seen.len();
        seen.extend_from_slice(&peeked[..n]);
        match parse(&seen, versions)? {
            Some(header) => {
                let mut rest = vec![0u8; header.len - seen_before];
                stream.read_exact(&mut rest).await.map_err(io)?;
                return Ok(header);
            }
            None => {
                // Everything peeked is still inside the header: consume it, so the next peek
                // waits for new bytes instead of returning the same ones at once.
                let mut taken = vec![0u8; n];
                stream.read_exact(&mut taken).await.map_err(io)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        let len = u16::try_from(addresses.len() + tlvs.len()).expect("small");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(addresses);
        out.extend_from_slice(tlvs);
        out
    }

    fn v4_addresses() -> Vec<u8> {
        let mut out = vec![192, 0, 2, 7, 10, 0, 0, 1];
        out.extend_from_slice(&40000u16.to_be_bytes());
        out.extend_from_slice(&25u16.to_be_bytes());
        out
    }

    fn client(text: &str) -> Option<SocketAddr> {
        Some(text.parse().expect("socket address"))
    }

    #[test]
    fn v1_tcp4_and_tcp6_name_the_client_and_their_length() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 25\r\nEHLO x\r\n";
        let header = parse(line, Versions::V1).expect("valid").expect("complete");
        assert_eq!(header.len, line.len() - b"EHLO x\r\n".len());
        assert_eq!(header.client, client("192.0.2.7:40000"));
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 25\r\n";
        let header = parse(line, Versions::Any)
            .expect("valid")
            .expect("complete");
        assert_eq!(header.client, client("[2001:db8::7]:65535"));
        let unknown = parse(b"PROXY UNKNOWN whatever\r\n", Versions::V1).expect("valid");
        assert_eq!(unknown.expect("complete").client, None);
    }

    #[test]
    fn every_prefix_of_a_valid_header_asks_for_more() {
        let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 25\r\n".to_vec();
        let v2 = v2(1, 0x11, &v4_addresses(), &[0x04, 0, 2, b'a', b'b']);
        for (header, versions) in [(v1, Versions::V1), (v2, Versions::V2)] {
            for end in 0..header.len() {
                assert_eq!(parse(&header[..end], versions), Ok(None), "prefix of {end}");
                assert_eq!(
                    parse(&header[..end], Versions::Any),
                    Ok(None),
                    "prefix of {end}"
                );
            }
            let complete = parse(&header, versions).expect("valid").expect("complete");
            assert_eq!(complete.len, header.len());
        }
    }

    #[test]
    fn v1_refusals() {
        let cases: &[(&[u8], Error)] = &[
            (b"EHLO client\r\n", Error::Missing),
            (
                b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 25\n",
                Error::Malformed("v1 line not ended by CRLF"),
            ),
            (
                b"PROXY TCP4 2001:db8::7 10.0.0.1 40000 25\r\n",
                Error::Malformed("v1 address does not match its family"),
            ),
            (
                b"PROXY TCP4 192.0.2.7 10.0.0.1 70000 25\r\n",
                Error::Malformed("v1 port is not a number from 0 to 65535"),
            ),
            (
                b"PROXY TCP4 192.0.2.7 10.0.0.1 040 25\r\n",
                Error::Malformed("v1 port is not a number from 0 to 65535"),
            ),
            (
                b"PROXY TCP4 192.0.2.7 10.0.0.1 40000\r\n",
                Error::Malformed("v1 needs four address fields"),
            ),
            (
                b"PROXY TCP4  192.0.2.7 10.0.0.1 40000 25\r\n",
                Error::Malformed("v1 needs four address fields"),
            ),
            (
                b"PROXY UDP4 192.0.2.7 10.0.0.1 40000 25\r\n",
                Error::Malformed("v1 protocol is not TCP4, TCP6 or UNKNOWN"),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse(input, Versions::V1).as_ref(),
                Err(expected),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let endless = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat();
        assert_eq!(parse(&endless, Versions::V1), Err(Error::TooLong(V1_MAX)));
        // A v2 header where only v1 is accepted, and the other way round.
        let binary = v2(1, 0x11, &v4_addresses(), &[]);
        assert_eq!(parse(&binary, Versions::V1), Err(Error::Missing));
        assert_eq!(
            parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\r\n", Versions::V2),
            Err(Error::Missing)
        );
    }

    #[test]
    fn v2_addresses_tlvs_and_local() {
        let header = v2(
            1,
            0x11,
            &v4_addresses(),
            &[0x01, 0, 2, b'h', b'2', 0x20, 0, 0],
        );
        let parsed = parse(&header, Versions::V2)
            .expect("valid")
            .expect("complete");
        assert_eq!(parsed.client, client("192.0.2.7:40000"));
        assert_eq!(parsed.len, header.len());

        let mut v6 = vec![0x20, 0x01, 0x0d, 0xb8];
        v6.extend_from_slice(&[0; 11]);
        v6.push(7);
        v6.extend_from_slice(&[0; 16]);
        v6.extend_from_slice(&[0x01, 0xbb, 0, 25]);
        let parsed = parse(&v2(1, 0x21, &v6, &[]), Versions::Any).expect("valid");
        assert_eq!(
            parsed.expect("complete").client,
            client("[2001:db8::7]:443")
        );

        // LOCAL (a health check) and UNSPEC keep the connection's own address.
        let local = parse(&v2(0, 0x00, &[], &[]), Versions::V2).expect("valid");
        assert_eq!(local.expect("complete").client, None);
        let local = parse(&v2(0, 0x11, &v4_addresses(), &[]), Versions::V2).expect("valid");
        assert_eq!(local.expect("complete").client, None);
    }

    #[test]
    fn v2_refusals() {
        let addresses = v4_addresses();
        let mut bad_version = v2(1, 0x11, &addresses, &[]);
        bad_version[12] = 0x11;
        let mut bad_command = v2(1, 0x11, &addresses, &[]);
        bad_command[12] = 0x22;
        let cases = [
            (bad_version, "v2 version is not 2"),
            (bad_command, "v2 command is neither LOCAL nor PROXY"),
            (
                v2(1, 0x41, &addresses, &[]),
                "v2 family or transport unknown",
            ),
            (
                v2(1, 0x21, &addresses, &[]),
                "v2 length shorter than its addresses",
            ),
            (
                v2(1, 0x11, &addresses, &[0x01, 0]),
                "v2 TLV header cut short",
            ),
            (
                v2(1, 0x11, &addresses, &[0x01, 0, 9, 1]),
                "v2 TLV longer than the header",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse(&input, Versions::V2), Err(Error::Malformed(expected)));
        }
        let mut oversized = V2_SIGNATURE.to_vec();
        oversized.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&oversized, Versions::V2), Err(Error::TooLong(V2_MAX)));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_claim_more_than_they_hold() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(22);
        let seeds: [&[u8]; 3] = [
            b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 25\r\n",
            &v2(1, 0x11, &v4_addresses(), &[0x04, 0, 1, 0]),
            b"PROXY TCP6 ::1 ::1 1 1\r\n",
        ];
        for round in 0..20_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..input.len());
                match rng.random_range(0..3) {
                    0 => input[at] = rng.random(),
                    1 => input.truncate(at),
                    _ => input.insert(at, rng.random()),
                }
                if input.is_empty() {
                    break;
                }
            }
            for versions in [Versions::V1, Versions::V2, Versions::Any] {
                if let Ok(Some(header)) = parse(&input, versions) {
                    assert!(header.len <= input.len(), "{input:?}");
                }
            }
        }
    }
}
