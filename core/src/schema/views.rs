//! MCE's system data views and their columns, as MCE documents them. They
//! are resolved locally: no metadata call is ever made for them.

use super::{FieldType, SourceField};

fn f(name: &str, field_type: FieldType, max_length: Option<u32>) -> SourceField {
    SourceField {
        name: name.to_string(),
        field_type,
        max_length,
        scale: None,
        precision: None,
        known: true,
    }
}

/// The columns shared by the send-event views (`_Sent`, `_Open`, ...).
fn event_columns() -> Vec<SourceField> {
    use FieldType::*;
    vec![
        f("AccountID", Number, None),
        f("OYBAccountID", Number, None),
        f("JobID", Number, None),
        f("ListID", Number, None),
        f("BatchID", Number, None),
        f("SubscriberID", Number, None),
        f("SubscriberKey", Text, Some(254)),
        f("EventDate", Date, None),
        f("Domain", Text, Some(128)),
        f("TriggererSendDefinitionObjectID", Text, Some(36)),
        f("TriggeredSendCustomerKey", Text, Some(36)),
    ]
}

/// The columns of a system data view, if `name` is one (`_Sent`, `ENT._Sent`, any case).
pub fn columns(name: &str) -> Option<Vec<SourceField>> {
    use FieldType::*;
    let mut cols = match name.to_ascii_lowercase().as_str() {
        "_sent" => event_columns(),
        "_open" | "_unsubscribe" | "_complaint" => {
            let mut c = event_columns();
            c.push(f("IsUnique", Boolean, None));
            c
        }
        "_click" => {
            let mut c = event_columns();
            c.extend([
                f("URL", Text, Some(900)),
                f("LinkName", Text, Some(1024)),
                f("LinkContent", Text, Some(4000)),
                f("IsUnique", Boolean, None),
            ]);
            c
        }
        "_bounce" => {
            let mut c = event_columns();
            c.extend([
                f("IsUnique", Boolean, None),
                f("BounceCategoryID", Number, None),
                f("BounceCategory", Text, Some(50)),
                f("BounceSubcategoryID", Number, None),
                f("BounceSubcategory", Text, Some(50)),
                f("BounceTypeID", Number, None),
                f("BounceType", Text, Some(50)),
                f("SMTPBounceReason", Text, Some(4000)),
                f("SMTPMessage", Text, Some(4000)),
                f("SMTPCode", Number, None),
                f("IsFalseBounce", Boolean, None),
            ]);
            c
        }
        "_subscribers" => vec![
            f("SubscriberID", Number, None),
            f("DateUndeliverable", Date, None),
            f("DateJoined", Date, None),
            f("DateUnsubscribed", Date, None),
            f("Domain", Text, Some(254)),
            f("EmailAddress", EmailAddress, Some(254)),
            f("BounceCount", Number, None),
            f("SubscriberKey", Text, Some(254)),
            f("SubscriberType", Text, Some(100)),
            f("Status", Text, Some(12)),
            f("Locale", Text, Some(254)),
        ],
        "_listsubscribers" => vec![
            f("AddedBy", Number, None),
            f("AddMethod", Text, Some(17)),
            f("CreatedDate", Date, None),
            f("DateUnsubscribed", Date, None),
            f("EmailAddress", EmailAddress, Some(254)),
            f("ListID", Number, None),
            f("ListName", Text, Some(50)),
            f("ListType", Text, Some(16)),
            f("Status", Text, Some(12)),
            f("SubscriberID", Number, None),
            f("SubscriberKey", Text, Some(254)),
            f("SubscriberType", Text, Some(100)),
        ],
        "_job" => vec![
            f("JobID", Number, None),
            f("EmailID", Number, None),
            f("AccountID", Number, None),
            f("AccountUserID", Number, None),
            f("FromName", Text, Some(130)),
            f("FromEmail", Text, Some(100)),
            f("SchedTime", Date, None),
            f("PickupTime", Date, None),
            f("DeliveredTime", Date, None),
            f("EventID", Text, Some(50)),
            f("IsMultipart", Boolean, None),
            f("JobType", Text, Some(50)),
            f("JobStatus", Text, Some(50)),
            f("ModifiedBy", Number, None),
            f("ModifiedDate", Date, None),
            f("EmailName", Text, Some(100)),
            f("EmailSubject", Text, Some(200)),
            f("IsWrapped", Boolean, None),
            f("TestEmailAddr", Text, Some(128)),
            f("Category", Text, Some(100)),
            f("BccEmail", Text, Some(100)),
            f("OriginalSchedTime", Date, None),
            f("CreatedDate", Date, None),
            f("CharacterSet", Text, Some(30)),
            f("IPAddress", Text, Some(50)),
            f("SendType", Text, Some(128)),
            f("DynamicEmailSubject", Text, Some(4000)),
            f("SuppressTracking", Boolean, None),
            f("SendClassificationType", Text, Some(32)),
            f("SendClassification", Text, Some(36)),
            f("ResolveLinksWithCurrentData", Boolean, None),
            f("EmailSendDefinition", Text, Some(36)),
            f("DeduplicateByEmail", Boolean, None),
            f("TriggererSendDefinitionObjectID", Text, Some(36)),
            f("TriggeredSendCustomerKey", Text, Some(36)),
        ],
        "_journey" => vec![
            f("VersionID", Text, Some(36)),
            f("JourneyID", Text, Some(36)),
            f("JourneyName", Text, Some(200)),
            f("VersionNumber", Number, None),
            f("CreatedDate", Date, None),
            f("LastPublishedDate", Date, None),
            f("ModifiedDate", Date, None),
            f("JourneyStatus", Text, Some(100)),
        ],
        "_journeyactivity" => vec![
            f("VersionID", Text, Some(36)),
            f("ActivityID", Text, Some(36)),
            f("ActivityName", Text, Some(200)),
            f("ActivityExternalKey", Text, Some(200)),
            f("JourneyActivityObjectID", Text, Some(36)),
            f("ActivityType", Text, Some(512)),
        ],
        "_businessunitunsubscribes" => vec![
            f("BusinessUnitID", Number, None),
            f("SubscriberID", Number, None),
            f("SubscriberKey", Text, Some(254)),
            f("UnsubDateUTC", Date, None),
            f("UnsubReason", Text, Some(100)),
        ],
        _ => return None,
    };
    cols.shrink_to_fit();
    Some(cols)
}
