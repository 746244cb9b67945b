//! A small HTTP/1.1 client for the server's API (`imgbuild status`, the lab, tests): GET and form POST.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// A request failed: unreachable server, timeout, bad URL or a non-2xx answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host[:port]/path` (HTTPS is not supported) or makes no valid request; holds the URL
    /// as given (and the reason, in the second case).
    #[error("{0:?} is not an http://host:port/path URL")]
    BadUrl(String),
    /// No answer: the connection failed or broke, or nothing came back within the timeout. Check that
    /// `imgbuild serve` runs and that the address and port are right.
    #[error("cannot reach {url}: {detail}")]
    Unreachable {
        /// The URL requested.
        url: String,
        /// What went wrong, e.g. `Connection refused` or `no answer within 5s`.
        detail: String,
    },
    /// The server answered with a status outside 200..=299.
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

fn split(url: &str) -> Result<(String, String), ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::BadUrl(url.into()))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(ClientError::BadUrl(url.into()));
    }
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    Ok((host, path.to_string()))
}

async fn request(
    method: &str,
    url: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<String, ClientError> {
    let (host, path) = split(url)?;
    let unreachable = |detail: String| ClientError::Unreachable {
        url: url.to_string(),
        detail,
    };
    let work = async {
        let stream = tokio::net::TcpStream::connect(&host)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(&path)
            .header(hyper::header::HOST, &host);
        if body.is_some() {
            req = req.header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::BadUrl(format!("{url}: {e}")))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if !(200..300).contains(&status) {
            return Err(ClientError::Status {
                url: url.to_string(),
                status,
                body: text.chars().take(300).collect(),
            });
        }
        Ok(text)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
}

/// `GET url`, the body as text (5 s timeout).
pub async fn get(url: &str) -> Result<String, ClientError> {
    request("GET", url, None, Duration::from_secs(5)).await
}

/// `POST url` with a form body (`a=b&c=d`, already encoded), the answer as text (5 s timeout).
pub async fn post_form(url: &str, form: &str) -> Result<String, ClientError> {
    request("POST", url, Some(form.to_string()), Duration::from_secs(5)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_path() {
        assert_eq!(
            split("http://10.77.0.1:8080/api/status").unwrap(),
            ("10.77.0.1:8080".into(), "/api/status".into())
        );
        assert_eq!(
            split("http://localhost").unwrap(),
            ("localhost:80".into(), "/".into())
        );
        assert!(split("https://x/").is_err());
        assert!(split("http:///x").is_err());
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
