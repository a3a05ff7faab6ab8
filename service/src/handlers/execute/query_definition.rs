//! Step 4: the run's QueryDefinition (key `QPP_Q_<run tag>`), in the
//! results folder, writing into the destination. One an earlier delivery
//! left behind is deleted first.

use shell_query_core::message::ExecuteRequest;
use shell_query_core::naming::query_key;

use super::analyse::Analysed;
use super::destination::Destination;
use super::failure::{Failure, best_effort};
use super::folder::{Folder, with_folder};
use crate::adapters::mce::Session;
use crate::lifecycle::Deps;

/// The QueryDefinition made for this run.
pub(super) struct QueryDefinition {
    pub object_id: String,
    pub key: String,
}

pub(super) async fn create(
    deps: &Deps,
    session: &Session<'_>,
    req: &ExecuteRequest,
    analysis: &Analysed,
    destination: &Destination,
    folder: &mut Folder,
) -> Result<QueryDefinition, Failure> {
    let key = query_key(req.run_id);
    if let Some(old) = best_effort(session.find_query_definition(&key).await)?.flatten() {
        best_effort(session.delete_query_definition(&old).await)?;
    }
    let object_id = with_folder(deps, session, req, folder, |folder_id| {
        session.create_query_definition(
            &key,
            analysis.sql(),
            &destination.target,
            destination.update_type,
            Some(folder_id),
        )
    })
    .await?;
    Ok(QueryDefinition { object_id, key })
}
