//! The MCE client against the simulator, with its credentials in a real
//! PostgreSQL database: token grant and rotation, the auth retry, transient
//! retries, single-flight refresh.

use std::time::Duration;

use mce_sim::{Fault, Sim, SimConfig};
use sea_orm::{DatabaseConnection, EntityTrait};
use secrecy::SecretString;
use service::adapters::crypto::Cipher;
use service::adapters::mce::{BaseUrls, Mce, MceError, RetryPolicy, Timeouts};
use service::adapters::store::Store;
use service::adapters::store::credentials::CredentialStore;
use shell_query_core::backoff::Backoff;
use tests::{ENCRYPTION_KEY, fresh_database_url};
use uuid::Uuid;

struct Fixture {
    sim: Sim,
    db: Store,
    /// For reading the credentials rows as they are stored.
    raw: DatabaseConnection,
    mce: Mce,
    tenant: Uuid,
    user: Uuid,
}

const MID: &str = "510000123";

async fn fixture(refresh_token: &str) -> Fixture {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    sim.add_refresh_token("valid-refresh");
    let url = fresh_database_url();
    service::adapters::store::migrate(&url).await.unwrap();
    let db = service::adapters::store::connect(&url, 4).await.unwrap();
    let cipher = Cipher::parse(ENCRYPTION_KEY).unwrap();
    let (tenant, user) = (Uuid::new_v4(), Uuid::new_v4());
    service::adapters::store::tenants::upsert_tenant(&db, tenant, &tenant.simple().to_string(), "mc-sim")
        .await
        .unwrap();
    service::adapters::store::credentials::upsert_credentials(
        &db,
        tenant,
        user,
        MID,
        cipher.encrypt(refresh_token),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let mce = client(&sim, &db);
    let raw = sea_orm::Database::connect(&url).await.unwrap();
    Fixture {
        sim,
        db,
        raw,
        mce,
        tenant,
        user,
    }
}

/// A client of its own (another replica): its own token cache and single
/// flight, the same database.
fn client(sim: &Sim, db: &Store) -> Mce {
    let retry = RetryPolicy {
        max_retries: 3,
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(80),
            multiplier: 2.0,
            jitter_range: 0.4,
        },
        max_retry_after: Duration::from_secs(1),
    };
    let urls = BaseUrls {
        auth: sim.url(),
        soap: sim.url(),
        rest: sim.url(),
    };
    Mce::new(
        CredentialStore::new(db.clone()),
        Cipher::parse(ENCRYPTION_KEY).unwrap(),
        "client".into(),
        SecretString::from("secret"),
        urls,
        retry,
    )
    .with_timeouts(Timeouts {
        call: Duration::from_millis(400),
        ..Timeouts::default()
    })
}

async fn stored_refresh_token(f: &Fixture) -> String {
    let rows = entities::credentials::Entity::find().all(&f.raw).await.unwrap();
    Cipher::parse(ENCRYPTION_KEY)
        .unwrap()
        .decrypt(&rows[0].refresh_token)
        .unwrap()
}

#[tokio::test]
async fn a_token_is_granted_once_cached_and_its_rotated_refresh_token_stored() {
    let f = fixture("valid-refresh").await;
    let session = f.mce.session(&account(f.tenant, Some(f.user))).await.unwrap();
    assert_eq!(
        session
            .find_folder("Data Extensions", Some("dataextension"))
            .await
            .unwrap(),
        Some(1)
    );
    assert!(session.validate("SELECT 1").await.unwrap().valid);
    assert_eq!(f.sim.count("token"), 1, "the token is cached between calls");
    let stored = stored_refresh_token(&f).await;
    assert_ne!(
        stored, "valid-refresh",
        "the rotated refresh token replaced the old one"
    );
    assert_eq!(f.sim.refresh_tokens(), vec![stored]);
}

