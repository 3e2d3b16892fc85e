//! Write qhybrid agents in Rust (agent ABI version 2), with the standard library only.
//!
//! ```ignore
//! use qhybrid::{json, Agent, Message};
//!
//! struct Echo;
//! impl Agent for Echo {
//!     fn init(_config: &json::Value) -> Result<Self, String> { Ok(Echo) }
//!     fn on_message(&mut self, msg: &Message) -> Result<(), String> {
//!         if !msg.from_runtime() { qhybrid::send(msg.from, msg.kind, msg.payload)?; }
//!         Ok(())
//!     }
//! }
//! qhybrid::export_agent!(Echo);
//! ```
//!
//! Build with `python sdk/build.py` (Debian's `rustc` and `libstd-rust-dev-wasm32`, target
//! `wasm32-unknown-unknown`, no cargo). [`export_agent!`] writes the exports: `qh_abi_version`,
//! `qh_alloc` (one growing scratch buffer), `qh_init` (the config, parsed) and `qh_on_message`.
//! An `Err` from a handler fails the message with its text (`set_error`); a panic is logged
//! as an error line before the module traps. The agent's value lives in linear memory, so the
//! host's own snapshot (memory and exported globals) restores it exactly after a worker dies;
//! [`export_agent!`]`(T, snapshot)` exports `qh_snapshot`/`qh_restore` from
//! [`Snapshot`] instead, for agents that prefer a compact state.

pub mod abi;
pub mod json;

pub use json::Value;

/// One incoming message; the payload is valid during the call only.
pub struct Message<'a> {
    pub from: i32,
    pub kind: i32,
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    pub fn from_runtime(&self) -> bool {
        self.from == abi::FROM_RUNTIME
    }
    /// The payload as UTF-8 text (invalid bytes replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.payload).into_owned()
    }
    /// The payload parsed as JSON.
    pub fn json(&self) -> Result<Value, String> {
        json::parse(self.payload)
    }
    /// The envelope: correlation id (0: none), where a reply goes, the timer that sent it.
    pub fn corr(&self) -> i64 {
        unsafe { abi::msg_corr() }
    }
    pub fn reply_to(&self) -> i32 {
        unsafe { abi::msg_reply_to() }
    }
    pub fn timer(&self) -> Option<i32> {
        let t = unsafe { abi::msg_timer() };
        if t >= 0 {
            Some(t)
        } else {
            None
        }
    }
}

/// The agent: made from its config once, then handed every message.
pub trait Agent: Sized {
    fn init(config: &Value) -> Result<Self, String>;
    fn on_message(&mut self, msg: &Message) -> Result<(), String>;
}

/// An agent-defined snapshot (see [`export_agent!`]).
pub trait Snapshot: Agent {
    fn snapshot(&self) -> Vec<u8>;
    fn restore(&mut self, state: &[u8]) -> Result<(), String>;
}

fn code(rc: i32) -> Result<i32, String> {
    if rc >= 0 {
        Ok(rc)
    } else {
        Err(format!("host call failed with code {}", rc))
    }
}

// -- logging -----------------------------------------------------------------------------------

pub fn log(level: i32, text: &str) {
    let mut n = text.len().min(abi::LOG_MAX as usize);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    unsafe { abi::log(level, text.as_ptr(), n) }
}
pub fn info(text: &str) {
    log(abi::LOG_INFO, text)
}
pub fn warn(text: &str) {
    log(abi::LOG_WARNING, text)
}
pub fn error(text: &str) {
    log(abi::LOG_ERROR, text)
}

// -- messages ----------------------------------------------------------------------------------

pub fn send(to: i32, kind: i32, payload: &[u8]) -> Result<(), String> {
    code(unsafe { abi::send(to, kind, payload.as_ptr(), payload.len()) }).map(|_| ())
}
pub fn send_env(to: i32, kind: i32, corr: i64, reply_to: i32, payload: &[u8]) -> Result<(), String> {
    code(unsafe { abi::send_env(to, kind, corr, reply_to, payload.as_ptr(), payload.len()) })
        .map(|_| ())
}
/// Answer the message being handled (to its reply-to, with its correlation id).
pub fn reply(kind: i32, payload: &[u8]) -> Result<(), String> {
    code(unsafe { abi::reply(kind, payload.as_ptr(), payload.len()) }).map(|_| ())
}
pub fn new_corr() -> i64 {
    unsafe { abi::new_corr() }
}
pub fn lookup(name: &str) -> Option<i32> {
    let id = unsafe { abi::lookup(name.as_ptr(), name.len()) };
    if id >= 0 {
        Some(id)
    } else {
        None
    }
}
pub fn self_id() -> i32 {
    unsafe { abi::self_id() }
}
pub fn now() -> i64 {
    unsafe { abi::now() }
}
pub fn random_u64() -> u64 {
    unsafe { abi::random_u64() }
}

