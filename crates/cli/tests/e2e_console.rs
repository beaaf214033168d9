//! The web console end to end: a real server with a local agent, the real `hodei` CLI, and
//! (in the browser test) a real headless Chromium driven over WebDriver by plain HTTP
//! calls to `chromedriver`. `scripts/test` installs Debian's `chromium` and
//! `chromium-driver` when they are missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use hodei_core::credential::Role;
use hodei_core::{JobId, JobState, TenantName};
use hodei_server::Server;
use hodei_testkit::wait_for;
use serde_json::{Value, json};

const ADMIN: &str = "console-admin-token-0123456789";

fn console_config(dir: &Path) -> hodei_server::ServerConfig {
    let mut config = config(dir, 1);
    config.token = Some(ADMIN.into());
    // team-a has quotas to show; team-b is let in by auto_create.
    config.tenant_list = vec![hodei_server::TenantSettings {
        name: "team-a".into(),
        tier: Some("gold".into()),
        max_running_jobs: Some(4),
        max_cpu: Some(8),
        soft: vec!["cpu".into()],
        ..hodei_server::TenantSettings::default()
    }];
    // A `high` job waiting for a worker that never comes is at risk within seconds; nothing
    // is preempted for it.
    config.sla.high = std::time::Duration::from_secs(4);
    config.sla.preemption = hodei_core::sla::PreemptionPolicy::Never;
    config
}

