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
    /// Chat in the terminal (also `ttc-run` with no prompt); with piped stdin, one answer per line.
    Chat(ChatArgs),
    /// Print the token ids of TEXT as a JSON list (no BOS; special tokens parsed).
    Tokenize(TokenizeArgs),
    /// The perplexity of a text file, as llama-perplexity computes it; saves or compares
    /// log-probabilities (KL divergence, top-token agreement) across devices or builds.
    Perplexity(PerplexityArgs),
    /// List the model aliases.
    Models,
    /// Download a model into the cache (hub, else its offline fallback) and print its path.
    Fetch(FetchArgs),
    /// Measure prefill and batched decode speed and KV memory on this machine.
    Bench(BenchArgs),
    /// Measure this device's prefill and decode-step latency for the allocator.
    Profile(ProfileArgs),
    /// Static configurations against the allocator on a labelled dataset, with plots.
    Eval(EvalArgs),
    /// Build the accuracy probe and token model of a model from labelled questions.
    Calibrate(CalibrateArgs),
    /// Add the prompt-kind head (final answer or open-ended) to a probe, from prompt files.
    TrainKind(TrainKindArgs),
    /// Serve an OpenAI-compatible HTTP API (chat, completions, models, health, metrics).
    Serve(ServeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model alias (see `ttc-run models`) or path to a .gguf file.
    #[arg(long, short = 'm', default_value = DEFAULT_ALIAS, env = "TTC_MODEL")]
    pub model: String,
    /// Compute device: cpu, cuda or metal (the last two need a build with that feature).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    /// CPU threads (default: the physical cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// KV-cache budget per request, e.g. 512MiB or 2GiB (default: half the available RAM).
    /// A request that cannot fit is refused before it starts.
    #[arg(long, value_parser = parse_bytes)]
    pub kv_memory: Option<usize>,
    /// A Jinja chat template to use instead of the model's (run like the model's own: in a
    /// sandbox bounded in time and memory).
    #[arg(long)]
    pub chat_template_file: Option<std::path::PathBuf>,
}

/// Samples or beams one request may ask for: far beyond what helps, short of what exhausts
/// memory before the KV budget is checked.
pub const MAX_SAMPLES: u64 = 1024;

/// Tokens one answer may ask for (the context bounds it again once the model is loaded).
pub const MAX_TOKENS: u64 = 1 << 20;

/// A parser for finite numbers in `lo..=hi`, checked as the command line is read.
pub fn unit_range(lo: f32, hi: f32) -> impl Fn(&str) -> Result<f32, String> + Clone {
    move |s: &str| {
        let v: f32 = s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a number"))?;
        if v.is_finite() && (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(format!("{v} is not in {lo}..={hi}"))
        }
    }
}

/// A parser for integers in `1..=max`, checked as the command line is read.
pub fn positive(max: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=max)
}

/// "1024", "512KiB", "512MiB", "2GiB", "1.5GB" -> bytes.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 512MiB, 2GiB)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit '{other}' (use KiB, MiB or GiB)")),
    };
    let bytes = value * scale;
    if bytes.is_nan() || bytes < 1.0 {
        return Err(format!("'{s}' is not a positive size"));
    }
    Ok(bytes as usize)
}

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy (deterministic).
    #[arg(long, default_value_t = 0.8, value_parser = unit_range(0.0, 100.0))]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0: off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1: off).
    #[arg(long, default_value_t = 0.95, value_parser = unit_range(0.0, 1.0))]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0: off).
    #[arg(long, default_value_t = 0.05, value_parser = unit_range(0.0, 1.0))]
    pub min_p: f32,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn params(&self) -> ttc_engine::sampler::SamplingParams {
        ttc_engine::sampler::SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
        }
    }
}

/// What every command that generates takes: the model, sampling, length, system prompt and
/// test-time scaling method.
#[derive(Args, Debug, Clone)]
pub struct GenerationArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Stop after N generated tokens (per answer, per sample). Default: 512, or under the
    /// allocator the cap its probe was calibrated with.
    #[arg(long, short = 'n', value_parser = positive(MAX_TOKENS))]
    pub max_tokens: Option<usize>,
    /// System prompt (default: the chat template's own).
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub method: MethodArgs,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub gen: GenerationArgs,
    #[command(flatten)]
    pub prompt_opts: PromptArgs,
    /// The prompt (none: a chat on a terminal, one answer per line of piped stdin).
    pub prompt: Option<String>,
}

