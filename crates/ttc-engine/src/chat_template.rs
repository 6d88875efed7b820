//! Chat templates: the GGUF's `tokenizer.chat_template` (Jinja), rendered with minijinja.
//!
//! Rendered the way Hugging Face's `apply_chat_template` does (trim_blocks, lstrip_blocks,
//! Python string methods through minijinja-contrib's pycompat, `raise_exception`,
//! `strftime_now`), so the prompt text, and therefore the token ids, equal llama.cpp's for the
//! same template. A model without a template gets ChatML.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::sandbox;

pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// Template instructions one render may execute: a real template spends tens per message.
const TEMPLATE_FUEL: u64 = 50_000_000;
/// A rendering may add this much to its messages' own text (and at most double it).
const MIN_OUTPUT_LIMIT: usize = 1 << 20;
/// What a template from a model file may spend on one rendering, enforced from outside
/// ([`crate::sandbox`]): a real template renders a long conversation in milliseconds and a
/// few megabytes.
const TEMPLATE_LIMITS: sandbox::Limits = sandbox::Limits {
    time: std::time::Duration::from_secs(5),
    memory_bytes: 256 << 20,
};

/// The rendered text, refusing to grow past `limit` bytes.
struct BoundedOutput {
    text: Vec<u8>,
    limit: usize,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > self.limit {
            self.text.resize(self.limit, 0);
            return Err(std::io::Error::other("template output too large"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// ttc's own ChatML renders in this process; a template from a file in a sandbox.
    trusted: bool,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the texts the template may print. A
    /// template from a model file is first compiled in a sandbox: minijinja folds constant
    /// expressions as it compiles, so `{{ 'x' * 99999999 }}` costs 100 MB there, twenty of
    /// them 2 GB, before anything renders.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let trusted = source == CHATML_TEMPLATE;
        if !trusted {
            let compiled = sandbox::run(TEMPLATE_LIMITS, || {
                environment()
                    .add_template_owned("chat", source.to_string())
                    .map(|_| String::new())
                    .map_err(|e| e.to_string())
            });
            match compiled {
                Ok(Ok(_)) => {}
                Ok(Err(m)) => return Err(EngineError::Template(m)),
                Err(f) => return Err(sandbox_error("compiling", f)),
            }
        }
        let mut env = environment();
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| EngineError::Template(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            trusted,
        })
    }

    /// The prompt text of `messages`. A template from a model file is a program from whoever
    /// made the file: it renders in a child process that is stopped past 5 s or 256 MiB
    /// ([`crate::sandbox`]; fuel and the output cap bound it further inside).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        if self.trusted {
            return self.render_here(messages, add_generation_prompt);
        }
        let rendered = sandbox::run(TEMPLATE_LIMITS, || {
            self.render_here(messages, add_generation_prompt)
                .map_err(|e| match e {
                    EngineError::Template(m) => m,
                    other => other.to_string(),
                })
        });
        match rendered {
            Ok(Ok(text)) => Ok(text),
            Ok(Err(m)) => Err(EngineError::Template(m)),
            Err(f) => Err(sandbox_error("rendering", f)),
        }
    }

    /// For the fuzz target only: renders in this process (so that the fuzzer sees the
    /// renderer's coverage, which a child's run does not report), which is safe for a template
    /// and messages [`ChatTemplate::render`] has rendered or refused with a template error.
    #[cfg(fuzzing)]
    pub fn render_in_process(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_here(messages, add_generation_prompt)
    }

    /// Renders in this process, bounded by fuel and the output cap only.
    fn render_here(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template(e.to_string()))?;
        let content: usize = messages
            .iter()
            .map(|m| m.content.len() + m.role.len())
            .sum();
        let mut out = BoundedOutput {
            text: Vec::new(),
            limit: MIN_OUTPUT_LIMIT.max(content.saturating_mul(2)),
        };
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        match tmpl.render_captured_to(ctx, &mut out) {
            Ok(_) => String::from_utf8(out.text)
                .map_err(|_| EngineError::Template("the template rendered invalid UTF-8".into())),
            Err(_) if out.text.len() >= out.limit => Err(EngineError::Template(format!(
                "the template rendered more than {} bytes for {content} bytes of messages",
                out.limit
            ))),
            Err(e) => Err(EngineError::Template(e.to_string())),
        }
    }
}

