//! One SMTP session over any byte stream: reads lines under the configured limits and timeouts,
//! lets the `mailin` engine sequence the commands, answers RCPT from the directory, receives DATA
//! itself and hands the message to intake.
//!
//! The engine owns command order (HELO before MAIL, RCPT before DATA, RSET). This module owns what
//! the engine cannot do: the null sender and ESMTP parameters (parsed here, then passed to the
//! engine in a form it accepts), enhanced status codes, DATA with size and smuggling rules, and the
//! asynchronous steps (intake) whose answers the engine's synchronous handler merely relays.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::reader::SessionReader;
use mailin::{Action, Handler, Response};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::proto::{self, DataLine, DataReceiver, RcptTo, Reply, replies};
use crate::config::SmtpConfig;
use crate::counters::{Counters, Rejection};
use crate::db::AutoCreate;
use crate::directory::{Directory, NewAutoInbox, Resolved};
use crate::intake::{Intake, Outcome};
use crate::model::{Envelope, Recipient};

/// What every session of one listener shares.
pub struct SessionContext {
    pub config: SmtpConfig,
    pub directory: Directory,
    pub intake: Arc<Intake>,
    /// Present when `smtp.tls_cert`/`smtp.tls_key` are set: STARTTLS is offered.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub counters: Arc<Counters>,
}

/// Stands in for the placeholder reverse path handed to the engine for `MAIL FROM:<>`, which its
/// parser cannot read; the real (null) path lives in our envelope.
const NULL_SENDER_PLACEHOLDER: &str = "null-sender@invalid";

/// The engine's view of our decisions. The engine calls the handler synchronously inside
/// `process`, so the session decides first (possibly asynchronously) and leaves the answer here.
#[derive(Clone, Default)]
struct EngineHandler {
    rcpt_decision: Arc<Mutex<Option<Reply>>>,
}

impl Handler for EngineHandler {
    fn rcpt(&mut self, _to: &str) -> Response {
        let decision = self
            .rcpt_decision
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match decision {
            Some(reply) if !reply.is_error() => mailin::response::OK,
            Some(reply) => Response::custom(reply.code, String::new()),
            None => mailin::response::NO_MAILBOX,
        }
    }
}

pub(crate) enum LineRead {
    Line,
    TooLong { ended_crlf: bool },
    Eof,
}

/// Why the session loop stopped reading.
enum Stop {
    Quit,
    Closed,
    StartTls,
}

/// How one (plaintext or TLS) leg of a connection ended.
enum Ending {
    Closed,
    /// `220` to STARTTLS was sent; the caller performs the handshake.
    StartTls,
}

/// Bytes each session buffers from its socket between messages: twice the default longest
/// command line (a longer line is read in pieces), and held by every idle session.
const READ_BUFFER: usize = 1024;
/// Bytes buffered while a message streams in: a typical message in a few reads.
const DATA_READ_BUFFER: usize = 16 * 1024;

struct Session<'a, R, W> {
    ctx: &'a SessionContext,
    reader: R,
    writer: W,
    out: Vec<u8>,
    line: Vec<u8>,
    engine: mailin::Session<EngineHandler>,
    handler: EngineHandler,
    envelope: Envelope,
    errors: usize,
    deadline: Instant,
    shutdown: CancellationToken,
    /// True after STARTTLS: not offered again.
    secured: bool,
}

/// Runs one session to its end. Errors of the connection itself (reset, broken pipe) end the
/// session quietly; nothing is accepted without a 250 having been written.
pub async fn run<S>(stream: S, peer: SocketAddr, ctx: &SessionContext, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = Instant::now() + ctx.config.session_timeout();
    let (read_half, write_half) = tokio::io::split(stream);
    let mut session = Session::new(ctx, peer, read_half, write_half, deadline, shutdown.clone());
    match session.serve(true).await {
        Ok(Ending::Closed) => return,
        Ok(Ending::StartTls) => {}
        Err(err) => {
            tracing::debug!(error = %err, "session ended by connection error");
            return;
        }
    }
    // Boxed: only sessions that upgrade carry the TLS half's state (the handshake, the TLS
    // stream, a second session); an idle plaintext session's future stays small.
    Box::pin(continue_in_tls(session, peer, ctx, deadline, shutdown)).await;
}

