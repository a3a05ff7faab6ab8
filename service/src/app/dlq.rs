//! The dead-letter queue's commands: `dlq list`, `show`, `replay`, `rm` and
//! `purge` (docs/CONTRACT.md section 7).
//!
//! A copy's lifecycle: the service stores it when it gives up on a message
//! (`SHELL_QUERY_DLQ`, by age and size bounded). An operator replays it
//! (its original body goes back to its original subject, under a message
//! id of the copy, and once the jobs stream has acknowledged it the copy
//! is removed: a copy is replayed once, and a second replay of it is
//! refused), removes it (`rm`, `purge`), or leaves it to age out. A
//! replayed message that fails again gets a new copy that names the one it
//! was replayed from (`Shell-Query-Replayed-From`) in place of that one:
//! a failed replay leaves as many copies as before, never one more.

use anyhow::{Context as _, anyhow, bail};
use async_nats::jetstream;
use chrono::Utc;
use uuid::Uuid;

use crate::adapters::crypto::Cipher;
use crate::adapters::nats::{self as nats_adapter, DLQ_STREAM, StoredMessage};
use crate::app::config::{ConfigError, DlqCommand, DlqFilter};
use crate::app::config::{print_json, rfc3339, table};

const HINT: &str = "reading SHELL_QUERY_DLQ (NATS_USER must be allowed to: shell_query_admin is)";

/// Runs one `dlq` command on `js`; `prefix` is the service's
/// SUBJECT_PREFIX, `cipher` the key when one is set.
pub(crate) async fn dlq(
    command: DlqCommand,
    js: &jetstream::Context,
    prefix: &str,
    cipher: Option<&Cipher>,
) -> anyhow::Result<()> {
    let js = js.clone();
    let (first, last, count) = nats_adapter::stream_range(&js, DLQ_STREAM).await.context(HINT)?;
    let range = Range { first, last };
    match command {
        DlqCommand::List {
            limit, filter, output, ..
        } => {
            let copies = range.copies(&js, &filter, true, Some(limit)).await?;
            if output.json() {
                print_json(&copies.iter().map(|(seq, m)| summary(*seq, m)).collect());
                return Ok(());
            }
            print!(
                "{}",
                table(
                    ["seq", "time", "original subject", "reason"],
                    copies.iter().map(|(seq, message)| {
                        let h = |name: &str| header(message, name).unwrap_or_else(|| "-".into());
                        [
                            seq.to_string(),
                            rfc3339(message.stored_at),
                            h(nats_adapter::HEADER_ORIGINAL_SUBJECT),
                            h(nats_adapter::HEADER_ERROR),
                        ]
                    })
                )
            );
            println!("{} of {count} message(s)", copies.len());
            Ok(())
        }
        DlqCommand::Show { seq, output, .. } => {
            let message = copy(&js, seq).await?;
            let body = shown_body(
                &message.payload,
                header(&message, nats_adapter::HEADER_REDACTED).as_deref(),
                cipher,
            );
            if output.json() {
                let mut headers = serde_json::Map::new();
                for (name, values) in message.headers.iter() {
                    let values: Vec<&str> = values.iter().map(|v| v.as_str()).collect();
                    headers.insert(name.to_string(), values.into());
                }
                let mut value = summary(seq, &message);
                if let Some(v) = value.as_object_mut() {
                    v.insert("headers".into(), headers.into());
                    // The body as JSON when it is JSON, else as text.
                    v.insert(
                        "body".into(),
                        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
                    );
                }
                print_json(&value);
                return Ok(());
            }
            let mut lines = vec![
                ("seq".to_string(), seq.to_string()),
                ("time".to_string(), rfc3339(message.stored_at)),
                ("subject".to_string(), message.subject.clone()),
            ];
            for (name, values) in message.headers.iter() {
                for value in values {
                    lines.push((format!("{name}:"), value.as_str().to_string()));
                }
            }
            print!("{}", table(["copy", ""], lines.into_iter().map(|(n, v)| [n, v])));
            println!("body:");
            println!("{body}");
            Ok(())
        }
        DlqCommand::Replay {
            seq,
            all,
            filter,
            dry_run,
            ..
        } => {
            if seq.is_some() && !filter.is_empty() {
                return Err(ConfigError {
                    setting: "--older-than, --reason, --subject",
                    reason: "filter the copies of `dlq replay --all`, not one named by its number".into(),
                }
                .into());
            }
            let _ = all; // clap: a number or --all, never both
            let copies = match seq {
                Some(seq) => vec![(seq, copy(&js, seq).await?)],
                None => range.copies(&js, &filter, false, None).await?,
            };
            replay_all(&js, prefix, copies, cipher, dry_run, seq.is_some()).await
        }
        DlqCommand::Rm { seq, .. } => {
            if !nats_adapter::delete_stored_message(&js, DLQ_STREAM, seq)
                .await
                .context(HINT)?
            {
                bail!("DLQ message {seq} is not in the DLQ (replayed, removed or aged out already): nothing removed");
            }
            println!("DLQ message {seq} removed");
            Ok(())
        }
        DlqCommand::Purge { filter, dry_run, .. } => {
            if filter.is_empty() && !dry_run {
                // Those there now; copies stored meanwhile stay.
                let purged = nats_adapter::purge_below(&js, DLQ_STREAM, last + 1)
                    .await
                    .context(HINT)?;
                println!("{purged} message(s) removed");
                return Ok(());
            }
            let copies = range.copies(&js, &filter, false, None).await?;
            let mut removed = 0;
            for (seq, message) in &copies {
                if dry_run {
                    println!("would remove  {}", line(*seq, message));
                } else if nats_adapter::delete_stored_message(&js, DLQ_STREAM, *seq)
                    .await
                    .context(HINT)?
                {
                    removed += 1;
                }
            }
            if dry_run {
                println!("{} message(s) would be removed; nothing was removed", copies.len());
            } else {
                println!("{removed} message(s) removed");
            }
            Ok(())
        }
    }
}

