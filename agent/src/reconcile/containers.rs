//! Containers through the Docker Engine API (Docker or Podman's compatible
//! service), behind the [`Runtime`] trait in our own types; `DockerRuntime` is
//! the only code that knows bollard.
//!
//! What must always hold:
//! - tend only touches containers it created: they carry the label
//!   `io.tend.managed=true`; a container with a declared name but without the
//!   label is an error that names it, and is left alone;
//! - images are pulled before anything is changed, so a pull failure (transient)
//!   leaves the old container running and the files unwritten;
//! - a no-op costs one labelled list call, not one call per container (and
//!   one inspection for each container in a `depends_on` relation, for its
//!   start time);
//! - a container starts after what it depends on runs (and is healthy, where
//!   it has `[health]`), and stops before it: replaced containers are removed
//!   dependents first, then created dependencies first; one that started
//!   before a dependency's current run (a runtime restarting everything at
//!   once, as after a reboot) is restarted after it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use crate::bundle::{ContainerSpec, Pull, parse_port};

pub const LABEL_MANAGED: &str = "io.tend.managed";
pub const LABEL_SPEC: &str = "io.tend.spec";
pub const LABEL_REVISION: &str = "io.tend.revision";
/// The container's `depends_on`, comma-separated: the order a pruned
/// container is removed in, when its spec is no longer in the bundle.
pub const LABEL_DEPENDS_ON: &str = "io.tend.depends_on";

/// A container runtime error; all of them are transient (the runtime may come
/// back, a pull may succeed later) except a name conflict.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("container runtime at {socket}: {reason}")]
    Unavailable { socket: String, reason: String },
    #[error("container {name}: {reason}")]
    Failed { name: String, reason: String },
    #[error(
        "container {name}: a container of that name exists that tend did not create; remove or rename it (tend never touches it)"
    )]
    Conflict { name: String },
    /// A dependency did not run, or was not healthy, in time: the revision
    /// fails as an unhealthy one does.
    #[error("container {name} not started: its dependency {dependency} {reason} after {waited}")]
    Unready { name: String, dependency: String, reason: String, waited: String },
}

impl RuntimeError {
    pub fn is_transient(&self) -> bool {
        !matches!(self, RuntimeError::Conflict { .. } | RuntimeError::Unready { .. })
    }
}

/// A container as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveContainer {
    pub id: String,
    pub name: String,
    pub managed: bool,
    pub spec_hash: Option<String>,
    pub running: bool,
    /// `healthy`, `unhealthy`, `starting`, or `None` without a healthcheck.
    pub health: Option<String>,
    /// When its current run started (filled by an inspection, for the
    /// containers in a `depends_on` relation only).
    pub started_at: Option<jiff::Timestamp>,
    /// Its `depends_on` when tend created it (label [`LABEL_DEPENDS_ON`]).
    pub depends_on: Vec<String>,
}

/// A container runtime, in our own types.
pub trait Runtime: Send + Sync {
    fn ping(&self) -> Result<(), RuntimeError>;
    /// Its name and version (`podman 4.3.1`), for the status's inventory.
    fn version(&self) -> Result<Option<String>, RuntimeError>;
    /// Every container tend manages (one labelled list call).
    fn list_managed(&self) -> Result<Vec<LiveContainer>, RuntimeError>;
    /// Containers with exactly this name, whoever made them.
    fn find_by_name(&self, name: &str) -> Result<Option<LiveContainer>, RuntimeError>;
    fn image_present(&self, image: &str) -> Result<bool, RuntimeError>;
    fn pull(&self, image: &str) -> Result<(), RuntimeError>;
    fn create_and_start(&self, name: &str, spec: &ContainerSpec, revision: &str) -> Result<String, RuntimeError>;
    fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Stop and start again.
    fn restart(&self, id: &str) -> Result<(), RuntimeError>;
    fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// One container's state (for health), by name.
    fn inspect(&self, name: &str) -> Result<Option<LiveContainer>, RuntimeError>;
    /// Run `command` in the container; Ok(exit code). tend runs a spec's
    /// `[health]` command itself this way, so health gates the revision even
    /// where the runtime schedules no healthchecks (Podman without systemd).
    fn exec(&self, name: &str, command: &[String], timeout: Duration) -> Result<i64, RuntimeError>;
    /// Where the runtime keeps images and containers, as it says.
    fn storage_root(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// An image's size on disk here, if it is here.
    fn image_size(&self, image: &str) -> Result<Option<u64>, RuntimeError> {
        let _ = image;
        Ok(None)
    }
}

/// What to do with one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerOp {
    Create {
        name: String,
    },
    /// Its spec changed, or (`because`) a dependency it is recreated with was.
    Replace {
        name: String,
        old_id: String,
        because: Option<String>,
    },
    Start {
        name: String,
        id: String,
    },
    /// Running since before `after`, a dependency, started its current run.
    Restart {
        name: String,
        id: String,
        after: String,
    },
    Remove {
        name: String,
        id: String,
    },
}

