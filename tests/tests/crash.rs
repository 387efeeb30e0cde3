//! At-least-once under crashes: a router or sender killed with SIGKILL in the middle of a run and
//! started again loses no delivery. Duplicates are allowed; receivers drop them by webhook-id.

use std::time::Duration;

use herald_tests::kafka::publish;
use herald_tests::samples::banking_events;
use herald_tests::scenario::{Scenario, remove_folder};
use herald_tests::wait;

const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(240);
const SUBSCRIPTIONS: &[(&str, &[&str])] = &[("ledger", &["payment.*"]), ("audit", &["*"])];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_killed_mid_run_loses_nothing() -> anyhow::Result<()> {
    let scenario = Scenario::new("router-kill", SUBSCRIPTIONS).await?;
    let events = banking_events()?;
    let (wanted, _) = scenario.expected(&events);
    // One event at a time, so the run lasts long enough to be interrupted.
    let slow_router = [("HERALD__ROUTER__MAX_IN_FLIGHT_EVENTS", "1")];
    let mut router = scenario.start_with("router", &slow_router)?;
    let mut sender = scenario.start("sender")?;

    publish(&scenario.topics.domain, &events).await?;
    let audit = scenario.endpoint("audit");
    wait::until("a tenth of the events arrived", ARRIVAL_TIMEOUT, || {
        audit.verified() >= 200
    })
    .await?;
    router.kill()?;
    assert!(
        audit.verified() < events.len() as u64,
        "the run finished before the router was killed"
    );

    let mut router = scenario.start("router")?;
    let arrived = wait::until("every expected delivery arrived", ARRIVAL_TIMEOUT, || {
        scenario.all_arrived(&wanted)
    })
    .await;
    router.check_running()?;
    sender.check_running()?;
    arrived?;
    remove_folder(&scenario.folder);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_killed_mid_run_loses_nothing() -> anyhow::Result<()> {
    let scenario = Scenario::new("sender-kill", SUBSCRIPTIONS).await?;
    let events = banking_events()?;
    let (wanted, _) = scenario.expected(&events);
    for endpoint in &scenario.endpoints {
        endpoint.receiver.delay_responses(Duration::from_millis(2));
    }
    let mut router = scenario.start("router")?;
    let slow_sender = [("HERALD__SENDER__MAX_IN_FLIGHT", "2")];
    let mut sender = scenario.start_with("sender", &slow_sender)?;

    publish(&scenario.topics.domain, &events).await?;
    let audit = scenario.endpoint("audit");
    wait::until("a tenth of the events arrived", ARRIVAL_TIMEOUT, || {
        audit.verified() >= 200
    })
    .await?;
    sender.kill()?;
    assert!(
        audit.verified() < events.len() as u64,
        "the run finished before the sender was killed"
    );

    for endpoint in &scenario.endpoints {
        endpoint.receiver.delay_responses(Duration::ZERO);
    }
    let mut sender = scenario.start("sender")?;
    let arrived = wait::until("every expected delivery arrived", ARRIVAL_TIMEOUT, || {
        scenario.all_arrived(&wanted)
    })
    .await;
    router.check_running()?;
    sender.check_running()?;
    arrived?;
    remove_folder(&scenario.folder);
    Ok(())
}
