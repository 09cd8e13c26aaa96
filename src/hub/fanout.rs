//! Fan-out: one event to every matching connection, once each, with `via`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use herald_connector_api::ChannelName;
use smallvec::SmallVec;

use super::conn::Conn;
use super::event::EventBody;
use super::{Hub, Offsets};

/// Connections a publish must not reach.
pub struct Skip<'a> {
    except: &'a [String],
    sender: Option<u64>,
}

impl<'a> Skip<'a> {
    /// Skips the listed connection ids (an envelope's `except`).
    pub fn except(except: &'a [String]) -> Self {
        Self {
            except,
            sender: None,
        }
    }

    /// Skips the publishing connection (a client publish without `echo`).
    pub fn sender(key: u64) -> Self {
        Self {
            except: &[],
            sender: Some(key),
        }
    }

    /// Skips nobody.
    pub fn none() -> Self {
        Self {
            except: &[],
            sender: None,
        }
    }

    fn skips(&self, conn: &Conn) -> bool {
        self.sender == Some(conn.key) || self.except.iter().any(|id| **id == *conn.id)
    }
}

impl Hub {
    /// Appends `body` to every target's history and queues it to every matching connection.
    /// Returns the offset it got in each target.
    pub(super) fn fan_out(
        &self,
        targets: &[ChannelName],
        body: &Arc<EventBody>,
        skip: &Skip<'_>,
    ) -> Offsets {
        let now = Instant::now();
        let mut channels = self.lock_channels(targets);
        let offsets: Vec<u64> = channels
            .iter_mut()
            .map(|c| c.append(body.clone(), now))
            .collect();
        let mut delivered = 0;
        if let [channel] = channels.as_slice() {
            // The common case: one channel, one frame for every member.
            let frame = body.frame([(&channel.name, offsets[0])]);
            for member in channel.members.values().filter(|m| !skip.skips(m)) {
                delivered += u64::from(self.queue(member, frame.clone()));
            }
        } else {
            // A connection in several targets gets the event once, with every match in `via`;
            // connections that matched the same targets share one serialized frame.
            let mut matched: HashMap<u64, (&Arc<Conn>, SmallVec<[u32; 4]>)> = HashMap::new();
            for (i, channel) in channels.iter().enumerate() {
                for member in channel.members.values().filter(|m| !skip.skips(m)) {
                    matched
                        .entry(member.key)
                        .or_insert_with(|| (member, SmallVec::new()))
                        .1
                        .push(i as u32);
                }
            }
            let mut frames: HashMap<&SmallVec<[u32; 4]>, Bytes> = HashMap::new();
            for (conn, via) in matched.values() {
                let frame = frames.entry(via).or_insert_with(|| {
                    body.frame(
                        via.iter()
                            .map(|&i| (&channels[i as usize].name, offsets[i as usize])),
                    )
                });
                delivered += u64::from(self.queue(conn, frame.clone()));
            }
        }
        self.0.metrics.events_in.inc();
        self.0.metrics.events_out.inc_by(delivered);
        targets
            .iter()
            .zip(offsets)
            .map(|(name, offset)| (name.to_string(), offset))
            .collect()
    }
}
