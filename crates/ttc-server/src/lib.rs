//! ttc-server: an OpenAI-compatible HTTP server over one engine (`ttc-run serve`):
//! `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`, `GET /health`,
//! `GET /metrics`.
//!
//! Each request runs on a blocking thread with its own session on the shared engine; their
//! decode steps run together in the engine's batched forward passes (continuous batching:
//! `ttc_engine::batcher`), and prompts that share a beginning share its KV blocks through the
//! prefix cache. Test-time scaling is chosen per request as `ttc-run` chooses it (the `ttc`
//! extension object overrides), with the load the server is under in its latency predictions.
//! Requests beyond `max_running` wait in a queue of `max_queued`; beyond that, 429.

mod answer;
mod api_error;
mod metrics;
mod wire;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use ttc_allocator::policy::{Allocator, Lambdas, Target};
use ttc_allocator::route::PromptIds;
use ttc_allocator::{prompt, Config};
use ttc_engine::chat_template::Message;
use ttc_engine::sampler::SamplingParams;
use ttc_engine::Engine;
use ttc_methods::Method;

use answer::{Job, Outcome, Plan, Sink};
pub use api_error::ApiError;
use metrics::Metrics;
use wire::{ChatRequest, Common, CompletionRequest, Prompt, TtcOptions};

/// Choices per request at most (`n`).
pub const MAX_N: u32 = 64;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// With a key, every route but `/health` needs `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Requests running at once (their sequences decode together).
    pub max_running: usize,
    /// Requests waiting for a slot at most; one more is answered 429.
    pub max_queued: usize,
    /// The answer-format instruction for prompts with a final answer.
    pub instruction: String,
}

/// What every handler shares.
pub struct App {
    pub engine: Arc<Engine>,
    pub allocator: RwLock<Allocator>,
    metrics: Arc<Metrics>,
    config: ServerConfig,
    slots: Arc<Semaphore>,
    requests: AtomicU64,
}

/// Serves until Ctrl-C; `on_listen` is told the address bound (port 0 picks a free one).
pub fn serve(
    engine: Engine,
    allocator: Allocator,
    config: ServerConfig,
    on_listen: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(config.max_running.max(1) + 4)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port)).await?;
        on_listen(listener.local_addr()?);
        let app = Arc::new(App {
            engine: Arc::new(engine),
            allocator: RwLock::new(allocator),
            metrics: Arc::new(Metrics::default()),
            slots: Arc::new(Semaphore::new(config.max_running.max(1))),
            config,
            requests: AtomicU64::new(0),
        });
        axum::serve(listener, router(app))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    })
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such route").into_response() })
        .with_state(app)
}

fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &app.config.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&app, &headers) {
        return e.into_response();
    }
    Json(json!({
        "object": "list",
        "data": [{"id": app.engine.name, "object": "model", "created": 0, "owned_by": "ttc"}],
    }))
    .into_response()
}

async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&app, &headers) {
        return e.into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(&app.engine),
    )
        .into_response()
}

/// Which endpoint a request came through: it decides the prompt's form and the wire shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completion,
}

async fn chat_completions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = async {
        authorize(&app, &headers)?;
        let req: ChatRequest = parse(&body)?;
        let ids = chat_ids(&app, &req)?;
        respond(app.clone(), Endpoint::Chat, ids, req.common).await
    }
    .await;
    finish(&app, r)
}

async fn completions(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        authorize(&app, &headers)?;
        let req: CompletionRequest = parse(&body)?;
        let text = match req.prompt {
            Prompt::One(s) => s,
            Prompt::Many(mut v) if v.len() == 1 => v.remove(0),
            Prompt::Many(_) => {
                return Err(ApiError::bad_request(
                    "invalid_value",
                    "prompt must be one string (or a list of one)",
                ))
            }
        };
        let tok = &app.engine.tokenizer;
        let ids = PromptIds {
            plain: tok.encode_prompt(&text)?,
            instructed: tok
                .encode_prompt(&prompt::user_message(&text, Some(&app.config.instruction)))?,
        };
        respond(app.clone(), Endpoint::Completion, ids, req.common).await
    }
    .await;
    finish(&app, r)
}

fn finish(app: &App, r: Result<Response, ApiError>) -> Response {
    match r {
        Ok(resp) => resp,
        Err(e) => {
            app.metrics.request_done(e.status.as_u16());
            e.into_response()
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("the request body is not valid: {e}"),
        )
    })
}

/// The conversation's ids as typed, and with the instruction added to its last user message.
fn chat_ids(app: &App, req: &ChatRequest) -> Result<PromptIds, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("invalid_value", "messages is empty"));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::bad_request(
                    "invalid_value",
                    format!("unsupported message role '{other}' (system, user, assistant)"),
                ))
            }
        };
        let content = m.content.as_ref().map(|c| c.text()).unwrap_or_default();
        messages.push(Message::new(role, content));
    }
    let plain = app.engine.encode_chat(&messages)?;
    let instructed = match messages.last_mut() {
        Some(last) if last.role == "user" => {
            last.content = prompt::user_message(&last.content, Some(&app.config.instruction));
            app.engine.encode_chat(&messages)?
        }
        _ => plain.clone(),
    };
    Ok(PromptIds { plain, instructed })
}

