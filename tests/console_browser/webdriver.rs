//! The few W3C WebDriver commands the browser tests use, spoken to Debian's chromedriver
//! over HTTP with reqwest (no WebDriver crate: a dozen JSON calls do). chromedriver runs
//! in its own process group with a throwaway Chromium profile; dropping the [`Driver`]
//! kills the group (chromedriver and the Chromium it started).

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The key W3C gives an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// `name` on `PATH`, or where `var` points.
fn program(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Does the environment ask for the browser tests (`scripts/test.sh` does)?
pub fn required() -> bool {
    std::env::var("SWITCHYARD_BROWSER_TESTS").is_ok_and(|v| !v.is_empty() && v != "0")
}

pub struct Driver {
    child: std::process::Child,
    url: String,
    profile: tempfile::TempDir,
    chromium: PathBuf,
}

impl Driver {
    /// chromedriver on a free port, ready. `None` (with a "skipped" line) when it or
    /// Chromium is missing and the browser tests were not asked for; missing when asked
    /// for is an error.
    pub async fn start(test: &str) -> Result<Option<Driver>> {
        let driver = program("SWITCHYARD_CHROMEDRIVER", "chromedriver");
        let chromium = program("SWITCHYARD_CHROMIUM", "chromium");
        let (Some(driver), Some(chromium)) = (driver, chromium) else {
            if required() {
                bail!("SWITCHYARD_BROWSER_TESTS is set but chromedriver or chromium is missing (apt-get install chromium chromium-driver)");
            }
            println!("{test}: skipped: no chromedriver (apt-get install chromium chromium-driver, or run scripts/test.sh)");
            return Ok(None);
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = std::process::Command::new(&driver);
        cmd.arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", driver.display()))?;
        let d = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile: tempfile::tempdir()?,
            chromium,
        };
        let http = reqwest::Client::new();
        for _ in 0..100 {
            let ready = http.get(format!("{}/status", d.url)).send().await;
            if let Ok(r) = ready {
                let v: Value = r.json().await?;
                if v["value"]["ready"] == true {
                    return Ok(Some(d));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("chromedriver did not become ready in 10 s")
    }

    /// A headless Chromium session (no sandbox: the tests run as root) with a window of
    /// `width` × `height` and the time zone `tz` (the pages show times in the viewer's).
    pub async fn session(&self, width: u32, height: u32, tz: &str) -> Result<Session> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", self.profile.path().display()),
                    "--lang=en-GB",
                ],
            },
        }}});
        let http = reqwest::Client::new();
        let v = call(http.post(format!("{}/session", self.url)).json(&caps)).await?;
        let id = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {v}"))?;
        let s = Session {
            http,
            base: format!("{}/session/{id}", self.url),
        };
        // The zone, through the DevTools protocol chromedriver relays.
        s.post(
            "goog/cdp/execute",
            json!({"cmd": "Emulation.setTimezoneOverride",
            "params": {"timezoneId": tz}}),
        )
        .await?;
        Ok(s)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver and every Chromium process it started share its process group.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a negative pid signals that process group; no memory
            // is touched.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

/// A WebDriver answer's `value`, or its error.
async fn call(req: reqwest::RequestBuilder) -> Result<Value> {
    let r = req.send().await.context("chromedriver")?;
    let status = r.status();
    let v: Value = r.json().await.context("chromedriver's answer")?;
    let value = v.get("value").cloned().unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "webdriver {status}: {} {}",
            value["error"].as_str().unwrap_or(""),
            value["message"].as_str().unwrap_or("")
        );
    }
    Ok(value)
}

/// One browser session.
pub struct Session {
    http: reqwest::Client,
    base: String,
}