// -- groups, topics, timers ----------------------------------------------------------------------

pub fn group_size(group: &str) -> Option<i32> {
    let n = unsafe { abi::group_size(group.as_ptr(), group.len()) };
    if n >= 0 {
        Some(n)
    } else {
        None
    }
}
pub fn group_member(group: &str, index: i32) -> Option<i32> {
    let id = unsafe { abi::group_member(group.as_ptr(), group.len(), index) };
    if id >= 0 {
        Some(id)
    } else {
        None
    }
}
pub fn group_send(group: &str, kind: i32, payload: &[u8]) -> Result<i32, String> {
    code(unsafe { abi::group_send(group.as_ptr(), group.len(), kind, payload.as_ptr(), payload.len()) })
}
pub fn subscribe(topic: &str) {
    unsafe { abi::subscribe(topic.as_ptr(), topic.len()) };
}
pub fn publish(topic: &str, kind: i32, payload: &[u8]) -> Result<(), String> {
    code(unsafe { abi::publish(topic.as_ptr(), topic.len(), kind, payload.as_ptr(), payload.len()) })
        .map(|_| ())
}
pub fn timer_after(delay: i32, kind: i32, payload: &[u8]) -> Result<i32, String> {
    code(unsafe { abi::timer_after(delay, kind, payload.as_ptr(), payload.len()) })
}
pub fn timer_every(period: i32, kind: i32, payload: &[u8]) -> Result<i32, String> {
    code(unsafe { abi::timer_every(period, kind, payload.as_ptr(), payload.len()) })
}
pub fn timer_cancel(timer: i32) -> bool {
    unsafe { abi::timer_cancel(timer) == abi::OK }
}

// -- tensors and GPU jobs ----------------------------------------------------------------------
//
// Handles are `i32`s (see docs/agent-abi.md, "Shared tensors"); errors are the ABI's codes.

/// A handle for the named tensor, or None.
pub fn tensor_open(name: &str) -> Option<i32> {
    let h = unsafe { abi::tensor_open(name.as_ptr(), name.len()) };
    if h >= 0 {
        Some(h)
    } else {
        None
    }
}
/// A new zero-filled tensor (`dtype` one of `abi::DTYPE_*`), existing from the end of the tick.
pub fn tensor_create(name: &str, dtype: i32, shape: &[i32]) -> Result<i32, String> {
    code(unsafe {
        abi::tensor_create(name.as_ptr(), name.len(), dtype, shape.len() as i32, shape.as_ptr() as *const u8)
    })
}
/// Copy bytes of the tensor from byte `offset` into `dst`; how many.
pub fn tensor_read(h: i32, offset: i32, dst: &mut [u8]) -> Result<i32, String> {
    code(unsafe { abi::tensor_read(h, offset, dst.as_mut_ptr(), dst.len()) })
}
/// The tensor's float32 values from element `start` (as many as `dst` holds).
pub fn tensor_read_f32(h: i32, start: i32, dst: &mut [f32]) -> Result<i32, String> {
    code(unsafe { abi::tensor_read(h, start * 4, dst.as_mut_ptr() as *mut u8, dst.len() * 4) })
}
/// Write bytes at byte `offset`, applied at the end of the tick.
pub fn tensor_write(h: i32, offset: i32, src: &[u8]) -> Result<(), String> {
    code(unsafe { abi::tensor_write(h, offset, src.as_ptr(), src.len()) }).map(|_| ())
}
/// Write float32 values from element `start`, applied at the end of the tick.
pub fn tensor_write_f32(h: i32, start: i32, src: &[f32]) -> Result<(), String> {
    code(unsafe { abi::tensor_write(h, start * 4, src.as_ptr() as *const u8, src.len() * 4) })
        .map(|_| ())
}
/// v2: release a tensor this agent made, at the end of the tick (its name is free again).
pub fn tensor_release(h: i32) -> Result<(), String> {
    code(unsafe { abi::tensor_release(h) }).map(|_| ())
}
/// Queue `op(inputs) -> out_name` (a new tensor); the job id. Chain: get the output's handle
/// with [`tensor_open`] at once and pass it to a later job of the same message.
pub fn gpu_submit(op: &str, inputs: &[i32], out_name: &str, param: f32) -> Result<i32, String> {
    code(unsafe {
        abi::gpu_submit(
            op.as_ptr(),
            op.len(),
            inputs.as_ptr() as *const u8,
            inputs.len() as i32,
            out_name.as_ptr(),
            out_name.len(),
            param,
        )
    })
}
/// v2: queue `op(inputs)` into the existing tensor `out`, in place; the job id.
pub fn gpu_submit_into(op: &str, inputs: &[i32], out: i32, param: f32) -> Result<i32, String> {
    code(unsafe {
        abi::gpu_submit_into(op.as_ptr(), op.len(), inputs.as_ptr() as *const u8, inputs.len() as i32, out, param)
    })
}

