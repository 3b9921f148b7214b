//! `leafwalk`: see what an image classifier sees.
//!
//! A thin binary: argument parsing and output formatting live here, every capability lives in a
//! crate under `crates/`.

// The argument structs' doc comments are clap's `--help` text, read in a terminal: `[,STEPS]` and
// `<set>` there are usage notation, not rustdoc links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

/// The engine allocates per-layer buffers of megabytes on every call; glibc's allocator handed
/// them back to the system and faulted them in again each time (training ran at half speed).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // candle sizes its thread pools from RAYON_NUM_THREADS on first use, so this must come
    // before any tensor is created.
    if let Some(threads) = cli.threads {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let filter = if cli.verbose { "leafwalk=debug" } else { "leafwalk=warn" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| filter.into()))
        .with_writer(std::io::stderr)
        .init();
    match commands::run(cli) {
        Ok(code) => code,
        // `leafwalk … | head` closing the pipe early is not an error.
        Err(err)
            if err.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            // One line, however deep the chain: the outermost context names the file.
            let message = format!("{err:#}").replace('\n', " ");
            eprintln!("leafwalk: error: {message}");
            ExitCode::FAILURE
        }
    }
}