/// The environment every template runs in: Hugging Face's settings and functions, and fuel.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A template is read from the model file: bound its work (a loop nested in a loop over the
    // messages must not run forever) and, in `render`, its output.
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
    env
}

/// The error for a template the sandbox stopped while `doing` it.
fn sandbox_error(doing: &str, f: sandbox::Failure) -> EngineError {
    EngineError::TemplateRefused(match f {
        sandbox::Failure::Time => format!(
            "the chat template took longer than {} s {doing}; it is refused",
            TEMPLATE_LIMITS.time.as_secs()
        ),
        sandbox::Failure::Memory => format!(
            "the chat template needed more than {} MiB {doing}; it is refused",
            TEMPLATE_LIMITS.memory_bytes >> 20
        ),
        sandbox::Failure::Unavailable(m) => {
            format!("the chat template could not be run in its sandbox ({doing}): {m}")
        }
    })
}

/// Today's date (UTC) in the few strftime forms chat templates use (%d %m %Y %y %b %B).
fn strftime_now(fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let month = MONTHS[(m - 1) as usize];
    fmt.replace("%d", &format!("{d:02}"))
        .replace("%m", &format!("{m:02}"))
        .replace("%Y", &y.to_string())
        .replace("%y", &format!("{:02}", y % 100))
        .replace("%B", month)
        .replace("%b", &month[..3])
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_fallback_renders_generation_prompt() {
        let t = ChatTemplate::new(CHATML_TEMPLATE, "", "").unwrap();
        let s = t.render(&[Message::new("user", "hi")], true).unwrap();
        assert_eq!(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        let err = t.render(&[], true).unwrap_err().to_string();
        assert!(err.contains("no system role"), "{err}");
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new("{{ messages[0]['content'].strip() }}", "", "").unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  x  ")], false).unwrap(),
            "x"
        );
    }

    /// A template from a crafted file can neither run forever nor render without bound.
    #[test]
    fn runaway_templates_stop_with_an_error() {
        let endless =
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(endless, "", "").unwrap();
        let start = std::time::Instant::now();
        let err = t
            .render(&[Message::new("user", "hi")], true)
            .unwrap_err()
            .to_string();
        // Out of fuel, or stopped by the sandbox's clock first on a slow machine.
        assert!(err.contains("fuel") || err.contains("longer than"), "{err}");
        assert!(start.elapsed().as_secs() < 30);
        let huge = "{% for a in range(100000) %}{{ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' }}{% endfor %}";
        let t = ChatTemplate::new(huge, "", "").unwrap();
        let err = t
            .render(&[Message::new("user", "hi")], true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than"), "{err}");
    }

    /// Templates whose single instructions cost without bound: a string doubled in a loop
    /// (terabytes from a hundred bytes) and repetitions of a 100 MB string (minutes in bounded
    /// memory; the form the `chat_template` fuzz target found).
    #[cfg(target_os = "linux")]
    #[test]
    fn templates_that_would_exhaust_memory_or_time_are_stopped_from_outside() {
        let doubling = "{% set ns = namespace(s='x') %}{% for i in range(48) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}";
        let repeating = "{% for i in range(1000) %}{% set s = messages[0].content[:1] * 99999999 %}{% endfor %}";
        for (source, why) in [(doubling, "MiB"), (repeating, "longer than")] {
            let t = ChatTemplate::new(source, "", "").unwrap();
            let start = std::time::Instant::now();
            let err = t
                .render(&[Message::new("user", "hi")], true)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{source}: {err}");
            assert!(start.elapsed().as_secs() < 15, "{source}");
        }
        // Constant folding at compile time: twenty 100 MB strings.
        let folded = "{{ 'x' * 99999999 }}".repeat(20);
        let err = ChatTemplate::new(&folded, "", "")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("MiB compiling"), "{err}");
        // A real template still renders through the sandbox.
        let t = ChatTemplate::new(&CHATML_TEMPLATE.replace("im_", "im-"), "", "").unwrap();
        assert!(t
            .render(&[Message::new("user", "hi")], true)
            .unwrap()
            .contains("hi"));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
    }
}
