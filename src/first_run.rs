//! The first run: a gateway started without `http.admin_keys` gets an admin key of its own, kept
//! in `http.admin_key_file` (mode 0600, created once, reused on every later start), and the
//! terminal gets one banner with a dashboard login link and a command that sends a test mail.
//!
//! The banner never holds the key: its link carries a single-use login token that lives only in
//! this process's memory ([`LoginToken`]). Once followed (or after [`LOGIN_TOKEN_LIFETIME`]) the
//! link is dead, so terminal scrollback, browser history and proxy logs keep nothing that logs
//! in. A `#key=` fragment would have kept the key itself in all three, valid for ever.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq as _;

/// How long the banner's login link works if nobody follows it.
pub const LOGIN_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The address of the inbox the embedded defaults create (see [`DEMO_INBOX_ID`]).
pub const DEMO_ADDRESS: &str = "demo@localhost";
/// The id of the webhook-less inbox a gateway on embedded defaults starts with.
pub const DEMO_INBOX_ID: &str = "demo";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config key `http.admin_key_file`: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config key `http.admin_key_file`: {0} is empty; delete it to have a new key made")]
    Empty(PathBuf),
}

/// The admin key of a gateway configured without one.
pub struct AdminKey {
    pub key: String,
    /// Made by this start (so the banner is due), rather than read from an earlier one.
    pub created: bool,
}

/// Reads the key `path` holds, or makes a new one there (0600, its directory created).
///
/// # Errors
/// [`Error`] naming the file when it cannot be read or written, or holds no key.
pub fn admin_key(path: &Path) -> Result<AdminKey, Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let key = format!("mxa_{}", hex::encode(rand::random::<[u8; 32]>()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(format!("{key}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io)?;
            Ok(AdminKey { key, created: true })
        }
        // Made by an earlier start (or a concurrent one): the same key, for ever.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path).map_err(io)?;
            let key = text.trim();
            if key.is_empty() {
                return Err(Error::Empty(path.to_owned()));
            }
            Ok(AdminKey {
                key: key.to_owned(),
                created: false,
            })
        }
        Err(err) => Err(io(err)),
    }
}

/// The single-use token of the banner's login link.
#[derive(Default)]
pub struct LoginToken(Mutex<Option<(String, Instant)>>);

impl LoginToken {
    /// Makes the token (replacing any) and returns it.
    pub fn issue(&self) -> String {
        let token = hex::encode(rand::random::<[u8; 32]>());
        *self.lock() = Some((token.clone(), Instant::now() + LOGIN_TOKEN_LIFETIME));
        token
    }

    /// Whether `presented` is the live token; a match spends it.
    pub fn redeem(&self, presented: &str) -> bool {
        let mut slot = self.lock();
        let valid = slot.as_ref().is_some_and(|(token, expires)| {
            Instant::now() < *expires && bool::from(token.as_bytes().ct_eq(presented.as_bytes()))
        });
        if valid {
            *slot = None;
        }
        valid
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, Instant)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Where a client on this machine reaches a listener: an unspecified bind address
/// (`0.0.0.0`, `::`) is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}

/// What the banner shows.
pub struct Banner<'a> {
    pub http: SocketAddr,
    pub smtp: SocketAddr,
    pub key_file: &'a Path,
    /// The login token, on the start that made the key; later starts print no link that logs in.
    pub login_token: Option<&'a str>,
    /// An address the test mail can go to, when an inbox has one.
    pub test_address: Option<&'a str>,
}

impl Banner<'_> {
    /// The text printed to the terminal (never through the log).
    pub fn render(&self) -> String {
        let http = reachable(self.http);
        let smtp = reachable(self.smtp);
        let mut text = String::from("\n");
        match self.login_token {
            Some(token) => {
                text.push_str(
                    "  mxhook is running. Open the dashboard (this link logs in once):\n\n",
                );
                text.push_str(&format!("    http://{http}/ui/login?token={token}\n\n"));
                text.push_str(&format!(
                    "  The admin key (API and later logins) is in {} (mode 0600).\n",
                    self.key_file.display()
                ));
            }
            None => {
                text.push_str(&format!(
                    "  mxhook is running. Dashboard: http://{http}/ui (log in with the admin key in {}).\n",
                    self.key_file.display()
                ));
            }
        }
        if let Some(address) = self.test_address {
            text.push_str(&format!(
                "\n  Send a test mail to {address}:\n\n    {}\n\n  or, without swaks:\n\n    {}\n",
                swaks_test_mail(smtp, address),
                python_test_mail(smtp, address),
            ));
        }
        text.push('\n');
        text
    }
}

/// One shell line that sends a test mail with swaks.
pub fn swaks_test_mail(smtp: SocketAddr, address: &str) -> String {
    let smtp = reachable(smtp);
    format!(
        "swaks --server {} --port {} --from you@example.com --to {address}",
        smtp.ip(),
        smtp.port()
    )
}

/// One shell line that sends a test mail with Python's standard library.
pub fn python_test_mail(smtp: SocketAddr, address: &str) -> String {
    let smtp = reachable(smtp);
    format!(
        "python3 -c 'import smtplib; smtplib.SMTP(\"{}\", {}).sendmail(\"you@example.com\", [\"{address}\"], \"From: you@example.com\\r\\nTo: {address}\\r\\nSubject: Hello mxhook\\r\\n\\r\\nIt works.\\r\\n\")'",
        smtp.ip(),
        smtp.port(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_with_mode_0600_and_then_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data/admin_key");
        let first = admin_key(&path).expect("made");
        assert!(first.created);
        assert!(first.key.starts_with("mxa_") && first.key.len() > 60);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = admin_key(&path).expect("read");
        assert!(!second.created);
        assert_eq!(second.key, first.key);
    }

    #[test]
    fn an_empty_key_file_is_an_error_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin_key");
        std::fs::write(&path, "\n").expect("write");
        let err = admin_key(&path).err().expect("refused");
        assert!(err.to_string().contains("http.admin_key_file"), "{err}");
    }

    #[test]
    fn a_login_token_works_once() {
        let tokens = LoginToken::default();
        assert!(!tokens.redeem(""));
        let token = tokens.issue();
        assert!(!tokens.redeem("wrong"));
        assert!(tokens.redeem(&token));
        assert!(!tokens.redeem(&token));
    }

    #[test]
    fn the_banner_links_to_loopback_and_holds_no_key() {
        let banner = Banner {
            http: "0.0.0.0:8080".parse().expect("addr"),
            smtp: "0.0.0.0:2525".parse().expect("addr"),
            key_file: Path::new("./data/admin_key"),
            login_token: Some("tok"),
            test_address: Some(DEMO_ADDRESS),
        }
        .render();
        assert!(
            banner.contains("http://127.0.0.1:8080/ui/login?token=tok"),
            "{banner}"
        );
        assert!(banner.contains("--port 2525"), "{banner}");
        assert!(banner.contains("demo@localhost"), "{banner}");
    }
}
