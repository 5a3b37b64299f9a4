//! Health: the probes a revision must pass, and the health window that gates it.
//!
//! [`Probe`] is the common trait: the bundle's `[[check]]`s (http, tcp, command)
//! implement it here; containers and K3s rollouts plug in the same way. The
//! window ([`window`]) runs every probe at its own interval until all pass at
//! once or the deadline passes. Timers are tokio's, so tests run them on paused
//! time. Probes only read: they never change the gateway.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::bundle::{Check, Probe as CheckProbe};

/// The longest a single probe may take, whatever its interval.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Something that can tell whether a part of a revision is healthy.
pub trait Probe: Send + Sync {
    fn name(&self) -> &str;
    /// How often to probe while waiting for it to pass.
    fn interval(&self) -> Duration;
    /// One probe: `Ok` when healthy, `Err(reason)` otherwise.
    fn probe(&self) -> ProbeFuture<'_>;
    /// How long one probe may take.
    fn timeout(&self) -> Duration {
        self.interval().min(PROBE_TIMEOUT)
    }
}

/// A bundle `[[check]]` as a probe.
#[derive(Debug, Clone)]
pub struct CheckProbeImpl {
    check: Check,
}

impl CheckProbeImpl {
    pub fn new(check: Check) -> Self {
        CheckProbeImpl { check }
    }
}

impl Probe for CheckProbeImpl {
    fn name(&self) -> &str {
        &self.check.name
    }
    fn interval(&self) -> Duration {
        self.check.interval
    }
    fn probe(&self) -> ProbeFuture<'_> {
        Box::pin(async move {
            match &self.check.probe {
                CheckProbe::Http(url) => http_get(url).await,
                CheckProbe::Tcp(addr) => tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("tcp {addr}: {e}")),
                CheckProbe::Command(cmd) => run_command(cmd, self.timeout()).await,
            }
        })
    }
}

/// A container gates the revision while it is running and, when it declares a
/// healthcheck, reports healthy.
pub struct ContainerProbe {
    /// Shown in results (`container NAME`).
    pub name: String,
    /// The container's name in the runtime.
    pub container: String,
    /// Its `[health]` command, run in the container by tend.
    pub command: Option<Vec<String>>,
    pub runtime: std::sync::Arc<dyn crate::reconcile::containers::Runtime>,
    pub interval: Duration,
}

impl Probe for ContainerProbe {
    fn name(&self) -> &str {
        &self.name
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    /// Asking the runtime (and running a command in the container) is slower
    /// than a local probe: allow the full probe timeout.
    fn timeout(&self) -> Duration {
        PROBE_TIMEOUT
    }
    fn probe(&self) -> ProbeFuture<'_> {
        let rt = self.runtime.clone();
        let name = self.container.clone();
        let command = self.command.clone();
        let timeout = PROBE_TIMEOUT;
        Box::pin(async move {
            let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
                match rt.inspect(&name).map_err(|e| e.to_string())? {
                    None => return Err("container does not exist".into()),
                    Some(c) if !c.running => return Err("container is not running".into()),
                    Some(_) => {}
                }
                if let Some(cmd) = command {
                    let code = rt.exec(&name, &cmd, timeout).map_err(|e| e.to_string())?;
                    if code != 0 {
                        return Err(format!("health command exited with {code}"));
                    }
                }
                Ok(())
            })
            .await;
            result.map_err(|e| e.to_string())?
        })
    }
}

/// A Deployment, DaemonSet or StatefulSet gates the revision until
/// `kubectl rollout status` says it rolled out. When kubectl cannot be run the
/// probe fails and says so: never a silent pass.
pub struct RolloutProbe {
    name: String,
    object: crate::bundle::manifest::ObjectRef,
    kubectl: Vec<String>,
    timeout: Duration,
}

