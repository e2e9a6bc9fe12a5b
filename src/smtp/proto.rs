//! Sans-IO SMTP pieces the `mailin` engine does not cover: replies with enhanced status codes,
//! MAIL/RCPT argument parsing (null sender, ESMTP parameters, relay syntax) and the DATA
//! receiver (dot-unstuffing, end-of-data detection, size and line accounting).
//!
//! No tokio, no sockets: byte slices in, values out, so every split and smuggling vector can be
//! tested directly.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// One SMTP reply. With ENHANCEDSTATUSCODES advertised, every reply but the greeting, EHLO and
/// 354 carries an RFC 3463 code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<&'static str>,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    pub fn plain(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced: None,
            lines: vec![text.into()],
        }
    }

    pub fn multiline(code: u16, lines: Vec<String>) -> Self {
        Self {
            code,
            enhanced: None,
            lines,
        }
    }

    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Appends the wire form, CRLF-terminated, one `code-text` line per line but the last.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut text = String::new();
        let count = self.lines.len().max(1);
        for idx in 0..count {
            let separator = if idx + 1 == count { ' ' } else { '-' };
            let line = self.lines.get(idx).map(String::as_str).unwrap_or_default();
            let _ = write!(text, "{}{}", self.code, separator);
            if let Some(enhanced) = self.enhanced {
                let _ = write!(text, "{enhanced} ");
            }
            // A reply line must never carry a CR or LF of its own (it would split the reply).
            text.extend(line.chars().filter(|c| *c != '\r' && *c != '\n'));
            text.push_str("\r\n");
        }
        out.extend_from_slice(text.as_bytes());
    }
}

/// Replies the session sends in several places.
pub mod replies {
    use super::Reply;

    pub fn syntax_error() -> Reply {
        Reply::new(500, "5.5.2", "Syntax error, command unrecognized")
    }
    pub fn bad_arguments(detail: &str) -> Reply {
        Reply::new(
            501,
            "5.5.4",
            format!("Syntax error in parameters: {detail}"),
        )
    }
    pub fn bad_sequence() -> Reply {
        Reply::new(503, "5.5.1", "Bad sequence of commands")
    }
    pub fn line_too_long(limit: usize) -> Reply {
        Reply::new(
            500,
            "5.5.2",
            format!("Line too long (limit {limit} octets)"),
        )
    }
    pub fn not_implemented(command: &str) -> Reply {
        Reply::new(502, "5.5.1", format!("{command} not implemented"))
    }
    pub fn too_many_errors() -> Reply {
        Reply::new(421, "4.7.0", "Too many errors, closing connection")
    }
    pub fn idle_timeout() -> Reply {
        Reply::new(421, "4.4.2", "Idle timeout, closing connection")
    }
    pub fn data_too_slow(min_rate: u64) -> Reply {
        Reply::new(
            421,
            "4.4.2",
            format!("Data arriving slower than {min_rate} bytes/s, closing connection"),
        )
    }
    pub fn session_timeout() -> Reply {
        Reply::new(
            421,
            "4.4.2",
            "Session time limit reached, closing connection",
        )
    }
    pub fn shutting_down() -> Reply {
        Reply::new(421, "4.3.2", "Service shutting down, try again later")
    }
    pub fn too_many_from_address() -> Reply {
        Reply::new(
            421,
            "4.7.0",
            "Too many connections from your address, try again later",
        )
    }
    pub fn early_talker() -> Reply {
        Reply::new(
            554,
            "5.5.1",
            "Protocol error: client sent data before the greeting",
        )
    }
    pub fn message_too_big(limit: u64) -> Reply {
        Reply::new(
            552,
            "5.3.4",
            format!("Message size exceeds fixed limit of {limit} octets"),
        )
    }
    pub fn foreign_protocol(word: &str) -> Reply {
        Reply::new(
            554,
            "5.7.0",
            format!("Protocol error: {word} is not SMTP, closing connection"),
        )
    }
    pub fn control_characters() -> Reply {
        Reply::new(
            501,
            "5.5.2",
            "Syntax error: control character in command line",
        )
    }
    pub fn temp_failure() -> Reply {
        Reply::new(
            451,
            "4.3.0",
            "Requested action aborted: local error in processing, try again later",
        )
    }
}

/// Gives an enhanced code to a reply of the `mailin` engine, which writes bare ones.
pub fn enhance_engine_reply(code: u16) -> Reply {
    match code {
        221 => Reply::new(221, "2.0.0", "Bye"),
        250 => Reply::new(250, "2.0.0", "OK"),
        252 => Reply::new(
            252,
            "2.5.0",
            "Cannot VRFY user, but will accept message and attempt delivery",
        ),
        354 => Reply::plain(354, "End data with <CR><LF>.<CR><LF>"),
        421 => Reply::new(421, "4.3.0", "Service not available, closing connection"),
        500 => replies::syntax_error(),
        502 => replies::bad_arguments("missing parameter"),
        503 => replies::bad_sequence(),
        code if code >= 500 => Reply::new(code, "5.0.0", "Requested action not taken"),
        code if code >= 400 => Reply::new(code, "4.0.0", "Requested action not taken"),
        code => Reply::new(code, "2.0.0", "OK"),
    }
}

