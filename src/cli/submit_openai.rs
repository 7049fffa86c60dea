//! OpenAI Batch JSONL in `switchyard submit`: lines with `custom_id`, `method`, `url` and
//! `body` become jobs through the front door's own mapping
//! (`crate::frontdoor::openai_batch`), with ids derived from a batch id and the
//! `custom_id`; `--format openai` writes results as OpenAI's batch output lines.

use crate::frontdoor::openai_batch::{self, LineError};
use crate::job::JobResult;
use std::collections::HashMap;

/// A line ready to publish: its payload, and the tenant, id and custom id when known.
pub(super) struct Prepared {
    pub payload: String,
    pub tenant: Option<String>,
    pub id: Option<String>,
}

/// Lines ready to publish, and the OpenAI Batch lines refused (1-based line, why).
pub(super) type PreparedLines = (Vec<Prepared>, Vec<(usize, LineError)>);

/// The file's lines as payloads: job lines as they are, OpenAI Batch lines mapped to
/// jobs of `tenant` (ids under `batch`). Batch lines that cannot become jobs are
/// returned apart, with their 1-based line numbers; `custom_ids` maps each mapped job
/// id to its `custom_id`.
pub(super) fn prepare(
    lines: &[&str],
    batch: &str,
    tenant: &str,
    custom_ids: &mut HashMap<String, String>,
) -> anyhow::Result<PreparedLines> {
    let mut out = Vec::with_capacity(lines.len());
    let mut refused = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let parsed: Option<serde_json::Value> = serde_json::from_str(line).ok();
        if !parsed.as_ref().is_some_and(openai_batch::is_batch_line) {
            let (tenant, id) = super::submit::line_key(line);
            out.push(Prepared {
                payload: line.to_string(),
                tenant,
                id,
            });
            continue;
        }
        match openai_batch::line_to_job(line, batch, tenant, None) {
            Ok(m) => {
                if let Some(prev) = custom_ids.insert(m.job_id.clone(), m.custom_id.clone()) {
                    anyhow::bail!(
                        "line {}: custom_id {prev:?} is used twice in the file",
                        i + 1
                    );
                }
                out.push(Prepared {
                    payload: m.job.to_string(),
                    tenant: Some(tenant.to_string()),
                    id: Some(m.job_id),
                });
            }
            Err(e) => refused.push((i + 1, e)),
        }
    }
    Ok((out, refused))
}

/// A result as OpenAI's batch output line (the job id stands in for a `custom_id` a
/// job line does not have); `true` when it belongs in the output file, `false` for the
/// error file.
pub(super) fn output_line(
    payload: &[u8],
    custom_ids: &HashMap<String, String>,
) -> Option<(String, bool)> {
    let r: JobResult = serde_json::from_slice(payload).ok()?;
    let custom_id = custom_ids
        .get(&r.id)
        .cloned()
        .unwrap_or_else(|| r.id.clone());
    let (line, ok) = openai_batch::result_line(&custom_id, &r, chrono::Utc::now().timestamp());
    Some((line.to_string(), ok))
}