/// How prompts are sent and answers printed: shared by one-prompt runs and the chat (piped or
/// not), so that no flag is silently dropped when `ttc-run` without a prompt becomes a chat.
#[derive(Args, Debug, Clone)]
pub struct PromptArgs {
    /// Extra stop string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Limit the context to N tokens (default: the model's trained context).
    #[arg(long, value_parser = positive(u32::MAX as u64))]
    pub context: Option<usize>,
    /// Generate past the end-of-sequence token, up to --max-tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Send the prompt to the model as is, without the chat template (in the chat: each
    /// prompt alone, no history).
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object (text, model, prompt_tokens, tokens_generated, latency_s, ...)
    /// instead of streaming text; piped chat prints one per line.
    #[arg(long)]
    pub json: bool,
    /// Instruction appended to the prompt with --method, so the answer can be extracted.
    #[arg(long, default_value = ttc_methods::answer::DEFAULT_INSTRUCTION)]
    pub instruction: String,
    /// Do not append the instruction.
    #[arg(long)]
    pub no_instruction: bool,
}

impl PromptArgs {
    /// The instruction to append for answer extraction, unless turned off.
    pub fn instruction(&self) -> Option<&str> {
        (!self.no_instruction).then_some(self.instruction.as_str())
    }
}

/// How to answer: the allocator chooses, one plain streamed completion, or a fixed method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodChoice {
    Auto,
    Plain,
    Fixed(ttc_methods::Method),
}

impl std::str::FromStr for MethodChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "plain" | "none" => Ok(Self::Plain),
            other => other
                .parse()
                .map(Self::Fixed)
                .map_err(|e: String| e.replace("(greedy,", "(auto, plain, greedy,")),
        }
    }
}

/// Test-time scaling: how much compute to spend on the answer.
#[derive(Args, Debug, Clone)]
pub struct MethodArgs {
    /// auto (the allocator chooses method and width for each prompt: the default for a
    /// prompt), plain (one sampled completion, streamed: the default in chat), or a fixed
    /// method: greedy, best-of-n, majority, weighted, beam or dvts.
    #[arg(long)]
    pub method: Option<MethodChoice>,
    /// Samples (best-of-n, majority, weighted) or beams (beam, dvts). `-n` is the token
    /// limit, as in llama.cpp; `--n` is kept as an alias of this.
    #[arg(long = "samples", alias = "n", default_value_t = 4, value_parser = positive(MAX_SAMPLES))]
    pub samples: usize,
    /// Branching factor m of beam search and DVTS (n must be a multiple of it).
    #[arg(long, default_value_t = 2, value_parser = positive(MAX_SAMPLES))]
    pub beam_width: usize,
    /// Beam iterations (steps that end at a blank line); the last runs to the end.
    #[arg(long, default_value_t = 40, value_parser = positive(1000))]
    pub max_iters: usize,
    /// How candidates are scored: logprob (mean token log-probability), self-certainty, or
    /// prm:DIR (a Qwen2 process reward model in Hugging Face format, e.g. Qwen2.5-Math-PRM).
    #[arg(long, default_value = "logprob")]
    pub scorer: ttc_methods::ScorerSpec,
    #[command(flatten)]
    pub allocator: AllocatorArgs,
}

/// The allocator's prices and budgets (method auto).
#[derive(Args, Debug, Clone)]
pub struct AllocatorArgs {
    /// Price of one generated token, in probability of a correct answer (utility =
    /// P(correct) - lambda_tokens * tokens - lambda_latency * seconds).
    #[arg(long, default_value_t = ttc_allocator::policy::Lambdas::DEFAULT.tokens)]
    pub lambda_tokens: f64,
    /// Price of one second of latency (default: one point of accuracy per second).
    #[arg(long, default_value_t = ttc_allocator::policy::Lambdas::DEFAULT.latency)]
    pub lambda_latency: f64,
    /// Spend S seconds on average: solves lambda_latency, and draws between the choices
    /// either side of S (from --seed) so that the expected latency is S. --max-latency bounds
    /// one answer.
    #[arg(long, conflicts_with = "target_tokens")]
    pub target_latency: Option<f64>,
    /// Spend T generated tokens on average: solves lambda_tokens, drawing either side of T
    /// likewise.
    #[arg(long)]
    pub target_tokens: Option<f64>,
    /// Seconds this answer may take: only configurations whose predicted 90th percentile of
    /// latency fits (answers run longer than predicted as often as shorter).
    #[arg(long)]
    pub max_latency: Option<f64>,
    /// Print every configuration's predicted accuracy, tokens and latency, and the choice.
    #[arg(long)]
    pub explain: bool,
    /// Accuracy probe file (default: the cache's, else the one shipped for the model).
    #[arg(long)]
    pub probe: Option<std::path::PathBuf>,
}

