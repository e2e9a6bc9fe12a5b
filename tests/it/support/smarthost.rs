//! An independent SMTP server for the email-forward channel: Python's aiosmtpd on a loopback
//! port, keeping every message it receives, byte for byte, as a file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::eventually;

pub struct Aiosmtpd {
    child: Child,
    pub addr: SocketAddr,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Aiosmtpd {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let maildir = dir.path().join("maildir");
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        // A handler that keeps the DATA bytes exactly as received (aiosmtpd's own Mailbox
        // handler re-serialises them with other line endings).
        let script = r#"
import asyncio, json, os, sys, uuid
from aiosmtpd.controller import Controller
out, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(os.path.join(out, "new"), exist_ok=True)
os.makedirs(os.path.join(out, "env"), exist_ok=True)
class Keep:
    async def handle_DATA(self, server, session, envelope):
        name = uuid.uuid4().hex
        with open(os.path.join(out, "env", name), "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos}, f)
        path = os.path.join(out, "new", name)
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.original_content)
        os.rename(path + ".tmp", path)
        return "250 OK kept"
controller = Controller(Keep(), hostname=host, port=port)
controller.start()
asyncio.get_event_loop().run_forever()
"#;
        let child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&maildir)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("aiosmtpd is installed (scripts/test installs it)");
        eventually("aiosmtpd to listen", || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        Self {
            child,
            addr,
            maildir,
            _dir: dir,
        }
    }

    /// Every message received, byte for byte (a file being written is not yet listed).
    pub fn delivered(&self) -> Vec<Vec<u8>> {
        self.delivered_with_envelopes()
            .into_iter()
            .map(|(message, _)| message)
            .collect()
    }

    /// Each message kept, with its envelope sender (`MAIL FROM`, as aiosmtpd reports it).
    pub fn delivered_with_senders(&self) -> Vec<(String, Vec<u8>)> {
        self.delivered_with_envelopes()
            .into_iter()
            .map(|(message, envelope)| {
                let sender = envelope["mail_from"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                (sender, message)
            })
            .collect()
    }

    /// Every message received with its envelope: `{"mail_from", "rcpt_tos": [...]}`.
    pub fn delivered_with_envelopes(&self) -> Vec<(Vec<u8>, serde_json::Value)> {
        let new = self.maildir.join("new");
        std::fs::read_dir(&new)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|entry| entry.path().extension().is_none())
                    .filter_map(|entry| {
                        let message = std::fs::read(entry.path()).ok()?;
                        let envelope =
                            std::fs::read(self.maildir.join("env").join(entry.file_name()))
                                .ok()
                                .and_then(|text| serde_json::from_slice(&text).ok())
                                .unwrap_or(serde_json::Value::Null);
                        Some((message, envelope))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
