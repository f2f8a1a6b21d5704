//! The services as real processes: for tests that kill them with SIGKILL,
//! and for the benchmark that reads a service's own memory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A workspace binary built next to the running program: `target/<profile>/NAME`
/// seen from a test (`target/<profile>/deps/<test>-<hash>`) or from another
/// binary (`target/<profile>/jeanus-bench`).
pub fn binary(name: &str) -> PathBuf {
    locate(name).unwrap_or_else(|e| panic!("{e}"))
}

/// [`binary`], with an error naming what to build instead of a panic.
pub fn locate(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no directory", exe.display()))?;
    let beside = dir.join(name);
    let above = dir
        .parent()
        .filter(|_| dir.ends_with("deps"))
        .map(|parent| parent.join(name));
    let found = [Some(beside), above]
        .into_iter()
        .flatten()
        .find(|path| path.exists());
    found.ok_or_else(|| {
        format!(
            "{name} is not built next to {}: run the tests with `scripts/test`, \
                 or `cargo build --bins` (with --release for the benchmark) first",
            exe.display()
        )
    })
}

/// A running service process, killed (SIGKILL) when dropped.
pub struct Service {
    child: Child,
}

impl Service {
    /// Start `binary` with `env` (on top of a clean environment but PATH,
    /// RUST_LOG and a fresh `JEANUS_SECRET_KEY`, which `env` may override:
    /// processes that must share sealed secrets are given the same key).
    pub fn start(name: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        Self::spawn(name, args, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Service::start`], with an error instead of a panic.
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, String)]) -> Result<Self, String> {
        Self::spawn_program(&locate(name)?, args, env)
    }

    /// [`Service::spawn`] of the program at `path` (another build of a
    /// service, say, to compare two side by side).
    pub fn spawn_program(
        path: &std::path::Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<Self, String> {
        let name = path.display();
        let mut cmd = Command::new(path);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env(
                schema::sealing::SECRET_KEY_VAR,
                schema::sealing::SecretKey::generate().to_base64(),
            )
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("{name} does not start: {e}"))?;
        Ok(Self { child })
    }

    /// SIGKILL: no chance to flush, drain or say goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory now and at its peak, from
    /// `/proc/<pid>/status` (Linux); `None` once it has exited.
    pub fn memory(&self) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.id())).ok()?;
        Memory::parse(&status)
    }

    /// CPU time the process has used so far (user + system, every thread),
    /// from `/proc/<pid>/stat`; `None` once it has exited.
    pub fn cpu_time(&self) -> Option<std::time::Duration> {
        cpu_time(&self.id().to_string())
    }
}

/// CPU time process `pid` ("self" for this one) has used so far (user +
/// system, every thread), from `/proc/<pid>/stat`; `None` if there is no
/// such process.
pub fn cpu_time(pid: &str) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_ticks(&stat).map(|ticks| {
        std::time::Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64)
    })
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock
/// ticks. The name (field 2) may hold spaces, so fields are counted after it.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// `getconf CLK_TCK` (100 on every Linux in practice, the fallback).
fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resident set sizes of a process, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub resident: u64,
    /// `VmHWM`: the most ever resident (the high-water mark).
    pub peak: u64,
}

impl Memory {
    /// Reads `VmRSS` and `VmHWM` (given in kB) from a `/proc/<pid>/status` text.
    pub fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix(':')?;
                let kb: u64 = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
                Some(kb * 1024)
            })
        };
        Some(Self {
            resident: field("VmRSS")?,
            peak: field("VmHWM")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Memory;

    #[test]
    fn memory_is_read_from_proc_status() {
        let status = "Name:\tjeanus-dispatcher\nVmPeak:\t  900000 kB\nVmHWM:\t   40960 kB\nVmRSS:\t   30720 kB\n";
        assert_eq!(
            Memory::parse(status),
            Some(Memory {
                resident: 30 * 1024 * 1024,
                peak: 40 * 1024 * 1024
            })
        );
        assert_eq!(Memory::parse("Name:\tzombie\n"), None);
    }

    #[test]
    fn cpu_ticks_are_user_plus_system_even_with_spaces_in_the_name() {
        let stat =
            "4242 (jeanus (dispatch)) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(super::cpu_ticks(stat), Some(325));
        assert_eq!(super::cpu_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn this_process_counts_the_cpu_it_uses() {
        let before = super::cpu_time("self").expect("/proc/self/stat");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut x = 0u64;
        loop {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
            let used = super::cpu_time("self")
                .expect("/proc/self/stat")
                .saturating_sub(before);
            if used >= std::time::Duration::from_millis(20) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "30 s of spinning counted only {used:?}: /proc/self/stat misread"
            );
        }
    }

    #[test]
    fn this_process_has_a_resident_size() {
        let status = std::fs::read_to_string("/proc/self/status").expect("Linux");
        let memory = Memory::parse(&status).expect("VmRSS and VmHWM");
        assert!(memory.resident > 0 && memory.peak >= memory.resident);
    }
}
