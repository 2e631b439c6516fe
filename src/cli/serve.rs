//! `serve`, `init`, `check-config`: running the sidecar, and its config.

use super::*;

/// `walship serve`: the config given, else the embedded default (and the environment).
pub(super) async fn serve(cli: &Cli) -> Result<(), Failure> {
    let cfg = match &cli.config {
        Some(p) => Config::load(p).map_err(|e| fail(2, format!("{}: {e}", p.display())))?,
        None => {
            // The embedded default, under WALSHIP_DATA_DIR when set;
            // the environment's listen and token apply too.
            let cwd = std::env::current_dir()
                .map_err(|e| fail(1, format!("reading the current directory: {e}")))?;
            let mut cfg = match std::env::var_os("WALSHIP_DATA_DIR").filter(|v| !v.is_empty()) {
                Some(d) => Config::embedded_in(&cwd.join(d)),
                None => Config::embedded_default(&cwd),
            };
            cfg.apply_env(|name| std::env::var(name).ok());
            if let Some(f) = cfg.make_s3_secret()? {
                eprintln!(
                    "walship: the S3 API's secret access key (access key id \"walship\") is in {}",
                    f.display()
                );
            }
            let problems = cfg.sidecar_problems();
            if !problems.is_empty() {
                return Err(Error::Config { problems }.into());
            }
            cfg
        }
    };
    crate::server::serve(cfg).await?;
    Ok(())
}

pub(super) fn init(dir: &Path, force: bool) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)
        .map_err(|e| fail(1, format!("creating {}: {e}", dir.display())))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| fail(1, format!("resolving {}: {e}", dir.display())))?;
    let path = dir.join("walship.toml");
    if path.exists() && !force {
        return Err(fail(
            1,
            format!(
                "{} already exists; pass --force to overwrite it",
                path.display()
            ),
        ));
    }
    std::fs::write(&path, init_template(&dir))
        .map_err(|e| fail(1, format!("writing {}: {e}", path.display())))?;
    println!(
        "wrote {}; start it with: walship serve --config {}",
        path.display(),
        path.display()
    );
    Ok(())
}

pub(super) fn check_config(file: &Path) -> Result<(), Failure> {
    match Config::load(file) {
        Ok(cfg) => {
            let s3 = cfg
                .s3
                .as_ref()
                .map(|s| {
                    format!(
                        ", S3 API on {} with {} bucket(s)",
                        s.listen,
                        s.buckets.len()
                    )
                })
                .unwrap_or_default();
            println!(
                "{}: ok ({} mode, primary {}, {} replica(s){s3})",
                file.display(),
                cfg.replication.mode.as_str(),
                cfg.primary.name,
                cfg.targets.len()
            );
            Ok(())
        }
        Err(Error::Config { problems }) => Err(fail(
            2,
            problems
                .iter()
                .map(|p| format!("{}: {p}", file.display()))
                .collect::<Vec<_>>()
                .join("\n"),
        )),
        Err(e) => Err(fail(2, format!("{}: {e}", file.display()))),
    }
}