/// What a request asks to run, checked.
fn plan(common: &Common) -> Result<(Plan, usize, usize), ApiError> {
    let n = common.n.unwrap_or(1);
    if n == 0 || n > MAX_N {
        return Err(ApiError::bad_request(
            "invalid_value",
            format!("n must be in 1..={MAX_N}, got {n}"),
        ));
    }
    let ext: TtcOptions = common.ttc.clone().unwrap_or_default();
    let positive = |name: &str, v: Option<u32>, max: u32| -> Result<Option<usize>, ApiError> {
        match v {
            Some(x) if x == 0 || x > max => Err(ApiError::bad_request(
                "invalid_value",
                format!("ttc.{name} must be in 1..={max}, got {x}"),
            )),
            other => Ok(other.map(|x| x as usize)),
        }
    };
    let beam_width = positive("beam_width", ext.beam_width, 1024)?.unwrap_or(2);
    let max_iters =
        positive("max_iters", ext.max_iters, 1000)?.unwrap_or(ttc_methods::DEFAULT_MAX_ITERS);
    let ext_n = positive("n", ext.n, 1024)?;
    for (name, v) in [
        ("lambda_latency", ext.lambda_latency),
        ("lambda_tokens", ext.lambda_tokens),
    ] {
        if v.is_some_and(|x| !x.is_finite() || x < 0.0) {
            return Err(ApiError::bad_request(
                "invalid_value",
                format!("ttc.{name} must be a number at least 0"),
            ));
        }
    }
    for (name, v) in [
        ("target_latency_s", ext.target_latency_s),
        ("max_latency_s", ext.max_latency_s),
    ] {
        if v.is_some_and(|x| !x.is_finite() || x <= 0.0) {
            return Err(ApiError::bad_request(
                "invalid_value",
                format!("ttc.{name} must be positive"),
            ));
        }
    }
    let auto = || Plan::Auto {
        lambdas: Lambdas {
            latency: ext.lambda_latency.unwrap_or(Lambdas::DEFAULT.latency),
            tokens: ext.lambda_tokens.unwrap_or(Lambdas::DEFAULT.tokens),
        },
        target: ext.target_latency_s.map(Target::Latency),
        max_latency: ext.max_latency_s,
    };
    let plan = match ext.method.as_deref() {
        // OpenAI's n: that many plain samples of one prefill.
        None if n > 1 => Plan::Samples(n as usize),
        None | Some("auto") => auto(),
        Some("plain") | Some("sample") if n > 1 => Plan::Samples(n as usize),
        Some("plain") | Some("sample") => Plan::Forced(Config::SAMPLE),
        Some(m) => {
            let method: Method = m.parse().map_err(|e: String| {
                ApiError::bad_request("invalid_value", format!("ttc.method: {e}"))
            })?;
            Plan::Forced(Config::for_method(
                method,
                ext_n.unwrap_or(if n > 1 { n as usize } else { 4 }),
                beam_width,
                max_iters,
            ))
        }
    };
    Ok((plan, beam_width, max_iters))
}

fn sampling(common: &Common) -> Result<SamplingParams, ApiError> {
    // OpenAI's fields over ttc's defaults (those of `ttc-run`).
    let defaults = SamplingParams::default();
    let temperature = common.temperature.unwrap_or(defaults.temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(
            "invalid_value",
            format!("temperature must be in 0..=2, got {temperature}"),
        ));
    }
    let top_p = common.top_p.unwrap_or(defaults.top_p);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request(
            "invalid_value",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    Ok(SamplingParams {
        temperature,
        top_p,
        ..defaults
    })
}

/// Takes a slot (or a place in the queue, or answers 429) and runs the request.
async fn respond(
    app: Arc<App>,
    endpoint: Endpoint,
    ids: PromptIds,
    common: Common,
) -> Result<Response, ApiError> {
    let (plan, beam_width, max_iters) = plan(&common)?;
    let params = sampling(&common)?;
    let max_tokens = common.max_completion_tokens.or(common.max_tokens);
    if max_tokens == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_value",
            "max_tokens must be at least 1",
        ));
    }
    let longest = ids.plain.len().max(ids.instructed.len());
    if longest >= app.engine.context_limit() {
        return Err(ttc_engine::EngineError::PromptTooLong {
            prompt_tokens: longest,
            context: app.engine.context_limit(),
        }
        .into());
    }
    let number = app.requests.fetch_add(1, Ordering::Relaxed);
    let want_logprobs = match &common.logprobs {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(_)) => true, // the completions API's `logprobs: k`
        _ => false,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let job = Job {
        ids,
        params,
        seed: common.seed.unwrap_or(number),
        max_tokens: max_tokens.map(|m| m as usize),
        stop: common
            .stop
            .clone()
            .map(|s| s.into_vec())
            .unwrap_or_default(),
        plan,
        beam_width,
        max_iters,
        want_logprobs,
        cancel: cancel.clone(),
        sink: None,
        arrived: Instant::now(),
    };
    let permit = admit(&app).await?;
    let shape = Shape {
        endpoint,
        id: format!(
            "{}-{number}",
            if endpoint == Endpoint::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            }
        ),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        model: app.engine.name.clone(),
    };
    if common.stream.unwrap_or(false) {
        let include_usage = common.stream_options.is_some_and(|o| o.include_usage);
        return Ok(stream(app, job, shape, permit, include_usage));
    }
    // A client that goes away drops this future: the guard cancels the run.
    let _guard = CancelOnDrop(cancel);
    let worker = app.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        answer::run(&worker, job)
    })
    .await
    .map_err(|e| ApiError::internal(format!("the request's thread failed: {e}")))??;
    app.metrics.chose(&outcome.config);
    app.metrics.request_done(200);
    Ok(Json(shape.full(&outcome)).into_response())
}

struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A running slot; counted in the metrics while held.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a waiting request out of the queue however its wait ends.
struct Queued(Arc<Metrics>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn admit(app: &Arc<App>) -> Result<Slot, ApiError> {
    let waiting = app.metrics.queued.fetch_add(1, Ordering::Relaxed);
    let queued = Queued(app.metrics.clone());
    if waiting >= app.config.max_queued && app.slots.available_permits() == 0 {
        return Err(ApiError::busy(format!(
            "{} requests are running and {waiting} waiting: try again shortly",
            app.config.max_running
        )));
    }
    let permit = app
        .slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::internal("the server is shutting down"))?;
    drop(queued);
    app.metrics.running.fetch_add(1, Ordering::Relaxed);
    Ok(Slot {
        _permit: permit,
        metrics: app.metrics.clone(),
    })
}

/// How one request's objects look on the wire.
#[derive(Clone)]
struct Shape {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
}

impl Shape {
    fn full(&self, o: &Outcome) -> Value {
        let choices: Vec<Value> = o
            .choices
            .iter()
            .map(|c| match self.endpoint {
                Endpoint::Chat => json!({
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text},
                    "finish_reason": c.finish_reason,
                    "logprobs": c.logprobs,
                }),
                Endpoint::Completion => json!({
                    "index": c.index,
                    "text": c.text,
                    "finish_reason": c.finish_reason,
                    "logprobs": c.logprobs.as_ref().map(|l| json!({
                        "tokens": l.content.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
                        "token_logprobs": l.content.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                    })),
                }),
            })
            .collect();
        json!({
            "id": self.id,
            "object": match self.endpoint {
                Endpoint::Chat => "chat.completion",
                Endpoint::Completion => "text_completion",
            },
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": o.usage,
        })
    }

    /// One streamed chunk: `piece` of choice `index`, or its end (`finish`).
    fn chunk(&self, index: usize, piece: Option<&str>, finish: Option<&str>) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let delta = match piece {
                    Some(p) => json!({"role": "assistant", "content": p}),
                    None => json!({}),
                };
                json!({"index": index, "delta": delta, "finish_reason": finish, "logprobs": null})
            }
            Endpoint::Completion => json!({
                "index": index,
                "text": piece.unwrap_or(""),
                "finish_reason": finish,
                "logprobs": null,
            }),
        };
        json!({
            "id": self.id,
            "object": match self.endpoint {
                Endpoint::Chat => "chat.completion.chunk",
                Endpoint::Completion => "text_completion",
            },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }
}

fn data(v: &Value) -> Result<Event, Infallible> {
    Ok(Event::default().data(v.to_string()))
}

/// Server-sent events: pieces as they are made (one-sequence answers), each other choice's
/// text when it is known, the ends, the usage if asked, then `[DONE]`.
fn stream(app: Arc<App>, mut job: Job, shape: Shape, slot: Slot, include_usage: bool) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(1024);
    let sink: Sink = {
        let tx = tx.clone();
        let shape = shape.clone();
        Arc::new(move |index, piece| {
            if index == usize::MAX {
                return !tx.is_closed();
            }
            tx.blocking_send(data(&shape.chunk(index, Some(piece), None)))
                .is_ok()
        })
    };
    job.sink = Some(sink);
    let worker = app.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let result = answer::run(&worker, job);
        match result {
            Ok(o) => {
                worker.metrics.chose(&o.config);
                worker.metrics.request_done(200);
                for c in &o.choices {
                    if !c.streamed {
                        let _ = tx.blocking_send(data(&shape.chunk(c.index, Some(&c.text), None)));
                    }
                    let _ =
                        tx.blocking_send(data(&shape.chunk(c.index, None, Some(c.finish_reason))));
                }
                if include_usage {
                    let mut v = shape.chunk(0, None, None);
                    v["choices"] = json!([]);
                    v["usage"] = json!(o.usage);
                    let _ = tx.blocking_send(data(&v));
                }
            }
            Err(e) => {
                worker.metrics.request_done(e.status.as_u16());
                let _ = tx.blocking_send(data(&json!(e.body())));
            }
        }
        let _ = tx.blocking_send(Ok(Event::default().data("[DONE]")));
    });
    (StatusCode::OK, Sse::new(ReceiverStream::new(rx))).into_response()
}
