//! `kill -9` of a process writing hostd state, at many different instants, never leaves a
//! torn or unreadable record: the store always holds one complete version, and it never
//! goes backwards. Runs itself as the writer child (`--writer DIR`), hence `harness = false`.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

use std::process::{Command, Stdio};
use std::time::Duration;

use hostd::state::Store;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Record {
    seq: u64,
    /// Large enough that a write spans many pages and a kill can land mid-write.
    payload: Vec<u64>,
    checksum: u64,
}

fn writer(dir: &str) -> ! {
    let store = Store::open(dir).unwrap();
    let mut seq = store.get::<Record>("acme").unwrap().map_or(0, |r| r.seq);
    loop {
        seq += 1;
        let payload: Vec<u64> = (0..20_000).map(|i| i ^ seq).collect();
        let checksum = payload
            .iter()
            .fold(seq, |a, b| a.wrapping_mul(31).wrapping_add(*b));
        store
            .put(
                "acme",
                &Record {
                    seq,
                    payload,
                    checksum,
                },
            )
            .unwrap();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--writer") {
        writer(&args[i + 1]);
    }
    let dir = std::env::temp_dir().join(format!("m8trx-state-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let exe = std::env::current_exe().unwrap();
    let mut last = 0u64;
    let mut advanced = 0;
    let mut mid_write = 0;
    for round in 0..40u64 {
        let mut child = Command::new(&exe)
            .args(["--writer", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // Vary the instant of the kill across rounds (20..=137 ms after start).
        std::thread::sleep(Duration::from_millis(20 + 3 * round));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        if dir.join("acme.json.tmp").exists() {
            mid_write += 1; // the kill landed while a new version was being written
        }
        let store = Store::open(&dir).expect("store opens after kill -9");
        match store
            .get::<Record>("acme")
            .expect("record readable after kill -9")
        {
            None => assert_eq!(last, 0, "round {round}: record vanished after seq {last}"),
            Some(r) => {
                let sum = r
                    .payload
                    .iter()
                    .fold(r.seq, |a, b| a.wrapping_mul(31).wrapping_add(*b));
                assert_eq!(sum, r.checksum, "round {round}: record {} is torn", r.seq);
                assert!(
                    r.seq >= last,
                    "round {round}: state went backwards {last} -> {}",
                    r.seq
                );
                if r.seq > last {
                    advanced += 1;
                }
                last = r.seq;
            }
        }
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            leftovers.len() <= 1 && leftovers.iter().all(|n| n.to_string_lossy() == "acme.json"),
            "round {round}: only the record may remain after open: {leftovers:?}"
        );
    }
    assert!(advanced >= 10, "the writer made progress in only {advanced} of 40 rounds; the test did not exercise crashes");
    assert!(
        mid_write >= 1,
        "no kill landed mid-write; the test did not exercise a torn write"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    println!("state_crash: 40 kill -9 rounds, {mid_write} mid-write, {advanced} with progress, {last} writes, no torn or lost record");
    println!("1 passed, 0 failed");
}