impl RolloutProbe {
    /// Named `rollout NAMESPACE/kind/NAME`: two workloads of one name in two
    /// namespaces are two checks.
    pub fn new(object: crate::bundle::manifest::ObjectRef, kubectl: Vec<String>, timeout: Duration) -> RolloutProbe {
        let name = match object.effective_namespace() {
            Some(ns) => format!("rollout {ns}/{}/{}", object.kind.to_lowercase(), object.name),
            None => format!("rollout {}/{}", object.kind.to_lowercase(), object.name),
        };
        RolloutProbe { name, object, kubectl, timeout }
    }
}

impl Probe for RolloutProbe {
    fn name(&self) -> &str {
        &self.name
    }
    fn interval(&self) -> Duration {
        Duration::from_secs(2)
    }
    fn timeout(&self) -> Duration {
        self.timeout.min(PROBE_TIMEOUT)
    }
    fn probe(&self) -> ProbeFuture<'_> {
        Box::pin(async move {
            // `kind.group/name`: a Deployment of apps, not of another group.
            let resource = format!("{}.{}/{}", self.object.kind.to_lowercase(), self.object.group(), self.object.name);
            let mut cmd = self.kubectl.clone();
            cmd.extend(["rollout".into(), "status".into(), resource, "--timeout=5s".into()]);
            if let Some(ns) = self.object.effective_namespace() {
                cmd.extend(["-n".into(), ns.to_owned()]);
            }
            let out =
                run(cmd, self.timeout()).await.map_err(|e| format!("kubectl ({}) {e}", self.kubectl.join(" ")))?;
            if out.status.success() {
                Ok(())
            } else {
                let text = out.stderr.trim();
                Err(format!(
                    "not rolled out ({}){}",
                    out.status,
                    if text.is_empty() { String::new() } else { format!(": {}", truncate(text, 200)) }
                ))
            }
        })
    }
}

/// The probes for a list of bundle checks.
pub fn probes_for(checks: &[Check]) -> Vec<Box<dyn Probe>> {
    checks.iter().cloned().map(|c| Box::new(CheckProbeImpl::new(c)) as Box<dyn Probe>).collect()
}

