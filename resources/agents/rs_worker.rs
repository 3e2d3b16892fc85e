//! rs_worker: a tour worker in Rust (request/reply with envelopes). A job (kind 10, JSON
//! {"n": i}) gets a reply (kind 11, JSON {"n": i, "steps": s}), s the Collatz steps of i + 1;
//! `reply` sends it to the job's reply-to with its correlation id.
use qhybrid::{json, Agent, Message};

const KIND_JOB: i32 = 10;
const KIND_RESULT: i32 = 11;

struct Worker;

fn collatz_steps(mut n: u64) -> i64 {
    let mut steps = 0;
    while n > 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

impl Agent for Worker {
    fn init(_config: &json::Value) -> Result<Self, String> {
        Ok(Worker)
    }
    fn on_message(&mut self, msg: &Message) -> Result<(), String> {
        if msg.kind != KIND_JOB {
            return Ok(());
        }
        let job = msg.json()?;
        let n = job.get("n").and_then(|v| v.as_i64()).filter(|n| *n >= 0);
        let n = n.ok_or("rs_worker: a job is {\"n\": a non-negative integer}")?;
        let out = json::object().set("n", n).set("steps", collatz_steps(n as u64 + 1));
        qhybrid::reply(KIND_RESULT, out.to_string().as_bytes())
    }
}

qhybrid::export_agent!(Worker);
