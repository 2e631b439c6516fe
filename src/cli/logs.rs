//! `log`, `replay`, `restore`, `repair`, `verify`: the log and what it can rebuild.

use super::targets::wait_for_target;
use super::*;

/// `walship log`: the entries with their crc check (offline too).
pub(super) async fn log(cli: &Cli, from: &Option<u64>, limit: &usize) -> Result<(), Failure> {
    let e = endpoints(cli)?;
    let c = Client::connect(&e).await?;
    let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
    if let Some(f) = from {
        q.push(("from", f.to_string()));
    }
    let v: LogAnswer = match c
        .req(reqwest::Method::GET, "/v1/log")
        .query(&q)
        .send()
        .await
    {
        Ok(resp) => answer(resp).await?,
        Err(err) if err.is_connect() => {
            say_offline(&e, "reading", "");
            let storage = open_offline(&e.data_dir)?;
            let first = crate::storage::LogStore::bounds(&storage)?
                .map(|(f, _)| f)
                .unwrap_or(1);
            crate::server::log_json(&storage, from.unwrap_or(first).max(1), *limit, u64::MAX)?
        }
        Err(err) => return Err(unreachable(&e.addr, err)),
    };
    if cli.json {
        print_json(&v)?;
    } else {
        println!(
            "{:>10}  {:<24}  {:<6}  {:>10}  {:<6}  KEY",
            "SEQ", "TIME", "OP", "SIZE", "CRC"
        );
        let mut bad = 0;
        for e in &v.entries {
            let r = &e.row;
            bad += usize::from(!r.crc_ok);
            println!(
                "{:>10}  {:<24}  {:<6}  {:>10}  {:<6}  {}",
                r.seq,
                if r.crc_ok { e.time.as_str() } else { "?" },
                r.op,
                r.size,
                if r.crc_ok { "ok" } else { "BAD" },
                r.key
            );
            if let Some(err) = &r.error {
                println!("            {err}");
            }
        }
        println!("(log keeps seq {} to {})", v.first, v.head);
        if bad > 0 {
            return Err(fail(
                1,
                format!(
                    "{bad} corrupt entr{} shown above",
                    if bad == 1 { "y" } else { "ies" }
                ),
            ));
        }
    }
    Ok(())
}

/// `walship replay T --from SEQ | --since TIME [--execute]`.
pub(super) async fn replay(
    cli: &Cli,
    target: &str,
    from: &Option<u64>,
    since: &Option<String>,
    execute: &bool,
) -> Result<(), Failure> {
    let e = endpoints(cli)?;
    let c = Client::connect(&e).await?;
    let mut q: Vec<(&str, String)> = vec![("dry_run", (!execute).to_string())];
    match (from, since) {
        (Some(f), _) => q.push(("from", f.to_string())),
        (None, Some(s)) => q.push(("since", s.clone())),
        (None, None) => return Err(fail(2, "replay needs --from SEQ or --since TIME")),
    }
    let path = format!("/v1/targets/{}/replay", enc(target));
    let plan: ReplayPlan = answer(
        c.req(reqwest::Method::POST, &path)
            .query(&q)
            .send()
            .await
            .map_err(|err| unreachable(&e.addr, err))?,
    )
    .await?;
    if cli.json {
        print_json(&plan)?;
    } else {
        println!(
            "{} {}: seq {} to {}: {} entries, {} bytes, {} distinct keys",
            if plan.executed {
                "replaying"
            } else {
                "plan for"
            },
            plan.target,
            plan.from,
            plan.to,
            plan.entries,
            plan.bytes,
            plan.keys
        );
        if !plan.executed {
            println!("nothing changed; add --execute to move the cursor back and ship again");
        }
    }
    if plan.executed {
        wait_for_target(
            &c,
            &e,
            target,
            |row| row.cursor >= plan.to,
            plan.from.saturating_sub(1),
            plan.to,
        )
        .await?;
    }
    Ok(())
}

