//! What a running method shows as it goes: a one-sequence answer streams to stdout token by
//! token (as `--method plain` does); a method of several sequences draws one progress line on
//! stderr (sequences done, tokens, seconds), on a terminal only, until its answer is printed.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ttc_methods::{Observer, Progress};

/// Whether a progress line is on stderr now.
static LINE_DRAWN: AtomicBool = AtomicBool::new(false);

/// An observer that streams text to stdout when `stream_text` (and records in `streamed` that
/// it did), and draws the progress line when stderr is a terminal.
pub fn observer(stream_text: bool, streamed: Arc<AtomicBool>) -> Observer {
    let terminal = std::io::stderr().is_terminal();
    Observer::new(move |p| match p {
        Progress::Text(piece) if stream_text => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
            streamed.store(true, Ordering::Relaxed);
        }
        Progress::Text(_) => {}
        Progress::Step {
            live,
            sequences,
            tokens,
            elapsed_s,
        } if terminal => {
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r\x1b[2Kttc: {}/{sequences} sequences done, {tokens} tokens, {elapsed_s:.1} s",
                sequences - live
            );
            let _ = err.flush();
            LINE_DRAWN.store(true, Ordering::Relaxed);
        }
        Progress::Step { .. } => {}
    })
}

/// Erases the progress line, if one was drawn.
pub fn clear() {
    if LINE_DRAWN.swap(false, Ordering::Relaxed) {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    }
}
