//! The `walship` binary: see `walship --help` and SPEC.md.

use clap::Parser;

fn main() {
    walship::tune_allocator();
    let cli = walship::cli::Cli::parse();
    let json = cli.json;
    // Quiet by default: walship's own lines; the stores' client retries
    // and sled's internals only when they matter (RUST_LOG for more).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,object_store=warn,reqwest=warn,hyper=warn,sled=warn",
        )
    });
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        walship::cli::LogFormat::Json => fmt.json().init(),
        walship::cli::LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    if std::env::var_os("WALSHIP_MALLOC_TRIM").is_none_or(|v| v != "0") {
        walship::trim_allocator_every(walship::TRIM_INTERVAL);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walship: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(f) = runtime.block_on(walship::cli::run(cli)) {
        if json {
            // Under --json the error is JSON too, on standard output.
            println!(
                "{}",
                serde_json::json!({ "error": f.message, "exit": f.code })
            );
        } else {
            eprintln!("walship: {}", f.message);
        }
        std::process::exit(f.code);
    }
}