impl std::fmt::Display for ContainerOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContainerOp::Create { name } => write!(f, "create  container {name}"),
            ContainerOp::Replace { name, because: None, .. } => {
                write!(f, "replace container {name} (its spec changed)")
            }
            ContainerOp::Replace { name, because: Some(d), .. } => {
                write!(f, "replace container {name} (its dependency {d} was replaced)")
            }
            ContainerOp::Start { name, .. } => write!(f, "start   container {name} (was stopped)"),
            ContainerOp::Restart { name, after, .. } => {
                write!(f, "restart container {name} (it started before its dependency {after})")
            }
            ContainerOp::Remove { name, .. } => write!(f, "remove  container {name}"),
        }
    }
}

/// Pure: the operations taking `live` (tend's containers) to `desired`, in
/// start order (each after what it depends on); the pruned containers last,
/// each before what it depended on.
pub fn plan(desired: &BTreeMap<String, ContainerSpec>, live: &[LiveContainer], prune: bool) -> Vec<ContainerOp> {
    let by_name: HashMap<&str, &LiveContainer> =
        live.iter().filter(|c| c.managed).map(|c| (c.name.as_str(), c)).collect();
    // A bundle is checked for cycles and missing dependencies when it is
    // read; a stored one from before that check falls back to name order.
    let order = crate::bundle::start_order(desired).unwrap_or_else(|_| desired.keys().map(String::as_str).collect());
    let mut ops = Vec::new();
    // Created or replaced, and (re)started, by this plan.
    let (mut recreated, mut started) = (BTreeSet::new(), BTreeSet::new());
    for name in order {
        let spec = &desired[name];
        let op = match by_name.get(name) {
            None => Some(ContainerOp::Create { name: name.to_owned() }),
            Some(c) if c.spec_hash.as_deref() != Some(spec.hash().as_str()) => {
                Some(ContainerOp::Replace { name: name.to_owned(), old_id: c.id.clone(), because: None })
            }
            Some(c)
                if let Some(d) = spec.depends_on.iter().find(|d| recreated.contains(*d))
                    && spec.recreate_with_dependencies =>
            {
                Some(ContainerOp::Replace { name: name.to_owned(), old_id: c.id.clone(), because: Some(d.clone()) })
            }
            Some(c) if !c.running => Some(ContainerOp::Start { name: name.to_owned(), id: c.id.clone() }),
            Some(c) => spec
                .depends_on
                .iter()
                .find(|d| {
                    started.contains(*d)
                        || matches!(
                            (by_name.get(d.as_str()).and_then(|l| l.started_at), c.started_at),
                            (Some(theirs), Some(mine)) if theirs > mine
                        )
                })
                .map(|d| ContainerOp::Restart { name: name.to_owned(), id: c.id.clone(), after: d.clone() }),
        };
        if let Some(op) = op {
            if matches!(op, ContainerOp::Create { .. } | ContainerOp::Replace { .. }) {
                recreated.insert(name.to_owned());
            }
            started.insert(name.to_owned());
            ops.push(op);
        }
    }
    if prune {
        let pruned: BTreeMap<&str, &LiveContainer> =
            live.iter().filter(|c| c.managed && !desired.contains_key(&c.name)).map(|c| (c.name.as_str(), c)).collect();
        // Dependents first: a container goes once nothing left depends on it.
        let mut left: Vec<&LiveContainer> = pruned.values().copied().collect();
        while !left.is_empty() {
            let needed = |c: &LiveContainer| left.iter().any(|o| o.depends_on.contains(&c.name));
            let free: Vec<&LiveContainer> = left.iter().copied().filter(|c| !needed(c)).collect();
            // A cycle in old labels: the rest by name.
            let next = if free.is_empty() { left.clone() } else { free };
            for c in &next {
                ops.push(ContainerOp::Remove { name: c.name.clone(), id: c.id.clone() });
            }
            left.retain(|c| !next.iter().any(|n| n.name == c.name));
        }
    }
    ops
}

/// Where Podman or Docker keeps images by default, whichever is here: for a
/// runtime that does not say ([`Runtime::storage_root`]).
pub fn storage_guess() -> Option<&'static Path> {
    ["/var/lib/containers/storage", "/var/lib/docker"].into_iter().map(Path::new).find(|p| p.is_dir())
}

/// The default socket: the first of Podman's and Docker's usual sockets found.
pub fn default_socket() -> Option<String> {
    ["/run/podman/podman.sock", "/var/run/docker.sock", "/run/docker.sock"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .map(|p| format!("unix://{p}"))
}

/// The runtime at `socket` as a name and a version (`podman 4.3.1`), from
/// the Engine API's `GET /version`: bollard's typed answer would bring its
/// decoder into the gateway binary for two fields (as `GET /info`'s did,
/// decision 0004).
pub fn engine_version(socket: &str) -> Result<Option<String>, RuntimeError> {
    let v = engine_json(socket, "/version", 64 * 1024, Duration::from_secs(5))?;
    let names = v["Components"].as_array().into_iter().flatten().filter_map(|c| c["Name"].as_str());
    Ok(crate::inventory::runtime_label(names, v["Version"].as_str().unwrap_or("")))
}

/// `GET path` of the Engine API at `socket`, read as a plain JSON value on
/// a connection of its own (HTTP/1.0: no chunking), at most `max` bytes,
/// each read and write within `timeout`.
fn engine_json(socket: &str, path: &str, max: u64, timeout: Duration) -> Result<serde_json::Value, RuntimeError> {
    use std::io::{Read, Write};
    let unix = socket.strip_prefix("unix://").unwrap_or(socket);
    let fail =
        |e: &dyn std::fmt::Display| RuntimeError::Unavailable { socket: socket.to_owned(), reason: e.to_string() };
    let io = |e: std::io::Error| fail(&e);
    let mut conn = std::os::unix::net::UnixStream::connect(unix).map_err(io)?;
    conn.set_read_timeout(Some(timeout)).map_err(io)?;
    conn.set_write_timeout(Some(timeout)).map_err(io)?;
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: tend\r\nConnection: close\r\n\r\n").as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    conn.take(max).read_to_end(&mut answer).map_err(io)?;
    let body = answer.windows(4).position(|w| w == b"\r\n\r\n").map_or(&[][..], |at| &answer[at + 4..]);
    serde_json::from_slice(body).map_err(|e| fail(&e))
}

/// The Docker Engine API over a unix socket, with its own small runtime so it
/// can be called from the blocking steps of a sync.
pub struct DockerRuntime {
    socket: String,
    rt: tokio::runtime::Runtime,
    docker: Result<bollard::Docker, String>,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime").field("socket", &self.socket).finish()
    }
}

