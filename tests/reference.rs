//! The two complete references, held to the code: `systemd/scorecast.example.toml` to the
//! config loader, and `src/api/openapi.json` to the API's routes. No daemon and no media: the
//! loader and the router run in this process, in milliseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use scorecast::api;
use scorecast::config::Config;
use scorecast::events::EventBus;
use scorecast::relay::registry::Registry;
use scorecast::relay::spec::CustomRendition;
use scorecast::relay::RelayContext;
use serde_json::Value;
use warp::filters::BoxedFilter;
use warp::reply::Response;

const EXAMPLE: &str = include_str!("../systemd/scorecast.example.toml");
const PROBE: &str = "__probe";

/// The example with its commented-out settings uncommented: `# [table]`, `# [[table]]` and
/// `# key = value` lines, and every line of a `# key = [` array down to its `# ]`. Prose
/// comments stay comments.
fn uncommented(text: &str) -> String {
    let mut out = String::new();
    let mut in_array = false;
    for line in text.lines() {
        match line.strip_prefix("# ") {
            Some(rest) if in_array || is_setting(rest) => {
                if in_array {
                    in_array = rest.trim() != "]";
                } else {
                    in_array = rest.trim_end().ends_with('[');
                }
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn is_setting(text: &str) -> bool {
    let key_chars = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
    };
    if let Some(header) = text.strip_prefix('[') {
        let name = header.trim_end().trim_end_matches(']');
        return key_chars(name.trim_start_matches('['));
    }
    text.split_once(" = ")
        .is_some_and(|(key, value)| key_chars(key) && !value.is_empty())
}

fn parse(text: &str) -> Config {
    Config::parse(text, Path::new("scorecast.example.toml")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_example_config_loads_as_it_is_and_uncommented() {
    let config = parse(EXAMPLE);
    let ids: Vec<_> = config.relays.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["final"]);

    let config = parse(&uncommented(EXAMPLE));
    let ids: Vec<_> = config.relays.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["final", "show", "raw", "feed", "community"]);
    assert_eq!(config.auth.tokens.len(), 4);
}

/// A step from a table to one of its children.
#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// Every table in `value`, with where it is and its place in the schema (`relay[].outputs[]`).
fn tables<'a>(
    value: &'a toml::Value,
    at: &mut Vec<Step>,
    schema: &str,
    found: &mut Vec<(Vec<Step>, String, &'a toml::Table)>,
) {
    match value {
        toml::Value::Table(table) => {
            found.push((at.clone(), schema.to_owned(), table));
            for (key, child) in table {
                at.push(Step::Key(key.clone()));
                let child_schema = if schema.is_empty() {
                    key.clone()
                } else {
                    format!("{schema}.{key}")
                };
                tables(child, at, &child_schema, found);
                at.pop();
            }
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                at.push(Step::Index(i));
                tables(item, at, &format!("{schema}[]"), found);
                at.pop();
            }
        }
        _ => {}
    }
}

fn table_at<'a>(root: &'a mut toml::Value, at: &[Step]) -> &'a mut toml::Table {
    let mut value = root;
    for step in at {
        value = match step {
            Step::Key(key) => &mut value[key.as_str()],
            Step::Index(i) => &mut value[*i],
        };
    }
    value.as_table_mut().expect("a table")
}