/// `GET url`; healthy on a 2xx status. Plain HTTP/1.0, no redirects followed.
async fn http_get(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("http {url}: only http:// is supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if hostport.contains(':') { hostport.to_owned() } else { format!("{hostport}:80") };
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    let mut stream = tokio::net::TcpStream::connect(&addr).await.map_err(|e| format!("http {url}: {e}"))?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: tend\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.map_err(|e| format!("http {url}: {e}"))?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await.map_err(|e| format!("http {url}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("http {url}: not an HTTP response: {:?}", truncate(line, 80)))?;
    if (200..300).contains(&code) { Ok(()) } else { Err(format!("http {url}: status {code}")) }
}

/// A command of a check or of kubectl, through the one runner hooks and
/// `kubectl delete` use ([`crate::process::run`]): killed at `timeout`, its
/// output capped. On the blocking pool; a probe given up on still ends by
/// the timeout.
async fn run(cmd: Vec<String>, timeout: Duration) -> Result<crate::process::Output, String> {
    tokio::task::spawn_blocking(move || crate::process::run(&cmd, None, timeout))
        .await
        .map_err(|e| format!("cannot be run: {e}"))?
        .map_err(|e| e.to_string())
}

async fn run_command(cmd: &[String], timeout: Duration) -> Result<(), String> {
    let prog = cmd.first().cloned().unwrap_or_default();
    let out = run(cmd.to_vec(), timeout).await.map_err(|e| format!("command {prog:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = out.stderr.trim().to_owned();
    if text.is_empty() {
        text = out.stdout.trim().to_owned();
    }
    Err(format!(
        "command {prog:?}: {}{}",
        out.status,
        if text.is_empty() { String::new() } else { format!(": {}", truncate(&text, 200)) }
    ))
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max { s.to_owned() } else { s.chars().take(max).collect::<String>() + "…" }
}

/// The result of a health window: each probe's last result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Health {
    pub results: BTreeMap<String, Result<(), String>>,
}

impl Health {
    pub fn healthy(&self) -> bool {
        self.results.values().all(Result::is_ok)
    }

    /// The failing probes, as one line.
    pub fn failures(&self) -> String {
        self.results
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("check {n}: {e}")))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Probe everything once (for periodic health reports).
pub async fn probe_all(probes: &[Box<dyn Probe>]) -> Health {
    let mut h = Health::default();
    for p in probes {
        let r = match tokio::time::timeout(p.timeout(), p.probe()).await {
            Ok(r) => r,
            Err(_) => Err("timed out".into()),
        };
        h.results.insert(p.name().to_owned(), r);
    }
    h
}

/// Run `probes`, each at its interval, until all pass at once or `timeout`
/// passes. With no probes, healthy at once.
pub async fn window(probes: &[Box<dyn Probe>], timeout: Duration) -> Health {
    let start = Instant::now();
    // Checked, whatever the values: a stored revision from before the
    // bounds existed may carry any interval (SPEC §3, 8).
    let deadline = start.checked_add(timeout).unwrap_or(start + Duration::from_secs(86_400));
    let mut health = Health::default();
    let mut due: Vec<Instant> = vec![start; probes.len()];
    // Each probe's last outcome, by position: two probes of one name are two
    // (and are shown as `name`, `name (2)`).
    let mut passed: Vec<bool> = vec![false; probes.len()];
    let mut names: Vec<String> = Vec::with_capacity(probes.len());
    for p in probes {
        let n = names.iter().filter(|x| x.as_str() == p.name() || x.starts_with(&format!("{} (", p.name()))).count();
        names.push(if n == 0 { p.name().to_owned() } else { format!("{} ({})", p.name(), n + 1) });
    }
    loop {
        let now = Instant::now();
        for (i, p) in probes.iter().enumerate() {
            if due[i] > now {
                continue;
            }
            // A probe that already passed is probed again at its interval: the
            // revision is healthy when all pass together, not one after another
            // with the first broken again by then.
            let limit = p.timeout().min(deadline.saturating_duration_since(now).max(Duration::from_millis(1)));
            let r = match tokio::time::timeout(limit, p.probe()).await {
                Ok(r) => r,
                Err(_) => Err(format!("timed out after {}", humantime::format_duration(limit))),
            };
            tracing::debug!(check = names[i].as_str(), ok = r.is_ok(), "probe");
            passed[i] = r.is_ok();
            health.results.insert(names[i].clone(), r);
            due[i] = Instant::now().checked_add(p.interval()).map_or(deadline, |t| t.min(deadline));
        }
        if passed.iter().all(|p| *p) {
            return health;
        }
        let next = due.iter().copied().min().unwrap_or(deadline);
        if next >= deadline || Instant::now() >= deadline {
            return health;
        }
        tokio::time::sleep_until(next).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A probe that fails `fail_first` times, then passes (or never, with u32::MAX).
    struct Flaky {
        name: String,
        interval: Duration,
        fail_first: u32,
        calls: AtomicU32,
    }

    impl Probe for Flaky {
        fn name(&self) -> &str {
            &self.name
        }
        fn interval(&self) -> Duration {
            self.interval
        }
        fn probe(&self) -> ProbeFuture<'_> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { if n < self.fail_first { Err(format!("failure {n}")) } else { Ok(()) } })
        }
    }

    fn flaky(name: &str, secs: u64, fail_first: u32) -> Box<dyn Probe> {
        Box::new(Flaky { name: name.into(), interval: Duration::from_secs(secs), fail_first, calls: AtomicU32::new(0) })
    }

    #[tokio::test(start_paused = true)]
    async fn passes_when_every_probe_passes() {
        let start = Instant::now();
        let h = window(&[flaky("a", 5, 2), flaky("b", 1, 0)], Duration::from_secs(60)).await;
        assert!(h.healthy(), "{h:?}");
        // "a" fails at t=0 and t=5, passes at t=10.
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn ends_unhealthy_at_the_deadline() {
        let start = Instant::now();
        let h = window(&[flaky("never", 5, u32::MAX), flaky("ok", 5, 0)], Duration::from_secs(30)).await;
        assert!(!h.healthy());
        assert!(h.failures().contains("check never: failure"), "{}", h.failures());
        assert!(h.results["ok"].is_ok());
        assert!(start.elapsed() <= Duration::from_secs(30), "{:?}", start.elapsed());
        assert!(start.elapsed() >= Duration::from_secs(25), "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn any_interval_and_timeout_end_at_the_deadline_without_overflow() {
        // A revision stored before the bounds existed may carry any interval.
        let start = Instant::now();
        let h = window(&[flaky("huge", u64::MAX, 1)], Duration::from_secs(30)).await;
        assert!(!h.healthy());
        assert!(start.elapsed() <= Duration::from_secs(30), "{:?}", start.elapsed());
        let h = window(&[flaky("ok", u64::MAX, 0)], Duration::MAX).await;
        assert!(h.healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn probes_of_one_name_are_each_waited_for() {
        // Both pass at once: the window ends at once, not at its deadline.
        let start = Instant::now();
        let h = window(&[flaky("same", 1, 0), flaky("same", 1, 0)], Duration::from_secs(60)).await;
        assert!(h.healthy() && start.elapsed() == Duration::ZERO, "{h:?} {:?}", start.elapsed());
        // One never passes: unhealthy, and its result is not hidden by the other's.
        let h = window(&[flaky("same", 1, u32::MAX), flaky("same", 1, 0)], Duration::from_secs(5)).await;
        assert!(!h.healthy(), "{h:?}");
        assert_eq!(h.results.len(), 2, "{h:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_probes_is_healthy_at_once() {
        let start = Instant::now();
        assert!(window(&[], Duration::from_secs(60)).await.healthy());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_probe_is_cut_off() {
        struct Hang;
        impl Probe for Hang {
            fn name(&self) -> &str {
                "hang"
            }
            fn interval(&self) -> Duration {
                Duration::from_secs(3)
            }
            fn probe(&self) -> ProbeFuture<'_> {
                Box::pin(std::future::pending())
            }
        }
        let h = window(&[Box::new(Hang)], Duration::from_secs(10)).await;
        assert!(h.failures().contains("timed out after 3s"), "{}", h.failures());
    }

    #[tokio::test]
    async fn real_probes() {
        // tcp and http against a real listener on 127.0.0.1.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let status = if req.starts_with("GET /ok ") { "200 OK" } else { "503 Service Unavailable" };
                let _ = s.write_all(format!("HTTP/1.0 {status}\r\n\r\n").as_bytes()).await;
            }
        });
        let check = |probe: CheckProbe| {
            CheckProbeImpl::new(Check { name: "c".into(), probe, interval: Duration::from_secs(1) })
        };
        assert_eq!(check(CheckProbe::Http(format!("http://{addr}/ok"))).probe().await, Ok(()));
        let err = check(CheckProbe::Http(format!("http://{addr}/bad"))).probe().await.unwrap_err();
        assert!(err.contains("status 503"), "{err}");
        assert_eq!(check(CheckProbe::Tcp(addr.to_string())).probe().await, Ok(()));
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert!(check(CheckProbe::Tcp(closed.to_string())).probe().await.is_err());
        assert_eq!(check(CheckProbe::Command(vec!["true".into()])).probe().await, Ok(()));
        let err = check(CheckProbe::Command(vec!["sh".into(), "-c".into(), "echo broken >&2; exit 3".into()]))
            .probe()
            .await
            .unwrap_err();
        assert!(err.contains("exit status: 3") && err.contains("broken"), "{err}");
    }
}
