//! Data-driven tests of the analysis: one `check` per rule.

mod nesting;

use super::*;

fn catalog() -> Catalog {
    let metadata: TableMetadata = serde_json::from_str(
        r#"{
        "Subscribers_DE": [
            { "Name": "Email", "FieldType": "EmailAddress", "MaxLength": 254 },
            { "Name": "FirstName", "FieldType": "Text", "MaxLength": 50 },
            { "Name": "LastName", "FieldType": "Text(80)" },
            { "Name": "Age", "FieldType": "Number" },
            { "Name": "Price", "FieldType": "Decimal", "Scale": 4, "Precision": 12 },
            { "Name": "Joined", "FieldType": "DATETIME" },
            { "Name": "Active", "FieldType": "BIT" },
            { "Name": "Mobile", "FieldType": "Phone" },
            { "Name": "Lang", "FieldType": "Locale" }
        ],
        "[Orders]": [
            { "Name": "OrderID", "FieldType": "INT" },
            { "Name": "Email", "FieldType": "EmailAddress", "MaxLength": 100 },
            { "Name": "Total", "FieldType": "Decimal(10,2)" },
            { "Name": "First-Name", "FieldType": "Text", "MaxLength": 20 }
        ],
        "Empty_DE": []
    }"#,
    )
    .unwrap();
    Catalog::from_metadata(&metadata)
}

/// `(name, type, max length)` of each output column, and the SQL as it will run.
fn check(sql: &str, expected: &[(&str, FieldType, Option<u32>)]) -> String {
    let analysis = analyse(sql, &catalog()).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let got: Vec<_> = analysis
        .fields
        .iter()
        .map(|f| (f.name.as_str(), f.field_type, f.max_length))
        .collect();
    assert_eq!(got, expected, "{sql}");
    analysis.sql
}

fn check_err(sql: &str, expected: SchemaError) {
    assert_eq!(analyse(sql, &catalog()).unwrap_err(), expected, "{sql}");
}

use FieldType::*;

#[test]
fn plain_columns_take_catalog_types() {
    check(
        "SELECT Email, FirstName, s.Age FROM [Subscribers_DE] s",
        &[
            ("Email", EmailAddress, Some(254)),
            ("FirstName", Text, Some(50)),
            ("Age", Number, None),
        ],
    );
    // Type names are normalised and sizes in the name are read.
    check(
        "SELECT LastName, Joined, Active, Mobile, Lang FROM Subscribers_DE",
        &[
            ("LastName", Text, Some(80)),
            ("Joined", Date, None),
            ("Active", Boolean, None),
            ("Mobile", Phone, Some(254)),
            ("Lang", Text, Some(254)),
        ],
    );
    let a = analyse(
        "SELECT Price, o.Total FROM Subscribers_DE JOIN Orders o ON 1 = 1",
        &catalog(),
    )
    .unwrap();
    assert_eq!((a.fields[0].scale, a.fields[0].precision), (Some(4), Some(12)));
    assert_eq!((a.fields[1].scale, a.fields[1].precision), (Some(2), Some(10)));
    // Unknown columns and tables: Text(254).
    check(
        "SELECT Nope, x.Y FROM Subscribers_DE JOIN Unknown x ON 1 = 1",
        &[("Nope", Text, Some(254)), ("Y", Text, Some(254))],
    );
}

#[test]
fn qualified_columns_resolve_their_alias_and_unqualified_the_first_source() {
    check(
        "SELECT o.Email AS OrderEmail, s.Email FROM Subscribers_DE s JOIN Orders o ON o.Email = s.Email",
        &[
            ("OrderEmail", EmailAddress, Some(100)),
            ("Email", EmailAddress, Some(254)),
        ],
    );
    check(
        "SELECT Email FROM Orders JOIN Subscribers_DE ON 1 = 1",
        &[("Email", EmailAddress, Some(100))],
    );
    check("SELECT Orders.Total FROM Orders", &[("Total", Decimal, None)]);
}

