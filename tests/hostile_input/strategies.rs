//! What hostile requests look like: well-typed messages of every request type built from random and
//! huge unicode, control characters, near-valid values, unknown and negative enum values, extreme
//! timestamps, many repeated fields and empty nested messages.

use nrl_registry::proto::nrl::v1 as pb;
use proptest::prelude::*;
use testkit::fixtures::{input, query};

/// Values that are valid somewhere, or nearly so, or classic attack strings.
const NEAR_VALID: &[&str] = &[
    "9434765919",
    "943 476 5919",
    "943-476-5919",
    " 9434765919 ",
    "9434765918",
    "0000000000",
    "94347659190",
    "QWO",
    "qwo",
    "SCT",
    "QZZ",
    "RR8",
    "rr8",
    "RR8.X01",
    "RR8.",
    ".RR8",
    "736253002",
    "1363501000000100",
    "734163000",
    "1102421000000108",
    "99999999999999999999",
    "200000000123",
    "20000000012",
    "2000000001234",
    "https://example.nhs.uk/records/1",
    "ssp://example.nhs.uk/records/1",
    "http://example.nhs.uk/records/1",
    "javascript:alert(1)",
    "application/pdf",
    "text/html",
    "urn:nhs-ic:unstructured",
    "01a1fc3a-6f28-71e3-88f2-aaaa922566b9",
    "00000000-0000-0000-0000-000000000000",
    "{01a1fc3a-6f28-71e3-88f2-aaaa922566b9}",
    "",
    " ",
    "0",
    "-1",
    "null",
    "../../etc/passwd",
    "%00",
    "' OR 1=1 --",
    "<script>alert(1)</script>",
    "\u{202e}QWO",
    "ＱＷＯ",
];

fn hostile_text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => proptest::sample::select(NEAR_VALID).prop_map(str::to_string),
        2 => "\\PC{0,24}",
        2 => any::<String>(),
        1 => "[ \\t\\r\\n\\x00-\\x1f\\x7f\u{200b}\u{feff}\u{2028}]{0,6}",
        2 => (proptest::sample::select(NEAR_VALID), "\\PC{0,3}", "[ \\t]{0,2}")
            .prop_map(|(valid, junk, space)| format!("{space}{valid}{junk}")),
        1 => (proptest::sample::select(&["x", "9", "é", "🦀", " ", "\u{0}", "Q"][..]), 100usize..4000)
            .prop_map(|(unit, n)| unit.repeat(n)),
        1 => Just("a".repeat(70_000)),
    ]
    .boxed()
}

fn enum_value() -> BoxedStrategy<i32> {
    prop_oneof![3 => 0..=5i32, 1 => any::<i32>(), 1 => Just(i32::MIN), 1 => Just(i32::MAX), 1 => Just(-1)].boxed()
}

fn timestamp() -> BoxedStrategy<Option<prost_types::Timestamp>> {
    let seconds = prop_oneof![
        any::<i64>(),
        Just(i64::MIN),
        Just(i64::MAX),
        -2_208_988_801i64..=-2_208_988_799,
        7_258_118_399i64..=7_258_118_401,
        0i64..2_000_000_000,
    ];
    let nanos = prop_oneof![0..1_000_000_000i32, any::<i32>(), Just(i32::MIN), Just(1_000_000_000)];
    prop::option::of((seconds, nanos).prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos })).boxed()
}

fn coding() -> BoxedStrategy<Option<pb::Coding>> {
    prop_oneof![
        Just(None),
        Just(Some(pb::Coding::default())),
        (hostile_text(), hostile_text()).prop_map(|(code, display)| Some(pb::Coding { code, display })),
    ]
    .boxed()
}

fn content() -> BoxedStrategy<pb::Content> {
    prop_oneof![
        1 => Just(pb::Content::default()),
        4 => (hostile_text(), hostile_text(), hostile_text(), enum_value(), enum_value()).prop_map(
            |(url, content_type, format, retrieval_mechanism, stability)| pb::Content {
                url,
                content_type,
                format,
                retrieval_mechanism,
                stability,
            }
        ),
    ]
    .boxed()
}

fn pointer_input() -> BoxedStrategy<pb::PointerInput> {
    let valid = Just(()).prop_map(|()| input("9434765919", "QWO", "RR8", "736253002"));
    let hostile = (
        hostile_text(),
        hostile_text(),
        hostile_text(),
        hostile_text(),
        hostile_text(),
        hostile_text(),
        prop_oneof![3 => prop::collection::vec(content(), 0..=3), 1 => prop::collection::vec(content(), 9..=14)],
        coding(),
        timestamp(),
        hostile_text(),
        hostile_text(),
    )
        .prop_map(
            |(
                nhs_number,
                region,
                custodian,
                author,
                r#type,
                category,
                content,
                practice_setting,
                document_date,
                producer_reference,
                related_asid,
            )| {
                pb::PointerInput {
                    nhs_number,
                    region,
                    custodian,
                    author,
                    r#type,
                    category,
                    content,
                    practice_setting,
                    document_date,
                    producer_reference,
                    related_asid,
                }
            },
        );
    // Valid pointers with one field spoiled reach the later checks.
    let spoiled = (hostile_text(), 0usize..11, content(), coding(), timestamp()).prop_map(
        |(text, field, content, practice_setting, document_date)| {
            let mut p = input("9434765919", "QWO", "RR8", "736253002");
            match field {
                0 => p.nhs_number = text,
                1 => p.region = text,
                2 => p.custodian = text,
                3 => p.author = text,
                4 => p.r#type = text,
                5 => p.category = text,
                6 => p.content.push(content),
                7 => p.practice_setting = practice_setting,
                8 => p.document_date = document_date,
                9 => p.producer_reference = text,
                _ => p.related_asid = text,
            }
            p
        },
    );
    prop_oneof![1 => valid, 3 => hostile, 4 => spoiled].boxed()
}

