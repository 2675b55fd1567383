use proptest::prelude::*;

use super::*;

fn canonical(text: &str) -> String {
    String::from_utf8(Json::parse(text.as_bytes()).unwrap().to_bytes()).unwrap()
}

/// RFC 8785 Appendix B: IEEE 754 bit patterns and their canonical text.
#[test]
fn numbers_print_as_rfc_8785_appendix_b_says() {
    let vectors: [(u64, &str); 24] = [
        (0x0000000000000000, "0"),
        (0x8000000000000000, "0"),
        (0x0000000000000001, "5e-324"),
        (0x8000000000000001, "-5e-324"),
        (0x7fefffffffffffff, "1.7976931348623157e+308"),
        (0xffefffffffffffff, "-1.7976931348623157e+308"),
        (0x4340000000000000, "9007199254740992"),
        (0xc340000000000000, "-9007199254740992"),
        (0x4430000000000000, "295147905179352830000"),
        (0x44b52d02c7e14af5, "9.999999999999997e+22"),
        (0x44b52d02c7e14af6, "1e+23"),
        (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
        (0x444b1ae4d6e2ef4e, "999999999999999700000"),
        (0x444b1ae4d6e2ef4f, "999999999999999900000"),
        (0x444b1ae4d6e2ef50, "1e+21"),
        (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
        (0x3eb0c6f7a0b5ed8d, "0.000001"),
        (0x41b3de4355555553, "333333333.3333332"),
        (0x41b3de4355555554, "333333333.33333325"),
        (0x41b3de4355555555, "333333333.3333333"),
        (0x41b3de4355555556, "333333333.3333334"),
        (0x41b3de4355555557, "333333333.33333343"),
        (0xbecbf647612f3696, "-0.0000033333333333333333"),
        (0x43143ff3c1cb0959, "1424953923781206.2"),
    ];
    for (bits, expected) in vectors {
        let mut out = Vec::new();
        Json::Float(f64::from_bits(bits)).write(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), expected, "{bits:016x}");
        // The same double, parsed from its canonical text, prints the same again.
        assert_eq!(canonical(expected), expected, "{bits:016x} round trip");
    }
}

/// RFC 8785 §3.2.2, the example with every kind of value.
#[test]
fn the_rfc_example_canonicalizes_as_published() {
    let input = r#"{
        "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
        "literals": [null, true, false]
    }"#;
    assert_eq!(
        canonical(input),
        "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\
         \"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}"
    );
}

/// RFC 8785 §3.2.3: names sort by UTF-16 code units, so the emoji (a surrogate pair)
/// precedes U+FB33 although its UTF-8 bytes are larger.
#[test]
fn member_names_sort_by_utf16_code_units() {
    let input = r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#;
    let Json::Object(members) = Json::parse(input.as_bytes()).unwrap() else {
        panic!("an object")
    };
    let values: Vec<String> = members
        .iter()
        .map(|(_, v)| match v {
            Json::String(s) => s.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        values,
        [
            "Carriage Return",
            "One",
            "Control",
            "Latin Small Letter O With Diaeresis",
            "Euro Sign",
            "Emoji: Grinning Face",
            "Hebrew Letter Dalet With Dagesh"
        ]
    );
}

#[test]
fn strings_keep_every_character_but_the_required_escapes() {
    assert_eq!(
        canonical(r#""a\u0000\u001f\u007f\u2028\/\ud83d\ude00""#),
        "\"a\\u0000\\u001f\u{7f}\u{2028}/\u{1f600}\""
    );
    assert_eq!(canonical(r#""\b\t\n\f\r""#), r#""\b\t\n\f\r""#);
}

#[test]
fn what_canonical_form_would_change_is_refused() {
    let twice = Json::parse(br#"{"a":1,"b":{"c":1,"c":2}}"#).unwrap_err();
    assert!(twice.contains("member \"c\" appears twice"), "{twice}");
    let big = Json::parse(b"[9007199254740993]").unwrap_err();
    assert!(
        big.contains("integer 9007199254740993 is beyond 2^53"),
        "{big}"
    );
    let small = Json::parse(b"[-9007199254740993]").unwrap_err();
    assert!(
        small.contains("-9007199254740993 is beyond 2^53"),
        "{small}"
    );
    // A double's own digits are kept: 2^60 as ECMAScript prints it.
    assert_eq!(canonical("[1152921504606847000]"), "[1152921504606847000]");
    assert_eq!(canonical("[1.152921504606847e18]"), "[1152921504606847000]");
    // 2^53 itself is exact.
    assert_eq!(
        canonical("[9007199254740992,-9007199254740992]"),
        "[9007199254740992,-9007199254740992]"
    );
    assert!(Json::parse(br#"{"a":1} x"#).is_err());
    assert!(
        Json::parse(br#""\ud800""#).is_err(),
        "a lone surrogate is not a string"
    );
}

#[test]
fn canonical_text_is_recognised() {
    assert!(is_canonical(br#"{"a":[1,2],"b":"x"}"#).unwrap());
    assert!(!is_canonical(br#"{"b":"x","a":[1,2]}"#).unwrap());
    assert!(!is_canonical(br#"{"a": [1,2],"b":"x"}"#).unwrap());
    assert!(!is_canonical(br#"{"a":[1.0,2],"b":"x"}"#).unwrap());
}

#[test]
fn members_are_found_by_name() {
    let value = Json::parse(br#"{"workloadId":"w","n":3,"z":null}"#).unwrap();
    assert_eq!(value.str_of("workloadId"), Some("w"));
    assert_eq!(value.get("n"), Some(&Json::Int(3)));
    assert_eq!(value.str_of("n"), None);
    assert_eq!(value.get("missing"), None);
}

proptest! {
    #[test]
    fn the_name_order_is_the_utf16_order(a in "\\PC{0,6}", b in "\\PC{0,6}") {
        let utf16 = a.encode_utf16().cmp(b.encode_utf16());
        prop_assert_eq!(compare_names(&a, &b), utf16);
    }

    #[test]
    fn names_from_the_troublesome_ranges_sort_by_utf16(
        a in "[a\u{e000}-\u{e002}\u{fb33}\u{ffff}\u{10000}\u{1f600}]{0,4}",
        b in "[a\u{e000}-\u{e002}\u{fb33}\u{ffff}\u{10000}\u{1f600}]{0,4}",
    ) {
        prop_assert_eq!(compare_names(&a, &b), a.encode_utf16().cmp(b.encode_utf16()));
    }

    #[test]
    fn canonical_text_parses_back_to_itself(s in "\\PC{0,20}", n in any::<i32>(), f in any::<f64>()) {
        prop_assume!(f.is_finite() && s != "f" && s != "n");
        let value = Json::Object(vec![
            (Cow::Borrowed("f"), Json::Float(f)),
            (Cow::Borrowed("n"), Json::Int(i64::from(n))),
            (Cow::Owned(s.clone()), Json::String(Cow::Owned(s.clone()))),
        ]);
        let text = value.to_bytes();
        let parsed = Json::parse(&text).unwrap();
        let once = parsed.to_bytes();
        prop_assert!(is_canonical(&once).unwrap());
        prop_assert_eq!(parsed.str_of(&s), Some(s.as_str()));
        match parsed.get("f") {
            Some(Json::Float(g)) => prop_assert_eq!(g.to_bits() == f.to_bits() || (*g == 0.0 && f == 0.0), true),
            Some(Json::Int(i)) => prop_assert_eq!(*i as f64, f),
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
