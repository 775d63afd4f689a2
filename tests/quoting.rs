//! Property test: whatever a schema, table or column is called, and whatever a literal holds, quoting
//! carries it to a real server intact (syncing such names end to end is in tests/sync.rs).

mod common;

use pgtwin::sql::ident::{Ident, Literal, QualName};
use proptest::prelude::*;

fn odd_name() -> impl Strategy<Value = String> {
    // Any characters but NUL, which PostgreSQL names cannot hold; bounded to the 63-byte limit.
    prop_oneof![
        proptest::string::string_regex(r#"[^\x00]{1,20}"#)
            .unwrap()
            .prop_filter("63 bytes at most, no reserved pg_ prefix", |s| s.len()
                <= 63
                && !s.starts_with("pg_")),
        Just(r#"a"b"#.to_string()),
        Just("Weird Case".to_string()),
        Just("ünï".to_string()),
        Just("x'); drop table t; --".to_string()),
        Just("$pgtwin$".to_string()),
        Just("tab\tnew\nline\u{1}\\ \"q\" \u{7f} €".to_string()),
        Just("select".to_string()),
    ]
}

#[test]
fn odd_identifiers_and_literals_survive_a_real_server() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = rt.block_on(common::Pair::new());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    runner
        .run(&(odd_name(), odd_name(), odd_name()), |(schema, table, text)| {
            rt.block_on(async {
                let name = QualName::new(schema.as_str(), table.as_str());
                let col = Ident::new(table.as_str());
                let db = &p.admin[0];
                db.batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE {name} ({col} text); INSERT INTO {name} VALUES ({})",
                    name.schema,
                    Literal(&text)
                ))
                .await
                .unwrap();
                let row = db
                    .query_one(
                        &format!(
                            "SELECT n.nspname::text, c.relname::text, (SELECT {col} FROM {name}) FROM pg_class c
                             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = {}::regclass",
                            Literal(&name.to_string())
                        ),
                        &[],
                    )
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, String>(0), schema);
                assert_eq!(row.get::<_, String>(1), table);
                assert_eq!(row.get::<_, String>(2), text);
                // A chunk's column list as the capture writes it is the text `up` expects for it.
                let listed: String = db
                    .query_one(
                        &format!(
                            "SELECT {} FROM pg_attribute a WHERE a.attrelid = {}::regclass AND a.attnum > 0",
                            pgtwin::change::COLUMNS_SQL,
                            Literal(&name.to_string())
                        ),
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(listed, pgtwin::change::columns_json([&col]));
                db.batch_execute(&format!("DROP TABLE {name}")).await.unwrap();
                // Parsing the quoted form gives the same name back.
                assert_eq!(QualName::parse(&name.to_string()).unwrap(), name);
            });
            Ok(())
        })
        .unwrap();
}
