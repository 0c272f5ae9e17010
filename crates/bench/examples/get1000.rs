//! Where the time of `get app.X` for a 1 000-counter set goes, step by step, in one
//! process (no transport): the provider building the instance, the schema check, the
//! encoding, the client's decoding. `cargo run --release -p purveyor-bench --example get1000`.

use purveyor_counters::{CounterSet, CounterType, Unit};
use purveyor_model::{ClassPath, Instance};
use purveyor_provider::{CallContext, Caller, Provider};
use std::time::Instant;
fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = CounterSet::builder("big");
    for c in 0..1000 {
        b = b.counter(&format!("c{c}"), CounterType::Counter, Unit::Count, "");
    }
    let _set = b.create_in(dir.path()).unwrap();
    let p = purveyor_app_counters::AppCounters::new(
        vec![dir.path().into()],
        vec![],
        std::time::Duration::from_secs(60),
    );
    let class = ClassPath::new("app.big").unwrap();
    let ctx = CallContext::new(Caller::new(0, 0, 1), None);
    let schema = p.schema(&class).unwrap();
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(p.schema(&class));
    }
    println!("schema {:?}", t.elapsed() / n);
    let t = Instant::now();
    let mut keep = Vec::new();
    for _ in 0..n {
        keep.push(p.enumerate(&class, &ctx).unwrap());
    }
    println!("enumerate {:?}", t.elapsed() / n);
    let inst = keep[0][0].clone();
    let t = Instant::now();
    for _ in 0..n {
        schema.check_instance(&inst).unwrap();
    }
    println!("check {:?}", t.elapsed() / n);
    let mut out = Vec::new();
    let t = Instant::now();
    for _ in 0..n {
        out.clear();
        purveyor_protocol::encode_payload(purveyor_protocol::Encoding::Binary, &inst, &mut out)
            .unwrap();
    }
    println!("encode {:?} ({} B)", t.elapsed() / n, out.len());
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(
            purveyor_protocol::decode::<Instance>(purveyor_protocol::Encoding::Binary, &out)
                .unwrap(),
        );
    }
    println!("decode+drop {:?}", t.elapsed() / n);
    let t = Instant::now();
    drop(keep);
    println!("drop {:?}", t.elapsed() / n);
}