impl DockerRuntime {
    pub fn new(socket: &str) -> DockerRuntime {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the container API");
        let docker = rt.block_on(async {
            bollard::Docker::connect_with_unix(socket, 60, bollard::API_DEFAULT_VERSION).map_err(|e| e.to_string())
        });
        DockerRuntime { socket: socket.to_owned(), rt, docker }
    }

    fn docker(&self) -> Result<&bollard::Docker, RuntimeError> {
        self.docker.as_ref().map_err(|e| self.unavailable(e))
    }

    fn unavailable(&self, e: impl ToString) -> RuntimeError {
        RuntimeError::Unavailable { socket: self.socket.clone(), reason: e.to_string() }
    }

    fn live(c: &bollard::models::ContainerSummary) -> LiveContainer {
        let labels = c.labels.clone().unwrap_or_default();
        LiveContainer {
            id: c.id.clone().unwrap_or_default(),
            name: c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_default(),
            managed: labels.get(LABEL_MANAGED).is_some_and(|v| v == "true"),
            spec_hash: labels.get(LABEL_SPEC).cloned(),
            running: c.state.as_ref().is_some_and(|s| s.to_string().eq_ignore_ascii_case("running")),
            health: None,
            started_at: None,
            depends_on: depends_on_label(&labels),
        }
    }

    /// The image `reference` names here, if it is here (404: `None`).
    fn inspect_image(&self, reference: &str) -> Result<Option<bollard::models::ImageInspect>, RuntimeError> {
        let docker = self.docker()?;
        match self.rt.block_on(docker.inspect_image(reference)) {
            Ok(i) => Ok(Some(i)),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// The id of the image `reference` names here, if it is here.
    pub fn image_id(&self, reference: &str) -> Result<Option<String>, RuntimeError> {
        Ok(self.inspect_image(reference)?.and_then(|i| i.id))
    }

    /// Load images from a `docker save` archive (what `GET /images/get`
    /// writes), streamed from `chunks`.
    pub fn load_images(
        &self,
        chunks: impl Iterator<Item = std::io::Result<hyper::body::Bytes>> + Send + 'static,
    ) -> Result<(), String> {
        use futures_util::StreamExt;
        let docker = self.docker().map_err(|e| e.to_string())?;
        let opts = bollard::query_parameters::ImportImageOptionsBuilder::new().quiet(true).build();
        let body = bollard::body_try_stream(futures_util::stream::iter(chunks));
        self.rt.block_on(async {
            let mut answers = docker.import_image(opts, body, None);
            while let Some(a) = answers.next().await {
                let a = a.map_err(|e| format!("the container runtime refused the images: {e}"))?;
                if let Some(e) = a.error_detail.and_then(|d| d.message) {
                    return Err(format!("the container runtime refused the images: {e}"));
                }
            }
            Ok(())
        })
    }

    /// Write the images `refs` name as one `docker save` archive to `out`
    /// (`GET /images/get`), telling `progress` the bytes written so far.
    pub fn save_images(
        &self,
        refs: &[&str],
        out: &mut dyn std::io::Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), String> {
        use futures_util::StreamExt;
        let docker = self.docker().map_err(|e| e.to_string())?;
        self.rt.block_on(async {
            let mut stream = docker.export_images(refs);
            let mut written = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| format!("the container runtime could not export the images: {e}"))?;
                out.write_all(&chunk).map_err(|e| format!("cannot write the images: {e}"))?;
                written += chunk.len() as u64;
                progress(written);
            }
            Ok(())
        })
    }

    /// Point the reference `name` (`repo:tag`) at the image `id` again.
    pub fn tag_image(&self, id: &str, name: &str) -> Result<(), RuntimeError> {
        let docker = self.docker()?;
        let (repo, tag) = match name.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (name, "latest"),
        };
        let opts = bollard::query_parameters::TagImageOptionsBuilder::new().repo(repo).tag(tag).build();
        self.rt.block_on(docker.tag_image(id, Some(opts))).map_err(|e| self.unavailable(e))
    }

    /// Remove the reference `name` (not forced): the tag alone when the
    /// image has others, the image when it was its only name and nothing
    /// uses it.
    pub fn untag_image(&self, name: &str) -> Result<(), RuntimeError> {
        let docker = self.docker()?;
        let opts = bollard::query_parameters::RemoveImageOptionsBuilder::new().force(false).build();
        self.rt.block_on(docker.remove_image(name, Some(opts), None)).map(|_| ()).map_err(|e| self.unavailable(e))
    }

    fn list(&self, filter: (&str, String)) -> Result<Vec<LiveContainer>, RuntimeError> {
        let docker = self.docker()?;
        let mut filters = HashMap::new();
        filters.insert(filter.0.to_owned(), vec![filter.1]);
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let list = self.rt.block_on(docker.list_containers(Some(opts))).map_err(|e| self.unavailable(e))?;
        Ok(list.iter().map(Self::live).collect())
    }
}

