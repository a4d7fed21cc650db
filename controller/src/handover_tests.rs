//! The replace handover without a network: the source captures, then only
//! its associated destination gets the job, with a new fence and a restore
//! capability; the source's old fence and any other machine are refused.

use crate::controller::{Controller, ControllerSettings};
use crate::lifecycle::Report;
use crate::model::{CaptureSummary, Inventory, Phase, Placement, Profile, RestoreSummary, now_ms};
use crate::store::EmbeddedStore;
use fleetmig_auth::{Requirement, TokenVerifier};
use fleetmig_proto::v1::CapabilityRole;
use std::sync::Arc;

fn inventory(hostname: &str) -> Inventory {
    Inventory {
        hostname: hostname.into(),
        profiles: vec![Profile {
            name: "alice".into(),
            bytes: 5 << 20,
            files: 10,
            last_used_unix: 0,
        }],
        ..Inventory::default()
    }
}

#[tokio::test]
async fn only_the_associated_destination_takes_over_a_sealed_capture() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let controller = Controller::open(store.clone(), ControllerSettings::default())
        .await
        .unwrap();
    let source = controller.enroll("", inventory("XP-1")).await.unwrap();
    let destination = controller.enroll("", inventory("W7-1")).await.unwrap();
    let other = controller.enroll("", inventory("W7-X")).await.unwrap();
    let plan = r#"version = 1
name = "p"
[[waves]]
name = "swap"
scenario = "replace"
pairs = [{ source = "XP-1", destination = "W7-1" }]
"#;
    controller.apply_plan(plan, "p.toml", "test").await.unwrap();
    controller.start_wave("swap", "test").await.unwrap();
    let job_id = crate::model::Job::id_for("swap", &source);

    // Placement needs a live node; stand in for the scheduler's reservation.
    controller
        .update_job(&job_id, |job| {
            let mut next = job.clone();
            next.phase = Phase::Assigned;
            next.placement = Some(Placement {
                node_id: "node-a".into(),
                endpoint: "http://127.0.0.1:1".into(),
                reserved_bytes: 5 << 20,
                reserved_ms: now_ms(),
                ..Placement::default()
            });
            Ok(Some((next, vec![])))
        })
        .await
        .unwrap();

    let verifier =
        TokenVerifier::from_public_key(&controller.settings().secrets.signer().public_key())
            .unwrap();
    let need = |role| Requirement {
        role,
        node_id: "node-a",
        now_unix_ms: now_ms(),
    };

    // The source gets the job with a capture capability only.
    let job = controller
        .check_in(&source, "s-src", "")
        .await
        .unwrap()
        .assignment
        .expect("the source is assigned its capture");
    let transfer = controller.replace_transfer(&job, &source).unwrap();
    let claims = verifier
        .verify(transfer.capability.as_ref(), need(CapabilityRole::Capture))
        .unwrap();
    assert_eq!(
        (claims.machine_id.as_str(), claims.migration_id.as_str()),
        (source.as_str(), job_id.as_str())
    );
    assert!(
        verifier
            .verify(transfer.capability.as_ref(), need(CapabilityRole::Restore))
            .is_err()
    );
    assert_eq!(transfer.fleet_key.len(), 32);
    assert_eq!(transfer.migration_key.len(), 32);
    // Escrowed: at rest the migration key is sealed under the master key.
    let at_rest = crate::store::Store::get(
        store.as_ref(),
        &crate::keys::key(crate::keys::MIGRATION_KEYS, &job_id),
    )
    .await
    .unwrap()
    .expect("the migration key is stored");
    let text = String::from_utf8(at_rest.value).unwrap();
    assert!(text.contains("sealed:v1:"), "{text}");
    assert!(
        !text.contains(&hex::encode(&transfer.migration_key)),
        "{text}"
    );

    // Before the capture is sealed, the destination has nothing to do.
    assert!(
        controller
            .check_in(&destination, "s-dst", "")
            .await
            .unwrap()
            .assignment
            .is_none()
    );

    let source_fence = job.fence;
    controller
        .report(
            &source,
            &job_id,
            source_fence,
            Report::Entered(Phase::Capturing),
        )
        .await
        .unwrap();
    let summary = CaptureSummary {
        files: 10,
        manifest_digest: "digest".into(),
        ..CaptureSummary::default()
    };
    controller
        .report(&source, &job_id, source_fence, Report::Captured(summary))
        .await
        .unwrap();

    // Key escrow: an admin can recover the committed capture by hand.
    let recovery = controller.recovery_information(&job_id).unwrap();
    assert_eq!(
        recovery.migration_key_hex,
        hex::encode(&transfer.migration_key)
    );
    assert_eq!(recovery.fleet_key_hex, hex::encode(&transfer.fleet_key));
    assert_eq!(recovery.manifest_digest, "digest");
    assert_eq!(
        recovery.node_endpoints.len(),
        recovery.restore_tokens.len(),
        "{recovery:?}"
    );
    assert!(!recovery.node_endpoints.is_empty(), "{recovery:?}");
    let restore = verifier
        .verify(
            recovery.restore_tokens.first(),
            need(CapabilityRole::Restore),
        )
        .unwrap();
    assert_eq!(restore.migration_id, job_id);
    assert!(
        controller.recovery_information("no-such-job").is_err(),
        "unknown migrations are refused"
    );

    // The source is done with it; a machine outside the association gets nothing.
    assert!(
        controller
            .check_in(&source, "s-src", &job_id)
            .await
            .unwrap()
            .assignment
            .is_none()
    );
    assert!(
        controller
            .check_in(&other, "s-other", "")
            .await
            .unwrap()
            .assignment
            .is_none()
    );
    assert!(
        controller
            .report(
                &other,
                &job_id,
                source_fence,
                Report::Entered(Phase::Restoring)
            )
            .await
            .is_err()
    );

    // The destination takes it over with a new fence and a restore capability.
    let taken = controller
        .check_in(&destination, "s-dst", "")
        .await
        .unwrap()
        .assignment
        .expect("the destination takes the sealed capture");
    assert_ne!(taken.fence, source_fence);
    assert_eq!(taken.destination.as_ref().unwrap().machine_id, destination);
    let transfer = controller.replace_transfer(&taken, &destination).unwrap();
    let claims = verifier
        .verify(transfer.capability.as_ref(), need(CapabilityRole::Restore))
        .unwrap();
    assert_eq!(claims.machine_id, destination);

    // The source's old fence can no longer move the job.
    assert!(
        controller
            .report(
                &source,
                &job_id,
                source_fence,
                Report::Entered(Phase::Restoring)
            )
            .await
            .is_err()
    );
    for phase in [Phase::Restoring, Phase::Verifying] {
        controller
            .report(&destination, &job_id, taken.fence, Report::Entered(phase))
            .await
            .unwrap();
    }
    let done = controller
        .report(
            &destination,
            &job_id,
            taken.fence,
            Report::Done(RestoreSummary {
                files: 10,
                ..RestoreSummary::default()
            }),
        )
        .await
        .unwrap();
    assert_eq!(done, Phase::Done);
}
