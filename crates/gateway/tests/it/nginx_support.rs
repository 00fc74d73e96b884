//! A real nginx (Debian's package) in front of test nodes, running the
//! repository's `nginx/fanout.conf` and `nginx/fanout-locations.conf` as
//! shipped, on a free loopback port with a certificate made at test time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep};

use crate::redis_support::{TempDir, free_port, log_tail};
use crate::tls::TestCert;

/// The nginx binary the tests run; installed by scripts/install-test-deps.sh.
const NGINX: &str = "/usr/sbin/nginx";

fn repo_nginx_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nginx")
}

/// Fails (never skips) with what to install when nginx is missing.
pub fn require_nginx() {
    assert!(
        Path::new(NGINX).exists(),
        "these tests run a real nginx, and {NGINX} is missing: install Debian's \
         nginx package (scripts/install-test-deps.sh does, as root)"
    );
}

/// `nginx -t` on a configuration file; Ok or nginx's complaint.
pub fn nginx_check(prefix: &Path, conf: &Path) -> Result<(), String> {
    require_nginx();
    let out = Command::new(NGINX)
        .arg("-t")
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(conf)
        .output()
        .expect("run nginx -t");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A running nginx; stopped on drop.
pub struct Nginx {
    pub port: u16,
    pub cert: TestCert,
    dir: TempDir,
    child: Option<Child>,
}

impl Nginx {
    /// Starts nginx on 127.0.0.1:<free port> (TLS) in front of `nodes`.
    pub async fn start(nodes: &[SocketAddr]) -> Self {
        require_nginx();
        let dir = TempDir::new("nginx");
        let cert = TestCert::new();
        let port = free_port();
        let d = dir.path().display();
        let repo = repo_nginx_dir()
            .canonicalize()
            .expect("nginx/ in the repository");
        let upstreams: String = nodes
            .iter()
            .map(|a| format!("server {a} max_fails=1 fail_timeout=10s;\n"))
            .collect();
        std::fs::write(dir.path().join("fanout-nodes.conf"), upstreams).expect("write nodes");
        for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(dir.path().join("tmp").join(t)).expect("temp dirs");
        }
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
               fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n\
               scgi_temp_path {d}/tmp/scgi;\n\
               include {repo}/fanout.conf;\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n\
                 ssl_certificate {cert_file};\n    ssl_certificate_key {key_file};\n\
                 include {repo}/fanout-locations.conf;\n  }}\n}}\n",
            repo = repo.display(),
            cert_file = cert.config().cert_file.display(),
            key_file = cert.config().key_file.display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        if let Err(e) = nginx_check(dir.path(), &conf_path) {
            panic!("nginx refused the configuration:\n{e}");
        }
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Nginx {
            port,
            cert,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {port}:\n{}",
                nginx.log()
            );
            sleep(Duration::from_millis(50)).await;
        }
        nginx
    }

    /// The tail of nginx's error log.
    pub fn log(&self) -> String {
        log_tail(&self.dir.path().join("error.log"), 40)
    }

    /// `wss://localhost:<port>/ws`.
    pub fn wss_url(&self) -> String {
        format!("wss://localhost:{}/ws", self.port)
    }

    /// One HTTPS request through nginx; returns (status, body).
    pub async fn https(&self, method: &str, path: &str, bearer: &str, body: &str) -> (u16, String) {
        let tcp = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to nginx");
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.cert.client()));
        let mut tls = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake with nginx");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {bearer}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut reply))
            .await
            .expect("reply in time")
            .ok();
        let status = reply
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = reply
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        (status, body)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