impl Runtime for DockerRuntime {
    fn ping(&self) -> Result<(), RuntimeError> {
        let docker = self.docker()?;
        self.rt.block_on(docker.ping()).map(|_| ()).map_err(|e| self.unavailable(e))
    }

    fn version(&self) -> Result<Option<String>, RuntimeError> {
        engine_version(&self.socket)
    }

    fn list_managed(&self) -> Result<Vec<LiveContainer>, RuntimeError> {
        self.list(("label", format!("{LABEL_MANAGED}=true")))
    }

    fn find_by_name(&self, name: &str) -> Result<Option<LiveContainer>, RuntimeError> {
        // The name filter matches substrings: keep the exact name only.
        Ok(self.list(("name", name.to_owned()))?.into_iter().find(|c| c.name == name))
    }

    fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        self.inspect_image(image).map(|i| i.is_some())
    }

    fn image_size(&self, image: &str) -> Result<Option<u64>, RuntimeError> {
        Ok(self.inspect_image(image)?.and_then(|i| i.size).and_then(|s| u64::try_from(s).ok()))
    }

    /// `DockerRootDir` of `GET /info` (Docker's data root, Podman's
    /// graphroot), read as a plain JSON value: bollard's typed answer is a
    /// 30 KB decoder of a few hundred fields, on a binary with a size budget.
    fn storage_root(&self) -> Option<std::path::PathBuf> {
        let info = engine_json(&self.socket, "/info", 1 << 20, INSPECT_TIMEOUT).ok()?;
        info.get("DockerRootDir").and_then(|v| v.as_str()).filter(|p| p.starts_with('/')).map(Into::into)
    }

    fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        use futures_util::StreamExt;
        let docker = self.docker()?;
        let opts = bollard::query_parameters::CreateImageOptionsBuilder::new().from_image(image).build();
        self.rt.block_on(async {
            let mut stream = docker.create_image(Some(opts), None, None);
            while let Some(item) = stream.next().await {
                item.map_err(|e| RuntimeError::Failed { name: image.to_owned(), reason: format!("pull failed: {e}") })?;
            }
            Ok(())
        })
    }

    fn create_and_start(&self, name: &str, spec: &ContainerSpec, revision: &str) -> Result<String, RuntimeError> {
        use bollard::models::{
            ContainerCreateBody, HealthConfig, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
        };
        let docker = self.docker()?;
        let fail = |e: bollard::errors::Error| RuntimeError::Failed { name: name.to_owned(), reason: e.to_string() };
        let mut labels = HashMap::new();
        labels.insert(LABEL_MANAGED.to_owned(), "true".to_owned());
        labels.insert(LABEL_SPEC.to_owned(), spec.hash());
        labels.insert(LABEL_REVISION.to_owned(), revision.to_owned());
        if !spec.depends_on.is_empty() {
            labels.insert(LABEL_DEPENDS_ON.to_owned(), spec.depends_on.join(","));
        }
        let mut exposed = Vec::new();
        let mut bindings = HashMap::new();
        for p in &spec.ports {
            let (host, container, proto) =
                parse_port(p).map_err(|reason| RuntimeError::Failed { name: name.into(), reason })?;
            let key = format!("{container}/{proto}");
            exposed.push(key.clone());
            bindings.insert(key, Some(vec![PortBinding { host_ip: None, host_port: Some(host.to_string()) }]));
        }
        let restart = match spec.restart {
            crate::bundle::Restart::No => RestartPolicyNameEnum::NO,
            crate::bundle::Restart::Always => RestartPolicyNameEnum::ALWAYS,
            crate::bundle::Restart::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
            crate::bundle::Restart::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        };
        let healthcheck = spec.health.as_ref().map(|h| {
            let mut test = vec!["CMD".to_owned()];
            test.extend(h.command.iter().cloned());
            let ns = i64::try_from(h.interval.as_nanos()).unwrap_or(i64::MAX);
            HealthConfig {
                test: Some(test),
                interval: Some(ns),
                timeout: Some(ns),
                retries: Some(i64::from(h.retries)),
                ..Default::default()
            }
        });
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            healthcheck,
            host_config: Some(HostConfig {
                network_mode: Some(spec.network.clone()),
                port_bindings: (!bindings.is_empty()).then_some(bindings),
                binds: (!spec.volumes.is_empty()).then(|| spec.volumes.clone()),
                restart_policy: Some(RestartPolicy { name: Some(restart), maximum_retry_count: None }),
                privileged: Some(spec.privileged),
                // An init process, so a stop does not wait out its whole timeout.
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = bollard::query_parameters::CreateContainerOptionsBuilder::new().name(name).build();
        let created = self.rt.block_on(docker.create_container(Some(opts), body)).map_err(fail)?;
        self.rt
            .block_on(docker.start_container(&created.id, None::<bollard::query_parameters::StartContainerOptions>))
            .map_err(fail)?;
        Ok(created.id)
    }

    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let docker = self.docker()?;
        self.rt
            .block_on(docker.start_container(id, None::<bollard::query_parameters::StartContainerOptions>))
            .map_err(|e| RuntimeError::Failed { name: id.to_owned(), reason: e.to_string() })
    }

    fn restart(&self, id: &str) -> Result<(), RuntimeError> {
        let docker = self.docker()?;
        self.rt
            .block_on(docker.restart_container(id, None::<bollard::query_parameters::RestartContainerOptions>))
            .map_err(|e| RuntimeError::Failed { name: id.to_owned(), reason: e.to_string() })
    }

    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let docker = self.docker()?;
        let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).build();
        match self.rt.block_on(docker.remove_container(id, Some(opts))) {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(RuntimeError::Failed { name: id.to_owned(), reason: e.to_string() }),
        }
    }

    fn exec(&self, name: &str, command: &[String], timeout: Duration) -> Result<i64, RuntimeError> {
        use bollard::exec::{CreateExecOptions, StartExecOptions};
        let docker = self.docker()?;
        let fail = |e: bollard::errors::Error| RuntimeError::Failed {
            name: name.to_owned(),
            reason: format!("health command: {e}"),
        };
        self.rt.block_on(async {
            let opts = CreateExecOptions::<String> {
                cmd: Some(command.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            };
            let exec = docker.create_exec(name, opts).await.map_err(fail)?;
            // Attached, and read to the end: Podman reports a detached exec as
            // running forever; an attached one ends when the command does.
            let run = async {
                use futures_util::StreamExt;
                match docker
                    .start_exec(
                        &exec.id,
                        Some(StartExecOptions { detach: false, tty: false, output_capacity: Some(4096) }),
                    )
                    .await
                    .map_err(fail)?
                {
                    bollard::exec::StartExecResults::Attached { mut output, .. } => {
                        while let Some(chunk) = output.next().await {
                            if chunk.is_err() {
                                break;
                            }
                        }
                    }
                    bollard::exec::StartExecResults::Detached => {}
                }
                let info = docker.inspect_exec(&exec.id).await.map_err(fail)?;
                info.exit_code.ok_or_else(|| RuntimeError::Failed {
                    name: name.to_owned(),
                    reason: "health command: no exit code".into(),
                })
            };
            match tokio::time::timeout(timeout, run).await {
                Ok(r) => r,
                Err(_) => {
                    Err(RuntimeError::Failed { name: name.to_owned(), reason: "health command timed out".into() })
                }
            }
        })
    }

    fn inspect(&self, name: &str) -> Result<Option<LiveContainer>, RuntimeError> {
        let docker = self.docker()?;
        let c = match self
            .rt
            .block_on(docker.inspect_container(name, None::<bollard::query_parameters::InspectContainerOptions>))
        {
            Ok(c) => c,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return Ok(None),
            Err(e) => return Err(self.unavailable(e)),
        };
        let labels = c.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        let state = c.state.as_ref();
        Ok(Some(LiveContainer {
            id: c.id.clone().unwrap_or_default(),
            name: name.to_owned(),
            managed: labels.get(LABEL_MANAGED).is_some_and(|v| v == "true"),
            spec_hash: labels.get(LABEL_SPEC).cloned(),
            running: state.and_then(|s| s.running).unwrap_or(false),
            health: state
                .and_then(|s| s.health.as_ref())
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty() && s != "none"),
            // Docker and Podman say RFC 3339 with nanoseconds; a container
            // never started says the zero time, which is no start.
            started_at: state
                .and_then(|s| s.started_at.as_deref())
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .filter(|t| t.as_second() > 0),
            depends_on: depends_on_label(&labels),
        }))
    }
}

