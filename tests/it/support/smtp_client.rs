//! A line-level SMTP client that shows every reply code, for protocol tests where a library
//! client would hide what the server said.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub struct SmtpClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    pub greeting: (u16, String),
}

impl SmtpClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to SMTP");
        Self::over(stream).await
    }

    /// A client on a connection the test opened itself (from a chosen source address, or
    /// after writing a PROXY header); reads the greeting.
    pub async fn over(stream: TcpStream) -> Self {
        let (read, writer) = stream.into_split();
        let mut client = Self {
            reader: BufReader::new(read),
            writer,
            greeting: (0, String::new()),
        };
        client.greeting = client.read_reply().await;
        client
    }

    /// Reads one (possibly multi-line) reply: its code and all its text lines joined by `\n`.
    pub async fn read_reply(&mut self) -> (u16, String) {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(super::SOON, self.reader.read_line(&mut line))
                .await
                .expect("timed out waiting for an SMTP reply")
                .expect("read SMTP reply");
            assert!(
                n > 0,
                "server closed the connection; replies so far: {lines:?}"
            );
            assert!(
                line.ends_with("\r\n"),
                "reply line not CRLF-terminated: {line:?}"
            );
            let code: u16 = line[..3].parse().expect("reply code");
            let last = line.as_bytes()[3] == b' ';
            lines.push(line[4..].trim_end().to_owned());
            if last {
                return (code, lines.join("\n"));
            }
        }
    }

    /// True when the server has closed the connection (after whatever it still had to say).
    pub async fn is_closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(
            tokio::time::timeout(super::SOON, self.reader.read_line(&mut line)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write to SMTP");
    }

    /// Sends one command line and returns the reply.
    pub async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
        self.read_reply().await
    }

    /// Sends a command and asserts the reply code.
    pub async fn expect(&mut self, line: &str, code: u16) -> String {
        let (got, text) = self.cmd(line).await;
        assert_eq!(got, code, "`{line}` answered {got} {text}");
        text
    }

    /// EHLO, MAIL, RCPT(s), DATA with dot-stuffing, and the final reply.
    pub async fn send_message(&mut self, from: &str, to: &[&str], message: &[u8]) -> (u16, String) {
        self.expect("EHLO client.test", 250).await;
        self.expect(&format!("MAIL FROM:<{from}>"), 250).await;
        for rcpt in to {
            self.expect(&format!("RCPT TO:<{rcpt}>"), 250).await;
        }
        self.data(message).await
    }

    /// DATA, the dot-stuffed message, the terminator; returns the final reply.
    pub async fn data(&mut self, message: &[u8]) -> (u16, String) {
        self.expect("DATA", 354).await;
        self.send_raw(&dot_stuff(message)).await;
        self.read_reply().await
    }
}

/// RFC 5321 §4.5.2 transparency plus the terminator, as any MTA sends it.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut at_line_start = true;
    for &byte in message {
        if at_line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        at_line_start = byte == b'\n';
    }
    if !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}
