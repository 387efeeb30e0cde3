//! Request bodies: JSON read into typed values, with every problem reported under the path of the
//! field it belongs to (`url`, `filter[0].gt`), and JSON merge patches (RFC 7396).

use serde::de::DeserializeOwned;
use serde_json::Value;

use herald_core::config::Problems;

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Reads `body` as JSON into `T`; an empty body reads as `{}`.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Vec<FieldError>> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        vec![FieldError {
            path: String::new(),
            message: format!("the body is not valid JSON: {error}"),
        }]
    })?;
    from_value(value)
}

/// Converts a JSON value into `T`, naming the field of the first problem.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, Vec<FieldError>> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let parent = error.path().to_string();
        let message = error.inner().to_string();
        vec![field_error(&parent, &message)]
    })
}

/// Turns serde's message into one for the field. serde gives a missing field its parent's path,
/// so the field's name is added; an unknown field's path already ends with its name.
fn field_error(path: &str, message: &str) -> FieldError {
    let path = if path == "." { "" } else { path };
    if let Some(name) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name)
    {
        return FieldError {
            path: join(path, name),
            message: "is required".into(),
        };
    }
    let message = if message.starts_with("unknown field `") {
        "is not a known field".to_owned()
    } else {
        plain_type_error(message)
    };
    FieldError {
        path: path.to_owned(),
        message,
    }
}

/// Rewrites serde's "invalid type: string \"x\", expected a sequence" as "expected an array,
/// found string \"x\"", in JSON's words rather than Rust's.
fn plain_type_error(message: &str) -> String {
    let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|rest| rest.split_once(", expected "))
    else {
        return message.to_owned();
    };
    let expected = match expected {
        "a sequence" => "an array",
        "a map" => "an object",
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number of at least 0",
        "a boolean" => "true or false",
        other => other,
    };
    let found = found.replace("sequence", "array").replace("map", "object");
    format!("expected {expected}, found {found}")
}

/// Reads `body` as a JSON object into `T`. Unknown and missing fields are reported together
/// before anything else, so one request shows every such mistake. `known` and `required` list
/// the top-level field names of `T`.
pub fn parse_object<T: DeserializeOwned>(
    body: &[u8],
    known: &[&str],
    required: &[&str],
) -> Result<T, Vec<FieldError>> {
    let value: Value = parse(body)?;
    let Some(members) = value.as_object() else {
        return Err(vec![FieldError {
            path: String::new(),
            message: "the body must be a JSON object".into(),
        }]);
    };
    let mut problems: Vec<FieldError> = required
        .iter()
        .filter(|name| !members.contains_key(**name))
        .map(|name| FieldError {
            path: (*name).to_owned(),
            message: "is required".into(),
        })
        .collect();
    problems.extend(
        members
            .keys()
            .filter(|name| !known.contains(&name.as_str()))
            .map(|name| FieldError {
                path: name.clone(),
                message: "is not a known field".into(),
            }),
    );
    if !problems.is_empty() {
        return Err(problems);
    }
    from_value(value)
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// Converts the problems that [`herald_core::subscription::check_spec`] found under an empty key.
pub fn from_problems(problems: &Problems) -> Vec<FieldError> {
    problems
        .iter()
        .map(|problem| FieldError {
            path: problem.key.trim_start_matches('.').to_owned(),
            message: problem.message.clone(),
        })
        .collect()
}

/// Applies a JSON merge patch: an object's members replace or, when null, remove the target's,
/// recursively; anything else replaces the target whole.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(object) = target {
        for (name, value) in members {
            if value.is_null() {
                object.remove(name);
            } else {
                merge_patch(object.entry(name.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        url: String,
        #[serde(default)]
        limits: Vec<Limit>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Limit {
        rate: u32,
    }

    fn first_error(body: &str) -> FieldError {
        parse::<Sample>(body.as_bytes())
            .expect_err("invalid")
            .remove(0)
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(first_error("{}").path, "url");
        assert_eq!(first_error("{}").message, "is required");
        assert_eq!(first_error(r#"{"url":"x","color":1}"#).path, "color");
        let nested = first_error(r#"{"url":"x","limits":[{"rate":1},{"rate":"fast"}]}"#);
        assert_eq!(nested.path, "limits[1].rate");
        assert_eq!(
            nested.message,
            "expected a whole number of at least 0, found string \"fast\""
        );
        assert_eq!(
            first_error(r#"{"url":"x","limits":[{"burst":1}]}"#).path,
            "limits[0].burst"
        );
        assert_eq!(first_error("{not json").path, "");
    }

    #[test]
    fn object_errors_are_reported_together() {
        let errors =
            parse_object::<Sample>(br#"{"colour": 1, "size": 2}"#, &["url", "limits"], &["url"])
                .expect_err("invalid");
        let paths: Vec<&str> = errors.iter().map(|error| error.path.as_str()).collect();
        assert_eq!(paths, ["url", "colour", "size"]);
        let typed = first_error(r#"{"url": "x", "limits": {"rate": 1}}"#);
        assert_eq!(typed.path, "limits");
        assert_eq!(typed.message, "expected an array, found object");
        let negative = first_error(r#"{"url": "x", "limits": [{"rate": -1}]}"#);
        assert_eq!(
            negative.message,
            "expected a whole number of at least 0, found integer `-1`"
        );
    }

    #[test]
    fn merge_patch_replaces_removes_and_recurses() {
        let mut target =
            json!({"url": "a", "headers": {"X-A": "1", "X-B": "2"}, "max_concurrency": 3});
        merge_patch(
            &mut target,
            &json!({"url": "b", "headers": {"X-A": null, "X-C": "3"}, "max_concurrency": null}),
        );
        assert_eq!(
            target,
            json!({"url": "b", "headers": {"X-B": "2", "X-C": "3"}})
        );
    }
}
