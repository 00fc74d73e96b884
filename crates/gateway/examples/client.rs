//! A tiny command-line fanout client for demos and debugging.
//!
//! ```text
//! cargo run --example client -- --token "$TOKEN" [--url ws://127.0.0.1:8080/ws] [--subscribe lobby]
//! ```
//!
//! Prints every frame it receives, one JSON object per line. Each line typed
//! on stdin is sent as a frame (write JSON: `{"type":"publish","room":"lobby","event":"chat","data":"hi"}`).

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

struct Args {
    url: String,
    token: String,
    subscribe: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut url = "ws://127.0.0.1:8080/ws".to_string();
    let mut token = None;
    let mut subscribe = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--url" => url = value()?,
            "--token" => token = Some(value()?),
            "--subscribe" => subscribe.push(value()?),
            other => anyhow::bail!("unknown argument {other}; use --url, --token, --subscribe"),
        }
    }
    let token = token.context("--token is required (mint one with `fanout token`)")?;
    Ok(Args {
        url,
        token,
        subscribe,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let mut request = args.url.as_str().into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("fanout.json"),
    );
    request.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {}", args.token))?,
    );
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("cannot connect to {}", args.url))?;
    let (mut sink, mut stream) = ws.split();
    for (i, room) in args.subscribe.iter().enumerate() {
        let frame = serde_json::json!({"type": "subscribe", "id": i + 1, "room": room});
        sink.send(Message::Text(frame.to_string().into())).await?;
    }
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => println!("{t}"),
                Some(Ok(Message::Close(frame))) => {
                    match frame {
                        Some(f) => eprintln!("closed: {} {}", u16::from(f.code), f.reason),
                        None => eprintln!("closed"),
                    }
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            line = stdin.next_line(), if stdin_open => match line? {
                Some(line) if !line.trim().is_empty() => sink.send(Message::Text(line.into())).await?,
                Some(_) => {}
                None => stdin_open = false,
            },
        }
    }
}
