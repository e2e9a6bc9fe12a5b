//! The real `mxhook` binary as a child process on loopback ports, for the tests that kill,
//! stop and restart it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::eventually;

pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

pub struct Process {
    child: Child,
    pub smtp: SocketAddr,
    pub http: SocketAddr,
    /// The lines the process wrote to stderr, when started by [`Process::start_logged`].
    log: Option<Arc<Mutex<Vec<String>>>>,
}

impl Process {
    pub async fn start(
        cwd: &Path,
        config: Option<&Path>,
        smtp: SocketAddr,
        http: SocketAddr,
    ) -> Self {
        Self::start_with_env(cwd, config, smtp, http, &[]).await
    }

    pub async fn start_with_env(
        cwd: &Path,
        config: Option<&Path>,
        smtp: SocketAddr,
        http: SocketAddr,
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(cwd, config, smtp, http, env, false).await
    }

    /// [`Self::start`] with its log (warn and above) kept for [`Self::log_lines`], still
    /// echoed to the test's stderr, and uncoloured so that its lines can be matched.
    pub async fn start_logged(
        cwd: &Path,
        config: Option<&Path>,
        smtp: SocketAddr,
        http: SocketAddr,
    ) -> Self {
        Self::spawn(cwd, config, smtp, http, &[("NO_COLOR", "1")], true).await
    }

    async fn spawn(
        cwd: &Path,
        config: Option<&Path>,
        smtp: SocketAddr,
        http: SocketAddr,
        env: &[(&str, &str)],
        keep_log: bool,
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mxhook"));
        command.envs(env.iter().copied());
        command.arg("serve");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .current_dir(cwd)
            .env("MXHOOK_SMTP__LISTEN", smtp.to_string())
            .env("MXHOOK_HTTP__LISTEN", http.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if keep_log {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .expect("start mxhook");
        let log = child.stderr.take().map(|stderr| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let kept = Arc::clone(&lines);
            std::thread::spawn(move || {
                use std::io::BufRead as _;
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("{line}");
                    kept.lock().expect("log lock").push(line);
                }
            });
            lines
        });
        let process = Self {
            child,
            smtp,
            http,
            log,
        };
        let mut process = process;
        // Ports from `free_addr` are free when picked, not when the child binds them: another
        // process may take one first. So the child must be alive, and the listening sockets on
        // both ports must be its own, before anything is asked of it.
        let pid = process.child.id();
        eventually("the binary to listen and answer /healthz", || {
            if let Some(status) = process.child.try_wait().expect("poll the process") {
                panic!("mxhook exited before it answered (a port taken?): {status}");
            }
            async move {
                if !(listens_on(pid, smtp.port()) && listens_on(pid, http.port())) {
                    return None;
                }
                let response = super::http_client()
                    .get(format!("http://{http}/healthz"))
                    .send()
                    .await
                    .ok()?;
                (response.status() == 200).then_some(())
            }
        })
        .await;
        process
    }

    pub fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// The gateway's process id (to read its memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, as a service manager stopping the gateway does.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll the process").is_none()
    }

    /// Waits for the process to exit by itself, at most `within`; its exit status.
    pub async fn exited_within(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the process") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the process did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The lines of its log so far (started by [`Self::start_logged`]).
    pub fn log_lines(&self) -> Vec<String> {
        self.log
            .as_ref()
            .expect("started by Process::start_logged")
            .lock()
            .expect("log lock")
            .clone()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` holds a socket listening on TCP `port` on loopback (IPv4 or IPv6),
/// read from `/proc`: a listening socket's inode in `/proc/net/tcp*`, among the process's fds.
fn listens_on(pid: u32, port: u16) -> bool {
    let port_hex = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1, st (0A = LISTEN) field 3, inode field 9.
            if let (Some(local), Some(&"0A"), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
                && local.ends_with(&port_hex)
            {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| {
            inodes
                .iter()
                .any(|inode| target.as_os_str() == inode.as_str())
        })
}