fn optional_input() -> BoxedStrategy<Option<pb::PointerInput>> {
    prop_oneof![1 => Just(None), 1 => Just(Some(pb::PointerInput::default())), 6 => pointer_input().prop_map(Some)]
        .boxed()
}

fn values() -> BoxedStrategy<Vec<String>> {
    prop_oneof![4 => prop::collection::vec(hostile_text(), 0..=3), 1 => prop::collection::vec(hostile_text(), 18..=30)]
        .boxed()
}

fn pointer_query() -> BoxedStrategy<Option<pb::PointerQuery>> {
    let hostile = (hostile_text(), values(), values(), values(), values(), any::<bool>()).prop_map(
        |(nhs_number, types, categories, custodians, regions, include_superseded)| pb::PointerQuery {
            nhs_number,
            types,
            categories,
            custodians,
            regions,
            include_superseded,
        },
    );
    let near = (hostile_text(), 0usize..4).prop_map(|(value, field)| {
        let mut q = query("9434765919");
        match field {
            0 => q.types.push(value),
            1 => q.categories.push(value),
            2 => q.custodians.push(value),
            _ => q.regions.push(value),
        }
        q
    });
    prop_oneof![1 => Just(None), 1 => Just(Some(pb::PointerQuery::default())), 3 => hostile.prop_map(Some), 3 => near.prop_map(Some)]
        .boxed()
}

fn id_text() -> BoxedStrategy<String> {
    prop_oneof![
        hostile_text(),
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).simple().to_string().to_uppercase()),
        proptest::sample::select(&["01a1fc3a-6f28-71e3-88f2-aaaa922566b9", "01A1FC3A-6F28-71E3-88F2-AAAA922566B9"][..])
            .prop_map(str::to_string),
    ]
    .boxed()
}

fn page_size() -> BoxedStrategy<i32> {
    prop_oneof![-3..=600i32, any::<i32>(), Just(i32::MIN), Just(i32::MAX)].boxed()
}

/// Every request type of the four protected services.
#[derive(Clone, Debug)]
pub enum Hostile {
    Create(pb::CreatePointerRequest),
    Get(pb::GetPointerRequest),
    Update(pb::UpdatePointerRequest),
    Delete(pb::DeletePointerRequest),
    Supersede(pb::SupersedePointerRequest),
    Search(pb::SearchPointersRequest),
    Count(pb::CountPointersRequest),
    Batch(pb::BatchCreatePointersRequest),
    Locate(pb::LocatePatientRequest),
    SetRestriction(pb::SetRestrictionRequest),
    GetRestriction(pb::GetRestrictionRequest),
    AccessLog(pb::GetAccessLogRequest),
    Export(pb::StreamAuditEventsRequest),
}

pub fn hostile_request() -> BoxedStrategy<Hostile> {
    prop_oneof![
        optional_input().prop_map(|pointer| Hostile::Create(pb::CreatePointerRequest { pointer })),
        id_text().prop_map(|id| Hostile::Get(pb::GetPointerRequest { id })),
        (id_text(), any::<u64>(), optional_input())
            .prop_map(|(id, version, pointer)| Hostile::Update(pb::UpdatePointerRequest { id, version, pointer })),
        (id_text(), any::<u64>()).prop_map(|(id, version)| Hostile::Delete(pb::DeletePointerRequest { id, version })),
        (
            optional_input(),
            prop_oneof![
                prop::collection::vec(id_text(), 0..=4),
                prop::collection::vec(id_text(), 10..=13),
                Just(vec!["01a1fc3a-6f28-71e3-88f2-aaaa922566b9".to_string(); 2]),
            ]
        )
            .prop_map(|(pointer, supersedes)| Hostile::Supersede(pb::SupersedePointerRequest { pointer, supersedes })),
        (pointer_query(), page_size(), hostile_text()).prop_map(|(query, page_size, page_token)| Hostile::Search(
            pb::SearchPointersRequest { query, page_size, page_token }
        )),
        pointer_query().prop_map(|query| Hostile::Count(pb::CountPointersRequest { query })),
        prop::collection::vec(pointer_input(), 0..=6)
            .prop_map(|pointers| Hostile::Batch(pb::BatchCreatePointersRequest { pointers })),
        hostile_text().prop_map(|nhs_number| Hostile::Locate(pb::LocatePatientRequest { nhs_number })),
        (hostile_text(), any::<bool>()).prop_map(|(nhs_number, restricted)| Hostile::SetRestriction(
            pb::SetRestrictionRequest { nhs_number, restricted }
        )),
        hostile_text().prop_map(|nhs_number| Hostile::GetRestriction(pb::GetRestrictionRequest { nhs_number })),
        (hostile_text(), page_size(), hostile_text()).prop_map(|(nhs_number, page_size, page_token)| {
            Hostile::AccessLog(pb::GetAccessLogRequest { nhs_number, page_size, page_token })
        }),
        (hostile_text(), any::<bool>())
            .prop_map(|(after, follow)| Hostile::Export(pb::StreamAuditEventsRequest { after, follow })),
    ]
    .boxed()
}
