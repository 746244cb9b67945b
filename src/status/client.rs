//! The HTTP client for the server's API (`imgbuild status`, the lab, tests): GET and form POST, with ureq (the
//! one HTTP client crate: `imgbuild fetch` downloads with it too), run on tokio's blocking pool. Every answer
//! must carry the `Server: imgbuild/…` header the server sends: anything else listening at the address (a
//! router's web page, another service's 404) is reported as not an imgbuild server instead of as a server bug.

use std::time::Duration;

/// The `Server` header value of every imgbuild answer starts with this.
pub const SERVER_HEADER_PREFIX: &str = "imgbuild/";

/// A request failed: unreachable server, timeout, bad URL, not an imgbuild server, or a non-2xx answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host[:port]/path` (HTTPS is not supported) or makes no valid request; holds the URL
    /// as given (and the reason, in the second case).
    #[error("{0:?} is not an http://host:port/path URL")]
    BadUrl(String),
    /// No answer: the connection failed or broke, or nothing came back within the timeout. Check that
    /// `imgbuild serve` runs and that the address and port are right.
    #[error(
        "cannot reach {url}: {detail}; is `imgbuild serve` running there ([network] server and http_port)?"
    )]
    Unreachable {
        /// The URL requested.
        url: String,
        /// What went wrong, e.g. `Connection refused` or `no answer within 5s`.
        detail: String,
    },
    /// Something answered, but not an imgbuild server (no `Server: imgbuild/…` header).
    #[error(
        "{url} answered HTTP {status} (Server: {server}), but it is not an imgbuild server: another program listens at that address and port. Give the right one with --server, or check [network] server and http_port in cluster.toml"
    )]
    NotImgbuild {
        /// The URL requested.
        url: String,
        /// The HTTP status code it answered.
        status: u16,
        /// Its `Server` header, or `none`.
        server: String,
    },
    /// The imgbuild server answered with a status outside 200..=299.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the answer's body (at most 300 characters), usually the server's explanation.
        body: String,
    },
}

fn check_url(url: &str) -> Result<(), ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::BadUrl(url.into()))?;
    if rest.split('/').next().unwrap_or("").is_empty() {
        return Err(ClientError::BadUrl(url.into()));
    }
    Ok(())
}

fn blocking(url: &str, form: Option<&str>, timeout: Duration) -> Result<String, ClientError> {
    check_url(url)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let res = match form {
        Some(f) => agent
            .post(url)
            .content_type("application/x-www-form-urlencoded")
            .send(f),
        None => agent.get(url).call(),
    };
    let mut resp = res.map_err(|e| match e {
        ureq::Error::Http(_) | ureq::Error::BadUri(_) => ClientError::BadUrl(url.into()),
        other => ClientError::Unreachable {
            url: url.into(),
            detail: other.to_string(),
        },
    })?;
    let status = resp.status().as_u16();
    let server = resp
        .headers()
        .get("server")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string();
    if !server.starts_with(SERVER_HEADER_PREFIX) {
        return Err(ClientError::NotImgbuild {
            url: url.into(),
            status,
            server,
        });
    }
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| ClientError::Unreachable {
            url: url.into(),
            detail: e.to_string(),
        })?;
    if !(200..300).contains(&status) {
        return Err(ClientError::Status {
            url: url.into(),
            status,
            body: text.chars().take(300).collect(),
        });
    }
    Ok(text)
}

async fn request(
    url: &str,
    form: Option<String>,
    timeout: Duration,
) -> Result<String, ClientError> {
    let u = url.to_string();
    tokio::task::spawn_blocking(move || blocking(&u, form.as_deref(), timeout))
        .await
        .map_err(|e| ClientError::Unreachable {
            url: url.into(),
            detail: e.to_string(),
        })?
}

/// `GET url`, the body as text (5 s timeout).
pub async fn get(url: &str) -> Result<String, ClientError> {
    request(url, None, Duration::from_secs(5)).await
}

/// `POST url` with a form body (`a=b&c=d`, already encoded), the answer as text (5 s timeout).
pub async fn post_form(url: &str, form: &str) -> Result<String, ClientError> {
    request(url, Some(form.to_string()), Duration::from_secs(5)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_with_a_host() {
        assert!(check_url("http://10.77.0.1:8080/api/status").is_ok());
        assert!(check_url("http://localhost").is_ok());
        assert!(check_url("https://x/").is_err());
        assert!(check_url("http:///x").is_err());
    }

    #[tokio::test]
    async fn another_program_at_the_address_is_not_an_imgbuild_server() {
        // A bare HTTP server that answers 404 to everything, like some other service on the port.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            if let Ok((mut c, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let _ = c.write_all(b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found");
            }
        });
        let err = get(&format!("http://{addr}/api/status")).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ClientError::NotImgbuild { status: 404, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("not an imgbuild server") && msg.contains("Server: nginx"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn unreachable_server_is_a_clear_error() {
        // Port 9 (discard) on loopback: nothing listens there in the test environment.
        let err = get("http://127.0.0.1:9/api/status").await.unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot reach http://127.0.0.1:9/api/status"),
            "{err}"
        );
    }
}