/// The key, or the error that says it is needed (exit 2), for a copy
/// whose SQL was encrypted.
fn key_of(cipher: Option<&Cipher>) -> anyhow::Result<&Cipher> {
    cipher.ok_or_else(|| {
        ConfigError {
            setting: "ENCRYPTION_KEY",
            reason: "needed to restore this body (its SQL was encrypted in the DLQ)".into(),
        }
        .into()
    })
}

/// Replays `copies` in order (or, dry, says what it would do). One copy
/// asked for by its number: its failure is the command's. With --all, each
/// failure is printed and the rest go on; any makes the exit code 1, and a
/// missing key (exit 2) stops at once.
async fn replay_all(
    js: &jetstream::Context,
    prefix: &str,
    copies: Vec<(u64, StoredMessage)>,
    cipher: Option<&Cipher>,
    dry_run: bool,
    one: bool,
) -> anyhow::Result<()> {
    let (mut done, mut failed) = (0, 0);
    for (seq, message) in &copies {
        let prepared = prepare(prefix, *seq, message, cipher);
        let outcome = match prepared {
            Ok(_) if dry_run => {
                println!("would replay  {}", line(*seq, message));
                Ok(())
            }
            Ok((subject, body)) => replay_one(js, *seq, message, &subject, body).await.map(|text| {
                println!("{text}");
            }),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => done += 1,
            Err(e) if one || e.chain().any(|c| c.is::<ConfigError>()) => return Err(e),
            Err(e) => {
                failed += 1;
                let label = if dry_run { "cannot replay" } else { "failed       " };
                println!("{label} {seq}: {e:#}");
            }
        }
    }
    if one && !dry_run {
        return Ok(());
    }
    match dry_run {
        true => println!("{done} message(s) would be replayed, {failed} could not; nothing was published or removed"),
        false => println!("{done} message(s) replayed, {failed} failed"),
    }
    if failed > 0 && !dry_run {
        bail!("{failed} of {} message(s) not replayed", copies.len());
    }
    Ok(())
}

