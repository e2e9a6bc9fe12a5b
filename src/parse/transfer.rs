//! Content-Transfer-Encoding decoders that take their input in pieces of any size, so an
//! attachment can be decoded while it streams from the store (see [`super::part`]).
//!
//! They decode the way mail-parser's MIME decoders do (the ones that produced the part's
//! bytes at intake): base64 skips spaces, tabs, line breaks and lone `-`, and `=` ends a group;
//! quoted-printable drops soft line breaks and the whitespace before a hard one (not before a
//! soft one), writes hard
//! line breaks as `\r\n` once the part used a `\r` (`\n` before), and keeps an invalid escape
//! as written. Where the two could still disagree, intake does not record a range for the part
//! (it checks the streamed result against the parser's), so this is never the only judge.

use serde::{Deserialize, Serialize};

/// How a part's body is encoded in the raw message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransferEncoding {
    /// 7bit, 8bit, binary or none: the bytes are the content.
    Identity,
    Base64,
    QuotedPrintable,
}

/// Input the decoder cannot read; mail-parser would not have decoded it either.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {encoding} body has an invalid byte {byte:#04x}")]
pub struct DecodeError {
    pub encoding: &'static str,
    pub byte: u8,
}

/// One part's decoder; feed it the body in order with [`Decoder::feed`], then
/// [`Decoder::finish`].
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
}

#[derive(Debug, Clone)]
enum State {
    Identity,
    Base64 {
        /// The sextets of the group so far, first in the highest bits.
        chunk: u32,
        count: u8,
    },
    QuotedPrintable {
        escape: Escape,
        /// Whitespace read since the last other byte: written only once something other
        /// than a line break follows it.
        pending_ws: Vec<u8>,
        /// Whether a `\r` was seen: hard line breaks are written as `\r\n` from then on.
        crlf: bool,
        last: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// After `=`.
    Eq,
    /// After `=` and one hex digit (its value).
    Hex1(u8),
}

/// Longest run of whitespace held back by the quoted-printable decoder; a longer run cannot be
/// trailing whitespace of a line anyone wrote, and is written out (mail-parser would keep it
/// too unless a line break follows, which the intake check then notices).
const MAX_PENDING_WS: usize = 64 << 10;

const B64_INVALID: u8 = 0xff;

static BASE64: [u8; 256] = {
    let mut table = [B64_INVALID; 256];
    let mut value = 0u8;
    while value < 64 {
        let ch = match value {
            0..=25 => b'A' + value,
            26..=51 => b'a' + (value - 26),
            52..=61 => b'0' + (value - 52),
            62 => b'+',
            _ => b'/',
        };
        table[ch as usize] = value;
        value += 1;
    }
    table
};

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

impl Decoder {
    pub fn new(encoding: TransferEncoding) -> Self {
        let state = match encoding {
            TransferEncoding::Identity => State::Identity,
            TransferEncoding::Base64 => State::Base64 { chunk: 0, count: 0 },
            TransferEncoding::QuotedPrintable => State::QuotedPrintable {
                escape: Escape::None,
                pending_ws: Vec::new(),
                crlf: false,
                last: 0,
            },
        };
        Self { state }
    }

    /// Decodes the next piece of the body onto `out`.
    ///
    /// # Errors
    /// [`DecodeError`] on a byte the encoding does not allow; the decoder is then spent.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        match &mut self.state {
            State::Identity => out.extend_from_slice(input),
            State::Base64 { chunk, count } => {
                out.reserve(input.len() / 4 * 3 + 3);
                for &byte in input {
                    let value = BASE64[usize::from(byte)];
                    if value != B64_INVALID {
                        *chunk = (*chunk << 6) | u32::from(value);
                        *count += 1;
                        if *count == 4 {
                            out.extend_from_slice(&chunk.to_be_bytes()[1..]);
                            *count = 0;
                            *chunk = 0;
                        }
                    } else {
                        match byte {
                            b'=' => flush_base64(chunk, count, out),
                            b' ' | b'\t' | b'\r' | b'\n' | b'-' => {}
                            _ => {
                                return Err(DecodeError {
                                    encoding: "base64",
                                    byte,
                                });
                            }
                        }
                    }
                }
            }
            State::QuotedPrintable {
                escape,
                pending_ws,
                crlf,
                last,
            } => {
                for &byte in input {
                    quoted_printable_byte(byte, escape, pending_ws, crlf, *last, out)?;
                    *last = byte;
                }
            }
        }
        Ok(())
    }

    /// Ends the body: what a part ends with that is not content (an unfinished base64 group,
    /// whitespace at the end of the last line) is dropped, as mail-parser drops it.
    pub fn finish(self, _out: &mut Vec<u8>) {}
}