/// The rest of a session after `STARTTLS`: the handshake, then a fresh session inside TLS.
async fn continue_in_tls<S>(
    session: Session<'_, SessionReader<tokio::io::ReadHalf<S>>, tokio::io::WriteHalf<S>>,
    peer: SocketAddr,
    ctx: &SessionContext,
    deadline: Instant,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(acceptor) = ctx.tls.clone() else {
        return;
    };
    let Session {
        reader,
        writer,
        errors,
        ..
    } = session;
    // RFC 3207 §4.2: commands the client pipelined behind STARTTLS came in plaintext and must
    // not be acted on over TLS (the CVE-2011-0411 injection); they go with the read buffer.
    let stream = reader.into_inner().unsplit(writer);
    let handshake_deadline = Instant::now() + ctx.config.idle_timeout();
    let stream =
        match tokio::time::timeout_at(handshake_deadline.min(deadline), acceptor.accept(stream))
            .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return;
            }
        };
    let tls = tls_facts(stream.get_ref().1);
    let (read_half, write_half) = tokio::io::split(stream);
    // RFC 3207 §4.2: the server forgets everything from before the handshake; the client
    // starts again with EHLO.
    let mut session = Session::new(ctx, peer, read_half, write_half, deadline, shutdown);
    session.secured = true;
    session.envelope.tls = tls;
    session.errors = errors;
    if let Err(err) = session.serve(false).await {
        tracing::debug!(error = %err, "session ended by connection error");
    }
}

/// The version and cipher suite a finished handshake agreed on, named as Postfix's Received
/// header and OpenSSL name them (`TLSv1.3`, IANA suite names).
fn tls_facts(connection: &rustls::ServerConnection) -> Option<crate::model::TlsFacts> {
    let version = match connection.protocol_version()? {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_owned(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_owned(),
        other => format!("{other:?}"),
    };
    let suite = connection.negotiated_cipher_suite()?.suite();
    let name = suite.as_str().unwrap_or("unknown");
    // rustls prefixes the TLS 1.3 suites with `TLS13_`; their IANA names start with `TLS_`.
    let cipher = name
        .strip_prefix("TLS13_")
        .map_or_else(|| name.to_owned(), |rest| format!("TLS_{rest}"));
    Some(crate::model::TlsFacts { version, cipher })
}

impl<'a, R, W> Session<'a, SessionReader<R>, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    fn new(
        ctx: &'a SessionContext,
        peer: SocketAddr,
        read_half: R,
        writer: W,
        deadline: Instant,
        shutdown: CancellationToken,
    ) -> Self {
        let handler = EngineHandler::default();
        let engine = mailin::SessionBuilder::new(ctx.config.hostname.clone())
            .build(peer.ip(), handler.clone());
        Session {
            ctx,
            // Small on purpose: every idle session holds this buffer; DATA gets a larger one
            // while it lasts (`handle_data`).
            reader: SessionReader::with_capacity(READ_BUFFER, read_half),
            writer,
            // Grown on use: an idle session holds only what its longest line needed.
            out: Vec::new(),
            line: Vec::new(),
            engine,
            handler,
            envelope: Envelope {
                remote_ip: Some(peer.ip()),
                ..Envelope::default()
            },
            errors: 0,
            deadline,
            shutdown,
            secured: false,
        }
    }
}

