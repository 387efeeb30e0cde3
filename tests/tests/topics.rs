//! `herald topics apply` creates topics once, changes nothing the second time, and reports a
//! topic whose partition count differs from configuration.

use std::process::Command;

use herald_tests::kafka::{bootstrap_servers, unique_name};
use herald_tests::process::workspace_binary;

fn apply(config: &std::path::Path) -> anyhow::Result<(bool, String)> {
    let output = Command::new(workspace_binary("herald")?)
        .args(["topics", "apply", "--config"])
        .arg(config)
        .output()?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

#[test]
fn topics_apply_is_idempotent_and_reports_differences() -> anyhow::Result<()> {
    let prefix = unique_name("topics-");
    let folder = std::env::temp_dir().join("herald-tests").join(&prefix);
    std::fs::create_dir_all(&folder)?;
    let write_config = |partitions: u32| -> anyhow::Result<std::path::PathBuf> {
        let path = folder.join(format!("herald-{partitions}.yaml"));
        std::fs::write(
            &path,
            format!(
                "kafka:\n  bootstrap_servers: \"{}\"\ntopics:\n  deliveries: {prefix}.deliveries\n  deliveries_partitions: {partitions}\n  rejected: {prefix}.rejected\n  dlq: {prefix}.dlq\n  attempts: {prefix}.attempts\n  subscriptions: {prefix}.subscriptions\n  replication_factor: 1\n  domain:\n    - name: {prefix}.banking\n      partitions: 2\n      config:\n        max.message.bytes: \"2097152\"\nretry:\n  tiers: [1s, 5s]\n  topic_prefix: {prefix}.retry.\n",
                bootstrap_servers()
            ),
        )?;
        Ok(path)
    };

    let config = write_config(4)?;
    let (success, first) = apply(&config)?;
    assert!(success, "first apply failed:\n{first}");
    assert_eq!(first.matches("created").count(), 8, "{first}");

    let (success, second) = apply(&config)?;
    assert!(success, "second apply failed:\n{second}");
    assert_eq!(second.matches("unchanged").count(), 8, "{second}");

    let (success, third) = apply(&write_config(6)?)?;
    assert!(!success, "a differing partition count must fail:\n{third}");
    assert!(
        third.contains(&format!(
            "differs   {prefix}.deliveries: has 4 partitions, configuration says 6"
        )),
        "{third}"
    );

    let _ = std::fs::remove_dir_all(&folder);
    Ok(())
}