/// The subject and the restored body of a copy that may be replayed.
fn prepare(
    prefix: &str,
    seq: u64,
    message: &StoredMessage,
    cipher: Option<&Cipher>,
) -> anyhow::Result<(String, bytes::Bytes)> {
    let subject = header(message, nats_adapter::HEADER_ORIGINAL_SUBJECT)
        .ok_or_else(|| anyhow!("DLQ message {seq} names no original subject"))?;
    replayable_subject(prefix, &subject)?;
    let redaction = header(message, nats_adapter::HEADER_REDACTED);
    let body = original_body(&message.payload, redaction.as_deref(), || key_of(cipher))?;
    Ok((subject, body))
}

/// Publishes one copy's body, then removes the copy; what was done.
async fn replay_one(
    js: &jetstream::Context,
    seq: u64,
    message: &StoredMessage,
    subject: &str,
    body: bytes::Bytes,
) -> anyhow::Result<String> {
    let replayed = nats_adapter::replay(js, subject, seq, message.stored_at, body).await?;
    let removed = nats_adapter::delete_stored_message(js, DLQ_STREAM, seq).await;
    if replayed.duplicate {
        bail!("DLQ message {seq} was replayed already (the jobs stream holds that replay): not published again");
    }
    if let Err(e) = removed {
        bail!(
            "DLQ message {seq} published to {subject} ({} sequence {}), but the copy could not be removed ({e}): \
             remove it with `dlq rm {seq}`",
            replayed.stream,
            replayed.sequence
        );
    }
    Ok(format!(
        "DLQ message {seq} published to {subject} ({} sequence {}) and removed from the DLQ; the service handles it \
         as any delivery (a run that has ended is not started again)",
        replayed.stream, replayed.sequence
    ))
}

/// A copy by its number; an error when it is not in the DLQ.
async fn copy(js: &jetstream::Context, seq: u64) -> anyhow::Result<StoredMessage> {
    nats_adapter::stored_message(js, DLQ_STREAM, seq)
        .await
        .context(HINT)?
        .ok_or_else(|| anyhow!("DLQ message {seq} is not in the DLQ (replayed, removed or aged out already)"))
}

fn header(message: &StoredMessage, name: &str) -> Option<String> {
    message.headers.get(name).map(|v| v.as_str().to_string())
}

/// One copy on one line: sequence, time, original subject, reason.
fn line(seq: u64, message: &StoredMessage) -> String {
    let h = |name: &str| header(message, name).unwrap_or_else(|| "-".into());
    format!(
        "{seq}  {}  {}  {}",
        rfc3339(message.stored_at),
        h(nats_adapter::HEADER_ORIGINAL_SUBJECT),
        h(nats_adapter::HEADER_ERROR)
    )
}

/// A copy as `dlq list -o json` gives it.
fn summary(seq: u64, message: &StoredMessage) -> serde_json::Value {
    serde_json::json!({
        "seq": seq,
        "time": rfc3339(message.stored_at),
        "subject": message.subject,
        "originalSubject": header(message, nats_adapter::HEADER_ORIGINAL_SUBJECT),
        "reason": header(message, nats_adapter::HEADER_ERROR),
    })
}

/// The DLQ's sequences when the command started.
struct Range {
    first: u64,
    last: u64,
}

impl Range {
    /// The copies that match `filter`, oldest or newest first, at most
    /// `limit` of them. Removed ones (by age, size or hand) are skipped.
    async fn copies(
        &self,
        js: &jetstream::Context,
        filter: &DlqFilter,
        newest_first: bool,
        limit: Option<u64>,
    ) -> anyhow::Result<Vec<(u64, StoredMessage)>> {
        let now = Utc::now();
        let mut found = Vec::new();
        let seqs: Box<dyn Iterator<Item = u64>> = match newest_first {
            true => Box::new((self.first.max(1)..=self.last).rev()),
            false => Box::new(self.first.max(1)..=self.last),
        };
        for seq in seqs {
            if limit.is_some_and(|l| found.len() as u64 >= l) {
                break;
            }
            if let Some(message) = nats_adapter::stored_message(js, DLQ_STREAM, seq).await.context(HINT)?
                && matches(filter, &message, now)
            {
                found.push((seq, message));
            }
        }
        Ok(found)
    }
}

