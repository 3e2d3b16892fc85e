//! rs_echo: the Rust SDK's smallest agent. Sends every message back to its sender (same kind
//! and payload); logs messages from the runtime. Agent-defined snapshot: a count of echoes.
use qhybrid::{json, Agent, Message, Snapshot};

struct Echo {
    echoed: u64,
}

impl Agent for Echo {
    fn init(_config: &json::Value) -> Result<Self, String> {
        Ok(Echo { echoed: 0 })
    }
    fn on_message(&mut self, msg: &Message) -> Result<(), String> {
        if msg.from_runtime() {
            qhybrid::info(&format!("rs_echo: from the runtime, kind {}: {:?}", msg.kind, msg.text()));
            return Ok(());
        }
        self.echoed += 1;
        qhybrid::send(msg.from, msg.kind, msg.payload)
    }
}

impl Snapshot for Echo {
    fn snapshot(&self) -> Vec<u8> {
        self.echoed.to_le_bytes().to_vec()
    }
    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let raw: [u8; 8] = state.try_into().map_err(|_| "rs_echo: bad snapshot".to_string())?;
        self.echoed = u64::from_le_bytes(raw);
        Ok(())
    }
}

qhybrid::export_agent!(Echo, snapshot);
