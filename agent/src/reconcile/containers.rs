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
//! - a no-op costs one labelled list call, not one call per container.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use crate::bundle::{ContainerSpec, Pull, parse_port};

pub const LABEL_MANAGED: &str = "io.tend.managed";
pub const LABEL_SPEC: &str = "io.tend.spec";
pub const LABEL_REVISION: &str = "io.tend.revision";

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
}

impl RuntimeError {
    pub fn is_transient(&self) -> bool {
        !matches!(self, RuntimeError::Conflict { .. })
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
    fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// One container's state (for health), by name.
    fn inspect(&self, name: &str) -> Result<Option<LiveContainer>, RuntimeError>;
    /// Run `command` in the container; Ok(exit code). tend runs a spec's
    /// `[health]` command itself this way, so health gates the revision even
    /// where the runtime schedules no healthchecks (Podman without systemd).
    fn exec(&self, name: &str, command: &[String], timeout: Duration) -> Result<i64, RuntimeError>;
}

/// What to do with one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerOp {
    Create { name: String },
    Replace { name: String, old_id: String },
    Start { name: String, id: String },
    Remove { name: String, id: String },
}

impl std::fmt::Display for ContainerOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContainerOp::Create { name } => write!(f, "create  container {name}"),
            ContainerOp::Replace { name, .. } => write!(f, "replace container {name} (its spec changed)"),
            ContainerOp::Start { name, .. } => write!(f, "start   container {name} (was stopped)"),
            ContainerOp::Remove { name, .. } => write!(f, "remove  container {name}"),
        }
    }
}

/// Pure: the operations taking `live` (tend's containers) to `desired`.
pub fn plan(desired: &BTreeMap<String, ContainerSpec>, live: &[LiveContainer], prune: bool) -> Vec<ContainerOp> {
    let by_name: HashMap<&str, &LiveContainer> =
        live.iter().filter(|c| c.managed).map(|c| (c.name.as_str(), c)).collect();
    let mut ops = Vec::new();
    for (name, spec) in desired {
        match by_name.get(name.as_str()) {
            None => ops.push(ContainerOp::Create { name: name.clone() }),
            Some(c) if c.spec_hash.as_deref() != Some(spec.hash().as_str()) => {
                ops.push(ContainerOp::Replace { name: name.clone(), old_id: c.id.clone() })
            }
            Some(c) if !c.running => ops.push(ContainerOp::Start { name: name.clone(), id: c.id.clone() }),
            Some(_) => {}
        }
    }
    if prune {
        for c in live.iter().filter(|c| c.managed && !desired.contains_key(&c.name)) {
            ops.push(ContainerOp::Remove { name: c.name.clone(), id: c.id.clone() });
        }
    }
    ops
}

/// The default socket: the first of Podman's and Docker's usual sockets found.
pub fn default_socket() -> Option<String> {
    ["/run/podman/podman.sock", "/var/run/docker.sock", "/run/docker.sock"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .map(|p| format!("unix://{p}"))
}

/// The runtime at `socket` as a name and a version (`podman 4.3.1`), from
/// the Engine API's `GET /version`, read as plain JSON on a connection of
/// its own: bollard's typed answer would bring its decoder into the gateway
/// binary for two fields (as `GET /info`'s did, decision 0004).
pub fn engine_version(socket: &str) -> Result<Option<String>, RuntimeError> {
    use std::io::{Read, Write};
    let path = socket.strip_prefix("unix://").unwrap_or(socket);
    let fail =
        |e: &dyn std::fmt::Display| RuntimeError::Unavailable { socket: socket.to_owned(), reason: e.to_string() };
    let io = |e: std::io::Error| fail(&e);
    let mut conn = std::os::unix::net::UnixStream::connect(path).map_err(io)?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).map_err(io)?;
    conn.set_write_timeout(Some(Duration::from_secs(5))).map_err(io)?;
    conn.write_all(b"GET /version HTTP/1.0\r\nHost: tend\r\nConnection: close\r\n\r\n").map_err(io)?;
    let mut answer = Vec::new();
    conn.take(64 * 1024).read_to_end(&mut answer).map_err(io)?;
    let body = answer.windows(4).position(|w| w == b"\r\n\r\n").map_or(&[][..], |at| &answer[at + 4..]);
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| fail(&e))?;
    let names = v["Components"].as_array().into_iter().flatten().filter_map(|c| c["Name"].as_str());
    Ok(crate::inventory::runtime_label(names, v["Version"].as_str().unwrap_or("")))
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
        }))
    }
}

/// Carry out a plan's container operations in order, stopping at the first
/// failure; `inv` records which containers tend made (the caller stores it).
pub fn apply(
    rt: &dyn Runtime,
    desired: &BTreeMap<String, ContainerSpec>,
    ops: &[ContainerOp],
    revision: &str,
    inv: &mut crate::store::Inventory,
) -> Result<(), RuntimeError> {
    for op in ops {
        match op {
            ContainerOp::Create { name } => {
                inv.containers.insert(name.clone());
                rt.create_and_start(name, &desired[name], revision)?;
            }
            ContainerOp::Replace { name, old_id } => {
                rt.remove(old_id)?;
                rt.create_and_start(name, &desired[name], revision)?;
            }
            ContainerOp::Start { id, .. } => rt.start(id)?,
            ContainerOp::Remove { name, id } => {
                rt.remove(id)?;
                inv.containers.remove(name);
            }
        }
    }
    Ok(())
}

/// Ensure every image a plan needs is present, per each spec's pull policy.
pub fn ensure_images(
    rt: &dyn Runtime,
    desired: &BTreeMap<String, ContainerSpec>,
    ops: &[ContainerOp],
) -> Result<(), RuntimeError> {
    for op in ops {
        let (ContainerOp::Create { name } | ContainerOp::Replace { name, .. }) = op else { continue };
        let spec = &desired[name];
        let present = rt.image_present(&spec.image)?;
        match spec.pull {
            Pull::Always => rt.pull(&spec.image)?,
            Pull::IfNotPresent if !present => rt.pull(&spec.image)?,
            Pull::Never if !present => {
                return Err(RuntimeError::Failed {
                    name: name.clone(),
                    reason: format!("image {} is not present and pull = \"never\"", spec.image),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// How long a container health probe waits for one answer.
pub const INSPECT_TIMEOUT: Duration = Duration::from_secs(10);

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
        }
    }

    #[test]
    fn table() {
        let a = spec("a:1");
        let desired: BTreeMap<String, ContainerSpec> = [("web".to_string(), a.clone())].into();
        assert_eq!(plan(&desired, &[], true), vec![ContainerOp::Create { name: "web".into() }]);
        assert!(plan(&desired, &[live("web", &a.hash(), true, true)], true).is_empty());
        assert_eq!(
            plan(&desired, &[live("web", "old", true, true)], true),
            vec![ContainerOp::Replace { name: "web".into(), old_id: "id-web".into() }]
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
}
