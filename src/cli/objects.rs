//! `put`, `delete`, `get`, `list`: objects through the sidecar.

use super::*;

/// `walship put KEY [FILE]`.
pub(super) async fn put(
    cli: &Cli,
    key: &str,
    file: &Option<PathBuf>,
    mode: &Option<String>,
) -> Result<(), Failure> {
    let body = match file.as_deref() {
        None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            return Err(fail(
                2,
                format!(
                    "no FILE given and standard input is a terminal: pass a FILE (`walship put {key} FILE`), \
                     or pipe the data in (`... | walship put {key}`, or `-` to type it, ending with Ctrl-D)"
                ),
            ));
        }
        None => read_stdin()?,
        Some(p) if p == Path::new("-") => read_stdin()?,
        Some(p) => {
            std::fs::read(p).map_err(|e| fail(1, format!("reading {}: {e}", p.display())))?
        }
    };
    let v = write(cli, reqwest::Method::PUT, key, Some(body), mode.as_deref()).await?;
    if !cli.json {
        println!("seq {} acked by {} ({})", v.seq, join(&v.acked_by), v.mode);
    }
    Ok(())
}

/// `walship delete KEY`.
pub(super) async fn delete(cli: &Cli, key: &str, mode: &Option<String>) -> Result<(), Failure> {
    let v = write(cli, reqwest::Method::DELETE, key, None, mode.as_deref()).await?;
    if !cli.json {
        println!("deleted at seq {} acked by {}", v.seq, join(&v.acked_by));
    }
    Ok(())
}

/// `walship get KEY`: the value on standard output.
pub(super) async fn get(
    cli: &Cli,
    key: &str,
    read_preference: &Option<String>,
) -> Result<(), Failure> {
    let e = endpoints(cli)?;
    let c = Client::connect(&e).await?;
    let mut r = c.req(reqwest::Method::GET, &object_path(key)?);
    if let Some(p) = read_preference {
        r = r.query(&[("read_preference", p)]);
    }
    let resp = check(r.send().await.map_err(|err| unreachable(&e.addr, err))?).await?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (served_by, seq, content_type) = (
        header("x-walship-served-by"),
        header("x-walship-seq").and_then(|s| s.parse::<u64>().ok()),
        header("content-type"),
    );
    let bytes = resp
        .bytes()
        .await
        .map_err(|err| fail(1, format!("reading the answer: {err}")))?;
    if cli.json {
        // The value (as text when it is UTF-8; a binary one is only
        // flagged: `get` without --json writes its bytes) and where
        // it came from.
        let value = std::str::from_utf8(&bytes).ok();
        let mut out = serde_json::json!({
            "key": key,
            "seq": seq,
            "served_by": served_by,
            "size": bytes.len(),
            "content_type": content_type,
        });
        match value {
            Some(v) => out["value"] = serde_json::json!(v),
            None => out["value_is_binary"] = serde_json::json!(true),
        }
        println!("{out}");
    } else {
        std::io::stdout()
            .write_all(&bytes)
            .map_err(|err| fail(1, format!("writing to standard output: {err}")))?;
    }
    Ok(())
}

/// `walship list [PREFIX]`, page by page.
pub(super) async fn list(
    cli: &Cli,
    prefix: &Option<String>,
    after: &Option<String>,
    limit: &Option<usize>,
) -> Result<(), Failure> {
    let e = endpoints(cli)?;
    let c = Client::connect(&e).await?;
    let mut keys: Vec<ListedKey> = Vec::new();
    let mut after = after.clone().unwrap_or_default();
    let mut more = false;
    loop {
        let want = limit.map_or(1000, |l| l.saturating_sub(keys.len()).clamp(1, 1000));
        let r = c.req(reqwest::Method::GET, "/v1/objects").query(&[
            ("prefix", prefix.clone().unwrap_or_default()),
            ("after", after.clone()),
            ("limit", want.to_string()),
        ]);
        let v: ListAnswer =
            answer(r.send().await.map_err(|err| unreachable(&e.addr, err))?).await?;
        keys.extend(v.keys);
        match v.next_after {
            Some(n) if limit.is_none_or(|l| keys.len() < l) => after = n,
            Some(_) => {
                more = true;
                break;
            }
            None => break,
        }
    }
    let next_after = keys.last().filter(|_| more).map(|k| k.key.clone());
    if cli.json {
        print_json(&ListAnswer {
            keys,
            truncated: more,
            next_after,
        })?;
    } else {
        println!("{:<8} {:>10}  KEY", "SEQ", "SIZE");
        for k in &keys {
            println!("{:<8} {:>10}  {}", k.seq, k.size, k.key);
        }
        if let Some(last) = next_after {
            println!("(more keys: --after {last})");
        }
    }
    Ok(())
}

/// A put or delete through the sidecar; prints the answer with `--json`.
async fn write(
    cli: &Cli,
    method: reqwest::Method,
    key: &str,
    body: Option<Vec<u8>>,
    mode: Option<&str>,
) -> Result<WriteAnswer, Failure> {
    let e = endpoints(cli)?;
    let c = Client::connect(&e).await?;
    let mut r = c.req(method, &object_path(key)?);
    if let Some(b) = body {
        r = r.body(b);
    }
    if let Some(m) = mode {
        r = r.query(&[("mode", m)]);
    }
    let v: WriteAnswer = answer(r.send().await.map_err(|err| unreachable(&e.addr, err))?).await?;
    if cli.json {
        print_json(&v)?;
    }
    Ok(v)
}

fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| fail(1, format!("reading standard input: {e}")))?;
    Ok(buf)
}
