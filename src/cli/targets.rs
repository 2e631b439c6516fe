//! `status`, `cursors`, `pause`, `resume`, `resync`: the targets.

use super::*;

/// `walship status`.
pub(super) async fn status(cli: &Cli) -> Result<(), Failure> {
    let e = endpoints(cli)?;
    let report = status_report(&e).await?;
    if cli.json {
        print_json(&report)?;
    } else {
        print!("{}", status_text(&report));
    }
    Ok(())
}

/// `walship cursors` (offline too).
pub(super) async fn cursors(cli: &Cli) -> Result<(), Failure> {
    let e = endpoints(cli)?;
    let report = cursors_report(&e).await?;
    if cli.json {
        print_json(&report)?;
    } else {
        print!("{}", cursors_table(&report));
    }
    Ok(())
}

/// `walship pause T` and `resume T` (`action`).
pub(super) async fn set_state(cli: &Cli, target: &str, action: &str) -> Result<(), Failure> {
    let e = endpoints(cli)?;
    let c = Client::connect(&e).await?;
    let path = format!(
        "/v1/targets/{}/{action}",
        url::form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>()
    );
    let v: StateAnswer = answer(
        c.req(reqwest::Method::POST, &path)
            .send()
            .await
            .map_err(|err| unreachable(&e.addr, err))?,
    )
    .await?;
    if cli.json {
        print_json(&v)?;
    } else {
        println!("{target}: {}", state_name(v.state));
    }
    Ok(())
}

/// `walship resync T`, waiting for it unless `--no-wait`.
pub(super) async fn resync(cli: &Cli, target: &str, no_wait: &bool) -> Result<(), Failure> {
    let e = endpoints(cli)?;
    let c = Client::connect(&e).await?;
    let path = format!("/v1/targets/{}/resync", enc(target));
    let v: StateAnswer = answer(
        c.req(reqwest::Method::POST, &path)
            .send()
            .await
            .map_err(|err| unreachable(&e.addr, err))?,
    )
    .await?;
    if !cli.json {
        println!(
            "resyncing {target} from the acting primary; it ships from seq {} afterwards",
            v.from.map_or_else(|| "?".to_string(), |f| f.to_string())
        );
    }
    if !no_wait {
        wait_for_target(
            &c,
            &e,
            target,
            |row| row.state != crate::status::TargetState::Syncing,
            0,
            0,
        )
        .await?;
        if !cli.json {
            println!("{target}: resync done");
        }
    }
    if cli.json {
        print_json(&v)?;
    }
    Ok(())
}

/// Asks the running sidecar; when none answers, reads the data directory.
async fn cursors_report(e: &Endpoints) -> Result<CursorsReport, Failure> {
    let c = Client::connect(e).await?;
    match c.req(reqwest::Method::GET, "/v1/cursors").send().await {
        Ok(resp) => answer(resp).await,
        Err(err) if err.is_connect() => {
            say_offline(e, "reading", "");
            offline_cursors(&e.data_dir)
        }
        Err(err) => Err(unreachable(&e.addr, err)),
    }
}

/// Asks the running sidecar; when none answers, builds what the data
/// directory can tell (no live health or metrics).
async fn status_report(e: &Endpoints) -> Result<StatusReport, Failure> {
    let c = Client::connect(e).await?;
    match c.req(reqwest::Method::GET, "/v1/status").send().await {
        Ok(resp) => answer(resp).await,
        Err(err) if err.is_connect() => {
            say_offline(e, "reading", ": no live health or metrics");
            let storage = open_offline(&e.data_dir)?;
            let cursors = crate::status::offline_report(&storage)?;
            let retained = crate::log::offline_retained_bytes(&storage)?;
            drop(storage);
            Ok(StatusReport::offline(
                cursors,
                e.mode.clone(),
                e.cfg.as_ref().map(|c| c.replication.enable_failover),
                retained,
                std::path::absolute(&e.data_dir)
                    .unwrap_or_else(|_| e.data_dir.clone())
                    .display()
                    .to_string(),
            ))
        }
        Err(err) => Err(unreachable(&e.addr, err)),
    }
}

