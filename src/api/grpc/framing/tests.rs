use super::*;

fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![flag];
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Feeds `body` in chunks of every size from 1 up, so headers and messages split anywhere.
fn check(body: &[u8], may_compress: bool) -> Result<(), Problem> {
    let mut outcomes = Vec::new();
    for chunk in 1..=body.len().max(1) {
        let mut framing = Framing { may_compress, ..Framing::default() };
        let scanned = body.chunks(chunk).try_for_each(|piece| framing.scan(piece));
        outcomes.push(scanned.and_then(|()| framing.finish()));
    }
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "the chunking changes the verdict: {outcomes:?}");
    outcomes[0]
}

#[test]
fn every_nrl_method_has_its_request_type() {
    assert_eq!(REQUEST_TYPES.len(), 19, "{:?}", REQUEST_TYPES.keys());
    assert_eq!(
        REQUEST_TYPES.get("/nrl.v1.PointerRegistry/CreatePointer").map(String::as_str),
        Some("nrl.v1.CreatePointerRequest")
    );
    assert_eq!(
        REQUEST_TYPES.get("/nrl.v1.FederatedLocator/FederatedSearchStream").map(String::as_str),
        Some("nrl.v1.FederatedSearchRequest")
    );
}

#[test]
fn well_framed_bodies_pass_however_they_are_split() {
    assert_eq!(check(&frame(0, b"\x0a\x03abc"), false), Ok(()));
    assert_eq!(check(&frame(0, b""), false), Ok(()), "an empty message is a message");
    assert_eq!(check(&frame(1, b"gzipped"), true), Ok(()), "compressed, with a grpc-encoding");
    let two = [frame(0, b"x"), frame(0, b"yz")].concat();
    assert_eq!(check(&two, false), Ok(()));
}

#[test]
fn broken_framing_is_named() {
    assert_eq!(check(&frame(1, b"abc"), false), Err(Problem::CompressedWithoutEncoding));
    assert_eq!(check(&frame(0x80, b"abc"), true), Err(Problem::BadFlag(0x80)));
    assert_eq!(check(&frame(0, b"abc")[..6], false), Err(Problem::EndsInsideMessage));
    assert_eq!(check(&[0, 0], false), Err(Problem::EndsInsideMessage), "a torn header");
    assert_eq!(check(&[], false), Err(Problem::NoMessage));
    // The first problem wins, even with a good message after it.
    let bad_then_good = [frame(7, b""), frame(0, b"x")].concat();
    assert_eq!(check(&bad_then_good, false), Err(Problem::BadFlag(7)));
}
