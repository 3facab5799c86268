//! Delivery attempts: what each try records, paging by offset and by cursor, and the
//! byte budget of a page.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_record_what_each_try_sent_and_got() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let project = h.project();
        let receiver = Receiver::start().await;
        receiver.script([
            Answer::status(500).body("try later"),
            Answer::status(200).body("thanks"),
        ]);
        let url = receiver.url("/ok");
        h.register("order.paid", &url).await;
        let published = h.publish("order.paid", json!({"n": 1})).await;
        assert_eq!(receiver.wait_for(2, WAIT).await, 2);
        let attempts = h.attempts_until("/webhooks/order.paid/attempts", 2).await;
        assert_eq!(attempts.len(), 2);
        let received = receiver.received();
        // Newest first: the successful retry, then the failed first try.
        for (attempt, number, status, code, answer, sent) in [
            (&attempts[0], 2, "success", 200, "thanks", &received[1]),
            (&attempts[1], 1, "failed", 500, "try later", &received[0]),
        ] {
            assert_eq!(attempt["attempt_number"], json!(number), "{attempt}");
            assert_eq!(attempt["status"], json!(status), "{attempt}");
            assert_eq!(attempt["response_code"], json!(code), "{attempt}");
            assert_eq!(attempt["response_body"], json!(answer), "{attempt}");
            assert_eq!(attempt["webhook_url"], json!(url));
            assert_eq!(attempt["event_type"], json!("order.paid"));
            assert_eq!(attempt["project_id"], json!(project.to_string()));
            assert!(attempt["duration_ms"].as_i64().is_some_and(|d| d >= 0));
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(attempt["request_body"].as_str().expect("request_body"))
                .expect("base64");
            assert_eq!(bytes, sent.body, "request_body is not the exact bytes sent");
            assert_eq!(
                sent_body(attempt)["event_id"],
                json!(published.event_id.to_string())
            );
        }

        // No HTTP response at all: code 0 and a reason.
        let closed = format!("http://127.0.0.1:{}/gone", support::free_port());
        h.register("nobody.home", &closed).await;
        assert_eq!(
            h.publish("nobody.home", json!({})).await.deliveries_started,
            1
        );
        let refused = h.attempts_until("/webhooks/nobody.home/attempts", 1).await;
        let first = refused.last().expect("an attempt");
        assert_eq!(first["attempt_number"], json!(1));
        assert_eq!(first["response_code"], json!(0), "{first}");
        assert_eq!(first["status"], json!("failed"));
        assert!(
            first["error_message"]
                .as_str()
                .is_some_and(|m| !m.trim().is_empty()),
            "a failure without a response must say why: {first}"
        );
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_page_by_offset_and_by_cursor() {
    /// 13 events of 4 attempts each: more than the default page of 50.
    const EVENTS: usize = 13;
    const ATTEMPTS_PER_EVENT: usize = 4;
    const TOTAL: usize = EVENTS * ATTEMPTS_PER_EVENT;

    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let receiver = Receiver::start().await;
        receiver.set_default(Answer::status(500).body("nope"));
        let project = h.project();
        let path = format!("/projects/{project}/webhooks/order.paid/attempts");
        h.register("order.paid", &receiver.url("/failing")).await;
        let mut events = BTreeSet::new();
        for n in 0..EVENTS {
            events.insert(
                h.publish("order.paid", json!({"n": n}))
                    .await
                    .event_id
                    .to_string(),
            );
        }
        assert_eq!(
            receiver.wait_for(TOTAL, WAIT).await,
            TOTAL,
            "[{:?}] deliveries with retries",
            h.backend
        );
        let all = h.attempts_until(&path, TOTAL).await;
        // The schedule allows exactly four attempts per event; nothing more arrives.
        tokio::time::sleep(QUIET).await;
        assert_eq!(
            receiver.count(),
            TOTAL,
            "more attempts than the schedule allows"
        );
        let all = {
            let again = h.attempts_until(&path, TOTAL).await;
            assert_eq!(ids(&again), ids(&all), "the history changed while idle");
            again
        };
        assert_eq!(all.len(), TOTAL);

        // Newest first, each event numbered 1..=4, all failed with the receiver's 500.
        for pair in all.windows(2) {
            assert!(
                time(&pair[0]["created_at"]) >= time(&pair[1]["created_at"]),
                "not newest first: {} then {}",
                pair[0]["created_at"],
                pair[1]["created_at"]
            );
        }
        let mut numbers: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for attempt in &all {
            assert_eq!(attempt["status"], json!("failed"));
            assert_eq!(attempt["response_code"], json!(500));
            assert_eq!(attempt["project_id"], json!(project.to_string()));
            assert_eq!(attempt["event_type"], json!("order.paid"));
            let event = sent_body(attempt)["event_id"]
                .as_str()
                .expect("event_id")
                .to_owned();
            numbers
                .entry(event)
                .or_default()
                .push(attempt["attempt_number"].as_i64().expect("attempt_number"));
        }
        assert_eq!(numbers.keys().cloned().collect::<BTreeSet<_>>(), events);
        for (event, mut got) in numbers {
            got.sort_unstable();
            assert_eq!(got, [1, 2, 3, 4], "attempt numbers of event {event}");
        }
        let all_ids = ids(&all);

        // Default limit is 50.
        let first = h.call(Method::GET, &path, None).await;
        let first_page = first.expect(200)["attempts"].as_array().expect("array");
        assert_eq!(ids(first_page), all_ids[..50], "default page");
        let typed = h
            .client()
            .list_delivery_attempts()
            .project_id(project)
            .event_type("order.paid")
            .send()
            .await
            .expect("attempts")
            .into_inner();
        assert_eq!(typed.attempts.map(|a| a.len()), Some(50));

        // limit/offset windows tile the whole list.
        let mut tiled = Vec::new();
        for offset in (0..TOTAL + 10).step_by(10) {
            let window = h
                .call(
                    Method::GET,
                    &format!("{path}?limit=10&offset={offset}"),
                    None,
                )
                .await;
            let window = window.expect(200)["attempts"]
                .as_array()
                .expect("array")
                .clone();
            assert_eq!(
                window.len(),
                TOTAL.saturating_sub(offset).min(10),
                "offset {offset}"
            );
            tiled.extend(ids(&window));
        }
        assert_eq!(tiled, all_ids);
        let past = h
            .call(Method::GET, &format!("{path}?offset={}", TOTAL + 100), None)
            .await;
        assert_eq!(past.expect(200)["attempts"], json!([]), "{}", past.text);

        // Cursor walks: every attempt exactly once, in order; `has_more` false and no
        // `next_cursor` on the last page. 13 divides 52, the edge where a last full page
        // must not claim more.
        for page_size in [7usize, 13, 500] {
            let mut walked = Vec::new();
            let mut cursor: Option<String> = None;
            for page in 0.. {
                assert!(page <= TOTAL, "cursor walk does not end");
                let query = match &cursor {
                    Some(c) => format!("?page_size={page_size}&cursor={c}"),
                    None => format!("?page_size={page_size}"),
                };
                let reply = h.call(Method::GET, &format!("{path}{query}"), None).await;
                let body = reply.expect(200);
                let attempts = body["attempts"].as_array().expect("array");
                walked.extend(ids(attempts));
                if body["has_more"] == json!(true) {
                    assert_eq!(attempts.len(), page_size, "a page before the last is full");
                    cursor = Some(
                        body["next_cursor"]
                            .as_str()
                            .unwrap_or_else(|| {
                                panic!("has_more without next_cursor: {}", reply.text)
                            })
                            .to_owned(),
                    );
                } else {
                    assert_eq!(body["has_more"], json!(false), "{}", reply.text);
                    assert!(body.get("next_cursor").is_none(), "{}", reply.text);
                    break;
                }
            }
            assert_eq!(walked, all_ids, "cursor walk with page_size {page_size}");
        }

        // The same walk with the generated client on the tenant route.
        let client = h.client();
        let mut walked = Vec::new();
        let mut cursor: Option<String> = None;
        for page in 0.. {
            assert!(page <= TOTAL, "cursor walk does not end");
            let mut request = client
                .list_delivery_attempts_for_tenant()
                .event_type("order.paid")
                .page_size(NonZeroU64::new(11).unwrap());
            if let Some(c) = &cursor {
                request = request.cursor(c.as_str());
            }
            let body = request.send().await.expect("page").into_inner();
            walked.extend(
                body.attempts
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| a.attempt_id.to_string()),
            );
            match (body.has_more, body.next_cursor) {
                (Some(true), Some(next)) => cursor = Some(next),
                (Some(false), None) => break,
                other => panic!("inconsistent paging fields {other:?}"),
            }
        }
        assert_eq!(walked, all_ids);

        // An offset page's cursor continues right after it; without page_size the
        // cursor pages by limit.
        let window = h
            .call(Method::GET, &format!("{path}?limit=10&offset=20"), None)
            .await;
        let next = window.expect(200)["next_cursor"]
            .as_str()
            .expect("an offset page with more after it has a cursor")
            .to_owned();
        let after = h
            .call(Method::GET, &format!("{path}?limit=10&cursor={next}"), None)
            .await;
        let after = after.expect(200)["attempts"]
            .as_array()
            .expect("array")
            .clone();
        assert_eq!(ids(&after), all_ids[30..40]);

        // page_size wins over limit.
        let both = h
            .call(Method::GET, &format!("{path}?limit=2&page_size=5"), None)
            .await;
        assert_eq!(
            both.expect(200)["attempts"].as_array().map(Vec::len),
            Some(5)
        );

        // A cursor cannot be combined with an offset, and must be one the server made.
        let first = h
            .call(Method::GET, &format!("{path}?page_size=5"), None)
            .await;
        let cursor = first.expect(200)["next_cursor"]
            .as_str()
            .expect("next_cursor")
            .to_owned();
        h.call(
            Method::GET,
            &format!("{path}?cursor={cursor}&offset=3"),
            None,
        )
        .await
        .expect_invalid("query.cursor");
        h.call(
            Method::GET,
            &format!("{path}?cursor={cursor}&offset=0"),
            None,
        )
        .await
        .expect(200);
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("12.not-a-uuid");
        for garbage in ["not-a-cursor", "%21%21%21", forged.as_str()] {
            h.call(Method::GET, &format!("{path}?cursor={garbage}"), None)
                .await
                .expect_invalid("query.cursor");
        }
        let (status, _) = problem_of(
            client
                .list_delivery_attempts()
                .project_id(project)
                .event_type("order.paid")
                .cursor("garbage")
                .send()
                .await,
        );
        assert_eq!(status, 422);

        // Parameter bounds.
        for (query, location) in [
            ("limit=0", "query.limit"),
            ("limit=501", "query.limit"),
            ("offset=-1", "query.offset"),
            ("page_size=0", "query.page_size"),
            ("page_size=501", "query.page_size"),
        ] {
            h.call(Method::GET, &format!("{path}?{query}"), None)
                .await
                .expect_invalid(location);
        }
        let max = h
            .call(Method::GET, &format!("{path}?limit=500"), None)
            .await;
        assert_eq!(
            max.expect(200)["attempts"].as_array().map(Vec::len),
            Some(TOTAL)
        );

        // An event type without attempts lists an empty array.
        let none = h
            .call(Method::GET, "/webhooks/never.registered/attempts", None)
            .await;
        assert_eq!(none.expect(200)["attempts"], json!([]));
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_pages_stop_at_the_byte_budget() {
    const EVENTS: usize = 12;
    const BUDGET: usize = 1_000_000;
    /// What a page may take besides its attempts, as the server reckons it.
    const ENVELOPE: usize = 256;
    for db in support::backends().await {
        let mut config = support::test_config(&db);
        config.max_attempts_page_bytes = BUDGET;
        let h = Harness::start_with(&db, config).await;
        let receiver = Receiver::start().await;
        // 32 KiB of quotes and backslashes, stored as they are and escaped to twice
        // that in a listing: the page must be measured as JSON, not as stored.
        receiver.set_default(Answer::status(200).body("\"\\".repeat(16 * 1024)));
        h.register("big.event", &receiver.url("/big")).await;
        for n in 0..EVENTS {
            // 40 to 160 KB of request body, so pages end at different places.
            let filler = "x".repeat(40_000 * (1 + n % 4));
            h.publish("big.event", json!({"n": n, "filler": filler}))
                .await;
        }
        assert_eq!(receiver.wait_for(EVENTS, WAIT).await, EVENTS);

        // The truth, from the store without a budget, once every attempt is recorded.
        let project = h.project();
        let deadline = Instant::now() + WAIT;
        let expected = loop {
            let listed = h
                .server
                .store
                .list_attempts(
                    project,
                    "big.event",
                    AttemptPage::Offset {
                        limit: 500,
                        offset: 0,
                    },
                    usize::MAX,
                )
                .await
                .expect("store listing");
            if listed.attempts.len() >= EVENTS || Instant::now() >= deadline {
                assert_eq!(listed.attempts.len(), EVENTS, "[{:?}]", h.backend);
                break listed
                    .attempts
                    .iter()
                    .map(|a| a.id.to_string())
                    .collect::<Vec<_>>();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        let path = format!("/projects/{project}/webhooks/big.event/attempts");
        let json_len = |v: &Value| serde_json::to_string(v).expect("serialize").len();
        // One page: within the budget, and cut only where the next attempt would not
        // have fitted.
        let page = |query: String| {
            let (h, path) = (&h, &path);
            async move {
                let reply = h.call(Method::GET, &format!("{path}?{query}"), None).await;
                reply.expect(200);
                assert!(
                    reply.text.len() <= BUDGET,
                    "[{:?}] {query}: an answer of {} bytes",
                    h.backend,
                    reply.text.len()
                );
                let attempts = reply.json["attempts"].as_array().expect("array").clone();
                assert!(!attempts.is_empty(), "{query}: an empty page");
                let next_cursor = match reply.json["has_more"].as_bool() {
                    Some(true) => Some(
                        reply.json["next_cursor"]
                            .as_str()
                            .expect("has_more comes with next_cursor")
                            .to_owned(),
                    ),
                    Some(false) => {
                        assert!(reply.json.get("next_cursor").is_none(), "{}", reply.text);
                        None
                    }
                    None => panic!("no has_more: {}", reply.text),
                };
                (reply.text.len(), attempts, next_cursor)
            }
        };

        let (first_len, first, cursor) = page("limit=500".to_owned()).await;
        assert!(
            first.len() < EVENTS,
            "[{:?}] {} attempts in {first_len} bytes",
            h.backend,
            first.len()
        );
        let mut cursor = cursor.expect("a page cut by its budget says more follow");
        assert_eq!(ids(&first), expected[..first.len()]);

        // Following the cursor lists every attempt exactly once, in order, each page
        // filled as far as the budget allows.
        let mut walked = ids(&first);
        let mut previous_len = first_len;
        let mut pages = 1;
        loop {
            assert!(pages <= EVENTS, "the cursor walk does not end");
            let (len, attempts, next) = page(format!("limit=500&cursor={cursor}")).await;
            assert!(
                previous_len + json_len(&attempts[0]) + 1 > BUDGET - ENVELOPE,
                "[{:?}] a page of {previous_len} bytes ended with room for {} more",
                h.backend,
                json_len(&attempts[0])
            );
            walked.extend(ids(&attempts));
            pages += 1;
            match next {
                Some(next) => {
                    cursor = next;
                    previous_len = len;
                }
                None => break,
            }
        }
        assert_eq!(walked, expected, "[{:?}] the cursor walk", h.backend);
        assert!(pages >= 3, "[{:?}] {pages} pages", h.backend);

        // An offset page cut by the budget can be followed by cursor.
        let (_, from_one, cursor) = page("limit=500&offset=1".to_owned()).await;
        let mut walked = ids(&from_one);
        let mut cursor = cursor.expect("the offset page is cut by its budget");
        for _ in 0..EVENTS {
            let (_, attempts, next) = page(format!("page_size=500&cursor={cursor}")).await;
            walked.extend(ids(&attempts));
            match next {
                Some(next) => cursor = next,
                None => break,
            }
        }
        assert_eq!(walked, expected[1..], "[{:?}] from offset 1", h.backend);

        // The tenant route and the generated client see the same first page.
        let (_, tenant_first, _) = {
            let reply = h
                .call(Method::GET, "/webhooks/big.event/attempts?limit=500", None)
                .await;
            let attempts = reply.expect(200)["attempts"]
                .as_array()
                .expect("array")
                .clone();
            (reply.text.len(), attempts, ())
        };
        assert_eq!(ids(&tenant_first), ids(&first));
        let typed = h
            .client()
            .list_delivery_attempts()
            .project_id(project)
            .event_type("big.event")
            .limit(NonZeroU64::new(500).unwrap())
            .send()
            .await
            .expect("attempts")
            .into_inner();
        assert_eq!(typed.has_more, Some(true));
        assert_eq!(typed.attempts.map(|a| a.len()), Some(first.len()));
        h.finish().await;
    }
}
