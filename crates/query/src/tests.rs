//! The engine against fixed classes: what each class is asked, joins, aggregates, types
//! and units, errors and limits.

use super::*;
use crate::vtab::pairs;
use purveyor_model::{PropertyDef, Semantic, Unit};

/// Two classes: `test.proc` (key `pid`, 1..=50; `rss` = pid × 1000; `name` "p{pid % 5}")
/// and `test.user` (key `name`, p0..p4, `uid`). Records every fetch.
struct Fixed {
    asked: Mutex<Vec<String>>,
}

fn proc_schema() -> ClassSchema {
    ClassSchema::fixed(
        "test.proc",
        "processes",
        vec![
            PropertyDef::new("pid", "u64", Unit::None, Semantic::Key, ""),
            PropertyDef::new("name", "string", Unit::None, Semantic::Discrete, ""),
            PropertyDef::new("rss", "u64", Unit::Bytes, Semantic::Gauge, ""),
        ],
    )
}

fn user_schema() -> ClassSchema {
    ClassSchema::fixed(
        "test.user",
        "users",
        vec![
            PropertyDef::new("name", "string", Unit::None, Semantic::Key, ""),
            PropertyDef::new("uid", "i64", Unit::None, Semantic::Discrete, ""),
        ],
    )
}

impl Source for Fixed {
    fn schema(&self, class: &ClassPath) -> Result<Option<Arc<ClassSchema>>, RemoteError> {
        Ok(match class.as_str() {
            "test.proc" => Some(Arc::new(proc_schema())),
            "test.user" => Some(Arc::new(user_schema())),
            "test.secret" => {
                return Err(RemoteError::new(
                    ErrorCode::AccessDenied,
                    "test.secret: not readable by you",
                ));
            }
            _ => None,
        })
    }

    fn fetch(
        &self,
        class: &ClassPath,
        key: &InstanceKey,
        whole: bool,
    ) -> Result<Vec<Instance>, RemoteError> {
        self.asked
            .lock()
            .unwrap()
            .push(format!("{class} {} {whole}", pairs(key)));
        let all: Vec<Instance> = match class.as_str() {
            "test.proc" => (1..=50u64)
                .map(|pid| {
                    Instance::from_pairs([
                        ("pid", Value::U64(pid)),
                        ("name", Value::String(format!("p{}", pid % 5))),
                        ("rss", Value::U64(pid * 1000)),
                    ])
                })
                .collect(),
            _ => (0..5i64)
                .map(|n| {
                    Instance::from_pairs([
                        ("name", Value::String(format!("p{n}"))),
                        ("uid", Value::I64(1000 + n)),
                    ])
                })
                .collect(),
        };
        Ok(all
            .into_iter()
            .filter(|i| key.values().all(|(n, v)| i.get(n.as_str()) == Some(v)))
            .collect())
    }
}

fn query(sql: &str) -> (Result<Answer, QueryError>, Vec<String>) {
    let source = Arc::new(Fixed {
        asked: Mutex::default(),
    });
    let result = run(source.clone(), sql, true, &Limits::default());
    let asked = source.asked.lock().unwrap().clone();
    (result, asked)
}

#[test]
fn key_equality_becomes_a_get_and_nothing_else_is_enumerated() {
    let (answer, asked) = query("SELECT name, rss FROM test.proc WHERE pid = 7");
    let answer = answer.unwrap();
    assert_eq!(asked, ["test.proc pid=7 true"]);
    assert_eq!(
        answer.rows,
        [vec![
            Some(Value::String("p2".into())),
            Some(Value::U64(7000))
        ]]
    );
    assert_eq!(answer.plan, ["test.proc: get pid=7 → 1 instance"]);
    // The columns carry the properties' types and units.
    assert_eq!(answer.columns[1].name, "rss");
    assert_eq!(answer.columns[1].unit, Some(Unit::Bytes));
    assert_eq!(
        answer.columns[1].ty,
        Some(ValueType::Scalar(ScalarType::U64))
    );
}