/// Words that open an HTTP request (or a PROXY header from a peer not trusted to send one):
/// a client sending them speaks another protocol, maybe in a cross-protocol attack from a
/// browser, and every further line would only be another error (Postfix's
/// `smtpd_forbidden_commands`).
const FOREIGN_VERBS: &[&str] = &[
    "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "PROXY",
];

/// The first word of `line` when it shows the client speaks another protocol: an HTTP method
/// or a header line (`Host:`, `User-Agent:`: a first word ending in a colon, which no SMTP
/// command has). The session answers and closes at once.
pub fn foreign_command(line: &[u8]) -> Option<String> {
    let word: Vec<u8> = line
        .iter()
        .take_while(|b| !b.is_ascii_whitespace())
        .take(32)
        .copied()
        .collect();
    // Only printable ASCII: the word is echoed in the reply.
    let upper: String = word
        .iter()
        .map(|b| {
            if b.is_ascii_graphic() {
                char::from(b.to_ascii_uppercase())
            } else {
                '?'
            }
        })
        .collect();
    let header_line = upper.len() > 1 && upper.ends_with(':');
    (header_line || FOREIGN_VERBS.contains(&upper.as_str())).then_some(upper)
}

/// True when a command line holds a control character (NUL, a bare CR, ESC, DEL …) anywhere
/// but its line ending; TAB is let through as white space.
pub fn has_control_bytes(line: &[u8]) -> bool {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    body.iter().any(|b| b.is_ascii_control() && *b != b'\t')
}

/// The first word of a command line, uppercased (`MAIL`, `RCPT`, …).
pub fn verb(line: &[u8]) -> String {
    line.iter()
        .take_while(|b| !b.is_ascii_whitespace() && **b != b':')
        .take(16)
        .map(|b| char::from(b.to_ascii_uppercase()))
        .collect()
}

/// A parsed `MAIL FROM` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFrom {
    /// `None` is the null reverse path `<>` (bounces, RFC 5321 §4.5.5).
    pub reverse_path: Option<String>,
    pub declared_size: Option<u64>,
    pub body_8bit: bool,
    pub smtputf8: bool,
}

/// Parses `MAIL FROM:<path> [params]`. `line` is the whole command line with or without CRLF.
///
/// # Errors
/// The reply to send: 501 for syntax, 555 for unknown parameters, 552 when `SIZE=` already
/// exceeds `max_size`.
pub fn parse_mail_from(line: &[u8], max_size: u64) -> Result<MailFrom, Reply> {
    let text = command_text(line)?;
    let rest = strip_prefix_ci(text, "MAIL FROM:")
        .ok_or_else(|| replies::bad_arguments("expected MAIL FROM:<address>"))?;
    let (path, params) = split_path(rest)?;
    let reverse_path = if path.is_empty() {
        None
    } else {
        // RFC 5321 §4.1.1.2: a source route in a reverse path is accepted and ignored.
        let address = strip_source_route(path);
        if !looks_like_mailbox(address) {
            return Err(Reply::new(
                553,
                "5.1.7",
                format!("Bad sender address syntax <{path}>"),
            ));
        }
        Some(address.to_owned())
    };
    let mut mail = MailFrom {
        reverse_path,
        declared_size: None,
        body_8bit: false,
        smtputf8: false,
    };
    for param in params.split_ascii_whitespace() {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match key.to_ascii_uppercase().as_str() {
            "SIZE" => {
                let size: u64 = value
                    .parse()
                    .map_err(|_| replies::bad_arguments("SIZE needs a number"))?;
                if size > max_size {
                    return Err(replies::message_too_big(max_size));
                }
                mail.declared_size = Some(size);
            }
            "BODY" => match value.to_ascii_uppercase().as_str() {
                "7BIT" => mail.body_8bit = false,
                "8BITMIME" => mail.body_8bit = true,
                _ => {
                    return Err(Reply::new(
                        555,
                        "5.5.4",
                        format!("BODY={value} not supported"),
                    ));
                }
            },
            "SMTPUTF8" if value.is_empty() => mail.smtputf8 = true,
            _ => {
                return Err(Reply::new(
                    555,
                    "5.5.4",
                    format!("Parameter {key} not supported"),
                ));
            }
        }
    }
    Ok(mail)
}