/// An element on the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Session {
    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let req = self.http.post(format!("{}/{path}", self.base)).json(&body);
        call(req).await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        call(self.http.get(format!("{}/{path}", self.base))).await
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.post("url", json!({ "url": url })).await.map(|_| ())
    }

    pub async fn url(&self) -> Result<String> {
        Ok(self
            .get("url")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    pub async fn all(&self, css: &str) -> Result<Vec<Element>> {
        let v = self
            .post("elements", json!({"using": "css selector", "value": css}))
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(|s| Element(s.to_string())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The first element matching `css`, waited for up to `secs`.
    pub async fn find(&self, css: &str, secs: u64) -> Result<Element> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(e) = self.all(css).await?.into_iter().next() {
                return Ok(e);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no {css:?} on {} after {secs} s", self.url().await?);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, e: &Element) -> Result<()> {
        self.post(&format!("element/{}/click", e.0), json!({}))
            .await
            .map(|_| ())
    }

    /// Click the first element matching `css` (waited for up to 5 s).
    pub async fn click_on(&self, css: &str) -> Result<()> {
        let e = self.find(css, 5).await?;
        self.click(&e).await
    }

    /// Mark the page shown now, so that [`Session::wait_loaded`] knows when another one
    /// has replaced it.
    pub async fn mark(&self) -> Result<()> {
        self.script("window.__syOld = true; return null;", json!([]))
            .await
            .map(|_| ())
    }

    /// Wait (up to 10 s) until the page marked by [`Session::mark`] is replaced by a
    /// loaded one.
    pub async fn wait_loaded(&self) -> Result<()> {
        let fresh = "return window.__syOld !== true && document.readyState === 'complete';";
        for _ in 0..100 {
            if let Ok(Value::Bool(true)) = self.script(fresh, json!([])).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("no new page loaded after 10 s at {}", self.url().await?)
    }

    /// Click what matches `css` (a link, a submit button) and wait for the page it loads.
    pub async fn click_to_load(&self, css: &str) -> Result<()> {
        self.mark().await?;
        self.click_on(css).await?;
        self.wait_loaded().await
    }

    pub async fn type_text(&self, e: &Element, text: &str) -> Result<()> {
        self.post(&format!("element/{}/value", e.0), json!({ "text": text }))
            .await
            .map(|_| ())
    }

    pub async fn text(&self, e: &Element) -> Result<String> {
        Ok(self
            .get(&format!("element/{}/text", e.0))
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// The whole page's visible text.
    pub async fn body_text(&self) -> Result<String> {
        let body = self.find("body", 5).await?;
        self.text(&body).await
    }

    /// The text of a `window.confirm` (or alert), waited for up to 5 s.
    pub async fn dialog_text(&self) -> Result<String> {
        let mut last = None;
        for _ in 0..50 {
            match self.get("alert/text").await {
                Ok(v) => return Ok(v.as_str().unwrap_or_default().to_string()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or_else(|| anyhow!("no dialog")))
    }

    pub async fn accept_dialog(&self) -> Result<()> {
        self.post("alert/accept", json!({})).await.map(|_| ())
    }

    /// Run `script` (a function body; `arguments` holds `args`) and return its value.
    pub async fn script(&self, script: &str, args: Value) -> Result<Value> {
        self.post("execute/sync", json!({"script": script, "args": args}))
            .await
    }

    /// A PNG of the whole page (beyond the window, through the DevTools protocol).
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let size = self
            .script(
                "const e = document.documentElement; return [e.scrollWidth, e.scrollHeight];",
                json!([]),
            )
            .await?;
        let (w, h) = (
            size[0].as_u64().unwrap_or(1280),
            size[1].as_u64().unwrap_or(900),
        );
        let shot = self
            .post(
                "goog/cdp/execute",
                json!({"cmd": "Page.captureScreenshot", "params": {"format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": w, "height": h.min(6000), "scale": 1}}}),
            )
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .context("the screenshot's base64")?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// End the session (Chromium exits).
    pub async fn quit(self) -> Result<()> {
        call(self.http.delete(&self.base)).await.map(|_| ())
    }
}