#[test]
fn other_constraints_are_filtered_by_the_engine_after_one_enumerate() {
    let (answer, asked) =
        query("SELECT pid, rss FROM test.proc WHERE rss > 45000 ORDER BY rss DESC LIMIT 3");
    assert_eq!(asked, ["test.proc  false"]);
    let pids: Vec<_> = answer
        .unwrap()
        .rows
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(
        pids,
        [
            Some(Value::U64(50)),
            Some(Value::U64(49)),
            Some(Value::U64(48))
        ]
    );
}

#[test]
fn joins_and_aggregates_across_classes() {
    let (answer, asked) = query(
        "SELECT u.name, u.uid, count(*) AS n, sum(p.rss) AS total \
         FROM test.proc AS p JOIN \"test.user\" AS u ON u.name = p.name \
         GROUP BY u.name ORDER BY u.name LIMIT 2",
    );
    let answer = answer.unwrap();
    assert_eq!(
        answer.rows[0],
        vec![
            Some(Value::String("p0".into())),
            Some(Value::I64(1000)),
            Some(Value::I64(10)),
            // 5 + 10 + … + 50 thousand
            Some(Value::I64(275_000)),
        ]
    );
    assert_eq!(answer.columns[2].ty, None, "an aggregate is not a property");
    // Each class was read once: processes enumerated, and users either enumerated or,
    // looked up by key row by row, enumerated once after a few gets.
    assert_eq!(
        asked.iter().filter(|a| a.starts_with("test.proc")).count(),
        1,
        "{asked:?}"
    );
    assert!(
        asked.iter().filter(|a| a.starts_with("test.user")).count() <= 9,
        "{asked:?}"
    );
    assert_eq!(
        asked
            .iter()
            .filter(|a| a.starts_with("test.user") && a.ends_with("false"))
            .count(),
        1,
        "{asked:?}"
    );
}

#[test]
fn errors_name_the_class_or_the_place() {
    let (err, asked) = query("SELECT * FROM test.absent");
    assert!(asked.is_empty());
    let err = err.unwrap_err();
    assert_eq!(
        err,
        QueryError::UnknownClass {
            class: "test.absent".into(),
            offset: Some(14)
        }
    );
    let err = query("SELECT nope FROM test.proc").0.unwrap_err();
    assert!(err.to_string().contains("no such column: nope"), "{err}");
    let err = query("SELECT pid FROM test.proc WHER pid = 1")
        .0
        .unwrap_err();
    let QueryError::Sql { offset, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*offset, Some(31), "{err}");
    let err = query("SELECT * FROM test.secret").0.unwrap_err();
    assert_eq!(err.remote().code, ErrorCode::AccessDenied);
}

#[test]
fn a_value_of_another_kind_is_a_type_mismatch_at_its_place() {
    let sql = "SELECT pid FROM test.proc WHERE rss > 'lots'";
    let err = query(sql).0.unwrap_err();
    assert_eq!(
        err,
        QueryError::TypeMismatch {
            column: "test.proc.rss".into(),
            expected: "u64".into(),
            found: "'lots'".into(),
            offset: Some(38),
        }
    );
    assert_eq!(&sql[38..], "'lots'");
    assert_eq!(err.remote().code, ErrorCode::InvalidRequest);
    assert_eq!(
        err.to_string(),
        "type mismatch at byte 38: test.proc.rss is u64, compared with 'lots'"
    );
    // On a key, too, before anything is asked.
    let (err, asked) = query("SELECT * FROM test.proc WHERE pid = X'01'");
    let err = err.unwrap_err();
    assert!(err.to_string().contains("test.proc.pid is u64"), "{err}");
    assert!(asked.is_empty(), "{asked:?}");
    // Text that is a number is that number, as SQLite compares it: one get.
    let (answer, asked) = query("SELECT rss FROM test.proc WHERE pid = '7'");
    assert_eq!(answer.unwrap().rows, vec![vec![Some(Value::U64(7000))]]);
    assert_eq!(asked.len(), 1, "{asked:?}");
    // A long value is quoted cut short, its place still found.
    let long = "x".repeat(5000);
    let sql = format!("SELECT pid FROM test.proc WHERE rss > '{long}'");
    let err = query(&sql).0.unwrap_err().to_string();
    assert!(
        err.starts_with("type mismatch at byte 38: test.proc.rss is u64"),
        "{err}"
    );
    assert!(err.len() < 300, "{err}");
    // NULL is no mismatch: nothing compares equal to it.
    let (answer, _) = query("SELECT rss FROM test.proc WHERE rss = NULL");
    assert!(answer.unwrap().rows.is_empty());
}

