//! `ttc-run`: the command-line front end of ttc.
//!
//! Errors reach the user as one line on stderr and a non-zero exit status; never a panic
//! message or a backtrace.

mod args;
mod commands;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use args::{Cli, Command};

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        eprintln!("error: internal error: {msg} (please report this)");
    }));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("TTC_LOG"))
        .with_writer(std::io::stderr)
        .init();

    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            let rendered = e.to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("error: {first} (see ttc-run --help)");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Calibrate(a)) = &cli.command {
        if a.train_only && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            // Training the probe runs thousands of tiny candle ops, each split over candle's
            // spinning thread pool: on one thread it is several times faster (and far faster
            // on a busy machine). Only --train-only: labelling runs the model, whose candle
            // ops want the pool.
            // SAFETY: no other thread of this process has started yet.
            unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
        }
    }
    let result = match &cli.command {
        // No prompt: a chat on a terminal, one answer per line of piped stdin, with every
        // option the one-prompt run takes.
        None if cli.run.prompt.is_none() => commands::chat::run(&args::ChatArgs {
            gen: cli.run.gen.clone(),
            prompt_opts: cli.run.prompt_opts.clone(),
            independent_lines: true,
        }),
        None => commands::run::run(&cli.run),
        Some(Command::Run(a)) => commands::run::run(a),
        Some(Command::Chat(a)) => commands::chat::run(a),
        Some(Command::Tokenize(a)) => commands::tokenize::run(a),
        Some(Command::Perplexity(a)) => commands::perplexity::run(a),
        Some(Command::Models) => commands::models::run(),
        Some(Command::Fetch(a)) => commands::fetch::run(a),
        Some(Command::Bench(a)) => commands::bench::run(a),
        Some(Command::TrainKind(a)) => commands::train_kind::run(a),
        Some(Command::Serve(a)) => commands::serve::run(a),
        Some(Command::Calibrate(a)) => commands::calibrate::run(a),
        Some(Command::Profile(a)) => commands::profile::run(a),
        Some(Command::Eval(a)) => commands::eval::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