/// Whether a copy passes every filter set.
fn matches(filter: &DlqFilter, message: &StoredMessage, now: chrono::DateTime<Utc>) -> bool {
    let old_enough = filter
        .older_than
        .is_none_or(|age| chrono::Duration::from_std(age).is_ok_and(|age| message.stored_at <= now - age));
    let reason = filter.reason.as_deref().is_none_or(|text| {
        header(message, nats_adapter::HEADER_ERROR).is_some_and(|r| r.to_lowercase().contains(&text.to_lowercase()))
    });
    let subject = filter.subject.as_deref().is_none_or(|pattern| {
        header(message, nats_adapter::HEADER_ORIGINAL_SUBJECT).is_some_and(|s| subject_matches(pattern, &s))
    });
    old_enough && reason && subject
}

/// NATS subject matching: `*` is one token, `>` (last) one or more.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (t, Some(s)) if t == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// Only the jobs subjects the service consumes may be replayed to.
fn replayable_subject(prefix: &str, subject: &str) -> anyhow::Result<()> {
    let rest = subject.strip_prefix(prefix).and_then(|r| r.strip_prefix('.'));
    let ok = rest.is_some_and(|r| {
        let mut parts = r.split('.');
        matches!(parts.next(), Some("execute" | "poll" | "cancel"))
            && parts.next().is_some_and(|id| Uuid::parse_str(id).is_ok())
            && parts.next().is_none()
    });
    if !ok {
        bail!("{subject} is not an execute, poll or cancel subject under {prefix}: not replayed");
    }
    Ok(())
}

/// The body as it was published, undoing the DLQ's redaction.
pub(crate) fn original_body<'a>(
    payload: &[u8],
    redaction: Option<&str>,
    cipher: impl FnOnce() -> anyhow::Result<&'a Cipher>,
) -> anyhow::Result<bytes::Bytes> {
    match redaction {
        None => Ok(bytes::Bytes::copy_from_slice(payload)),
        Some("body encrypted") => {
            let text = std::str::from_utf8(payload).context("the encrypted body is not text")?;
            let plain = cipher()?
                .decrypt(text)
                .map_err(|_| anyhow!("the body cannot be decrypted with this key"))?;
            Ok(bytes::Bytes::from(plain))
        }
        Some("sqlText encrypted") => {
            let mut map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(payload).context("the body is not a JSON object")?;
            let encrypted = map
                .remove("sqlTextEncrypted")
                .and_then(|v| v.as_str().map(str::to_string))
                .ok_or_else(|| anyhow!("the body has no sqlTextEncrypted"))?;
            let sql = cipher()?
                .decrypt(&encrypted)
                .map_err(|_| anyhow!("sqlTextEncrypted cannot be decrypted with this key"))?;
            map.insert("sqlText".into(), sql.into());
            Ok(bytes::Bytes::from(serde_json::Value::Object(map).to_string()))
        }
        Some(other) => bail!("the DLQ kept only a {other} of this message (its size and hash): it cannot be replayed"),
    }
}