/// `walship restore --to DEST` (offline too).
pub(super) async fn restore(
    cli: &Cli,
    to: &str,
    as_of: &Option<String>,
    seq: &Option<u64>,
    prefix: &Option<String>,
    execute: &bool,
) -> Result<(), Failure> {
    let e = endpoints(cli)?;
    let c = Client::connect(&e).await?;
    let mut q: Vec<(&str, String)> = vec![("to", to.to_string()), ("execute", execute.to_string())];
    if let Some(s) = seq {
        q.push(("seq", s.to_string()));
    }
    if let Some(t) = as_of {
        q.push(("as_of", t.clone()));
    }
    if let Some(p) = prefix {
        q.push(("prefix", p.clone()));
    }
    let plan: crate::restore::RestorePlan = match c
        .req(reqwest::Method::POST, "/v1/restore")
        .query(&q)
        .send()
        .await
    {
        Ok(resp) => answer(resp).await?,
        Err(err) if err.is_connect() => {
            let Some(cfg) = &e.cfg else {
                return Err(fail(
                    2,
                    format!(
                        "no sidecar answered at {} and no config names the primary to read from; pass --config",
                        e.addr
                    ),
                ));
            };
            say_offline(&e, "reading", "");
            let storage: std::sync::Arc<dyn crate::storage::LogStorage> =
                std::sync::Arc::new(open_offline(&e.data_dir)?);
            let point = match (seq, as_of) {
                (Some(s), _) => *s,
                (None, Some(t)) => crate::restore::seq_as_of(
                    storage.as_ref(),
                    crate::server::parse_time(t)?,
                    u64::MAX,
                )?,
                (None, None) => crate::storage::LogStore::bounds(storage.as_ref())?
                    .map(|(_, h)| h)
                    .unwrap_or(0),
            };
            let dest = crate::restore::destination(cfg, to)?;
            let primary = crate::target::build_store(&cfg.primary)?;
            crate::restore::restore(
                storage,
                primary,
                dest,
                crate::restore::RestoreRequest {
                    seq: point,
                    prefix: prefix.clone().unwrap_or_default(),
                    execute: *execute,
                },
                u64::MAX,
            )
            .await?
        }
        Err(err) => return Err(unreachable(&e.addr, err)),
    };
    if cli.json {
        print_json(&plan)?;
    } else {
        println!(
            "{} as of seq {}: {} objects, {} bytes; {} keys absent then{}",
            if plan.executed {
                "restored"
            } else {
                "plan: restore"
            },
            plan.seq,
            plan.objects,
            plan.bytes,
            plan.absent,
            if plan.executed {
                ""
            } else {
                " (nothing written; pass --execute)"
            }
        );
        if !plan.unknown.is_empty() {
            println!(
                "{} keys skipped: their state then is no longer in the log (e.g. {})",
                plan.unknown.len(),
                plan.unknown
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}

/// `walship verify [T]` (offline too); exit 1 on any problem.
pub(super) async fn verify(cli: &Cli, target: &Option<String>) -> Result<(), Failure> {
    let e = endpoints(cli)?;
    let c = Client::connect(&e).await?;
    let mut r = c.req(reqwest::Method::GET, "/v1/verify");
    if let Some(t) = target {
        r = r.query(&[("target", t)]);
    }
    let report: VerifyReport = match r.send().await {
        Ok(resp) => {
            let spinner = indicatif::ProgressBar::new_spinner()
                .with_message("verifying (the sidecar compares every key)");
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            let out = answer(resp).await;
            spinner.finish_and_clear();
            out?
        }
        Err(err) if err.is_connect() => {
            say_offline(&e, "verifying", "");
            offline_verify(&e, target.as_deref()).await?
        }
        Err(err) => return Err(unreachable(&e.addr, err)),
    };
    if cli.json {
        print_json(&report)?;
    } else {
        print!("{}", verify_text(&report));
    }
    if report.ok {
        Ok(())
    } else {
        Err(fail(1, "verify found problems (listed above)"))
    }
}

/// `walship verify` as text: a summary and the first differences.
pub fn verify_text(r: &VerifyReport) -> String {
    let mut out = format!(
        "log: {} entries checked, {} corrupt\n",
        r.entries_checked,
        r.corrupt.len()
    );
    for c in r.corrupt.iter().take(20) {
        out.push_str(&format!("  seq {}: {}\n", c.seq, c.error));
    }
    for t in &r.targets {
        out.push_str(&format!(
            "{}: {} keys checked, {} pending (not yet shipped), {} different\n",
            t.name,
            t.keys_checked,
            t.pending,
            t.differences.len()
        ));
        for d in t.differences.iter().take(20) {
            out.push_str(&format!(
                "  {} (seq {}): {}: {}\n",
                d.key, d.seq, d.problem, d.detail
            ));
        }
        if t.differences.len() > 20 {
            out.push_str(&format!(
                "  … and {} more (--json lists all)\n",
                t.differences.len() - 20
            ));
        }
    }
    out.push_str(if r.ok { "ok\n" } else { "PROBLEMS FOUND\n" });
    out
}

/// `walship repair [--accept-loss]`, offline (sled's lock refuses it while
/// a sidecar has the data dir open).
pub(super) fn repair(e: &Endpoints, accept_loss: bool, json: bool) -> Result<(), Failure> {
    let storage = open_offline(&e.data_dir)?;
    let primary = match &e.cfg {
        Some(c) => Some(c.primary.name.clone()),
        None => crate::status::offline_primary(&storage)?,
    };
    if !accept_loss {
        use crate::log::RepairNeed;
        let (log_head, need) = crate::log::repair_need_of(&storage)?;
        let what = match need {
            RepairNeed::Loss { from, to } => format!(
                "the log ends at seq {log_head} but seqs up to {to} were acknowledged: {from}..={to} are lost. \
                 Nothing was changed; pass --accept-loss to record the loss and go on"
            ),
            RepairNeed::RecordAnew => format!(
                "the head record {} is missing or damaged, so the log's length (head {log_head}) cannot be checked. \
                 Nothing was changed; if the log is intact (`walship log`, `walship verify`), \
                 pass --accept-loss to record its head anew",
                e.data_dir.join("head").display()
            ),
            RepairNeed::Whole => {
                format!(
                    "the log is whole (head {log_head}); nothing to repair. Nothing was changed"
                )
            }
        };
        return Err(fail(2, what));
    }
    let log_head = crate::storage::LogStore::bounds(&storage)?
        .map(|(_, h)| h)
        .unwrap_or(0);
    match crate::log::repair(&storage, primary.as_deref())? {
        None => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "repaired": false, "head": log_head })
                );
            } else {
                println!("the log is whole (head {log_head}); nothing to repair");
            }
        }
        Some(r) => {
            if json {
                println!("{}", serde_json::json!({ "repaired": true, "lost": r }));
            } else if r.lost_from > r.lost_to {
                println!(
                    "the head record was missing or damaged; it now says the log's head, {}",
                    r.head
                );
            } else {
                println!(
                    "recorded seqs {}..={} as lost; the head is {} and the next write gets seq {}. \
                     Every target that had not applied them is resynced from the acting primary \
                     when walship serve starts",
                    r.lost_from,
                    r.lost_to,
                    r.head,
                    r.head + 1
                );
            }
        }
    }
    Ok(())
}