/// The keys the loader accepts in the table at `at`: it is given one it cannot know, and the
/// loader's refusal lists the others (`unknown field `__probe`, expected one of ...`).
fn accepted_keys(doc: &toml::Value, at: &[Step], schema: &str) -> BTreeSet<String> {
    let mut probed = doc.clone();
    let table = table_at(&mut probed, at);
    table.insert(PROBE.to_owned(), toml::Value::Boolean(true));
    // A rendition is a preset name or a custom table (an untagged enum), so serde cannot
    // name the custom table's fields through the enum: ask the table's own type.
    let refusal = if schema == "relay[].hls.renditions[]" {
        let text = toml::to_string(table).expect("a table serialises");
        toml::from_str::<CustomRendition>(&text)
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
    } else {
        let text = toml::to_string(&probed).expect("the example serialises");
        Config::parse(&text, Path::new("probe.toml"))
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
    };
    let refusal = refusal.unwrap_or_else(|| {
        panic!("{schema}: an unknown key was accepted; the loader must refuse it")
    });
    let marker = format!("unknown field `{PROBE}`");
    let listed = refusal
        .split_once(&marker)
        .unwrap_or_else(|| panic!("{schema}: the probe was refused for another reason: {refusal}"))
        .1
        .lines()
        .next()
        .unwrap_or_default();
    listed
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The Flask relay drop-in's config, as docs/migrate-flask.md hands it out, loads.
#[test]
fn the_flask_relay_example_loads() {
    let config = parse(include_str!("../docs/examples/flask-relay.toml"));
    assert!(config.compat.ingest.is_some() && config.compat.listen.is_some());
}

#[test]
fn the_example_config_shows_every_key_the_loader_accepts() {
    let doc: toml::Value = toml::from_str(&uncommented(EXAMPLE)).expect("the example is TOML");
    let mut found = Vec::new();
    tables(&doc, &mut Vec::new(), "", &mut found);

    let mut shown: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut accepted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (at, schema, table) in &found {
        shown
            .entry(schema.clone())
            .or_default()
            .extend(table.keys().cloned());
        // The overlay's map and a layer's bind are free-form: their keys are the scoreboard's
        // or the layer's fields, which the relay's own validation checks.
        if schema == "relay[].overlay.map"
            || schema == "compat.map"
            || schema == "relay[].graphics.layers[].bind"
        {
            continue;
        }
        accepted
            .entry(schema.clone())
            .or_default()
            .extend(accepted_keys(&doc, at, schema));
    }
    assert!(
        accepted.contains_key("relay[].outputs[]") && accepted.contains_key("auth.tokens[]"),
        "the probes did not reach every level: {:?}",
        accepted.keys()
    );

    let missing: Vec<String> = accepted
        .iter()
        .flat_map(|(schema, keys)| {
            let shown = &shown[schema];
            keys.iter()
                .filter(|key| !shown.contains(*key))
                .map(move |key| {
                    if schema.is_empty() {
                        key.clone()
                    } else {
                        format!("{schema}.{key}")
                    }
                })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the config accepts keys that systemd/scorecast.example.toml neither sets nor shows \
         in a commented-out setting: {missing:?}"
    );
}

/// The documented routes: `(METHOD, path)` for every operation in `openapi.json`.
fn documented() -> BTreeSet<(String, String)> {
    let doc: Value = serde_json::from_str(api::OPENAPI).expect("openapi.json is JSON");
    assert_eq!(doc["openapi"], "3.0.3");
    let methods = ["get", "put", "post", "delete", "patch", "head", "options"];
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            if methods.contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    documented
}

/// A request path for a path template: ids no relay has, so nothing changes.
fn concrete(template: &str) -> String {
    template
        .replace("{id}", "nope")
        .replace("{output_id}", "nope")
        .replace("{name}", "nope")
        .replace("{recording}", "123")
        .replace("{seconds}", "60")
        .replace("{relay}", "nope")
        .replace("{rendition}", "720p")
        .replace("{file}", "index.m3u8")
}

fn registry(hls_root: &Path) -> Arc<Registry> {
    Arc::new(Registry::new(
        RelayContext {
            program: Default::default(),
            hls: Default::default(),
            hls_root: hls_root.to_owned(),
            slates: Default::default(),
            events: Arc::new(EventBus::default()),
            queues_dir: None,
            recordings_root: None,
            record: Default::default(),
            graphics_dir: None,
        },
        None,
    ))
}

#[tokio::test]
async fn openapi_documents_exactly_the_routes_the_router_serves() {
    let dir = tempfile::tempdir().expect("temp dir");
    let table = api::table(&api::Shared {
        registry: registry(dir.path()),
        hls_root: dir.path().to_owned(),
        recordings_root: dir.path().to_owned(),
        auth: Arc::new(Default::default()),
        browsers: Arc::new(Default::default()),
        compat: Arc::new(Default::default()),
    });

    let served: BTreeSet<(String, String)> = table
        .iter()
        .flat_map(|r| {
            r.paths
                .iter()
                .map(|p| (r.method.to_owned(), (*p).to_owned()))
        })
        .collect();
    let documented = documented();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in openapi.json: {undocumented:?}; in openapi.json but not served: \
         {unserved:?}"
    );

    // Each route's own filter takes the requests it claims (a body that is not JSON, ids no
    // relay has: the handlers refuse them, but the route matched), and on a documented path no
    // route takes a method that is not documented there.
    for route in &table {
        for path in route.paths {
            assert!(
                takes(&route.filter, route.method, path).await,
                "{} {path}: its own filter does not take it",
                route.method
            );
        }
    }
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            let mut taken = false;
            for route in &table {
                taken |= takes(&route.filter, method, path).await;
            }
            let expected = documented.contains(&(method.to_owned(), path.clone()));
            assert_eq!(
                taken, expected,
                "{method} {path}: routed {taken}, documented {expected}"
            );
        }
    }
}

/// Whether `filter` takes `method` on `template`. The reply is not read: the events' is a
/// stream that never ends.
async fn takes(filter: &BoxedFilter<(Response,)>, method: &str, template: &str) -> bool {
    warp::test::request()
        .method(method)
        .path(&concrete(template))
        .body("{")
        .filter(filter)
        .await
        .is_ok()
}
