//! Child processes in tests and benchmarks: a `storemesh up` child's output read line by line
//! ([`OutputLines`]), stopping it ([`terminate`]), and finding the processes it supervises,
//! to kill or inspect them (Linux `/proc`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

/// A child's stdout and stderr, read on two threads so the child never blocks on a full pipe.
/// Every line is kept (for logs in failure messages); [`OutputLines::wait_for`] also sees each
/// line once, in order, including those printed before it was called.
pub struct OutputLines {
    arrived: mpsc::Receiver<String>,
    all: Arc<Mutex<Vec<String>>>,
}

impl OutputLines {
    /// Takes over `child`'s stdout and stderr, which must have been piped.
    ///
    /// # Panics
    /// When either was not piped.
    pub fn capture(child: &mut Child) -> Self {
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            panic!("capture needs the child's stdout and stderr piped");
        };
        let streams = [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ];
        let (sender, arrived) = mpsc::channel();
        let all = Arc::new(Mutex::new(Vec::new()));
        for stream in streams {
            let sender = sender.clone();
            let all = all.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    all.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line.clone());
                    let _ = sender.send(line);
                }
            });
        }
        Self { arrived, all }
    }

    /// Waits for a line containing `needle`. `Err` (with the last lines) when `child` exits
    /// first or `within` passes.
    pub fn wait_for(
        &mut self,
        child: &mut Child,
        needle: &str,
        within: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(line) = self.arrived.recv_timeout(Duration::from_millis(100))
                && line.contains(needle)
            {
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited ({status}):\n{}", self.tail(200)));
            }
        }
        Err(format!(
            "no {needle:?} within {within:?}:\n{}",
            self.tail(200)
        ))
    }

    /// Waits until the output ends (the pipes close) or stays quiet for `quiet`.
    pub fn settle(&mut self, quiet: Duration) {
        while self.arrived.recv_timeout(quiet).is_ok() {}
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.all
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last `count` lines, one per line.
    pub fn tail(&self, count: usize) -> String {
        let all = self.all.lock().unwrap_or_else(PoisonError::into_inner);
        all[all.len().saturating_sub(count)..].join("\n")
    }
}

/// Stops `child` as Ctrl-C would (SIGTERM) and waits for it; kills it if it is still running
/// after `within`. `None` when it could not be waited for.
pub fn terminate(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// The pid of `parent`'s child running `storemesh serve <service>`, or of its `redis-server`
/// when `service` is `"redis"`. `None` when there is none (yet).
pub fn try_child_pid(parent: u32, service: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if parent_pid(pid) != Some(parent) {
            continue;
        }
        let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if runs(&command_line, service) {
            return Some(pid);
        }
    }
    None
}

/// [`try_child_pid`] for tests that expect the child to be there.
///
/// # Panics
/// When no such child exists.
pub fn child_pid(parent: u32, service: &str) -> u32 {
    try_child_pid(parent, service).unwrap_or_else(|| panic!("no child of {parent} runs {service}"))
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after `(comm)` (which may itself hold spaces and parentheses): state, ppid, …
    let (_, after_comm) = stat.rsplit_once(") ")?;
    after_comm.split(' ').nth(1)?.parse().ok()
}

/// Whether a NUL-separated command line runs `service`.
fn runs(command_line: &[u8], service: &str) -> bool {
    let arguments: Vec<&[u8]> = command_line.split(|byte| *byte == 0).collect();
    if service == "redis" {
        // redis-server rewrites its title to `redis-server <addr>:<port>`, one argument.
        return arguments.first().is_some_and(|program| {
            program
                .windows(b"redis-server".len())
                .any(|window| window == b"redis-server")
        });
    }
    arguments
        .windows(2)
        .any(|pair| pair == [b"serve".as_slice(), service.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_match_the_service_they_serve() {
        assert!(runs(b"/x/storemesh\0serve\0catalog\0", "catalog"));
        assert!(!runs(b"/x/storemesh\0serve\0catalog\0", "storage"));
        assert!(!runs(b"/x/storemesh\0catalog\0serve\0", "catalog"));
        assert!(runs(b"/usr/bin/redis-server 127.0.0.1:6390\0", "redis"));
        assert!(!runs(b"/x/storemesh\0serve\0catalog\0", "redis"));
    }

    #[test]
    fn output_lines_are_awaited_kept_and_the_child_stopped() {
        let mut child = Command::new("sh")
            .args(["-c", "echo one; echo two >&2; echo ready; sleep 30"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut output = OutputLines::capture(&mut child);
        output
            .wait_for(&mut child, "ready", Duration::from_secs(10))
            .unwrap();
        let missing = output.wait_for(&mut child, "never", Duration::from_millis(300));
        assert!(missing.unwrap_err().contains("no \"never\""));
        let mut lines = output.lines();
        lines.sort();
        assert_eq!(lines, ["one", "ready", "two"]);
        assert_eq!(output.tail(1).lines().count(), 1);
        let status = terminate(&mut child, Duration::from_secs(10)).unwrap();
        assert!(!status.success(), "ended by SIGTERM");
        output.settle(Duration::from_millis(100));

        let mut quick = Command::new("sh")
            .args(["-c", "exit 3"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut output = OutputLines::capture(&mut quick);
        let exited = output.wait_for(&mut quick, "ready", Duration::from_secs(10));
        assert!(exited.unwrap_err().starts_with("exited"));
    }

    #[test]
    fn finds_a_real_child_by_its_command_line() {
        let mut child = std::process::Command::new("sh")
            // Two commands, so the shell cannot exec `sleep` in its place and keeps its argv.
            .args(["-c", "sleep 30; true", "serve", "probe"])
            .spawn()
            .unwrap();
        let me = std::process::id();
        // `sh -c CMD serve probe`: $0 = serve, $1 = probe; argv still holds both.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            if let Some(pid) = try_child_pid(me, "probe") {
                break Some(pid);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(found, Some(child.id()));
        assert_eq!(try_child_pid(me, "absent"), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