/// Outcome of parsing `RCPT TO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptTo {
    /// A plain `local@domain`: `address` lowercased, still to be looked up; `as_sent` in the
    /// client's case, which the event reports as its `recipient`.
    Mailbox { address: String, as_sent: String },
    /// Routing syntax this server never relays for (`%`, `!`, quoted local parts, source
    /// routes, no domain).
    RelayAttempt(String),
}

/// Parses `RCPT TO:<address> [params]`.
///
/// # Errors
/// The reply to send for syntax errors (501) or unknown parameters (555).
pub fn parse_rcpt_to(line: &[u8]) -> Result<RcptTo, Reply> {
    let text = command_text(line)?;
    let rest = strip_prefix_ci(text, "RCPT TO:")
        .ok_or_else(|| replies::bad_arguments("expected RCPT TO:<address>"))?;
    let (path, params) = split_path(rest)?;
    if path.is_empty() {
        return Err(replies::bad_arguments("empty recipient"));
    }
    if let Some(param) = params.split_ascii_whitespace().next() {
        return Err(Reply::new(
            555,
            "5.5.4",
            format!("Parameter {param} not supported"),
        ));
    }
    Ok(match crate::model::normalize_address(path) {
        Some(address) if !path.starts_with('@') => RcptTo::Mailbox {
            address,
            as_sent: path.trim().to_owned(),
        },
        _ => RcptTo::RelayAttempt(path.to_owned()),
    })
}

fn command_text(line: &[u8]) -> Result<&str, Reply> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    std::str::from_utf8(line).map_err(|_| replies::bad_arguments("command is not valid UTF-8"))
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Splits `<path> params` (tolerating spaces after the colon and a missing bracket pair, as
/// many real clients send) into the path and the parameter text.
fn split_path(rest: &str) -> Result<(&str, &str), Reply> {
    let rest = rest.trim_start();
    if let Some(inner) = rest.strip_prefix('<') {
        let end =
            find_path_end(inner).ok_or_else(|| replies::bad_arguments("missing closing `>`"))?;
        Ok((&inner[..end], inner[end + 1..].trim()))
    } else {
        let mut parts = rest.splitn(2, ' ');
        let path = parts.next().unwrap_or_default();
        if path.contains('>') {
            return Err(replies::bad_arguments("unbalanced `>`"));
        }
        Ok((path, parts.next().unwrap_or_default().trim()))
    }
}

/// The `>` that closes a path, skipping over a quoted local part.
fn find_path_end(inner: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (idx, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(idx),
            _ => {}
        }
    }
    None
}

fn strip_source_route(path: &str) -> &str {
    if path.starts_with('@') {
        path.split_once(':').map_or(path, |(_, address)| address)
    } else {
        path
    }
}

/// Loose check for reverse paths: something@something without spaces or controls. Senders
/// are not routed to, so this only keeps garbage out of the envelope.
fn looks_like_mailbox(address: &str) -> bool {
    address.len() <= 320
        && address
            .rsplit_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !address
            .chars()
            .any(|c| c.is_control() || c == ' ' || c == '<' || c == '>')
}

/// Why a DATA transfer ended without a message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataRejection {
    TooBig { limit: u64 },
    HeaderTooBig { limit: usize },
    LineTooLong { limit: usize },
    BareCarriageReturn,
}

impl DataRejection {
    pub fn reply(&self) -> Reply {
        match self {
            Self::TooBig { limit } => replies::message_too_big(*limit),
            Self::HeaderTooBig { limit } => Reply::new(
                552,
                "5.3.4",
                format!("Message header section exceeds fixed limit of {limit} octets"),
            ),
            Self::LineTooLong { limit } => Reply::new(
                554,
                "5.6.0",
                format!("Message has a line longer than {limit} octets"),
            ),
            Self::BareCarriageReturn => Reply::new(
                554,
                "5.6.0",
                "Message contains a bare <CR> not followed by <LF> (RFC 5321 §2.3.8)",
            ),
        }
    }
}

/// Receives the lines of one DATA transfer.
///
/// End of data is only `.<CRLF>` directly after a CRLF-terminated line (RFC 5321 §4.1.1.4).
/// A line ended by a bare LF is stored with CRLF (as Postfix's `normalize` does), and the line
/// after it can never end the data, so `<LF>.<CRLF>` and `<LF>.<LF>` cannot smuggle a second
/// message. A bare CR inside a line rejects the message: a downstream MTA could read it as a
/// line break. A header section (everything before the first empty line) over `max_header`
/// rejects the message too, after it has been read to its end like an oversize one: the stored
/// `.eml` is exactly what was received, so it cannot be trimmed, and a header bomb would
/// otherwise cost the parser and every event consumer many times its size.
#[derive(Debug)]
pub struct DataReceiver {
    message: Vec<u8>,
    max_size: u64,
    max_line: usize,
    max_header: usize,
    /// Bytes of the header section so far; `None` once its empty line has passed.
    header_bytes: Option<usize>,
    previous_ended_crlf: bool,
    rejection: Option<DataRejection>,
}

