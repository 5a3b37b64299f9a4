//! The monitoring half, real: `tend fleet serve`, Prometheus, node_exporter,
//! and headless Chromium driven over the DevTools protocol. Every server binds
//! 127.0.0.1 and is killed when its handle drops.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{free_port, tend_bin, wait_for_port};

/// A `/proc/PID/FILE` figure in KiB (`VmRSS:` of `status`, `Pss:` of
/// `smaps_rollup`, …); 0 when the process or the key is gone.
pub fn proc_kib(pid: u32, file: &str, key: &str) -> i64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.split_whitespace().next().unwrap_or("0").parse().unwrap_or(0)))
        .unwrap_or(0)
}

/// The median of some timings.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Kill a child and reap it.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A plain HTTP/1.1 GET on 127.0.0.1: (status code, headers, body). Reads a
/// `content-length` body, a chunked one, or up to the end.
pub fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect :{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut buf).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(n > 0, "GET {path}: connection closed before the response head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    let mut body = raw[split + 4..].to_vec();
    let read_more = |s: &mut TcpStream, body: &mut Vec<u8>| -> bool {
        let mut buf = [0u8; 16384];
        match s.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                body.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) => panic!("GET {path}: {e}"),
        }
    };
    if let Some(len) = header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        while body.len() < len && read_more(&mut s, &mut body) {}
        body.truncate(len);
    } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        while !body.windows(5).any(|w| w == b"0\r\n\r\n") && read_more(&mut s, &mut body) {}
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    } else {
        while read_more(&mut s, &mut body) {}
    }
    (code, head, body)
}

/// `tend fleet serve` against a broker.
pub struct FleetServe {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl FleetServe {
    pub fn start(dir: &Path, mqtt_url: &str, extra: &[&str]) -> FleetServe {
        let port = free_port();
        let log = dir.join(format!("fleet-serve-{port}.log"));
        let mut child = Command::new(tend_bin())
            .args(["fleet", "serve", "--mqtt", mqtt_url, "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("TEND_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for_port(port, &mut child, "tend fleet serve");
        FleetServe { child, port, log }
    }

    pub fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        http_get(self.port, path, &[])
    }

    pub fn json(&self, path: &str) -> Value {
        let (code, _, body) = self.get(path);
        assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e})"))
    }

