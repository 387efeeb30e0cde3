//! Payload filters: conditions on parts of an event, named by JSON pointer (RFC 6901), that a
//! subscription requires on top of its event types. Every condition must hold.
//!
//! A condition tests one path with one of: `equals` (a JSON value), `in` (a list of JSON values),
//! `exists` (true or false), or the bounds `gt`, `gte`, `lt`, `lte`. Bounds compare numbers
//! exactly as decimals, and a value that is a string of a decimal number (`"10000.50"`, the way
//! banking events carry amounts) compares like the number, without floating-point rounding.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One condition as written in a subscription.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    /// A JSON pointer into the event, such as `/data/amount`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<Value>,
}

/// A checked filter: every condition must hold for an event to be delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    path: String,
    test: Test,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Equals(Value),
    OneOf(Vec<Value>),
    Exists(bool),
    Range {
        lower: Option<Bound>,
        upper: Option<Bound>,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Bound {
    value: Decimal,
    inclusive: bool,
}

impl Filter {
    /// Checks the conditions; each error names the condition's place and what is wrong.
    pub fn parse(specs: &[ConditionSpec]) -> Result<Self, Vec<(String, String)>> {
        let mut conditions = Vec::new();
        let mut errors = Vec::new();
        for (position, spec) in specs.iter().enumerate() {
            match Condition::parse(spec) {
                Ok(condition) => conditions.push(condition),
                Err((field, message)) => errors.push((format!("[{position}]{field}"), message)),
            }
        }
        if errors.is_empty() {
            Ok(Self { conditions })
        } else {
            Err(errors)
        }
    }

    /// Returns whether `event` meets every condition.
    pub fn matches(&self, event: &Value) -> bool {
        self.conditions
            .iter()
            .all(|condition| condition.matches(event))
    }
}

impl Condition {
    fn parse(spec: &ConditionSpec) -> Result<Self, (String, String)> {
        if !(spec.path.is_empty() || spec.path.starts_with('/')) {
            return Err((
                ".path".to_owned(),
                "must be a JSON pointer such as /data/amount".to_owned(),
            ));
        }
        let bound = |field: &str, value: &Option<Value>, inclusive: bool| match value {
            None => Ok(None),
            Some(value) => number(value)
                .map(|value| Some(Bound { value, inclusive }))
                .ok_or_else(|| {
                    (
                        format!(".{field}"),
                        "must be a number, or a string holding a decimal number".to_owned(),
                    )
                }),
        };
        let (gt, gte) = (
            bound("gt", &spec.gt, false)?,
            bound("gte", &spec.gte, true)?,
        );
        let (lt, lte) = (
            bound("lt", &spec.lt, false)?,
            bound("lte", &spec.lte, true)?,
        );
        if gt.is_some() && gte.is_some() {
            return Err((".gt".to_owned(), "use gt or gte, not both".to_owned()));
        }
        if lt.is_some() && lte.is_some() {
            return Err((".lt".to_owned(), "use lt or lte, not both".to_owned()));
        }
        let range =
            (gt.is_some() || gte.is_some() || lt.is_some() || lte.is_some()).then(|| Test::Range {
                lower: gt.or(gte),
                upper: lt.or(lte),
            });

        let mut tests: Vec<Test> = [
            spec.equals.clone().map(Test::Equals),
            spec.one_of.clone().map(Test::OneOf),
            spec.exists.map(Test::Exists),
            range,
        ]
        .into_iter()
        .flatten()
        .collect();
        let test = match (tests.pop(), tests.is_empty()) {
            (Some(test), true) => test,
            (None, _) => {
                return Err((
                    String::new(),
                    "needs one of equals, in, exists, or the bounds gt, gte, lt, lte".to_owned(),
                ));
            }
            (Some(_), false) => {
                return Err((
                    String::new(),
                    "has more than one test: use one of equals, in, exists, or bounds".to_owned(),
                ));
            }
        };
        Ok(Self {
            path: spec.path.clone(),
            test,
        })
    }

    fn matches(&self, event: &Value) -> bool {
        let found = event.pointer(&self.path);
        match &self.test {
            Test::Exists(wanted) => found.is_some() == *wanted,
            Test::Equals(expected) => found.is_some_and(|value| same(value, expected)),
            Test::OneOf(choices) => {
                found.is_some_and(|value| choices.iter().any(|choice| same(value, choice)))
            }
            Test::Range { lower, upper } => {
                let Some(value) = found.and_then(number) else {
                    return false;
                };
                let above = lower
                    .as_ref()
                    .is_none_or(|bound| match value.cmp(&bound.value) {
                        Ordering::Greater => true,
                        Ordering::Equal => bound.inclusive,
                        Ordering::Less => false,
                    });
                let below = upper
                    .as_ref()
                    .is_none_or(|bound| match value.cmp(&bound.value) {
                        Ordering::Less => true,
                        Ordering::Equal => bound.inclusive,
                        Ordering::Greater => false,
                    });
                above && below
            }
        }
    }
}

/// JSON equality, except that two numbers are equal when their decimal values are.
fn same(value: &Value, expected: &Value) -> bool {
    match (value, expected) {
        (Value::Number(_), Value::Number(_)) => number(value) == number(expected),
        _ => value == expected,
    }
}

/// Reads a JSON number, or a string holding a decimal number, as a [`Decimal`].
fn number(value: &Value) -> Option<Decimal> {
    match value {
        Value::Number(number) => Decimal::parse(&number.to_string()),
        Value::String(text) => Decimal::parse(text.trim()),
        _ => None,
    }
}

/// The largest exponent accepted, so that a hostile `1e999999999` costs nothing.
const MAX_EXPONENT: i64 = 400;

/// An exact decimal: `0.<digits> × 10^point`, negative or not, with no leading or trailing zero
/// in `digits`; zero has no digits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    point: i64,
}