fn depends_on_label(labels: &HashMap<String, String>) -> Vec<String> {
    labels
        .get(LABEL_DEPENDS_ON)
        .map(|v| v.split(',').filter(|d| !d.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Carry out a plan's container operations, stopping at the first failure:
/// the replaced containers are removed first, dependents before what they
/// depend on; then each is created or started in start order once its
/// dependencies run (and are healthy, where they have `[health]`), waiting
/// at most `wait` for each; the pruned ones go last. `inv` records which
/// containers tend made (the caller stores it).
pub fn apply(
    rt: &dyn Runtime,
    desired: &BTreeMap<String, ContainerSpec>,
    ops: &[ContainerOp],
    revision: &str,
    inv: &mut crate::store::Inventory,
    wait: Duration,
) -> Result<(), RuntimeError> {
    for op in ops.iter().rev() {
        if let ContainerOp::Replace { old_id, .. } = op {
            rt.remove(old_id)?;
        }
    }
    let mut ready = BTreeSet::new();
    for op in ops {
        if let ContainerOp::Create { name }
        | ContainerOp::Replace { name, .. }
        | ContainerOp::Start { name, .. }
        | ContainerOp::Restart { name, .. } = op
        {
            for dep in &desired[name].depends_on {
                if !ready.contains(dep) {
                    wait_ready(rt, name, dep, desired.get(dep), wait)?;
                    ready.insert(dep.clone());
                }
            }
        }
        match op {
            ContainerOp::Create { name } => {
                inv.containers.insert(name.clone());
                rt.create_and_start(name, &desired[name], revision)?;
            }
            ContainerOp::Replace { name, .. } => {
                rt.create_and_start(name, &desired[name], revision)?;
            }
            ContainerOp::Start { id, .. } => rt.start(id)?,
            ContainerOp::Restart { id, .. } => rt.restart(id)?,
            ContainerOp::Remove { .. } => {}
        }
    }
    for op in ops {
        if let ContainerOp::Remove { name, id } = op {
            rt.remove(id)?;
            inv.containers.remove(name);
        }
    }
    Ok(())
}

/// Wait until `dependency` runs and, when its spec has `[health]`, its
/// health command passes in it (run by tend, as the health gate does).
fn wait_ready(
    rt: &dyn Runtime,
    name: &str,
    dependency: &str,
    spec: Option<&ContainerSpec>,
    wait: Duration,
) -> Result<(), RuntimeError> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let why = match rt.inspect(dependency)? {
            None => "does not exist".to_owned(),
            Some(c) if !c.running => "is not running".to_owned(),
            Some(_) => match spec.and_then(|s| s.health.as_ref()) {
                None => return Ok(()),
                Some(h) => match rt.exec(dependency, &h.command, INSPECT_TIMEOUT) {
                    Ok(0) => return Ok(()),
                    Ok(code) => format!("is not healthy (its health command exited with {code})"),
                    Err(e) => format!("is not healthy ({e})"),
                },
            },
        };
        if std::time::Instant::now() >= deadline {
            return Err(RuntimeError::Unready {
                name: name.to_owned(),
                dependency: dependency.to_owned(),
                reason: why,
                waited: humantime::format_duration(wait).to_string(),
            });
        }
        std::thread::sleep(
            Duration::from_millis(500).min(deadline.saturating_duration_since(std::time::Instant::now())),
        );
    }
}

/// The images a plan must pull, each once, per each spec's pull policy; an
/// image that is not here under `pull = "never"` is an error.
pub fn images_to_pull<'a>(
    rt: &dyn Runtime,
    desired: &'a BTreeMap<String, ContainerSpec>,
    ops: &[ContainerOp],
) -> Result<BTreeSet<&'a str>, RuntimeError> {
    let mut pulls = BTreeSet::new();
    for op in ops {
        let (ContainerOp::Create { name } | ContainerOp::Replace { name, .. }) = op else { continue };
        let spec = &desired[name];
        let present = rt.image_present(&spec.image)?;
        match spec.pull {
            Pull::Always => {}
            Pull::IfNotPresent if !present => {}
            Pull::Never if !present => {
                return Err(RuntimeError::Failed {
                    name: name.clone(),
                    reason: format!("image {} is not present and pull = \"never\"", spec.image),
                });
            }
            _ => continue,
        }
        pulls.insert(spec.image.as_str());
    }
    Ok(pulls)
}