/// `=` in base64: the group so far, as far as it makes whole bytes.
fn flush_base64(chunk: &mut u32, count: &mut u8, out: &mut Vec<u8>) {
    match *count {
        1 => out.push((*chunk << 2) as u8),
        2 => out.push((*chunk >> 4) as u8),
        3 => out.extend_from_slice(&[(*chunk >> 10) as u8, (*chunk >> 2) as u8]),
        _ => {}
    }
    *count = 0;
    *chunk = 0;
}

fn quoted_printable_byte(
    byte: u8,
    escape: &mut Escape,
    pending_ws: &mut Vec<u8>,
    crlf: &mut bool,
    last: u8,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let write = |pending_ws: &mut Vec<u8>, out: &mut Vec<u8>, bytes: &[u8]| {
        out.append(pending_ws);
        out.extend_from_slice(bytes);
    };
    match byte {
        b'=' => {
            if *escape == Escape::None {
                *escape = Escape::Eq;
            } else {
                return Err(DecodeError {
                    encoding: "quoted-printable",
                    byte,
                });
            }
        }
        b'\n' => {
            if *escape == Escape::Eq {
                // A soft line break: the line goes on, and the whitespace before it is
                // content (mail-parser trims only what precedes a hard break directly).
                *escape = Escape::None;
                out.append(pending_ws);
            } else {
                pending_ws.clear();
                out.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
            }
        }
        b'\r' => *crlf = true,
        _ => match *escape {
            Escape::None => {
                if byte.is_ascii_whitespace() {
                    if pending_ws.len() >= MAX_PENDING_WS {
                        out.append(pending_ws);
                    }
                    pending_ws.push(byte);
                } else {
                    write(pending_ws, out, &[byte]);
                }
            }
            Escape::Eq => match hex(byte) {
                Some(high) => *escape = Escape::Hex1(high),
                None if byte.is_ascii_whitespace() => {}
                None => {
                    *escape = Escape::None;
                    write(pending_ws, out, &[b'=', byte]);
                }
            },
            Escape::Hex1(high) => {
                *escape = Escape::None;
                match hex(byte) {
                    Some(low) => write(pending_ws, out, &[(high << 4) | low]),
                    None => write(pending_ws, out, &[b'=', last, byte]),
                }
            }
        },
    }
    Ok(())
}