impl Decimal {
    /// Parses `-12.50`, `1e4`, `0.5E-2` and the like; anything else is `None`.
    fn parse(text: &str) -> Option<Self> {
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };

        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(at) => {
                let exponent: i64 = unsigned[at + 1..].parse().ok()?;
                if exponent.abs() > MAX_EXPONENT {
                    return None;
                }
                (&unsigned[..at], exponent)
            }
            None => (unsigned, 0),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction)
        {
            return None;
        }

        let joined = format!("{whole}{fraction}");
        let leading_zeros = joined.len() - joined.trim_start_matches('0').len();
        let digits = joined
            .trim_start_matches('0')
            .trim_end_matches('0')
            .to_owned();
        if digits.is_empty() {
            return Some(Self {
                negative: false,
                digits,
                point: 0,
            });
        }
        let point = whole.len() as i64 - leading_zeros as i64 + exponent;
        Some(Self {
            negative,
            digits,
            point,
        })
    }

    fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    fn cmp_magnitude(&self, other: &Self) -> Ordering {
        match (self.is_zero(), other.is_zero()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => self
                .point
                .cmp(&other.point)
                .then_with(|| self.digits.cmp(&other.digits)),
        }
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.cmp_magnitude(other),
            (true, true) => other.cmp_magnitude(self),
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn decimal(text: &str) -> Decimal {
        Decimal::parse(text).unwrap_or_else(|| panic!("{text} is a decimal"))
    }

    #[test]
    fn decimals_compare_exactly() {
        let ascending = [
            "-1e3",
            "-999.99",
            "-0.5",
            "0",
            "0.000001",
            "0.1",
            "0.10000000000000001",
            "1",
            "9.99",
            "10",
            "10000",
            "1.0000001e4",
            "10000.01",
            "2e4",
        ];
        for pair in ascending.windows(2) {
            assert!(
                decimal(pair[0]) < decimal(pair[1]),
                "{} < {}",
                pair[0],
                pair[1]
            );
        }
        for (left, right) in [
            ("10000", "10000.00"),
            ("1e4", "10000"),
            ("-0", "0"),
            ("0.50", ".5"),
        ] {
            assert_eq!(decimal(left), decimal(right), "{left} = {right}");
        }
    }

    #[test]
    fn decimal_rejects_other_text() {
        for text in [
            "", "-", ".", "1.2.3", "12a", "1e", "1e999999", "NaN", "+1", "1 000",
        ] {
            assert_eq!(Decimal::parse(text), None, "{text:?}");
        }
    }

    fn filter(conditions: Value) -> Filter {
        let specs: Vec<ConditionSpec> =
            serde_json::from_value(conditions).expect("valid condition specs");
        Filter::parse(&specs).expect("valid filter")
    }

    #[test]
    fn large_chf_payments_match() {
        let big_chf = filter(json!([
            {"path": "/data/currency", "equals": "CHF"},
            {"path": "/data/amount", "gt": 10000}
        ]));
        let event = |amount: Value, currency: &str| json!({"eventType": "payment.settled", "data": {"amount": amount, "currency": currency}});
        assert!(big_chf.matches(&event(json!("10000.01"), "CHF")));
        assert!(big_chf.matches(&event(json!(25000), "CHF")));
        assert!(!big_chf.matches(&event(json!("10000.00"), "CHF")));
        assert!(!big_chf.matches(&event(json!("50000"), "EUR")));
        assert!(!big_chf.matches(&event(json!("a lot"), "CHF")));
        assert!(!big_chf.matches(&json!({"data": {"currency": "CHF"}})));
    }

    #[test]
    fn membership_existence_and_ranges() {
        let event = json!({"data": {"status": "settled", "score": 7, "flags": [true]}});
        assert!(
            filter(json!([{"path": "/data/status", "in": ["settled", "failed"]}])).matches(&event)
        );
        assert!(!filter(json!([{"path": "/data/status", "in": ["failed"]}])).matches(&event));
        assert!(filter(json!([{"path": "/data/flags/0", "exists": true}])).matches(&event));
        assert!(filter(json!([{"path": "/data/reason", "exists": false}])).matches(&event));
        assert!(filter(json!([{"path": "/data/score", "gte": 7, "lt": "8"}])).matches(&event));
        assert!(!filter(json!([{"path": "/data/score", "gt": 7}])).matches(&event));
        assert!(filter(json!([{"path": "/data/score", "equals": 7.0}])).matches(&event));
        assert!(filter(json!([])).matches(&event));
    }

    #[test]
    fn invalid_conditions_are_named() {
        let cases = [
            (json!([{"path": "data/amount", "gt": 1}]), "[0].path"),
            (json!([{"path": "/a"}]), "[0]"),
            (json!([{"path": "/a", "equals": 1, "exists": true}]), "[0]"),
            (json!([{"path": "/a", "gt": "ten"}]), "[0].gt"),
            (json!([{"path": "/a", "gt": 1, "gte": 2}]), "[0].gt"),
            (
                json!([{"path": "/a", "exists": true}, {"path": "/b", "lte": [1]}]),
                "[1].lte",
            ),
        ];
        for (conditions, place) in cases {
            let specs: Vec<ConditionSpec> =
                serde_json::from_value(conditions.clone()).expect("condition specs");
            let errors = Filter::parse(&specs).expect_err("invalid filter");
            assert_eq!(errors[0].0, place, "{conditions}");
        }
        let unknown: Result<Vec<ConditionSpec>, _> =
            serde_json::from_value(json!([{"path": "/a", "greater": 1}]));
        assert!(unknown.is_err(), "an unknown test is refused");
    }
}