#[test]
fn only_reads_are_allowed_and_limits_hold() {
    let err = query("CREATE TABLE t(x)").0.unwrap_err();
    assert!(err.to_string().contains("only queries"), "{err}");
    let source = Arc::new(Fixed {
        asked: Mutex::default(),
    });
    let few = Limits {
        rows: 10,
        ..Limits::default()
    };
    let err = run(source.clone(), "SELECT * FROM test.proc", false, &few).unwrap_err();
    assert_eq!(err.remote().code, ErrorCode::LimitExceeded);
    assert!(err.to_string().contains("10 rows"), "{err}");
    let little = Limits {
        instances: 20,
        ..Limits::default()
    };
    let err = run(source.clone(), "SELECT * FROM test.proc", false, &little).unwrap_err();
    assert!(err.to_string().contains("20 instances"), "{err}");
    let short = Limits {
        time: Duration::from_millis(50),
        ..Limits::default()
    };
    let err = run(
        source,
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n",
        false,
        &short,
    )
    .unwrap_err();
    assert!(err.to_string().contains("longer than its limit"), "{err}");
    let long = "SELECT 1".to_string() + &" ".repeat(MAX_SQL);
    assert!(query(&long).0.unwrap_err().to_string().contains("limit is"));
}

#[test]
fn a_value_no_key_can_have_asks_nothing() {
    let (answer, asked) = query("SELECT * FROM test.proc WHERE pid = -1");
    assert!(answer.unwrap().rows.is_empty());
    assert!(asked.is_empty(), "{asked:?}");
}

/// A class whose schema gains a property between two queries on one engine: the second
/// query finds its kept table stale and runs again on a new connection, with the new
/// column.
#[test]
fn a_kept_table_whose_class_changed_is_made_again() {
    struct Changing {
        grown: std::sync::atomic::AtomicBool,
    }
    impl Source for Changing {
        fn schema(&self, _: &ClassPath) -> Result<Option<Arc<ClassSchema>>, RemoteError> {
            let mut properties = vec![PropertyDef::new("id", "u64", Unit::None, Semantic::Key, "")];
            if self.grown.load(Ordering::SeqCst) {
                properties.push(PropertyDef::new(
                    "extra",
                    "string",
                    Unit::None,
                    Semantic::Discrete,
                    "",
                ));
            }
            Ok(Some(Arc::new(ClassSchema::fixed(
                "test.grow",
                "",
                properties,
            ))))
        }
        fn fetch(
            &self,
            _: &ClassPath,
            _: &InstanceKey,
            _: bool,
        ) -> Result<Vec<Instance>, RemoteError> {
            Ok(vec![Instance::from_pairs([
                ("id", Value::U64(1)),
                ("extra", Value::String("new".into())),
            ])])
        }
    }
    let source = Arc::new(Changing {
        grown: false.into(),
    });
    let engine = Engine::default();
    let first = engine
        .run(
            source.clone(),
            "SELECT * FROM test.grow",
            false,
            &Limits::default(),
        )
        .unwrap();
    assert_eq!(first.columns.len(), 1);
    // Kept: the same query again reuses the connection and its table.
    let again = engine
        .run(
            source.clone(),
            "SELECT * FROM test.grow",
            false,
            &Limits::default(),
        )
        .unwrap();
    assert_eq!(again, first);
    source.grown.store(true, Ordering::SeqCst);
    let grown = engine
        .run(source, "SELECT * FROM test.grow", false, &Limits::default())
        .unwrap();
    assert_eq!(grown.columns.len(), 2);
    assert_eq!(grown.rows[0][1], Some(Value::String("new".into())));
}