#[tokio::test]
async fn login_failed_and_http_401_refresh_once_and_retry_once() {
    let f = fixture("valid-refresh").await;
    let session = f.mce.session(&account(f.tenant, Some(f.user))).await.unwrap();
    session.find_folder("Data Extensions", None).await.unwrap();

    f.sim.expire_access_tokens();
    assert_eq!(
        session.find_folder("Data Extensions", None).await.unwrap(),
        Some(1),
        "SOAP Login Failed → refresh"
    );
    assert_eq!(f.sim.count("token"), 2);
    assert_eq!(
        f.sim.count("soap:Retrieve:DataFolder"),
        3,
        "one refused call, one retried"
    );

    f.sim.expire_access_tokens();
    assert!(session.validate("SELECT 1").await.unwrap().valid, "REST 401 → refresh");
    assert_eq!(f.sim.count("token"), 3);
    assert_eq!(f.sim.count("rest:validate"), 2);
}

#[tokio::test]
async fn a_revoked_refresh_token_is_a_clear_auth_error() {
    let f = fixture("revoked").await;
    let session = f.mce.session(&account(f.tenant, Some(f.user))).await.unwrap();
    let err = session.validate("SELECT 1").await.unwrap_err();
    assert!(matches!(err, MceError::AuthExpired { .. }), "{err:?}");
    assert_eq!(
        err.client_message(),
        "Marketing Cloud session expired. Please re-authenticate."
    );
    assert_eq!(f.sim.count("token"), 1, "a refusal is not retried");
    assert_eq!(f.sim.count("rest:validate"), 0);
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let f = fixture("valid-refresh").await;
    let session = f.mce.session(&account(f.tenant, Some(f.user))).await.unwrap();
    f.sim.inject(Fault::new("rest:validate", 503, 2));
    assert!(session.validate("SELECT 1").await.unwrap().valid);
    assert_eq!(f.sim.count("rest:validate"), 3);

    f.sim.inject(Fault::new("soap:Retrieve:DataFolder", 500, 10));
    let err = session.find_folder("Data Extensions", None).await.unwrap_err();
    assert!(
        matches!(err, MceError::Unavailable { .. }) && err.is_transient(),
        "{err:?}"
    );
    assert_eq!(
        f.sim.count("soap:Retrieve:DataFolder"),
        4,
        "one attempt and three retries"
    );

    f.sim.inject(Fault::new("rest:isrunning", 403, 1));
    let err = session.is_running("x").await.unwrap_err();
    assert!(matches!(err, MceError::Forbidden { .. }), "403 is not retried: {err:?}");
}

#[tokio::test]
async fn concurrent_callers_share_one_refresh() {
    let f = fixture("valid-refresh").await;
    let session = f.mce.session(&account(f.tenant, Some(f.user))).await.unwrap();
    let calls = (0..8).map(|_| session.find_folder("Data Extensions", None));
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap(), Some(1));
    }
    assert_eq!(f.sim.count("token"), 1);
}

#[tokio::test]
async fn an_unknown_tenant_or_missing_credentials_are_named() {
    let f = fixture("valid-refresh").await;
    assert!(matches!(
        f.mce.session(&account(Uuid::new_v4(), Some(f.user))).await,
        Err(MceError::TenantNotFound)
    ));
    let session = f.mce.session(&account(f.tenant, Some(Uuid::new_v4()))).await.unwrap();
    assert_eq!(
        session.validate("SELECT 1").await.unwrap_err(),
        MceError::CredentialsMissing
    );
}