#[test]
fn aliases_name_columns_and_brackets_are_stripped() {
    check(
        "SELECT Email AS [Full Name], Age Years FROM Subscribers_DE",
        &[("Full Name", EmailAddress, Some(254)), ("Years", Number, None)],
    );
    check_err("SELECT COUNT(*) FROM Subscribers_DE", SchemaError::Unnamed(1));
    check_err("SELECT Email, 1 FROM Subscribers_DE", SchemaError::Unnamed(2));
    check_err(
        "SELECT Email, o.Email FROM Subscribers_DE JOIN Orders o ON 1 = 1",
        SchemaError::DuplicateColumn("Email".into()),
    );
    let long = "A".repeat(129);
    check_err(
        &format!("SELECT Email AS {long} FROM Subscribers_DE"),
        SchemaError::NameTooLong("A".repeat(40)),
    );
}

#[test]
fn aggregates() {
    check(
        "SELECT COUNT(*) AS N, COUNT(DISTINCT Email) AS D, SUM(Age) AS S, SUM(Price) AS SP, AVG(Age) AS A, STDEV(Age) AS SD FROM Subscribers_DE",
        &[
            ("N", Number, None),
            ("D", Number, None),
            ("S", Number, None),
            ("SP", Decimal, None),
            ("A", Decimal, None),
            ("SD", Decimal, None),
        ],
    );
    // MIN/MAX keep their argument's type (the reference gave Text(254)).
    check(
        "SELECT MIN(Joined) AS First, MAX(Age) AS Oldest, MAX(FirstName) AS Name FROM Subscribers_DE",
        &[
            ("First", Date, None),
            ("Oldest", Number, None),
            ("Name", Text, Some(50)),
        ],
    );
}

#[test]
fn string_functions() {
    check(
        "SELECT CONCAT(FirstName, LastName) AS C, UPPER(FirstName) AS U, LEFT(Email, 3) AS L, SUBSTRING(LastName, 2, 5) AS S, REPLACE(Email, 'a', 'b') AS R FROM Subscribers_DE",
        &[
            ("C", Text, Some(4000)),
            ("U", Text, Some(50)),
            ("L", Text, Some(3)),
            ("S", Text, Some(5)),
            ("R", Text, Some(4000)),
        ],
    );
    // LEN/CHARINDEX/PATINDEX are numbers (the reference gave Text(4000)).
    check(
        "SELECT LEN(Email) AS A, CHARINDEX('@', Email) AS B, PATINDEX('%x%', Email) AS C FROM Subscribers_DE",
        &[("A", Number, None), ("B", Number, None), ("C", Number, None)],
    );
    check("SELECT NEWID() AS Id FROM Subscribers_DE", &[("Id", Text, Some(36))]);
}

#[test]
fn date_and_math_functions() {
    check(
        "SELECT GETDATE() AS Now, DATEADD(day, 1, Joined) AS Tomorrow, EOMONTH(Joined) AS Eom, GETUTCDATE() AS U FROM Subscribers_DE",
        &[
            ("Now", Date, None),
            ("Tomorrow", Date, None),
            ("Eom", Date, None),
            ("U", Date, None),
        ],
    );
    check(
        "SELECT YEAR(Joined) AS Y, DATEPART(month, Joined) AS M, DATEDIFF(day, Joined, GETDATE()) AS D, DAY(Joined) AS DD FROM Subscribers_DE",
        &[
            ("Y", Number, None),
            ("M", Number, None),
            ("D", Number, None),
            ("DD", Number, None),
        ],
    );
    check(
        "SELECT ABS(Price) AS A, ROUND(Age, 0) AS R, SQRT(Age) AS Q, ISNUMERIC(Email) AS I FROM Subscribers_DE",
        &[
            ("A", Decimal, None),
            ("R", Number, None),
            ("Q", Decimal, None),
            ("I", Number, None),
        ],
    );
}

