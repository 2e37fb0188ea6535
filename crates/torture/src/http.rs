//! A tiny HTTP/1.1 client (one request per connection) with a deadline.

use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
}

/// Why a request produced no HTTP response.
#[derive(Debug)]
pub enum HttpError {
    /// Could not connect: the request was never sent.
    Connect(String),
    /// Sent (or partly sent) but no complete answer: outcome unknown.
    Unknown(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Connect(e) => write!(f, "connect: {e}"),
            HttpError::Unknown(e) => write!(f, "{e}"),
        }
    }
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Resp, HttpError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(HttpError::Connect(format!("{addr}: {e}"))),
        Err(_) => return Err(HttpError::Connect(format!("{addr}: connect timed out"))),
    };
    let _ = stream.set_nodelay(true);
    let body_bytes = body.map(|b| b.to_string().into_bytes());
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(b) = &body_bytes {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    let mut msg = head.into_bytes();
    if let Some(b) = body_bytes {
        msg.extend_from_slice(&b);
    }
    let io = async {
        stream.write_all(&msg).await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout_at(deadline, io).await {
        Ok(Ok(buf)) => buf,
        Ok(Err(e)) => return Err(HttpError::Unknown(format!("io: {e}"))),
        Err(_) => return Err(HttpError::Unknown("timed out".into())),
    };
    parse(&buf).map_err(HttpError::Unknown)
}

fn parse(buf: &[u8]) -> Result<Resp, String> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("incomplete response (connection closed)")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let raw = &buf[end + 4..];
    let data = if chunked { dechunk(raw)? } else { raw.to_vec() };
    let body = if data.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&data).unwrap_or(Value::Null)
    };
    Ok(Resp { status, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk")?;
        let size_str = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}
