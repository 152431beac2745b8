//! Reading the alerts topic back: every analyzer instance answers `ListAlerts` and `WatchAlerts` for
//! all alerts, whichever instance raised them, from `runnel.alerts.v1` itself. The topic is the
//! record, so a watcher resumes from a position in it without missing or repeating a change, and only
//! committed changes are seen (`read_committed`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use plumbing::kafka::KafkaSettings;
use proto::prost::Message as _;
use proto::v1::{Alert, AlertEvent, AlertState, ListAlertsRequest};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// Where a watcher stands: per partition of the alerts topic, the offset of the next change to send.
/// Spelled `partition:offset` pairs joined by commas, as `AlertEvent.resume_token` carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position(BTreeMap<i32, i64>);

impl Position {
    pub fn token(&self) -> String {
        self.0.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(",")
    }

    /// The position a token names; the error says what is wrong with it.
    pub fn parse(token: &str) -> std::result::Result<Self, String> {
        let mut at = BTreeMap::new();
        for pair in token.split(',').filter(|p| !p.is_empty()) {
            let parsed = pair.split_once(':').and_then(|(p, o)| Some((p.parse::<i32>().ok()?, o.parse::<i64>().ok()?)));
            let (partition, offset) = parsed.filter(|(p, o)| *p >= 0 && *o >= 0).ok_or_else(|| format!("{pair:?} is not <partition>:<offset>"))?;
            at.insert(partition, offset);
        }
        if at.is_empty() { Err("names no partition".to_owned()) } else { Ok(Self(at)) }
    }
}

/// How long a watcher's fetch may wait for new changes: small, since an alert should reach a watcher
/// within a second of the point that caused it.
const FETCH_WAIT_MS: &str = "20";

/// A consumer of the alerts topic outside any group, reading from `position` (or, for each partition
/// it does not name, from the end as of now), and the position it starts from, every partition named.
async fn tail(kafka: &KafkaSettings, topic: &str, position: Option<Position>) -> Result<(StreamConsumer, Position)> {
    let consumer: StreamConsumer = kafka
        .consumer("runnel-analyzer-watch", "runnel-analyzer-watch")
        .set("fetch.wait.max.ms", FETCH_WAIT_MS)
        .create()?;
    let (kafka, topic) = (kafka.clone(), topic.to_owned());
    let (consumer, start) = tokio::task::spawn_blocking(move || -> Result<(StreamConsumer, Position)> {
        let partitions = kafka.partition_count(&topic)?;
        let mut start = BTreeMap::new();
        for partition in 0..partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
            let from = position.as_ref().and_then(|p| p.0.get(&partition).copied()).unwrap_or(high);
            if from < low {
                return Err(Error::Resume(format!(
                    "partition {partition} of {topic} no longer holds offset {from} (it starts at {low}): changes were deleted by retention"
                )));
            }
            start.insert(partition, from.min(high));
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in &start {
            list.add_partition_offset(&topic, *partition, Offset::Offset(*offset))?;
        }
        consumer.assign(&list)?;
        Ok((consumer, Position(start)))
    })
    .await
    .map_err(|err| Error::Internal(err.to_string()))??;
    Ok((consumer, start))
}