/// How long a container health probe waits for one answer.
pub const INSPECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A container's log (`tend fleet logs`, SPEC §4): `GET
/// /containers/NAME/logs?stdout=1&stderr=1&timestamps=1&tail=N[&since=T]` on
/// the runtime's socket, each line handed to `on_line` (a long one cut at
/// [`crate::report::logs::LINE_MAX`] bytes). Read over HTTP/1.0 by hand, not
/// through bollard, whose decoder holds a whole frame (up to 4 GiB) in memory:
/// here at most `max_read` bytes are read, within `timeout`. Ok(false) when
/// the read stopped at one of them (the log goes on).
pub fn read_logs(
    socket: &str,
    name: &str,
    tail: u64,
    since: Option<i64>,
    timeout: Duration,
    max_read: usize,
    on_line: &mut dyn FnMut(&[u8]),
) -> Result<bool, String> {
    use std::io::{Read, Write};
    let path = socket.strip_prefix("unix://").unwrap_or(socket);
    let unavailable = |e: std::io::Error| format!("container runtime at {socket}: {e}");
    let deadline = std::time::Instant::now() + timeout;
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(unavailable)?;
    stream.set_read_timeout(Some(timeout)).map_err(unavailable)?;
    stream.set_write_timeout(Some(timeout)).map_err(unavailable)?;
    // `name` is checked by the caller (`[A-Za-z0-9:_.@-]`): safe in a path.
    let since = since.map(|s| format!("&since={s}")).unwrap_or_default();
    write!(
        stream,
        "GET /containers/{name}/logs?stdout=1&stderr=1&timestamps=1&tail={tail}{since} HTTP/1.0\r\nHost: tend\r\n\r\n"
    )
    .map_err(unavailable)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let body_start = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 16 * 1024 || std::time::Instant::now() > deadline {
            return Err(format!("container runtime at {socket}: no answer to the log request"));
        }
        let n = stream.read(&mut buf).map_err(unavailable)?;
        if n == 0 {
            return Err(format!("container runtime at {socket}: closed the connection"));
        }
        head.extend_from_slice(&buf[..n]);
    };
    let text = String::from_utf8_lossy(&head[..body_start]).to_ascii_lowercase();
    let status = text.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        // The runtime's reason (`no such container`), from a capped body.
        let mut body = head[body_start..].to_vec();
        let _ = stream.take(4096).read_to_end(&mut body);
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {status}"));
        return Err(format!("container {name}: {}", msg.chars().take(200).collect::<String>()));
    }
    if text.contains("transfer-encoding: chunked") {
        return Err(format!("container runtime at {socket}: a chunked answer to an HTTP/1.0 request"));
    }
    let mut demux = Demux::new(crate::report::logs::LINE_MAX);
    let mut read = head.len() - body_start;
    demux.feed(&head[body_start..], on_line)?;
    loop {
        if read >= max_read || std::time::Instant::now() > deadline {
            return Ok(false);
        }
        let want = buf.len().min(max_read - read);
        let n = match stream.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Ok(false);
            }
            Err(e) => return Err(unavailable(e)),
        };
        if n == 0 {
            demux.finish(on_line);
            return Ok(true);
        }
        read += n;
        demux.feed(&buf[..n], on_line)?;
    }
}

