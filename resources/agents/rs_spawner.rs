//! rs_spawner: spawner.c in Rust (ABI v2 spawn and stop_run). Kind 1 from the runtime spawns
//! `helpers` (config, default 3) instances of group `group` (default "crew"), each with the
//! config {"index": i}; each SPAWNED answer gets the new agent a job (kind 10, {"n": i}); when
//! every spawned agent has answered (kind 11), the run ends with `stop_run`. A refused spawn
//! (over the group's max_spawned) is logged and not waited for.
use qhybrid::{abi, json, Agent, Message};

const KIND_START: i32 = 1;
const KIND_JOB: i32 = 10;
const KIND_RESULT: i32 = 11;

struct Spawner {
    helpers: i64,
    group: String,
    spawned: i64,
    refused: i64,
    answered: i64,
}

impl Spawner {
    fn done_if_all(&self) {
        if self.spawned + self.refused == self.helpers && self.answered == self.spawned {
            let reason = format!("{} helpers answered, {} refused", self.answered, self.refused);
            let rc = if qhybrid::stop_run(&reason).is_ok() { 0 } else { abi::ERR_NOT_GRANTED };
            qhybrid::info(&format!("stop_run {}", rc));
        }
    }
}

impl Agent for Spawner {
    fn init(config: &json::Value) -> Result<Self, String> {
        Ok(Spawner {
            helpers: config.get("helpers").and_then(|v| v.as_i64()).unwrap_or(3),
            group: config.get("group").and_then(|v| v.as_str()).unwrap_or("crew").to_string(),
            spawned: 0,
            refused: 0,
            answered: 0,
        })
    }
    fn on_message(&mut self, msg: &Message) -> Result<(), String> {
        match msg.kind {
            KIND_START if msg.from_runtime() => {
                for i in 0..self.helpers {
                    let config = json::object().set("index", i);
                    qhybrid::spawn(&self.group, "", Some(&config), i as i32)?;
                }
                Ok(())
            }
            abi::KIND_SPAWNED => {
                let answer = msg.json()?;
                let tag = answer.get("tag").and_then(|v| v.as_i64()).unwrap_or(0);
                match qhybrid::spawned_agent(msg) {
                    Ok(agent) => {
                        self.spawned += 1;
                        qhybrid::info(&format!("spawned agent {}", agent));
                        let job = json::object().set("n", tag).to_string();
                        qhybrid::send_env(agent, KIND_JOB, qhybrid::new_corr(), -1, job.as_bytes())
                    }
                    Err(why) => {
                        self.refused += 1;
                        qhybrid::warn(&format!("spawn {} refused: {}", tag, why));
                        self.done_if_all();
                        Ok(())
                    }
                }
            }
            KIND_RESULT => {
                self.answered += 1;
                self.done_if_all();
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

qhybrid::export_agent!(Spawner);