impl AllocatorArgs {
    pub fn validate(&self) -> Result<(), String> {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if !ok(self.lambda_tokens) || !ok(self.lambda_latency) {
            return Err(
                "--lambda-tokens and --lambda-latency must be finite and at least 0".into(),
            );
        }
        if self.target_latency.is_some_and(|t| t.is_nan() || t <= 0.0)
            || self.target_tokens.is_some_and(|t| t.is_nan() || t <= 0.0)
            || self.max_latency.is_some_and(|t| t.is_nan() || t <= 0.0)
        {
            return Err(
                "--target-latency, --target-tokens and --max-latency must be positive".into(),
            );
        }
        Ok(())
    }
}

/// `ttc-run chat`: the generation options; /method, /n and /system change them as it runs.
#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    #[command(flatten)]
    pub gen: GenerationArgs,
    #[command(flatten)]
    pub prompt_opts: PromptArgs,
    /// Piped lines are independent prompts, not turns of one conversation (`ttc-run` with no
    /// prompt; `ttc-run chat` keeps the conversation).
    #[arg(skip)]
    pub independent_lines: bool,
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
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tokens per window (llama-perplexity's -c); the second half of each is scored.
    #[arg(long, short = 'c', default_value_t = 512)]
    pub context: usize,
    /// Tokens per forward pass (llama-perplexity's -ub): the logits of a quantized model
    /// depend on how a window is cut, so compare at the same value.
    #[arg(long, short = 'b', default_value_t = 512)]
    pub batch: usize,
    /// At most this many windows (llama-perplexity's --chunks).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Save every scored row's log-probabilities here (safetensors), for --compare.
    #[arg(long, conflicts_with = "compare")]
    pub save_logprobs: Option<std::path::PathBuf>,
    /// Compare against log-probabilities saved by --save-logprobs on the same text and model:
    /// mean and 99th-percentile KL divergence, and how often the top token agrees.
    #[arg(long)]
    pub compare: Option<std::path::PathBuf>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The text file.
    pub file: std::path::PathBuf,
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
    /// Sequences decoded together from one shared prompt, e.g. 1,4,16.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub widths: Vec<usize>,
    /// Prompt tokens to prefill once (random ids, as llama-bench uses).
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    /// Tokens each sequence decodes after the prompt (EOS ignored).
    #[arg(long, default_value_t = 128)]
    pub gen_len: usize,
    /// Run the whole suite instead: a prefill sweep, a decode sweep over widths and context
    /// lengths, and the latency of each method at a few widths.
    #[arg(long)]
    pub suite: bool,
    /// Attend to the shared prompt per sequence instead of once per group (for comparison).
    #[arg(long)]
    pub no_cascade: bool,
    /// Repetitions per width; the mean is reported.
    #[arg(long, short = 'r', default_value_t = 1)]
    pub reps: usize,
    /// Print a JSON array, one object per width, instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Labelled questions: builtin:NAME or a GSM8K-style JSONL file.
    #[arg(long)]
    pub dataset: String,
    /// Split of a built-in suite (files are taken whole).
    #[arg(long, default_value = "test")]
    pub split: ttc_allocator::dataset::Split,
    /// Questions at most.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Static configurations to report (default: the probe's menu), e.g.
    /// greedy,majority@8,beam(4,2,10).
    #[arg(long)]
    pub configs: Option<ttc_allocator::menu::ConfigList>,
    /// Latency prices of the allocator sweep (tokens free), e.g. 0,0.01,0.1.
    #[arg(long, value_delimiter = ',')]
    pub lambdas: Vec<f64>,
    /// Token prices of the allocator sweep (latency free), e.g. 1e-4,1e-3.
    #[arg(long, value_delimiter = ',')]
    pub token_lambdas: Vec<f64>,
    /// Mean latency budgets to meet over the questions, e.g. 0.5,1,2: each solves
    /// lambda_latency on the predictions, and the report gives what its choices took.
    #[arg(long, value_delimiter = ',')]
    pub target_latency: Vec<f64>,
    /// Mean token budgets, likewise (solves lambda_tokens).
    #[arg(long, value_delimiter = ',')]
    pub target_tokens: Vec<f64>,
    /// Answers sampled per question (K).
    #[arg(long, default_value_t = 16)]
    pub samples: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Accuracy probe file (default: the cache's, else the one shipped for the model).
    #[arg(long)]
    pub probe: Option<std::path::PathBuf>,
    /// Where results go: labels.jsonl (the resumable results cache), static.csv, adaptive.csv,
    /// results.json and the two plots.
    #[arg(long, default_value = "ttc-eval")]
    pub out: std::path::PathBuf,
    /// Print one JSON object with `static` and `adaptive` lists instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Measure the small grid the first auto request uses, not the full one.
    #[arg(long)]
    pub brief: bool,
    /// Print the profile as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Labelled questions: builtin:NAME (lookup, digits, multidigit, word, mixed) or a
    /// GSM8K-style JSONL file. Repeatable.
    #[arg(long, required_unless_present = "train_only")]
    pub dataset: Vec<String>,
    /// Split of the built-in suites to label (files are taken whole).
    #[arg(long, default_value = "train")]
    pub split: ttc_allocator::dataset::Split,
    /// Questions per dataset at most.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Answers sampled per question (K); parallel configurations up to N=K are estimated from them.
    #[arg(long, default_value_t = 16)]
    pub samples: usize,
    /// Tokens per answer at most; `auto` caps answers the same way.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Instruction appended to each question (the same one `run` appends).
    #[arg(long, default_value = ttc_methods::answer::DEFAULT_INSTRUCTION)]
    pub instruction: String,
    /// The labels file (JSONL, resumable). Default: next to --out. With --train-only,
    /// repeatable.
    #[arg(long)]
    pub labels: Vec<std::path::PathBuf>,
    /// Where to write the probe (default: the cache's probe for this model).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Only label; do not train.
    #[arg(long)]
    pub label_only: bool,
    /// Do not label: train from --labels files (repeatable) as they are.
    #[arg(long, conflicts_with = "label_only")]
    pub train_only: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to bind (loopback by default: nothing outside this machine can connect).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free one; the one bound is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "TTC_API_KEY")]
    pub api_key: Option<String>,
    /// Requests running at once; their sequences decode in the same forward passes.
    #[arg(long, default_value_t = 8, value_parser = positive(1024))]
    pub max_running: usize,
    /// Requests waiting for a slot at most; beyond, 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queued: usize,
    /// Limit the context to N tokens (default: the model's trained context).
    #[arg(long, value_parser = positive(u32::MAX as u64))]
    pub context: Option<usize>,
    /// Another probe for the allocator.
    #[arg(long)]
    pub probe: Option<std::path::PathBuf>,
    /// The answer-format instruction for prompts with a final answer.
    #[arg(long, default_value = ttc_methods::answer::DEFAULT_INSTRUCTION)]
    pub instruction: String,
}

#[derive(Args, Debug)]
pub struct TrainKindArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompts with a short final answer: a JSONL file (`prompt` or `question` on each line)
    /// or builtin:NAME. Repeatable.
    #[arg(long = "final-answer", required = true)]
    pub final_answer: Vec<String>,
    /// Open-ended prompts (JSONL with `prompt`). Repeatable.
    #[arg(long = "open-ended", required = true)]
    pub open_ended: Vec<String>,
    /// Prompts per file at most (the first ones).
    #[arg(long, value_parser = positive(1 << 20))]
    pub limit: Option<usize>,
    /// The probe to add the head to (default: the one `auto` would load for the model).
    #[arg(long)]
    pub probe: Option<std::path::PathBuf>,
    /// Where to write the probe with its head (default: the cache's probe for this model).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Open-ended prompts whose plain answers are generated to measure their length.
    #[arg(long, default_value_t = 64)]
    pub length_prompts: usize,
    /// The cap those answers are generated with.
    #[arg(long, default_value_t = 512, value_parser = positive(1 << 16))]
    pub length_cap: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1.5k"), Ok(1536));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("MiB").is_err());
    }
}
