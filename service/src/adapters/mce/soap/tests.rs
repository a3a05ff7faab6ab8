//! The SOAP codec against envelopes shaped like real MCE answers (header
//! with WS-Addressing and WS-Security, default namespace on the message,
//! `xsi:type` on results, nil `PartnerKey`).

use super::*;
use crate::adapters::mce::xml::parse;

fn envelope_of(body: &str) -> Element {
    let doc = format!(
        concat!(
            r#"<?xml version="1.0" encoding="utf-8"?>"#,
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" "#,
            r#"xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd" "#,
            r#"xmlns:wsu="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd">"#,
            r#"<soap:Header><wsa:Action>RetrieveResponse</wsa:Action><wsa:MessageID>urn:uuid:1</wsa:MessageID>"#,
            r#"<wsa:RelatesTo>urn:uuid:2</wsa:RelatesTo><wsse:Security><wsu:Timestamp wsu:Id="Timestamp-1">"#,
            r#"<wsu:Created>2026-11-28T12:00:00Z</wsu:Created><wsu:Expires>2026-11-28T12:05:00Z</wsu:Expires></wsu:Timestamp></wsse:Security></soap:Header>"#,
            r#"<soap:Body>{}</soap:Body></soap:Envelope>"#
        ),
        body
    );
    parse(&doc).unwrap()
}

fn status_body(results: &str) -> String {
    format!(
        r#"<RetrieveResponseMsg xmlns="http://exacttarget.com/wsdl/partnerAPI"><OverallStatus>OK</OverallStatus><RequestID>0c1f</RequestID>{results}</RetrieveResponseMsg>"#
    )
}

#[test]
fn async_status_with_a_property_list() {
    let root = envelope_of(&status_body(
        r#"<Results xsi:type="AsyncActivityStatus"><PartnerKey xsi:nil="true"/><ObjectID>x</ObjectID><Properties>
           <Property><Name>Status</Name><Value>Queued</Value></Property>
           <Property><Name>CompletedDate</Name><Value>1/16/2026 10:54:35 AM</Value></Property>
           </Properties></Results>"#,
    ));
    let status = read_async_status(&root).unwrap();
    assert_eq!(status.status.as_deref(), Some("Queued"));
    assert_eq!(status.completed_date.as_deref(), Some("1/16/2026 10:54:35 AM"));
    assert_eq!(status.error_msg, None);
}

#[test]
fn async_status_with_a_single_property_direct_children_or_nothing() {
    let single = envelope_of(&status_body(
        r#"<Results xsi:type="AsyncActivityStatus"><Properties><Property><Name>Status</Name><Value> Complete </Value></Property></Properties></Results>"#,
    ));
    assert_eq!(read_async_status(&single).unwrap().status.as_deref(), Some("Complete"));

    let direct = envelope_of(&status_body(
        r#"<Results xsi:type="AsyncActivityStatus"><Status>Error</Status><ErrorMsg>Syntax error in query</ErrorMsg></Results>"#,
    ));
    let status = read_async_status(&direct).unwrap();
    assert_eq!(status.status.as_deref(), Some("Error"));
    assert_eq!(status.error_msg.as_deref(), Some("Syntax error in query"));

    let none = envelope_of(&status_body(""));
    assert_eq!(read_async_status(&none).unwrap(), AsyncStatus::default());
}

#[test]
fn a_fault_is_an_error_not_an_empty_status() {
    let root = envelope_of(
        r#"<soap:Fault><faultcode>soap:Server</faultcode><faultstring>Internal server error</faultstring></soap:Fault>"#,
    );
    assert_eq!(
        read_async_status(&root).unwrap_err(),
        ReadError::Fault {
            code: "soap:Server".into(),
            message: "Internal server error".into()
        }
    );
    assert!(!is_login_failed(&root));
}

#[test]
fn login_failed_is_recognised_with_a_namespaced_code() {
    let root = envelope_of(
        r#"<soap:Fault><faultcode xmlns:q0="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">q0:Security</faultcode><faultstring>Login Failed</faultstring></soap:Fault>"#,
    );
    assert!(is_login_failed(&root));
    let denied = envelope_of(
        r#"<soap:Fault><faultcode>soap:Security</faultcode><faultstring>Access Denied</faultstring></soap:Fault>"#,
    );
    assert!(!is_login_failed(&denied));
}

