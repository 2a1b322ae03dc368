//! A small W3C WebDriver client (the protocol's JSON over HTTP) and a `chromedriver` process
//! driving Debian's headless Chromium, for the review app's browser test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running `chromedriver` (killed on drop).
pub struct Driver {
    child: Child,
    pub url: String,
}

impl Driver {
    /// Starts `chromedriver` (Debian's `chromium-driver`) on a free port and waits until it is ready.
    pub fn start() -> Driver {
        let exe = ["chromedriver", "/usr/bin/chromedriver"]
            .into_iter()
            .find(|e| Command::new(e).arg("--version").output().is_ok_and(|o| o.status.success()))
            .expect("chromedriver not found: install Debian's chromium and chromium-driver (.ci/run does)");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(exe)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Ok(r) = ureq::get(&format!("{url}/status")).call() {
                let v: Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { child, url }
    }

    /// A headless Chromium session.
    pub fn session(&self) -> Browser {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1000", "--no-first-run", "--password-store=basic"]
            }
        }}});
        let v = post(&format!("{}/session", self.url), &caps);
        let id = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_owned();
        Browser { base: format!("{}/session/{id}", self.url) }
    }
}

fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromium not found: install Debian's chromium")
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> Value {
    let text = match r {
        Ok(r) => r.into_string().unwrap(),
        Err(ureq::Error::Status(_, r)) => r.into_string().unwrap(),
        Err(e) => panic!("webdriver: {e}"),
    };
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("webdriver answered {text:?}: {e}"))
}

fn post(url: &str, body: &Value) -> Value {
    answer(ureq::post(url).set("Content-Type", "application/json").send_string(&body.to_string()))
}

/// One browser session (closed on drop).
pub struct Browser {
    base: String,
}

/// An element of the page.
#[derive(Clone)]
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    fn cmd(&self, path: &str, body: Value) -> Value {
        let v = post(&format!("{}{path}", self.base), &body);
        if let Some(err) = v["value"].get("error") {
            panic!("webdriver {path}: {err} {}", v["value"]["message"]);
        }
        v["value"].clone()
    }

    fn get(&self, path: &str) -> Value {
        let v = answer(ureq::get(&format!("{}{path}", self.base)).call());
        if let Some(err) = v["value"].get("error") {
            panic!("webdriver {path}: {err} {}", v["value"]["message"]);
        }
        v["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.cmd("/url", json!({ "url": url }));
    }

    pub fn current_url(&self) -> String {
        self.get("/url").as_str().unwrap().to_owned()
    }

    pub fn source(&self) -> String {
        self.get("/source").as_str().unwrap().to_owned()
    }

    /// Elements matching a CSS selector (now).
    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        self.cmd("/elements", json!({"using": "css selector", "value": css}))
            .as_array()
            .unwrap()
            .iter()
            .map(|e| Element { browser: self, id: e[ELEMENT].as_str().unwrap().to_owned() })
            .collect()
    }

    /// The first element matching `css`, waiting up to 10 s for it.
    pub fn find(&self, css: &str) -> Element<'_> {
        let started = Instant::now();
        loop {
            if let Some(e) = self.find_all(css).into_iter().next() {
                return e;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no element {css:?} on {}", self.current_url());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.cmd("/execute/sync", json!({"script": script, "args": args}))
    }

    /// Runs an async script: its last argument is the callback.
    pub fn execute_async(&self, script: &str, args: Value) -> Value {
        self.cmd("/execute/async", json!({"script": script, "args": args}))
    }

    /// Presses and releases `key` on the page (no element focused).
    pub fn press(&self, key: &str) {
        self.cmd(
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]}),
        );
    }

    /// Waits up to 10 s for `cond`.
    pub fn wait_until(&self, what: &str, cond: impl Fn(&Browser) -> bool) {
        let started = Instant::now();
        while !cond(self) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what} on {}",
                self.current_url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the viewport, written to `path`.
    pub fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine;
        let b64 = self.get("/screenshot");
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&self.base).call();
    }
}

impl Element<'_> {
    pub fn click(&self) {
        self.browser.cmd(&format!("/element/{}/click", self.id), json!({}));
    }

    pub fn send_keys(&self, text: &str) {
        self.browser.cmd(&format!("/element/{}/value", self.id), json!({ "text": text }));
    }

    pub fn clear(&self) {
        self.browser.cmd(&format!("/element/{}/clear", self.id), json!({}));
    }

    pub fn text(&self) -> String {
        self.browser.get(&format!("/element/{}/text", self.id)).as_str().unwrap_or("").to_owned()
    }

    pub fn attr(&self, name: &str) -> Option<String> {
        self.browser.get(&format!("/element/{}/attribute/{name}", self.id)).as_str().map(str::to_owned)
    }
}