/// Streams every change of the alerts topic after `position` (from now when none) into a channel, each
/// with the token that resumes right after it; the first event carries no alert, only the starting
/// position. Ends when the receiver goes away or `shutdown` fires.
pub(crate) async fn watch(
    kafka: &KafkaSettings,
    topic: &str,
    position: Option<Position>,
    shutdown: plumbing::Shutdown,
) -> Result<mpsc::Receiver<std::result::Result<AlertEvent, Error>>> {
    let (consumer, mut at) = tail(kafka, topic, position).await?;
    let (sender, receiver) = mpsc::channel(256);
    let first = AlertEvent { alert: None, resume_token: at.token() };
    tokio::spawn(async move {
        if sender.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return,
                () = sender.closed() => return,
                message = consumer.recv() => message,
            };
            let event = match plumbing::kafka::unless_transient(message) {
                Ok(None) => continue,
                Ok(Some(message)) => {
                    at.0.insert(message.partition(), message.offset() + 1);
                    let Some(alert) = message.payload().and_then(|p| Alert::decode(p).ok()) else {
                        tracing::warn!(partition = message.partition(), offset = message.offset(), "not an alert; skipped");
                        continue;
                    };
                    Ok(AlertEvent { alert: Some(alert), resume_token: at.token() })
                }
                Err(err) => Err(Error::Kafka(err)),
            };
            let failed = event.is_err();
            if sender.send(event).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(receiver)
}

/// The latest state of every alert in the alerts topic, kept current by `AlertBook::follow`.
#[derive(Debug, Default)]
pub struct AlertBook {
    latest: HashMap<String, Alert>,
}

impl AlertBook {
    /// How many alerts are in each state now, indexed by `AlertState`'s number.
    pub fn count_by_state(&self) -> [u64; crate::kafka::ALERT_STATES] {
        let mut counts = [0; crate::kafka::ALERT_STATES];
        for alert in self.latest.values() {
            if let Some(count) = counts.get_mut(alert.state as usize) {
                *count += 1;
            }
        }
        counts
    }

    /// Records a change; the topic's order per alert id (one partition per id) makes it the latest.
    pub fn record(&mut self, alert: Alert) {
        self.latest.insert(alert.id.clone(), alert);
    }

    /// The alerts that match every filter of `request`, by id, at most `limit` (when not 0); and
    /// whether more matched.
    pub fn list(&self, request: &ListAlertsRequest) -> (Vec<Alert>, bool) {
        let state = (request.state != AlertState::Unspecified as i32).then_some(request.state);
        let mut matched: Vec<&Alert> = self
            .latest
            .values()
            .filter(|a| state.is_none_or(|s| a.state == s))
            .filter(|a| request.rule.is_empty() || a.rule == request.rule)
            .filter(|a| {
                let series = a.series.as_ref();
                (request.metric.is_empty() || series.is_some_and(|s| s.metric == request.metric))
                    && request.tags.iter().all(|(k, v)| series.and_then(|s| s.tags.get(k)) == Some(v))
            })
            .collect();
        matched.sort_by(|a, b| a.id.cmp(&b.id));
        let limit = if request.limit == 0 { usize::MAX } else { request.limit as usize };
        let truncated = matched.len() > limit;
        (matched.into_iter().take(limit).cloned().collect(), truncated)
    }

    /// Reads the whole alerts topic into `book`, then follows it until `shutdown`.
    pub(crate) async fn follow(book: Arc<Mutex<Self>>, kafka: KafkaSettings, topic: String, shutdown: plumbing::Shutdown) -> Result<()> {
        let partitions = {
            let (kafka, topic) = (kafka.clone(), topic.clone());
            tokio::task::spawn_blocking(move || kafka.partition_count(&topic)).await.map_err(|err| Error::Internal(err.to_string()))??
        };
        let consumer: StreamConsumer = kafka.consumer("runnel-analyzer-book", "runnel-analyzer-book").create()?;
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            // The beginning is what retention left.
            list.add_partition_offset(&topic, partition, Offset::Beginning)?;
        }
        consumer.assign(&list)?;
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                message = consumer.recv() => message,
            };
            let Some(message) = plumbing::kafka::unless_transient(message)? else { continue };
            if let Some(alert) = message.payload().and_then(|p| Alert::decode(p).ok()) {
                book.lock().unwrap_or_else(PoisonError::into_inner).record(alert);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proto::v1::Series;

    use super::*;

    #[test]
    fn positions_round_trip_through_their_token() {
        let p = Position::parse("0:15,2:0,1:7").unwrap();
        assert_eq!(p.token(), "0:15,1:7,2:0");
        assert_eq!(Position::parse(&p.token()), Ok(p));
        assert_eq!(Position::parse("0:1,x"), Err("\"x\" is not <partition>:<offset>".to_owned()));
        assert_eq!(Position::parse("0:-1"), Err("\"0:-1\" is not <partition>:<offset>".to_owned()));
        assert_eq!(Position::parse(""), Err("names no partition".to_owned()));
    }

    fn alert(rule: &str, host: &str, state: AlertState) -> Alert {
        let series = Series { metric: "temp".to_owned(), tags: [("host".to_owned(), host.to_owned())].into() };
        Alert { id: format!("{rule}/{}", series.key()), rule: rule.to_owned(), series: Some(series), state: state as i32, ..Alert::default() }
    }

    #[test]
    fn the_book_keeps_each_alerts_latest_state_and_filters_it() {
        let mut book = AlertBook::default();
        book.record(alert("hot", "a", AlertState::Pending));
        book.record(alert("hot", "a", AlertState::Firing));
        book.record(alert("hot", "b", AlertState::Firing));
        book.record(alert("cold", "a", AlertState::Resolved));
        let ids = |request: ListAlertsRequest| {
            let (alerts, truncated) = book.list(&request);
            (alerts.into_iter().map(|a| a.id).collect::<Vec<_>>(), truncated)
        };
        let firing = ListAlertsRequest { state: AlertState::Firing as i32, ..Default::default() };
        assert_eq!(ids(firing.clone()), (vec!["hot/temp{host=\"a\"}".to_owned(), "hot/temp{host=\"b\"}".to_owned()], false));
        assert_eq!(ids(ListAlertsRequest { limit: 1, ..firing }), (vec!["hot/temp{host=\"a\"}".to_owned()], true));
        let on_a = ListAlertsRequest { tags: [("host".to_owned(), "a".to_owned())].into(), ..Default::default() };
        assert_eq!(ids(on_a), (vec!["cold/temp{host=\"a\"}".to_owned(), "hot/temp{host=\"a\"}".to_owned()], false));
        assert_eq!(ids(ListAlertsRequest { rule: "cold".to_owned(), ..Default::default() }).0.len(), 1);
        assert_eq!(ids(ListAlertsRequest { metric: "cpu".to_owned(), ..Default::default() }).0.len(), 0);
    }
}