// -- config, lifecycle, services ---------------------------------------------------------------

/// The config value at a dotted path ("" for all of it).
pub fn config_get(path: &str) -> Option<Value> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = unsafe { abi::config_get(path.as_ptr(), path.len(), buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return None;
        }
        if (n as usize) <= buf.len() {
            return json::parse(&buf[..n as usize]).ok();
        }
        buf.resize(n as usize, 0);
    }
}
pub fn stop_self() {
    unsafe { abi::stop_self() }
}
pub fn set_error(text: &str) {
    let n = text.len().min(abi::LOG_MAX as usize);
    unsafe { abi::set_error(text.as_ptr(), n) }
}
/// A chat request (see docs/agent-abi.md); the answer comes as `KIND_LLM_CHAT_DONE`.
pub fn llm_chat(request: &Value, tag: i32) -> i32 {
    let text = request.to_string();
    unsafe { abi::llm_chat(text.as_ptr(), text.len(), tag) }
}
/// Build a chat request: system and user messages, a token budget, and an optional schema.
pub fn chat_request(system: &str, user: &str, max_tokens: i64, schema: Option<Value>) -> Value {
    let messages = vec![
        json::object().set("role", "system").set("content", system),
        json::object().set("role", "user").set("content", user),
    ];
    let req = json::object().set("messages", messages).set("max_tokens", max_tokens);
    match schema {
        Some(s) => req.set("json_schema", s),
        None => req,
    }
}
pub fn tool_call(tool: &str, args: &Value, tag: i32) -> Result<i32, String> {
    let text = args.to_string();
    code(unsafe { abi::tool_call(tool.as_ptr(), tool.len(), text.as_ptr(), text.len(), tag) })
}
pub fn ask(question: &str, tag: i32) -> i32 {
    unsafe { abi::ask(question.as_ptr(), question.len(), tag) }
}
/// Start an instance of the scenario's group `group` (`name` "": `group-N`; `config`: keys
/// merged over the group's, `None`: none) when this message succeeds. The spawn id, or the
/// refusal; the new agent's id comes as `KIND_SPAWNED` (read it with `spawned_agent`).
pub fn spawn(group: &str, name: &str, config: Option<&Value>, tag: i32) -> Result<i32, String> {
    let text = config.map(|c| c.to_string()).unwrap_or_default();
    code(unsafe {
        abi::spawn(group.as_ptr(), group.len(), name.as_ptr(), name.len(), text.as_ptr(), text.len(), tag)
    })
}
/// The new agent's id in a `KIND_SPAWNED` message, or its error text.
pub fn spawned_agent(msg: &Message) -> Result<i32, String> {
    let answer = msg.json()?;
    match (answer.get("status").and_then(|v| v.as_i64()), answer.get("agent").and_then(|v| v.as_i64())) {
        (Some(0), Some(agent)) => Ok(agent as i32),
        _ => Err(answer.get("error").and_then(|v| v.as_str()).unwrap_or("spawn refused").to_string()),
    }
}
/// End the whole run after this tick with `reason` (needs `grants.stop_run`).
pub fn stop_run(reason: &str) -> Result<(), String> {
    let n = reason.len().min(abi::LOG_MAX as usize);
    code(unsafe { abi::stop_run(reason.as_ptr(), n) }).map(|_| ())
}

