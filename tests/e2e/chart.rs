//! The Helm chart's `helm test` program (charts/shoal/files/hello.wasm) is its source
//! compiled, and it runs: a job of it completes with the line the test pod expects.
//! (Rendering, linting and validating the chart is scripts/chart-test.py.)

use crate::common::{Devstack, root};

/// The committed program is what its source compiles to. With
/// `SHOAL_UPDATE_CHART_PROGRAM=1` a stale one is rewritten, and the test still fails so the
/// rewrite is noticed and committed: no setting makes a stale program pass.
#[test]
fn the_helm_test_program_is_its_source_compiled() {
    let files = root().join("charts/shoal/files");
    let compiled = wat::parse_file(files.join("hello.wat")).expect("hello.wat compiles");
    let path = files.join("hello.wasm");
    let committed = std::fs::read(&path).expect("hello.wasm");
    if committed == compiled {
        return;
    }
    if std::env::var_os("SHOAL_UPDATE_CHART_PROGRAM").is_some() {
        std::fs::write(&path, &compiled).expect("write hello.wasm");
        panic!("charts/shoal/files/hello.wasm was stale and is rewritten: commit it");
    }
    panic!(
        "charts/shoal/files/hello.wasm is stale: run `SHOAL_UPDATE_CHART_PROGRAM=1 cargo test --test e2e chart`"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_helm_test_program_runs() {
    let stack = Devstack::start(&[]).await;
    let program = root().join("charts/shoal/files/hello.wasm");
    let out = stack
        .shoal(&["wasm", "run", &program.to_string_lossy()])
        .await
        .success();
    assert_eq!(out.stdout, "hello from helm test\n");
}