/// The body for an operator's eyes: decrypted where the key allows, with
/// every SQL text replaced by its length.
pub(crate) fn shown_body(payload: &[u8], redaction: Option<&str>, cipher: Option<&Cipher>) -> String {
    let restored = match (redaction, cipher) {
        (Some("body encrypted" | "sqlText encrypted"), None) => {
            return format!(
                "({} bytes, SQL encrypted: set ENCRYPTION_KEY to see the other fields)",
                payload.len()
            );
        }
        (_, cipher) => original_body(payload, redaction, || cipher.ok_or_else(|| anyhow!("no key"))),
    };
    let body = match restored {
        Ok(b) => b,
        Err(e) => return format!("({} bytes: {e:#})", payload.len()),
    };
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut map)) => {
            for key in ["sqlText", "sqlTextEncrypted"] {
                if let Some(v) = map.get_mut(key) {
                    let len = v.as_str().map_or(0, str::len);
                    *v = format!("<redacted: {len} bytes>").into();
                }
            }
            serde_json::to_string_pretty(&map).unwrap_or_default()
        }
        _ => format!("<redacted: {} bytes that are not a JSON object>", body.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> Cipher {
        Cipher::parse(&"cd".repeat(32)).unwrap()
    }

    #[test]
    fn a_dlq_copy_is_restored_for_replay_and_shown_without_sql() {
        let c = cipher();
        let original = br#"{"runId":"r","sqlText":"SELECT secret FROM T"}"#;
        let (copy, how) = crate::lifecycle::dlq::redacted(&c, true, original);
        let restored = original_body(&copy, how, || Ok(&c)).unwrap();
        assert_eq!(&restored[..], &original[..]);
        let shown = shown_body(&copy, how, Some(&c));
        assert!(
            !shown.contains("secret") && shown.contains("<redacted: 20 bytes>"),
            "{shown}"
        );
        assert!(shown_body(&copy, how, None).contains("set ENCRYPTION_KEY"));

        let cancel = br#"{"runId":"r","sqlText":"SELECT secret FROM T","tenantId":"t"}"#;
        let (copy, how) = crate::lifecycle::dlq::redacted(&c, false, cancel);
        assert_eq!(how, Some("sqlText encrypted"));
        let restored: serde_json::Value =
            serde_json::from_slice(&original_body(&copy, how, || Ok(&c)).unwrap()).unwrap();
        assert_eq!(restored["sqlText"], "SELECT secret FROM T");
        assert!(restored.get("sqlTextEncrypted").is_none());

        let huge = vec![b'x'; crate::lifecycle::dlq::MAX_COPY_BYTES + 1];
        let (copy, how) = crate::lifecycle::dlq::redacted(&c, true, &huge);
        let refused = original_body(&copy, how, || Ok(&c)).unwrap_err().to_string();
        assert!(refused.contains("cannot be replayed"), "{refused}");
    }

    #[test]
    fn only_jobs_subjects_are_replayed() {
        let id = Uuid::new_v4();
        assert!(replayable_subject("shell_query", &format!("shell_query.execute.{id}")).is_ok());
        assert!(replayable_subject("shell_query", &format!("shell_query.poll.{id}")).is_ok());
        for bad in [
            format!("shell_query.status.{id}"),
            format!("other.execute.{id}"),
            "shell_query.execute.not-a-uuid".to_string(),
            format!("shell_query.execute.{id}.more"),
            "$JS.API.STREAM.DELETE.SHELL_QUERY_JOBS".to_string(),
        ] {
            assert!(replayable_subject("shell_query", &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ages_are_a_whole_number_and_a_unit() {
        use crate::app::config::parse_age;
        use std::time::Duration;
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age(" 6h "), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "s", "7", "1.5h", "-1d", "7w", "soon", "99999999999d", "1h30m"] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subjects_match_as_nats_matches_them() {
        for (pattern, subject, expected) in [
            ("shell_query.execute.*", "shell_query.execute.abc", true),
            ("shell_query.execute.*", "shell_query.poll.abc", false),
            ("shell_query.execute.*", "shell_query.execute.abc.d", false),
            ("shell_query.>", "shell_query.poll.abc", true),
            ("shell_query.>", "shell_query", false),
            ("shell_query.poll.abc", "shell_query.poll.abc", true),
            ("*.poll.*", "shell_query.poll.abc", true),
            ("shell_query.poll", "shell_query.poll.abc", false),
        ] {
            assert_eq!(subject_matches(pattern, subject), expected, "{pattern} {subject}");
        }
    }
}
