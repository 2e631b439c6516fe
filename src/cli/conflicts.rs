//! `conflicts`: list and resolve manual conflicts.

use super::*;

pub(super) async fn conflicts(cli: &Cli, action: Option<&ConflictsAction>) -> Result<(), Failure> {
    let e = endpoints(cli)?;
    let c = Client::connect(&e).await?;
    match action {
        None | Some(ConflictsAction::List) => {
            let list: Vec<ConflictRecord> =
                match c.req(reqwest::Method::GET, "/v1/conflicts").send().await {
                    Ok(resp) => answer::<ConflictsAnswer>(resp).await?.conflicts,
                    Err(err) if err.is_connect() => {
                        say_offline(&e, "reading", "");
                        let storage = open_offline(&e.data_dir)?;
                        crate::apply::list_conflicts(&storage)?
                    }
                    Err(err) => return Err(unreachable(&e.addr, err)),
                };
            if cli.json {
                print_json(&ConflictsAnswer { conflicts: list })?;
            } else {
                print!("{}", conflicts_table(&list));
            }
            Ok(())
        }
        Some(ConflictsAction::Resolve { id, keep }) => {
            let resp = c
                .req(
                    reqwest::Method::POST,
                    &format!("/v1/conflicts/{id}/resolve"),
                )
                .json(&serde_json::json!({ "keep": keep }))
                .send()
                .await
                .map_err(|err| unreachable(&e.addr, err))?;
            let v: ResolvedAnswer = answer(resp).await?;
            if cli.json {
                print_json(&v)?;
            } else {
                println!(
                    "conflict {id} resolved: {} on {} keeps the {} version",
                    v.resolved.key,
                    v.resolved.target,
                    match v.kept {
                        Keep::Primary => "primary",
                        Keep::Replica => "replica",
                    }
                );
            }
            Ok(())
        }
    }
}

/// The manual conflict queue as a table.
pub fn conflicts_table(list: &[ConflictRecord]) -> String {
    if list.is_empty() {
        return "no open conflicts\n".into();
    }
    let mut out = format!(
        "{:>5} {:<16} {:<32} {:>8} {:<24} {:<24}\n",
        "ID", "TARGET", "KEY", "SEQ", "PRIMARY (ours)", "REPLICA (target's)"
    );
    let side = |v: &crate::conflict::VersionInfo| {
        let when = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(v.ts_ms),
        );
        format!("{}B {when}", v.size)
    };
    for r in list {
        out.push_str(&format!(
            "{:>5} {:<16} {:<32} {:>8} {:<24} {:<24}\n",
            r.id,
            r.target,
            r.key,
            r.seq,
            side(&r.primary),
            side(&r.replica)
        ));
    }
    out
}