/// `walship status` as text.
pub fn status_text(s: &StatusReport) -> String {
    let cursors = CursorsReport {
        head: s.head,
        targets: s.targets.clone(),
        offline: s.offline,
    };
    let mut out = cursors_table(&cursors);
    let f = &s.failover;
    out.push_str(&format!(
        "\nmode: {}    acting primary: {} (configured: {})    failover: {}    failovers: {}    failbacks: {}\n",
        s.mode,
        f.acting_primary,
        f.configured_primary,
        if f.enabled { "on" } else { "off" },
        f.failovers,
        f.failbacks
    ));
    out.push_str(&format!(
        "log: {} bytes kept; truncation held back by: {}\n",
        s.log_retained_bytes,
        s.truncation_held_by
            .as_deref()
            .unwrap_or("nobody (every target is caught up)")
    ));
    let m = &s.metrics;
    out.push_str(&format!(
        "writes: {} to primary, {} replicated, {} failed    conflicts: {} detected, {} resolved, {} open\n",
        m.writes_to_primary, m.writes_replicated, m.writes_failed, m.conflicts_detected, m.conflicts_resolved, s.open_conflicts
    ));
    for (name, rate) in &m.success_rate {
        let avg = m
            .average_replication_time_ms
            .get(name)
            .copied()
            .unwrap_or(0.0);
        out.push_str(&format!(
            "  {name}: success rate {:.3}, average replication {avg:.1} ms\n",
            rate
        ));
    }
    out
}

/// The cursors table as `walship cursors` prints it.
pub fn cursors_table(r: &CursorsReport) -> String {
    let mut out = format!(
        "{:<16} {:<12} {:<12} {:<9} {:<8} {:>10} {:>10} {:>11} {:>11} {:>9}\n",
        "NAME",
        "ROLE",
        "REGION",
        "HEALTH",
        "STATE",
        "CURSOR",
        "HEAD",
        "LAG_ENTRIES",
        "LAG_BYTES",
        "LAG_MS"
    );
    for t in &r.targets {
        out.push_str(&format!(
            "{:<16} {:<12} {:<12} {:<9} {:<8} {:>10} {:>10} {:>11} {:>11} {:>9}\n",
            t.name,
            ser(&t.role),
            t.region,
            ser(&t.health),
            ser(&t.state),
            t.cursor,
            r.head,
            t.lag_entries,
            t.lag_bytes,
            t.lag_ms
        ));
    }
    for t in &r.targets {
        if let Some(e) = &t.error {
            out.push_str(&format!("{}: {e}\n", t.name));
        }
    }
    out
}

fn offline_cursors(data_dir: &Path) -> Result<CursorsReport, Failure> {
    if !data_dir.join("log").exists() {
        return Err(fail(
            1,
            format!(
                "no walship log in {} (pass --data-dir or --config)",
                data_dir.display()
            ),
        ));
    }
    let storage = crate::storage::SledStorage::open(data_dir, 16 << 20)?;
    Ok(crate::status::offline_report(&storage)?)
}

/// A state as SPEC.md spells it (`active`, `syncing`, …).
fn state_name(s: crate::status::TargetState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{s:?}"))
}

/// Polls the cursors report until `done` holds for `target`, with a
/// progress bar on a terminal (cursor from `lo` to `hi`, or resync text).
pub(super) async fn wait_for_target(
    c: &Client,
    e: &Endpoints,
    target: &str,
    done: impl Fn(&crate::status::TargetRow) -> bool,
    lo: u64,
    hi: u64,
) -> Result<(), Failure> {
    let bar = if hi > lo {
        indicatif::ProgressBar::new(hi - lo)
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    // A resync has no length to show (it copies what the primary lists):
    // a spinner and its progress text, not a bar stuck at 0/0.
    let template = if hi > lo {
        "{spinner} {bar:40} {pos}/{len} {msg}"
    } else {
        "{spinner} {msg}"
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // Said once per new error: a wait that is not moving says why, on
    // a terminal or not (the bar is hidden when stderr is not one).
    let mut said: Option<String> = None;
    loop {
        let report: CursorsReport = answer(
            c.req(reqwest::Method::GET, "/v1/cursors")
                .send()
                .await
                .map_err(|err| unreachable(&e.addr, err))?,
        )
        .await?;
        let row = report
            .targets
            .iter()
            .find(|t| t.name == target)
            .ok_or_else(|| fail(1, format!("{target} is no longer in the cursors report")))?;
        if hi > lo {
            bar.set_position(row.cursor.saturating_sub(lo).min(hi - lo));
        }
        bar.set_message(row.progress.clone().unwrap_or_default());
        bar.tick();
        if done(row) {
            bar.finish_and_clear();
            return Ok(());
        }
        if row.state == crate::status::TargetState::Failed {
            bar.finish_and_clear();
            return Err(fail(
                1,
                format!(
                    "{target} failed: {}",
                    row.error.as_deref().unwrap_or("see `walship cursors`")
                ),
            ));
        }
        if let Some(err) = row.error.as_ref().filter(|e| said.as_ref() != Some(*e)) {
            bar.suspend(|| {
                let at = if hi > lo {
                    format!(" (cursor {} of {hi})", row.cursor)
                } else {
                    String::new()
                };
                eprintln!(
                    "walship: {target} is not done yet{at}; shipping to it fails with: {err}. \
                     Still waiting: Ctrl-C stops the wait, not the work, which goes on in the sidecar"
                )
            });
            said = Some(err.clone());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