impl<R, W> Session<'_, SessionReader<R>, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Serves commands until the connection ends or STARTTLS hands it to the caller. `greet`
    /// is false for the TLS leg, which RFC 3207 starts without a new greeting.
    async fn serve(&mut self, greet: bool) -> std::io::Result<Ending> {
        if greet {
            if self.talks_before_greeting().await? {
                self.queue(&replies::early_talker());
                self.flush().await?;
                self.writer.shutdown().await?;
                return Ok(Ending::Closed);
            }
            self.queue(&Reply::plain(
                220,
                format!("{} ESMTP mxhook", self.ctx.config.hostname),
            ));
            self.flush().await?;
        }
        loop {
            let shutdown = self.shutdown.clone();
            let limit = self.ctx.config.max_command_line;
            let read = tokio::select! {
                biased;
                () = shutdown.cancelled() => None,
                read = self.read_line_timed(limit, None) => Some(read?),
            };
            let read = match read {
                None => {
                    self.queue(&replies::shutting_down());
                    break;
                }
                Some(None) => break,
                Some(Some(read)) => read,
            };
            match read {
                LineRead::Eof => return Ok(Ending::Closed),
                LineRead::TooLong { .. } => {
                    self.queue_error(&replies::line_too_long(self.ctx.config.max_command_line));
                }
                // Boxed: a command's future (DATA's above all) is larger than the rest of the
                // session's, and every idle session would hold room for it between commands.
                LineRead::Line => match Box::pin(self.handle_command()).await? {
                    Some(Stop::Quit) => break,
                    Some(Stop::Closed) => return Ok(Ending::Closed),
                    Some(Stop::StartTls) => {
                        self.flush().await?;
                        return Ok(Ending::StartTls);
                    }
                    None => {}
                },
            }
            if self.errors >= self.ctx.config.max_errors {
                self.queue(&replies::too_many_errors());
                break;
            }
            // RFC 2920: answers to pipelined commands may wait until the client has to wait.
            if self.reader.buffer().is_empty() {
                self.flush().await?;
            }
        }
        self.flush().await?;
        self.writer.shutdown().await?;
        Ok(Ending::Closed)
    }

    /// Waits `smtp.greet_pause_s` for input that no well-behaved client sends before the 220.
    async fn talks_before_greeting(&mut self) -> std::io::Result<bool> {
        let pause = self.ctx.config.greet_pause();
        if pause.is_zero() {
            return Ok(false);
        }
        match tokio::time::timeout(pause, self.reader.fill_buf()).await {
            // A client that connects and hangs up at once has not talked; the next read sees EOF.
            Ok(read) => Ok(!read?.is_empty()),
            Err(_) => Ok(false),
        }
    }

    /// Reads a line, bounded by the session deadline and either the idle timeout (a command:
    /// the whole line must come within it, so trickling does not extend it) or, in DATA, the
    /// minimum transfer rate. `None` means a timeout reply was queued and the session must end.
    async fn read_line_timed(
        &mut self,
        limit: usize,
        mut rate: Option<&mut proto::TransferDeadline>,
    ) -> std::io::Result<Option<LineRead>> {
        let fixed = if rate.is_some() {
            self.deadline
        } else {
            let idle = Instant::now() + self.ctx.config.idle_timeout();
            idle.min(self.deadline)
        };
        let read = read_line(
            &mut self.reader,
            &mut self.line,
            limit,
            fixed,
            rate.as_deref_mut(),
        )
        .await?;
        if read.is_none() {
            let reply = match rate {
                _ if Instant::now() >= self.deadline => replies::session_timeout(),
                Some(rate) => {
                    tracing::info!(min_rate = rate.min_rate(), "DATA too slow, closing");
                    replies::data_too_slow(rate.min_rate())
                }
                None => replies::idle_timeout(),
            };
            self.queue(&reply);
        }
        Ok(read)
    }

    async fn handle_command(&mut self) -> std::io::Result<Option<Stop>> {
        if let Some(word) = proto::foreign_command(&self.line) {
            tracing::info!(word, "client speaks another protocol, closing");
            self.ctx.counters.reject(Rejection::Malformed);
            self.queue(&replies::foreign_protocol(&word));
            return Ok(Some(Stop::Quit));
        }
        if proto::has_control_bytes(&self.line) {
            self.queue_error(&replies::control_characters());
            return Ok(None);
        }
        let verb = proto::verb(&self.line);
        match verb.as_str() {
            "EHLO" | "HELO" => self.handle_hello(&verb),
            "MAIL" => self.handle_mail(),
            "RCPT" => self.handle_rcpt().await,
            "DATA" => return self.handle_data().await,
            "RSET" => {
                let response = self.engine.process(b"RSET\r\n");
                if response.code == 250 {
                    self.reset_transaction();
                }
                self.queue_engine(&response, None);
            }
            "QUIT" => {
                self.queue(&Reply::new(
                    221,
                    "2.0.0",
                    format!("{} closing connection", self.ctx.config.hostname),
                ));
                return Ok(Some(Stop::Quit));
            }
            "STARTTLS" if self.ctx.tls.is_some() => return Ok(self.handle_starttls()),
            "STARTTLS" | "AUTH" | "BDAT" | "ETRN" | "TURN" | "EXPN" => {
                self.queue_error(&replies::not_implemented(&verb));
            }
            _ => {
                let line = normalized_line(&self.line);
                let response = self.engine.process(&line);
                self.queue_engine(&response, None);
                if response.action == Action::Close {
                    return Ok(Some(Stop::Quit));
                }
            }
        }
        Ok(None)
    }

    fn handle_starttls(&mut self) -> Option<Stop> {
        if self.secured {
            self.queue_error(&Reply::new(503, "5.5.1", "TLS already active"));
            return None;
        }
        if normalized_line(&self.line).len() != "STARTTLS\r\n".len() {
            self.queue_error(&replies::bad_arguments("STARTTLS takes no parameters"));
            return None;
        }
        self.queue(&Reply::new(220, "2.0.0", "Ready to start TLS"));
        Some(Stop::StartTls)
    }

    fn handle_hello(&mut self, verb: &str) {
        let line = normalized_line(&self.line);
        let response = self.engine.process(&line);
        if response.code != 250 {
            let reply = if response.code == 500 {
                replies::bad_arguments("HELO/EHLO needs a domain or address literal")
            } else {
                proto::enhance_engine_reply(response.code)
            };
            self.queue_error(&reply);
            return;
        }
        let domain = String::from_utf8_lossy(&line[verb.len()..])
            .trim()
            .to_owned();
        self.reset_transaction();
        self.envelope.helo = domain.clone();
        let hostname = &self.ctx.config.hostname;
        let reply = if verb == "EHLO" {
            Reply::multiline(
                250,
                vec![
                    format!("{hostname} greets {domain}"),
                    format!("SIZE {}", self.ctx.config.max_message_size),
                    "PIPELINING".to_owned(),
                    "8BITMIME".to_owned(),
                    "SMTPUTF8".to_owned(),
                    "ENHANCEDSTATUSCODES".to_owned(),
                ]
                .into_iter()
                .chain((self.ctx.tls.is_some() && !self.secured).then(|| "STARTTLS".to_owned()))
                .collect(),
            )
        } else {
            Reply::plain(250, hostname.clone())
        };
        self.queue(&reply);
    }

    fn handle_mail(&mut self) {
        let mail = match proto::parse_mail_from(&self.line, self.ctx.config.max_message_size) {
            Ok(mail) => mail,
            Err(reply) => {
                self.queue_error(&reply);
                return;
            }
        };
        let engine_path = mail
            .reverse_path
            .as_deref()
            .filter(|path| !path.contains(|c: char| c.is_whitespace() || c == '<' || c == '>'))
            .unwrap_or(NULL_SENDER_PLACEHOLDER);
        let body = if mail.body_8bit { " BODY=8BITMIME" } else { "" };
        let response = self
            .engine
            .process(format!("MAIL FROM:<{engine_path}>{body}\r\n").as_bytes());
        if response.code == 250 {
            self.envelope.mail_from = mail.reverse_path;
            self.envelope.smtputf8 = mail.smtputf8;
            self.envelope.recipients.clear();
            self.queue(&Reply::new(250, "2.1.0", "Sender OK"));
        } else {
            self.queue_engine(&response, None);
        }
    }

    async fn handle_rcpt(&mut self) {
        let decision = match proto::parse_rcpt_to(&self.line) {
            Err(reply) => {
                self.queue_error(&reply);
                return;
            }
            Ok(_) if self.envelope.recipients.len() >= self.ctx.config.max_recipients => {
                Reply::new(452, "4.5.3", "Too many recipients")
            }
            Ok(RcptTo::RelayAttempt(path)) => {
                self.ctx.counters.reject(Rejection::RelayDenied);
                Reply::new(550, "5.7.1", format!("<{path}>: relay access denied"))
            }
            Ok(RcptTo::Mailbox { address, as_sent }) => match self.inbox_for(&address).await {
                Ok(inbox_id) => {
                    *self
                        .handler
                        .rcpt_decision
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(Reply::new(250, "2.1.5", "Recipient OK"));
                    let response = self
                        .engine
                        .process(format!("RCPT TO:<{address}>\r\n").as_bytes());
                    if response.code == 250 {
                        self.envelope.recipients.push(Recipient {
                            address,
                            as_sent,
                            inbox_id,
                        });
                        self.queue(&Reply::new(250, "2.1.5", "Recipient OK"));
                    } else {
                        self.queue_engine(&response, None);
                    }
                    return;
                }
                Err(refusal) => refusal,
            },
        };
        // A refusal still goes through the engine so that RCPT before MAIL gets its 503.
        *self
            .handler
            .rcpt_decision
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(decision.clone());
        let response = self.engine.process(b"RCPT TO:<refused@invalid>\r\n");
        self.queue_engine(&response, Some(&decision));
    }

    /// The inbox an RCPT address reaches (see [`crate::directory::Directory::resolve`]), or
    /// the refusal: `550 5.1.1` for nobody, `451 4.7.1` at the hard rate limit.
    async fn inbox_for(&self, address: &str) -> Result<String, Reply> {
        let inbox_id = match self.ctx.directory.resolve(address) {
            Resolved::Inbox(inbox_id) => inbox_id,
            Resolved::Create(new) => return self.auto_create(address, &new).await,
            Resolved::Unknown => return Err(self.unknown_recipient(address)),
        };
        if self
            .ctx
            .directory
            .sender_policy(&inbox_id)
            .is_some_and(|policy| policy.require_tls)
        {
            self.plaintext_refused()?;
        }
        if self
            .ctx
            .intake
            .over_hard_limit(&self.envelope, &inbox_id)
            .await
        {
            return Err(self.rate_limited());
        }
        Ok(inbox_id)
    }

    /// `530 5.7.0` for an inbox that takes mail only over TLS, in a session without it.
    fn plaintext_refused(&self) -> Result<(), Reply> {
        if self.envelope.tls.is_some() {
            return Ok(());
        }
        self.ctx.counters.reject(Rejection::Policy);
        Err(Reply::new(
            530,
            "5.7.0",
            "Must issue a STARTTLS command first: this recipient takes mail only over TLS",
        ))
    }

    fn rate_limited(&self) -> Reply {
        self.ctx.counters.reject(Rejection::RateLimited);
        Reply::new(451, "4.7.1", "Rate limit reached, try again later")
    }

    fn unknown_recipient(&self, address: &str) -> Reply {
        self.ctx.counters.reject(Rejection::UnknownRecipient);
        Reply::new(550, "5.1.1", format!("<{address}>: recipient not found"))
    }

    /// Makes the inbox a domain auto-creates for a new local part, unless the mail would be
    /// refused anyway: nothing is created for a bounce (there is no sender to have asked for
    /// the address), a sender at its hard rate limit, or a sender the template's policy blocks
    /// with `policy_action = "reject"` (checked on the envelope sender; the rest of the policy
    /// needs the message and applies at DATA as for any inbox).
    async fn auto_create(&self, address: &str, new: &NewAutoInbox) -> Result<String, Reply> {
        let Some(sender) = self.envelope.mail_from.as_deref() else {
            return Err(self.unknown_recipient(address));
        };
        if self
            .ctx
            .intake
            .over_hard_limit(&self.envelope, new.id())
            .await
        {
            return Err(self.rate_limited());
        }
        let policy = new.inbox.sender_policy();
        if policy.require_tls {
            self.plaintext_refused()?;
        }
        if policy.policy_action == crate::model::PolicyAction::Reject
            && crate::verify::trust::sender_listed(&policy.block_senders, sender)
        {
            self.ctx.counters.reject(Rejection::Policy);
            return Err(Reply::new(550, "5.7.1", "Sender refused by policy"));
        }
        let inbox_id = match self.ctx.directory.create(new).await {
            Ok(AutoCreate::Created) => {
                tracing::info!(inbox_id = new.id(), domain = %new.domain, "inbox created on first mail");
                new.id().to_owned()
            }
            Ok(AutoCreate::Exists(owner)) => owner,
            Ok(AutoCreate::IdTaken) => return Err(self.unknown_recipient(address)),
            Ok(AutoCreate::CapReached) => {
                tracing::warn!(domain = %new.domain, "domain is at max_auto_inboxes; new local part refused");
                self.ctx.counters.reject(Rejection::TempFailure);
                return Err(Reply::new(
                    452,
                    "4.2.2",
                    format!("<{address}>: the domain has no room for new inboxes"),
                ));
            }
            Ok(AutoCreate::RateLimited) => {
                self.ctx.counters.reject(Rejection::RateLimited);
                return Err(Reply::new(
                    451,
                    "4.7.1",
                    "Too many new inboxes for this domain, try again later",
                ));
            }
            Err(err) => {
                tracing::warn!(error = %err, domain = %new.domain, "creating an inbox on first mail failed");
                self.ctx.counters.reject(Rejection::TempFailure);
                return Err(replies::temp_failure());
            }
        };
        // The address may be a disabled inbox's: the directory holds only enabled ones.
        if self.ctx.directory.inbox(&inbox_id).is_none() {
            return Err(self.unknown_recipient(address));
        }
        Ok(inbox_id)
    }

    async fn handle_data(&mut self) -> std::io::Result<Option<Stop>> {
        let response = self.engine.process(b"DATA\r\n");
        if response.code != 354 {
            self.queue_engine(&response, None);
            return Ok(None);
        }
        self.queue(&proto::enhance_engine_reply(354));
        self.flush().await?;
        self.reader.set_capacity(DATA_READ_BUFFER);

        let config = &self.ctx.config;
        let mut receiver = DataReceiver::new(
            config.max_message_size,
            config.max_text_line,
            config.max_header_bytes,
        );
        let mut rate = proto::TransferDeadline::new(
            Instant::now().into_std(),
            config.idle_timeout(),
            config.min_data_rate,
        );
        loop {
            let Some(read) = self
                .read_line_timed(config.max_text_line, Some(&mut rate))
                .await?
            else {
                // Timed out mid-DATA: nothing is kept, the 421 is queued.
                self.flush().await?;
                return Ok(Some(Stop::Closed));
            };
            let ended = match read {
                LineRead::Eof => return Ok(Some(Stop::Closed)),
                LineRead::TooLong { ended_crlf } => receiver.push(DataLine::TooLong { ended_crlf }),
                LineRead::Line => receiver.push(DataLine::Complete(&self.line)),
            };
            if ended {
                break;
            }
        }
        self.reader.set_capacity(READ_BUFFER);
        // The engine only learns that the transaction is over; the reply is intake's.
        let _ = self.engine.process(b".\r\n");
        let reply = match receiver.finish() {
            Err(rejection) => {
                self.ctx.counters.reject(match rejection {
                    proto::DataRejection::TooBig { .. }
                    | proto::DataRejection::HeaderTooBig { .. } => Rejection::TooBig,
                    _ => Rejection::Malformed,
                });
                rejection.reply()
            }
            Ok(message) => {
                // Boxed: the intake's state lives on the heap only while a message is being
                // accepted, instead of in every idle session's future.
                let intake_started = std::time::Instant::now();
                let outcome = Box::pin(self.ctx.intake.accept(&self.envelope, &message)).await;
                self.ctx.counters.observe_intake(intake_started.elapsed());
                match &outcome {
                    Outcome::TempFail { .. } => self.ctx.counters.reject(Rejection::TempFailure),
                    Outcome::Reject { .. } => self.ctx.counters.reject(Rejection::Policy),
                    Outcome::Accepted { .. } => {}
                }
                reply_for(outcome)
            }
        };
        if reply.is_error() {
            self.errors += 1;
        }
        self.queue(&reply);
        self.reset_transaction();
        Ok(None)
    }

    fn reset_transaction(&mut self) {
        self.envelope.mail_from = None;
        self.envelope.recipients.clear();
        self.envelope.smtputf8 = false;
    }

    /// Queues the engine's answer, using `ours` when the engine relayed our decision.
    fn queue_engine(&mut self, response: &Response, ours: Option<&Reply>) {
        let reply = match ours {
            Some(reply) if reply.code == response.code => reply.clone(),
            _ => proto::enhance_engine_reply(response.code),
        };
        if reply.is_error() {
            self.errors += 1;
        }
        self.queue(&reply);
    }

    fn queue_error(&mut self, reply: &Reply) {
        self.errors += 1;
        self.queue(reply);
    }

    fn queue(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.writer.write_all(&self.out).await?;
            self.writer.flush().await?;
            self.out.clear();
        }
        Ok(())
    }
}