/// One line of input as the session read it.
pub enum DataLine<'a> {
    /// A complete line including its LF terminator.
    Complete(&'a [u8]),
    /// A line longer than the limit, already discarded by the reader; `ended_crlf` tells how
    /// it ended.
    TooLong { ended_crlf: bool },
}

impl DataReceiver {
    pub fn new(max_size: u64, max_line: usize, max_header: usize) -> Self {
        Self {
            message: Vec::with_capacity(16 * 1024),
            max_size,
            max_line,
            max_header,
            header_bytes: Some(0),
            previous_ended_crlf: true,
            rejection: None,
        }
    }

    /// Feeds one line; returns `true` when it was the end-of-data marker.
    pub fn push(&mut self, line: DataLine<'_>) -> bool {
        let line = match line {
            DataLine::Complete(line) => line,
            DataLine::TooLong { ended_crlf } => {
                // A line that alone outgrows the message limit is reported as the size
                // problem it is.
                let rejection = if self.max_line as u64 >= self.max_size {
                    DataRejection::TooBig {
                        limit: self.max_size,
                    }
                } else {
                    DataRejection::LineTooLong {
                        limit: self.max_line,
                    }
                };
                self.reject(rejection);
                self.previous_ended_crlf = ended_crlf;
                return false;
            }
        };
        let ended_crlf = line.ends_with(b"\r\n");
        if self.previous_ended_crlf && line == b".\r\n" {
            return true;
        }
        let content = if ended_crlf {
            &line[..line.len() - 2]
        } else {
            line.strip_suffix(b"\n").unwrap_or(line)
        };
        // RFC 5321 §4.5.2: a leading dot was added by the client; only at a real line start.
        let content = match content.strip_prefix(b".") {
            Some(rest) if self.previous_ended_crlf => rest,
            _ => content,
        };
        if content.contains(&b'\r') {
            self.reject(DataRejection::BareCarriageReturn);
        }
        self.previous_ended_crlf = ended_crlf;
        if let Some(header_bytes) = self.header_bytes {
            self.header_bytes = (!content.is_empty()).then(|| header_bytes + content.len() + 2);
            if self
                .header_bytes
                .is_some_and(|bytes| bytes > self.max_header)
            {
                self.reject(DataRejection::HeaderTooBig {
                    limit: self.max_header,
                });
                self.message = Vec::new();
            }
        }
        if self.rejection.is_some() {
            return false;
        }
        let new_len = self.message.len() as u64 + content.len() as u64 + 2;
        if new_len > self.max_size {
            self.reject(DataRejection::TooBig {
                limit: self.max_size,
            });
            self.message = Vec::new();
            return false;
        }
        self.message.extend_from_slice(content);
        self.message.extend_from_slice(b"\r\n");
        false
    }

    fn reject(&mut self, rejection: DataRejection) {
        if self.rejection.is_none() {
            self.rejection = Some(rejection);
        }
    }

    /// The message bytes, or why there are none.
    ///
    /// # Errors
    /// The [`DataRejection`] recorded while receiving.
    pub fn finish(self) -> Result<Vec<u8>, DataRejection> {
        match self.rejection {
            Some(rejection) => Err(rejection),
            None => Ok(self.message),
        }
    }
}

/// The minimum transfer rate in DATA, as Postfix's `smtpd_min_data_rate`: the transfer starts
/// with `budget` (the idle timeout) to spend, each byte received earns `1/min_rate` seconds, and
/// the credit never exceeds `budget` ahead of now. A client below the rate runs out after about
/// `budget / (1 - rate / min_rate)`; one sending one line per idle timeout is cut after a few
/// lines instead of holding its slot until the session deadline. A small message on a slow link
/// is fine as long as it arrives within `budget`.
#[derive(Debug, Clone, Copy)]
pub struct TransferDeadline {
    deadline: Instant,
    budget: Duration,
    min_rate: u64,
}

impl TransferDeadline {
    pub fn new(now: Instant, budget: Duration, min_rate: u64) -> Self {
        Self {
            deadline: now.checked_add(budget).unwrap_or(now),
            budget,
            min_rate: min_rate.max(1),
        }
    }

    /// When the transfer is too slow unless more bytes have come by then.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn min_rate(&self) -> u64 {
        self.min_rate
    }

    /// Credits `bytes` received at `now`.
    pub fn received(&mut self, now: Instant, bytes: usize) {
        let earned =
            Duration::try_from_secs_f64(bytes as f64 / self.min_rate as f64).unwrap_or(self.budget);
        let cap = now.checked_add(self.budget).unwrap_or(self.deadline);
        self.deadline = self.deadline.checked_add(earned).unwrap_or(cap).min(cap);
    }
}

#[cfg(test)]
mod tests;