    /// Wait until `/api/devices` satisfies `cond`.
    pub fn wait(&self, what: &str, timeout: Duration, cond: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let v = self.json("/api/devices");
            if cond(&v) {
                return v;
            }
            assert!(start.elapsed() < timeout, "timed out waiting for {what}: {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FleetServe {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Debian's `prometheus`, with its own config and storage.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrape each `(job, port)` every second.
    pub fn start(targets: &[(&str, u16)], rules: Option<&Path>) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut conf = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
        if let Some(r) = rules {
            conf.push_str(&format!("rule_files:\n  - {}\n", r.display()));
        }
        conf.push_str("scrape_configs:\n");
        for (job, p) in targets {
            conf.push_str(&format!("  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{p}']\n"));
        }
        std::fs::write(dir.path().join("prometheus.yml"), conf).unwrap();
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("prometheus (Debian's prometheus package; tests/run installs it)");
        wait_for_port(port, &mut child, "prometheus");
        let start = Instant::now();
        while http_get(port, "/-/ready", &[]).0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(30), "prometheus never became ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        Prometheus { child, port, dir }
    }

    /// An instant query: the result vector.
    pub fn query(&self, q: &str) -> Vec<Value> {
        let enc: String = q
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let (code, _, body) = http_get(self.port, &format!("/api/v1/query?query={enc}"), &[]);
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert_eq!(code, 200, "{q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Wait until the query's single value satisfies `cond`.
    pub fn wait_value(&self, q: &str, timeout: Duration, cond: impl Fn(f64) -> bool) -> f64 {
        let start = Instant::now();
        loop {
            let r = self.query(q);
            let value = r.first().and_then(|s| s["value"][1].as_str()).and_then(|v| v.parse::<f64>().ok());
            if let Some(v) = value
                && cond(v)
            {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {q}: {r:?}\n{}",
                std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Debian's `prometheus-node-exporter` with only the textfile collector.
pub struct NodeExporter {
    child: Child,
    pub port: u16,
}

impl NodeExporter {
    pub fn start(textfile_dir: &Path) -> NodeExporter {
        let port = free_port();
        let mut child = Command::new("prometheus-node-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(["--collector.disable-defaults", "--collector.textfile"])
            .arg(format!("--collector.textfile.directory={}", textfile_dir.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-node-exporter (tests/run installs it)");
        wait_for_port(port, &mut child, "node_exporter");
        NodeExporter { child, port }
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Headless Chromium with one page, driven over the DevTools protocol.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Browser {
    pub fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let port = free_port();
        // Its own process group: Debian's `chromium` is a script that starts
        // the browser, which starts more processes; all of them go at drop.
        let mut child = Command::new("chromium")
            .process_group(0)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
            .args(["--window-size=1280,900", "--remote-allow-origins=*"])
            .arg(format!("--remote-debugging-port={port}"))
            .arg("--remote-debugging-address=127.0.0.1")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium (tests/run installs it)");
        wait_for_port(port, &mut child, "chromium");
        // The page target's WebSocket.
        let start = Instant::now();
        let ws_url = loop {
            let (_, _, body) = http_get(port, "/json/list", &[]);
            let list: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if let Some(u) = list
                .as_array()
                .and_then(|l| l.iter().find(|t| t["type"] == "page"))
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            {
                break u.to_owned();
            }
            assert!(start.elapsed() < Duration::from_secs(20), "chromium has no page: {list}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (ws, _) = tungstenite::client(ws_url.as_str(), stream).expect("DevTools WebSocket");
        Browser { child, _profile: profile, ws, next_id: 1 }
    }

    /// One DevTools command; its result (events in between are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(tungstenite::Message::text(msg)).expect("send to chromium");
        loop {
            let m = self.ws.read().expect("read from chromium");
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    pub fn navigate(&mut self, url: &str) {
        self.call("Page.enable", json!({}));
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// Evaluate `expr` in the page; its value.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({ "expression": expr, "returnByValue": true }));
        r["result"]["value"].clone()
    }

    /// Wait until `expr` evaluates to true.
    pub fn wait(&mut self, what: &str, timeout: Duration, expr: &str) {
        let start = Instant::now();
        while self.eval(expr) != Value::Bool(true) {
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what} in the page; its text:\n{}",
                self.eval("document.body ? document.body.innerText : ''")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the page.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        base64_decode(r["data"].as_str().expect("screenshot data"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        stop(&mut self.child);
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, c)| acc | (u32::from(val(*c)) << (18 - 6 * i)));
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

/// Publish retained messages fast: one raw MQTT 3.1.1 connection writing
/// PUBLISH packets (QoS 0, retained) back to back, then a PINGREQ whose answer
/// says the broker has read them all. Payloads are bytes: anything at all.
pub fn publish_retained(port: u16, messages: &[(String, Vec<u8>)]) {
    publish_retained_at(port, messages, 0)
}

/// [`publish_retained`] at `qos` 0 or 1. At QoS 1 the broker keeps each
/// message at QoS 1, as a gateway's own retained status is kept, and sends
/// it to a QoS 1 subscriber at QoS 1 (a retained message goes out at the
/// lower of its own QoS and the subscription's). The broker's PUBACKs are
/// read on a thread; the PINGRESP after them says all were taken.
pub fn publish_retained_at(port: u16, messages: &[(String, Vec<u8>)], qos: u8) {
    assert!(qos <= 1, "QoS 0 or 1");
    fn remaining(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                break;
            }
        }
    }
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let id = format!("raw-{}", fastrand::u32(..));
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut pkt = vec![0x10];
    remaining(body.len(), &mut pkt);
    pkt.extend_from_slice(&body);
    s.write_all(&pkt).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK");
    // What the broker sends back: PUBACKs (4 bytes each), then the PINGRESP.
    let mut reader = s.try_clone().unwrap();
    let acks = std::thread::spawn(move || {
        let (mut pubacks, mut head) = (0usize, [0u8; 2]);
        loop {
            reader.read_exact(&mut head).unwrap();
            match head {
                [0x40, 2] => {
                    let mut id = [0u8; 2];
                    reader.read_exact(&mut id).unwrap();
                    pubacks += 1;
                }
                [0xD0, 0] => return pubacks,
                other => panic!("unexpected packet from the broker: {other:?}"),
            }
        }
    });
    let mut buf = Vec::with_capacity(1 << 20);
    for (i, (topic, payload)) in messages.iter().enumerate() {
        let mut body = Vec::with_capacity(4 + topic.len() + payload.len());
        body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        if qos == 1 {
            // Packet ids 1..=65535, reused in turn.
            body.extend_from_slice(&((i % 65_535 + 1) as u16).to_be_bytes());
        }
        body.extend_from_slice(payload);
        buf.push(if qos == 1 { 0x33 } else { 0x31 }); // PUBLISH, retain, at `qos`
        remaining(body.len(), &mut buf);
        buf.extend_from_slice(&body);
        if buf.len() > (1 << 20) {
            s.write_all(&buf).unwrap();
            buf.clear();
        }
    }
    buf.extend_from_slice(&[0xC0, 0]); // PINGREQ
    s.write_all(&buf).unwrap();
    let pubacks = acks.join().expect("the broker's answers");
    assert_eq!(pubacks, if qos == 1 { messages.len() } else { 0 }, "PUBACKs");
    let _ = s.write_all(&[0xE0, 0]); // DISCONNECT
}