#[test]
fn casts_use_their_target_type() {
    check(
        "SELECT CAST(Email AS INT) AS I, CAST(Age AS BIGINT) AS B, CAST(Email AS DATE) AS D, CAST(Email AS DATETIME) AS DT, CAST(Age AS DECIMAL(10, 3)) AS DC, CAST(Age AS BIT) AS BT, CAST(Age AS VARCHAR(20)) AS V, CAST(Age AS NVARCHAR(MAX)) AS NV FROM Subscribers_DE",
        &[
            ("I", Number, None),
            ("B", Number, None),
            ("D", Date, None),
            ("DT", Date, None),
            ("DC", Decimal, None),
            ("BT", Boolean, None),
            ("V", Text, Some(20)),
            ("NV", Text, Some(4000)),
        ],
    );
    check(
        "SELECT CONVERT(INT, Email) AS I, CONVERT(VARCHAR(10), Joined, 112) AS V FROM Subscribers_DE",
        &[("I", Number, None), ("V", Text, Some(10))],
    );
    let a = analyse(
        "SELECT CAST(Age AS DECIMAL(10, 3)) AS DC FROM Subscribers_DE",
        &catalog(),
    )
    .unwrap();
    assert_eq!((a.fields[0].precision, a.fields[0].scale), (Some(10), Some(3)));
}

#[test]
fn case_and_null_handling_take_the_branch_types() {
    check(
        "SELECT CASE WHEN Age > 30 THEN 'old' ELSE 'young' END AS T, CASE WHEN Age > 1 THEN Age ELSE 0 END AS N, CASE WHEN Age > 1 THEN Price ELSE 0 END AS D, CASE WHEN Age > 1 THEN NULL ELSE Joined END AS J FROM Subscribers_DE",
        &[
            ("T", Text, Some(254)),
            ("N", Number, None),
            ("D", Decimal, None),
            ("J", Date, None),
        ],
    );
    check(
        "SELECT ISNULL(Age, 0) AS A, COALESCE(NULL, FirstName, LastName) AS N, ISNULL(Price, Age) AS P, IIF(Age > 1, Age, NULL) AS I FROM Subscribers_DE",
        &[
            ("A", Number, None),
            ("N", Text, Some(80)),
            ("P", Decimal, None),
            ("I", Number, None),
        ],
    );
}

#[test]
fn literals_and_arithmetic() {
    check(
        "SELECT 'x' AS S, NULL AS N, 42 AS I, 9999999999 AS Big, 3.14 AS D FROM Subscribers_DE",
        &[
            ("S", Text, Some(254)),
            ("N", Text, Some(254)),
            ("I", Number, None),
            ("Big", Number, None),
            ("D", Decimal, None),
        ],
    );
    check(
        "SELECT FirstName + ' ' + LastName AS Full, Age + 1 AS Next, Age * Price AS Cost, Price + Total AS Sum2, -Age AS Neg FROM Subscribers_DE JOIN Orders ON 1 = 1",
        &[
            ("Full", Text, Some(384)),
            ("Next", Number, None),
            ("Cost", Decimal, None),
            ("Sum2", Decimal, None),
            ("Neg", Number, None),
        ],
    );
}

#[test]
fn system_data_views_are_known_without_metadata() {
    check(
        "SELECT s.JobID, s.SubscriberKey, s.EventDate FROM _Sent s",
        &[
            ("JobID", Number, None),
            ("SubscriberKey", Text, Some(254)),
            ("EventDate", Date, None),
        ],
    );
    check("SELECT JobID FROM ENT._Sent", &[("JobID", Number, None)]);
    check(
        "SELECT EmailAddress FROM [_Subscribers]",
        &[("EmailAddress", EmailAddress, Some(254))],
    );
    assert!(catalog().knows("ENT._Open") && catalog().knows("_Click") && !catalog().knows("Nope"));
}

#[test]
fn stars_expand_in_place_and_keep_the_rest_of_the_sql() {
    let sql = check(
        "SELECT TOP 10 * FROM [Orders] WHERE Total > 5 /* keep me */",
        &[
            ("OrderID", Number, None),
            ("Email", EmailAddress, Some(100)),
            ("Total", Decimal, None),
            ("First-Name", Text, Some(20)),
        ],
    );
    assert_eq!(
        sql,
        "SELECT TOP 10 OrderID, Email, Total, [First-Name] FROM [Orders] WHERE Total > 5 /* keep me */"
    );
    let sql = check(
        "SELECT DISTINCT o.*, s.Age FROM Orders o JOIN Subscribers_DE s ON s.Email = o.Email",
        &[
            ("OrderID", Number, None),
            ("Email", EmailAddress, Some(100)),
            ("Total", Decimal, None),
            ("First-Name", Text, Some(20)),
            ("Age", Number, None),
        ],
    );
    assert_eq!(
        sql,
        "SELECT DISTINCT o.OrderID, o.Email, o.Total, o.[First-Name], s.Age FROM Orders o JOIN Subscribers_DE s ON s.Email = o.Email"
    );
}

