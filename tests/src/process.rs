//! The services as real processes, for tests that kill them with SIGKILL.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A workspace binary built next to the running test (`target/<profile>/NAME`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo nextest run --workspace` or `cargo build --bins` first",
        path.display()
    );
    path
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
        let mut cmd = Command::new(binary(name));
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
        let child = cmd.spawn().expect("the service starts");
        Self { child }
    }

    /// SIGKILL: no chance to flush, drain or say goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}
