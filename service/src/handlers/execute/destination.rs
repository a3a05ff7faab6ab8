//! Step 3: where the results go. Run-to-temp creates the run's own temp DE
//! (replacing one an earlier delivery left) in the results folder;
//! run-to-target finds the target DE and checks the query against its
//! fields and the update type.

use chrono::Utc;
use shell_query_core::event::{EventStatus, StatusEvent};
use shell_query_core::message::{ExecuteRequest, TargetRequest};
use shell_query_core::naming::{temp_de_key, temp_de_name};
use shell_query_core::schema;

use super::analyse::Analysed;
use super::failure::{Failure, best_effort};
use super::folder::{Folder, with_folder};
use crate::adapters::mce::{DeTarget, Session};
use crate::lifecycle::Deps;

/// Where the results go and how.
pub(super) struct Destination {
    pub target: DeTarget,
    pub update_type: &'static str,
}

pub(super) async fn choose(
    deps: &Deps,
    session: &Session<'_>,
    req: &ExecuteRequest,
    analysis: &Analysed,
    folder: &mut Folder,
) -> Result<Destination, Failure> {
    let step = match req.target {
        None => EventStatus::CreatingDataExtension,
        Some(_) => EventStatus::TargetingDataExtension,
    };
    deps.publish_event(&StatusEvent::new(req.run_id, step, Utc::now()))
        .await;
    match &req.target {
        None => temp(deps, session, req, analysis, folder).await,
        Some(target) => existing(session, target, analysis).await,
    }
}

async fn temp(
    deps: &Deps,
    session: &Session<'_>,
    req: &ExecuteRequest,
    analysis: &Analysed,
    folder: &mut Folder,
) -> Result<Destination, Failure> {
    // Unparsed SQL is kept for run-to-target only: a temp DE needs its columns.
    let Analysed::Parsed(analysis) = analysis else {
        return Err(Failure::Permanent(
            "The query could not be parsed. Please check its syntax.".into(),
        ));
    };
    let de_key = temp_de_key(req.run_id);
    let de_name = temp_de_name(req.run_id, req.snippet_name.as_deref());
    // A DE left by an earlier delivery of this run is replaced.
    best_effort(session.delete_data_extension_if_exists(&de_key).await)?;
    let object_id = with_folder(deps, session, req, folder, |folder_id| {
        session.create_data_extension(&de_name, &de_key, folder_id, &analysis.fields)
    })
    .await?;
    Ok(Destination {
        target: DeTarget {
            object_id,
            customer_key: de_key,
            name: de_name,
        },
        update_type: "Overwrite",
    })
}

async fn existing(
    session: &Session<'_>,
    requested: &TargetRequest,
    analysis: &Analysed,
) -> Result<Destination, Failure> {
    let key = requested.customer_key.trim();
    let mode = schema::TargetMode::parse(requested.update_type.as_deref())
        .ok_or_else(|| Failure::Permanent("targetUpdateType must be Overwrite, Append or Update.".into()))?;
    let target = session
        .find_data_extension(key, true)
        .await?
        .ok_or_else(|| Failure::Permanent(format!("Target Data Extension \"{key}\" was not found.")))?;
    let fields: Vec<schema::TargetField> = session
        .data_extension_fields(&target.customer_key)
        .await?
        .iter()
        .map(|f| schema::TargetField {
            name: f.name.clone(),
            field_type: schema::FieldType::from_mce(&f.field_type),
            max_length: f.max_length,
            is_primary_key: f.is_primary_key,
            is_required: f.is_required,
        })
        .collect();
    let problems = match analysis {
        Analysed::Parsed(analysis) => schema::check_target(
            &analysis.sql,
            &analysis.columns,
            &target.name,
            &target.customer_key,
            &fields,
            mode,
        ),
        // Overwrite must know the query does not read its own target; the
        // other modes are MCE's to judge.
        Analysed::Unparsed { sql } if mode == schema::TargetMode::Overwrite => {
            schema::check_target(sql.as_str(), &[], &target.name, &target.customer_key, &fields, mode)
        }
        Analysed::Unparsed { .. } => Vec::new(),
    };
    if !problems.is_empty() {
        return Err(Failure::Permanent(problems.join("\n")));
    }
    Ok(Destination {
        target: DeTarget {
            object_id: target.object_id,
            customer_key: target.customer_key,
            name: target.name,
        },
        update_type: mode.as_mce(),
    })
}