#[test]
fn every_star_expands_and_repeated_names_get_an_alias() {
    let sql = check(
        "SELECT o.*, s.* FROM Orders o\nJOIN _Subscribers s ON s.EmailAddress = o.Email",
        &[
            ("OrderID", Number, None),
            ("Email", EmailAddress, Some(100)),
            ("Total", Decimal, None),
            ("First-Name", Text, Some(20)),
            ("SubscriberID", Number, None),
            ("DateUndeliverable", Date, None),
            ("DateJoined", Date, None),
            ("DateUnsubscribed", Date, None),
            ("Domain", Text, Some(254)),
            ("EmailAddress", EmailAddress, Some(254)),
            ("BounceCount", Number, None),
            ("SubscriberKey", Text, Some(254)),
            ("SubscriberType", Text, Some(100)),
            ("Status", Text, Some(12)),
            ("Locale", Text, Some(254)),
        ],
    );
    assert!(
        sql.starts_with("SELECT o.OrderID, o.Email, o.Total, o.[First-Name], s.SubscriberID,"),
        "{sql}"
    );
    let a = analyse(
        "SELECT * FROM Orders a JOIN Orders b ON a.OrderID = b.OrderID",
        &catalog(),
    )
    .unwrap();
    let names: Vec<_> = a.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "OrderID",
            "Email",
            "Total",
            "First-Name",
            "OrderID_1",
            "Email_1",
            "Total_1",
            "First-Name_1"
        ]
    );
    assert_eq!(
        a.sql,
        "SELECT a.OrderID, a.Email, a.Total, a.[First-Name], b.OrderID AS OrderID_1, b.Email AS Email_1, b.Total AS Total_1, b.[First-Name] AS [First-Name_1] FROM Orders a JOIN Orders b ON a.OrderID = b.OrderID"
    );
}

#[test]
fn stars_expand_through_ctes_derived_tables_and_unions() {
    let sql = check(
        "WITH c AS (SELECT * FROM Orders) SELECT * FROM c",
        &[
            ("OrderID", Number, None),
            ("Email", EmailAddress, Some(100)),
            ("Total", Decimal, None),
            ("First-Name", Text, Some(20)),
        ],
    );
    assert_eq!(
        sql,
        "WITH c AS (SELECT OrderID, Email, Total, [First-Name] FROM Orders) SELECT OrderID, Email, Total, [First-Name] FROM c"
    );
    let sql = check(
        "SELECT * FROM (SELECT Email, Age FROM Subscribers_DE) t",
        &[("Email", EmailAddress, Some(254)), ("Age", Number, None)],
    );
    assert_eq!(sql, "SELECT Email, Age FROM (SELECT Email, Age FROM Subscribers_DE) t");
    let sql = check(
        "SELECT Email FROM Orders UNION ALL SELECT * FROM (SELECT Email FROM Subscribers_DE) x",
        &[("Email", EmailAddress, Some(254))],
    );
    assert!(
        sql.ends_with("SELECT Email FROM (SELECT Email FROM Subscribers_DE) x"),
        "{sql}"
    );
    // A star in EXISTS is not an output: left alone.
    let sql = check(
        "SELECT Email FROM Orders o WHERE EXISTS (SELECT * FROM Subscribers_DE s WHERE s.Email = o.Email)",
        &[("Email", EmailAddress, Some(100))],
    );
    assert!(sql.contains("EXISTS (SELECT * FROM"), "{sql}");
}

#[test]
fn stars_over_unknown_tables_and_bad_queries_are_clear_errors() {
    check_err("SELECT * FROM Mystery", SchemaError::StarExpansion("Mystery".into()));
    check_err("SELECT * FROM Empty_DE", SchemaError::StarExpansion("Empty_DE".into()));
    check_err("SELECT x.* FROM Orders o", SchemaError::StarExpansion("x".into()));
    assert!(matches!(
        analyse("SELECT FROM Contacts", &catalog()),
        Err(SchemaError::Parse(_))
    ));
    check_err("DELETE FROM Orders", SchemaError::NotSelect);
    check_err("SELECT 1 AS a; SELECT 2 AS b", SchemaError::NotSelect);
}

