//! Fan-out: one event to every matching connection, once each, with `via`.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use herald_connector_api::{AtCapacity, Backpressure, ChannelName, EventMeta, EventTag};
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

/// An event's [`EventMeta`] for one `via`, built on first use: only connections whose
/// transport asked for it (SSE) make it exist, and then once per publish, shared.
#[derive(Default)]
struct LazyMeta(OnceCell<Arc<EventMeta>>);

impl LazyMeta {
    fn get(
        &self,
        body: &EventBody,
        via: impl FnOnce() -> Vec<(ChannelName, u64)>,
    ) -> Arc<EventMeta> {
        self.0
            .get_or_init(|| {
                Arc::new(EventMeta {
                    event: body.name.clone(),
                    via: via(),
                })
            })
            .clone()
    }
}

impl Hub {
    /// Appends `body` to every target's history and queues it to every matching connection.
    /// Returns the offset it got in each target. `logged`: the sequence the cluster log gave
    /// it (its offset in every target) and when the log stored it.
    ///
    /// # Errors
    /// [`AtCapacity`] when a target channel would have to be created past `max_channels`;
    /// nothing is delivered then.
    pub(super) fn fan_out(
        &self,
        targets: &[ChannelName],
        body: &Arc<EventBody>,
        skip: &Skip<'_>,
        logged: Option<(u64, Instant)>,
    ) -> Result<Offsets, AtCapacity> {
        let now = logged.map_or_else(Instant::now, |(_, at)| at);
        let at = logged.map(|(seq, _)| seq);
        let mut channels = self.lock_channels(targets)?;
        let mut trimmed = 0;
        let alone = channels.len() == 1;
        let offsets: Vec<u64> = channels
            .iter_mut()
            .map(|c| {
                let (offset, dropped) = c.append(body, alone, now, at);
                trimmed += dropped;
                offset
            })
            .collect();
        if trimmed > 0 {
            self.0.metrics.limit_hit("history_max_bytes");
        }
        let mut delivered = 0;
        if let [channel] = channels.as_slice() {
            // The common case: one channel, one frame for every member, the same one history
            // keeps for recoveries.
            let frame = channel
                .newest_frame(offsets[0])
                .cloned()
                .unwrap_or_else(|| body.frame([(&channel.name, offsets[0])]));
            let meta = LazyMeta::default();
            let meta = || meta.get(body, || vec![(channel.name.clone(), offsets[0])]);
            let policy = channel.rule.backpressure;
            let tag = || {
                (policy != Backpressure::Disconnect).then(|| EventTag {
                    channel: channel.name.clone(),
                    offset: offsets[0],
                    policy,
                })
            };
            self.for_each_member(channel, |member| {
                if !skip.skips(member) {
                    delivered += u64::from(self.queue_event(member, frame.clone(), &meta, tag()));
                }
            });
        } else {
            // A connection in several targets gets the event once, with every match in `via`;
            // connections that matched the same targets share one serialized frame.
            let mut matched: HashMap<u64, (Arc<Conn>, SmallVec<[u32; 4]>)> = HashMap::new();
            for (i, channel) in channels.iter().enumerate() {
                self.for_each_member(channel, |member| {
                    if !skip.skips(member) {
                        matched
                            .entry(member.key)
                            .or_insert_with(|| (member.clone(), SmallVec::new()))
                            .1
                            .push(i as u32);
                    }
                });
            }
            let mut frames: HashMap<&SmallVec<[u32; 4]>, (Bytes, LazyMeta)> = HashMap::new();
            for (conn, via) in matched.values() {
                let (frame, meta) = frames.entry(via).or_insert_with(|| {
                    let frame = match via.as_slice() {
                        // Matched through one target only: history's frame for it is the same.
                        &[i] => {
                            let (channel, offset) = (&channels[i as usize], offsets[i as usize]);
                            channel
                                .newest_frame(offset)
                                .cloned()
                                .unwrap_or_else(|| body.frame([(&channel.name, offset)]))
                        }
                        many => body.frame(
                            many.iter()
                                .map(|&i| (&channels[i as usize].name, offsets[i as usize])),
                        ),
                    };
                    (frame, LazyMeta::default())
                });
                let meta = || {
                    meta.get(body, || {
                        via.iter()
                            .map(|&i| (channels[i as usize].name.clone(), offsets[i as usize]))
                            .collect()
                    })
                };
                // An event matched through several channels follows `disconnect`: no one
                // channel's policy can speak for the others.
                delivered += u64::from(self.queue_event(conn, frame.clone(), &meta, None));
            }
        }
        self.0.metrics.events_in.inc();
        self.0.metrics.events_out.inc_by(delivered);
        Ok(targets
            .iter()
            .zip(offsets)
            .map(|(name, offset)| (name.to_string(), offset))
            .collect())
    }
}
