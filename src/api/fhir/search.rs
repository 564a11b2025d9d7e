//! DocumentReference search parameters (NRLF's, plus `region`, `_count` and the page token) into a
//! [`PointerQuery`], and the searchset `Bundle` that answers them.
//!
//! Parameters arrive in the query string (`GET /DocumentReference?…`) or, for
//! `POST /DocumentReference/_search`, also in a form or JSON body, as NRLF takes them. Unknown or
//! repeated parameters are refused by name: a typo must not silently widen a search.

use super::codes::{NHS_NUMBER_SYSTEM, ODS_SYSTEM, SNOMED_SYSTEM};
use super::document_reference::{LinkOut, SearchsetOut};
use super::outcome::{FhirError, SpineCode};
use crate::domain::limits::{DEFAULT_PAGE_SIZE, MAX_FILTER_VALUES, MAX_PAGE_SIZE, MAX_PAGE_TOKEN_LEN};
use crate::domain::query::{decode_page_token, Page, PageRequest, PointerQuery};
use crate::domain::{NhsNumber, OdsCode, ReferenceData};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const SUBJECT: &str = "subject:identifier";
pub const TYPE: &str = "type";
pub const CATEGORY: &str = "category";
pub const CUSTODIAN: &str = "custodian:identifier";
pub const REGION: &str = "region";
pub const COUNT: &str = "_count";
pub const SUMMARY: &str = "_summary";
pub const FORMAT: &str = "_format";
/// The opaque token of the next page, as the `next` link carries it.
pub const PAGE_TOKEN: &str = "next-page-token";

/// Every parameter a DocumentReference search takes, in the order links repeat them.
pub const PARAMETERS: [&str; 9] = [SUBJECT, TYPE, CATEGORY, CUSTODIAN, REGION, COUNT, SUMMARY, FORMAT, PAGE_TOKEN];

