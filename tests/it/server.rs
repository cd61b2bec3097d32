//! The server around the services: reflection, health, and the split binaries' refusal to run
//! on a schema that is behind.

use keyhouse_domain::config::Secret;
use keyhouse_domain::crypto::fernet_ring::KeyRing;
use keyhouse_server::ServerSettings;
use keyhouse_server::bootstrap::{self, Deployment, Mount};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::on_both_databases;
use crate::support::{Backend, TestDb, TestServer};

on_both_databases!(
    reflection_lists_both_services_ext_authz_and_health,
    health_answers_serving_for_every_service,
    split_binaries_refuse_a_missing_key_or_a_schema_that_is_behind,
    every_binary_refuses_a_schema_newer_than_it_knows,
);

async fn reflection_lists_both_services_ext_authz_and_health(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1")
        .into_inner();
    let response = stream
        .message()
        .await
        .expect("a response")
        .expect("not empty");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "envoy.service.auth.v3.Authorization",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "keyhouse.v1.PlatformKeyService",
            "keyhouse.v1.UserKeyService",
        ]
    );

    // Older tools (grpcurl among them) may still speak v1alpha.
    use tonic_reflection::pb::v1alpha as alpha;
    let mut old =
        alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "keyhouse.v1.UserKeyService".into(),
            ),
        ),
    };
    let mut stream = old
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha")
        .into_inner();
    let response = stream
        .message()
        .await
        .expect("a response")
        .expect("not empty");
    assert!(
        matches!(
            response.message_response,
            Some(alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "v1alpha describes the service"
    );
}

async fn health_answers_serving_for_every_service(backend: Backend) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let server = TestServer::start(backend).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in [
        "",
        "keyhouse.v1.UserKeyService",
        "keyhouse.v1.PlatformKeyService",
        "envoy.service.auth.v3.Authorization",
    ] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
    }
}

async fn split_binaries_refuse_a_missing_key_or_a_schema_that_is_behind(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let listener = || async {
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
    };
    let mut settings = ServerSettings::new(test_db.url.clone());

    let err = split(
        &USER_KEYS,
        settings.clone(),
        listener().await,
        std::future::pending(),
    )
    .await
    .expect_err("no encryption key");
    assert!(
        format!("{err:#}").contains("KEYHOUSE_ENCRYPTION_KEYS is not set"),
        "{err:#}"
    );
    settings.domain.encryption_keys = Some(Secret::new("this-is-not-a-fernet-key"));
    let err = split(
        &PLATFORM_KEYS,
        settings.clone(),
        listener().await,
        std::future::pending(),
    )
    .await
    .expect_err("a malformed encryption key");
    let message = format!("{err:#}");
    assert!(
        message.contains("not a Fernet key")
            && message.contains("keyhouse encryption generate-key"),
        "{message}"
    );
    assert!(
        !message.contains("this-is-not-a-fernet-key"),
        "the error echoes the key"
    );
    settings.domain.encryption_keys = Some(Secret::new(KeyRing::generate_key()));

    let err = split(
        &USER_KEYS,
        settings.clone(),
        listener().await,
        std::future::pending(),
    )
    .await
    .expect_err("user-key-service on an empty database");
    let message = format!("{err:#}");
    assert!(
        message.contains("schema is behind") && message.contains("keyhouse migrate"),
        "{message}"
    );

    let err = split(
        &PLATFORM_KEYS,
        settings.clone(),
        listener().await,
        std::future::pending(),
    )
    .await
    .expect_err("platform-key-service on an empty database");
    assert!(format!("{err:#}").contains("keyhouse migrate"));

    // Once migrated, the split binary serves.
    let db = test_db.connect().await;
    keyhouse_domain::db::migrate(&db).await.expect("migrate");
    let l = listener().await;
    let addr = l.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(split(&USER_KEYS, settings, l, async {
        let _ = stopped.await;
    }));
    let mut health = None;
    for _ in 0..100 {
        if let Ok(ch) = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
        {
            health = Some(tonic_health::pb::health_client::HealthClient::new(ch));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let answer = health
        .expect("the split binary listens")
        .check(tonic_health::pb::HealthCheckRequest {
            service: "keyhouse.v1.UserKeyService".into(),
        })
        .await
        .expect("health");
    assert_eq!(answer.into_inner().status, 1, "SERVING");
    let _ = stop.send(());
    task.await.expect("join").expect("clean shutdown");
}

async fn every_binary_refuses_a_schema_newer_than_it_knows(backend: Backend) {
    use sea_orm::ConnectionTrait;
    let test_db = TestDb::new(backend).await;
    let db = test_db.connect().await;
    keyhouse_domain::db::migrate(&db).await.expect("migrate");
    db.execute_unprepared("INSERT INTO seaql_migrations (version, applied_at) VALUES ('m29990101_000001_from_the_future', 0)")
        .await
        .expect("a newer keyhouse's migration");
    let mut settings = ServerSettings::new(test_db.url.clone());
    settings.domain.encryption_keys = Some(Secret::new(KeyRing::generate_key()));
    let listener = || async {
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
    };

    let migrate = keyhouse_domain::db::migrate(&db)
        .await
        .expect_err("keyhouse migrate");
    let serve = keyhouse::serve(settings.clone(), listener().await, std::future::pending())
        .await
        .expect_err("keyhouse serve");
    let split = split(
        &USER_KEYS,
        settings,
        listener().await,
        std::future::pending(),
    )
    .await
    .expect_err("user-key-service");
    for message in [
        migrate.to_string(),
        format!("{serve:#}"),
        format!("{split:#}"),
    ] {
        assert!(
            message.contains("newer than this build")
                && message.contains("m29990101_000001_from_the_future"),
            "{message}"
        );
    }
}

static USER_KEYS: [&dyn Mount; 1] = [&keyhouse_user_keys::Service];
static PLATFORM_KEYS: [&dyn Mount; 1] = [&keyhouse_platform_keys::Service];

/// A split binary as its `main` runs it: one service through the bootstrap.
fn split(
    services: &'static [&'static dyn Mount],
    settings: ServerSettings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl std::future::Future<Output = anyhow::Result<()>> {
    bootstrap::run(settings, Deployment::Split, services, listener, shutdown)
}