#[tokio::test]
async fn retry_after_is_honoured_as_seconds_or_a_date_and_capped() {
    let f = fixture("valid-refresh").await;
    let session = f.mce.session(&account(f.tenant, Some(f.user))).await.unwrap();
    session.validate("SELECT 1").await.unwrap();

    // One second asked: the retry waits for it (the backoff alone would be ~20 ms).
    f.sim.inject(Fault::new("rest:validate", 429, 1).retry_after("1"));
    let started = std::time::Instant::now();
    assert!(session.validate("SELECT 1").await.unwrap().valid);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // An HTTP date two seconds ahead is read too; the fixture caps hints at 1 s.
    let date = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .to_rfc2822()
        .replace("+0000", "GMT");
    f.sim.inject(Fault::new("rest:validate", 429, 1).retry_after(&date));
    let started = std::time::Instant::now();
    assert!(session.validate("SELECT 1").await.unwrap().valid);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1900),
        "{took:?}"
    );

    // Two minutes asked: capped at the policy's 1 s.
    f.sim.inject(Fault::new("rest:validate", 429, 1).retry_after("120"));
    let started = std::time::Instant::now();
    assert!(session.validate("SELECT 1").await.unwrap().valid);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn login_failed_sent_with_http_500_still_refreshes_once() {
    let f = fixture("valid-refresh").await;
    let session = f.mce.session(&account(f.tenant, Some(f.user))).await.unwrap();
    session.find_folder("Data Extensions", None).await.unwrap();
    f.sim.inject(Fault::login_failed("soap:Retrieve:DataFolder", 500, 1));
    assert_eq!(session.find_folder("Data Extensions", None).await.unwrap(), Some(1));
    assert_eq!(
        f.sim.count("token"),
        2,
        "the fault was read as an expired token, not a server error"
    );
    assert_eq!(f.sim.count("soap:Retrieve:DataFolder"), 3);
}

#[tokio::test]
async fn two_replicas_refreshing_the_same_credentials_make_one_token_call() {
    let f = fixture("valid-refresh").await;
    let replicas: Vec<Mce> = (0..3).map(|_| client(&f.sim, &f.db)).collect();
    // A slow token answer keeps every replica waiting on the same refresh.
    f.sim.inject(Fault::slow_answer("token", Duration::from_millis(300), 1));
    let mut sessions = Vec::new();
    for mce in &replicas {
        sessions.push(mce.session(&account(f.tenant, Some(f.user))).await.unwrap());
    }
    let calls = sessions.iter().map(|s| s.find_folder("Data Extensions", None));
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap(), Some(1));
    }
    assert_eq!(f.sim.count("token"), 1, "one grant for all replicas");

    // Expired everywhere at once: still one refresh, and the rotation stays
    // consistent (the stored refresh token is the one MCE accepts).
    f.sim.expire_access_tokens();
    let calls = sessions.iter().map(|s| s.find_folder("Data Extensions", None));
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap(), Some(1));
    }
    assert_eq!(f.sim.count("token"), 2);
    assert_eq!(f.sim.refresh_tokens(), vec![stored_refresh_token(&f).await]);
}

#[tokio::test]
async fn timeouts_and_cut_connections_are_retried_for_reads() {
    let f = fixture("valid-refresh").await;
    let session = f.mce.session(&account(f.tenant, Some(f.user))).await.unwrap();
    session.find_folder("Data Extensions", None).await.unwrap();

    // An answer slower than the 400 ms deadline: timed out, retried.
    f.sim.inject(Fault::slow_answer(
        "soap:Retrieve:DataFolder",
        Duration::from_millis(1200),
        1,
    ));
    assert_eq!(session.find_folder("Data Extensions", None).await.unwrap(), Some(1));
    assert_eq!(f.sim.count("soap:Retrieve:DataFolder"), 3);

    // A connection cut mid-answer, on SOAP and on REST: retried.
    f.sim.inject(Fault::dropped("soap:Retrieve:DataFolder", 1));
    assert_eq!(session.find_folder("Data Extensions", None).await.unwrap(), Some(1));
    assert_eq!(f.sim.count("soap:Retrieve:DataFolder"), 5);
    f.sim.inject(Fault::dropped("rest:validate", 2));
    assert!(session.validate("SELECT 1").await.unwrap().valid);
    assert_eq!(f.sim.count("rest:validate"), 3);

    // Always too slow: reported as unavailable after the retries.
    f.sim.inject(Fault::slow_answer(
        "soap:Retrieve:DataFolder",
        Duration::from_millis(1200),
        10,
    ));
    let err = session.find_folder("Data Extensions", None).await.unwrap_err();
    assert!(
        matches!(&err, MceError::Unavailable { detail, .. } if detail == "request timed out"),
        "{err:?}"
    );
}