fn hodei_cli(server: &Server, args: &[&str]) -> String {
    let output = tokio::task::block_in_place(|| {
        Command::new(HODEI)
            .args(args)
            .env("HODEI_SERVER", server.url())
            .env("HODEI_TOKEN", ADMIN)
            .output()
            .unwrap()
    });
    assert!(output.status.success(), "hodei {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

async fn tenant_token(server: &Server, tenant: &str) -> String {
    let (_, token) = server
        .credentials()
        .create(hodei_modules::NewCredential {
            role: Some(Role::Tenant),
            tenant: Some(TenantName::new(tenant).unwrap()),
            description: "console test tenant".into(),
            ..hodei_modules::NewCredential::default()
        })
        .await
        .unwrap();
    token.expose().to_owned()
}

async fn wait_state(server: &Server, id: &str, state: JobState) {
    let id = JobId::new(id).unwrap();
    wait_for(&format!("job {id} to be {state}"), LIMIT, || async {
        server
            .jobs()
            .get(&id)
            .await
            .unwrap()
            .filter(|job| job.state == state)
    })
    .await;
}

/// A client that does not follow redirects, so the sign-in answer's cookie is visible.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in with `token`; the session cookie (`name=value`) and the raw `Set-Cookie`.
async fn sign_in(server: &Server, token: &str) -> (reqwest::StatusCode, Option<(String, String)>) {
    let response = client()
        .post(format!("{}/console/sign-in", server.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned())
        .map(|raw| (raw.split(';').next().unwrap().to_owned(), raw));
    (status, cookie)
}

fn csrf_of(page: &str) -> String {
    let start = page.find(r#"<meta name="csrf" content=""#).unwrap() + 27;
    page[start..start + 64].to_owned()
}

/// The console's HTTP contract without a browser: the sign-in form, the cookie's
/// attributes, refusals without a session or CSRF token, and a tenant session's scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_csrf_and_tenant_scope() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_anywhere(console_config(dir.path())).await;
    let http = client();
    let url = server.url().to_owned();

    let page = http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains(r#"name="token""#), "{page}");

    let (status, cookie) = sign_in(&server, "wrong").await;
    assert_eq!(status, 401);
    assert!(cookie.is_none());
    let agent = agent_token(&server).await;
    assert_eq!(
        sign_in(&server, &agent).await.0,
        403,
        "agent tokens cannot sign in"
    );

    let api = format!("{url}/console/api/pools");
    assert_eq!(http.get(&api).send().await.unwrap().status(), 401);
    assert_eq!(
        http.get(&api)
            .header("cookie", "hodei_session=forged")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let (status, cookie) = sign_in(&server, ADMIN).await;
    assert_eq!(status, 303);
    let (admin, raw) = cookie.unwrap();
    assert!(raw.contains("HttpOnly"), "{raw}");
    assert!(raw.contains("SameSite=Strict"), "{raw}");
    assert!(
        !raw.contains("Secure"),
        "plain HTTP: no Secure attribute: {raw}"
    );
    let pools: Value = http
        .get(&api)
        .header("cookie", &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pools["pools"][0]["name"], "default");
    let app = http
        .get(&url)
        .header("cookie", &admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let admin_csrf = csrf_of(&app);

    let mine = hodei_cli(
        &server,
        &["job", "submit", "--tenant", "team-a", "--", "sleep", "300"],
    );
    let theirs = hodei_cli(
        &server,
        &["job", "submit", "--tenant", "team-b", "--", "true"],
    );
    wait_state(&server, &mine, JobState::Running).await;

    // The pool filter: jobs on the pool's workers (a queued job has none yet).
    for (pool, expected) in [("default", vec![mine.as_str()]), ("elsewhere", vec![])] {
        let listed: Value = http
            .get(format!("{url}/console/api/jobs?pool={pool}"))
            .header("cookie", &admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = listed["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, expected, "pool {pool}");
    }

    let team_a = tenant_token(&server, "team-a").await;
    let (status, cookie) = sign_in(&server, &team_a).await;
    assert_eq!(status, 303);
    let (tenant, _) = cookie.unwrap();
    let listed: Value = http
        .get(format!("{url}/console/api/jobs?tenant=team-b"))
        .header("cookie", &tenant)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![mine.as_str()], "a tenant sees only its own jobs");
    let other = http
        .get(format!("{url}/console/api/jobs/{theirs}"))
        .header("cookie", &tenant)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    assert_eq!(
        http.get(&api)
            .header("cookie", &tenant)
            .send()
            .await
            .unwrap()
            .status(),
        403,
        "tenants do not see the fleet"
    );
    let tenant_page = http
        .get(&url)
        .header("cookie", &tenant)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let tenant_csrf = csrf_of(&tenant_page);
    let cancel = format!("{url}/console/api/jobs/{mine}/cancel");
    let foreign = http
        .post(format!("{url}/console/api/jobs/{theirs}/cancel"))
        .header("cookie", &tenant)
        .header("x-csrf-token", &tenant_csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(
        foreign.status(),
        404,
        "another tenant's job is not found, not refused"
    );
    let tenants: Value = http
        .get(format!("{url}/console/api/tenants"))
        .header("cookie", &tenant)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = tenants["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["team-a"], "a tenant sees its own tenant only");
    let all: Value = http
        .get(format!("{url}/console/api/tenants"))
        .header("cookie", &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        all["tenants"].as_array().unwrap().len() >= 2,
        "an admin sees every tenant: {all}"
    );
    let no_csrf = http
        .post(&cancel)
        .header("cookie", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(no_csrf.status(), 403, "no CSRF token");
    let wrong_csrf = http
        .post(&cancel)
        .header("cookie", &admin)
        .header("x-csrf-token", &tenant_csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_csrf.status(), 403, "another session's CSRF token");
    wait_state(&server, &mine, JobState::Running).await;
    let cancelled = http
        .post(&cancel)
        .header("cookie", &admin)
        .header("x-csrf-token", &admin_csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    wait_state(&server, &mine, JobState::Cancelled).await;

    let signed_out = http
        .post(format!("{url}/console/sign-out"))
        .header("cookie", &admin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={admin_csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_out.status(), 303);
    assert_eq!(
        http.get(&api)
            .header("cookie", &admin)
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "signed out"
    );

    // Ten failed sign-ins from one address (a few happened above), then even a good token
    // waits (429).
    let mut failed = 0;
    loop {
        let (status, _) = sign_in(&server, "not-a-token").await;
        if status == 429 {
            break;
        }
        assert_eq!(status, 401);
        failed += 1;
        assert!(failed <= 10, "still no 429 after {failed} more failures");
    }
    assert_eq!(
        failed, 8,
        "two failed above (a wrong token, an agent token), eight more"
    );
    let limited = client()
        .post(format!("{url}/console/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    assert!(
        limited.headers().get("set-cookie").is_none(),
        "no session while limited"
    );
    server.shutdown().await.unwrap();
}

// ---- A real browser --------------------------------------------------------------------

struct KillChild(Child);

impl Drop for KillChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One WebDriver session on a `chromedriver` this test started.
struct Browser {
    http: reqwest::Client,
    base: String,
    _driver: KillChild,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = KillChild(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver (scripts/test installs Debian's chromium-driver)"),
        );
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver to answer", LIMIT, || async {
            http.get(format!("{root}/status")).send().await.ok()
        })
        .await;
        let chromium = which("chromium").unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        let created: Value = http
            .post(format!("{root}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,900"]
                }
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_owned();
        Self {
            http,
            base: format!("{root}/session/{id}"),
            _driver: driver,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn find(&self, css: &str) -> Option<String> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT].as_str().map(str::to_owned)
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = wait_for(&format!("{css} to appear"), LIMIT, move || self.find(css)).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let element = wait_for(&format!("{css} to appear"), LIMIT, move || self.find(css)).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn async_script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn text(&self) -> String {
        self.script("return document.body.innerText;")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until `script` returns `expected`.
    async fn wait_script(&self, script: &str, expected: Value) -> Value {
        wait_for(
            &format!("{script} to return {expected}"),
            LIMIT,
            move || {
                let expected = expected.clone();
                async move {
                    let value = self.script(script).await;
                    (value == expected).then_some(value)
                }
            },
        )
        .await
    }

    /// Waits until the page's text contains every one of `needles`.
    async fn wait_text(&self, needles: &[&str]) -> String {
        wait_for(
            &format!("the page to show {needles:?}"),
            LIMIT,
            move || async move {
                let text = self.text().await;
                needles.iter().all(|n| text.contains(n)).then_some(text)
            },
        )
        .await
    }

    async fn resize(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// The viewport's width, and whether the page is wider than it.
    async fn scrolls_sideways(&self) -> (u64, bool) {
        let answer = self
            .script(
                "return [window.innerWidth,
                         document.documentElement.scrollWidth > document.documentElement.clientWidth];",
            )
            .await;
        (answer[0].as_u64().unwrap(), answer[1].as_bool().unwrap())
    }

    async fn screenshot(&self, path: &Path) {
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64_decode(png.as_str().unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    async fn sign_in(&self, server: &Server, token: &str) {
        self.go(&format!("{}/", server.url())).await;
        self.type_into("input[name=token]", token).await;
        self.click("#sign-in").await;
        self.wait_text(&["Signed in"]).await;
    }

    async fn quit(self) {
        let _ = self.http.delete(&self.base).send().await.map(|_| ());
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        let v: u8 = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        Some(u32::from(v))
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter_map(value) {
        buffer = (buffer << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/console")
}

/// The console in a real headless Chromium: sign in; the `default` pool and its worker; a
/// job submitted with the CLI appears, runs and finishes with its log on its page; a running
/// job is cancelled from its page; a tenant sees only its tenant's jobs and its forged
/// admin actions are refused. Saves the README's screenshots to docs/console/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_anywhere(console_config(dir.path())).await;
    let worker = wait_for_registered_workers(&server, 1).await.remove(0);
    let browser = Browser::start().await;

    // Sign in; the overview shows the default pool.
    browser.sign_in(&server, ADMIN).await;
    browser
        .wait_text(&[
            "Pools",
            "default",
            "idle 1",
            "At risk of missing their SLA",
            "No waiting job is near its SLA deadline.",
        ])
        .await;

    // A `high` job (deadline 4 s) that no worker fits waits; the overview lists it at risk,
    // then past its deadline, with its class, and its page says why it waits.
    let pending = hodei_cli(
        &server,
        &[
            "job",
            "submit",
            "--tenant",
            "team-a",
            "--sla",
            "high",
            "--label",
            "gpu=yes",
            "--allow-pending",
            "--",
            "true",
        ],
    );
    let text = browser
        .wait_text(&[&pending, "high", "at risk", "missed by"])
        .await;
    assert!(
        !text.contains("No waiting job is near its SLA deadline."),
        "{text}"
    );
    // Tenants' usage against quota and share, on the overview.
    browser
        .wait_text(&[
            "running_jobs 0 / 4 (hard)",
            "cpu 0 / 8 (soft)",
            "Share, last hour",
        ])
        .await;
    browser.screenshot(&docs_dir().join("overview.png")).await;
    browser
        .go(&format!("{}/#/jobs/{pending}", server.url()))
        .await;
    browser
        .wait_text(&["Why it waits", "gpu", "high: start deadline", "missed"])
        .await;

    // The pool page: its worker and the autoscaler's decisions.
    browser
        .go(&format!("{}/#/pools/default", server.url()))
        .await;
    browser
        .wait_text(&[
            "Pool default",
            worker.as_str(),
            "Recent scaling decisions",
            "Workers over the last hour",
            "idle: now 1",
            "busy: now 0",
        ])
        .await;
    assert!(
        browser
            .find("#workers-chart svg.chart path.series-idle")
            .await
            .is_some(),
        "the chart draws the idle line"
    );

    // A job from the CLI appears in the list, runs, and its page shows its log.
    let job = hodei_cli(
        &server,
        &[
            "job",
            "submit",
            "--tenant",
            "team-a",
            "--script",
            "echo hello from the console test; sleep 1; echo done",
        ],
    );
    browser.go(&format!("{}/#/jobs", server.url())).await;
    browser.wait_text(&[&job]).await;
    browser.go(&format!("{}/#/jobs/{job}", server.url())).await;
    browser
        .wait_text(&[
            "succeeded",
            "hello from the console test",
            "done",
            // Every state change, each attempt, with times after submission.
            "After submission",
            "queued → assigned",
            "assigned → running",
            "running → succeeded",
            "attempt 1 ended",
            &format!("attempt 1 on worker {worker}"),
        ])
        .await;
    let last = browser
        .script(
            "const rows = document.querySelectorAll('#history tbody tr');
             return rows[rows.length - 1].innerText;",
        )
        .await;
    assert!(
        last.as_str().unwrap().contains("running → succeeded"),
        "the end is last: {last}"
    );
    browser.screenshot(&docs_dir().join("job.png")).await;

    // The workers page: the worker ran one job; its heartbeat's age and load.
    browser.go(&format!("{}/#/workers", server.url())).await;
    browser
        .wait_text(&[
            worker.as_str(),
            "Uses",
            "Last heartbeat",
            "load ",
            "memory ",
        ])
        .await;
    browser
        .wait_script(
            "const cell = document.querySelector('td[data-label=\"Uses\"]');
             return cell ? cell.textContent : null;",
            json!("1"),
        )
        .await;

    // Phone width: the narrow layout, and no page wider than the screen.
    browser.resize(390, 844).await;
    let phone_pages = [
        (format!("#/jobs/{job}"), "Log"),
        ("#/pools/default".to_owned(), "Recent scaling decisions"),
        ("#/".to_owned(), "Queues"),
        ("#/workers".to_owned(), "Terminate"),
        ("#/tenants".to_owned(), "daily_cost"),
        // Last: the phone screenshot below is of the jobs list.
        ("#/jobs".to_owned(), "Filter"),
    ];
    for (page, marker) in phone_pages {
        browser.go(&format!("{}/{page}", server.url())).await;
        browser.wait_text(&[marker]).await;
        let (width, sideways) = browser.scrolls_sideways().await;
        assert!(width < 640, "the viewport is phone-sized: {width}");
        assert!(!sideways, "{page} scrolls sideways at {width} px");
    }
    browser.screenshot(&docs_dir().join("phone-jobs.png")).await;
    browser.resize(1280, 900).await;

    // Cancel a running job from its page.
    let long = hodei_cli(
        &server,
        &[
            "job",
            "submit",
            "--tenant",
            "team-b",
            "--script",
            "echo long job started; sleep 300",
        ],
    );
    wait_state(&server, &long, JobState::Running).await;
    // The pool's chart and counts follow: one busy worker now.
    browser
        .go(&format!("{}/#/pools/default", server.url()))
        .await;
    browser.wait_text(&["busy: now 1", "peak 1", &long]).await;
    browser.screenshot(&docs_dir().join("pool.png")).await;
    // Its log follows live: the first line shows while it runs.
    browser.go(&format!("{}/#/jobs/{long}", server.url())).await;
    browser.wait_text(&["running", "long job started"]).await;
    // How far behind the page is: the time between its refreshes (printed, not asserted).
    let gaps = browser
        .async_script(
            "const done = arguments[arguments.length - 1];
             const footer = document.getElementById('updated');
             const at = [];
             const seen = new MutationObserver(() => {
               at.push(performance.now());
               if (at.length === 5) {
                 seen.disconnect();
                 done(at.slice(1).map((t, i) => Math.round(t - at[i])));
               }
             });
             seen.observe(footer, {childList: true, characterData: true, subtree: true});",
        )
        .await;
    println!("console refreshes of a running job's page, ms apart: {gaps}");
    assert_eq!(
        server
            .jobs()
            .get(&JobId::new(long.as_str()).unwrap())
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Running,
        "the line came while the job ran"
    );
    browser.click("#cancel").await;
    wait_state(&server, &long, JobState::Cancelled).await;
    browser.wait_text(&["cancelled", "→ cancelled"]).await;

    // Sign out, then a tenant: only its own jobs, no admin actions, forged ones refused.
    browser.click(".sign-out button").await;
    browser.wait_text(&["Sign in"]).await;
    let blocker = hodei_cli(
        &server,
        &["job", "submit", "--tenant", "team-a", "--", "sleep", "300"],
    );
    wait_state(&server, &blocker, JobState::Running).await;
    let token = tenant_token(&server, "team-a").await;
    browser.sign_in(&server, &token).await;
    browser.go(&format!("{}/#/jobs", server.url())).await;
    let text = browser.wait_text(&[&job, &blocker]).await;
    assert!(!text.contains(&long), "team-b's job is hidden: {text}");
    browser.go(&format!("{}/#/", server.url())).await;
    let text = browser.wait_text(&["Tenants", "team-a"]).await;
    assert!(
        !text.contains("team-b"),
        "the overview shows only team-a: {text}"
    );
    assert!(!text.contains("Pools"), "a tenant sees no pools: {text}");
    browser.go(&format!("{}/#/jobs", server.url())).await;
    let text = browser.wait_text(&[&job, &blocker]).await;
    assert!(!text.contains(&long), "team-b's job is hidden: {text}");
    browser
        .go(&format!("{}/#/jobs/{blocker}", server.url()))
        .await;
    browser.wait_text(&["running"]).await;
    assert!(
        browser.find("button[data-terminate]").await.is_none(),
        "no admin action offered to a tenant"
    );
    let forged = browser
        .async_script(&format!(
            "const done = arguments[arguments.length - 1];
             const csrf = document.querySelector('meta[name=csrf]').content;
             Promise.all([
               fetch('/console/api/workers/{worker}/terminate', {{method: 'POST', headers: {{'x-csrf-token': csrf}}}}),
               fetch('/console/api/jobs/{long}/cancel', {{method: 'POST', headers: {{'x-csrf-token': csrf}}}}),
               fetch('/console/api/workers', {{headers: {{'x-csrf-token': csrf}}}}),
               fetch('/console/api/pools', {{headers: {{'x-csrf-token': csrf}}}}),
             ]).then(rs => done(rs.map(r => r.status)));"
        ))
        .await;
    assert_eq!(
        forged,
        json!([403, 404, 403, 403]),
        "forged admin actions are refused; another tenant's job is not found"
    );
    assert!(
        server.scheduler().get(&worker).is_some(),
        "the worker was not terminated"
    );
    // Its own job it may cancel, from its page.
    browser.click("#cancel").await;
    wait_state(&server, &blocker, JobState::Cancelled).await;
    browser
        .wait_text(&["cancelled", "History", "submitted"])
        .await;
    // Its own tenant, not the others.
    browser.go(&format!("{}/#/tenants", server.url())).await;
    let text = browser
        .wait_text(&[
            "Tenant team-a",
            "3 (gold)",
            "/ 4 (hard)",
            "/ 8 (soft)",
            "Burst",
        ])
        .await;
    assert!(!text.contains("team-b"), "only its own tenant: {text}");

    // An admin's tenants page shows them all.
    browser.click(".sign-out button").await;
    browser.wait_text(&["Sign in"]).await;
    browser.sign_in(&server, ADMIN).await;
    browser.go(&format!("{}/#/tenants", server.url())).await;
    browser
        .wait_text(&["Tenants", "team-a", "team-b", "Share, last hour"])
        .await;
    browser.screenshot(&docs_dir().join("tenants.png")).await;

    // Drain the idle worker from the workers page: it takes no new job and, its job done,
    // goes; the pool puts a new worker in its place.
    browser.go(&format!("{}/#/workers", server.url())).await;
    browser.wait_text(&[worker.as_str(), "Drain"]).await;
    browser
        .click(&format!("button[data-drain=\"{worker}\"]"))
        .await;
    wait_for("the drained worker to go", LIMIT, || async {
        server.scheduler().get(&worker).is_none().then_some(())
    })
    .await;
    let replacement = wait_for_registered_workers(&server, 1).await.remove(0);
    assert_ne!(replacement, worker, "the pool replaced the drained worker");

    browser.quit().await;
    server.shutdown().await.unwrap();
}
