//! The console tickets a node issued and not yet redeemed (see `console`): a leaf module,
//! held in the shared state.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use horcrux_actors::{ConsoleKind, TaskLog};

/// How long a ticket may wait for its connection (Proxmox's VNC tickets last 40 s too).
pub const TICKET_TTL: Duration = Duration::from_secs(40);

/// What a ticket grants.
pub(crate) struct Grant {
    pub(crate) token_id: String,
    pub(crate) vmid: u32,
    pub(crate) port: u16,
    pub(crate) kind: ConsoleKind,
    pub(crate) issued: Instant,
    pub(crate) task: TaskLog,
}

/// The tickets this node issued and not yet redeemed (ephemeral: a restart forgets them,
/// and a ticket lives 40 s).
#[derive(Default)]
pub struct Tickets(Mutex<HashMap<String, Grant>>);

impl Tickets {
    pub(crate) fn issue(&self, grant: Grant) -> String {
        let ticket = format!("PVEVNC:{}", horcrux_core::ids::random_secret());
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, g| g.issued.elapsed() < TICKET_TTL);
        map.insert(ticket.clone(), grant);
        ticket
    }

    /// Takes the ticket (presented once, whatever the outcome) if it grants exactly this.
    pub(crate) fn redeem(&self, ticket: &str, token_id: &str, vmid: u32, port: u16) -> Result<Grant, String> {
        let grant = self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(ticket);
        let refuse = |g: Option<Grant>, why: &str| {
            if let Some(g) = g {
                g.task.finish(Err::<(), _>(format!("console ticket refused: {why}")));
            }
            Err(format!("console ticket refused: {why}"))
        };
        match grant {
            None => refuse(None, "unknown or already used"),
            Some(g) if g.issued.elapsed() >= TICKET_TTL => refuse(Some(g), "expired"),
            Some(g) if g.vmid != vmid => refuse(Some(g), "issued for another guest"),
            Some(g) if g.token_id != token_id => refuse(Some(g), "issued to another user"),
            Some(g) if g.port != port => refuse(Some(g), "issued for another port"),
            Some(g) => Ok(g),
        }
    }

    /// Ends the tasks of tickets nobody came for.
    pub(crate) fn expire(&self) {
        let expired: Vec<Grant> = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<String> = map
                .iter()
                .filter(|(_, g)| g.issued.elapsed() >= TICKET_TTL)
                .map(|(t, _)| t.clone())
                .collect();
            gone.iter().filter_map(|t| map.remove(t)).collect()
        };
        for g in expired {
            g.task.finish(Err::<(), _>("no console connection within 40 s"));
        }
    }
}