#[tokio::test]
async fn perform_is_resent_only_when_mce_surely_did_not_get_it() {
    let f = fixture("valid-refresh").await;
    let session = f.mce.session(&account(f.tenant, Some(f.user))).await.unwrap();
    const PERFORM: &str = "soap:Perform:QueryDefinition";

    // Answered too late: MCE may have started it, so no second Perform.
    f.sim
        .inject(Fault::slow_answer(PERFORM, Duration::from_millis(1200), 1));
    let err = session.perform_start("qd-1").await.unwrap_err();
    assert!(err.is_transient() && !err.surely_not_received(), "{err:?}");
    assert_eq!(f.sim.count(PERFORM), 1);

    // A 5xx or a cut connection: the same.
    f.sim.inject(Fault::new(PERFORM, 503, 1));
    assert!(!session.perform_start("qd-1").await.unwrap_err().surely_not_received());
    f.sim.inject(Fault::dropped(PERFORM, 1));
    assert!(!session.perform_start("qd-1").await.unwrap_err().surely_not_received());
    assert_eq!(f.sim.count(PERFORM), 3);

    // 429 and "Login Failed": refused before acting, so sent again.
    f.sim.inject(Fault::new(PERFORM, 429, 1).retry_after("0"));
    f.sim.inject(Fault::login_failed(PERFORM, 500, 1));
    let _ = session.perform_start("qd-1").await;
    assert_eq!(f.sim.count(PERFORM), 6, "429, then Login Failed, then the answer");

    // Nothing listening: surely not received.
    let nowhere = Mce::new(
        CredentialStore::new(f.db.clone()),
        Cipher::parse(ENCRYPTION_KEY).unwrap(),
        "client".into(),
        SecretString::from("secret"),
        BaseUrls {
            auth: f.sim.url(),
            soap: format!("http://127.0.0.1:{}", tests::free_port()),
            rest: f.sim.url(),
        },
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        },
    );
    let session = nowhere.session(&account(f.tenant, Some(f.user))).await.unwrap();
    let err = session.perform_start("qd-1").await.unwrap_err();
    assert!(
        matches!(err, MceError::Unreachable { .. }) && err.surely_not_received(),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_fresh_token_refused_again_is_transient_not_a_revocation() {
    let f = fixture("valid-refresh").await;
    let session = f.mce.session(&account(f.tenant, Some(f.user))).await.unwrap();
    session.find_folder("Data Extensions", None).await.unwrap();
    // Refused, refreshed, refused again: the grant worked, so the credentials
    // are fine; the call is tried again later instead of failing the run.
    f.sim.inject(Fault::login_failed("soap:Retrieve:DataFolder", 200, 2));
    assert_eq!(session.find_folder("Data Extensions", None).await.unwrap(), Some(1));
    assert_eq!(f.sim.count("token"), 2, "one refresh");
    assert_eq!(f.sim.count("soap:Retrieve:DataFolder"), 4);

    f.sim.inject(Fault::login_failed("soap:Retrieve:DataFolder", 200, 100));
    let err = session.find_folder("Data Extensions", None).await.unwrap_err();
    assert!(
        matches!(err, MceError::TokenRefused { .. }) && err.is_transient() && !err.is_unrecoverable(),
        "{err:?}"
    );
}

/// The account a session acts as: the fixture's business unit.
fn account(tenant: Uuid, user: Option<Uuid>) -> shell_query_core::account::Account {
    shell_query_core::account::Account::new(
        tenant,
        user,
        shell_query_core::account::Mid::parse(MID).expect("a numeric MID"),
    )
}
