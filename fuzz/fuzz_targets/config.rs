//! Configuration: a TOML file, environment variables and `--set` flags (the input split at
//! NUL bytes), loaded by both binaries: an error names the problem, nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zastava::config::Config;
use zastava_platform::config::Sources;
use zastava_webhook::config::WebhookConfig;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let file = parts.next().unwrap_or_default().to_owned();
    let env: Vec<(String, String)> = parts
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let overrides: Vec<(String, toml::Value)> = parts
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter_map(|(k, v)| {
            let value: toml::Table = toml::from_str(&format!("v = {v}")).ok()?;
            Some((k.to_owned(), value.get("v")?.clone()))
        })
        .collect();
    let sources = Sources {
        file: Some(("fuzz.toml".to_owned(), file)),
        env,
        overrides,
    };
    match Config::load(&sources) {
        Ok(config) => {
            let _ = config.describe();
            let _ = config.check();
        }
        Err(errors) => assert!(!errors.to_string().is_empty()),
    }
    if let Ok(config) = WebhookConfig::load(&sources) {
        let _ = format!("{config:?}");
    }
});