// -- export glue (used by export_agent!) ------------------------------------------------------

static mut SCRATCH: Vec<u8> = Vec::new();
static mut HOOKED: bool = false;

#[doc(hidden)]
pub fn __alloc(size: usize) -> *mut u8 {
    unsafe {
        if SCRATCH.len() < size {
            SCRATCH = vec![0u8; size.next_power_of_two().max(256)];
        }
        SCRATCH.as_mut_ptr()
    }
}

fn hook_panics() {
    unsafe {
        if HOOKED {
            return;
        }
        HOOKED = true;
    }
    std::panic::set_hook(Box::new(|info| {
        error(&format!("panic: {}", info));
    }));
}

fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

fn fail(text: String) -> i32 {
    error(&text);
    set_error(&text);
    1
}

#[doc(hidden)]
pub fn __init<A: Agent>(slot: &mut Option<A>, ptr: *const u8, len: usize) -> i32 {
    hook_panics();
    let config = match json::parse(bytes(ptr, len)) {
        Ok(c) => c,
        Err(e) => return fail(format!("config: {}", e)),
    };
    match A::init(&config) {
        Ok(agent) => {
            *slot = Some(agent);
            0
        }
        Err(e) => fail(e),
    }
}

#[doc(hidden)]
pub fn __on_message<A: Agent>(
    slot: &mut Option<A>,
    from: i32,
    kind: i32,
    ptr: *const u8,
    len: usize,
) -> i32 {
    hook_panics();
    let agent = match slot {
        Some(a) => a,
        None => return fail("the agent was not initialised".to_string()),
    };
    match agent.on_message(&Message { from, kind, payload: bytes(ptr, len) }) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

#[doc(hidden)]
pub fn __snapshot<A: Snapshot>(slot: &Option<A>) -> i32 {
    match slot {
        Some(a) => {
            let state = a.snapshot();
            unsafe { abi::snapshot_put(state.as_ptr(), state.len()) };
            0
        }
        None => 1,
    }
}

#[doc(hidden)]
pub fn __restore<A: Snapshot>(slot: &mut Option<A>, ptr: *const u8, len: usize) -> i32 {
    match slot {
        Some(a) => match a.restore(bytes(ptr, len)) {
            Ok(()) => 0,
            Err(e) => fail(e),
        },
        None => 1,
    }
}

/// Export the ABI's functions for an [`Agent`] type; `export_agent!(T, snapshot)` also
/// exports `qh_snapshot`/`qh_restore` from its [`Snapshot`] implementation.
#[macro_export]
macro_rules! export_agent {
    ($t:ty) => {
        static mut QH_AGENT: Option<$t> = None;
        #[no_mangle]
        pub extern "C" fn qh_abi_version() -> i32 {
            $crate::abi::ABI_VERSION
        }
        #[no_mangle]
        pub extern "C" fn qh_alloc(size: usize) -> *mut u8 {
            $crate::__alloc(size)
        }
        #[no_mangle]
        pub extern "C" fn qh_init(ptr: *const u8, len: usize) -> i32 {
            $crate::__init::<$t>(unsafe { &mut QH_AGENT }, ptr, len)
        }
        #[no_mangle]
        pub extern "C" fn qh_on_message(from: i32, kind: i32, ptr: *const u8, len: usize) -> i32 {
            $crate::__on_message::<$t>(unsafe { &mut QH_AGENT }, from, kind, ptr, len)
        }
    };
    ($t:ty, snapshot) => {
        $crate::export_agent!($t);
        #[no_mangle]
        pub extern "C" fn qh_snapshot() -> i32 {
            $crate::__snapshot::<$t>(unsafe { &QH_AGENT })
        }
        #[no_mangle]
        pub extern "C" fn qh_restore(ptr: *const u8, len: usize) -> i32 {
            $crate::__restore::<$t>(unsafe { &mut QH_AGENT }, ptr, len)
        }
    };
}