/// Verify without a sidecar: the log from the data directory, the targets
/// from the config's URLs (without a config only the crc check runs).
async fn offline_verify(e: &Endpoints, only: Option<&str>) -> Result<VerifyReport, Failure> {
    let storage: std::sync::Arc<dyn crate::storage::LogStorage> =
        std::sync::Arc::new(open_offline(&e.data_dir)?);
    let keys = crate::replicator::latest_keys(storage.as_ref(), u64::MAX)?;
    let mut targets = Vec::new();
    match &e.cfg {
        Some(cfg) => {
            for (_, t) in cfg.all_targets() {
                if only.is_some_and(|n| n != t.name) {
                    continue;
                }
                targets.push(crate::replicator::VerifyTarget {
                    name: t.name.clone(),
                    store: crate::target::build_store(t)?,
                    cursor: match storage.target(&t.name) {
                        Ok(r) => r.map_or(0, |r| r.cursor),
                        // Its cursor is not known: every key is checked as
                        // if it had everything (none counts as pending).
                        Err(crate::Error::Damaged(why)) => {
                            eprintln!("{}: {why}; checking every key on it", t.name);
                            u64::MAX
                        }
                        Err(e) => return Err(e.into()),
                    },
                });
            }
            if let Some(n) = only
                && targets.is_empty()
            {
                return Err(Error::UnknownTarget(n.to_string()).into());
            }
        }
        None => eprintln!(
            "no config: only the log's crc is checked (pass --config to compare the targets)"
        ),
    }
    let bar = indicatif::ProgressBar::new(keys.len() as u64 * targets.len() as u64);
    let b = bar.clone();
    let progress: crate::replicator::Progress =
        std::sync::Arc::new(move |done, _| b.set_position(done));
    let report = crate::replicator::verify(storage, &keys, &targets, progress, u64::MAX).await?;
    bar.finish_and_clear();
    Ok(report)
}
