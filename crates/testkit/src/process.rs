//! The child processes the tests start (`redis-server`, `nrl serve`), each under one small `sh`
//! watchdog, and the temp dirs they work in.
//!
//! # No orphans
//! The watchdog's stdin is a pipe whose only write end lives in the test process. When that end
//! closes — [`Watched::kill9_and_wait`] and `Drop` close it, and the kernel closes it when the test
//! process exits, panics or is SIGKILLed — the watchdog SIGKILLs the child. So a test that dies in
//! any way leaves no server behind, which a plain `Child` (never killed if the test process is)
//! cannot promise.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// `sh -c WATCHDOG_SCRIPT watchdog LOG PROGRAM ARGS...`: starts `PROGRAM ARGS...` in the
/// background with its stdout and stderr appended to LOG, prints its pid, and SIGKILLs it as soon
/// as stdin reaches EOF (or gets a line). Exits with the child's exit status once it is gone.
///
/// The guard reads through fd 3 because a background job's stdin is replaced by /dev/null in a
/// non-interactive shell. The child itself gets /dev/null as stdin and fd 3 closed, so the pipe's
/// read end stays with the watchdog alone. The shell's own errors (say, a program that cannot be
/// executed) go to LOG too, where the failure message that quotes the log shows them.
pub const WATCHDOG_SCRIPT: &str = r#"
log="$1"; shift
exec 2>>"$log" 3<&0
"$@" </dev/null >>"$log" 2>&1 3<&- &
pid=$!
echo "$pid"
( read -r _ <&3; kill -9 "$pid" ) >/dev/null 2>&1 &
guard=$!
exec 3<&-
wait "$pid"
status=$?
kill "$guard" 2>/dev/null
exit "$status"
"#;

/// After the lifeline is cut, how long the watchdog gets to SIGKILL the child before the harness
/// does it directly.
const WATCHDOG_GRACE: Duration = Duration::from_secs(2);
/// How long a SIGKILLed child may take to be gone before that is an error.
const KILL_LIMIT: Duration = Duration::from_secs(10);

/// One child process under the watchdog. Dropping it kills the child and waits for it.
pub struct Watched {
    /// The `sh` watchdog; its stdin is the lifeline pipe.
    watchdog: Child,
    /// Held open so the watchdog never writes into a closed pipe.
    _stdout: ChildStdout,
    pid: u32,
    /// The program's file name, for messages.
    name: String,
}

impl Watched {
    /// Starts `command`'s program with its arguments, environment changes and working directory
    /// under the watchdog, its stdout and stderr appended to `log` (its own stdio settings are not
    /// used). Returns as soon as the watchdog has reported the pid, which it does right after the
    /// fork; the program may still be starting.
    pub fn spawn(command: &Command, log: &Path) -> Watched {
        let name = Path::new(command.get_program())
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| command.get_program().to_string_lossy().into_owned());
        let mut sh = Command::new("/bin/sh");
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => sh.env(key, value),
                None => sh.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            sh.current_dir(dir);
        }
        let mut watchdog = sh
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg(format!("{name}-watchdog"))
            .arg(log)
            .arg(command.get_program())
            .args(command.get_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("spawn the watchdog of {name} via /bin/sh: {error}"));
        let mut stdout = BufReader::new(watchdog.stdout.take().expect("the watchdog's stdout is piped"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        match line.trim().parse() {
            Ok(pid) => Watched { watchdog, _stdout: stdout.into_inner(), pid, name },
            Err(_) => {
                let _ = watchdog.kill();
                let _ = watchdog.wait();
                panic!("the watchdog of {name} reported no pid (read {read:?}, got {line:?})");
            }
        }
    }

    /// The child's process id (not the watchdog's).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child's exit status, if it has exited (the watchdog exits with it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.watchdog.try_wait().ok().flatten()
    }

    /// Waits up to `limit` for a child that is meant to exit by itself; `None` if it still runs
    /// (it is killed when this is dropped).
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`-STOP`, `-CONT`, `-TERM`, ...) to the child.
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let status = Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .status()
            .map_err(|error| format!("run kill {signal} {}: {error}", self.pid))?;
        match status.success() {
            true => Ok(()),
            false => Err(format!("kill {signal} {} ({}) failed: {status}", self.pid, self.name)),
        }
    }

    /// Closes the lifeline without waiting, so that several children can die at once; the
    /// watchdog SIGKILLs the child. [`kill9_and_wait`](Self::kill9_and_wait) or `Drop` still wait.
    pub fn cut_lifeline(&mut self) {
        drop(self.watchdog.stdin.take());
    }

    /// Closes the lifeline so the watchdog SIGKILLs the child, then waits for both to be gone.
    ///
    /// Should the watchdog not manage that within 2s, the child is SIGKILLed directly — safe
    /// because its pid cannot be reused before the watchdog has reaped it — and the call still
    /// fails, as the watchdog is what protects against orphans.
    pub fn kill9_and_wait(&mut self) -> Result<ExitStatus, String> {
        self.cut_lifeline();
        let started = Instant::now();
        let mut fallback: Option<String> = None;
        loop {
            match self.watchdog.try_wait() {
                Ok(Some(status)) => {
                    return match fallback {
                        None => Ok(status),
                        Some(how) => Err(format!("the watchdog did not kill {} pid {}; {how}", self.name, self.pid)),
                    }
                }
                Ok(None) if fallback.is_none() && started.elapsed() >= WATCHDOG_GRACE => {
                    let kill = Command::new("kill").args(["-9", &self.pid.to_string()]).status();
                    fallback = Some(format!("killed it directly ({kill:?})"));
                }
                Ok(None) if started.elapsed() >= KILL_LIMIT => {
                    let _ = self.watchdog.kill();
                    let _ = self.watchdog.wait();
                    return Err(format!(
                        "{} pid {} still running {KILL_LIMIT:?} after SIGKILL was requested",
                        self.name, self.pid
                    ));
                }
                Ok(None) => thread::sleep(Duration::from_millis(5)),
                Err(error) => return Err(format!("waiting for the watchdog of {}: {error}", self.name)),
            }
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // A child that exited by itself has been reaped already; the lifeline may still be open.
        if let Err(error) = self.kill9_and_wait() {
            // No panic in drop: we may already be unwinding.
            eprintln!("test harness: stopping {} (pid {}): {error}", self.name, self.pid);
        }
    }
}

/// The last `lines` lines of a log file, for failure messages.
pub fn tail_of_file(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(no log at {}: {error})", path.display()),
    }
}

/// A fresh directory under the system temp dir, removed on drop unless the thread is panicking:
/// then it is kept, and its path printed, so the logs in it can be read.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `TMP/LABEL-PID-N-RANDOM`: unique within this process (N) and across test processes.
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{label}-{}-{}-{:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("create temp dir {}: {error}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `path/name`
    pub fn join(&self, name: impl AsRef<OsStr>) -> PathBuf {
        self.0.join(name.as_ref())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test harness: logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Does process `pid` hold the listening socket on `127.0.0.1:port`? A health check that answers
/// on a port proves only that *someone* listens there: if our child lost the port to another test
/// process (two suites running at once pick from the same range) and is exiting, that other
/// process answers. This reads the kernel's own view (`/proc/net/tcp`: the socket's inode; then
/// `/proc/PID/fd`: whether the process holds that inode).
pub fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, state 0A = LISTEN, inode.
            (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
                .then(|| fields.get(9).map(|inode| format!("socket:[{inode}]")))
                .flatten()
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| inodes.iter().any(|inode| target.to_string_lossy() == *inode))
}
