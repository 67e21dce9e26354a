use super::*;

fn idem(key: &str, hash: &str) -> Option<Idempotency> {
    Some(Idempotency {
        token: "dash".into(),
        key: key.into(),
        request_hash: hash.into(),
    })
}

fn submit(s: &Store, customer: &str, i: Option<Idempotency>) -> Result<Submitted, SubmitError> {
    s.with(|c| insert(c, "deploy", customer, Some("dash".into()), i, None))
        .unwrap()
}

#[test]
fn one_running_job_per_customer_and_keys_replay_or_refuse() {
    let s = Store::memory().unwrap();
    let Ok(Submitted::Started(a)) = submit(&s, "acme", idem("k1", "h1")) else {
        panic!("first submission starts")
    };
    assert!(matches!(submit(&s, "acme", None), Err(SubmitError::Busy(id)) if id == a));
    assert_eq!(
        submit(&s, "acme", idem("k1", "h1")).unwrap(),
        Submitted::Replayed(a)
    );
    assert!(
        matches!(submit(&s, "other", idem("k1", "h2")), Err(SubmitError::KeyReused(id)) if id == a)
    );
    let Ok(Submitted::Started(b)) = submit(&s, "other", idem("k2", "h2")) else {
        panic!("another customer runs beside it")
    };
    assert_ne!(a, b);
    // Even a raw insert cannot make a second running job for a customer.
    let dup = s.with(|c| {
        c.execute(
            "INSERT INTO jobs (kind, customer, state, created_at) VALUES ('x', 'acme', 'running', 1)",
            [],
        )
    });
    assert!(dup.is_err(), "the unique index holds");
}

#[tokio::test]
async fn lines_then_finish_are_written_in_order_and_the_input_dropped() {
    let s = Store::memory().unwrap();
    let Ok(Submitted::Started(id)) = s
        .with(|c| {
            insert(
                c,
                "delete",
                "acme",
                None,
                None,
                Some("{\"plain\":1}".into()),
            )
        })
        .unwrap()
    else {
        panic!()
    };
    let table = JobTable::new(s.clone());
    let p = table.progress(id);
    for i in 0..1000 {
        p.line(format!("line {i}"));
    }
    table.finish(id, Ok(serde_json::json!({"ok": true}))).await;
    let job = table.get(id, 0).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.lines.len(), 1000);
    assert!(job
        .lines
        .iter()
        .enumerate()
        .all(|(i, l)| l.seq == i as i64 && l.text == format!("line {i}")));
    assert_eq!(table.get(id, 998).await.unwrap().unwrap().lines.len(), 2);
    let input: Option<String> = s
        .with(|c| c.query_row("SELECT input FROM jobs WHERE id = ?1", [id], |r| r.get(0)))
        .unwrap();
    assert_eq!(input, None, "a finished job keeps no input");
    // Finishing twice changes nothing.
    table.finish(id, Err("late".into())).await;
    assert_eq!(
        table.get(id, 0).await.unwrap().unwrap().state,
        JobState::Succeeded
    );
}

#[tokio::test]
async fn finished_jobs_past_retention_are_evicted_with_their_lines() {
    let s = Store::memory().unwrap();
    let table = JobTable::new(s.clone());
    let mut ids = Vec::new();
    for name in ["a1", "b2", "c3"] {
        let Ok(Submitted::Started(id)) = submit(&s, name, None) else {
            panic!()
        };
        table.progress(id).line("x");
        ids.push(id);
    }
    table.finish(ids[0], Err("no".into())).await;
    table.finish(ids[1], Ok(serde_json::Value::Null)).await;
    s.with(|c| c.execute("UPDATE jobs SET finished_at = 10 WHERE id = ?1", [ids[0]]))
        .unwrap();
    let evicted = s.with(|c| evict(c, now() - 3600)).unwrap();
    assert_eq!(evicted, 1);
    assert!(table.get(ids[0], 0).await.unwrap().is_none());
    let orphans: i64 = s
        .with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM job_lines WHERE job_id = ?1",
                [ids[0]],
                |r| r.get(0),
            )
        })
        .unwrap();
    assert_eq!(orphans, 0);
    let running = table
        .list(JobFilter {
            state: Some(JobState::Running),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(running.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[2]]);
    let all = table.list(JobFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[2], ids[1]],
        "newest first"
    );
}
