//! Finding the processes `storemesh up` supervises, for tests that kill or inspect them
//! (Linux `/proc`).

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
