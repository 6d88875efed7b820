//! Final answers: extraction from a model's text, and normalization so that equal answers
//! compare equal before voting.
//!
//! Extraction order (the first form found wins): the last `\boxed{...}`, the last "The answer
//! is ...", GSM8K's `#### ...`, else the last number in the text.

/// The instruction appended to a question so that the answer comes in a form `extract` reads.
pub const DEFAULT_INSTRUCTION: &str =
    "End your reply with \"The answer is N.\" where N is the final answer.";

/// The final answer in `text`, normalized; None when there is none.
pub fn extract(text: &str) -> Option<String> {
    let raw = last_boxed(text)
        .or_else(|| after_last(text, "the answer is"))
        .or_else(|| after_last(text, "####"))
        .or_else(|| last_number(text))?;
    let n = normalize(&raw);
    (!n.is_empty()).then_some(n)
}

/// Canonical form of an answer: no `$`, spaces or thousands separators; numbers without a
/// trailing `.0`; a simple fraction `a/b` that divides evenly becomes its integer, otherwise it
/// is reduced. Text answers are lower-cased.
pub fn normalize(answer: &str) -> String {
    let mut s: String = answer
        .trim()
        .trim_end_matches(['.', ',', ';', ':', '!'])
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '$')
        .collect();
    for wrapper in ["\\text{", "\\mathrm{", "\\boxed{"] {
        if let Some(inner) = s.strip_prefix(wrapper).and_then(|r| r.strip_suffix('}')) {
            s = inner.to_string();
        }
    }
    s = s.replace("\\!", "").replace("\\%", "").replace('%', "");
    if let Some(frac) = parse_fraction(&s) {
        return frac;
    }
    let plain = s.replace(',', "");
    if let Ok(x) = plain.parse::<f64>() {
        return format_number(x);
    }
    s.to_lowercase()
}

fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        let s = format!("{x}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// `a/b` or `\frac{a}{b}` (also `\dfrac`) with integer parts.
fn parse_fraction(s: &str) -> Option<String> {
    let (a, b) = if let Some(rest) = s
        .strip_prefix("\\frac{")
        .or_else(|| s.strip_prefix("\\dfrac{"))
    {
        let (a, rest) = rest.split_once("}{")?;
        (a.to_string(), rest.strip_suffix('}')?.to_string())
    } else {
        let (a, b) = s.split_once('/')?;
        (a.to_string(), b.to_string())
    };
    let a: i64 = a.replace(',', "").parse().ok()?;
    let b: i64 = b.replace(',', "").parse().ok()?;
    if b == 0 {
        return None;
    }
    let g = gcd(a.unsigned_abs(), b.unsigned_abs()) as i64;
    let (mut a, mut b) = (a / g, b / g);
    if b < 0 {
        a = -a;
        b = -b;
    }
    Some(if b == 1 {
        a.to_string()
    } else {
        format!("{a}/{b}")
    })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}

/// Contents of the last `\boxed{...}`, braces balanced.
fn last_boxed(text: &str) -> Option<String> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(text[start..start + i].to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// The number (or short expression) right after the last occurrence of `marker`
/// (case-insensitive).
fn after_last(text: &str, marker: &str) -> Option<String> {
    let lower = text.to_lowercase();
    let pos = lower.rfind(marker)? + marker.len();
    // Lower-casing can change byte lengths outside ASCII; fall back to the original if so.
    let rest = if lower.len() == text.len() {
        &text[pos..]
    } else {
        &lower[pos..]
    };
    let rest = rest.trim_start_matches([':', ' ', '\t']);
    if let Some(b) = last_boxed(rest) {
        return Some(b);
    }
    let line = rest.lines().next().unwrap_or("");
    first_number(line).or_else(|| {
        let word = line.trim().trim_end_matches('.').to_string();
        (!word.is_empty() && word.len() <= 32).then_some(word)
    })
}

/// Numbers in text: optional sign, digits with thousands separators, decimals, a fraction.
fn numbers(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_digit()
            || (chars[i] == '-'
                && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit())
                && (i == 0 || !chars[i - 1].is_ascii_alphanumeric()));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < chars.len() {
            let c = chars[j];
            let next_digit = chars.get(j + 1).is_some_and(|d| d.is_ascii_digit());
            if c.is_ascii_digit() || ((c == ',' || c == '.' || c == '/') && next_digit) {
                j += 1;
            } else {
                break;
            }
        }
        out.push(chars[i..j].iter().collect());
        i = j;
    }
    out
}

fn first_number(text: &str) -> Option<String> {
    numbers(text).into_iter().next()
}

fn last_number(text: &str) -> Option<String> {
    numbers(text).pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_forms() {
        assert_eq!(
            extract("so \\boxed{\\frac{6}{4}} is it"),
            Some("3/2".into())
        );
        assert_eq!(
            extract("x \\boxed{12} then \\boxed{1{,}000}"),
            Some("1{,}000".into())
        );
        assert_eq!(
            extract("First 3, then 4. The answer is 1,234."),
            Some("1234".into())
        );
        assert_eq!(extract("The answer is: $18.00"), Some("18".into()));
        assert_eq!(
            extract("Natalia sold 48/2 = 24 clips.\n#### 72"),
            Some("72".into())
        );
        assert_eq!(extract("7 + 4 equals 11"), Some("11".into()));
        assert_eq!(extract("I owe -5 dollars"), Some("-5".into()));
        assert_eq!(extract("The answer is Paris."), Some("paris".into()));
        assert_eq!(extract("no digits here"), None);
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize("1,000"), "1000");
        assert_eq!(normalize("12.0"), "12");
        assert_eq!(normalize("12.50"), "12.5");
        assert_eq!(normalize("$ 7 "), "7");
        assert_eq!(normalize("10/4"), "5/2");
        assert_eq!(normalize("8/4"), "2");
        assert_eq!(normalize("\\dfrac{3}{-6}"), "-1/2");
        assert_eq!(normalize("50%"), "50");
        assert_eq!(normalize("\\text{Paris}"), "paris");
    }
}