/// The runtime's log stream, demultiplexed: frames of an 8-byte header
/// (stream 0-2, three zeros, a big-endian length) then the bytes, or, for a
/// container with a TTY, the raw bytes; split into lines of at most
/// `line_max` bytes (the rest of a longer line is dropped).
#[derive(Debug)]
pub struct Demux {
    /// `None` until the first byte says which: framed or raw.
    framed: Option<bool>,
    header: Vec<u8>,
    /// Bytes left in the current frame.
    left: usize,
    line: Vec<u8>,
    line_max: usize,
}

impl Demux {
    pub fn new(line_max: usize) -> Demux {
        Demux { framed: None, header: Vec::new(), left: 0, line: Vec::new(), line_max }
    }

    pub fn feed(&mut self, mut data: &[u8], on_line: &mut dyn FnMut(&[u8])) -> Result<(), String> {
        while !data.is_empty() {
            let framed = *self.framed.get_or_insert(data[0] <= 2);
            if !framed {
                self.text(data, on_line);
                return Ok(());
            }
            if self.left == 0 {
                let take = (8 - self.header.len()).min(data.len());
                self.header.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.header.len() < 8 {
                    return Ok(());
                }
                let h = std::mem::take(&mut self.header);
                if h[0] > 2 || h[1..4] != [0, 0, 0] {
                    return Err("the container runtime's log stream is not framed as expected".into());
                }
                self.left = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
                continue;
            }
            let take = self.left.min(data.len());
            self.text(&data[..take], on_line);
            self.left -= take;
            data = &data[take..];
        }
        Ok(())
    }

    fn text(&mut self, data: &[u8], on_line: &mut dyn FnMut(&[u8])) {
        for part in data.split_inclusive(|b| *b == b'\n') {
            let room = self.line_max.saturating_sub(self.line.len());
            let body = part.strip_suffix(b"\n").unwrap_or(part);
            self.line.extend_from_slice(&body[..body.len().min(room)]);
            if part.ends_with(b"\n") {
                on_line(&self.line);
                self.line.clear();
            }
        }
    }