#[test]
fn retrieve_statuses() {
    let error_no_results = envelope_of(
        r#"<RetrieveResponseMsg xmlns="http://exacttarget.com/wsdl/partnerAPI"><OverallStatus>Error</OverallStatus><RequestID>r</RequestID></RetrieveResponseMsg>"#,
    );
    assert!(read_retrieve(&error_no_results).unwrap().results.is_empty());
    let bad_property = envelope_of(
        r#"<RetrieveResponseMsg xmlns="http://exacttarget.com/wsdl/partnerAPI"><OverallStatus>Error: The Request Property(s) ID do not match with the fields of QueryDefinition retrieve</OverallStatus><RequestID>r</RequestID></RetrieveResponseMsg>"#,
    );
    assert!(
        matches!(read_retrieve(&bad_property), Err(ReadError::Status { status, .. }) if status.starts_with("Error: The Request"))
    );
    let more = envelope_of(
        r#"<RetrieveResponseMsg xmlns="http://exacttarget.com/wsdl/partnerAPI"><OverallStatus>MoreDataAvailable</OverallStatus><RequestID>continue-req-xyz</RequestID>
           <Results xsi:type="QueryDefinition"><PartnerKey xsi:nil="true"/><ObjectID>a</ObjectID></Results>
           <Results xsi:type="QueryDefinition"><PartnerKey xsi:nil="true"/><ObjectID>b</ObjectID></Results></RetrieveResponseMsg>"#,
    );
    let r = read_retrieve(&more).unwrap();
    assert!(r.more_data());
    assert_eq!(r.request_id.as_deref(), Some("continue-req-xyz"));
    assert_eq!(
        r.results
            .iter()
            .map(|e| e.text_at(&["ObjectID"]).unwrap())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
}

#[test]
fn create_answers() {
    let qd = envelope_of(
        r#"<CreateResponse xmlns="http://exacttarget.com/wsdl/partnerAPI"><Results xsi:type="CreateResult"><StatusCode>OK</StatusCode><StatusMessage>Created</StatusMessage><OrdinalID>0</OrdinalID><NewID>0</NewID><NewObjectID>5a1c7f0e-2d3b-4c7a-9e11-7f0a2b3c4d5e</NewObjectID><Object xsi:type="QueryDefinition"><PartnerKey xsi:nil="true"/></Object></Results><RequestID>r</RequestID><OverallStatus>OK</OverallStatus></CreateResponse>"#,
    );
    assert_eq!(
        read_create_object_id(&qd).unwrap(),
        "5a1c7f0e-2d3b-4c7a-9e11-7f0a2b3c4d5e"
    );
    assert!(read_create_new_id(&qd).is_err(), "NewID 0 is not a folder id");
    let folder = envelope_of(
        r#"<CreateResponse xmlns="http://exacttarget.com/wsdl/partnerAPI"><Results><StatusCode>OK</StatusCode><NewID>99999</NewID></Results></CreateResponse>"#,
    );
    assert_eq!(read_create_new_id(&folder).unwrap(), 99999);
    let failed = envelope_of(
        r#"<CreateResponse xmlns="http://exacttarget.com/wsdl/partnerAPI"><Results><StatusCode>Error</StatusCode><StatusMessage>Data Extension name already exists</StatusMessage><ErrorCode>310007</ErrorCode></Results></CreateResponse>"#,
    );
    assert_eq!(
        read_create_object_id(&failed).unwrap_err(),
        ReadError::Status {
            status: "Error".into(),
            message: "Data Extension name already exists".into()
        }
    );
}

#[test]
fn perform_answers() {
    let ok = envelope_of(
        r#"<PerformResponseMsg xmlns="http://exacttarget.com/wsdl/partnerAPI"><Results><Result><StatusCode>OK</StatusCode><StatusMessage>Performed</StatusMessage>
           <Task><StatusCode>OK</StatusCode><StatusMessage>Queued</StatusMessage><ID>10684</ID><InteractionObjectID>i</InteractionObjectID></Task></Result></Results>
           <OverallStatus>OK</OverallStatus><OverallStatusMessage/><RequestID>r</RequestID></PerformResponseMsg>"#,
    );
    assert_eq!(read_perform(&ok).unwrap(), "10684");
    let direct = envelope_of(
        r#"<PerformResponseMsg xmlns="http://exacttarget.com/wsdl/partnerAPI"><Results><Result><StatusCode>OK</StatusCode><TaskID>77</TaskID></Result></Results></PerformResponseMsg>"#,
    );
    assert_eq!(read_perform(&direct).unwrap(), "77");
    let failed = envelope_of(
        r#"<PerformResponseMsg xmlns="http://exacttarget.com/wsdl/partnerAPI"><Results><Result><StatusCode>Error</StatusCode><StatusMessage>Bad</StatusMessage><Task><StatusCode>Error</StatusCode><ID/></Task></Result></Results></PerformResponseMsg>"#,
    );
    assert!(matches!(read_perform(&failed), Err(ReadError::Status { .. })));
}

#[test]
fn delete_answers() {
    let ok = envelope_of(
        r#"<DeleteResponse xmlns="http://exacttarget.com/wsdl/partnerAPI"><Results><StatusCode>OK</StatusCode><StatusMessage>Deleted</StatusMessage></Results></DeleteResponse>"#,
    );
    assert!(read_delete(&ok).is_ok());
    let missing =
        envelope_of(r#"<DeleteResponse xmlns="http://exacttarget.com/wsdl/partnerAPI"><Results/></DeleteResponse>"#);
    assert!(matches!(read_delete(&missing), Err(ReadError::Status { status, .. }) if status == "NoResponse"));
}

#[test]
fn request_bodies_escape_and_follow_the_reference_shape() {
    let target = DeTarget {
        object_id: "oid".into(),
        customer_key: "QPP_R".into(),
        name: "QPP_R".into(),
    };
    let body = create_query_definition(&QueryDefinitionSpec {
        key: "QPP_Q_abc",
        query_text: "SELECT a FROM [x] WHERE b < 3 & c = 'd'",
        target: &target,
        update_type: "Overwrite",
        category_id: Some(0),
    });
    assert!(body.contains("WHERE b &lt; 3 &amp; c = &apos;d&apos;"), "{body}");
    assert!(!body.contains("CategoryID"), "CategoryID 0 is omitted");
    let body = create_query_definition(&QueryDefinitionSpec {
        category_id: Some(12),
        ..QueryDefinitionSpec {
            key: "k",
            query_text: "q",
            target: &target,
            update_type: "Append",
            category_id: None,
        }
    });
    assert!(
        body.contains("<CategoryID>12</CategoryID>") && body.contains("<TargetUpdateType>Append</TargetUpdateType>")
    );
    let retrieve = retrieve_query_definition("k");
    assert!(!retrieve.contains("<Properties>ID</Properties>"));
    let env = envelope("tok<en>", "<X/>");
    assert!(env.contains(r#"<fueloauth xmlns="http://exacttarget.com">tok&lt;en&gt;</fueloauth>"#));
    let fields = [
        DeField::text("Email", 254),
        DeField {
            name: "Total".into(),
            field_type: FieldType::Decimal,
            max_length: None,
            scale: Some(2),
            precision: Some(18),
        },
    ];
    let de = create_data_extension("QPP_R", "QPP_R", 5, &fields);
    assert!(
        de.contains("<Name>Email</Name><FieldType>Text</FieldType><MaxLength>254</MaxLength>"),
        "{de}"
    );
    assert!(
        de.contains("<FieldType>Decimal</FieldType><Scale>2</Scale><Precision>18</Precision>"),
        "{de}"
    );
    // Every request body is well-formed XML once wrapped.
    for body in [
        de,
        retrieve,
        retrieve_folder("QueryPlusPlus Results", Some("dataextension")),
        perform_start("o"),
        delete_query_definition("o"),
        retrieve_async_status("1"),
    ] {
        parse(&envelope("t", &body)).unwrap();
    }
}

#[test]
fn several_statuses_in_one_retrieve_matched_by_task_id() {
    let body = retrieve_async_statuses(&["t-1", "t<2>"]);
    assert!(
        body.contains("<SimpleOperator>IN</SimpleOperator><Value>t-1</Value><Value>t&lt;2&gt;</Value>"),
        "{body}"
    );
    assert!(body.contains("<Properties>TaskID</Properties>"), "{body}");
    let root = envelope_of(&status_body(
        r#"<Results xsi:type="AsyncActivityStatus"><Properties>
             <Property><Name>TaskID</Name><Value>t-1</Value></Property>
             <Property><Name>Status</Name><Value>Complete</Value></Property></Properties></Results>
           <Results xsi:type="AsyncActivityStatus"><TaskID>t-3</TaskID><Status>Error</Status><ErrorMsg>bad</ErrorMsg></Results>
           <Results xsi:type="AsyncActivityStatus"><Status>Queued</Status></Results>"#,
    ));
    let found = read_async_statuses(&root).unwrap();
    assert_eq!(found.len(), 2, "a result naming no task is left out: {found:?}");
    assert_eq!(found["t-1"].status.as_deref(), Some("Complete"));
    assert_eq!(found["t-3"].error_msg.as_deref(), Some("bad"));
}