/// Decodes a whole body at once (the fallback and the tests' reference for split input).
///
/// # Errors
/// [`DecodeError`] as [`Decoder::feed`].
pub fn decode_all(encoding: TransferEncoding, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut decoder = Decoder::new(encoding);
    let mut out = Vec::with_capacity(input.len());
    decoder.feed(input, &mut out)?;
    decoder.finish(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng as _, SeedableRng as _};

    /// Decodes `input` fed in pieces cut at `cuts`.
    fn decode_split(encoding: TransferEncoding, input: &[u8], cuts: &[usize]) -> Option<Vec<u8>> {
        let mut decoder = Decoder::new(encoding);
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            let cut = cut.clamp(from, input.len());
            decoder.feed(&input[from..cut], &mut out).ok()?;
            from = cut;
        }
        decoder.finish(&mut out);
        Some(out)
    }

    /// What mail-parser makes of `body` as the only part of a message with this encoding.
    fn mail_parser_decodes(encoding: &str, body: &[u8]) -> Vec<u8> {
        let mut raw = format!(
            "From: a@example.com\r\nContent-Type: application/octet-stream\r\n\
             Content-Transfer-Encoding: {encoding}\r\n\r\n"
        )
        .into_bytes();
        let offset = raw.len();
        raw.extend_from_slice(body);
        let message = mail_parser::MessageParser::default()
            .parse(&raw[..])
            .expect("parses");
        let part = message.parts.first().expect("one part");
        assert_eq!(part.raw_body_offset() as usize, offset);
        part.contents().to_vec()
    }

    fn random_base64(rng: &mut rand::rngs::StdRng, len: usize) -> (Vec<u8>, Vec<u8>) {
        use base64::Engine as _;
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
        let line = rng.random_range(1..100);
        let mut wrapped = Vec::new();
        for (n, byte) in encoded.bytes().enumerate() {
            if n > 0 && n % line == 0 {
                wrapped.extend_from_slice(match rng.random_range(0..4) {
                    0 => b"\n".as_slice(),
                    1 => b" \r\n",
                    2 => b"\t",
                    _ => b"\r\n",
                });
            }
            wrapped.push(byte);
        }
        (data, wrapped)
    }

    #[test]
    fn base64_split_anywhere_decodes_like_the_whole_and_like_mail_parser() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(20);
        for round in 0..300 {
            let len = rng.random_range(0..3000);
            let (data, wrapped) = random_base64(&mut rng, len);
            let whole = decode_all(TransferEncoding::Base64, &wrapped).expect("valid");
            assert_eq!(whole, data, "round {round}");
            assert_eq!(
                mail_parser_decodes("base64", &wrapped),
                data,
                "round {round}"
            );
            let mut cuts: Vec<usize> = (0..rng.random_range(0..20))
                .map(|_| rng.random_range(0..=wrapped.len()))
                .collect();
            cuts.sort_unstable();
            assert_eq!(
                decode_split(TransferEncoding::Base64, &wrapped, &cuts),
                Some(data.clone()),
                "round {round} cuts {cuts:?}"
            );
            // Every single split point of a short one.
            if wrapped.len() < 200 {
                for cut in 0..=wrapped.len() {
                    assert_eq!(
                        decode_split(TransferEncoding::Base64, &wrapped, &[cut]),
                        Some(data.clone())
                    );
                }
            }
        }
    }

    #[test]
    fn base64_padding_cut_groups_and_bad_bytes_are_read_as_mail_parser_reads_them() {
        for body in [
            &b"QQ=="[..],
            b"QUI=",
            b"QUJD",
            b"QUJ",
            b"Q",
            b"QQ==QUI=",
            b"QU-JD",
            b"Q=",
        ] {
            assert_eq!(
                decode_all(TransferEncoding::Base64, body).expect("valid"),
                mail_parser_decodes("base64", body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(decode_all(TransferEncoding::Base64, b"QUJD*").is_err());
    }

    #[test]
    fn quoted_printable_split_anywhere_decodes_like_the_whole_and_like_mail_parser() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        let alphabet = b"=AF09azxyqw \t\r\n.\xc3";
        let mut compared = 0;
        for round in 0..2000 {
            let len = rng.random_range(0..300);
            let mut body: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            if rng.random_bool(0.5) {
                body.push(b'\n');
            }
            let Ok(whole) = decode_all(TransferEncoding::QuotedPrintable, &body) else {
                continue;
            };
            let mut cuts: Vec<usize> = (0..rng.random_range(0..10))
                .map(|_| rng.random_range(0..=body.len()))
                .collect();
            cuts.sort_unstable();
            assert_eq!(
                decode_split(TransferEncoding::QuotedPrintable, &body, &cuts),
                Some(whole.clone()),
                "round {round}: {:?} cuts {cuts:?}",
                String::from_utf8_lossy(&body)
            );
            // mail-parser's own rules for the end of a single-part body differ (it keeps what
            // was pending at the end); intake checks that anyway, so compare bodies that end
            // on a line break, as an attachment's last line before its boundary does.
            if body.ends_with(b"\n") {
                assert_eq!(
                    mail_parser_decodes("quoted-printable", &body),
                    whole,
                    "round {round}: {:?}",
                    String::from_utf8_lossy(&body)
                );
                compared += 1;
            }
        }
        assert!(compared > 50, "only {compared} compared with mail-parser");
    }

    #[test]
    fn quoted_printable_soft_breaks_escapes_and_trailing_space() {
        let body = b"a=3Db =\r\nc  \r\nd=ZZ=4\r\n";
        assert_eq!(
            decode_all(TransferEncoding::QuotedPrintable, body).expect("valid"),
            b"a=b c\r\nd=ZZ\r\n"
        );
        assert!(decode_all(TransferEncoding::QuotedPrintable, b"a==").is_err());
    }
}