/// The parameters of one request, each given once.
#[derive(Debug, Default, Clone)]
pub struct Parameters(BTreeMap<&'static str, String>);

impl Parameters {
    /// Adds one name=value pair, refusing names not in `allowed` and names given twice.
    pub fn add(&mut self, name: &str, value: String, allowed: &[&'static str]) -> Result<(), FhirError> {
        let Some(known) = allowed.iter().find(|a| **a == name) else {
            let shown = if crate::telemetry::is_log_safe(name) { name } else { "(a parameter)" };
            return Err(FhirError::parameter(
                shown,
                format!("unknown search parameter {shown}; this endpoint takes: {}", allowed.join(", ")),
            ));
        };
        if self.0.insert(known, value).is_some() {
            return Err(FhirError::parameter(name, "is given more than once; separate alternatives with commas"));
        }
        Ok(())
    }

    /// Reads `a=1&b=2` (a query string or a form body).
    pub fn add_form(&mut self, form: &[u8], allowed: &[&'static str]) -> Result<(), FhirError> {
        for (name, value) in form_urlencoded::parse(form) {
            self.add(&name, value.into_owned(), allowed)?;
        }
        Ok(())
    }

    /// Reads a JSON object of string values (NRLF's `_search` body).
    pub fn add_json(&mut self, body: &[u8], allowed: &[&'static str]) -> Result<(), FhirError> {
        let object: BTreeMap<String, Value> = serde_json::from_slice(body).map_err(|e| {
            FhirError::invalid(
                SpineCode::MessageNotWellFormed,
                "",
                format!("the search body must be a JSON object of parameters ({e})"),
            )
        })?;
        for (name, value) in object {
            let value = match value {
                Value::String(text) => text,
                Value::Number(n) => n.to_string(),
                _ => return Err(FhirError::parameter(&name, "must be a string")),
            };
            self.add(&name, value, allowed)?;
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The parameters as a query string, in [`PARAMETERS`] order, with `token` as the page token
    /// (none: without one).
    pub fn query_string(&self, token: Option<&str>) -> String {
        self.encode(&PARAMETERS, token)
    }

    /// The parameters among `names` (in that order, the page token aside), then `token` as the
    /// page token.
    pub fn encode(&self, names: &[&str], token: Option<&str>) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for name in names.iter().filter(|n| **n != PAGE_TOKEN) {
            if let Some(value) = self.0.get(name) {
                out.append_pair(name, value);
            }
        }
        if let Some(token) = token {
            out.append_pair(PAGE_TOKEN, token);
        }
        out.finish()
    }

    /// The query string that repeats this request (its own page token included).
    pub fn self_query(&self) -> String {
        self.query_string(self.get(PAGE_TOKEN))
    }
}

/// A validated DocumentReference search.
#[derive(Debug)]
pub struct Search {
    pub query: PointerQuery,
    pub page: PageRequest,
    /// `_summary=count`: the total alone.
    pub count_only: bool,
}

/// The comma-separated alternatives of a token parameter.
fn alternatives<'a>(name: &str, value: &'a str) -> Result<Vec<&'a str>, FhirError> {
    let values: Vec<&str> = value.split(',').map(str::trim).collect();
    if values.iter().any(|v| v.is_empty()) {
        return Err(FhirError::parameter(name, "has an empty value"));
    }
    if values.len() > MAX_FILTER_VALUES {
        return Err(FhirError::parameter(name, format!("at most {MAX_FILTER_VALUES} values")));
    }
    Ok(values)
}

/// `system|value` (or a bare value, any system) where the system must be `system`.
fn token<'a>(name: &str, value: &'a str, system: &str, spine: SpineCode) -> Result<&'a str, FhirError> {
    match value.split_once('|') {
        Some((given, code)) if given == system || given.is_empty() => Ok(code.trim()),
        Some(_) => Err(FhirError::invalid(spine, name, format!("the system must be {system}"))),
        None => Ok(value.trim()),
    }
}

pub fn nhs_number(name: &str, value: Option<&str>) -> Result<NhsNumber, FhirError> {
    let value = value
        .ok_or_else(|| FhirError::parameter(name, format!("is required: {name}={NHS_NUMBER_SYSTEM}|<NHS number>")))?;
    let value = token(name, value, NHS_NUMBER_SYSTEM, SpineCode::InvalidIdentifierSystem)?;
    NhsNumber::parse(value).map_err(|e| FhirError::invalid(SpineCode::InvalidNhsNumber, name, e.to_string()))
}

/// Reads a DocumentReference search.
pub fn read(parameters: &Parameters, reference: &ReferenceData) -> Result<Search, FhirError> {
    let mut query = PointerQuery::for_patient(nhs_number(SUBJECT, parameters.get(SUBJECT))?);
    if let Some(value) = parameters.get(TYPE) {
        for v in alternatives(TYPE, value)? {
            let code = token(TYPE, v, SNOMED_SYSTEM, SpineCode::InvalidCodeSystem)?;
            reference
                .pointer_types
                .pointer_type(code)
                .map_err(|e| FhirError::invalid(SpineCode::InvalidCodeValue, TYPE, e.to_string()))?;
            query.types.insert(code.to_string());
        }
    }
    if let Some(value) = parameters.get(CATEGORY) {
        for v in alternatives(CATEGORY, value)? {
            let code = token(CATEGORY, v, SNOMED_SYSTEM, SpineCode::InvalidCodeSystem)?;
            reference
                .pointer_types
                .category(code)
                .map_err(|e| FhirError::invalid(SpineCode::InvalidCodeValue, CATEGORY, e.to_string()))?;
            query.categories.insert(code.to_string());
        }
    }
    if let Some(value) = parameters.get(CUSTODIAN) {
        for v in alternatives(CUSTODIAN, value)? {
            let code = token(CUSTODIAN, v, ODS_SYSTEM, SpineCode::InvalidIdentifierSystem)?;
            let ods = OdsCode::parse(code)
                .map_err(|e| FhirError::invalid(SpineCode::InvalidIdentifierValue, CUSTODIAN, e.to_string()))?;
            query.custodians.insert(ods);
        }
    }
    if let Some(value) = parameters.get(REGION) {
        for v in alternatives(REGION, value)? {
            let region = reference.regions.parse_code(v).map_err(|e| FhirError::parameter(REGION, e.to_string()))?;
            query.regions.insert(region);
        }
    }
    let count_only = match parameters.get(SUMMARY) {
        None | Some("false") => false,
        Some("count") => true,
        Some(_) => return Err(FhirError::parameter(SUMMARY, "only _summary=count is supported")),
    };
    if let Some(format) = parameters.get(FORMAT) {
        if !matches!(format, "json" | "application/json" | "application/fhir+json") {
            return Err(FhirError::parameter(FORMAT, "only JSON is served (json, application/fhir+json)"));
        }
    }
    let size = match parameters.get(COUNT) {
        None => DEFAULT_PAGE_SIZE,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n >= 1 => n.min(MAX_PAGE_SIZE),
            _ => return Err(FhirError::parameter(COUNT, format!("must be a whole number from 1 to {MAX_PAGE_SIZE}"))),
        },
    };
    let after = match parameters.get(PAGE_TOKEN) {
        None => None,
        Some(token) if token.len() > MAX_PAGE_TOKEN_LEN => {
            return Err(FhirError::parameter(PAGE_TOKEN, "is not a page token from this service"))
        }
        Some(token) => Some(decode_page_token(token, &query).map_err(|e| FhirError::parameter(PAGE_TOKEN, e))?),
    };
    Ok(Search { query, page: PageRequest { size, after }, count_only })
}

/// A searchset Bundle of one page: `total`, a `self` link, and a `next` link (the query with the
/// next page's token) while more follow.
pub fn bundle<'a>(page: &'a Page, base: &str, parameters: &Parameters, next_token: Option<&str>) -> SearchsetOut<'a> {
    let mut links =
        vec![LinkOut { relation: "self", url: format!("{base}/DocumentReference?{}", parameters.self_query()) }];
    if let Some(token) = next_token {
        let next = parameters.query_string(Some(token));
        links.push(LinkOut { relation: "next", url: format!("{base}/DocumentReference?{next}") });
    }
    SearchsetOut::new(page.total, links, base, &page.pointers)
}

/// The Bundle answering `_summary=count` and `_count`: the total, no entries. Its self link is the
/// search with `_summary=count`, so following it counts again (from `_count` too, whose
/// parameters lack it) rather than listing.
pub fn count_bundle(total: u64, base: &str, parameters: &Parameters) -> Value {
    let mut counted = parameters.clone();
    counted.0.insert(SUMMARY, "count".into());
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{"relation": "self", "url": format!("{base}/DocumentReference?{}", counted.self_query())}],
    })
}