#[test]
fn referenced_tables_cover_every_level_but_ctes() {
    let tables = referenced_tables(
        "WITH c AS (SELECT Email FROM [Cte_Source]) SELECT c.Email FROM c JOIN ENT.[Target DE] t ON 1 = 1 \
         WHERE c.Email IN (SELECT Email FROM Sub_In) OR EXISTS (SELECT 1 FROM Sub_Exists) \
         UNION SELECT Email FROM Union_Branch",
    )
    .unwrap();
    assert_eq!(
        tables,
        ["Cte_Source", "ENT.Target DE", "Sub_In", "Sub_Exists", "Union_Branch"]
    );
    assert_eq!(normalize_table("ENT.[Target DE]"), "target de");
}

fn field(name: &str, field_type: FieldType, pk: bool, required: bool) -> TargetField {
    TargetField {
        name: name.into(),
        field_type,
        max_length: Some(254),
        is_primary_key: pk,
        is_required: required,
    }
}

#[test]
fn target_checks() {
    let fields = [
        field("Email", EmailAddress, true, true),
        field("Age", Number, false, false),
        field("Note", Text, false, false),
    ];
    let out = |sql: &str| analyse(sql, &catalog()).unwrap().columns;
    let sql = "SELECT Email, Age FROM Subscribers_DE";
    assert!(check_target(sql, &out(sql), "Target", "TKEY", &fields, TargetMode::Overwrite).is_empty());

    // Overwrite may not read its own target, at any depth, by name or key.
    for reads in [
        "SELECT Email FROM [Target]",
        "SELECT Email FROM Subscribers_DE WHERE Email IN (SELECT Email FROM ENT.TKEY)",
        "WITH x AS (SELECT Email FROM target) SELECT Email FROM x",
        "SELECT Email FROM Subscribers_DE UNION SELECT Email FROM Target",
    ] {
        let problems = check_target(reads, &[], "Target", "TKEY", &fields, TargetMode::Overwrite);
        assert!(
            problems[0].starts_with("Cannot overwrite Data Extension \"Target\""),
            "{reads}: {problems:?}"
        );
        assert!(
            check_target(reads, &[], "Target", "TKEY", &fields, TargetMode::Append)
                .iter()
                .all(|p| !p.starts_with("Cannot overwrite"))
        );
    }
    let problems = check_target("SELEC nonsense", &[], "Target", "TKEY", &fields, TargetMode::Overwrite);
    assert!(problems[0].starts_with("Cannot safely verify overwrite behavior"));

    let no_pk = [field("Email", EmailAddress, false, false)];
    assert_eq!(
        check_target(sql, &out(sql), "Target", "TKEY", &no_pk, TargetMode::Update),
        ["Update mode requires the target Data Extension to have a Primary Key field."]
    );

    let bad = "SELECT Age AS Note, Joined AS Age, FirstName FROM Subscribers_DE";
    assert_eq!(
        check_target(bad, &out(bad), "Target", "TKEY", &fields, TargetMode::Append),
        [
            "Query output does not match target Data Extension \"Target\".",
            "Column \"Age\" is Date but target field \"Age\" is Number.",
            "Target DE missing field \"FirstName\".",
            "Required target field \"Email\" is not selected.",
        ]
    );
    let long = "SELECT Email, LastName AS Note FROM Subscribers_DE";
    let narrow = [
        field("Email", EmailAddress, true, true),
        TargetField {
            max_length: Some(10),
            ..field("Note", Text, false, false)
        },
    ];
    assert_eq!(
        check_target(long, &out(long), "T", "K", &narrow, TargetMode::Append)[1],
        "Column \"Note\" holds up to 80 characters but target field \"Note\" only 10."
    );
    assert_eq!(TargetMode::parse(None), Some(TargetMode::Overwrite));
    assert_eq!(TargetMode::parse(Some("update")), Some(TargetMode::Update));
    assert_eq!(TargetMode::parse(Some("Merge")), None);
}