/// The one mapping from intake outcomes to SMTP replies.
fn reply_for(outcome: Outcome) -> Reply {
    match outcome {
        Outcome::Accepted { message_ids } => Reply::new(
            250,
            "2.0.0",
            format!("OK queued as {}", message_ids.join(",")),
        ),
        Outcome::TempFail { reason } => {
            tracing::warn!(reason, "message not accepted, sender asked to retry");
            replies::temp_failure()
        }
        Outcome::Reject { reason } => {
            Reply::new(550, "5.7.1", format!("Message refused by policy: {reason}"))
        }
    }
}

/// The command line with a CRLF ending whatever the client sent, as the engine expects.
fn normalized_line(line: &[u8]) -> Vec<u8> {
    let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
    let trimmed = trimmed.trim_ascii_end();
    let mut out = Vec::with_capacity(trimmed.len() + 2);
    out.extend_from_slice(trimmed);
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads through the next LF into `out`, keeping at most `limit` bytes; a longer line is
/// consumed and reported as `TooLong` without being kept, so memory stays bounded. `None` when
/// `until` (or the rate's deadline, moved on by every chunk received) passes first.
pub(crate) async fn read_line<R>(
    reader: &mut R,
    out: &mut Vec<u8>,
    limit: usize,
    until: Instant,
    mut rate: Option<&mut proto::TransferDeadline>,
) -> std::io::Result<Option<LineRead>>
where
    R: AsyncBufRead + Unpin,
{
    out.clear();
    let mut too_long = false;
    let mut last_two = [0u8; 2];
    loop {
        let until = rate
            .as_deref()
            .map_or(until, |rate| until.min(Instant::from_std(rate.deadline())));
        let Ok(available) = tokio::time::timeout_at(until, reader.fill_buf()).await else {
            return Ok(None);
        };
        let available = available?;
        if available.is_empty() {
            // EOF, possibly mid-line: a partial command or DATA line is never acted on.
            return Ok(Some(LineRead::Eof));
        }
        let (chunk, complete) = match available.iter().position(|b| *b == b'\n') {
            Some(idx) => (&available[..=idx], true),
            None => (available, false),
        };
        if !too_long && out.len() + chunk.len() > limit {
            too_long = true;
            out.clear();
        }
        if too_long {
            match chunk {
                [.., a, b] => last_two = [*a, *b],
                [b] => last_two = [last_two[1], *b],
                [] => {}
            }
        } else {
            out.extend_from_slice(chunk);
        }
        let consumed = chunk.len();
        reader.consume(consumed);
        if let Some(rate) = rate.as_deref_mut() {
            rate.received(Instant::now().into_std(), consumed);
        }
        if complete {
            return Ok(Some(if too_long {
                LineRead::TooLong {
                    ended_crlf: last_two == *b"\r\n",
                }
            } else {
                LineRead::Line
            }));
        }
    }
}
