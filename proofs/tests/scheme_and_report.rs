//! The CLI-facing surface: scheme spellings, order validation, and the JSON report.

use resca_proofs::{Scheme, StabilityError, analyse};
use serde_json::{Value, json};

#[test]
fn schemes_parse_and_display_with_the_cli_spellings() {
    for (spelling, scheme) in [
        ("explicit-taylor", Scheme::ExplicitTaylor),
        ("implicit-taylor", Scheme::ImplicitTaylor),
        ("bdf2", Scheme::Bdf2),
    ] {
        assert_eq!(spelling.parse::<Scheme>().unwrap(), scheme);
        assert_eq!(scheme.to_string(), spelling);
    }
}

#[test]
fn an_unknown_scheme_is_rejected_with_the_accepted_values() {
    let message = "implicit_taylor".parse::<Scheme>().unwrap_err().to_string();
    assert_eq!(
        message,
        "unknown scheme `implicit_taylor`: accepted values are explicit-taylor, implicit-taylor, bdf2"
    );
    assert!(
        "BDF2".parse::<Scheme>().is_err(),
        "spellings are case-sensitive"
    );
}

#[test]
fn unsupported_orders_are_rejected_naming_the_value() {
    for (scheme, order) in [
        (Scheme::ExplicitTaylor, 0),
        (Scheme::ImplicitTaylor, 5),
        (Scheme::Bdf2, 1),
        (Scheme::Bdf2, 3),
    ] {
        let error = analyse(scheme, order).unwrap_err();
        assert!(matches!(error, StabilityError::UnsupportedOrder { order: o, .. } if o == order));
        assert!(
            error.to_string().contains(&format!("order {order} ")),
            "{error}"
        );
    }
    assert_eq!(
        analyse(Scheme::ImplicitTaylor, 5).unwrap_err().to_string(),
        "order 5 is not supported for implicit-taylor: accepted orders are 1..=4"
    );
    assert_eq!(
        analyse(Scheme::Bdf2, 3).unwrap_err().to_string(),
        "order 3 is not supported for bdf2: the only accepted order is 2"
    );
}

/// What `resca stability --scheme implicit-taylor --order 3 --json` must show: exactly the five
/// fields, `a_stable: false`, a gain above 1.02 on the imaginary axis, and the counterexample.
#[test]
fn json_report_for_implicit_taylor_order_3() {
    let value = serde_json::to_value(analyse(Scheme::ImplicitTaylor, 3).unwrap()).unwrap();
    let object = value.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "a_stable",
            "counterexample",
            "max_gain_on_imaginary_axis",
            "order",
            "scheme"
        ]
    );
    assert_eq!(value["scheme"], "implicit-taylor");
    assert_eq!(value["order"], 3);
    assert_eq!(value["a_stable"], false);
    assert!(value["max_gain_on_imaginary_axis"].as_f64().unwrap() > 1.02);
    let counterexample = value["counterexample"].as_object().unwrap();
    let mut keys: Vec<&str> = counterexample.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["gain", "im", "re"]);
    assert!(counterexample["gain"].as_f64().unwrap() > 1.02);
}

/// Order 2 is A-stable: `a_stable: true`, maximum 1, no counterexample.
#[test]
fn json_report_for_implicit_taylor_order_2() {
    let value = serde_json::to_value(analyse(Scheme::ImplicitTaylor, 2).unwrap()).unwrap();
    assert_eq!(
        value,
        json!({
            "scheme": "implicit-taylor",
            "order": 2,
            "a_stable": true,
            "max_gain_on_imaginary_axis": 1.0,
            "counterexample": null,
        })
    );
}

/// Explicit Taylor's unbounded maximum is written as JSON `null` (JSON has no infinity), and the
/// counterexample is the documented finite point `z = -3`.
#[test]
fn json_report_for_explicit_taylor_writes_the_infinite_maximum_as_null() {
    let value = serde_json::to_value(analyse(Scheme::ExplicitTaylor, 1).unwrap()).unwrap();
    assert_eq!(value["max_gain_on_imaginary_axis"], Value::Null);
    assert_eq!(value["a_stable"], false);
    assert_eq!(
        value["counterexample"],
        json!({"re": -3.0, "im": 0.0, "gain": 2.0})
    );
}
