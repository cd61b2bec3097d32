//! The `allowed_ips` validation path over generated lists, through CreateKey on a real server:
//! a list is stored, each entry in its canonical form that reads back as the same network, or
//! refused with INVALID_ARGUMENT naming `allowed_ips`; never a panic or an internal error.

use std::net::IpAddr;

use keyhouse_domain::caller::Role;
use keyhouse_domain::verify::parse_network;
use keyhouse_proto::v1 as pb;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::support::{Backend, TestServer};

fn entry() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<IpAddr>(), 0u8..=128, "[ \t]{0,2}").prop_map(|(addr, prefix, pad)| {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            format!("{pad}{addr}/{}{pad}", prefix % (max + 1))
        }),
        any::<IpAddr>().prop_map(|addr| addr.to_string()),
        "[0-9a-f.:/ ]{0,24}",
        any::<String>(),
    ]
}

#[test]
fn generated_allowlists_are_stored_canonically_or_refused_naming_allowed_ips() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime.block_on(TestServer::start(Backend::Sqlite));
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(entry(), 0..5), |entries| {
        runtime.block_on(async {
            // A user per case: no per-user limit on keys can decide the outcome.
            let token = server
                .session(
                    &format!("ips-{}", uuid::Uuid::new_v4().simple()),
                    Role::User,
                )
                .await;
            let mut client = server.user_client(Some(&token)).await;
            let expected: Option<Vec<String>> = entries
                .iter()
                .map(|e| parse_network(e).map(|n| n.to_string()))
                .collect();
            let created = client
                .create_key(pb::CreateKeyRequest {
                    name: "generated allowlist".into(),
                    allowed_ips: entries.clone(),
                    ..Default::default()
                })
                .await;
            match (created, expected) {
                (Ok(issued), Some(canonical)) => {
                    let stored = client
                        .get_key(pb::GetKeyRequest {
                            key_id: issued.into_inner().key_id,
                        })
                        .await
                        .map_err(|s| TestCaseError::fail(format!("get: {s}")))?
                        .into_inner()
                        .allowed_ips;
                    prop_assert_eq!(&stored, &canonical, "{:?}", entries);
                    for text in &stored {
                        let again = parse_network(text).map(|n| n.to_string());
                        prop_assert_eq!(again.as_ref(), Some(text));
                    }
                }
                (Err(status), None) => {
                    prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                    prop_assert!(
                        status.message().contains("allowed_ips"),
                        "{}",
                        status.message()
                    );
                }
                (Ok(_), None) => prop_assert!(false, "{:?} was stored", entries),
                (Err(status), Some(_)) => {
                    prop_assert!(false, "{:?} was refused: {}", entries, status)
                }
            }
            Ok(())
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
