//! llama.cpp's greedy continuations of five chat prompts on the default model, and the
//! teacher-forced logits of ttc on the same tokens: the golden test reads them, and so does the
//! `kernel_divergence` example that measures how far two instruction sets' logits part.
//!
//! Expected tokens come from llama.cpp (`llama-completion --temp 0` on the prompt that the
//! GGUF's chat template renders, llama-cpp-python 0.3.36's vendored llama.cpp built for
//! AVX-512), not from this code.

use ttc_engine::chat_template::Message;
use ttc_engine::kv_cache::KvCache;
use ttc_engine::models::llama::LayerObserver;
use ttc_engine::models::BatchEntry;
use ttc_engine::Engine;

/// llama.cpp's greedy continuation (token ids) and whether it then ended with EOS, from
/// `llama-completion --temp 0 -n 48 -ctk f32 -ctv f32 -fa off`: an f32 KV cache and plain
/// attention compute what ttc computes (llama.cpp's default f16 cache alone moves logits by
/// more than 0.1 and flips some of these near-ties).
pub struct Reference {
    pub question: &'static str,
    pub tokens: &'static [u32],
    pub ends_with_eos: bool,
}

pub const REFERENCES: &[Reference] = &[
    Reference {
        question: "What is the capital of France?",
        tokens: &[
            60, 23, 39614, 1141, 552, 28, 2618, 2828, 313, 7712, 769, 28, 2618, 2849, 1558, 28,
            2618, 2849, 1558, 26261, 11708, 46767, 28, 2618, 2849, 1558, 26261, 11708, 46767, 28,
            2618, 2849, 1558, 26261, 11708, 46767, 28, 2618, 2849, 1558, 26261, 11708, 46767, 28,
            2618, 2849, 1558, 26261,
        ],
        ends_with_eos: false,
    },
    Reference {
        question: "Write a haiku about the sea.",
        tokens: &[
            504, 6147, 282, 260, 3426, 28, 253, 13879, 6122, 28, 198, 49, 9154, 303, 5082, 282,
            260, 5065, 506, 5595, 28, 198, 49, 13151, 282, 260, 6122, 338, 5721, 8823, 28, 198, 49,
            13151, 282, 260, 5065, 506, 1149, 28, 198, 49, 13151, 282, 260, 3426, 506, 6122,
        ],
        ends_with_eos: false,
    },
    Reference {
        question: "List three primary colors.",
        tokens: &[
            504, 3003, 4683, 359, 42, 198, 198, 12869, 42, 492, 365, 12869, 25, 198, 23390, 42,
            10062, 365, 23390, 25, 198, 36086, 42, 13581, 365, 36086, 25, 198, 198, 3902, 359, 260,
            1296, 3003, 4683, 338, 1822, 281, 260, 35526, 2380, 1743, 28, 527, 314, 253, 4959,
            2380,
        ],
        ends_with_eos: false,
    },
    Reference {
        question: "What is 7 + 4?",
        tokens: &[
            2068, 803, 216, 39, 284, 216, 36, 28, 392, 737, 288, 8993, 260, 2966, 281, 253, 1678,
            970, 30, 1046, 416, 536, 451, 411, 1015, 260, 1909, 282, 476, 344, 1084, 1127, 253,
            1678, 3938, 18, 355, 540, 4170, 28, 260, 3938, 282, 476, 344, 1084, 1127, 253,
        ],
        ends_with_eos: false,
    },
    Reference {
        question: "Explain photosynthesis in one sentence.",
        tokens: &[
            33580, 14870, 314, 253, 4334, 5748, 980, 338, 18065, 3118, 7600, 618, 8102, 284, 4983,
            30,
        ],
        ends_with_eos: true,
    },
];

impl Reference {
    /// llama.cpp's tokens, then EOS where it ended there.
    pub fn expected(&self, eos: u32) -> Vec<u32> {
        self.tokens
            .iter()
            .copied()
            .chain(self.ends_with_eos.then_some(eos))
            .collect()
    }
}

/// The chat prompt of `question`, prefilled in one chunk (as llama.cpp does for short prompts).
pub fn prompt(e: &Engine, question: &str) -> Vec<u32> {
    e.encode_chat(&[Message::new("user", question)]).unwrap()
}

/// Teacher forcing on llama.cpp's tokens: the logits before each expected token (the prompt
/// in one forward pass, then one token at a time), `observe`d layer by layer at step `trace`.
pub fn teacher_forced_logits(
    e: &Engine,
    r: &Reference,
    mut trace: Option<(usize, &mut LayerObserver)>,
) -> Vec<Vec<f32>> {
    let prompt = prompt(e, r.question);
    let mut cache = KvCache::new(e.config(), 16, 16, &candle_core::Device::Cpu).unwrap();
    let seq = cache.new_sequence();
    let expected = r.expected(e.tokenizer.eos_ids[0]);
    let mut out = Vec::with_capacity(expected.len());
    let mut input = prompt;
    for (i, &want) in expected.iter().enumerate() {
        let start = cache.len(seq);
        cache.reserve(seq, input.len()).unwrap();
        let slots = cache.slots(seq, 0..start + input.len()).unwrap();
        let batch = [BatchEntry {
            tokens: &input,
            slots: &slots,
            want_output: true,
        }];
        let result = match trace.as_mut() {
            Some((step, observe)) if *step == i => {
                e.model.forward_batch_observed(&batch, &cache, *observe)
            }
            _ => e.model.forward_batch(&batch, &cache),
        }
        .unwrap();
        cache.commit(seq, &input).unwrap();
        out.push(
            result
                .logits
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        input = vec![want];
    }
    out
}
