//! Command-line arguments of `ttc-run` (clap derive). One struct per subcommand; the options
//! every model-running command shares are in [`ModelArgs`] and [`SamplingArgs`].

use clap::{Args, Parser, Subcommand};
use ttc_engine::device::DeviceKind;
use ttc_engine::registry::DEFAULT_ALIAS;

#[derive(Parser, Debug)]
#[command(
    name = "ttc-run",
    version,
    about = "Run a quantized Llama or Qwen model locally, with test-time scaling built in.",
    long_about = "Run a quantized Llama or Qwen GGUF model on CPU, CUDA or Metal.\n\n\
        `ttc-run \"PROMPT\"` answers one prompt with the default model (smollm2-135m), streaming \
        the answer to stdout. `--model` takes an alias (see `ttc-run models`) or a path to a \
        .gguf file; aliases are downloaded into the Hugging Face cache on first use.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Answer one prompt (the default when no subcommand is given).
    Run(RunArgs),
    /// Print the token ids of TEXT as a JSON list (no BOS; special tokens parsed).
    Tokenize(TokenizeArgs),
    /// List the model aliases.
    Models,
    /// Download a model into the cache (hub, else its offline fallback) and print its path.
    Fetch(FetchArgs),
    /// Measure prefill and decode speed on this machine (like llama-bench -p P -n G).
    Bench(BenchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model alias (see `ttc-run models`) or path to a .gguf file.
    #[arg(long, short = 'm', default_value = DEFAULT_ALIAS, env = "TTC_MODEL")]
    pub model: String,
    /// Compute device: cpu, cuda or metal (the last two need a build with that feature).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    /// CPU threads (default: all available cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy (deterministic).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0: off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1: off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0: off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Stop after N generated tokens.
    #[arg(long, short = 'n', default_value_t = 512)]
    pub max_tokens: usize,
    /// System prompt (default: the chat template's own).
    #[arg(long)]
    pub system: Option<String>,
    /// Extra stop string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Limit the context to N tokens (default: the model's trained context).
    #[arg(long)]
    pub context: Option<usize>,
    /// Generate past the end-of-sequence token, up to --max-tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Send PROMPT to the model as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object (text, model, prompt_tokens, tokens_generated, latency_s, ...)
    /// instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// The prompt.
    pub prompt: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tokenize control tokens in TEXT (e.g. <|im_start|>) as plain text.
    #[arg(long)]
    pub no_parse_special: bool,
    /// The text to tokenize.
    pub text: String,
}

#[derive(Args, Debug, Clone)]
pub struct FetchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens to prefill (random ids, as llama-bench uses).
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    /// Tokens to decode after the prompt (EOS ignored).
    #[arg(long, default_value_t = 128)]
    pub gen_len: usize,
    /// Repetitions; the mean and standard deviation are reported.
    #[arg(long, short = 'r', default_value_t = 3)]
    pub reps: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}