    /// The last line, if the stream did not end with a newline.
    pub fn finish(&mut self, on_line: &mut dyn FnMut(&[u8])) {
        if !self.line.is_empty() {
            on_line(&self.line);
            self.line.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image: &str) -> ContainerSpec {
        ContainerSpec::parse(&format!("image = \"{image}\"\n"), None).unwrap()
    }
    fn live(name: &str, hash: &str, running: bool, managed: bool) -> LiveContainer {
        LiveContainer {
            id: format!("id-{name}"),
            name: name.into(),
            managed,
            spec_hash: Some(hash.into()),
            running,
            health: None,
            started_at: None,
            depends_on: Vec::new(),
        }
    }

    fn demux_all(chunks: &[&[u8]], line_max: usize) -> Result<Vec<String>, String> {
        let mut d = Demux::new(line_max);
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut |l| out.push(String::from_utf8_lossy(l).into_owned()))?;
        }
        d.finish(&mut |l| out.push(String::from_utf8_lossy(l).into_owned()));
        Ok(out)
    }

    fn frame(stream: u8, data: &[u8]) -> Vec<u8> {
        let mut f = vec![stream, 0, 0, 0];
        f.extend_from_slice(&(data.len() as u32).to_be_bytes());
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn log_streams_are_demultiplexed_and_bounded() {
        let mut all = frame(1, b"one\ntw");
        all.extend(frame(2, b"o\nthree"));
        // Cut anywhere, even inside a header, the same lines come out.
        for cut in 0..all.len() {
            let (a, b) = all.split_at(cut);
            assert_eq!(demux_all(&[a, b], 100).unwrap(), ["one", "two", "three"], "cut at {cut}");
        }
        // A TTY container's raw stream.
        assert_eq!(demux_all(&[b"raw line\nnext"], 100).unwrap(), ["raw line", "next"]);
        // A line longer than the cap is cut, the next one is whole.
        let long = frame(1, format!("{}\nok\n", "x".repeat(50)).as_bytes());
        assert_eq!(demux_all(&[&long], 10).unwrap(), ["xxxxxxxxxx", "ok"]);
        // A frame announcing 4 GiB: read as far as it goes, nothing held.
        let mut huge = vec![1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        huge.extend_from_slice(b"partial");
        assert_eq!(demux_all(&[&huge], 100).unwrap(), ["partial"]);
        // A header that is not one.
        let mut bad = frame(1, b"a\n");
        bad.extend_from_slice(&[1, 9, 9, 9, 0, 0, 0, 1, b'x']);
        assert!(demux_all(&[&bad], 100).is_err());
    }

    #[test]
    fn table() {
        let a = spec("a:1");
        let desired: BTreeMap<String, ContainerSpec> = [("web".to_string(), a.clone())].into();
        assert_eq!(plan(&desired, &[], true), vec![ContainerOp::Create { name: "web".into() }]);
        assert!(plan(&desired, &[live("web", &a.hash(), true, true)], true).is_empty());
        assert_eq!(
            plan(&desired, &[live("web", "old", true, true)], true),
            vec![ContainerOp::Replace { name: "web".into(), old_id: "id-web".into(), because: None }]
        );
        assert_eq!(
            plan(&desired, &[live("web", &a.hash(), false, true)], true),
            vec![ContainerOp::Start { name: "web".into(), id: "id-web".into() }]
        );
        let extra =
            [live("web", &a.hash(), true, true), live("old", "x", true, true), live("theirs", "x", true, false)];
        assert_eq!(plan(&desired, &extra, true), vec![ContainerOp::Remove { name: "old".into(), id: "id-old".into() }]);
        assert!(plan(&desired, &extra, false).is_empty());
    }

    fn dependent(image: &str, deps: &[&str], recreate: bool) -> ContainerSpec {
        let mut s = spec(image);
        s.depends_on = deps.iter().map(|d| d.to_string()).collect();
        s.recreate_with_dependencies = recreate;
        s
    }
    fn names(ops: &[ContainerOp]) -> Vec<String> {
        ops.iter().map(ToString::to_string).collect()
    }
    fn at(c: LiveContainer, second: i64) -> LiveContainer {
        LiveContainer { started_at: Some(jiff::Timestamp::from_second(second).unwrap()), ..c }
    }

    #[test]
    fn created_in_start_order_and_pruned_dependents_first() {
        // Names sort the other way round from the dependencies.
        let desired: BTreeMap<String, ContainerSpec> = [
            ("a-web".to_string(), dependent("w:1", &["b-api"], false)),
            ("b-api".to_string(), dependent("a:1", &["c-db"], false)),
            ("c-db".to_string(), spec("d:1")),
        ]
        .into();
        assert_eq!(
            names(&plan(&desired, &[], true)),
            ["create  container c-db", "create  container b-api", "create  container a-web"]
        );
        // Pruned, labelled with what they depended on: dependents first.
        let mut old =
            vec![live("x-db", "h", true, true), live("y-api", "h", true, true), live("z-web", "h", true, true)];
        old[0].depends_on = vec![];
        old[1].depends_on = vec!["x-db".into()];
        old[2].depends_on = vec!["y-api".into()];
        old.reverse();
        let ops = plan(&BTreeMap::new(), &old, true);
        assert_eq!(names(&ops), ["remove  container z-web", "remove  container y-api", "remove  container x-db"]);
        // The hash ignores the order: adding depends_on replaces nothing.
        assert_eq!(dependent("w:1", &["b-api"], true).hash(), spec("w:1").hash());
    }

    #[test]
    fn a_dependent_started_before_its_dependency_is_restarted_and_recreated_only_when_it_asks() {
        let (db, api, web) = (spec("d:1"), dependent("a:1", &["db"], true), dependent("w:1", &["api"], false));
        let desired: BTreeMap<String, ContainerSpec> =
            [("db".to_string(), db.clone()), ("api".to_string(), api.clone()), ("web".to_string(), web.clone())].into();
        let up = |db_at, api_at, web_at| {
            vec![
                at(live("db", &db.hash(), true, true), db_at),
                at(live("api", &api.hash(), true, true), api_at),
                at(live("web", &web.hash(), true, true), web_at),
            ]
        };
        assert!(plan(&desired, &up(10, 20, 30), true).is_empty());
        // Equal times are not out of order.
        assert!(plan(&desired, &up(10, 10, 10), true).is_empty());
        // db restarted after api (a runtime restarting everything): api
        // restarted, and web after it.
        assert_eq!(
            names(&plan(&desired, &up(40, 20, 30), true)),
            [
                "restart container api (it started before its dependency db)",
                "restart container web (it started before its dependency api)"
            ]
        );
        // Without start times (nothing inspected), nothing is inferred.
        let mut unknown = up(40, 20, 30);
        unknown.iter_mut().for_each(|c| c.started_at = None);
        assert!(plan(&desired, &unknown, true).is_empty());
        // db stopped: started, and what depends on it restarted after.
        let mut stopped = up(10, 20, 30);
        stopped[0].running = false;
        assert_eq!(
            names(&plan(&desired, &stopped, true)),
            [
                "start   container db (was stopped)",
                "restart container api (it started before its dependency db)",
                "restart container web (it started before its dependency api)"
            ]
        );
        // db replaced: api asks to be recreated with it, web does not.
        let mut changed = up(10, 20, 30);
        changed[0].spec_hash = Some("old".into());
        assert_eq!(
            names(&plan(&desired, &changed, true)),
            [
                "replace container db (its spec changed)",
                "replace container api (its dependency db was replaced)",
                "restart container web (it started before its dependency api)"
            ]
        );
    }
}
