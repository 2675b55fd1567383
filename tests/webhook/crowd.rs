//! Four of the fullest reviews the body limit allows, at once: they fill
//! `server.max_bodies_in_flight` (16 MiB) exactly as reserved, a fifth body finds no room
//! and gets the documented 503, and the reserved bytes never pass the limit. The webhook's
//! peak memory (VmHWM) for one such review alone and for four at once is printed
//! (`--nocapture`) for docs/RELIABILITY.md.

use std::time::{Duration, Instant};

use crate::common::backend::Reply;
use crate::huge::{pod, vm_hwm_kib};
use crate::{audit, block_on, metric, response, send_raw, setup, Setup};

const IMAGES: usize = 31_500;
const ROOM: u64 = 16 << 20;
const RESERVED: &str = "zastava_admission_body_bytes_reserved";

/// The fullest review, its images' digests starting at `first` (each review of its own).
fn fullest(uid: &str, first: u64) -> Vec<u8> {
    let containers: Vec<(String, String)> = (0..IMAGES)
        .map(|i| {
            (
                format!("c-{i:04}"),
                format!(
                    "registry.example/shop/app-{i}@sha256:{:064x}",
                    first + i as u64
                ),
            )
        })
        .collect();
    serde_json::to_vec(&pod(uid, &containers)).unwrap()
}

/// What a body of `len` bytes reserves: its length in whole KiB.
fn reservation(len: usize) -> u64 {
    (len as u64).div_ceil(1024) * 1024
}

async fn reserved(s: &Setup) -> f64 {
    metric(&s.webhook.metrics().await, RESERVED)
}

#[test]
fn four_fullest_reviews_fill_the_room_in_flight_and_a_fifth_body_gets_503() {
    let s = setup(&[
        "--set",
        "server.body_timeout=\"5s\"",
        "--set",
        "policy.budget=\"25s\"",
        "--set",
        "server.idle_timeout=\"60s\"",
    ]);
    let idle = vm_hwm_kib(&s);
    let reviews: Vec<Vec<u8>> = (0..5u64)
        .map(|k| fullest(&format!("uid-fullest-{k}"), 0xF0_0000_0000 + k * 0x10_0000))
        .collect();
    let len = reviews[0].len();
    assert!(
        reviews.iter().all(|r| r.len() == len) && len <= 4 << 20 && len > (4 << 20) - (64 << 10),
        "{len}"
    );
    // Four such bodies fit in the room; a fifth does not.
    assert!(4 * reservation(len) <= ROOM && 5 * reservation(len) > ROOM);
    block_on(async {
        // One alone first, for its peak.
        let (status, body) = send_raw(&s, reviews[4].clone()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(audit(&body, "verdict-source"), "backend", "{body}");
        let one = vm_hwm_kib(&s);

        // Four at once, held in flight: every backend call waits 1.5 s before answering.
        s.backend
            .set_default(Some(Reply::Hang(Duration::from_millis(1500))));
        let mut held = Vec::new();
        for body in &reviews[..4] {
            let client = s.client.clone();
            let url = s.webhook.url("/validate");
            let body = body.clone();
            held.push(tokio::spawn(async move {
                let reply = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = reply.status().as_u16();
                (status, reply.bytes().await.unwrap())
            }));
        }
        let four = f64::from(u32::try_from(4 * reservation(len)).unwrap());
        let mut most = 0.0_f64;
        let waited = Instant::now();
        loop {
            let now = reserved(&s).await;
            most = most.max(now);
            if now == four {
                break;
            }
            assert!(
                waited.elapsed() < Duration::from_secs(60),
                "never four in flight: {now}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // A fifth body (160 KiB, more than the 96 KiB left) waits its body timeout, then
        // gets 503; the reserved bytes are sampled meanwhile.
        let mut fifth = serde_json::to_vec(&pod("uid-fifth", &[])).unwrap();
        fifth.resize(160 << 10, b' ');
        let refused = {
            let client = s.client.clone();
            let url = s.webhook.url("/validate");
            tokio::spawn(async move {
                let started = Instant::now();
                let reply = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(fifth)
                    .send()
                    .await
                    .unwrap();
                let status = reply.status().as_u16();
                (status, reply.text().await.unwrap(), started.elapsed())
            })
        };
        while !refused.is_finished() {
            most = most.max(reserved(&s).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, text, after) = refused.await.unwrap();
        assert_eq!(status, 503, "{text}");
        assert_eq!(
            text,
            "the webhook is busy: 16777216 bytes of request bodies are being read or judged (server.max_bodies_in_flight), and none freed within 5s (server.body_timeout); retry\n"
        );
        assert!(after >= Duration::from_secs(5), "refused after {after:?}");
        // The four were still in flight when it was refused.
        assert!(
            held.iter().all(|h| !h.is_finished()),
            "a review ended early"
        );

        // The rest of the backend's answers come at once; the four are decided by them.
        s.backend.set_default(None);
        for (k, handle) in held.into_iter().enumerate() {
            let (status, reply) = handle.await.unwrap();
            assert_eq!(status, 200);
            let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
            assert_eq!(response(&reply)["uid"], format!("uid-fullest-{k}"));
            assert_eq!(
                response(&reply)["allowed"],
                true,
                "{}",
                response(&reply)["status"]
            );
            assert_eq!(audit(&reply, "verdict-source"), "backend");
        }
        let metrics = s.webhook.metrics().await;
        assert_eq!(metric(&metrics, RESERVED), 0.0, "{metrics}");
        assert_eq!(
            metric(&metrics, "zastava_admission_overload_refusals_total"),
            1.0,
            "{metrics}"
        );
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_decisions_total{decision=\"allow\"}"
            ),
            5.0,
            "{metrics}"
        );
        // Never more than the four reservations, which are within the limit.
        assert_eq!(most, four);
        assert!(most <= ROOM as f64);
        let peak = vm_hwm_kib(&s);
        eprintln!(
            "four reviews of {IMAGES} images, {len} bytes each, in flight at once ({} bytes reserved of {ROOM}): webhook VmHWM {idle} kB idle, {one} kB after one alone, {peak} kB after four at once",
            four as u64
        );
    });
}
