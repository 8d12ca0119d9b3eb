//! Running the real `lb-agent` binary inside a topology's node namespace, and `lbctl` against it.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The directory holding the project's binaries (lb-agent, lbctl, lb-echo): env `LB_BIN_DIR`,
/// else next to the running executable (test binaries live in target/<profile>/deps).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LB_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe has a parent").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir
    }
}

/// A running agent; killed (and its pins removed) on drop if not stopped.
pub struct Agent {
    child: Option<Child>,
    pub bpffs: PathBuf,
    pub log_path: PathBuf,
}

impl Agent {
    /// Starts lb-agent in `netns` (network namespace only, via nsenter, so the bpffs pins stay
    /// visible to lbctl) with `--manifests manifests`, and waits until it reports `ready`.
    pub fn start(netns: &str, manifests: &Path, interfaces: &str, bpffs: &Path, extra: &[&str]) -> Result<Agent> {
        let manifests = manifests.to_str().context("manifests path is not UTF-8")?;
        Agent::start_with(Some(netns), &["--manifests", manifests], interfaces, bpffs, extra)
    }

    /// Starts lb-agent with the source arguments `source_args` (`--manifests PATH`,
    /// `--kubeconfig FILE`...) in `netns` (`None`: this process's network namespace, no nsenter)
    /// and waits (≤ 30 s) until it reports `ready`.
    pub fn start_with(
        netns: Option<&str>,
        source_args: &[&str],
        interfaces: &str,
        bpffs: &Path,
        extra: &[&str],
    ) -> Result<Agent> {
        let mut agent = Agent::spawn_with(netns, source_args, interfaces, bpffs, extra)?;
        agent.wait_ready(Duration::from_secs(30))?;
        Ok(agent)
    }

    /// As [`Agent::start_with`], without waiting for `ready` (lb-agent reports it only once its
    /// source's initial lists are complete).
    pub fn spawn_with(
        netns: Option<&str>,
        source_args: &[&str],
        interfaces: &str,
        bpffs: &Path,
        extra: &[&str],
    ) -> Result<Agent> {
        let log_path =
            std::env::temp_dir().join(format!("lb-agent-{}.log", bpffs.file_name().and_then(|n| n.to_str()).unwrap_or("x")));
        let log = File::create(&log_path)?;
        let agent_bin = bin_dir().join("lb-agent");
        // `node1` unless the caller names the node itself (multi-node topologies).
        let default_node_name: &[&str] =
            if extra.contains(&"--hostname-override") { &[] } else { &["--hostname-override", "node1"] };
        let mut cmd = match netns {
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{netns}")).arg(agent_bin);
                c
            }
            None => Command::new(agent_bin),
        };
        let child = cmd
            .args(source_args)
            .args(["--interfaces", interfaces])
            .arg("--bpffs")
            .arg(bpffs)
            .args(default_node_name)
            .args(["--min-sync-period", "100ms"])
            .args(extra)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("spawning lb-agent")?;
        Ok(Agent { child: Some(child), bpffs: bpffs.to_path_buf(), log_path })
    }

    /// Whether the agent has reported `ready` (its first sync is done, the program attached).
    pub fn is_ready(&self) -> bool {
        self.log().contains(" ready")
    }

    /// Waits until the agent reports `ready`; fails if it exits first or after `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_ready() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("lb-agent exited ({status}) before it was ready:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("lb-agent not ready after {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's exit status if it has exited (it is then still reaped on drop).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `lbctl --bpffs <ours> ARGS -o json` and parses its output.
    pub fn lbctl_json(&self, args: &[&str]) -> Result<Value> {
        let out =
            Command::new(bin_dir().join("lbctl")).arg("--bpffs").arg(&self.bpffs).args(args).args(["-o", "json"]).output()?;
        if !out.status.success() {
            bail!("lbctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Backend address → Maglev slots, for the frontend `ip:port` (empty if not programmed).
    pub fn active_backends(&self, frontend: &str) -> Result<BTreeMap<String, u64>> {
        let services = self.lbctl_json(&["services"])?;
        Ok(active_backends(&services, frontend))
    }

    /// The counters of `lbctl stats`.
    pub fn stats(&self) -> Result<BTreeMap<String, u64>> {
        let v = self.lbctl_json(&["stats"])?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["counter"].as_str()?.to_string(), r["value"].as_u64()?)))
            .collect())
    }

    /// SIGKILL: the agent dies without any cleanup (its pins stay, as after a crash).
    pub fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("already stopped")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM and wait (≤ 15 s) for a clean exit.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("lb-agent did not exit within 15 s of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&self.bpffs);
        }
    }
}

/// Backend address → Maglev slots for `frontend` in `lbctl services -o json` output.
pub fn active_backends(services: &Value, frontend: &str) -> BTreeMap<String, u64> {
    services
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["frontend"] == frontend)
        .flat_map(|s| s["active_backends"].as_object().cloned().unwrap_or_default())
        .filter_map(|(k, v)| Some((k, v.as_u64()?)))
        .collect()
}
